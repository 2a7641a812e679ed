"""Traces (integration of transfer times, determinism) and profiles (JSON, manifest)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from splitserve.core.bundle import Manifest
from splitserve.core.errors import ConfigError
from splitserve.orchestrator import DeviceLatency, Profile, Trace, trace_set
from splitserve.orchestrator.traces import on_off_trace, step_trace


class TestTrace:
    def test_transfer_integrates_across_steps_and_outages(self) -> None:
        flat = np.zeros(3)
        tr = Trace("t", 1.0, np.array([8000.0, 0.0, 16000.0]), flat, flat)
        # 1000 bytes from t=0.5: 4000 bits by t=1, none during the outage, 4000 more by t=2.25
        assert tr.transfer_ms(np.array([0.5]), np.array([8000.0]))[0] == pytest.approx(1750.0)
        assert tr.transfer_ms(np.array([1.2]), np.array([0.0]))[0] == 0.0
        # past the end the last rate holds
        assert tr.transfer_ms(np.array([2.5]), np.array([16000.0]))[0] == pytest.approx(1000.0)

    def test_never_completes_on_a_dead_tail(self) -> None:
        flat = np.zeros(2)
        tr = Trace("t", 1.0, np.array([8000.0, 0.0]), flat, flat)
        assert np.isinf(tr.transfer_ms(np.array([0.5]), np.array([8000.0]))[0])

    def test_deterministic_and_json_round_trip(self, tmp_path: Path) -> None:
        a, b = trace_set(seed=0), trace_set(seed=0)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.bandwidth_bps, y.bandwidth_bps)
        assert not np.array_equal(on_off_trace(seed=1).bandwidth_bps, on_off_trace(seed=2).bandwidth_bps)
        a[3].save(tmp_path / "t.json")
        back = Trace.load(tmp_path / "t.json")
        np.testing.assert_array_equal(back.bandwidth_bps, a[3].bandwidth_bps)
        assert [t.variable for t in a].count(False) == 1

    def test_resampled_keeps_the_bits(self) -> None:
        tr = step_trace()
        coarse = tr.resampled(1.0)
        assert coarse.bits_by(np.array([tr.duration_s]))[0] == pytest.approx(
            tr.bits_by(np.array([tr.duration_s]))[0]
        )

    def test_mobile_traces_match_their_stated_statistics(self) -> None:
        lte, hsdpa = (t for t in trace_set() if t.name in ("lte_like", "hsdpa_like"))
        assert 15e6 < np.mean(lte.bandwidth_bps) < 45e6 and np.max(lte.bandwidth_bps) <= 95e6
        assert 0.4e6 < np.mean(hsdpa.bandwidth_bps) < 1.6e6 and np.min(hsdpa.bandwidth_bps) < 20e3


class TestProfile:
    def test_example_is_labelled_and_round_trips(self, example: Profile, tmp_path: Path) -> None:
        assert example.example and "EXAMPLE" in example.description
        example.save(tmp_path / "p.json")
        back = Profile.load(tmp_path / "p.json")
        assert back == example
        assert set(back.device_latency().head_ms) == {"block1", "block2", "block3"}

    def test_from_manifest(self, manifest: Manifest, device: DeviceLatency) -> None:
        server = {"early@0": 3.0, "early@1": 3.0, "late@0": 1.0, "offload": 4.0}
        p = Profile.from_manifest(manifest, device, server, framing_bytes=120.0)
        assert p.name == "m:1" and not p.example
        assert p.entry("late@0").device_ms == 40.0 and p.entry("offload").server_ms == 4.0
        assert p.total_macs == 1_000_000 and Profile.from_dict(p.to_dict()).total_macs == 1_000_000
        with pytest.raises(ConfigError, match="no server time"):
            Profile.from_manifest(manifest, device, {"offload": 4.0}, framing_bytes=120.0)

    def test_device_factor(self, example: Profile) -> None:
        slow = example.with_device_factor(3.0)
        assert slow.entry("local").device_ms == 3 * example.entry("local").device_ms
        assert slow.entry("offload").server_ms == example.entry("offload").server_ms
        assert "x3" in slow.name and example.with_device_factor(1.0) is example

    def test_mac_rate_adds_each_options_on_device_compute(self, example: Profile) -> None:
        with pytest.raises(ConfigError, match="total_macs"):
            example.with_mac_rate(100.0)  # the example records no MACs
        p = dataclasses.replace(example, total_macs=20_000_000)
        fast = p.with_mac_rate(100.0)  # 20 M MACs at 100 MMAC/s: 200 ms for the whole model
        assert fast.entry("local").device_ms == pytest.approx(p.entry("local").device_ms + 200.0)
        assert fast.entry("offload").device_ms == p.entry("offload").device_ms
        split = next(e for e in p.entries if e.option.kind == "split")
        head_ms = (1.0 - split.option.tail_share) * 200.0
        assert fast.entry(split.option.id).device_ms == pytest.approx(split.device_ms + head_ms)
        assert fast.entry(split.option.id).server_ms == split.server_ms
        assert "100 MMAC/s" in fast.name and "100 MMAC/s" in fast.description
        with pytest.raises(ValueError, match="positive"):
            p.with_mac_rate(0.0)

    def test_rejects_malformed(self, tmp_path: Path) -> None:
        (tmp_path / "bad.json").write_text('{"format": "other"}')
        with pytest.raises(ConfigError, match="not a splitserve profile"):
            Profile.load(tmp_path / "bad.json")
