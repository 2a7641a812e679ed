"""The probing state machine: one probe in flight, sized while local, pings between, confirmation once."""

from __future__ import annotations

from splitserve.orchestrator._estimators import LinkEstimator, RttEstimator, ThroughputEstimator
from splitserve.orchestrator._probing import ProbeKind, Prober
from splitserve.orchestrator.types import ProbeResult


def _prober() -> Prober:
    link = LinkEstimator(
        ThroughputEstimator(window=5), RttEstimator(window_s=1.5), prior_rtt_ms=50.0, prior_bps=1e6
    )
    return Prober(link, probe_interval_s=0.25, ping_interval_s=0.5, timeout_s=2.0)


def test_a_quiet_link_gets_a_sized_probe_while_local_and_a_ping_otherwise() -> None:
    p = _prober()
    assert p.next(0.0, local=True, remote_in_flight=False) is ProbeKind.SIZED
    assert p.in_flight and p.next(0.1, local=True, remote_in_flight=False) is None  # one at a time
    p.observe(0.1, ProbeResult(1000, 60.0, failed=True))
    assert not p.in_flight
    assert p.next(0.2, local=False, remote_in_flight=True) is ProbeKind.PING
    assert p.contended and p.last_ping_s == 0.2


def test_a_remote_request_sent_during_a_ping_contends_it() -> None:
    p = _prober()
    assert p.next(0.0, local=False, remote_in_flight=False) is ProbeKind.PING and not p.contended
    p.remote_sent()
    assert p.contended


def test_a_fast_sized_probe_is_confirmed_once() -> None:
    p = _prober()
    assert p.next(0.0, local=True, remote_in_flight=False) is ProbeKind.SIZED
    p.observe(0.01, ProbeResult(20_000, 1.0))  # far faster than the 1 Mbit/s prior
    assert p.confirm_due
    assert p.next(0.02, local=True, remote_in_flight=False) is ProbeKind.CONFIRMING
    p.observe(0.03, ProbeResult(20_000, 1.0))
    assert not p.confirm_due  # not a third: the due ping goes next
    assert p.next(0.04, local=False, remote_in_flight=False) is ProbeKind.PING


def test_an_overdue_probe_is_forgotten_but_a_late_outcome_reads_as_what_was_sent() -> None:
    p = _prober()
    p.next(0.0, local=False, remote_in_flight=False)
    p.expire(1.0)
    assert p.in_flight
    p.expire(2.5)
    assert not p.in_flight and p.kind is ProbeKind.PING
    p.observe(3.0, ProbeResult(124, 40.0))
    assert p.kind is None and not p.confirm_due
