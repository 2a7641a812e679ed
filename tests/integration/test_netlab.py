"""The network lab on real namespaces: tbf shapes the rate, the filler makes small messages pay for
their bytes, the relay adds delay, teardown leaves nothing behind. Needs root and iproute2."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.benchmarks.adaptation import run
from splitserve.benchmarks.netlab import DelayRelay, Filler, Netlab, TraceFollower, unavailable_reason
from splitserve.orchestrator.traces import step_trace

_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_REASON is not None, reason=f"netlab unavailable: {_REASON}"),
]
_TIMEOUT_S = 10.0


@pytest.fixture
def lab() -> Iterator[Netlab]:
    with Netlab(rate_bps=2e6) as lab:
        yield lab


def _listener(lab: Netlab) -> socket.socket:
    srv = lab.socket("cloud")
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((lab.cloud_ip, 0))
    srv.listen(4)
    srv.settimeout(_TIMEOUT_S)
    return srv


def _connect(lab: Netlab, address: tuple[str, int]) -> socket.socket:
    cli = lab.socket("edge")
    cli.settimeout(_TIMEOUT_S)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cli.connect(address)
    return cli


def _goodput_bps(lab: Netlab, nbytes: int) -> float:
    """Send ``nbytes`` edge -> cloud over TCP; goodput from the receiver's first to last byte."""
    srv = _listener(lab)
    result: dict[str, float] = {}

    def receive() -> None:
        conn, _ = srv.accept()
        conn.settimeout(_TIMEOUT_S)
        first = conn.recv(65536)
        t0, got = time.monotonic(), 0
        while got < nbytes - len(first):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        result["bps"] = 8.0 * got / (time.monotonic() - t0)
        conn.close()

    rx = threading.Thread(target=receive)
    rx.start()
    with _connect(lab, srv.getsockname()) as cli:
        cli.sendall(b"\x5a" * nbytes)
    rx.join(_TIMEOUT_S * 2)
    srv.close()
    return result["bps"]


def test_tbf_shapes_the_uplink_and_follows_rate_changes(lab: Netlab) -> None:
    for rate in (2e6, 500e3):
        lab.set_rate(rate)
        bps = _goodput_bps(lab, int(rate * 1.0 / 8))  # about a second of traffic
        # TCP/IP headers take ~4% of each 1514-byte frame the bucket counts
        assert 0.80 * rate < bps < 1.05 * rate, (rate, bps, lab.qdisc_stats())


def _one_way_ms(
    lab: Netlab, address: tuple[str, int], srv: socket.socket, nbytes: int, n: int
) -> list[float]:
    """Send ``n`` messages of ``nbytes`` 150 ms apart; time from send to complete receipt."""
    times: list[float] = []
    with _connect(lab, address) as cli:
        conn, _ = srv.accept()
        conn.settimeout(_TIMEOUT_S)
        with conn:
            for _ in range(n):
                time.sleep(0.15)
                t0 = time.monotonic()
                cli.sendall(b"\x5a" * nbytes)
                got = 0
                while got < nbytes:
                    got += len(conn.recv(65536))
                times.append((time.monotonic() - t0) * 1000.0)
    return times


def test_filler_makes_small_messages_pay_for_their_bytes(lab: Netlab) -> None:
    lab.set_rate(64e3)
    srv = _listener(lab)
    wire_ms = 8000.0 * (700 + 66) / 64e3  # payload + TCP/IP/Ethernet headers at 64 kbit/s: ~96 ms
    without = _one_way_ms(lab, srv.getsockname(), srv, 700, 3)
    assert min(without) < 0.5 * wire_ms  # the token bucket lets an idle link burst
    with Filler(lab) as filler:
        filler.rate_bps = 64e3
        time.sleep(0.3)
        shaped = _one_way_ms(lab, srv.getsockname(), srv, 700, 4)
    srv.close()
    assert all(0.75 * wire_ms < t < 1.5 * wire_ms for t in shaped), (shaped, wire_ms)


def test_relay_adds_the_round_trip_and_follows_a_trace(lab: Netlab) -> None:
    echo = _listener(lab)

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    with DelayRelay(lab, echo.getsockname(), one_way_ms=25.0) as relay, _connect(lab, relay.address) as cli:
        rtts = []
        for _ in range(5):
            t0 = time.monotonic()
            cli.sendall(b"ping")
            assert cli.recv(16) == b"ping"
            rtts.append((time.monotonic() - t0) * 1000.0)
        assert 48.0 < min(rtts) < 70.0, rtts
        trace = step_trace(levels_bps=(1e6, 250e3), hold_s=0.5, rtt_ms=80.0, dt_s=0.5)
        with TraceFollower(lab, trace, relay=relay) as follower:
            assert relay.one_way_ms == 40.0 and lab.rate_bps == 1e6
            time.sleep(0.7)
            assert lab.rate_bps == 250e3 and follower.elapsed_s() > 0.5
    echo.close()


def test_teardown_removes_the_namespaces() -> None:
    with Netlab() as lab:
        names = (lab.namespace("edge"), lab.namespace("cloud"))
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        assert all(n in listed for n in names)
        budget = lab.commands
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=False
    ).stdout
    assert not any(n in listed for n in names) and budget < 20


def test_live_adaptation_harness_end_to_end(tmp_path: Path) -> None:
    """The benchmark's live mode on a short step trace: emulated client and endpoint, real shaped link."""
    report = run(
        tmp_path,
        None,
        live=True,
        traces=("constant",),
        live_traces=("step",),
        live_duration_s=2.0,
        live_fixed=["offload"],
        plots=False,
        log=lambda _: None,
    )
    live = [t for t in report["traces"] if t["mode"] == "live"]
    assert report["live"]["client"] == "emulated" and len(live) == 1
    entry = live[0]
    assert {"orchestrator", "oracle", "best_fixed", "fixed:offload"} <= entry["policies"].keys()
    assert entry["requests"] > 10 and entry["settling"]
    for m in entry["policies"].values():
        assert {"mean_ms", "p95_ms", "miss_rate", "accuracy"} <= m.keys() and m["mean_ms"] > 0
    assert (tmp_path / "adaptation.json").is_file()
