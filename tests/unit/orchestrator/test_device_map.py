"""The device map's cost model on a hand-made profile: who wins where, and the plot."""

from __future__ import annotations

from pathlib import Path

from splitserve.benchmarks.device_map import RATES_MBIT, RTTS_MS, _plot, _split_band, link_map
from splitserve.orchestrator import Option, Profile, ProfileEntry


def _profile() -> Profile:
    def entry(oid: str, kind: str, payload: float, acc: float, device: float, server: float) -> ProfileEntry:
        split, level = (oid.split("@")[0], int(oid.split("@")[1])) if "@" in oid else (None, None)
        if kind == "offload":
            split = "input"
        option = Option(kind=kind, split=split, level=level, payload_bytes=payload, accuracy=acc,
                        tail_share={"local": 0.0, "offload": 1.0}.get(kind, 0.7))
        assert option.id == oid
        return ProfileEntry(option, device, server)

    return Profile(
        name="hand-made", framing_bytes=100.0,
        entries=(entry("local", "local", 0.0, 0.95, 50.0, 0.0),
                 entry("offload", "offload", 80_000.0, 1.0, 20.0, 10.0),
                 entry("s@0", "split", 2_000.0, 0.8, 25.0, 9.0),
                 entry("s@1", "split", 1_000.0, 0.6, 24.0, 9.0)),
    )


def test_splits_win_on_fast_short_links_and_local_on_slow_or_long_ones() -> None:
    m = link_map(_profile(), accuracy_floor=0.75)
    assert m["eligible"] == ["local", "offload", "s@0"]  # s@1 is below the floor
    fast = RATES_MBIT.index(max(RATES_MBIT))
    assert m["best"][RTTS_MS.index(1.0)][fast] == "s@0"  # 25 + 0.3 + 1 + 9 ms against 50 local
    assert m["best"][RTTS_MS.index(100.0)][fast] == "local"
    assert m["best"][RTTS_MS.index(1.0)][0] == "local"  # 2.1 KB at 0.25 Mbit/s: 67 ms on the wire
    band = {b["rtt_ms"]: b for b in _split_band(m)}
    assert band[1.0]["split_best_from_mbit"] is not None and band[100.0]["split_best_from_mbit"] is None
    assert band[1.0]["best_speedup"] > 1.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    m = link_map(_profile(), 0.75)
    result = {"rates_mbit": RATES_MBIT, "rtts_ms": RTTS_MS, "accuracy_floor": 0.75,
              "device_classes": {"this-cpu": {"slowdown": 1.0, "map": m}, "slow": {"slowdown": 3.0, "map": m}}}
    _plot(result, tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 5_000


def test_bench_adaptation_takes_a_device_class_for_a_measured_profile(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from splitserve.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["bench", "adaptation", "--device", "raspberry-pi-4", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--device needs --profile" in res.output
    _profile().save(tmp_path / "p.json")
    res = runner.invoke(cli, ["bench", "adaptation", "--profile", str(tmp_path / "p.json"), "--device", "raspberry-pi-4",
                              "--accuracy-floor", "0.75", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "device class raspberry-pi-4: x1.00" in res.output  # 49 ms published < 50 ms local: never below 1
