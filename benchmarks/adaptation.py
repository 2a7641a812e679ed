"""Benchmark ``adaptation``: the orchestrator against every fixed option and a hindsight oracle.

Two modes over the same traces (see ``splitserve.orchestrator.traces``):

- ``sim``: the deterministic simulator replays each trace against the profile (whole set in seconds).
- ``live``: the lab of ``benchmarks.netlab``: two network namespaces, the uplink shaped by tbf along the
  trace, propagation delay added by a relay. A :class:`LiveRunner` starts the endpoint in the cloud
  namespace and drives a client in the edge namespace: with ``--bundle``, :class:`EdgeClientRunner` runs the
  real endpoint and the real edge client (sending the bundle's held-out photos, or Fashion-MNIST images);
  without one, :class:`EmulatedRunner` sends real bytes over the shaped link and emulates compute with
  the profile's device and server times. The trace is compressed in time (``live_duration_s``); every
  policy runs the trace once, one after the other; the live oracle takes, for each orchestrator request, the
  fastest fixed run at the same trace time.

Definitions (also written into the JSON):

- *oracle*: per request, the option with the lowest true latency among those meeting the accuracy floor.
- *best fixed*: the fixed option with the lowest mean latency among those meeting the accuracy floor.
- *targets* (variable traces): orchestrator mean within 10% of the oracle and at least 30% below the best
  fixed option; deadline misses at most 5% on requests where the oracle meets the deadline; live, after a
  bandwidth step the choice settles within 1 s or 3 requests. ``headroom`` = 1 - oracle / best fixed is the
  most any policy could gain over the best fixed option on that trace: where it is below 30%, the second
  target cannot be met by anyone.

Queue cycle (``sim``, issue 17): the project's ``queueing`` trace and every other trace with an endpoint
queue cycling 0/30/120 ms (5 s each, ``QUEUE_LEVELS_MS``, ``QUEUE_HOLD_S``) laid over it, the orchestrator run twice: with an endpoint that
reports its queue in ping and probe replies, and with one that does not (the behaviour before those
reports). Targets: mean at most 5% above the oracle, deadline misses at most 2% where the oracle meets
the deadline, at most 20 switches per 1,000 requests.

Writes ``<out_dir>/adaptation.json``, ``<out_dir>/adaptation_<mode>_<trace>.png`` (bandwidth, chosen
option and latency over time) and ``<out_dir>/adaptation_queue.png`` (the queue cycle).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import queue
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from splitserve.benchmarks.stack import Endpoint
from splitserve.orchestrator import (
    Observation,
    Orchestrator,
    OrchestratorConfig,
    ProbeResult,
    Profile,
    Run,
    ServerTimings,
    SimConfig,
    Simulation,
    Trace,
    example_profile_path,
    trace_set,
)
from splitserve.orchestrator.simulate import lognormal_factors
from splitserve.orchestrator.traces import with_queue_cycle

from .netlab import (
    ENDPOINT_REPLY,
    ENDPOINT_REQUEST,
    DelayRelay,
    Filler,
    HelperProcess,
    Netlab,
    TraceFollower,
    unavailable_reason,
)

__all__ = [
    "ORCHESTRATORS",
    "EdgeClientRunner",
    "EmulatedRunner",
    "LiveJob",
    "LiveRunner",
    "RequestRecord",
    "main",
    "measure_profile",
    "run",
]

ORCHESTRATORS = {
    "orchestrator": "min_latency",
    "orchestrator_mpc": "mpc",
    "orchestrator_max_accuracy": "max_accuracy",
}
TARGETS = {
    "mean_vs_oracle_max": 1.10,
    "mean_vs_best_fixed_max": 0.70,
    "miss_where_oracle_meets_max": 0.05,
    "settle_s_max": 1.0,
    "settle_requests_max": 3,
}
QUEUE_LEVELS_MS = (0.0, 30.0, 120.0)  # the endpoint queue of the queue-cycle scenario, cycling
QUEUE_HOLD_S = 5.0  # each level held this long
QUEUE_TARGETS = {
    "mean_vs_oracle_max": 1.05,
    "miss_where_oracle_meets_max": 0.02,
    "switches_per_1000_max": 20.0,
}
RULES = {
    "oracle": "per request, the option with the lowest true latency among those meeting the accuracy floor",
    "best_fixed": "the fixed option with the lowest mean latency among those meeting the accuracy floor",
    "live_oracle": "per orchestrator request, the fastest eligible fixed run at the same trace time (live), "
    "each fixed run's latency smoothed by a running median over 5 requests",
    "settling": "after each deliberate step: requests and seconds until the orchestrator uses a good option "
    "(fixed option whose mean latency over the segment is within 10% + 2 ms of the best's) from that "
    "request on, for at least 90% of the segment's remaining requests",
}


# -- policy runs ---------------------------------------------------------------------------------------


def orchestrator_factory(
    profile: Profile, config: SimConfig, policy: str
) -> Callable[[Callable[[], float]], Orchestrator]:
    """Builds the orchestrator the way the edge client would, on a given clock."""

    def build(clock: Callable[[], float]) -> Orchestrator:
        return Orchestrator(
            profile.options,
            profile.device_latency(),
            policy=policy,
            accuracy_floor=config.accuracy_floor,
            server_ms=profile.server_ms(),
            config=OrchestratorConfig(framing_bytes=profile.framing_bytes),
            clock=clock,
        )

    return build


def _metrics(r: Run, deadline_ms: float) -> dict[str, float]:
    return r.metrics(deadline_ms).to_dict()


def _settling(trace: Trace, orch: Run, fixed: dict[str, Run], ids: Sequence[str]) -> list[dict[str, Any]]:
    """After each deliberate step: requests and seconds until the orchestrator has settled on a good option.

    Good options of a segment (step to next step): eligible fixed runs whose mean latency over the segment
    is within 10% (+2 ms) of the best one's. Settled at the first request that uses a good option, as do
    at least 90% of the requests after it in the segment. Segment means, not per-request latencies, so that
    measurement noise in live runs does not decide.
    """
    out = []
    bounds = [*trace.steps_s, trace.duration_s]
    for step_s, next_s in itertools.pairwise(bounds):
        idx = np.flatnonzero((orch.t_s >= step_s) & (orch.t_s < next_s))
        means = {}
        for name, r in fixed.items():
            seg = (r.t_s >= step_s) & (r.t_s < next_s)
            if seg.any():
                means[ids.index(name.split(":", 1)[1])] = float(np.mean(r.latency_ms[seg]))
        if len(idx) < 2 or not means:
            continue
        best = min(means.values())
        good_options = [o for o, m in means.items() if m <= 1.10 * best + 2.0]
        good = np.isin(orch.choice[idx], good_options)
        share_after = np.cumsum(good[::-1])[::-1] / np.arange(len(idx), 0, -1)
        hits = np.flatnonzero(good & (share_after >= 0.9))
        j = int(hits[0]) if len(hits) else len(idx)
        seconds = float(orch.t_s[idx[j]] - step_s) if j < len(idx) else float(next_s - step_s)
        out.append(
            {
                "step_s": float(step_s),
                "good_options": [ids[o] for o in good_options],
                "settle_requests": j,
                "settle_s": seconds,
                "ok": j < len(idx)
                and (j <= TARGETS["settle_requests_max"] or seconds <= TARGETS["settle_s_max"]),
            }
        )
    return out


def _entry(
    trace: Trace,
    mode: str,
    runs: dict[str, Run],
    ids: Sequence[str],
    best: str,
    config: SimConfig,
    oracle_meets: np.ndarray,
    eligible: Sequence[str],
) -> dict[str, Any]:
    d = config.deadline_ms
    policies = {name: _metrics(r, d) for name, r in runs.items()}
    orch, oracle, best_m = policies["orchestrator"], policies["oracle"], policies["best_fixed"]
    detail = {}
    for name in ORCHESTRATORS:
        if name not in runs:
            continue
        r = runs[name]
        counts = np.bincount(r.choice, minlength=len(ids)) / max(len(r.choice), 1)
        detail[name] = {
            "switches_per_100": r.switches_per_100,
            "fallback_rate": float(np.mean(r.fell_back)),
            "miss_rate_where_oracle_meets": float(np.mean(r.latency_ms[oracle_meets] > d))
            if oracle_meets.any()
            else 0.0,
            "choice_share": {ids[i]: float(c) for i, c in enumerate(counts) if c > 0},
        }
    headroom = 1.0 - oracle["mean_ms"] / best_m["mean_ms"]
    targets: dict[str, Any] = {
        "mean_within_10pct_of_oracle": orch["mean_ms"] <= TARGETS["mean_vs_oracle_max"] * oracle["mean_ms"],
        "mean_30pct_below_best_fixed": orch["mean_ms"]
        <= TARGETS["mean_vs_best_fixed_max"] * best_m["mean_ms"],
        "misses_le_5pct_where_oracle_meets": detail["orchestrator"]["miss_rate_where_oracle_meets"]
        <= TARGETS["miss_where_oracle_meets_max"],
        "headroom_vs_best_fixed": headroom,
    }
    fixed = {f"fixed:{oid}": runs[f"fixed:{oid}"] for oid in eligible if f"fixed:{oid}" in runs}
    settling = _settling(trace, runs["orchestrator"], fixed, ids) if trace.steps_s else []
    if settling:
        targets["settles_within_1s_or_3_requests"] = all(s["ok"] for s in settling)
    return {
        "name": trace.name,
        "mode": mode,
        "variable": trace.variable,
        "description": trace.description,
        "duration_s": trace.duration_s,
        "requests": len(runs["orchestrator"].t_s),
        "best_fixed_option": best,
        "policies": policies,
        "orchestrator_detail": detail,
        "settling": settling,
        "targets": targets,
    }


def _sim_trace(trace: Trace, profile: Profile, config: SimConfig) -> tuple[dict[str, Any], dict[str, Run]]:
    sim = Simulation(trace, profile, config)
    runs = {
        name: sim.orchestrate(name, orchestrator_factory(profile, config, pol))
        for name, pol in ORCHESTRATORS.items()
    }
    runs["oracle"] = sim.oracle()
    best = sim.best_fixed()
    fixed = {f"fixed:{oid}": sim.fixed(oid) for oid in sim.ids}
    runs["best_fixed"] = fixed[f"fixed:{best}"]
    runs.update(fixed)
    meets = runs["oracle"].latency_ms <= config.deadline_ms
    eligible = [oid for oid, ok in zip(sim.ids, sim.eligible) if ok]
    return _entry(trace, "sim", runs, sim.ids, best, config, meets, eligible), runs


def _queue_traces(seed: int, names: Sequence[str] | None) -> list[Trace]:
    """The ``queueing`` trace as it is, every other trace of the set with the queue cycle laid over it."""
    return [
        t if t.name == "queueing" else with_queue_cycle(t, levels_ms=QUEUE_LEVELS_MS, hold_s=QUEUE_HOLD_S)
        for t in trace_set(seed)
        if names is None or t.name in names
    ]


def _queue_metrics(
    r: Run, oracle_meets: np.ndarray, oracle_mean_ms: float, deadline_ms: float
) -> dict[str, Any]:
    m = r.metrics(deadline_ms)
    out: dict[str, Any] = {
        "mean_ms": m.mean_ms,
        "vs_oracle": m.mean_ms / oracle_mean_ms,
        "miss_rate": m.miss_rate,
        "miss_rate_where_oracle_meets": float(np.mean(r.latency_ms[oracle_meets] > deadline_ms))
        if oracle_meets.any()
        else 0.0,
        "switches_per_1000": 10.0 * r.switches_per_100,
        "fallback_rate": float(np.mean(r.fell_back)),
    }
    out["targets"] = {
        "mean_within_5pct_of_oracle": out["vs_oracle"] <= QUEUE_TARGETS["mean_vs_oracle_max"],
        "misses_le_2pct_where_oracle_meets": out["miss_rate_where_oracle_meets"]
        <= QUEUE_TARGETS["miss_where_oracle_meets_max"],
        "switches_le_20_per_1000": out["switches_per_1000"] <= QUEUE_TARGETS["switches_per_1000_max"],
    }
    return out


def _queue_scenario(
    profile: Profile, config: SimConfig, traces: Sequence[Trace]
) -> tuple[dict[str, Any], dict[str, dict[str, Run]]]:
    """The orchestrator (``min_latency``) with and without the endpoint's queue reports, and the oracle."""
    entries, all_runs = [], {}
    for trace in traces:
        sims = {
            "reports": Simulation(trace, profile, config),
            "no_reports": Simulation(trace, profile, dataclasses.replace(config, server_reports=False)),
        }
        runs = {
            name: sim.orchestrate(name, orchestrator_factory(profile, config, ORCHESTRATORS["orchestrator"]))
            for name, sim in sims.items()
        }
        runs["oracle"] = oracle = sims["reports"].oracle()
        meets = oracle.latency_ms <= config.deadline_ms
        om = oracle.metrics(config.deadline_ms)
        entries.append(
            {
                "name": trace.name,
                "description": trace.description,
                "requests": len(oracle.t_s),
                "oracle": {**om.to_dict(), "switches_per_1000": 10.0 * oracle.switches_per_100},
                "orchestrator": {
                    name: _queue_metrics(runs[name], meets, om.mean_ms, config.deadline_ms)
                    for name in ("no_reports", "reports")
                },
            }
        )
        all_runs[trace.name] = runs
    report = {
        "cycle": {"levels_ms": list(QUEUE_LEVELS_MS), "hold_s": QUEUE_HOLD_S},
        "policy": ORCHESTRATORS["orchestrator"],
        "variants": {
            "reports": "ping and sized-probe replies carry the endpoint's queue (ProbeResult.queue_ms)",
            "no_reports": "they do not (an older endpoint): the orchestrator's behaviour before the reports",
        },
        "targets": QUEUE_TARGETS,
        "traces": entries,
    }
    return report, all_runs


def _plot_queue(
    path: Path,
    report: dict[str, Any],
    traces: Sequence[Trace],
    runs: dict[str, dict[str, Run]],
    ids: Sequence[str],
    device: str,
) -> None:
    """Top: choices over the first 60 s of one trace, without and with reports; bottom: switches per trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["name"] for e in report["traces"]]
    shown = next((n for n in names if n.startswith("constant")), names[0])
    fig, (ax_opt, ax_sw) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [1.3, 1]})
    r = runs[shown]
    window = r["oracle"].t_s < 60.0
    used = sorted({int(c) for run in r.values() for c in run.choice[window]})
    row = {option: k for k, option in enumerate(used)}
    for name, color, dy in (
        ("oracle", "0.6", 0.0),
        ("no_reports", "tab:orange", 0.12),
        ("reports", "tab:green", -0.12),
    ):
        rows = np.array([row[int(c)] for c in r[name].choice[window]])
        ax_opt.plot(r[name].t_s[window], rows + dy, ".", ms=3, color=color, label=name)
    ax_opt.set_yticks(range(len(used)), [ids[o] for o in used], fontsize=7)
    ax_opt.set_ylim(-0.5, len(used) - 0.5)
    ax_opt.set_ylabel("option")
    ax_opt.set_xlabel("time s")
    ax_opt.legend(loc="upper right", fontsize=7)
    trace = next(t for t in traces if t.name == shown)
    t_s = r["oracle"].t_s[window]
    ax_q = ax_opt.twinx()
    ax_q.step(t_s, trace.queue_ms[trace.index(t_s)], where="post", color="tab:red", alpha=0.4)
    ax_q.set_ylabel("endpoint queue ms", color="tab:red")
    ax_opt.set_title(f"queue cycle [sim] {shown}, device: {device}", fontsize=9)
    x = np.arange(len(names))
    for k, (label, color) in enumerate(
        (("no_reports", "tab:orange"), ("reports", "tab:green"), ("oracle", "0.6"))
    ):
        values = [
            e["oracle"]["switches_per_1000"]
            if label == "oracle"
            else e["orchestrator"][label]["switches_per_1000"]
            for e in report["traces"]
        ]
        ax_sw.bar(x + (k - 1) * 0.27, values, 0.27, color=color, label=label)
    ax_sw.axhline(QUEUE_TARGETS["switches_per_1000_max"], ls="--", color="tab:red", lw=0.8, label="target")
    ax_sw.set_xticks(x, names, fontsize=7, rotation=15)
    ax_sw.set_ylabel("switches per 1,000 requests")
    ax_sw.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- measured profile ----------------------------------------------------------------------------------

_TCPIP_BYTES = 14 + 20 + 32  # Ethernet, IPv4 and TCP (with timestamps) headers of the request's segment


def measure_profile(
    bundle_path: Path,
    *,
    requests: int = 100,
    images: Sequence[Any] | None = None,
    log: Callable[[str], None] = print,
) -> Profile:
    """A profile of ``bundle_path`` from real measurements on this machine.

    Bytes and accuracy per option come from the bundle's manifest (measured on its evaluation set).
    Device times are what the real edge client measures (:meth:`~splitserve.edge.EdgeRuntime.measure`, 50 runs:
    head + entropy coding per split, the whole model, the PNG encoding), median over the clients (one
    per option, each loads only what its option needs). Server times are the median ``total_ms`` the real endpoint (embedded ONNX Runtime, its own
    process on loopback) reports for ``requests`` inputs per remote option: ``images`` (anything the edge
    client takes, e.g. photo bytes), by default Fashion-MNIST test images. Framing
    is what the client reports beyond the payload (``Result.bytes_sent``: the TCP payload, HTTP/2 and gRPC
    framing included, checked against the kernel's counters by ``bench wire``) plus the Ethernet and
    TCP/IP headers (``_TCPIP_BYTES``).
    """
    from splitserve.core.bundle import Bundle
    from splitserve.core.datasets import load_fashion_mnist
    from splitserve.edge import EdgeClient, EdgeConfig
    from splitserve.orchestrator import DeviceLatency, options_from_manifest

    from .cloud import endpoint

    if images is None:
        images = list(load_fashion_mnist("test")[0])
    bundle = Bundle.open(bundle_path)
    manifest = bundle.manifest
    bundle.close()
    measured: list[DeviceLatency] = []
    server_ms: dict[str, float] = {}
    framing: list[int] = []
    with endpoint(Path(bundle_path), "embedded", "auto") as server:
        target = server.target
        for option in options_from_manifest(manifest):
            config = EdgeConfig(timeout_s=5.0, fallback=False)
            with EdgeClient(bundle_path, target, policy=option.id, config=config) as client:
                measured.append(client.runtime.measure(repeats=50))  # steadier than the start-up 10
                if not option.remote:
                    continue
                for image in images[-10:]:  # warm-up: first calls of a connection and a tail
                    client.infer(image)
                totals = []
                for i in range(requests):
                    r = client.infer(images[i % len(images)])
                    totals.append(float(r.timings.server_total_ms or 0.0))
                    framing.append(r.bytes_sent - r.payload_bytes)
                server_ms[option.id] = float(np.median(totals))
                log(f"  measured {option.id}: server {server_ms[option.id]:.2f} ms")
    offload = {o.level or 0 for o in options_from_manifest(manifest) if o.kind == "offload"}  # each measured by its client
    device = DeviceLatency(
        head_ms={
            s.name: float(np.median([m.head_ms[s.name] for m in measured if s.name in m.head_ms]))
            for s in manifest.splits
        },
        local_ms=float(np.median([m.local_ms for m in measured])),
        offload_ms=float(np.median([m.offload_ms for m in measured if m.offload_ms])) if 0 in offload else 0.0,
        offload_level_ms={lv: float(np.median([m.offload_level_ms[lv] for m in measured if lv in m.offload_level_ms]))
                          for lv in offload if lv},
    )
    return Profile.from_manifest(
        manifest,
        device,
        server_ms,
        framing_bytes=float(np.median(framing)) + _TCPIP_BYTES,
        name=f"{manifest.name}:{manifest.version} @ {platform.node() or 'this machine'}",
        description=(
            f"Measured {time.strftime('%Y-%m-%d')} from bundle {bundle_path}: bytes and accuracy from its "
            f"manifest; device times from the edge client's start-up measurement on this CPU "
            f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared); server times "
            f"the median endpoint total over {requests} requests per option (embedded "
            "ONNX Runtime endpoint on loopback); framing = the client's TCP payload beyond the payload + "
            f"{_TCPIP_BYTES} B Ethernet + TCP/IP headers."
        ),
    )


# -- live ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as a live client saw it.

    Attributes:
        t_s: start time on the trace's clock (seconds since the trace started).
        option_id: the option that served it.
        latency_ms: end-to-end latency (including a local fallback after a timeout).
        fell_back: the remote request timed out and the device answered locally.
    """

    t_s: float
    option_id: str
    latency_ms: float
    fell_back: bool = False


@dataclass(frozen=True)
class LiveJob:
    """One policy over one trace in the lab.

    Attributes:
        trace: the trace the lab follows (already compressed in time).
        profile: the option profile.
        config: interval, deadline, timeout, accuracy floor, seed.
        policy: a registered policy name, or ``None`` for a fixed option.
        fixed_option: the option id to use throughout when ``policy`` is ``None``.
        address: where the client connects (the relay in the cloud namespace).
        start_s: ``time.monotonic()`` at trace time 0.
        edge_namespace: the edge namespace's name (for runners that start a process there).
    """

    trace: Trace
    profile: Profile
    config: SimConfig
    policy: str | None
    fixed_option: str | None
    address: tuple[str, int]
    start_s: float
    edge_namespace: str


class LiveRunner(Protocol):
    """Starts an endpoint and drives a client inside a lab (the real ones, or :class:`EmulatedRunner`)."""

    name: str

    def endpoint(self, lab: Netlab, profile: Profile) -> AbstractContextManager[tuple[str, int]]:
        """Start the endpoint in the cloud namespace; yield its address as seen from there."""
        ...

    def client(self, lab: Netlab, job: LiveJob) -> list[RequestRecord]:
        """Run ``job`` from the edge namespace until the trace ends; return every request."""
        ...


_TCPIP_BYTES = 66  # Ethernet + IPv4 + TCP with timestamps: counted by tbf, added by the kernel


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


class EmulatedRunner:
    """Real bytes over the shaped link, compute emulated from the profile.

    The endpoint is a helper process in the cloud namespace (``python -m benchmarks.netlab endpoint``);
    the client runs in the calling thread with its sockets in the edge namespace. The client sleeps the profile's device time (times the same per-request factors the simulator draws),
    sends ``payload + framing`` bytes (less the TCP/IP headers the kernel adds) through the relay, and
    the endpoint sleeps the option's server time before replying with ``ServerTimings``-like figures. A
    reply that misses ``timeout_ms`` aborts the connection (RST) and the device answers locally. Probes
    the orchestrator asks for run on a second connection beside the request.
    """

    name = "emulated"

    @contextlib.contextmanager
    def endpoint(self, lab: Netlab, profile: Profile) -> Iterator[tuple[str, int]]:
        helper = HelperProcess(lab, "cloud", ["endpoint"])
        try:
            yield ("127.0.0.1", helper.port)
        finally:
            helper.close()

    def client(self, lab: Netlab, job: LiveJob) -> list[RequestRecord]:
        return _EmulatedClient(lab, job).run()


class _EmulatedClient:
    def __init__(self, lab: Netlab, job: LiveJob) -> None:
        self.lab, self.job = lab, job
        cfg, prof = job.config, job.profile
        n = int(job.trace.duration_s * 1000.0 / cfg.interval_ms) + 1
        rng = np.random.default_rng(cfg.seed)
        factors = [lognormal_factors(rng, cv, n) for cv in (prof.device_cv, prof.payload_cv, prof.server_cv)]
        self.dev_f, self.pay_f, self.srv_f = factors
        self.orch = orchestrator_factory(prof, cfg, job.policy)(time.monotonic) if job.policy else None
        self._conn: socket.socket | None = None
        self._probes: queue.Queue[ProbeResult] = queue.Queue()
        self._probe_thread: threading.Thread | None = None

    def _connect(self, timeout_s: float) -> socket.socket:
        sock = self.lab.socket("edge")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(timeout_s, 0.001))
        sock.connect(self.job.address)
        return sock

    @staticmethod
    def _abort(sock: socket.socket | None) -> None:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, drop unsent
            sock.close()

    def _exchange(self, sock: socket.socket, body: int, server_ms: float, deadline: float) -> ServerTimings:
        """Send ``body`` bytes after the header, wait for the reply until ``deadline``."""
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(ENDPOINT_REQUEST.pack(body, server_ms, 0.0) + bytes(body))
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        decode, queue_ms, tail, total, delay = ENDPOINT_REPLY.unpack(_recv_exact(sock, ENDPOINT_REPLY.size))
        return ServerTimings(decode, queue_ms, tail, total, delay)

    def _body(self, wire_bytes: int) -> int:
        """Bytes to send after the header so that ``wire_bytes`` cross the link."""
        return max(wire_bytes - _TCPIP_BYTES - ENDPOINT_REQUEST.size, 0)

    def _probe(self, probe_bytes: int) -> None:
        timeout_s = self.job.config.timeout_ms / 1000.0
        wire = probe_bytes or ENDPOINT_REQUEST.size + _TCPIP_BYTES  # a ping is the bare header
        sock = None
        try:
            sock = self._connect(timeout_s)
            t0 = time.monotonic()
            self._exchange(sock, self._body(wire), 0.0, t0 + timeout_s)
            self._probes.put(ProbeResult(wire, (time.monotonic() - t0) * 1000.0))
            sock.close()
        except (OSError, ConnectionError):
            self._abort(sock)
            self._probes.put(ProbeResult(wire, timeout_s * 1000.0, failed=True))

    def run(self) -> list[RequestRecord]:
        job, cfg, prof = self.job, self.job.config, self.job.profile
        local = prof.entry("local") if "local" in prof.ids else None
        records: list[RequestRecord] = []
        i = 0
        while True:
            now = time.monotonic()
            if now - job.start_s >= job.trace.duration_s or i >= len(self.dev_f):
                break
            time.sleep(max(job.start_s + i * cfg.interval_ms / 1000.0 - now, 0.0))
            records.append(self._one(i, local))
            i += 1
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=cfg.timeout_ms / 1000.0 + 1.0)
        self._abort(self._conn)
        return records

    def _one(self, i: int, local: Any) -> RequestRecord:
        job, cfg = self.job, self.job.config
        t0 = time.monotonic()
        if self.orch is not None:
            while not self._probes.empty():
                self.orch.observe_probe(self._probes.get_nowait())
            decision = self.orch.decide(deadline_ms=cfg.deadline_ms)
            oid, probe = decision.option_id, decision.probe_bytes
        else:
            oid, probe = str(job.fixed_option), None
        if probe is not None and (self._probe_thread is None or not self._probe_thread.is_alive()):
            self._probe_thread = threading.Thread(target=self._probe, args=(probe,), daemon=True)
            self._probe_thread.start()
        entry = job.profile.entry(oid)
        device_ms = entry.device_ms * float(self.dev_f[i])
        time.sleep(device_ms / 1000.0)
        if not entry.option.remote:
            self._observe(Observation(oid, device_ms))
            return RequestRecord(t0 - job.start_s, oid, (time.monotonic() - t0) * 1000.0)
        payload = round(entry.option.payload_bytes * float(self.pay_f[i]))
        wire = payload + int(job.profile.framing_bytes)
        deadline = t0 + cfg.timeout_ms / 1000.0
        try:
            if self._conn is None:  # (re)connecting is part of the request's latency, not of its RTT sample
                self._conn = self._connect(deadline - time.monotonic())
            sent = time.monotonic()
            timings = self._exchange(
                self._conn, self._body(wire), entry.server_ms * float(self.srv_f[i]), deadline
            )
        except (OSError, ConnectionError):
            self._abort(self._conn)
            self._conn = None
            waited = (time.monotonic() - t0) * 1000.0 - device_ms
            self._observe(Observation(oid, device_ms, payload, wire, waited, failed=True))
            if local is not None:
                time.sleep(local.device_ms * float(self.dev_f[i]) / 1000.0)
            return RequestRecord(t0 - job.start_s, oid, (time.monotonic() - t0) * 1000.0, fell_back=True)
        rtt = (time.monotonic() - sent) * 1000.0
        self._observe(Observation(oid, device_ms, payload, wire, rtt, timings))
        return RequestRecord(t0 - job.start_s, oid, (time.monotonic() - t0) * 1000.0)

    def _observe(self, obs: Observation) -> None:
        if self.orch is not None:
            self.orch.observe(obs)


class EdgeClientRunner:
    """The real edge client and the real endpoint over the shaped link.

    The endpoint is ``python -m splitserve.cloud serve`` (embedded ONNX Runtime) in the cloud namespace;
    the client is :class:`~splitserve.edge.EdgeClient` in a process in the edge namespace (``python -m
    splitserve.benchmarks.adaptation live-client``), sending one Fashion-MNIST test image every
    ``interval_ms`` through the relay with the orchestrator (or a fixed option) it is given, each with the
    profile's ``timeout_ms`` for the remote part plus the client's reserve for a local run. Every byte,
    probe, timing and fallback is the real client's. With ``stand_in`` the client's device work (heads,
    the local model, PNG encoding) is padded by a sleep to the profile's device times (a profile scaled
    by ``--device-factor`` or given MACs by ``--mac-rate``; see ``EdgeRuntime.emulate``), and the
    orchestrator gets the client's start-up measurement taken again on the padded device: this CPU
    standing in for a slower, steady device, as in the simulator.

    Args:
        bundle: the bundle both sides load.
        stand_in: pad device work to the profile's device times.
    """

    name = "edge_client"

    def __init__(self, bundle: Path, stand_in: bool = False) -> None:
        self.bundle = Path(bundle)
        self.stand_in = stand_in

    @contextlib.contextmanager
    def endpoint(self, lab: Netlab, profile: Profile) -> Iterator[tuple[str, int]]:
        """The endpoint in the lab's cloud namespace on a fixed port, ready when its ``/readyz`` says so."""
        server = Endpoint(
            self.bundle,
            address=f"127.0.0.1:{_LIVE_ENDPOINT_PORT}",
            metrics_port=_LIVE_METRICS_PORT,
            grace_s=1,
            readiness="metrics",
            startup_timeout_s=120.0,
            launcher=lab.exec_prefix("cloud"),
            place=lambda: lab.inside("cloud"),
        )
        with server:
            yield ("127.0.0.1", server.port)

    def client(self, lab: Netlab, job: LiveJob) -> list[RequestRecord]:
        return self.prepare(lab, job)(job.start_s)

    def prepare(self, lab: Netlab, job: LiveJob) -> Callable[[float], list[RequestRecord]]:
        """Start the client process and wait until it is ready (bundle open, device measured).

        Returns:
            ``go(start_s)``: tells the client the trace started at ``start_s`` and returns its records.
        """
        cfg = job.config
        spec = {
            "bundle": str(self.bundle),
            "address": f"{job.address[0]}:{job.address[1]}",
            "policy": job.policy,
            "fixed_option": job.fixed_option,
            "duration_s": job.trace.duration_s,
            "interval_ms": cfg.interval_ms,
            "timeout_ms": cfg.timeout_ms,
            "accuracy_floor": cfg.accuracy_floor,
            "stand_in": self.stand_in,
            "profile": job.profile.to_dict(),
        }
        f = tempfile.NamedTemporaryFile("w", suffix=".json")  # noqa: SIM115 - closed in go()
        json.dump(spec, f)
        f.flush()
        argv = [sys.executable, "-m", "splitserve.benchmarks.adaptation", "live-client", f.name]
        proc = lab.popen("edge", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            f.close()
            raise RuntimeError(f"the live client did not start (exit status {proc.poll()})")

        def go(start_s: float) -> list[RequestRecord]:
            try:
                stdout, _ = proc.communicate(f"{start_s!r}\n", timeout=job.trace.duration_s + 120.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
            finally:
                f.close()
            if proc.returncode != 0:
                raise RuntimeError(f"the live client exited with {proc.returncode}")
            return [RequestRecord(**json.loads(line)) for line in stdout.splitlines() if line.startswith("{")]

        return go


_LIVE_ENDPOINT_PORT = 50051
_LIVE_METRICS_PORT = 9464  # the lab's cloud namespace is the endpoint's alone: fixed ports are free


def _live_client_main(spec_path: str) -> None:
    """The client process of :class:`EdgeClientRunner`: one JSON line per request on stdout."""
    from splitserve.core.bundle import Bundle
    from splitserve.edge import EdgeClient, EdgeConfig

    from ._inputs import bundle_images

    spec = json.loads(Path(spec_path).read_text())
    profile = Profile.from_dict(spec["profile"])
    sim = SimConfig(
        interval_ms=spec["interval_ms"], timeout_ms=spec["timeout_ms"], accuracy_floor=spec["accuracy_floor"]
    )
    policy: Any = spec["fixed_option"]
    if spec["policy"]:
        policy = orchestrator_factory(profile, sim, spec["policy"])(time.monotonic)
    with contextlib.closing(Bundle.open(spec["bundle"])) as bundle:  # a photo bundle sends its held-out photos
        images = bundle_images(bundle)
    config = EdgeConfig(timeout_s=spec["timeout_ms"] / 1000.0)
    with EdgeClient(spec["bundle"], spec["address"], policy=policy, config=config) as client:
        if spec["stand_in"]:
            # The profile's device times, absolute (the same numbers the simulator uses, in every live run
            # alike): padding to a multiple of each run's own CPU time made the stand-in device differ by up
            # to 30% between runs, which the live oracle, built from other runs, counted against the
            # orchestrator.
            client.runtime.emulate(profile.device_latency())
            client.use_device_latency(client.runtime.measure())  # the start-up measurement, padded
        # SimConfig.timeout_ms is how long a remote request may take before the device answers; the
        # client's timeout also holds the reserve for that local run, so it gets the two together.
        timeout_s = spec["timeout_ms"] / 1000.0 + client.local_reserve_s
        print("ready", flush=True)
        start, i = float(sys.stdin.readline()), 0
        while (t := start + i * spec["interval_ms"] / 1000.0) < start + spec["duration_s"]:
            time.sleep(max(t - time.monotonic(), 0.0))
            sent = time.monotonic()
            r = client.infer(images[i % len(images)], timeout_s=timeout_s)
            record = RequestRecord(
                t_s=sent - start,
                option_id=r.chosen,
                latency_ms=(time.monotonic() - sent) * 1000.0,
                fell_back=r.fallback_reason is not None,
            )
            print(json.dumps(dataclasses.asdict(record)), flush=True)
            i += 1


def _run_of(name: str, records: Sequence[RequestRecord], profile: Profile) -> Run:
    ids = list(profile.ids)
    acc = {e.option.id: e.option.accuracy for e in profile.entries}
    local_acc = acc.get("local", np.nan)
    return Run(
        policy=name,
        t_s=np.array([r.t_s for r in records]),
        choice=np.array([ids.index(r.option_id) for r in records], dtype=int),
        latency_ms=np.array([r.latency_ms for r in records]),
        accuracy=np.array([local_acc if r.fell_back else acc[r.option_id] for r in records]),
        fell_back=np.array([r.fell_back for r in records], dtype=bool),
    )


def _running_median(x: np.ndarray, half_width: int) -> np.ndarray:
    padded = np.pad(x, half_width, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half_width + 1)
    return np.median(windows, axis=1)


def _live_oracle(orch: Run, fixed: dict[str, Run], ids: Sequence[str], interval_s: float) -> Run:
    """Per orchestrator request, the fixed run that was fastest at the same trace time.

    Each fixed run's latencies are first smoothed by a running median over 5 requests: with several noisy
    runs, the single luckiest request would otherwise set a bar no policy could reach.
    """
    lat = np.full((len(orch.t_s), len(fixed)), np.inf)
    acc = np.zeros_like(lat)
    fell = np.zeros(lat.shape, dtype=bool)
    cols = list(fixed.items())
    for c, (_, r) in enumerate(cols):
        if len(r.t_s) < 2:
            continue
        k = np.clip(np.searchsorted(r.t_s, orch.t_s), 1, len(r.t_s) - 1)
        k = np.where(np.abs(r.t_s[k - 1] - orch.t_s) < np.abs(r.t_s[k] - orch.t_s), k - 1, k)
        near = np.abs(r.t_s[k] - orch.t_s) <= interval_s
        lat[:, c] = np.where(near, _running_median(r.latency_ms, 2)[k], np.inf)
        acc[:, c], fell[:, c] = r.accuracy[k], r.fell_back[k]
    best = np.argmin(lat, axis=1)
    rows = np.arange(len(best))
    covered = np.isfinite(lat[rows, best])
    option_index = np.array([ids.index(name.split(":", 1)[1]) for name, _ in cols])
    return Run(
        "oracle",
        orch.t_s[covered],
        option_index[best][covered],
        lat[rows, best][covered],
        acc[rows, best][covered],
        fell[rows, best][covered],
    )


def compress(trace: Trace, duration_s: float) -> Trace:
    """The same trace played faster, lasting ``duration_s`` (for the live harness)."""
    f = duration_s / trace.duration_s
    return dataclasses.replace(trace, dt_s=trace.dt_s * f, steps_s=tuple(s * f for s in trace.steps_s))


def _live_trace(
    trace: Trace,
    profile: Profile,
    config: SimConfig,
    runner: LiveRunner,
    fixed_ids: Sequence[str],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Run]]:
    jobs: list[tuple[str, str | None, str | None]] = [("orchestrator", "min_latency", None)]
    jobs += [(f"fixed:{oid}", None, oid) for oid in fixed_ids]
    runs: dict[str, Run] = {}
    first = float(trace.bandwidth_bps[0])
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(Netlab(rate_bps=first))
        target = stack.enter_context(runner.endpoint(lab, profile))
        relay = stack.enter_context(DelayRelay(lab, target, one_way_ms=float(trace.rtt_ms[0]) / 2))
        filler = stack.enter_context(Filler(lab))
        for name, policy, fixed in jobs:
            log(f"  live {trace.name}: {name} ({trace.duration_s:.0f} s)")
            job = LiveJob(trace, profile, config, policy, fixed, relay.address, 0.0, lab.namespace("edge"))
            prepare = getattr(runner, "prepare", None)  # a client that is slow to start starts first
            started = prepare(lab, job) if prepare is not None else None
            with TraceFollower(lab, trace, relay=relay, filler=filler) as follower:
                if started is not None:
                    records = started(follower.start_s)
                else:
                    records = runner.client(lab, dataclasses.replace(job, start_s=follower.start_s))
                runs[name] = _run_of(name, records, profile)
            lab.set_rate(first)
            time.sleep(0.2)  # let the queues drain between runs
    ids = profile.ids
    eligible = {
        n: r
        for n, r in runs.items()
        if n.startswith("fixed:")
        and profile.entry(n.split(":", 1)[1]).option.accuracy >= config.accuracy_floor - 1e-9
    }
    runs["oracle"] = _live_oracle(runs["orchestrator"], eligible, ids, config.interval_ms / 1000.0)
    best = min(eligible, key=lambda n: float(np.mean(eligible[n].latency_ms)))
    runs["best_fixed"] = runs[best]
    meets = np.zeros(len(runs["orchestrator"].t_s), dtype=bool)
    oracle = runs["oracle"]
    pos = np.searchsorted(runs["orchestrator"].t_s, oracle.t_s)
    meets[pos] = oracle.latency_ms <= config.deadline_ms
    entry = _entry(
        trace, "live", runs, ids, best.split(":", 1)[1], config, meets, [n.split(":", 1)[1] for n in eligible]
    )
    entry["client"] = runner.name
    entry["fixed_options_run"] = list(fixed_ids)
    return entry, runs


# -- plots ---------------------------------------------------------------------------------------------


def _plot(
    path: Path,
    trace: Trace,
    runs: dict[str, Run],
    ids: Sequence[str],
    best: str,
    mode: str,
    deadline_ms: float,
    device: str,
) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bw, ax_opt, ax_lat) = plt.subplots(
        3, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [1, 1.3, 1.3]}
    )
    t = np.arange(len(trace.bandwidth_bps)) * trace.dt_s
    ax_bw.step(t, np.maximum(trace.bandwidth_bps, 1e3) / 1e6, where="post", color="tab:blue")
    ax_bw.set_yscale("log")
    ax_bw.set_ylabel("uplink Mbit/s")
    if np.any(trace.queue_ms > 0):
        ax_q = ax_bw.twinx()
        ax_q.step(t, trace.queue_ms, where="post", color="tab:red", alpha=0.6)
        ax_q.set_ylabel("endpoint queue ms", color="tab:red")
    title = f"adaptation [{mode}] {trace.name}, device: {device}: {trace.description}"
    ax_bw.set_title("\n".join(textwrap.wrap(title, 120)), fontsize=9)
    orch, oracle = runs["orchestrator"], runs["oracle"]
    ax_opt.plot(oracle.t_s, oracle.choice, ".", ms=3, color="0.7", label="oracle")
    ax_opt.plot(orch.t_s, orch.choice, ".", ms=3, color="tab:green", label="orchestrator")
    ax_opt.set_yticks(range(len(ids)), ids, fontsize=7)
    ax_opt.set_ylabel("option")
    ax_opt.legend(loc="upper right", fontsize=7)
    for name, color in (("best_fixed", "tab:orange"), ("oracle", "0.5"), ("orchestrator", "tab:green")):
        r = runs[name]
        label = f"best fixed ({best})" if name == "best_fixed" else name
        ax_lat.plot(
            r.t_s, r.latency_ms, lw=0.8, color=color, label=f"{label}: mean {np.mean(r.latency_ms):.1f} ms"
        )
    ax_lat.axhline(deadline_ms, ls="--", color="tab:red", lw=0.8, label=f"deadline {deadline_ms:.0f} ms")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency ms")
    ax_lat.set_xlabel("time s")
    ax_lat.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _device_label(profile: dict[str, Any]) -> str:
    """The device the run stands for, as the plots' titles name it (``x300``, ``x10 + MACs at 200 MMAC/s``)."""
    label = f"profile {profile['name']} x{profile['device_factor']:g}"
    return label + (f" + MACs at {profile['mac_rate_mmac_s']:g} MMAC/s" if profile.get("mac_rate_mmac_s") else "")


# -- entry points --------------------------------------------------------------------------------------


def run(
    out_dir: Path,
    profile_path: Path | None,
    live: bool = False,
    *,
    config: SimConfig | None = None,
    seed: int = 0,
    traces: Sequence[str] | None = None,
    device_factor: float = 1.0,
    mac_rate: float | None = None,
    live_runner: LiveRunner | None = None,
    live_traces: Sequence[str] = ("step", "on_off"),
    live_duration_s: float = 60.0,
    live_fixed: Sequence[str] | None = None,
    plots: bool = True,
    bundle: Path | None = None,
    queue_cycle: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> dict[str, Any]:
    """Run the benchmark and write ``adaptation.json`` (and plots) under ``out_dir``.

    Args:
        out_dir: output directory (created).
        profile_path: a profile JSON (see ``splitserve.orchestrator.profile``); ``None`` uses the shipped
            example profile, with a printed warning.
        live: also run the live harness (needs root; skipped with the reason recorded otherwise).
        config: simulation settings (interval, deadline, timeout, accuracy floor).
        seed: seed of the random traces.
        traces: names of the traces to simulate (``None``: the whole set).
        device_factor: scale every device time of the profile (a workstation standing in for a slower
            device); recorded in the report.
        mac_rate: add to every device time its on-device MACs at this many MMAC/s
            (:meth:`Profile.with_mac_rate`: a device where compute, not per-call overhead, dominates);
            applied after ``device_factor``, recorded in the report.
        live_runner: endpoint + client for the live harness; ``None`` uses :class:`EdgeClientRunner`
            when ``bundle`` is given, else :class:`EmulatedRunner` (the profile has no bundle behind it).
        live_traces: names of the traces to run live.
        live_duration_s: each live trace is compressed to this duration.
        live_fixed: option ids to run as fixed policies live (``None``: every option); the live oracle
            and best fixed option are taken among these.
        plots: write PNG plots.
        bundle: the bundle of the live harness's real client and endpoint; without ``profile_path``
            the profile is measured from it first (:func:`measure_profile`; saved as
            ``adaptation_profile.json``). With both, the profile (measured earlier from this bundle)
            is replayed, so that a re-run uses the same device times.
        queue_cycle: also simulate the queue-cycle scenario (the selected ``traces``), written under the
            report's ``queue_cycle`` key.
        log: progress messages.

    Returns:
        The report written to ``adaptation.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = bundle is not None and profile_path is None
    profile_path = _profile_path(out_dir, profile_path, bundle, log)
    profile = Profile.load(profile_path).with_device_factor(device_factor)
    if mac_rate is not None:
        profile = profile.with_mac_rate(mac_rate)
    cfg = dataclasses.replace(config or SimConfig(), seed=seed)
    source = f"--profile {profile_path}" if not measured else ""
    source += f" --bundle {bundle}" if bundle is not None else ""
    report: dict[str, Any] = {
        "benchmark": "adaptation",
        "command": f"splitserve bench adaptation {source.strip()} --device-factor {device_factor:g}"
        + (f" --mac-rate {mac_rate:g}" if mac_rate is not None else "")
        + (f" --accuracy-floor {cfg.accuracy_floor:g}" if cfg.accuracy_floor != SimConfig().accuracy_floor else "")
        + (f" --live --live-duration {live_duration_s:g}" if live else "")
        + (f" --live-fixed {','.join(live_fixed)}" if live and live_fixed else "")
        + f" --out {out_dir}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": {
            "path": str(profile_path),
            "name": profile.name,
            "example": profile.example,
            "description": profile.description,
            "device_factor": device_factor,
            "mac_rate_mmac_s": mac_rate,
        },
        "config": {**dataclasses.asdict(cfg), "orchestrators": ORCHESTRATORS},
        "rules": RULES,
        "targets": TARGETS,
        "traces": [],
    }
    started = time.perf_counter()
    _simulate(report, out_dir, profile, cfg, traces, queue_cycle=queue_cycle, plots=plots)
    report["sim_seconds"] = time.perf_counter() - started
    if live and live_runner is None and bundle is not None:
        live_runner = EdgeClientRunner(bundle, stand_in=device_factor != 1.0 or mac_rate is not None)
    if live:
        report["live"] = _run_live(
            out_dir,
            profile,
            cfg,
            trace_set(seed),
            live_runner,
            live_traces,
            live_duration_s,
            live_fixed,
            plots,
            report,
            log,
        )
    report["summary"] = _summary(report["traces"])
    (out_dir / "adaptation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _profile_path(out_dir: Path, profile_path: Path | None, bundle: Path | None, log: Callable[[str], None]) -> Path:
    """The profile :func:`run` uses: measured from ``bundle`` when no profile is given (saved under
    ``out_dir``), checked against ``bundle`` when both are, else the shipped example (with a warning)."""
    if bundle is not None and profile_path is None:
        log(f"measuring a profile of {bundle} (edge client start-up, embedded endpoint on loopback)")
        profile_path = out_dir / "adaptation_profile.json"
        measure_profile(bundle, log=log).save(profile_path)
    elif bundle is not None and profile_path is not None:
        _check_profile_fits(Profile.load(profile_path), bundle)
    if profile_path is None:
        profile_path = example_profile_path()
        log(
            f"WARNING: no profile given; using the EXAMPLE profile {profile_path} (illustrative numbers, "
            "not measurements): pass a profile built from the real bundle and measured latencies."
        )
    return profile_path


def _simulate(
    report: dict[str, Any],
    out_dir: Path,
    profile: Profile,
    cfg: SimConfig,
    traces: Sequence[str] | None,
    *,
    queue_cycle: bool,
    plots: bool,
) -> None:
    """The simulated traces (``traces``; ``None``: the whole set) into ``report["traces"]``, then the
    queue-cycle scenario into ``report["queue_cycle"]``, each with its plots."""
    seed = cfg.seed
    for trace in [t for t in trace_set(seed) if traces is None or t.name in traces]:
        entry, runs = _sim_trace(trace, profile, cfg)
        report["traces"].append(entry)
        if plots:
            _plot(
                out_dir / f"adaptation_sim_{trace.name}.png",
                trace,
                runs,
                profile.ids,
                entry["best_fixed_option"],
                "sim",
                cfg.deadline_ms,
                _device_label(report["profile"]),
            )
    if queue_cycle:
        queue_traces = _queue_traces(seed, traces)
        report["queue_cycle"], queue_runs = _queue_scenario(profile, cfg, queue_traces)
        if plots:
            _plot_queue(
                out_dir / "adaptation_queue.png",
                report["queue_cycle"],
                queue_traces,
                queue_runs,
                profile.ids,
                _device_label(report["profile"]),
            )


def _check_profile_fits(profile: Profile, bundle: Path) -> None:
    """Refuse a profile whose options are not the bundle's (it was measured from another bundle)."""
    from splitserve.core.bundle import Bundle
    from splitserve.orchestrator import options_from_manifest

    with contextlib.closing(Bundle.open(bundle)) as b:
        ids = [o.id for o in options_from_manifest(b.manifest)]
    if sorted(ids) != sorted(profile.ids):
        raise ValueError(f"profile options {list(profile.ids)} are not the options {ids} of bundle {bundle}")


def _run_live(
    out_dir: Path,
    profile: Profile,
    cfg: SimConfig,
    traces: Sequence[Trace],
    runner: LiveRunner | None,
    names: Sequence[str],
    duration_s: float,
    fixed: Sequence[str] | None,
    plots: bool,
    report: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason is not None:
        log(f"live harness skipped: {reason}")
        return {"skipped": reason}
    if runner is None:
        runner = EmulatedRunner()
        log("live harness: no bundle given, so the client and endpoint are emulated from the profile")
    fixed_ids = list(profile.ids if fixed is None else fixed)
    floor = cfg.accuracy_floor - 1e-9
    if not any(profile.entry(oid).option.accuracy >= floor for oid in fixed_ids):
        raise ValueError(
            f"live_fixed {fixed_ids} has no option meeting the accuracy floor {cfg.accuracy_floor}"
        )
    started = time.perf_counter()
    for trace in traces:
        if trace.name not in names:
            continue
        short = compress(trace, duration_s)
        entry, runs = _live_trace(short, profile, cfg, runner, fixed_ids, log)
        report["traces"].append(entry)
        if plots:
            _plot(
                out_dir / f"adaptation_live_{trace.name}.png",
                short,
                runs,
                profile.ids,
                entry["best_fixed_option"],
                "live",
                cfg.deadline_ms,
                _device_label(report["profile"]),
            )
    return {"client": runner.name, "seconds": time.perf_counter() - started, "duration_s": duration_s}


def _summary(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("sim", "live"):
        rows = [e for e in entries if e["mode"] == mode and e["variable"]]
        if not rows:
            continue
        out[mode] = {
            name: [e["name"] for e in rows if e["targets"].get(name)]
            for name in (
                "mean_within_10pct_of_oracle",
                "mean_30pct_below_best_fixed",
                "misses_le_5pct_where_oracle_meets",
                "settles_within_1s_or_3_requests",
            )
        }
        out[mode]["variable_traces"] = [e["name"] for e in rows]
        out[mode]["headroom_at_least_30pct"] = [
            e["name"] for e in rows if e["targets"]["headroom_vs_best_fixed"] >= 0.30
        ]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.adaptation [--profile P] [--live] [--out results]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument(
        "--profile", type=Path, default=None, help="profile JSON (default: the example, with a warning)"
    )
    p.add_argument("--live", action="store_true", help="also run the live harness (root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--traces", default=None, help="comma-separated trace names to simulate (default: all)")
    p.add_argument("--device-factor", type=float, default=1.0, help="scale the profile's device times")
    p.add_argument("--mac-rate", type=float, default=None, help="add on-device MACs at this many MMAC/s")
    p.add_argument("--live-traces", default="step,on_off")
    p.add_argument("--live-duration", type=float, default=60.0)
    p.add_argument("--live-fixed", default=None, help="comma-separated option ids (default: all)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-queue-cycle", action="store_true", help="skip the queue-cycle scenario")
    a = p.parse_args(argv)
    report = run(
        a.out,
        a.profile,
        a.live,
        seed=a.seed,
        traces=a.traces.split(",") if a.traces else None,
        device_factor=a.device_factor,
        mac_rate=a.mac_rate,
        live_traces=a.live_traces.split(","),
        live_duration_s=a.live_duration,
        plots=not a.no_plots,
        live_fixed=a.live_fixed.split(",") if a.live_fixed else None,
        queue_cycle=not a.no_queue_cycle,
    )
    for e in report["traces"]:
        pol, t = e["policies"], e["targets"]
        print(
            f"{e['mode']:4s} {e['name']:12s} orch {pol['orchestrator']['mean_ms']:7.1f} ms  oracle "
            f"{pol['oracle']['mean_ms']:7.1f}  best fixed {e['best_fixed_option']} {pol['best_fixed']['mean_ms']:7.1f}"
            f"  miss {pol['orchestrator']['miss_rate']:.3f}  headroom {t['headroom_vs_best_fixed']:.0%}"
        )
    for e in report.get("queue_cycle", {}).get("traces", []):
        before, after = e["orchestrator"]["no_reports"], e["orchestrator"]["reports"]
        print(
            f"queue {e['name']:24s} vs oracle {before['vs_oracle']:.3f} -> {after['vs_oracle']:.3f}  misses where "
            f"oracle meets {before['miss_rate_where_oracle_meets']:.3f} -> {after['miss_rate_where_oracle_meets']:.3f}"
            f"  switches/1000 {before['switches_per_1000']:.1f} -> {after['switches_per_1000']:.1f}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["live-client"]:
        _live_client_main(sys.argv[2])
    else:
        main()
