"""Replay a bandwidth trace against a profile: orchestrator policies, every fixed option, hindsight oracle.

Requests arrive every ``interval_ms`` (open loop: the same request times for every policy). For option
``o`` and request ``i`` starting at ``t``::

    device    = device_ms[o] * d_i                              (local: that is all)
    send      = t + device
    network   = rtt(send) + transfer(send, (payload[o] * p_i + framing) * 8 bits)   (trace-integrated)
    server    = queue(send) + server_ms[o] * s_i
    latency   = device + network + server,   or timeout_ms + local device time when that exceeds timeout_ms

An orchestrated request gives up sooner, at ``give_up_factor`` times the latency the orchestrator
expected for it but not before ``give_up_min_ms`` (when that is less than ``timeout_ms``), as the edge
client does; fixed options and the oracle expect nothing and wait the whole ``timeout_ms``.

``d_i``, ``p_i``, ``s_i`` are per-request factors (log-normal, mean 1, the profile's CVs) drawn once from
the seed and shared by every policy, so policies are compared on identical requests. The orchestrator
gets the observations a real client would, when the reply would arrive: device time, bytes, wall time,
server timings, or a failure at the timeout; probes it asks for run beside the request on the same trace.
Requests and probes do not share the link's capacity (a simplification: both are small). A probe that
gets a reply (a bare ping or a sized probe) carries the endpoint's report of its queue, the trace's
``queue_ms`` when the probe reaches the endpoint (sent + transfer + half the round trip), unless
``SimConfig.server_reports`` is off (an old endpoint whose pings say nothing). A request's reply reports
the queue at its send time, as what it waited and as the endpoint's current figure.

The oracle takes, for every request, the option with the lowest true latency among those that meet the
accuracy floor. The best fixed option is the fixed option with the lowest mean latency among those that
meet the accuracy floor.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._typing import BoolArray, FloatArray, IntArray
from .profile import Profile
from .traces import Trace
from .types import Decider, Observation, ProbeResult, ServerTimings

__all__ = ["Metrics", "Run", "SimConfig", "Simulation", "lognormal_factors", "metrics_of"]

_DECODE_SHARE = 0.25  # share of server time reported as decode_ms (the rest as tail_ms)


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings.

    Attributes:
        interval_ms: time between request arrivals.
        deadline_ms: latency deadline (miss rate, and the target passed to ``decide``).
        timeout_ms: the client gives up on a remote request after this long and runs locally.
        give_up_factor: the client also gives up once a remote request has taken this many times the
            latency the orchestrator expected for it (0: only at ``timeout_ms``), as the edge client does
            (``EdgeConfig.give_up_factor``).
        give_up_min_ms: but not before this (``EdgeConfig.give_up_min_s``).
        accuracy_floor: minimum accuracy for the oracle, the best fixed option and the orchestrator.
        seed: seed of the per-request factors.
        ping_bytes: wire size of a bare ping RPC (``Ping``: 58 B of TCP payload up, ``splitserve bench
            wire``, plus 66 B of Ethernet and TCP/IP headers).
        server_reports: probe replies carry the endpoint's queue (``ProbeResult.queue_ms``); ``False``
            models an endpoint whose pings and probe replies say nothing of its load.
    """

    interval_ms: float = 100.0
    deadline_ms: float = 100.0
    timeout_ms: float = 250.0
    give_up_factor: float = 3.0
    give_up_min_ms: float = 50.0
    accuracy_floor: float = 0.91
    seed: int = 0
    ping_bytes: int = 124
    server_reports: bool = True


@dataclass(frozen=True)
class Metrics:
    """Latency and accuracy summary of one policy on one trace."""

    mean_ms: float
    p95_ms: float
    miss_rate: float
    accuracy: float

    def to_dict(self) -> dict[str, float]:
        return {
            "mean_ms": self.mean_ms,
            "p95_ms": self.p95_ms,
            "miss_rate": self.miss_rate,
            "accuracy": self.accuracy,
        }


def metrics_of(latency_ms: FloatArray, accuracy: FloatArray, deadline_ms: float) -> Metrics:
    return Metrics(
        mean_ms=float(np.mean(latency_ms)),
        p95_ms=float(np.percentile(latency_ms, 95)),
        miss_rate=float(np.mean(latency_ms > deadline_ms)),
        accuracy=float(np.mean(accuracy)),
    )


@dataclass(frozen=True, eq=False)
class Run:
    """Per-request record of one policy on one trace.

    Attributes:
        policy: label.
        t_s: request start times.
        choice: index of the option used per request (into ``Simulation.ids``).
        latency_ms: end-to-end latency per request.
        accuracy: accuracy of the option that produced the answer per request.
        fell_back: the remote request timed out and the device answered locally.
    """

    policy: str
    t_s: FloatArray
    choice: IntArray
    latency_ms: FloatArray
    accuracy: FloatArray
    fell_back: BoolArray

    def metrics(self, deadline_ms: float) -> Metrics:
        return metrics_of(self.latency_ms, self.accuracy, deadline_ms)

    @property
    def switches_per_100(self) -> float:
        return float(100.0 * np.count_nonzero(np.diff(self.choice)) / max(len(self.choice) - 1, 1))


class Simulation:
    """One trace, one profile, one configuration: every option's true latency for every request.

    Args:
        trace: the network trace.
        profile: the option profile.
        config: settings.
    """

    def __init__(self, trace: Trace, profile: Profile, config: SimConfig | None = None) -> None:
        self.trace, self.profile = trace, profile
        self.config = cfg = config or SimConfig()
        self.ids = profile.ids
        opts = profile.options
        n = int(trace.duration_s * 1000.0 / cfg.interval_ms)
        self.t_s = np.arange(n) * cfg.interval_ms / 1000.0
        rng = np.random.default_rng(cfg.seed)
        self._dev_f = lognormal_factors(rng, profile.device_cv, n)
        self._pay_f = lognormal_factors(rng, profile.payload_cv, n)
        self._srv_f = lognormal_factors(rng, profile.server_cv, n)
        self.accuracy = np.array([o.accuracy for o in opts])
        self.eligible = self.accuracy >= cfg.accuracy_floor - 1e-9
        self.remote = np.array([o.remote for o in opts])
        kinds = [o.kind for o in opts]
        self._local = kinds.index("local") if "local" in kinds else None
        dev = np.array([e.device_ms for e in profile.entries])
        self.device_ms = self._dev_f[:, None] * dev[None, :]
        self.wire_bytes = np.where(
            self.remote[None, :],
            self._pay_f[:, None] * np.array([o.payload_bytes for o in opts])[None, :] + profile.framing_bytes,
            0.0,
        )
        send = self.t_s[:, None] + self.device_ms / 1000.0
        k = trace.index(send)
        self.network_ms = np.where(
            self.remote[None, :], trace.rtt_ms[k] + trace.transfer_ms(send, 8.0 * self.wire_bytes), 0.0
        )
        self.queue_ms = np.where(self.remote[None, :], trace.queue_ms[k], 0.0)
        self.compute_ms = self._srv_f[:, None] * np.array([e.server_ms for e in profile.entries])[None, :]
        self.total_ms = total = (
            self.device_ms
            + self.network_ms
            + np.where(self.remote[None, :], self.queue_ms + self.compute_ms, 0.0)
        )
        self.timed_out = self.remote[None, :] & (total > cfg.timeout_ms)
        self.latency_ms = np.where(self.timed_out, cfg.timeout_ms + self._local_ms()[:, None], total)

    def _local_ms(self) -> FloatArray:
        if self._local is None:
            return np.full(len(self.t_s), np.inf)
        local: FloatArray = self.device_ms[:, self._local]
        return local

    def _answer_accuracy(self, rows: IntArray, cols: IntArray) -> FloatArray:
        acc: FloatArray = self.accuracy[cols]
        if self._local is not None:
            acc = np.where(self.timed_out[rows, cols], self.accuracy[self._local], acc)
        return acc

    def _run(self, policy: str, choice: IntArray, give_up_ms: FloatArray | None = None) -> Run:
        rows = np.arange(len(self.t_s))
        latency, timed_out = self.latency_ms[rows, choice], self.timed_out[rows, choice]
        accuracy = self._answer_accuracy(rows, choice)
        if give_up_ms is not None:
            early = self.remote[choice] & (self.total_ms[rows, choice] > give_up_ms)
            latency = np.where(early, give_up_ms + self._local_ms(), latency)
            timed_out = timed_out | early
            if self._local is not None:
                accuracy = np.where(early, self.accuracy[self._local], accuracy)
        return Run(policy, self.t_s, choice, latency, accuracy, timed_out)

    def fixed(self, option_id: str) -> Run:
        """Every request served by ``option_id``."""
        return self._run(f"fixed:{option_id}", np.full(len(self.t_s), self.ids.index(option_id)))

    def oracle(self) -> Run:
        """Hindsight: per request the fastest option that meets the accuracy floor."""
        pool = self.eligible if self.eligible.any() else np.ones_like(self.eligible)
        return self._run("oracle", np.argmin(np.where(pool[None, :], self.latency_ms, np.inf), axis=1))

    def best_fixed(self) -> str:
        """Id of the fixed option with the lowest mean latency among those that meet the accuracy floor."""
        pool = self.eligible if self.eligible.any() else np.ones_like(self.eligible)
        means = np.where(pool, self.latency_ms.mean(axis=0), np.inf)
        return self.ids[int(np.argmin(means))]

    def orchestrate(self, policy: str, factory: Callable[[Callable[[], float]], Decider]) -> Run:
        """Drive an orchestrator built by ``factory(clock)`` through the trace.

        Observations and probe results are delivered at the simulated time the client would get them.
        """
        cfg = self.config
        now = [0.0]
        orch = factory(lambda: now[0])
        events: list[tuple[float, int, Observation | ProbeResult]] = []
        seq = 0
        choice = np.empty(len(self.t_s), dtype=int)
        give_up = np.full(len(self.t_s), cfg.timeout_ms)
        index = {oid: i for i, oid in enumerate(self.ids)}
        for i, t in enumerate(self.t_s):
            while events and events[0][0] <= t:
                now[0], _, item = heapq.heappop(events)
                if isinstance(item, Observation):
                    orch.observe(item)
                else:
                    orch.observe_probe(item)
            now[0] = t
            decision = orch.decide(deadline_ms=cfg.deadline_ms, remote_budget_ms=cfg.timeout_ms)
            o = index[decision.option_id]
            choice[i] = o
            if cfg.give_up_factor > 0 and self.remote[o]:
                give_up_ms = max(cfg.give_up_factor * decision.expected_latency_ms, cfg.give_up_min_ms)
                give_up[i] = min(cfg.timeout_ms, give_up_ms)
            pending: list[tuple[float, Observation | ProbeResult]] = [self._observation(i, o, give_up[i])]
            if decision.probe_bytes is not None:
                sent = float(t)
                if decision.probe_option is not None:  # a sized probe: its device work comes first
                    sent += float(self.device_ms[i, index[decision.probe_option]]) / 1000.0
                pending.append(self._probe(sent, decision.probe_bytes))
            for done_s, item in pending:
                heapq.heappush(events, (done_s, seq, item))
                seq += 1
        return self._run(policy, choice, give_up)

    def _observation(self, i: int, o: int, give_up_ms: float) -> tuple[float, Observation]:
        t = float(self.t_s[i])
        oid = self.ids[o]
        dev = float(self.device_ms[i, o])
        if not self.remote[o]:
            return t + dev / 1000.0, Observation(oid, device_ms=dev)
        payload = round(self.wire_bytes[i, o] - self.profile.framing_bytes)
        wire = round(self.wire_bytes[i, o])
        if self.total_ms[i, o] > give_up_ms:
            waited = give_up_ms - dev
            return t + give_up_ms / 1000.0, Observation(
                oid, device_ms=dev, payload_bytes=payload, wire_bytes=wire, rtt_ms=waited, failed=True
            )
        queue, compute = float(self.queue_ms[i, o]), float(self.compute_ms[i, o])
        server = ServerTimings(
            decode_ms=_DECODE_SHARE * compute,
            queue_ms=queue,
            tail_ms=(1 - _DECODE_SHARE) * compute,
            total_ms=queue + compute,
            queue_delay_ms=queue,
        )
        rtt = float(self.network_ms[i, o]) + queue + compute
        return t + (dev + rtt) / 1000.0, Observation(
            oid, device_ms=dev, payload_bytes=payload, wire_bytes=wire, rtt_ms=rtt, server=server
        )

    def _probe(self, t: float, probe_bytes: int) -> tuple[float, ProbeResult]:
        """A probe sent at ``t``: when its outcome arrives, and the outcome (with the queue it finds)."""
        wire_bytes = probe_bytes or self.config.ping_bytes
        k = int(self.trace.index(t))
        rtt = float(self.trace.rtt_ms[k])
        transfer = float(self.trace.transfer_ms(np.array([t]), np.array([8.0 * wire_bytes]))[0])
        net = rtt + transfer
        timeout = self.config.timeout_ms
        if net > timeout:
            return t + timeout / 1000.0, ProbeResult(wire_bytes, timeout, failed=True)
        queue = None
        if self.config.server_reports:
            queue = float(self.trace.queue_ms[self.trace.index(t + (transfer + 0.5 * rtt) / 1000.0)])
        return t + net / 1000.0, ProbeResult(wire_bytes, net, queue_ms=queue)


def lognormal_factors(rng: np.random.Generator, cv: float, n: int) -> FloatArray:
    """Log-normal factors with mean 1 and coefficient of variation ``cv``."""
    s = np.sqrt(np.log1p(cv**2))
    return rng.lognormal(-0.5 * s**2, s, n) if cv > 0 else np.ones(n)
