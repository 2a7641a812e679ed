"""System soak: the whole stack under load, faults and a changing network; nothing may be lost.

::

    netns <lab>-edge (tbf: rate follows a trace)       netns <lab>-cloud
    ┌───────────────────────────────────┐              ┌──────────────────────────────────────────────┐
    │ N edge clients (processes):       │    veth      │ endpoint (python -m splitserve.cloud serve,  │
    │   EdgeClient, orchestrator,       │─────────────►│   TLS, bearer tokens, --triton HOST:PORT)    │
    │   TLS + own token, unary/stream   │              │ tritonserver (nvidia-pytriton, python tails, │
    └───────────────────────────────────┘              │   all models loaded at start)                │
                                                       │ Prometheus (scrapes endpoint and Triton)     │
                                                       │ bad client (malformed + unauthenticated)     │
                                                       └──────────────────────────────────────────────┘

Without root (no namespaces, no ``tc``) everything runs on loopback and the link is not shaped.

Faults, in this order (times are fractions of the run): Triton is SIGKILLed and restarted on the same
ports; a burst of malformed and unauthenticated requests arrives from another client; the endpoint is
restarted once (SIGTERM: drain, then ``metrics_linger_s`` so Prometheus scrapes its final counts, then a
new process on the same gRPC port).

Accounting. Each client wraps its gRPC transport and counts, per (split, level), every request that
left it with its outcome as seen on the wire: ``OK``, a status the endpoint must have counted (an
``ItemError`` of a stream reply, or a unary status only the servicer gives: INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED), or *indeterminate* (``?STATUS``: the call broke, or
timed out, or got UNAVAILABLE, which also comes from a refused connection; the endpoint may have
counted it with any status, or not at all). Each endpoint incarnation has its own metrics port, so its
series have their own ``instance`` (and an ``incarnation`` target label); a restart resets nothing that
is compared: the endpoint's totals are ``sum by (split, level, status)`` of ``last_over_time`` over the
run of every incarnation's series. The checks:

- per (split, level): ``client OK <= endpoint OK <= client OK + client indeterminate`` (equal when no
  request was indeterminate); the bad client's statuses that reach the servicer equal the endpoint's
  counts of those statuses exactly (valid clients never cause them);
- Prometheus's last sample of every incarnation equals that incarnation's own ``/metrics`` read just
  before it exited (the linger worked: nothing counted was lost with the process).

Correctness. Inputs are drawn uniformly from the evaluation set the manifest's accuracies were measured
on (Fashion-MNIST test[:eval_size]; for a photo bundle its held-out photos, labelled with its fp32 model),
and the option is chosen before the input is seen, so each result
of option ``o`` is right with probability ``accuracy(o)`` from the manifest: the observed accuracy must
lie within ``4 sigma + 0.01`` of it (sigma: the binomial standard error; 0.01 allows a near-tie flipped
by a different float summation order in Triton's process).

Latency: p50/p99 of the client's total time per input, over unary clients (a stream client's result is
yielded when its next frame arrives, so at a paced frame rate its total includes the wait for that frame).

``python -m splitserve.benchmarks.soak client|bad CONFIG.json`` are the helper processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from splitserve.benchmarks.stack import (
    SERVER_NAME,
    Endpoint,
    free_port,
    http_get,
    make_pki,
    stop_process,
    wait_until,
)
from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.core.errors import SplitServeError
from splitserve.protos.v1 import inference_pb2 as pb

__all__ = ["SoakConfig", "check", "run", "run_soak"]

# Unary statuses that only the servicer produces: the endpoint counted the request with that status.
_DEFINITE = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"})
_PROMETHEUS = "/usr/bin/prometheus"
_MARK = "SPLITSERVE_SOAK_RUN"
_PR_SET_PDEATHSIG = 1
_ACCURACY_Z = 4.0
_ACCURACY_SLACK = 0.01
_TRACE_BPS = (4e6, 256e3, 1e6, 48e3, 2e6)


@dataclass(frozen=True)
class SoakConfig:
    """One soak run.

    Attributes:
        duration_s: traffic time (clients send from start to end).
        clients: edge client processes; their policies cycle through ``max_accuracy``, a fixed split
            (each split and level in turn) and ``min_latency``; every fourth one (from the second) streams,
            the others call ``infer``.
        rate_hz: inputs per second per client (paced; a late input is not made up for).
        timeout_s: per-input deadline of the clients (local fallback included).
        hold_s: seconds each bandwidth step of the trace is held (the steps cycle through
            ``4M, 256k, 1M, 48k, 2M`` bit/s).
        scrape_s: Prometheus scrape interval.
        burst_repeats: times each malformed or unauthenticated request is sent.
        shaped: run the edge clients behind the shaped link (``None``: when root allows it).
        triton_kill_at: when Triton is killed (fraction of ``duration_s``).
        triton_down_s: how long Triton stays down.
        burst_at: when the bad client's burst starts.
        endpoint_restart_at: when the endpoint is restarted.
        memory_every_s: RSS sampling period.
        seed: seed of the clients' input draws.
    """

    duration_s: float = 60.0
    clients: int = 3
    rate_hz: float = 3.0
    timeout_s: float = 1.0
    hold_s: float = 10.0
    scrape_s: float = 1.0
    burst_repeats: int = 3
    shaped: bool | None = None
    triton_kill_at: float = 0.15
    triton_down_s: float = 2.0
    burst_at: float = 0.3
    endpoint_restart_at: float = 0.4
    memory_every_s: float = 5.0
    seed: int = 0


# ---------------------------------------------------------------------------------------------------
# small process and HTTP helpers
# ---------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in a child before exec: the kernel SIGTERMs it if the thread that started it goes away."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _quantile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 2) if values else None


# ---------------------------------------------------------------------------------------------------
# the edge client process
# ---------------------------------------------------------------------------------------------------


def _counting_transport(inner: Any) -> Any:
    """``inner`` (a ``GrpcTransport``) wrapped to count every request that leaves, by its wire outcome."""
    from splitserve.edge import BaseTransport, StreamCall, status_name

    class CountingTransport(BaseTransport):
        def __init__(self) -> None:
            self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self._lock = threading.Lock()

        def count(self, request: pb.InferRequest, outcome: str) -> None:
            with self._lock:
                self.counts[f"{request.split}/{request.level}"][outcome] += 1

        def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
            try:
                reply = inner.infer(request, timeout_s=timeout_s)
            except SplitServeError as exc:
                self.count(request, exc.status if exc.status in _DEFINITE else f"?{exc.status}")
                raise
            self.count(request, "OK")
            return reply

        def stream(self) -> StreamCall:
            return CountingStream(inner.stream(), self)

        def ping(self, *, timeout_s: float) -> None:
            inner.ping(timeout_s=timeout_s)

        def close(self) -> None:
            inner.close()

    class CountingStream(StreamCall):
        def __init__(self, call: StreamCall, owner: CountingTransport) -> None:
            self._call, self._owner = call, owner
            self._pending: dict[str, pb.InferRequest] = {}
            self._lock = threading.Lock()

        def write(self, request: pb.InferRequest) -> None:
            with self._lock:
                self._pending[request.request_id] = request
            try:
                self._call.write(request)
            except SplitServeError:  # refused before it was queued: it never left
                with self._lock:
                    self._pending.pop(request.request_id, None)
                raise

        def done_writing(self) -> None:
            self._call.done_writing()

        def __iter__(self) -> Iterator[pb.InferResponse]:
            try:
                for reply in self._call:
                    with self._lock:
                        request = self._pending.pop(reply.request_id, None)
                    if request is not None:
                        code = reply.error.code if reply.HasField("error") else 0
                        self._owner.count(request, status_name(code))
                    yield reply
            finally:
                with self._lock:
                    left, self._pending = list(self._pending.values()), {}
                for request in left:  # the stream ended with these unanswered: the endpoint may know them
                    self._owner.count(request, "?STREAM")

        def cancel(self) -> None:
            self._call.cancel()

    return CountingTransport()


def _photo_inputs(bundle_path: Path, workdir: Path) -> Path:
    """A photo bundle's evaluation set (:func:`photo_eval_set`), saved for the client processes."""
    from splitserve.core.bundle import Bundle

    from ._inputs import photo_eval_set

    bundle = Bundle.open(bundle_path)
    try:
        images, labels = photo_eval_set(bundle)
    finally:
        bundle.close()
    path = workdir / "inputs.npz"
    np.savez(path, images=images, labels=labels)
    return path


def _client_main(config_path: str) -> None:
    """One edge client: wait for ``go`` on stdin, send paced inputs until ``stop`` (or EOF), report."""
    from splitserve.core.datasets import load_fashion_mnist
    from splitserve.edge import Credentials, EdgeClient, EdgeConfig, GrpcTransport

    cfg = json.loads(Path(config_path).read_text())
    if cfg.get("inputs"):  # a photo bundle: the parent wrote its evaluation inputs and their labels
        with np.load(cfg["inputs"]) as saved:
            images, labels = saved["images"], saved["labels"]
    else:
        images, labels = load_fashion_mnist("test")
    econf = EdgeConfig(timeout_s=cfg["timeout_s"], max_inflight=4)
    creds = Credentials(
        token=cfg["token"], tls=True, root_certificates=Path(cfg["ca"]).read_bytes(), server_name=SERVER_NAME
    )
    transport = _counting_transport(GrpcTransport(cfg["endpoint"], credentials=creds, config=econf))
    client = EdgeClient(
        cfg["bundle"],
        cfg["endpoint"],
        credentials=creds,
        policy=cfg["policy"],
        config=econf,
        transport=transport,
    )
    go, stop = threading.Event(), threading.Event()

    def control() -> None:
        for line in sys.stdin:
            (go if line.strip() == "go" else stop).set()
        go.set()
        stop.set()

    threading.Thread(target=control, daemon=True).start()
    print("ready", flush=True)
    go.wait()
    with open(cfg["results"], "w", buffering=1) as out:
        paced = _PacedInputs(cfg, images, labels, stop, out)
        with client:
            errors = paced.stream(client) if cfg["mode"] == "stream" else paced.unary(client)
        summary = {  # after the client closed: a stream's unanswered inputs are counted then
            "issued": paced.seq,
            "errors": errors,
            "counts": {k: dict(v) for k, v in transport.counts.items()},
        }
        out.write(json.dumps({"summary": summary}) + "\n")


class _PacedInputs:
    """A client's inputs at ``rate_hz`` until ``stop``, drawn from the first ``eval_size`` images, and its
    results: one JSON line each in ``out`` (an input without a result is written as lost)."""

    def __init__(
        self, cfg: dict[str, Any], images: np.ndarray, labels: np.ndarray, stop: threading.Event, out: IO[str]
    ) -> None:
        self.images, self.labels, self.stop, self.out = images, labels, stop, out
        self.n_eval = min(int(cfg["eval_size"]), len(images))
        self.rng = np.random.default_rng(cfg["seed"])
        self.period = 1.0 / cfg["rate_hz"]
        self.issued: deque[tuple[int, int, float]] = deque()
        self.seq = 0

    def frames(self) -> Iterator[np.ndarray]:
        due = time.monotonic()
        while not self.stop.is_set():
            due = max(due + self.period, time.monotonic())
            if self.stop.wait(max(due - time.monotonic(), 0.0)):
                return
            img = int(self.rng.integers(self.n_eval))
            self.issued.append((self.seq, img, time.monotonic()))
            self.seq += 1
            yield self.images[img]

    def record(self, result: Any) -> None:
        i, img, t0 = self.issued.popleft()
        line = {
            "i": i,
            "img": img,
            "label": int(self.labels[img]),
            "top1": result.top1,
            "computed": result.computed,
            "chosen": result.chosen,
            "split": result.split,
            "level": result.level,
            "ms": round(result.timings.total_ms, 2),
            "wall_ms": round((time.monotonic() - t0) * 1e3, 2),
            "t": round(time.time(), 3),
            "reason": (result.fallback_reason or "")[:80] or None,
        }
        self.out.write(json.dumps(line) + "\n")

    def lost(self, exc: Exception, n: int) -> None:
        self.out.write(json.dumps({"error": repr(exc)[:300], "lost": n}) + "\n")
        self.issued.clear()

    def stream(self, client: Any) -> int:
        """``client.stream`` over the paced inputs (a new stream after one breaks); the inputs lost."""
        errors = 0
        while not self.stop.is_set():
            try:
                for result in client.stream(self.frames()):
                    self.record(result)
            except Exception as exc:  # noqa: BLE001 - an input without a result: reported as lost
                errors += len(self.issued)
                self.lost(exc, len(self.issued))
        return errors

    def unary(self, client: Any) -> int:
        """``client.infer`` for each paced input; the inputs lost."""
        errors = 0
        for frame in self.frames():
            try:
                self.record(client.infer(frame))
            except Exception as exc:  # noqa: BLE001
                errors += 1
                self.lost(exc, 1)
        return errors


# ---------------------------------------------------------------------------------------------------
# the bad client process
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    name: str
    expect: str  # the gRPC status it must get
    counted: bool  # whether it reaches the servicer (and so ``splitserve_requests_total``)
    token: str | None
    payload: bytes  # the serialized request (or anything else)


def _bad_cases(bundle: Bundle, token: str, max_message_bytes: int) -> list[_Case]:
    from splitserve.core import codec

    m = bundle.manifest
    split = m.splits[0]
    level = split.levels[0].level
    y = np.zeros(split.latent_shape, dtype=np.float32)
    data, q = codec.encode(y, bundle.tables(split.name, level))
    crc = codec.symbols_crc32(q)

    def request(tensor: dict[str, Any] | None = None, **fields: Any) -> bytes:
        t: dict[str, Any] = {
            "codec": codec.CODEC_NAME,
            "codec_version": bundle.tables(split.name, level).codec_version,
            "shape": list(split.latent_shape),
            "data": data,
            "symbols_crc32": crc,
        }
        f: dict[str, Any] = {"model": m.name, "version": m.version, "split": split.name, "level": level}
        f.update(fields)
        if f.pop("no_tensor", False):
            return pb.InferRequest(request_id="bad", top_k=3, **f).SerializeToString()
        t.update(tensor or {})
        return pb.InferRequest(
            request_id="bad", top_k=3, tensor=pb.CompressedTensor(**t), **f
        ).SerializeToString()

    valid = request()
    return [
        _Case("no token", "UNAUTHENTICATED", False, None, valid),
        _Case("wrong token", "UNAUTHENTICATED", False, "not-a-token", valid),
        _Case("not protobuf", "INVALID_ARGUMENT", True, token, b"\xff\xff\xff\xff garbage"),
        _Case("unknown model", "NOT_FOUND", True, token, request(model="nope")),
        _Case("unknown version", "NOT_FOUND", True, token, request(version="999")),
        _Case("unknown split", "NOT_FOUND", True, token, request(split="nope")),
        _Case("unknown level", "NOT_FOUND", True, token, request(level=77)),
        _Case("no model", "INVALID_ARGUMENT", True, token, request(model="")),
        _Case("no tensor", "INVALID_ARGUMENT", True, token, request(no_tensor=True)),
        _Case("wrong codec", "INVALID_ARGUMENT", True, token, request({"codec": "zstd"})),
        _Case("codec version", "FAILED_PRECONDITION", True, token, request({"codec_version": 99})),
        _Case("wrong shape", "INVALID_ARGUMENT", True, token, request({"shape": [3, 3]})),
        _Case("empty payload", "INVALID_ARGUMENT", True, token, request({"data": b""})),
        _Case("bad crc32", "INVALID_ARGUMENT", True, token, request({"symbols_crc32": crc ^ 1})),
        _Case(
            "offload not png",
            "INVALID_ARGUMENT",
            True,
            token,
            request(
                {"codec": "png", "codec_version": 1, "shape": [], "data": b"\x89PNG junk"},
                split=OFFLOAD_SPLIT,
                level=0,
            ),
        ),
        _Case(
            "oversized",
            "RESOURCE_EXHAUSTED",
            False,
            token,
            request({"data": b"\0" * (max_message_bytes + 1024)}),
        ),
    ]


def _bad_main(config_path: str) -> None:
    """Send every bad case ``repeats`` times, 8 at a time; write what each got."""
    import grpc

    cfg = json.loads(Path(config_path).read_text())
    bundle = Bundle.open(cfg["bundle"])
    try:
        cases = _bad_cases(bundle, cfg["token"], cfg["max_message_bytes"])
    finally:
        bundle.close()
    creds = grpc.ssl_channel_credentials(root_certificates=Path(cfg["ca"]).read_bytes())
    options = [("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.secure_channel(cfg["endpoint"], creds, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        infer = channel.unary_unary("/splitserve.v1.SplitInference/Infer")  # raw bytes both ways

        def send(case: _Case) -> tuple[str, str]:
            metadata = (("authorization", f"Bearer {case.token}"),) if case.token else ()
            try:
                infer(case.payload, timeout=30, metadata=metadata)
                return case.name, "OK"
            except grpc.RpcError as exc:
                return case.name, exc.code().name

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(send, [c for c in cases for _ in range(cfg["repeats"])]))
    report = {
        "cases": [asdict(c) | {"payload": len(c.payload)} for c in cases],
        "got": [list(g) for g in got],
    }
    Path(cfg["out"]).write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Proc:
    """A process the harness started, with its RSS samples (MB)."""

    role: str
    popen: subprocess.Popen[Any]
    started_s: float
    stopped_s: float | None = None
    rss: list[tuple[float, float, float]] = field(default_factory=list)  # (t, own MB, with children MB)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class _Tracked:
    """A process another part started (tritonserver, by ``LocalTriton``), with its RSS samples (MB)."""

    role: str
    pid: int
    started_s: float
    stopped_s: float | None = None
    rss: list[tuple[float, float, float]] = field(default_factory=list)

    def alive(self) -> bool:
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False


class _Stack:
    """The processes of one run, the lab (if shaped) and the clock; everything is stopped by :meth:`close`."""

    def __init__(self, cfg: SoakConfig, bundle: Path, workdir: Path) -> None:
        self.cfg, self.bundle, self.workdir = cfg, bundle, workdir
        self.run_id = uuid.uuid4().hex[:12]
        self.t0 = time.monotonic()
        self.procs: list[_Proc] = []
        self.tracked: list[_Tracked] = []
        self.events: list[dict[str, Any]] = []
        self.lab: Any = None
        self.follower: Any = None
        self.triton: Any = None
        self._logs: list[IO[bytes]] = []
        self._sampler_stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- places ---------------------------------------------------------------------------------------

    def cloud(self) -> contextlib.AbstractContextManager[None]:
        """The calling thread in the cloud namespace (a no-op on loopback): children start there."""
        return self.lab.inside("cloud") if self.lab is not None else contextlib.nullcontext()

    def exec_prefix(self, side: str) -> list[str]:
        """How children start in ``side``'s namespace (nothing on loopback); see ``Netlab.exec_prefix``."""
        return self.lab.exec_prefix(side) if self.lab is not None else []

    @property
    def cloud_host(self) -> str:
        """The endpoint's address as the edge clients see it."""
        return self.lab.cloud_ip if self.lab is not None else "127.0.0.1"

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, what: str, **details: Any) -> None:
        self.events.append({"t_s": self.now(), "event": what, "unix": round(time.time(), 3), **details})

    def get(self, url: str) -> tuple[int, str]:
        with self.cloud():
            return http_get(url)

    # -- processes ------------------------------------------------------------------------------------

    def spawn(
        self, role: str, argv: list[str], *, side: str = "cloud", log: str | None = None, **kw: Any
    ) -> _Proc:
        env = dict(os.environ, **{_MARK: self.run_id}, PYTHONUNBUFFERED="1")
        out: Any = subprocess.DEVNULL
        if log is not None:
            out = open(self.workdir / log, "ab")  # noqa: SIM115 - closed in close()
            self._logs.append(out)
        kw.setdefault("stdout", out)
        popen = subprocess.Popen(
            [*self.exec_prefix(side), *argv],
            env=env,
            stderr=out,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl; no locks are taken
            cwd=self.workdir,
            **kw,
        )
        proc = _Proc(role, popen, self.now())
        with self._lock:
            self.procs.append(proc)
        return proc

    def stop(self, proc: _Proc, timeout_s: float = 20.0) -> None:
        stop_process(proc.popen, timeout_s)
        proc.stopped_s = proc.stopped_s or self.now()

    def start_sampler(self) -> None:
        import psutil

        def sample() -> None:
            while not self._sampler_stop.wait(self.cfg.memory_every_s):
                with self._lock:
                    live = [p for p in [*self.procs, *self.tracked] if p.alive() and p.role != "prometheus"]
                for p in live:
                    with contextlib.suppress(psutil.Error):
                        ps = psutil.Process(p.pid)
                        own = ps.memory_info().rss
                        tree = own + sum(c.memory_info().rss for c in ps.children(recursive=True))
                        if own:  # 0: it is exiting
                            p.rss.append((self.now(), round(own / 2**20, 1), round(tree / 2**20, 1)))

        self._sampler = threading.Thread(target=sample, name="soak-memory", daemon=True)
        self._sampler.start()

    def close(self) -> None:
        """Stop everything still running (reverse start order), the lab last."""
        self._sampler_stop.set()
        if self._sampler is not None:
            self._sampler.join(10)
        if self.follower is not None:
            self.follower.__exit__(None, None, None)
            self.follower = None
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                self.stop(proc, 10.0)
        if self.triton is not None:
            self.triton.stop()
        for f in self._logs:
            f.close()
        if self.lab is not None:
            self.lab.close()

    def survivors(self) -> list[str]:
        """Processes that carry this run's mark (every child and grandchild inherits it), but this one."""
        marker = f"{_MARK}={self.run_id}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                marked = marker in (entry / "environ").read_bytes().split(b"\0")
                if (
                    marked and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                ):  # not a zombie
                    found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
            except OSError:
                continue
        return found


def _stage_triton_repository(bundle: Path, repository: Path) -> list[str]:
    """Link the bundle's python-backend models into ``repository`` under their own names."""
    names = []
    for model in sorted((bundle / "triton" / "python").iterdir()):
        target = repository / model.name
        (target / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(model / "config.pbtxt", target / "config.pbtxt")
        for entry in (model / "1").iterdir():
            link = target / "1" / entry.name
            if not link.exists():
                link.symlink_to(entry.resolve())
        names.append(model.name)
    return names


class _Endpoint:
    """The cloud endpoint's incarnations (:class:`~splitserve.benchmarks.stack.Endpoint`, started through
    the stack so it is sampled and marked): same gRPC port, a metrics port each."""

    def __init__(self, stack: _Stack, grpc_port: int, metrics_ports: list[int], **options: Any) -> None:
        self.stack, self.grpc_port, self.metrics_ports = stack, grpc_port, metrics_ports
        self.options = options
        self.incarnations: list[_Proc] = []
        self.final_metrics: list[str] = []

    @property
    def current(self) -> _Proc:
        return self.incarnations[-1]

    def start(self) -> None:
        n = len(self.incarnations) + 1

        def spawn(argv: list[str]) -> subprocess.Popen[Any]:
            self.incarnations.append(self.stack.spawn(f"endpoint-{n}", argv, log=f"endpoint-{n}.log"))
            return self.current.popen

        host = "0.0.0.0" if self.stack.lab is not None else "127.0.0.1"
        Endpoint(
            address=f"{host}:{self.grpc_port}",
            metrics_port=self.metrics_ports[n - 1],
            readiness="metrics",
            place=self.stack.cloud,
            spawn=spawn,
            **self.options,
        ).start()
        self.stack.event("endpoint ready", incarnation=n, pid=self.current.pid)

    def stop(self) -> None:
        """SIGTERM; while it drains and lingers, keep its last ``/metrics`` (its final counts)."""
        proc = self.current
        port = self.metrics_ports[len(self.incarnations) - 1]
        proc.popen.send_signal(signal.SIGTERM)
        self.stack.event("endpoint SIGTERM", incarnation=len(self.incarnations))
        last = ""
        while proc.popen.poll() is None:
            status, body = self.stack.get(f"http://127.0.0.1:{port}/metrics")
            if status == 200:
                last = body
            time.sleep(0.1)
        proc.stopped_s = self.stack.now()
        self.final_metrics.append(last)
        self.stack.event("endpoint exited", incarnation=len(self.incarnations), code=proc.popen.returncode)


def _counts_from_exposition(text: str) -> dict[str, int]:
    """``splitserve_requests_total`` of one /metrics text, summed by ``split/level/status``."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("splitserve_requests_total{"):
            labels = dict(
                kv.split("=", 1)
                for kv in line[line.index("{") + 1 : line.rindex("}")].split(",")
                if "=" in kv
            )
            key = "/".join(labels[k].strip('"') for k in ("split", "level", "status"))
            out[key] += int(float(line.rsplit(" ", 1)[1]))
    return dict(out)


def _query(stack: _Stack, base: str, expr: str) -> list[dict[str, Any]]:
    status, body = stack.get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    if status != 200:
        raise RuntimeError(f"Prometheus query {expr!r} failed ({status}): {body[:300]}")
    return list(json.loads(body)["data"]["result"])


class _Soak:
    """One run's parts in the order :func:`run_soak` uses them: ports, PKI and tokens (made here), then
    Triton, Prometheus, the endpoint and the clients started, driven through the faults, and read back."""

    def __init__(self, stack: _Stack, manifest: Any) -> None:
        cfg, workdir = stack.cfg, stack.workdir
        self.stack, self.cfg, self.workdir, self.manifest = stack, cfg, workdir, manifest
        with stack.cloud():
            self.triton_ports = (free_port(), free_port(), free_port())
            self.grpc_port, prom_port = free_port(), free_port()
            metrics_ports = [free_port(), free_port()]
        self.pki = make_pki(workdir / "pki", ("server",))
        self.tokens = [f"edge-{i}-{uuid.uuid4().hex}" for i in range(cfg.clients)]
        self.tokens.append(f"bad-{uuid.uuid4().hex}")
        (workdir / "tokens").write_text("\n".join(self.tokens) + "\n")
        self.prom_base = f"http://127.0.0.1:{prom_port}"
        self.endpoint = _Endpoint(
            stack,
            self.grpc_port,
            metrics_ports,
            bundles=stack.bundle,
            triton=f"127.0.0.1:{self.triton_ports[0]}",
            tls=self.pki,
            tokens_file=workdir / "tokens",
            grace_s=2,
            extra_args=["--metrics-linger-s", str(3 * cfg.scrape_s)],
        )
        self.clients: list[tuple[_Proc, dict[str, Any]]] = []
        self.start_s = 0.0

    # -- starting -------------------------------------------------------------------------------------

    def start_triton(self) -> list[str]:
        """A stand-alone tritonserver on fixed ports with every model loaded at start; its model names."""
        from splitserve.cloud import LocalTriton

        stack = self.stack
        stack.triton = LocalTriton(
            self.workdir / "triton",
            ports=self.triton_ports,
            load_all=True,
            launcher=stack.exec_prefix("cloud"),
        )
        models = _stage_triton_repository(stack.bundle, stack.triton.repository)
        self.restart_triton()
        return models

    def restart_triton(self) -> None:
        """Start tritonserver (again, on the same ports) and wait until it is ready."""
        stack = self.stack
        stack.triton.start()
        with stack._lock:
            stack.tracked.append(
                _Tracked(f"tritonserver-{len(stack.tracked) + 1}", stack.triton.pid, stack.now())
            )
        ready = f"http://127.0.0.1:{self.triton_ports[1]}/v2/health/ready"
        wait_until(
            "tritonserver ready", lambda: stack.get(ready)[0] == 200, 180, lambda: stack.triton.running
        )
        stack.event("triton ready", pid=stack.triton.pid)

    def start_prometheus(self) -> None:
        """Prometheus scraping both endpoint incarnations (one is down at any time) and Triton."""
        prom_cfg = self.workdir / "prometheus.yml"
        scrape_ms = int(self.cfg.scrape_s * 1000)
        prom_cfg.write_text(
            f"global:\n  scrape_interval: {scrape_ms}ms\n  scrape_timeout: {scrape_ms}ms\n"
            "scrape_configs:\n  - job_name: splitserve\n    static_configs:\n"
            + "".join(
                f"      - targets: ['127.0.0.1:{p}']\n        labels: {{incarnation: '{i + 1}'}}\n"
                for i, p in enumerate(self.endpoint.metrics_ports)
            )
            + f"  - job_name: triton\n    static_configs:\n      - targets: ['127.0.0.1:{self.triton_ports[2]}']\n"
        )
        prom = self.stack.spawn(
            "prometheus",
            [
                _PROMETHEUS,
                f"--config.file={prom_cfg}",
                f"--web.listen-address={self.prom_base.removeprefix('http://')}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            ],
            log="prometheus.log",
        )
        ready = f"{self.prom_base}/-/ready"
        wait_until(
            "prometheus ready", lambda: self.stack.get(ready)[0] == 200, 60, lambda: prom.popen.poll() is None
        )

    def start_clients(self) -> None:
        """The edge client processes (in the edge namespace, each with its own token), until each is ready."""
        manifest, workdir, cfg = self.manifest, self.workdir, self.cfg
        inputs = (
            _photo_inputs(self.stack.bundle, workdir) if tuple(manifest.input_shape) != (1, 28, 28) else None
        )
        fixed = [f"{sp.name}@{lv.level}" for sp in manifest.splits for lv in sp.levels]
        for i in range(cfg.clients):
            policy = ("max_accuracy", fixed[(i // 3) % len(fixed)], "min_latency")[i % 3]
            conf = {
                "endpoint": f"{self.stack.cloud_host}:{self.grpc_port}",
                "bundle": str(self.stack.bundle),
                "ca": str(self.pki.ca),
                "token": self.tokens[i],
                "seed": cfg.seed * 1000 + i,
                "rate_hz": cfg.rate_hz,
                "timeout_s": cfg.timeout_s,
                "mode": "stream" if i % 4 == 1 else "unary",
                "policy": policy,
                "eval_size": int(manifest.extra.eval_size),
                "inputs": str(inputs) if inputs else "",
                "results": str(workdir / f"client-{i}.jsonl"),
            }
            path = workdir / f"client-{i}.json"
            path.write_text(json.dumps(conf))
            proc = self.stack.spawn(
                f"client-{i}",
                [sys.executable, "-m", "splitserve.benchmarks.soak", "client", str(path)],
                side="edge",
                log=f"client-{i}.log",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.clients.append((proc, conf))
        for proc, _ in self.clients:
            line = proc.popen.stdout.readline() if proc.popen.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"{proc.role} did not start (see {workdir / (proc.role + '.log')})")

    # -- driving --------------------------------------------------------------------------------------

    def drive(self, log: Callable[[str], None]) -> dict[str, Any]:
        """Sampler and trace on, clients go, the three faults at their times, clients and endpoint stopped.

        Returns:
            the report's ``trace`` (when shaped).
        """
        stack, cfg = self.stack, self.cfg
        stack.start_sampler()
        report: dict[str, Any] = {}
        if stack.lab is not None:
            from splitserve.orchestrator.traces import step_trace

            from .netlab import TraceFollower

            steps = math.ceil(cfg.duration_s / cfg.hold_s) + 2
            levels = tuple(_TRACE_BPS[k % len(_TRACE_BPS)] for k in range(steps))
            stack.follower = TraceFollower(
                stack.lab, step_trace(levels_bps=levels, hold_s=cfg.hold_s)
            ).__enter__()
            report["trace"] = {"levels_bps": list(_TRACE_BPS), "hold_s": cfg.hold_s}
        self.start_s = time.monotonic()
        for proc, _ in self.clients:
            assert proc.popen.stdin is not None
            proc.popen.stdin.write("go\n")
            proc.popen.stdin.flush()
        stack.event("clients go", clients=cfg.clients)
        log(
            f"soak: {cfg.clients} clients running for {cfg.duration_s:.0f} s (shaped: {stack.lab is not None})"
        )
        self.kill_triton(log)
        self.bad_burst()
        self.at(cfg.endpoint_restart_at)  # fault 3: drain, linger, a new process on the same gRPC port
        self.endpoint.stop()
        self.endpoint.start()
        log(f"soak: endpoint restarted at {stack.now():.0f} s")
        self.at(1.0)
        self.stop_clients()
        if stack.follower is not None:
            stack.follower.__exit__(None, None, None)
            stack.follower = None
            report["trace"]["tc_commands"] = stack.lab.commands
        self.endpoint.stop()
        return report

    def at(self, fraction: float) -> None:
        """Sleep until ``fraction`` of the run has passed."""
        time.sleep(max(self.start_s + fraction * self.cfg.duration_s - time.monotonic(), 0.0))

    def kill_triton(self, log: Callable[[str], None]) -> None:
        """Fault 1: Triton SIGKILLed, restarted on the same ports."""
        stack = self.stack
        self.at(self.cfg.triton_kill_at)
        killed = stack.triton.pid
        os.kill(killed, signal.SIGKILL)
        stack.tracked[-1].stopped_s = stack.now()
        stack.event("triton SIGKILL", pid=killed)
        stack.triton.stop()  # reaps it, kills its orphaned python-backend stubs
        time.sleep(self.cfg.triton_down_s)
        self.restart_triton()
        log(f"soak: triton killed and restarted at {stack.now():.0f} s")

    def bad_burst(self) -> None:
        """Fault 2: the bad client's burst (from the cloud side, unshaped: the oversized request is 4 MiB)."""
        stack, workdir = self.stack, self.workdir
        self.at(self.cfg.burst_at)
        bad_conf = workdir / "bad.json"
        bad_conf.write_text(
            json.dumps(
                {
                    "endpoint": f"127.0.0.1:{self.grpc_port}",
                    "bundle": str(stack.bundle),
                    "ca": str(self.pki.ca),
                    "token": self.tokens[-1],
                    "repeats": self.cfg.burst_repeats,
                    "max_message_bytes": 4 * 1024 * 1024,
                    "out": str(workdir / "bad.out.json"),
                }
            )
        )
        stack.event("bad burst")
        bad = stack.spawn(
            "bad-client",
            [sys.executable, "-m", "splitserve.benchmarks.soak", "bad", str(bad_conf)],
            log="bad-client.log",
        )
        if bad.popen.wait(300) != 0:
            raise RuntimeError(f"the bad client failed (see {workdir / 'bad-client.log'})")
        bad.stopped_s = stack.now()
        stack.event("bad burst done")

    def stop_clients(self) -> None:
        """``stop`` to every client, then wait for each to write its summary and exit."""
        for proc, _ in self.clients:
            with contextlib.suppress(OSError, ValueError):
                assert proc.popen.stdin is not None
                proc.popen.stdin.write("stop\n")
                proc.popen.stdin.close()
        for proc, _ in self.clients:
            try:
                proc.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.stack.event("client did not stop", role=proc.role)
            proc.stopped_s = self.stack.now()
        self.stack.event("clients stopped")

    # -- reading back ---------------------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        """What Prometheus, the endpoint's last /metrics and every client recorded."""
        return {
            "prometheus": self.prometheus(),
            "endpoint_final_metrics": [_counts_from_exposition(t) for t in self.endpoint.final_metrics],
            "clients": [
                _read_client(Path(conf["results"])) | {"mode": conf["mode"], "policy": conf["policy"]}
                for _, conf in self.clients
            ],
            "bad_client": json.loads((self.workdir / "bad.out.json").read_text()),
        }

    def prometheus(self) -> dict[str, Any]:
        """Request counts per incarnation, the endpoint's and Triton's ``up``, Triton's successes."""
        span = f"{int(self.stack.now()) + 60}s"

        def query(expr: str) -> list[dict[str, Any]]:
            return _query(self.stack, self.prom_base, expr)

        counts = query(
            f"sum by (incarnation, split, level, status) (last_over_time(splitserve_requests_total[{span}]))"
        )
        return {
            "by_incarnation": {
                r["metric"].get("incarnation", "?")
                + ":"
                + "/".join(r["metric"].get(k, "") for k in ("split", "level", "status")): int(
                    float(r["value"][1])
                )
                for r in counts
            },
            "endpoint_up": {
                r["metric"]["incarnation"]: float(r["value"][1])
                for r in query(f'max_over_time(up{{job="splitserve"}}[{span}])')
            },
            "triton_up_min_max": [
                float(query(f'{f}_over_time(up{{job="triton"}}[{span}])')[0]["value"][1])
                for f in ("min", "max")
            ],
            "triton_success": sum(
                float(r["value"][1]) for r in query(f"last_over_time(nv_inference_request_success[{span}])")
            ),
        }


@contextlib.contextmanager
def _marked(run_id: str) -> Iterator[None]:
    """This process's environment carries the run's mark for the body: every child inherits it (tritonserver,
    started by ``LocalTriton``, and its stubs too), so :meth:`_Stack.survivors` finds what outlived the run."""
    old = os.environ.get(_MARK)
    os.environ[_MARK] = run_id
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_MARK, None)
        else:
            os.environ[_MARK] = old


def run_soak(
    cfg: SoakConfig, bundle_path: Path, workdir: Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Start the stack, drive it with clients and faults for ``cfg.duration_s``, stop it; return the report.

    Raises:
        RuntimeError: a part of the stack did not start.
    """
    from .netlab import Netlab, unavailable_reason

    workdir.mkdir(parents=True, exist_ok=True)
    reason = unavailable_reason()
    shaped = cfg.shaped if cfg.shaped is not None else reason is None
    if shaped and reason is not None:
        raise RuntimeError(f"a shaped run needs the network lab: {reason}")
    if not Path(_PROMETHEUS).is_file():
        raise RuntimeError(f"{_PROMETHEUS} is missing: apt-get install -y prometheus")
    with contextlib.closing(Bundle.open(bundle_path)) as bundle:
        manifest = bundle.manifest
    stack = _Stack(cfg, bundle_path, workdir)
    report: dict[str, Any] = {"shaped": shaped, "unshaped_reason": None if shaped else reason}
    with _marked(stack.run_id):
        try:
            if shaped:
                stack.lab = Netlab(rate_bps=_TRACE_BPS[0], tag="ssk").__enter__()
            soak = _Soak(stack, manifest)
            report["triton_models"] = soak.start_triton()
            soak.start_prometheus()
            soak.endpoint.start()
            soak.start_clients()
            report |= soak.drive(log)
            report |= soak.collect()
        finally:
            stack.close()
    time.sleep(0.5)
    report["survivors"] = stack.survivors()
    report["events"] = stack.events
    report["processes"] = [
        {
            "role": p.role,
            "pid": p.pid,
            "started_s": p.started_s,
            "stopped_s": p.stopped_s,
            "exit_code": p.popen.returncode if isinstance(p, _Proc) else None,
            "rss_mb": p.rss,
        }
        for p in [*stack.procs, *stack.tracked]
    ]
    report["manifest"] = _manifest_accuracy(manifest)
    return report


def _read_client(path: Path) -> dict[str, Any]:
    results, errors, summary = [], [], None
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if "summary" in row:
            summary = row["summary"]
        elif "error" in row:
            errors.append(row)
        else:
            results.append(row)
    return {"results": results, "errors": errors, "summary": summary}


def _manifest_accuracy(manifest: Any) -> dict[str, float]:
    acc = {f"{s.name}@{lv.level}": lv.accuracy for s in manifest.splits for lv in s.levels}
    acc["offload"] = manifest.offload.level(0).accuracy
    acc["local"] = manifest.local.accuracy
    return acc


# ---------------------------------------------------------------------------------------------------
# figures and checks
# ---------------------------------------------------------------------------------------------------


def summarize(cfg: SoakConfig, report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run (``results/soak.json``) from :func:`run_soak`'s report."""
    clients = report["clients"]
    all_results = [r for c in clients for r in c["results"]]
    client_counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for c in clients:
        for key, outcomes in ((c["summary"] or {}).get("counts") or {}).items():
            client_counts[key].update(outcomes)
    server: Counter[str] = Counter()  # split/level/status -> the endpoint's count, over its incarnations
    for key, n in report["prometheus"]["by_incarnation"].items():
        server[key.split(":", 1)[1]] += n
    places = Counter(r["computed"] for r in all_results)
    return {
        "minutes": round(cfg.duration_s / 60, 2),
        "clients": cfg.clients,
        **_delivery(clients),
        "places": dict(places),
        "by_option": _by_option(all_results, report["manifest"]),
        **_errors(report["bad_client"], client_counts, server),
        **_latency(clients, places),
        "memory": _memory(report["processes"]),
        "first_cloud_result_after_s": _recovery(report["events"], all_results),
        "by_policy": {
            pol: dict(Counter(r["computed"] for c in clients if c["policy"] == pol for r in c["results"]))
            for pol in sorted({c["policy"] for c in clients})
        },
        "accounting": _accounting(client_counts, server),
        **_bad_client(report["bad_client"]),
        "prometheus_vs_final_metrics": _prometheus_vs_final(report),
        "prometheus": {k: v for k, v in report["prometheus"].items() if k != "by_incarnation"},
        "shaped": report["shaped"],
        "unshaped_reason": report["unshaped_reason"],
        "trace": report.get("trace"),
        "events": report["events"],
        "survivors": report["survivors"],
        "config": asdict(cfg),
    }


def _delivery(clients: list[dict[str, Any]]) -> dict[str, Any]:
    """Inputs issued, answered, lost (a client without a summary lost what it did not report) and
    answered twice; the first client errors."""
    issued = sum((c["summary"] or {}).get("issued", 0) for c in clients)
    seen = Counter((ci, r["i"]) for ci, c in enumerate(clients) for r in c["results"])
    return {
        "requests": issued,
        "results": len(seen),
        "lost": issued - len(seen) + sum(1 for c in clients if c["summary"] is None),
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "client_errors": [e for c in clients for e in c["errors"]][:20],
    }


def _by_option(results: list[dict[str, Any]], manifest: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Observed accuracy per option against the manifest's, within ``4 sigma + 0.01``."""
    by_option: dict[str, dict[str, Any]] = {}
    for r in results:
        option = r["computed"] if r["computed"] in ("local", "offload") else f"{r['split']}@{r['level']}"
        o = by_option.setdefault(option, {"n": 0, "correct": 0})
        o["n"] += 1
        o["correct"] += int(r["top1"] == r["label"])
    for option, o in by_option.items():
        p = manifest[option]
        o["accuracy"] = round(o["correct"] / o["n"], 4)
        o["manifest"] = p
        o["tolerance"] = round(_ACCURACY_Z * math.sqrt(p * (1 - p) / o["n"]) + _ACCURACY_SLACK, 4)
        o["ok"] = abs(o["accuracy"] - p) <= o["tolerance"]
    return by_option


def _accounting(client_counts: dict[str, Counter[str]], server: Counter[str]) -> dict[str, dict[str, Any]]:
    """Per split/level: ``client OK <= endpoint OK <= client OK + client indeterminate``."""
    accounting = {}
    for key in sorted(set(client_counts) | {k.rsplit("/", 1)[0] for k in server if k.endswith("/OK")}):
        outcomes = client_counts.get(key, Counter())
        ok = outcomes.get("OK", 0)
        unsure = sum(n for o, n in outcomes.items() if o.startswith("?"))
        a = {
            "client_ok": ok,
            "client_indeterminate": unsure,
            "endpoint_ok": server.get(f"{key}/OK", 0),
            "client_errors": {o: n for o, n in outcomes.items() if o != "OK"},
        }
        a["ok"] = ok <= a["endpoint_ok"] <= ok + unsure
        accounting[key] = a
    return accounting


def _errors(
    bad: dict[str, Any], client_counts: dict[str, Counter[str]], server: Counter[str]
) -> dict[str, Any]:
    """Error statuses as the edge clients, the bad client and the endpoint (Prometheus) counted them."""
    endpoint_by_status: Counter[str] = Counter()
    for key, n in server.items():
        endpoint_by_status[key.rsplit("/", 1)[1]] += n
    valid_errors: Counter[str] = Counter()
    for outcomes in client_counts.values():
        for outcome, n in outcomes.items():
            if outcome != "OK":
                valid_errors[outcome.lstrip("?")] += n
    return {
        "errors_by_status": {
            "edge_clients": dict(valid_errors),
            "bad_client": dict(Counter(status for _, status in bad["got"])),
            "endpoint_prometheus": {s: n for s, n in endpoint_by_status.items() if s != "OK"},
        }
    }


def _bad_client(bad: dict[str, Any]) -> dict[str, Any]:
    """The bad client's wrong statuses, and what it caused that the endpoint must have counted."""
    expected = {c["name"]: c for c in bad["cases"]}
    wrong = [
        f"{name}: got {status}, expected {expected[name]['expect']}"
        for name, status in bad["got"]
        if status != expected[name]["expect"]
    ]
    counted = Counter(expected[name]["expect"] for name, _ in bad["got"] if expected[name]["counted"])
    return {"bad_client_wrong": wrong, "bad_counted_expected": dict(counted)}


def _prometheus_vs_final(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per incarnation: Prometheus's last counts against the endpoint's own last /metrics."""
    out = {}
    for i, final in enumerate(report["endpoint_final_metrics"]):
        scraped = {
            k.split(":", 1)[1]: n
            for k, n in report["prometheus"]["by_incarnation"].items()
            if k.startswith(f"{i + 1}:")
        }
        out[str(i + 1)] = {"equal": scraped == final, "prometheus": scraped, "endpoint": final}
    return out


def _latency(clients: list[dict[str, Any]], places: Counter[str]) -> dict[str, Any]:
    """p50/p99 of the unary clients' total time, and p50 per place the result was computed."""
    unary = [r for c in clients if c["mode"] == "unary" for r in c["results"]]
    ms = [r["ms"] for r in unary]
    return {
        "p50_ms": _quantile_ms(ms, 0.5),
        "p99_ms": _quantile_ms(ms, 0.99),
        "p50_ms_by_place": {
            place: _quantile_ms([r["ms"] for r in unary if r["computed"] == place], 0.5) for place in places
        },
    }


def _recovery(events: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per restart after the clients started: seconds until the cloud answered again."""
    remote_t = sorted(r["t"] for r in results if r["computed"] != "local")
    recovery = {}
    go = next(i for i, e in enumerate(events) if e["event"] == "clients go")
    for e in events[go:]:
        if e["event"] in ("triton ready", "endpoint ready"):
            after = [t for t in remote_t if t >= e["unix"]]
            label = e["event"].split()[0] + (f" {e['incarnation']}" if "incarnation" in e else "")
            recovery[label] = round(after[0] - e["unix"], 2) if after else None
    return recovery


def _memory(processes: list[dict[str, Any]], warmup_s: float = 20.0) -> dict[str, Any]:
    """RSS (MB) of every process at its start (the first sample ``warmup_s`` into its life, when it has
    served for a while) and its end (the last sample), and the growth between them."""
    out: dict[str, Any] = {}
    for p in processes:
        if p["role"] == "prometheus" or not p["rss_mb"]:
            continue
        warm = [s for s in p["rss_mb"] if s[0] >= p["started_s"] + warmup_s]
        first, last = (warm or p["rss_mb"])[0], p["rss_mb"][-1]
        out[p["role"]] = {
            "pid": p["pid"],
            "start_mb": first[1],
            "end_mb": last[1],
            "start_with_children_mb": first[2],
            "end_with_children_mb": last[2],
            "span_s": [first[0], last[0]],
            "growth": round(last[1] / first[1] - 1, 4),
        }
    endpoints = [k for k in out if k.startswith("endpoint-")]
    if endpoints:  # the last incarnation serves from the restart to the end: the longest life
        out["endpoint_growth"] = out[max(endpoints)]["growth"]
    return out


def check(summary: dict[str, Any]) -> list[str]:
    """What is wrong with a run (empty when every check passed)."""
    problems = []
    if summary["lost"] or summary["duplicates"]:
        problems.append(
            f"{summary['lost']} inputs lost, {summary['duplicates']} answered twice "
            f"({summary['client_errors'][:3]})"
        )
    if summary["requests"] == 0:
        problems.append("no input was sent")
    for option, o in summary["by_option"].items():
        if not o["ok"]:
            problems.append(
                f"{option}: accuracy {o['accuracy']} on {o['n']} outside manifest {o['manifest']} "
                f"+- {o['tolerance']}"
            )
    for key, a in summary["accounting"].items():
        if not a["ok"]:
            problems.append(
                f"{key}: endpoint counted {a['endpoint_ok']} OK, clients {a['client_ok']} "
                f"(+{a['client_indeterminate']} indeterminate)"
            )
    problems += [f"bad client: {w}" for w in summary["bad_client_wrong"]]
    endpoint_errors = summary["errors_by_status"]["endpoint_prometheus"]
    for status, n in summary["bad_counted_expected"].items():
        if endpoint_errors.get(status, 0) != n:
            problems.append(
                f"endpoint counted {endpoint_errors.get(status, 0)} {status}, the bad client caused {n}"
            )
    for inc, cmp in summary["prometheus_vs_final_metrics"].items():
        if not cmp["equal"]:
            problems.append(
                f"endpoint {inc}: Prometheus {cmp['prometheus']} != final /metrics {cmp['endpoint']}"
            )
    if summary["survivors"]:
        problems.append(f"processes left behind: {summary['survivors']}")
    return problems


def run(out_dir: Path, bundle: Path, minutes: float, clients: int, **overrides: Any) -> dict[str, Any]:
    """``splitserve bench soak``: a long run; writes ``<out_dir>/soak.json`` and returns its figures."""
    import tempfile

    duration = minutes * 60
    cfg = SoakConfig(
        duration_s=duration,
        clients=clients,
        hold_s=min(20.0, max(duration / 10, 5.0)),
        burst_repeats=20,
        memory_every_s=10.0,
        triton_kill_at=0.08,
        burst_at=0.12,
        endpoint_restart_at=0.16,
        **overrides,
    )
    with tempfile.TemporaryDirectory(prefix="splitserve-soak-") as tmp:
        summary = summarize(cfg, run_soak(cfg, bundle, Path(tmp)))
    summary["problems"] = check(summary)
    growth = summary["memory"].get("endpoint_growth")
    summary["targets"] = {
        "zero_lost": summary["lost"] == 0,
        "endpoint_memory_growth_below_10pct": growth is not None and growth < 0.10,
    }
    summary["command"] = f"splitserve bench soak --minutes {minutes:g} --clients {clients}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Helper processes of the soak (not meant to be run by hand)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["client"] and len(args) == 2:
        _client_main(args[1])
    elif args[:1] == ["bad"] and len(args) == 2:
        _bad_main(args[1])
    else:
        raise SystemExit("usage: python -m splitserve.benchmarks.soak client|bad CONFIG.json")


if __name__ == "__main__":
    main()
