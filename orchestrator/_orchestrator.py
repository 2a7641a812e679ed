"""The orchestrator: estimators plus a policy, driven by the edge client.

::

    client start-up ── DeviceLatency ──────────────┐
    before request ── decide(deadline_ms) ──> policy(DecisionState) ──> SplitDecision
    after request  ── observe(Observation) ──> link / server / device estimators
    probe reply    ── observe_probe(ProbeResult) ──> link estimator (and the endpoint's queue report)
    re-measured    ── update_device(DeviceLatency) ──> device estimator

Expected latency of an option::

    device_ms(option) * device_slowdown
      + [remote] base_rtt_ms + (payload_bytes + framing_bytes) * 8000 / throughput_bps
      + [remote] server queue_ms + server_prior_ms(option) * server_slowdown

A remote option the client would give up on (expected beyond ``decide(remote_budget_ms=...)``, the time
the client allows a remote request before answering on the device) is priced as that wait plus the local
run, as the simulator prices a timeout. A request the client never sent (``Observation.sent`` false)
tells nothing about the link.

A remote request still in flight longer than its option's expected device and server time bounds the
network time of every remote option from below (the link is slower than believed; with a pipelined
client this reacts before the late reply arrives). While the device runs locally, nothing measures the
link's throughput, so decisions then ask for a sized background probe when no transfer (pings do not
count) has been seen for ``probe_interval_s`` (while the link is down, as soon as the previous probe has
failed; after a probe much faster than expected, at once, since the throughput estimate moves on two such
samples in a row, but only once in a row, so that the due ping is not starved); a bare ping every
``ping_interval_s`` keeps the base RTT apart from the transfer time. One probe is in flight at a time: the
:class:`~._probing.Prober` state machine says when and what kind. A sized probe is a real request of the
remote option quickest to run now (device time plus transfer at the current estimate: on a slow device
the PNG of offload, on a slow link the smallest split payload), named in ``SplitDecision.probe_option``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from splitserve.core.bundle import Manifest
from splitserve.core.errors import ConfigError

from ._estimators import (
    DeviceEstimator,
    Ewma,
    LinkEstimator,
    RttEstimator,
    ServerEstimator,
    ThroughputEstimator,
)
from ._options import options_from_manifest
from ._probing import ProbeKind, Prober
from ._typing import FloatArray
from .policies import DecisionState, Policy, create_policy
from .types import DeviceLatency, Estimates, Observation, Option, ProbeResult, SplitDecision

__all__ = ["Orchestrator", "OrchestratorConfig"]


@dataclass(frozen=True)
class OrchestratorConfig:
    """Estimator and probing settings (defaults suit a request every 50-500 ms).

    Attributes:
        framing_bytes: prior for request bytes beyond the payload, in the units of ``Observation.wire_bytes``
            (learned from observations): the edge client reports TCP payload, and a compact unary call's
            framing is 76 B of it (``splitserve bench wire``).
        prior_rtt_ms: base RTT before the first measurement.
        prior_bps: throughput before the first measurement.
        server_full_ms: endpoint time of the whole model, to derive per-option priors from tail shares
            when no per-option server times are given.
        throughput_window: samples in the throughput median.
        throughput_margin: safety factor on the throughput estimate.
        rtt_window_s: window of the reference ping (the faster of the last two).
        ewma_alpha: smoothing of device and server load factors and of the framing size.
        queue_alpha: smoothing of the queueing figures of replies (probe reports replace the estimate).
        queue_half_life_s: decay of the queueing estimate while nothing refreshes it.
        queue_hold_s: the endpoint's own report of its queue (a ping's or sized probe's reply) holds this
            long before it decays (longer than ``ping_interval_s``: reports keep it where they say).
        probe_interval_s: while running locally, send a sized probe when no transfer (a request or a sized
            probe; pings do not count) has been seen for this long.
        ping_interval_s: send a bare ping at least this often.
        probe_timeout_s: forget an unanswered probe after this long.
        pending_timeout_s: forget a decision never observed after this long.
    """

    framing_bytes: float = 76.0
    prior_rtt_ms: float = 50.0
    prior_bps: float = 1e6
    server_full_ms: float = 5.0
    throughput_window: int = 5
    throughput_margin: float = 0.9
    rtt_window_s: float = 1.5
    ewma_alpha: float = 0.3
    queue_alpha: float = 0.5
    queue_half_life_s: float = 2.0
    queue_hold_s: float = 1.0
    probe_interval_s: float = 0.25
    ping_interval_s: float = 0.5
    probe_timeout_s: float = 2.0
    pending_timeout_s: float = 30.0


class Orchestrator:
    """Chooses split, level, local or offload for every request from measured conditions.

    Args:
        options: the option set (see :func:`options_from_manifest`).
        device: latencies measured on this device at start-up.
        policy: a registered policy name or a policy object.
        accuracy_floor: options below this accuracy are never chosen (unless none meets it).
        latency_target_ms: default latency target (``decide(deadline_ms=...)`` overrides it per request).
        server_ms: per option id, the endpoint's compute time (decode + tail), e.g. from a profile;
            options missing here get ``config.server_full_ms * tail_share``.
        config: estimator and probing settings.
        clock: monotonic time in seconds (the simulator passes its own).

    Raises:
        ConfigError: duplicate option ids, or no device measurement for an option.
    """

    def __init__(
        self,
        options: Iterable[Option],
        device: DeviceLatency,
        *,
        policy: str | Policy = "min_latency",
        accuracy_floor: float = 0.0,
        latency_target_ms: float | None = None,
        server_ms: Mapping[str, float] | None = None,
        config: OrchestratorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = tuple(options)
        ids = [o.id for o in self.options]
        if len(set(ids)) != len(ids) or not ids:
            raise ConfigError(f"option ids must be unique and non-empty, got {ids}")
        self.config = cfg = config or OrchestratorConfig()
        self.policy: Policy = create_policy(policy) if isinstance(policy, str) else policy
        self.accuracy_floor = accuracy_floor
        self.latency_target_ms = latency_target_ms
        self._clock = clock
        self._index = {oid: i for i, oid in enumerate(ids)}
        self._remote = np.array([o.remote for o in self.options])
        self._payload = np.array([o.payload_bytes for o in self.options], dtype=float)
        self._device = DeviceEstimator(self._device_ms(device), alpha=cfg.ewma_alpha)
        self._device_base = np.array([self._device.measured_ms[oid] for oid in ids])
        self._local_ms = device.local_ms
        server = dict(server_ms or {})
        priors = {
            o.id: float(server.get(o.id, cfg.server_full_ms * max(o.tail_share, 0.0))) for o in self.options if o.remote
        }
        self._server_prior = np.array([priors.get(oid, 0.0) for oid in ids])
        self._server = ServerEstimator(
            priors,
            alpha=cfg.ewma_alpha,
            queue_alpha=cfg.queue_alpha,
            queue_half_life_s=cfg.queue_half_life_s,
            queue_hold_s=cfg.queue_hold_s,
        )
        self._link = LinkEstimator(
            ThroughputEstimator(window=cfg.throughput_window, margin=cfg.throughput_margin),
            RttEstimator(window_s=cfg.rtt_window_s),
            prior_rtt_ms=cfg.prior_rtt_ms,
            prior_bps=cfg.prior_bps,
        )
        self._framing = Ewma(cfg.ewma_alpha, cfg.framing_bytes)
        self._current: int | None = None
        self._held = 0
        self._pending: deque[tuple[float, str]] = deque()
        self._prober = Prober(
            self._link,
            probe_interval_s=cfg.probe_interval_s,
            ping_interval_s=cfg.ping_interval_s,
            timeout_s=cfg.probe_timeout_s,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, device: DeviceLatency, **kwargs: object) -> Orchestrator:
        """An orchestrator over every option of ``manifest``; ``kwargs`` as for the constructor."""
        return cls(options_from_manifest(manifest), device, **kwargs)  # type: ignore[arg-type]

    def decide(
        self, *, deadline_ms: float | None = None, remote_budget_ms: float | None = None
    ) -> SplitDecision:
        """Choose the option for the next request.

        Args:
            deadline_ms: this request's latency budget; overrides ``latency_target_ms``.
            remote_budget_ms: how long the client lets a remote option take (device work included)
                before it answers on the device instead; ``None``: no limit.
        """
        now = self._clock()
        self._expire(now)
        expected = self._with_fallback(self._expected_ms(now), remote_budget_ms)
        horizon = self.policy.horizon
        forecast = None
        if horizon > 0:
            forecast = self._with_fallback(self._forecast_ms(now, expected, horizon), remote_budget_ms)
        state = DecisionState(
            options=self.options,
            expected_ms=expected,
            forecast_ms=forecast,
            accuracy_floor=self.accuracy_floor,
            latency_target_ms=deadline_ms if deadline_ms is not None else self.latency_target_ms,
            current=self._current,
            held=self._held,
        )
        choice = self.policy.decide(state)
        if choice.index == self._current:
            self._held += 1
        else:
            self._current, self._held = choice.index, 1
        option = self.options[choice.index]
        if option.remote:
            self._pending.append((now, option.id))
            self._prober.remote_sent()
        probe_bytes, probe_option = self._probe(now, option)
        return SplitDecision(
            kind=option.kind,
            split=option.split,
            level=option.level,
            expected_latency_ms=float(expected[choice.index]),
            expected_accuracy=option.accuracy,
            reason=choice.reason,
            option_id=option.id,
            probe_bytes=probe_bytes,
            probe_option=probe_option,
        )

    def observe(self, obs: Observation) -> None:
        """Feed back what happened to one request.

        Raises:
            ConfigError: ``obs.option_id`` is not an option of this orchestrator.
        """
        now = self._clock()
        option = self._option(obs.option_id)
        self._settle(obs.option_id)
        self._device.observe(option.id, obs.device_ms)
        if not option.remote or not obs.sent:
            return
        if obs.failed or obs.rtt_ms is None:
            self._link.observe_failure(now, obs.wire_bytes, obs.rtt_ms)
            return
        server_total = obs.server.total_ms if obs.server is not None else 0.0
        sent = now - obs.rtt_ms / 1e3
        self._link.observe(now, obs.wire_bytes, max(obs.rtt_ms - server_total, 0.0), sent_s=sent)
        if obs.server is not None:
            queue = max(obs.server.queue_ms, obs.server.queue_delay_ms)
            self._server.observe(now, option.id, queue, max(obs.server.total_ms - obs.server.queue_ms, 0.0))
        if obs.wire_bytes > obs.payload_bytes > 0:
            self._framing.add(obs.wire_bytes - obs.payload_bytes)

    def observe_probe(self, result: ProbeResult) -> None:
        """Feed back a background probe's outcome (and the endpoint's queue report it carries, if any)."""
        now = self._clock()
        self._prober.observe(now, result)
        if not result.failed and result.queue_ms is not None:
            self._server.report_queue(now, result.queue_ms)

    def update_device(self, device: DeviceLatency) -> None:
        """Replace the device measurements with fresh ones (the client re-measured its heads).

        Raises:
            ConfigError: no measurement for an option.
        """
        self._device.refresh(self._device_ms(device))
        self._device_base = np.array([self._device.measured_ms[o.id] for o in self.options])
        self._local_ms = device.local_ms

    def estimates(self) -> Estimates:
        """What the orchestrator believes now."""
        now = self._clock()
        expected = self._expected_ms(now)
        return Estimates(
            base_rtt_ms=self._link.base_rtt_ms(),
            throughput_bps=self._link.bps(),
            link_up=self._link.up,
            queue_ms=self._server.queue_ms(now),
            server_slowdown=self._server.slowdown(now),
            device_slowdown=self._device.slowdown,
            framing_bytes=self._framing_bytes(),
            expected_ms={o.id: float(e) for o, e in zip(self.options, expected)},
        )

    # -- internals -------------------------------------------------------------------------------

    def _option(self, option_id: str) -> Option:
        try:
            return self.options[self._index[option_id]]
        except KeyError:
            raise ConfigError(f"unknown option id {option_id!r} (options: {sorted(self._index)})") from None

    def _device_ms(self, device: DeviceLatency) -> dict[str, float]:
        try:
            return {o.id: device.for_option(o) for o in self.options}
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None

    def _framing_bytes(self) -> float:
        return self._framing.value if self._framing.value is not None else self.config.framing_bytes

    def _fixed_ms(self, now: float) -> FloatArray:
        """Device time of every option, plus expected server time for remote ones."""
        queue = self._server.queue_ms(now)
        device = self._device_base * self._device.slowdown
        server = self._server_prior * self._server.slowdown(now) + queue
        fixed: FloatArray = device + np.where(self._remote, server, 0.0)
        return fixed

    def _stall_ms(self, now: float) -> float:
        """Lower bound on network time implied by the oldest remote request still in flight."""
        if not self._pending:
            return 0.0
        sent_s, oid = self._pending[0]
        o = self._option(oid)
        elapsed = (now - sent_s) * 1000.0 - self._device.expected_ms(oid) - self._server.compute_ms(oid, now)
        predicted = float(self._link.network_ms(np.array(o.payload_bytes + self._framing_bytes())))
        return elapsed if elapsed > predicted else 0.0

    def _expected_ms(self, now: float) -> FloatArray:
        network = np.maximum(
            self._link.network_ms(self._payload + self._framing_bytes()), self._stall_ms(now)
        )
        expected: FloatArray = self._fixed_ms(now) + np.where(self._remote, network, 0.0)
        return expected

    def _with_fallback(self, cost: FloatArray, remote_budget_ms: float | None) -> FloatArray:
        """``cost`` with every remote option expected beyond the budget priced as its local fallback.

        The client gives up at the budget (or sends nothing when the device work alone exceeds it) and
        runs the whole model on the device: ``max(budget, device time) + local time``.
        """
        if remote_budget_ms is None:
            return cost
        budget = max(remote_budget_ms, 0.0)
        device = self._device_base * self._device.slowdown
        fallback = np.maximum(budget, device) + self._local_ms * self._device.slowdown
        late = self._remote & (cost > budget)
        priced: FloatArray = np.where(late, fallback, cost)
        return priced

    def _forecast_ms(self, now: float, expected: FloatArray, horizon: int) -> FloatArray:
        network = self._link.forecast_network_ms(self._payload + self._framing_bytes(), horizon)
        network = np.maximum(network, self._stall_ms(now))
        forecast: FloatArray = self._fixed_ms(now)[None, :] + np.where(self._remote[None, :], network, 0.0)
        forecast[0] = expected
        return forecast

    def _settle(self, option_id: str) -> None:
        for i, (_, oid) in enumerate(self._pending):
            if oid == option_id:
                del self._pending[i]
                return

    def _expire(self, now: float) -> None:
        while self._pending and now - self._pending[0][0] > self.config.pending_timeout_s:
            self._pending.popleft()
        self._prober.expire(now)

    def _probe(self, now: float, chosen: Option) -> tuple[int | None, str | None]:
        """The probe to send beside this request: (wire bytes, option id of a sized probe); (0, None) is a
        ping."""
        if not self._remote.any():
            return None, None
        kind = self._prober.next(now, local=not chosen.remote, remote_in_flight=bool(self._pending))
        if kind is None:
            return None, None
        if kind is ProbeKind.PING:
            return 0, None
        # The remote request quickest to run now: on a slow device a head costs more than the bytes it
        # saves, on a slow link the bytes cost more than the head.
        remote = np.flatnonzero(self._remote)
        wire = self._payload[remote] + self._framing_bytes()
        cost = self._device_base[remote] * self._device.slowdown + 8000.0 * wire / self._link.bps()
        best = int(np.argmin(cost))
        return round(float(wire[best])), self.options[remote[best]].id
