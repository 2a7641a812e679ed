"""``bench hostile`` end to end, briefly: the harness runs every hostile kind against the real endpoint."""

from __future__ import annotations

from pathlib import Path

from splitserve.benchmarks.hostile import HOSTILE_KINDS, run


def test_hostile_clients_get_refusals_and_normal_clients_keep_being_served(test_bundle: Path, tmp_path: Path) -> None:
    result = run(tmp_path, test_bundle, phase_s=3.0, each_kind=False, log=lambda _: None)
    assert result["endpoint_survived"]
    for phase in (result["baseline"], result["hostile_phase"]):
        assert phase["ok"] > 100 and phase["failed"] == 0, phase  # latency is the benchmark's, not asserted
    clients = result["phases"]["all"]["hostile_clients"]
    assert set(clients) == set(HOSTILE_KINDS)
    payloads = clients["payloads"]["counts"]
    assert payloads and not [k for k in payloads if k.endswith(": OK")], payloads  # every bad payload refused
    assert any("RESOURCE_EXHAUSTED" in k for k in payloads) and any("INVALID_ARGUMENT" in k for k in payloads)
    assert clients["never_read"]["counts"]["items written"] > 0
    assert clients["idle"]["counts"]["connected to gRPC"] == clients["idle"]["counts"]["connected to metrics"] == 200
    assert (tmp_path / "hostile.json").exists()
