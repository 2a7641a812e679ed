"""``benchmarks/edge.py`` on the test bundle with few repeats: the report's shape and its sanity."""

from __future__ import annotations

import json
from pathlib import Path

from splitserve.benchmarks.edge import run
from splitserve.core.bundle import Bundle


def test_edge_benchmark_writes_its_report(tmp_path: Path, bundle_path: Path) -> None:
    report = run(tmp_path, bundle_path, repeats=30, eval_size=200)
    assert json.loads((tmp_path / "edge.json").read_text()) == report
    assert (tmp_path / "edge.png").stat().st_size > 10_000
    assert [s["split"] for s in report["splits"]] == [
        s.name for s in Bundle.open(bundle_path).manifest.splits
    ]
    for s in report["splits"]:
        for key in (
            "fp32_ms",
            "int8_ms",
            "speedup",
            "encode_ms",
            "client_overhead_ms",
            "int8_accuracy_drop_pp",
        ):
            assert isinstance(s[key], float), key
        assert s["fp32_ms"] > 0 and s["int8_ms"] > 0 and s["speedup"] == s["fp32_ms"] / s["int8_ms"]
        assert s["fp32_p95_ms"] >= s["fp32_ms"] and s["int8_p95_ms"] >= s["int8_ms"]
        assert 0 < s["overhead_excl_encode_ms"] < s["client_overhead_ms"] < s["client_total_ms"]
        assert s["encode_ms"] > 0 and -100 < s["int8_accuracy_drop_pp"] < 100
        for lv in s["levels"]:
            assert lv["int8_accuracy_drop_pp"] == (lv["accuracy_fp32"] - lv["accuracy_int8"]) * 100
    assert report["local"]["int8_ms"] > 0 and report["offload"]["encode_ms"]["median"] > 0
    assert report["orchestrator_ms"]["decide"] > 0 and report["orchestrator_ms"]["observe"] > 0
    assert set(report["met"]) == {"speedup", "client_overhead_ms"}


def test_the_orchestrator_cost_is_measured_on_a_bundle_with_lossy_offload_levels(tiny_bundle) -> None:  # noqa: ANN001
    """A colour bundle's JPEG/WebP offload levels are options too: each needs a device time."""
    from dataclasses import replace
    from types import SimpleNamespace

    from splitserve.benchmarks.edge import _orchestrator_ms
    from splitserve.core.bundle import Bundle
    from splitserve.core.offload import OffloadLevel

    manifest = Bundle.open(tiny_bundle).manifest
    offload = replace(manifest.offload, levels=(*manifest.offload.levels, OffloadLevel(1, "jpeg", 90, 400.0, 0.9)))
    colour = SimpleNamespace(manifest=replace(manifest, offload=offload))
    costs = _orchestrator_ms(colour, repeats=20)
    assert costs["decide"] > 0 and costs["observe"] > 0
