"""The ``adaptation`` benchmark in simulation mode: report layout, plots, example-profile warning."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from splitserve.benchmarks.adaptation import run
from splitserve.orchestrator import example_profile_path


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


def test_live_needs_a_reachable_lab_or_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "splitserve.benchmarks.adaptation.unavailable_reason", lambda: "network namespaces and tc need root"
    )
    report = run(
        tmp_path, example_profile_path(), live=True, traces=("constant",), plots=False, log=lambda _: None
    )
    assert report["live"] == {"skipped": "network namespaces and tc need root"}


def test_stand_in_device_pads_to_the_factor_times_the_least_cpu_time() -> None:
    from splitserve.benchmarks.adaptation import _slowed

    def work(split: str) -> str:
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        return split

    slow = _slowed("head", work, 5.0)
    t0 = time.perf_counter()
    assert slow("stem") == "stem"
    assert time.perf_counter() - t0 >= 5 * 0.002 * 0.95
