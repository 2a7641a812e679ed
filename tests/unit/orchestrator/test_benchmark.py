"""The ``adaptation`` benchmark in simulation mode: report layout, plots, example-profile warning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from splitserve.benchmarks.adaptation import run
from splitserve.orchestrator import Profile, example_profile_path


def test_sim_report_layout_and_plot(tmp_path: Path) -> None:
    messages: list[str] = []
    report = run(tmp_path, None, live=False, traces=("step",), log=messages.append)
    assert any("EXAMPLE" in m for m in messages)  # no profile given: the example, with a warning
    saved = json.loads((tmp_path / "adaptation.json").read_text())
    assert saved["profile"] == {
        "path": str(example_profile_path()),
        "name": report["profile"]["name"],
        "example": True,
        "description": report["profile"]["description"],
        "device_factor": 1.0,
        "mac_rate_mmac_s": None,
    }
    assert saved["command"].startswith("splitserve bench adaptation --profile ")
    (entry,) = saved["traces"]
    assert entry["name"] == "step" and entry["mode"] == "sim" and entry["variable"] is True
    fixed = [k for k in entry["policies"] if k.startswith("fixed:")]
    assert len(fixed) == 11  # every option of the example profile
    assert {"orchestrator", "oracle", "best_fixed"} <= entry["policies"].keys()
    for metrics in entry["policies"].values():
        assert set(metrics) >= {"mean_ms", "p95_ms", "miss_rate", "accuracy"}
    assert entry["policies"]["best_fixed"] == entry["policies"][f"fixed:{entry['best_fixed_option']}"]
    assert entry["targets"]["mean_within_10pct_of_oracle"] and entry["settling"]
    assert "best_fixed" in saved["rules"] and saved["summary"]["sim"]["variable_traces"] == ["step"]
    assert (tmp_path / "adaptation_sim_step.png").stat().st_size > 10_000
    (queue,) = saved["queue_cycle"]["traces"]  # the queue cycle over the selected trace
    assert queue["name"] == "step+queue_cycle" and queue["oracle"]["switches_per_1000"] >= 0
    for variant in ("no_reports", "reports"):
        assert set(queue["orchestrator"][variant]["targets"]) == {
            "mean_within_5pct_of_oracle",
            "misses_le_2pct_where_oracle_meets",
            "switches_le_20_per_1000",
        }
    assert (tmp_path / "adaptation_queue.png").stat().st_size > 10_000


def test_mac_rate_reaches_the_simulated_device_and_the_report(tmp_path: Path) -> None:
    profile = dataclasses.replace(Profile.load(example_profile_path()), total_macs=10_000_000)
    profile.save(tmp_path / "p.json")
    report = run(
        tmp_path / "out", tmp_path / "p.json", mac_rate=50.0, traces=("constant",), plots=False, log=lambda _: None
    )
    assert report["profile"]["mac_rate_mmac_s"] == 50.0 and "(+MACs at 50 MMAC/s)" in report["profile"]["name"]
    assert " --mac-rate 50 " in report["command"]
    (entry,) = report["traces"]
    local_ms = profile.entry("local").device_ms + 200.0  # 10 M MACs at 50 MMAC/s
    assert entry["policies"]["fixed:local"]["mean_ms"] == pytest.approx(local_ms, rel=0.1)


def test_live_needs_a_reachable_lab_or_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "splitserve.benchmarks.adaptation.unavailable_reason", lambda: "network namespaces and tc need root"
    )
    report = run(
        tmp_path, example_profile_path(), live=True, traces=("constant",), plots=False, log=lambda _: None
    )
    assert report["live"] == {"skipped": "network namespaces and tc need root"}


def test_a_profile_measured_from_another_bundle_is_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="are not the options"):
        run(tmp_path, example_profile_path(), bundle=tiny_bundle, traces=("step",), log=lambda _: None)
