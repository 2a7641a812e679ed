"""When the orchestrator asks for a background probe of the link, and what a probe's outcome teaches it.

While the device runs locally, nothing measures the link's throughput, so the orchestrator asks the
client for probes beside its decisions: a sized probe (a real request of a remote option) when no
transfer has been seen for a while, and a bare ping now and then to keep the base RTT apart from the
transfer time. :class:`Prober` is that state machine; the orchestrator picks which option a sized probe
sends.
"""

from __future__ import annotations

import enum
import math

import numpy as np

from ._estimators import LinkEstimator
from .types import ProbeResult

__all__ = ["ProbeKind", "Prober"]

_RISE_RATIO = 1.5  # a sized probe this many times faster than expected is confirmed at once


class ProbeKind(enum.Enum):
    """What a probe is."""

    PING = "ping"  # a bare ping: base RTT (and the endpoint's load report)
    SIZED = "sized"  # a real request of ~n bytes: throughput
    CONFIRMING = "confirming"  # a sized probe sent at once because the previous one beat its expected time


class Prober:
    """The probing state machine: at most one probe in flight, its kind, and what is due next.

    States: IDLE (``sent_s`` is None) or one probe in flight, of ``kind`` SIZED, CONFIRMING or PING.
    Transitions::

        IDLE ──next(): local, and the link quiet or confirm_due──> SIZED in flight
                       (CONFIRMING when confirm_due alone asked for it); confirm_due cleared
        IDLE ──next(): otherwise, ping_interval_s since the last ping──> PING in flight
                       (contended when a remote request is in flight; remote_sent() sets it later)
        in flight ──observe(result)──> IDLE; confirm_due = the probe was SIZED (not CONFIRMING) and came
                       back _RISE_RATIO times faster than expected (a failed probe leaves it as it was)
        in flight ──expire(), timeout_s old──> IDLE, its kind kept (CONFIRMING as SIZED) so that a late
                       outcome is still read as what was sent

    The link is quiet when it is down or no transfer (a request or a sized probe; pings do not count)
    has been seen for ``probe_interval_s``. ``confirm_due`` holds once in a row only: a confirming
    probe that beats its expected time again is not confirmed by a third, so the due ping goes out next.
    Otherwise, after a slow first ping (a cold connection), every sized probe beats the stale reference,
    each is "confirmed" by another, no ping ever refreshes the reference, and the device stays local for
    good.

    Args:
        link: the link estimator the outcomes feed (and whose activity says when the link is quiet).
        probe_interval_s: see ``OrchestratorConfig.probe_interval_s``.
        ping_interval_s: see ``OrchestratorConfig.ping_interval_s``.
        timeout_s: forget an unanswered probe after this long (``OrchestratorConfig.probe_timeout_s``).
    """

    def __init__(
        self, link: LinkEstimator, *, probe_interval_s: float, ping_interval_s: float, timeout_s: float
    ) -> None:
        self._link = link
        self.probe_interval_s = probe_interval_s
        self.ping_interval_s = ping_interval_s
        self.timeout_s = timeout_s
        self.sent_s: float | None = None  # when the probe in flight was sent (None: none is)
        self.kind: ProbeKind | None = None  # the last probe sent whose outcome has not come back
        self.contended = False  # the ping in flight shares the link with a remote request
        self.confirm_due = False  # the last sized probe beat its expected time: probe again at once
        self.last_ping_s = -math.inf

    @property
    def in_flight(self) -> bool:
        return self.sent_s is not None

    def expire(self, now: float) -> None:
        """Forget the probe in flight once it is ``timeout_s`` old."""
        if self.sent_s is not None and now - self.sent_s > self.timeout_s:
            self.sent_s = None
            if self.kind is ProbeKind.CONFIRMING:
                self.kind = ProbeKind.SIZED

    def remote_sent(self) -> None:
        """A remote request goes out now: a ping in flight shares the link with it."""
        self.contended |= self.kind is ProbeKind.PING and self.sent_s is not None

    def next(self, now: float, *, local: bool, remote_in_flight: bool) -> ProbeKind | None:
        """The probe to send beside a decision now (``local``: it runs on the device), if any.

        Args:
            now: the clock.
            local: the decision keeps the request off the link.
            remote_in_flight: a remote request is in flight (this one included).
        """
        if self.sent_s is not None:
            return None
        quiet = not self._link.up or now - self._link.last_transfer_s >= self.probe_interval_s
        if local and (quiet or self.confirm_due):
            self.kind = ProbeKind.CONFIRMING if self.confirm_due and not quiet else ProbeKind.SIZED
            self.sent_s, self.confirm_due = now, False
            return self.kind
        if now - self.last_ping_s >= self.ping_interval_s:
            self.sent_s = self.last_ping_s = now
            self.kind = ProbeKind.PING
            self.contended = remote_in_flight
            return self.kind
        return None

    def observe(self, now: float, result: ProbeResult) -> None:
        """Feed a probe's outcome to the link (read as the kind last sent; without one, as sized)."""
        kind, self.kind, self.sent_s = self.kind, None, None
        ping = kind is ProbeKind.PING
        if result.failed:
            self._link.observe_failure(now, sent_s=now - result.rtt_ms / 1e3)
            return
        expected = float(self._link.network_ms(np.array(float(result.wire_bytes))))
        contended = ping and self.contended
        self._link.observe(now, result.wire_bytes, result.rtt_ms, ping=ping, contended=contended)
        self.confirm_due = kind in (ProbeKind.SIZED, None) and result.rtt_ms * _RISE_RATIO < expected
