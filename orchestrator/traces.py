"""Bandwidth traces: piecewise-constant uplink rate, base RTT and endpoint queueing over time.

Every generator is deterministic in its seed. The trace set (:func:`trace_set`):

- ``constant``: a steady 1 Mbit/s link (the one trace that is not variable; a control).
- ``step``: step changes across the range where the best option changes (24 kbit/s to 4 Mbit/s).
- ``random_walk``: a mean-reverting random walk in log bandwidth (16 kbit/s to 8 Mbit/s).
- ``on_off``: a ~1 Mbit/s link with outages (exponential on/off periods, means 8 s and 2.5 s).
- ``lte_like``: 4G/LTE-like, after the Ghent (Belgium) 4G/LTE bandwidth logs of van der Hooft et al.,
  "HTTP/2-Based Adaptive Streaming of HEVC Video Over 4G/LTE Networks", IEEE Communications Letters
  20(11), 2016 (40 logs along routes by foot, bicycle, bus, tram, train and car, one sample a second).
- ``hsdpa_like``: 3G/HSDPA-like, after the Oslo commute logs of Riiser et al., "Commute Path Bandwidth
  Traces from 3G Networks: Analysis and Applications", ACM MMSys 2013 (Telenor HSDPA, metro, tram, bus,
  ferry, train and car, one sample a second).
- ``queueing``: a steady link while the endpoint's queue grows and drains (tests the load response).

:func:`with_queue_cycle` lays an endpoint queue that cycles through a few levels (0/30/120 ms by default)
over any trace, to test the load response on a changing link.

The two mobile traces are *approximations generated from summary statistics*, not the original logs (which
cannot be fetched here): a log-normal AR(1) process at one sample a second, with fades or outages on top.
The figures below are our reading of the papers' plots and text, rounded; check them against the
originals before quoting them as such:

==============  ==================  =========  =====================  ==========================  =========
trace           mean throughput     CV         lag-1 correlation      fades / outages             base RTT
==============  ==================  =========  =====================  ==========================  =========
lte_like        ~30 Mbit/s          ~0.6       ~0.9 (1 s samples)     ~2% of seconds start a 1-4  ~40 ms
                (peaks ~95 Mbit/s)                                    s fade to 0.05-1 Mbit/s
                                                                      (handovers, buildings)
hsdpa_like      ~1 Mbit/s           ~0.7       ~0.85 (1 s samples)    one outage a minute, 3-15   ~70 ms
                (0 to ~6 Mbit/s)                                      s at 0-20 kbit/s (tunnels)
==============  ==================  =========  =====================  ==========================  =========

Both datasets measured *downlink* HTTP throughput; the simulator applies them to the uplink that carries
the request, a common proxy that overstates a real uplink.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._typing import FloatArray, IntArray

__all__ = [
    "Trace",
    "constant_trace",
    "hsdpa_like_trace",
    "lte_like_trace",
    "on_off_trace",
    "queueing_trace",
    "random_walk_trace",
    "step_trace",
    "trace_set",
    "with_queue_cycle",
]


@dataclass(frozen=True, eq=False)
class Trace:
    """A piecewise-constant network trace; sample ``k`` holds over ``[k * dt_s, (k + 1) * dt_s)``.

    Past its end a trace holds its last sample.

    Attributes:
        name: label.
        dt_s: sample period in seconds.
        bandwidth_bps: uplink rate per sample (0 is an outage).
        rtt_ms: base round trip per sample.
        queue_ms: endpoint queueing delay per sample.
        variable: whether conditions change over the trace (all but the control).
        description: how it was made.
        steps_s: times of deliberate step changes (for settling metrics).
    """

    name: str
    dt_s: float
    bandwidth_bps: FloatArray
    rtt_ms: FloatArray
    queue_ms: FloatArray
    variable: bool = True
    description: str = ""
    steps_s: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.bandwidth_bps)
        if n == 0 or len(self.rtt_ms) != n or len(self.queue_ms) != n or self.dt_s <= 0:
            raise ValueError(f"trace {self.name!r}: arrays must be non-empty and of equal length, dt_s > 0")
        if np.any(self.bandwidth_bps < 0):
            raise ValueError(f"trace {self.name!r}: negative bandwidth")
        cum = np.concatenate([[0.0], np.cumsum(self.bandwidth_bps * self.dt_s)])
        object.__setattr__(self, "_cum_bits", cum)

    @property
    def duration_s(self) -> float:
        return len(self.bandwidth_bps) * self.dt_s

    def index(self, t_s: FloatArray | float) -> IntArray:
        """Sample index at time(s) ``t_s`` (clamped to the trace)."""
        return np.clip((np.asarray(t_s) / self.dt_s).astype(int), 0, len(self.bandwidth_bps) - 1)

    def bits_by(self, t_s: FloatArray) -> FloatArray:
        """Bits the link could have carried from time 0 to ``t_s``."""
        t = np.asarray(t_s, dtype=float)
        k = self.index(t)
        cum: FloatArray = self._cum_bits  # type: ignore[attr-defined]
        bits: FloatArray = cum[k] + self.bandwidth_bps[k] * (t - k * self.dt_s)
        return bits

    def transfer_ms(self, start_s: FloatArray, bits: FloatArray) -> FloatArray:
        """Time to push ``bits`` onto the link starting at ``start_s`` (``inf`` if it never completes)."""
        start = np.asarray(start_s, dtype=float)
        goal = self.bits_by(start) + np.asarray(bits, dtype=float)
        cum: FloatArray = self._cum_bits  # type: ignore[attr-defined]
        n = len(self.bandwidth_bps)
        k = np.clip(np.searchsorted(cum, goal, side="left") - 1, 0, n - 1)
        rate = self.bandwidth_bps[k]
        within = (goal <= cum[-1]) & (rate > 0)
        end_within = k * self.dt_s + np.divide(goal - cum[k], rate, out=np.zeros_like(goal), where=rate > 0)
        last = self.bandwidth_bps[-1]
        end_after = self.duration_s + (goal - cum[-1]) / last if last > 0 else np.inf
        end = np.where(within, end_within, end_after)
        out: FloatArray = np.maximum(end - start, 0.0) * 1000.0
        return out

    def resampled(self, dt_s: float) -> Trace:
        """The same trace on a coarser grid (each new sample takes the mean rate over its span)."""
        n = int(np.ceil(self.duration_s / dt_s))
        edges = np.arange(n + 1) * dt_s
        bits = np.diff(self.bits_by(np.minimum(edges, self.duration_s)))
        span = np.diff(np.minimum(edges, self.duration_s))
        mids = self.index(edges[:-1] + 0.5 * span)
        return Trace(
            self.name,
            dt_s,
            bits / np.maximum(span, 1e-9),
            self.rtt_ms[mids],
            self.queue_ms[mids],
            self.variable,
            self.description,
            self.steps_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dt_s": self.dt_s,
            "variable": self.variable,
            "description": self.description,
            "steps_s": list(self.steps_s),
            "bandwidth_bps": self.bandwidth_bps.tolist(),
            "rtt_ms": self.rtt_ms.tolist(),
            "queue_ms": self.queue_ms.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        return cls(
            name=d["name"],
            dt_s=float(d["dt_s"]),
            bandwidth_bps=np.asarray(d["bandwidth_bps"], dtype=float),
            rtt_ms=np.asarray(d["rtt_ms"], dtype=float),
            queue_ms=np.asarray(d["queue_ms"], dtype=float),
            variable=bool(d.get("variable", True)),
            description=str(d.get("description", "")),
            steps_s=tuple(float(s) for s in d.get("steps_s", ())),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _flat(n: int, value: float) -> FloatArray:
    return np.full(n, float(value))


def constant_trace(
    *, bps: float = 1e6, rtt_ms: float = 20.0, duration_s: float = 60.0, dt_s: float = 1.0
) -> Trace:
    """A steady link (the control)."""
    n = round(duration_s / dt_s)
    return Trace(
        "constant",
        dt_s,
        _flat(n, bps),
        _flat(n, rtt_ms),
        _flat(n, 0.0),
        False,
        f"steady {bps / 1e3:g} kbit/s",
    )


def step_trace(
    *,
    levels_bps: tuple[float, ...] = (2e6, 128e3, 1e6, 24e3, 512e3, 4e6, 64e3, 2e6),
    hold_s: float = 15.0,
    rtt_ms: float = 20.0,
    dt_s: float = 0.1,
) -> Trace:
    """Step changes between ``levels_bps``, each held ``hold_s`` seconds."""
    per = round(hold_s / dt_s)
    bw = np.repeat(np.asarray(levels_bps, dtype=float), per)
    n = len(bw)
    steps = tuple(i * hold_s for i in range(1, len(levels_bps)))
    return Trace(
        "step",
        dt_s,
        bw,
        _flat(n, rtt_ms),
        _flat(n, 0.0),
        True,
        "steps through " + ", ".join(f"{b / 1e3:g}" for b in levels_bps) + f" kbit/s, {hold_s:g} s each",
        steps,
    )


def random_walk_trace(
    *,
    seed: int = 1,
    duration_s: float = 120.0,
    dt_s: float = 0.5,
    median_bps: float = 300e3,
    sigma: float = 0.35,
    reversion: float = 0.05,
    lo_bps: float = 16e3,
    hi_bps: float = 8e6,
    rtt_ms: float = 20.0,
) -> Trace:
    """Mean-reverting random walk in log bandwidth (a discrete Ornstein-Uhlenbeck process), clipped."""
    rng = np.random.default_rng(seed)
    n = round(duration_s / dt_s)
    x = np.empty(n)
    x[0] = np.log(median_bps)
    for k in range(1, n):
        x[k] = x[k - 1] + reversion * (np.log(median_bps) - x[k - 1]) + sigma * rng.standard_normal()
    bw = np.clip(np.exp(x), lo_bps, hi_bps)
    return Trace(
        "random_walk",
        dt_s,
        bw,
        _flat(n, rtt_ms),
        _flat(n, 0.0),
        True,
        f"log-OU walk, median {median_bps / 1e3:g} kbit/s, sigma {sigma}/step, seed {seed}",
    )


def on_off_trace(
    *,
    seed: int = 2,
    duration_s: float = 120.0,
    dt_s: float = 0.1,
    on_bps: float = 1e6,
    mean_on_s: float = 8.0,
    mean_off_s: float = 2.5,
    rtt_ms: float = 20.0,
) -> Trace:
    """A link that alternates between ~``on_bps`` (log-normal per period) and outages (0 bit/s)."""
    rng = np.random.default_rng(seed)
    n = round(duration_s / dt_s)
    bw = np.zeros(n)
    k, on = 0, True
    while k < n:
        length = max(1, round(rng.exponential(mean_on_s if on else mean_off_s) / dt_s))
        if on:
            bw[k : k + length] = on_bps * rng.lognormal(0.0, 0.3)
        k += length
        on = not on
    return Trace(
        "on_off",
        dt_s,
        bw,
        _flat(n, rtt_ms),
        _flat(n, 0.0),
        True,
        f"on ~{on_bps / 1e3:g} kbit/s (mean {mean_on_s:g} s) / off (mean {mean_off_s:g} s), seed {seed}",
    )


def _lognormal_ar1(rng: np.random.Generator, n: int, mean: float, cv: float, rho: float) -> FloatArray:
    """A stationary log-normal AR(1) series with the given mean, coefficient of variation and lag-1 rho."""
    s2 = np.log1p(cv**2)
    mu = np.log(mean) - 0.5 * s2
    z = np.empty(n)
    z[0] = rng.standard_normal()
    for k in range(1, n):
        z[k] = rho * z[k - 1] + np.sqrt(1.0 - rho**2) * rng.standard_normal()
    out: FloatArray = np.exp(mu + np.sqrt(s2) * z)
    return out


def lte_like_trace(*, seed: int = 3, duration_s: float = 120.0) -> Trace:
    """4G/LTE-like uplink rate after van der Hooft et al. 2016 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(duration_s)
    bw = np.minimum(_lognormal_ar1(rng, n, 30e6, 0.6, 0.9), 95e6)
    k = 0
    while k < n:
        if rng.random() < 0.02:
            length = int(rng.integers(1, 5))
            bw[k : k + length] = rng.uniform(0.05e6, 1e6)
            k += length
        k += 1
    rtt = 40.0 * rng.lognormal(0.0, 0.1, n)
    return Trace(
        "lte_like",
        1.0,
        bw,
        rtt,
        _flat(n, 0.0),
        True,
        "approximation of the Ghent 4G/LTE logs (van der Hooft et al., IEEE Comm. Letters 2016) from summary "
        f"statistics: mean ~30 Mbit/s, CV 0.6, lag-1 rho 0.9, 2%/s fades to 0.05-1 Mbit/s, RTT ~40 ms; seed {seed}",
    )


def hsdpa_like_trace(*, seed: int = 4, duration_s: float = 120.0) -> Trace:
    """3G/HSDPA-like uplink rate after Riiser et al. 2013 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(duration_s)
    bw = np.minimum(_lognormal_ar1(rng, n, 1e6, 0.7, 0.85), 6e6)
    k = int(rng.integers(5, 30))
    while k < n:
        length = int(rng.integers(3, 16))
        bw[k : k + length] = rng.uniform(0.0, 20e3, size=len(bw[k : k + length]))
        k += length + int(rng.exponential(60.0))
    rtt = 70.0 * rng.lognormal(0.0, 0.15, n)
    return Trace(
        "hsdpa_like",
        1.0,
        bw,
        rtt,
        _flat(n, 0.0),
        True,
        "approximation of the Oslo 3G/HSDPA commute logs (Riiser et al., MMSys 2013) from summary statistics: "
        f"mean ~1 Mbit/s, CV 0.7, lag-1 rho 0.85, an outage a minute of 3-15 s at 0-20 kbit/s, RTT ~70 ms; seed {seed}",
    )


def queueing_trace(
    *,
    bps: float = 1e6,
    rtt_ms: float = 20.0,
    queue_levels_ms: tuple[float, ...] = (0.0, 30.0, 120.0, 0.0),
    hold_s: float = 20.0,
    dt_s: float = 0.5,
) -> Trace:
    """A steady link while the endpoint's queueing delay steps through ``queue_levels_ms``."""
    per = round(hold_s / dt_s)
    queue = np.repeat(np.asarray(queue_levels_ms, dtype=float), per)
    n = len(queue)
    steps = tuple(i * hold_s for i in range(1, len(queue_levels_ms)))
    return Trace(
        "queueing",
        dt_s,
        _flat(n, bps),
        _flat(n, rtt_ms),
        queue,
        True,
        f"steady {bps / 1e3:g} kbit/s, endpoint queueing "
        + ", ".join(f"{q:g}" for q in queue_levels_ms)
        + f" ms, {hold_s:g} s each",
        steps,
    )


def with_queue_cycle(
    trace: Trace, *, levels_ms: tuple[float, ...] = (0.0, 30.0, 120.0), hold_s: float = 5.0
) -> Trace:
    """``trace`` with the endpoint's queueing delay cycling through ``levels_ms``, ``hold_s`` seconds each.

    The level of a sample is the one in force at the sample's start (exact when ``hold_s`` is a multiple
    of the trace's ``dt_s``).

    Raises:
        ValueError: no level, or ``hold_s`` not positive.
    """
    if not levels_ms or hold_s <= 0:
        raise ValueError(f"need at least one level and hold_s > 0, got {levels_ms} and {hold_s}")
    start_s = np.arange(len(trace.bandwidth_bps)) * trace.dt_s
    cycle = np.asarray(levels_ms, dtype=float)
    queue = cycle[(start_s / hold_s + 1e-9).astype(int) % len(cycle)]
    return dataclasses.replace(
        trace,
        name=f"{trace.name}+queue_cycle",
        queue_ms=queue,
        variable=True,
        description=f"{trace.description}; endpoint queueing cycling "
        + "/".join(f"{q:g}" for q in levels_ms)
        + f" ms, {hold_s:g} s each",
    )


def trace_set(seed: int = 0) -> tuple[Trace, ...]:
    """The benchmark's traces; ``seed`` offsets every random generator's seed."""
    return (
        constant_trace(),
        step_trace(),
        random_walk_trace(seed=1 + seed),
        on_off_trace(seed=2 + seed),
        lte_like_trace(seed=3 + seed),
        hsdpa_like_trace(seed=4 + seed),
        queueing_trace(),
    )
