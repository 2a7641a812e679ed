"""Estimators of link, server and device behaviour from what the edge client observes.

Throughput follows what adaptive-bitrate video players learned: a sliding *weighted median* of recent
samples, weighted by the square root of their bytes (as ExoPlayer's bandwidth meter does), is robust to a
single outlier in either direction; a *level-shift rule* follows two consecutive samples that both sit
``shift_ratio`` times below or above the median (a clear step, followed within two requests rather than
the median's three; jitter on small transfers rarely gives two clear outliers in a row); a *safety margin*
scales the result down. For lookahead, a damped trend (Gardner and McKenzie, Management Science 1985) in log
bandwidth extrapolates, discounted by the largest recent relative prediction error, as RobustMPC does
(Yin et al., SIGCOMM 2015).

The round trip splits in two: a base part and a transfer part, wire bytes over throughput::

    rtt_ms (client wall time) - server total_ms  =  network_ms  =  base_rtt_ms + wire_bytes * 8000 / bps

With one payload size the two are not separable from requests alone (any split fits), and estimating each
from the other feeds errors back (a stale low throughput once drove our base estimate to zero after a
bandwidth rise). So every transfer is measured against a reference: a bare ping (the orchestrator asks
for one every ``ping_interval_s``); see :class:`LinkEstimator`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._typing import FloatArray

__all__ = [
    "DeviceEstimator",
    "Ewma",
    "LinkEstimator",
    "RttEstimator",
    "ServerEstimator",
    "ThroughputEstimator",
]

_MIN_TRANSFER_MS = 0.05


@dataclass
class Ewma:
    """Exponentially weighted moving average; ``value`` is ``None`` until the first sample."""

    alpha: float
    value: float | None = None

    def add(self, sample: float) -> float:
        self.value = sample if self.value is None else self.alpha * sample + (1.0 - self.alpha) * self.value
        return self.value


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The smallest value at which the cumulative weight reaches half the total (short windows)."""
    pairs = sorted(zip(values, weights))
    half = 0.5 * sum(weights)
    cum = 0.0
    for value, weight in pairs:
        cum += weight
        if cum >= half:
            return value
    return pairs[-1][0]


class ThroughputEstimator:
    """Robust throughput from (wire bytes, transfer time) samples.

    Args:
        window: samples kept for the sliding median.
        margin: safety factor applied to the estimate (0.9 plans with 90% of the measured rate).
        shift_ratio: two consecutive samples this many times below or above the median replace it.
        trend_alpha: smoothing of the log-bandwidth level for the trend.
        trend_beta: smoothing of the trend.
        trend_damping: per-step damping of the trend in forecasts (phi < 1).
    """

    def __init__(
        self,
        *,
        window: int = 5,
        margin: float = 0.9,
        shift_ratio: float = 1.5,
        trend_alpha: float = 0.5,
        trend_beta: float = 0.3,
        trend_damping: float = 0.8,
    ) -> None:
        if window < 1 or not 0.0 < margin <= 1.0:
            raise ValueError(f"window must be >= 1 and margin in (0, 1], got {window} and {margin}")
        self.margin = margin
        self.shift_ratio = shift_ratio
        self._bps: deque[float] = deque(maxlen=window)
        self._weight: deque[float] = deque(maxlen=window)
        self._errors: deque[float] = deque(maxlen=window)
        self._alpha, self._beta, self._phi = trend_alpha, trend_beta, trend_damping
        self._level: float | None = None
        self._trend = 0.0

    def __len__(self) -> int:
        return len(self._bps)

    def add(self, wire_bytes: float, transfer_ms: float) -> float:
        """Add one transfer; returns its throughput sample in bit/s."""
        bps = 8000.0 * max(wire_bytes, 1.0) / max(transfer_ms, _MIN_TRANSFER_MS)
        predicted = self.raw_bps()
        if predicted is not None:
            self._errors.append(abs(predicted - bps) / bps)
        self._bps.append(bps)
        self._weight.append(math.sqrt(max(wire_bytes, 1.0)))
        y = math.log(bps)
        if self._level is None:
            self._level = y
        else:
            previous = self._level
            self._level = self._alpha * y + (1.0 - self._alpha) * (previous + self._phi * self._trend)
            self._trend = self._beta * (self._level - previous) + (1.0 - self._beta) * self._phi * self._trend
        return bps

    def raw_bps(self) -> float | None:
        """Sliding weighted median with the level-shift rule, without the safety margin."""
        if not self._bps:
            return None
        median = weighted_median(self._bps, self._weight)
        if len(self._bps) >= 2:
            last, before = self._bps[-1], self._bps[-2]
            if max(last, before) * self.shift_ratio < median:
                return max(last, before)
            if min(last, before) > self.shift_ratio * median:
                return min(last, before)
        return median

    def estimate_bps(self) -> float | None:
        """The planning estimate: ``raw_bps() * margin``, or ``None`` before any sample."""
        raw = self.raw_bps()
        return None if raw is None else raw * self.margin

    def forecast_bps(self, horizon: int) -> FloatArray:
        """Planning estimates for the next ``horizon`` requests (step 0 is :meth:`estimate_bps`).

        Raises:
            ValueError: no sample yet.
        """
        base = self.estimate_bps()
        if base is None:
            raise ValueError("no throughput sample yet")
        steps = np.arange(horizon, dtype=float)
        damped = np.cumsum(self._phi ** (steps + 1)) - self._phi  # sum_{i=1..h} phi^i, 0 at h=0
        worst = max(self._errors, default=0.0)
        discount = np.where(steps > 0, 1.0 + min(worst, 1.0), 1.0)
        out: FloatArray = base * np.exp(np.clip(self._trend * damped, -3.0, 3.0)) / discount
        return out


class RttEstimator:
    """The reference round trip: the fastest of the last few pings (its time and wire bytes).

    Few and recent, because a ping's own transfer time follows the bandwidth (78 bytes take 26 ms at
    24 kbit/s and under 1 ms at 1 Mbit/s); the fastest of them, as BBR keeps a min-RTT (Cardwell et al.,
    ACM Queue 2016), because a delayed ping (scheduling, a lost packet) says nothing about the path.

    A ping that shared the link with a request in flight waited behind it in the bottleneck's queue (on a
    128 kbit/s link a 700-byte request holds a ping back 44 ms): such a *contended* ping bounds the round
    trip from above, so it may lower the reference but not raise it, unless every ping kept is older than
    ``stale_s`` (a client that always has a request in flight must still follow a longer path).

    Args:
        window_s: pings older than this are dropped (the latest one is always kept).
        max_samples: pings kept.
        stale_s: age after which a contended ping replaces the reference even if slower.
    """

    def __init__(self, *, window_s: float = 1.5, max_samples: int = 2, stale_s: float = 10.0) -> None:
        self.window_s = window_s
        self.stale_s = stale_s
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=max_samples)

    def __len__(self) -> int:
        return len(self._samples)

    def add(
        self, now_s: float, network_ms: float, wire_bytes: float = 0.0, *, contended: bool = False
    ) -> None:
        ref = self.reference()
        fresh = bool(self._samples) and now_s - self._samples[-1][0] < self.stale_s
        if contended and fresh and ref is not None and network_ms > ref[0]:
            return
        self._samples.append((now_s, network_ms, wire_bytes))
        while len(self._samples) > 1 and now_s - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def reference(self) -> tuple[float, float] | None:
        """``(network_ms, wire_bytes)`` of the fastest ping kept, or ``None`` before any ping."""
        if not self._samples:
            return None
        _, ms, nbytes = min(self._samples, key=lambda s: s[1])
        return ms, nbytes


class LinkEstimator:
    """Round trip, throughput and up/down state of the path to the endpoint.

    A transfer of ``w`` bytes is measured against the reference ping of ``w_ping`` bytes: the extra
    ``w - w_ping`` bytes took ``network_ms - ping_ms``. That throughput sample never depends on the
    throughput estimate itself (no feedback loop between the two), and expected network times follow as
    ``ping_ms + (w - w_ping) * 8000 / bps``. Until the first ping, requests themselves serve as reference
    (a client that never pings gets no throughput samples from equal-sized requests, only the prior).

    Args:
        throughput: the throughput estimator.
        rtt: the reference ping keeper.
        prior_rtt_ms: planning RTT before any measurement.
        prior_bps: planning throughput before any measurement.
        min_extra_bytes: transfers less than this many bytes bigger than the ping give no sample.
    """

    def __init__(
        self,
        throughput: ThroughputEstimator,
        rtt: RttEstimator,
        *,
        prior_rtt_ms: float,
        prior_bps: float,
        min_extra_bytes: float = 32.0,
    ) -> None:
        self.throughput = throughput
        self.rtt = rtt
        self.prior_rtt_ms = prior_rtt_ms
        self.prior_bps = prior_bps
        self.min_extra_bytes = min_extra_bytes
        self.up = True
        self.last_seen_s = -math.inf
        self.last_transfer_s = -math.inf
        self._pinged = False
        self._state_sent_s = -math.inf

    def _newest(self, sent_s: float) -> bool:
        """Whether a transfer sent at ``sent_s`` may set the up/down state (it is the newest seen so far).

        Outcomes arrive out of send order (a probe sent before an outage is answered after a request
        sent into it has failed; a request stuck behind a burst fails after newer ones succeeded), and
        only the newest transfer says what the link is doing now.
        """
        if sent_s < self._state_sent_s:
            return False
        self._state_sent_s = sent_s
        return True

    def observe(
        self,
        now_s: float,
        wire_bytes: float,
        network_ms: float,
        *,
        ping: bool = False,
        contended: bool = False,
        sent_s: float | None = None,
    ) -> None:
        """A transfer that completed.

        Args:
            now_s: clock time of the reply.
            wire_bytes: bytes sent.
            network_ms: wall time less the server's own time.
            ping: a bare ping (a reference sample, not a throughput sample).
            contended: the ping shared the link with a request (see :class:`RttEstimator`).
            sent_s: clock time the transfer was sent (default ``now_s - network_ms``); a transfer
                older than the one that last set the up/down state leaves that state alone.
        """
        if ping or not self._pinged:
            self._pinged |= ping
            if ping or self.rtt.reference() is None:
                self.rtt.add(now_s, network_ms, wire_bytes, contended=contended)
        if not ping:
            ref_ms, ref_bytes = self._reference()
            if wire_bytes - ref_bytes >= self.min_extra_bytes:
                self.throughput.add(wire_bytes - ref_bytes, network_ms - ref_ms)
            self.last_transfer_s = now_s
        if self._newest(now_s - network_ms / 1e3 if sent_s is None else sent_s):
            self.up = True
        self.last_seen_s = now_s

    def observe_failure(
        self,
        now_s: float,
        wire_bytes: float = 0.0,
        waited_ms: float | None = None,
        *,
        sent_s: float | None = None,
    ) -> None:
        """A transfer that got no reply in time: the link counts as down until a newer transfer succeeds.

        ``sent_s`` (default ``now_s - waited_ms``, else ``now_s``) orders it against the other outcomes:
        a failure older than the newest success (a transfer stuck behind a burst) leaves the link up.

        ``wire_bytes`` unanswered after ``waited_ms`` bound the throughput from above. That bound becomes a
        sample only where it contradicts the estimate (which promised the transfer in time): a link that
        drops while a stale high estimate is kept would otherwise be tried again after every probe. A
        bound above the estimate says nothing new and is dropped, so an outage does not slow the return.
        """
        if sent_s is None:
            sent_s = now_s - (waited_ms or 0.0) / 1e3
        if self._newest(sent_s):
            self.up = False
        self.last_seen_s = now_s
        if waited_ms is None:
            return
        ref_ms, ref_bytes = self._reference()
        extra, took = wire_bytes - ref_bytes, waited_ms - ref_ms
        if extra >= self.min_extra_bytes and took > _MIN_TRANSFER_MS and 8000.0 * extra / took < self.bps():
            self.throughput.add(extra, took)

    def _reference(self) -> tuple[float, float]:
        ref = self.rtt.reference()
        return (self.prior_rtt_ms, 0.0) if ref is None else ref

    def base_rtt_ms(self) -> float:
        """The round trip of an empty message (the reference ping less its own transfer time)."""
        ref_ms, ref_bytes = self._reference()
        return max(ref_ms - 8000.0 * ref_bytes / self.bps(), 0.0)

    def bps(self) -> float:
        est = self.throughput.estimate_bps()
        return self.prior_bps if est is None else est

    def network_ms(self, wire_bytes: FloatArray) -> FloatArray:
        """Expected network time for each of ``wire_bytes`` (``inf`` while the link is down)."""
        if not self.up:
            return np.full(np.shape(wire_bytes), math.inf)
        ref_ms, ref_bytes = self._reference()
        return np.maximum(
            ref_ms + 8000.0 * (np.asarray(wire_bytes, dtype=float) - ref_bytes) / self.bps(), 0.0
        )

    def forecast_network_ms(self, wire_bytes: FloatArray, horizon: int) -> FloatArray:
        """Expected network time, shape ``(horizon, len(wire_bytes))``."""
        if not self.up:
            return np.full((horizon, len(wire_bytes)), math.inf)
        bps = (
            self.throughput.forecast_bps(horizon)
            if len(self.throughput)
            else np.full(horizon, self.prior_bps)
        )
        ref_ms, ref_bytes = self._reference()
        out: FloatArray = np.maximum(ref_ms + 8000.0 * (wire_bytes[None, :] - ref_bytes) / bps[:, None], 0.0)
        return out


class ServerEstimator:
    """Server queueing and per-option compute from reply timings and the endpoint's own queue reports.

    Compute time per option is ``prior_ms[option] * slowdown``: the priors give the relative cost of each
    option, ``slowdown`` (learned from every reply) scales them to what the endpoint delivers now, so a
    loaded endpoint penalises the options with the biggest tails most.

    The queue estimate has two sources. A reply's figure (:meth:`observe`: what that request waited, or the
    endpoint's current figure if larger) varies from request to request and is blended in with
    ``queue_alpha``. A *report* (:meth:`report_queue`: the endpoint's current queueing delay carried by a
    ping's or a sized probe's reply) is the endpoint's own, already smoothed view of its queue now, with
    no request's luck in it: it replaces the estimate, which then holds for ``queue_hold_s`` (the next
    ping is due before that), so an endpoint that keeps reporting keeps the estimate where it says, even
    while the device runs locally and sends no request.

    Past the hold (at once after a reply), the queue estimate decays with ``queue_half_life_s`` when
    nothing refreshes it (an unreachable endpoint, or an old one whose pings carry no report), and the
    slowdown returns toward 1 with the same half-life, so that the device does not avoid the endpoint
    forever after one slow spell (a cold endpoint's first replies are 10-20x its usual; while the device
    runs locally no reply corrects that).
    """

    def __init__(
        self,
        prior_ms: dict[str, float],
        *,
        alpha: float,
        queue_alpha: float,
        queue_half_life_s: float,
        queue_hold_s: float = 0.0,
    ) -> None:
        self.prior_ms = dict(prior_ms)
        self._slowdown = Ewma(alpha)
        self._slowdown_t = -math.inf
        self._queue = Ewma(queue_alpha)
        self._queue_t = -math.inf  # the queue estimate decays from this time on
        self._half_life_s = queue_half_life_s
        self._hold_s = queue_hold_s

    def observe(self, now_s: float, option_id: str, queue_ms: float, compute_ms: float) -> None:
        """A reply: ``queue_ms`` is its queueing figure, ``compute_ms`` the endpoint's time less the queue."""
        prior = self.prior_ms.get(option_id)
        if prior is not None and prior > 0:
            if self._slowdown.value is not None:
                self._slowdown.value = self.slowdown(now_s)  # decay to now before blending, as the queue
            self._slowdown.add(float(np.clip(compute_ms / prior, 0.1, 20.0)))
            self._slowdown_t = now_s
        if self._queue.value is not None:
            self._queue.value = self.queue_ms(now_s)  # decay to now before blending the new sample in
        self._queue.add(max(queue_ms, 0.0))
        self._queue_t = max(now_s, self._queue_t)  # a reply within a report's hold does not cut it short

    def report_queue(self, now_s: float, queue_ms: float) -> None:
        """The endpoint's own report of its queueing delay now: the estimate, held ``queue_hold_s``."""
        self._queue.value = max(queue_ms, 0.0)
        self._queue_t = now_s + self._hold_s

    def slowdown(self, now_s: float) -> float:
        """Endpoint compute relative to the priors, decayed toward 1 since the last reply."""
        if self._slowdown.value is None:
            return 1.0
        return 1.0 + (self._slowdown.value - 1.0) * self._decay(self._slowdown_t, now_s)

    def queue_ms(self, now_s: float) -> float:
        if self._queue.value is None:
            return 0.0
        return self._queue.value * self._decay(self._queue_t, now_s)

    def _decay(self, since_s: float, now_s: float) -> float:
        """The share of an estimate left ``now_s`` when nothing has refreshed it since ``since_s``."""
        return float(0.5 ** (max(now_s - since_s, 0.0) / self._half_life_s))

    def compute_ms(self, option_id: str, now_s: float) -> float:
        return self.prior_ms.get(option_id, 0.0) * self.slowdown(now_s)


class DeviceEstimator:
    """Device time per option: the latest on-device measurement times a load factor from observations."""

    def __init__(self, measured_ms: dict[str, float], *, alpha: float) -> None:
        self.measured_ms = dict(measured_ms)
        self._alpha = alpha
        self._slowdown = Ewma(alpha)

    def refresh(self, measured_ms: dict[str, float]) -> None:
        """Replace the measurements (the client re-measured); the load factor starts afresh."""
        self.measured_ms = dict(measured_ms)
        self._slowdown = Ewma(self._alpha)

    def observe(self, option_id: str, device_ms: float) -> None:
        measured = self.measured_ms.get(option_id)
        if measured is not None and measured > 0 and device_ms > 0:
            self._slowdown.add(float(np.clip(device_ms / measured, 0.25, 8.0)))

    @property
    def slowdown(self) -> float:
        return 1.0 if self._slowdown.value is None else self._slowdown.value

    def expected_ms(self, option_id: str) -> float:
        return self.measured_ms[option_id] * self.slowdown
