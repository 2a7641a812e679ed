"""The edge client: run the head on the device, send the bitstream, get the class; never lose an input.

::

    infer(image)
      policy.decide(deadline)  ──> local ──────────────────────────────> whole model on the device
                               ──> split:   preprocess -> head -> entropy-encode ─┐
                               ──> offload: preprocess -> PNG ───────────────────┤
      circuit breaker open? ──> local                                             │
      gRPC Infer / InferStream (deadline; UNAVAILABLE retried by the channel) <───┘
        reply ──> Result(computed="split"|"offload")
        failure or deadline ──> local fallback ──> Result(computed="local", fallback_reason=...)
      policy.observe(device time, bytes, round trip, server timings)
      every remeasure_s: device times of every option measured again (background) ──> policy

Every input gets exactly one :class:`Result`, which says where it was computed. The remote part of a
request gets the deadline less the time a local run needs, so that a fallback still fits in it.
:meth:`EdgeClient.stream` pipelines requests over one bidirectional stream (``max_inflight`` in flight)
and yields results in input order; when the stream breaks, the requests in flight fall back to the
device and the next remote request opens a new stream.

:class:`BaseEdgeClient` holds everything but I/O (bundle, runtime, policy, breaker, building requests
and results); :class:`EdgeClient` and :class:`AsyncEdgeClient` add the transport calls and differ only
in ``await`` (``close`` / ``aclose``). On the asyncio client, device work (preprocess, head, local
model) runs on one worker thread so that the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.core.codec import CODEC_NAME
from splitserve.core.wire import top_k
from splitserve.core.errors import (
    ClientClosedError,
    ConfigError,
    DeadlineExceededError,
    ProtocolError,
    SplitServeError,
    UnavailableError,
)
from splitserve.orchestrator import (
    DeviceLatency,
    Observation,
    Option,
    Orchestrator,
    ProbeResult,
    ServerTimings,
    SplitDecision,
    options_from_manifest,
)
from splitserve.orchestrator.types import LOCAL_ID, OptionKind
from splitserve.protos.v1 import inference_pb2 as pb

from ._breaker import CircuitBreaker
from ._config import Credentials, EdgeConfig
from ._policy import EdgePolicy, PolicyLike, plan_policy
from ._runtime import EdgeRuntime, ImageLike
from ._transports.base import (
    AsyncBaseTransport,
    AsyncStreamCall,
    BaseTransport,
    ServerLoad,
    StreamCall,
    item_error,
)
from ._transports.grpc import AsyncGrpcTransport, GrpcTransport

__all__ = ["AsyncEdgeClient", "BaseEdgeClient", "EdgeClient", "Result", "Timings"]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

# gRPC puts a 5-byte prefix (compressed flag + length) before every message.
# Below this much time left, a remote round trip is not attempted.
_MIN_REMOTE_S = 1e-3
# How long closing a stream waits for the endpoint to finish it before cancelling.
_STREAM_CLOSE_S = 2.0
# Timed calls per option of a periodic re-measurement (the start-up one takes 10).
_REMEASURE_REPEATS = 3


@dataclass(frozen=True)
class Timings:
    """Where the time of one request went, in ms (``None``: the stage did not happen).

    Attributes:
        preprocess_ms: input to the model's uint8 tensor.
        head_ms: the head on the device (split).
        encode_ms: entropy coding (split) or PNG encoding (offload).
        rtt_ms: from sending the request to its reply (network plus the endpoint's total).
        server_receive_ms: the endpoint reading the request (``None`` for a compact reply without full
            timings: see ``EdgeConfig.timings_every``).
        server_decode_ms: the endpoint decoding the payload (``None`` likewise).
        server_queue_ms: waiting for the tail.
        server_tail_ms: the tail (``None`` likewise).
        server_total_ms: the endpoint's total.
        local_ms: the whole model on the device (local, or a fallback).
        total_ms: from the call to the result.
    """

    preprocess_ms: float = 0.0
    head_ms: float = 0.0
    encode_ms: float = 0.0
    rtt_ms: float | None = None
    server_receive_ms: float | None = None
    server_decode_ms: float | None = None
    server_queue_ms: float | None = None
    server_tail_ms: float | None = None
    server_total_ms: float | None = None
    local_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def device_ms(self) -> float:
        """Time spent computing on the device."""
        return self.preprocess_ms + self.head_ms + self.encode_ms + self.local_ms


@dataclass(frozen=True)
class Result:
    """The answer for one input.

    Attributes:
        request_id: the id sent on the wire (also for local results).
        classes: top-k class indexes, most likely first.
        scores: their softmax probabilities.
        labels: their class names from the bundle.
        computed: where the answer was computed: ``"split"`` (head here, tail in the cloud),
            ``"offload"`` (all in the cloud) or ``"local"`` (all on the device).
        split: the split whose tail answered (``"input"`` for offload; ``None`` for local).
        level: the rate level sent (``None`` unless ``computed == "split"``).
        bytes_sent: TCP payload bytes the request put on the wire: the message with its gRPC and HTTP/2
            framing (``splitserve.core.wire``, checked against the kernel's counters by ``bench wire``),
            also for a request that failed and fell back; 0 when nothing was sent.
        payload_bytes: of which the bitstream or PNG.
        timings: time per stage.
        chosen: the option the policy chose (``"local"``, ``"offload"``, ``"SPLIT@LEVEL"``).
        fallback_reason: why the chosen remote option was answered locally instead (``None`` if it
            was not).
        model: the model name.
        version: the model version.
    """

    request_id: str
    classes: tuple[int, ...]
    scores: tuple[float, ...]
    labels: tuple[str, ...]
    computed: OptionKind
    split: str | None
    level: int | None
    bytes_sent: int
    payload_bytes: int
    timings: Timings
    chosen: str
    fallback_reason: str | None
    model: str
    version: str

    @property
    def top1(self) -> int:
        return self.classes[0]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def remote(self) -> bool:
        """The answer came from the endpoint."""
        return self.computed != "local"


@dataclass
class _Job:
    """One input on its way through the client."""

    request_id: str
    x: np.ndarray
    start: float
    deadline: float
    decision: SplitDecision
    request: pb.InferRequest | None = None
    preprocess_ms: float = 0.0
    head_ms: float = 0.0
    encode_ms: float = 0.0
    payload_bytes: int = 0
    bytes_sent: int = 0
    sent: float = 0.0
    result: Result | None = None

    @property
    def device_ms(self) -> float:
        return self.preprocess_ms + self.head_ms + self.encode_ms


@dataclass
class _Probe:
    """A background link probe the orchestrator asked for (a ping, or a real request of ~n bytes)."""

    x: np.ndarray | None
    option: Option | None = None
    request: pb.InferRequest | None = None
    wire_bytes: int = 0


def _known(ms: float) -> float | None:
    """A server stage time, or ``None`` where the reply did not carry it (NaN from the compact wire)."""
    return None if math.isnan(ms) else ms


class _State(enum.Enum):
    OPEN = 1
    CLOSED = 2


class BaseEdgeClient:
    """Configuration, device runtime, policy and the I/O-free steps of a request.

    Args:
        bundle: the model bundle (a path is opened and verified here, and closed with the client).
        endpoint: ``HOST:PORT`` of the cloud endpoint (default ``config.endpoint``); may stay empty only
            when the policy never leaves the device.
        credentials: token and TLS settings (default: from ``config``).
        policy: an orchestrator (or any :class:`EdgePolicy`), a :class:`FixedPolicy`, or a string
            (``"local"``, ``"offload"``, ``"SPLIT@LEVEL"``, an orchestrator policy name); default
            ``config.policy``.
        config: settings (default: ``EdgeConfig()``; see ``EdgeConfig.from_env``).

    Raises:
        BundleError: the bundle is missing, damaged, or lacks a model the client needs.
        ConfigError: an unknown policy or option, or a remote policy without an endpoint.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        endpoint: str | None = None,
        *,
        credentials: Credentials | None = None,
        policy: PolicyLike | None = None,
        config: EdgeConfig | None = None,
    ) -> None:
        self.config = config or EdgeConfig()
        self.endpoint = endpoint or self.config.endpoint
        self._owns_bundle = not isinstance(bundle, Bundle)
        self.bundle = Bundle.open(bundle) if not isinstance(bundle, Bundle) else bundle
        try:
            self._setup(policy if policy is not None else self.config.policy, credentials)
        except BaseException:
            if self._owns_bundle:
                self.bundle.close()
            raise

    def _setup(self, policy: PolicyLike, credentials: Credentials | None) -> None:
        manifest = self.bundle.manifest
        planned = plan_policy(policy, manifest)
        options: tuple[Option, ...] = (
            options_from_manifest(manifest) if isinstance(planned, str) else tuple(planned.options)
        )
        self.runtime = EdgeRuntime(
            self.bundle,
            [o.split for o in options if o.kind == "split" and o.split is not None],
            precision=self.config.precision,
            threads=self.config.ort_threads,
            slowdown=self.config.device_slowdown,
            offload=[o.level or 0 for o in options if o.kind == "offload"],
        )
        self._policy_lock = threading.Lock()
        latency = self.runtime.measure()
        if isinstance(planned, str):
            # rated by what this device runs: precision="auto" may have kept an fp32 head
            options = options_from_manifest(manifest, self.runtime.precisions)
            self.policy: EdgePolicy = Orchestrator(
                options, latency, policy=planned, accuracy_floor=self.config.accuracy_floor
            )
        else:
            self.policy = planned
        self.use_device_latency(latency)
        self._measured_at = time.monotonic()
        self._measurer: concurrent.futures.ThreadPoolExecutor | None = None
        self._measure_busy = threading.Lock()
        self._option_ids = {o.id for o in options}
        remote = [o for o in options if o.remote]
        self._probe_option: Option | None = min(remote, key=lambda o: o.payload_bytes) if remote else None
        self._remote_by_id = {o.id: o for o in remote}
        self.credentials = credentials or Credentials.from_config(self.config)
        self.breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_reset_s)
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:8]
        self._state = _State.OPEN
        self._classes = manifest.classes
        self._remote_options = bool(remote)

    def use_device_latency(self, latency: DeviceLatency) -> None:
        """Plan with these device times: hand them to the policy, size the local-fallback reserve.

        The client calls this with its start-up measurement and every ``remeasure_s`` after; a
        harness that stands this device in for a slower one calls it with the slower device's times.
        """
        with self._policy_lock:
            update = getattr(self.policy, "update_device", None)
            if callable(update):
                update(latency)
            self.device_latency: DeviceLatency = latency
            # The remote part of a request leaves this much of the deadline for a local run.
            self._local_reserve_s = (1.5 * latency.local_ms + 0.5) / 1e3

    def _schedule_remeasure(self) -> None:
        """Start a background re-measurement of the device times when one is due."""
        every = self.config.remeasure_s
        if not every or time.monotonic() - self._measured_at < every:
            return
        if not self._measure_busy.acquire(blocking=False):
            return
        if self._measurer is None:
            self._measurer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="splitserve-edge-measure"
            )
        try:
            self._measurer.submit(self._remeasure)
        except RuntimeError:  # closed meanwhile
            self._measure_busy.release()

    def _remeasure(self) -> None:
        try:
            self.use_device_latency(self.runtime.measure(repeats=_REMEASURE_REPEATS))
        except Exception:  # noqa: BLE001 - a measurement must never take the client down
            _LOG.exception("device re-measurement failed")
        finally:
            self._measured_at = time.monotonic()
            self._measure_busy.release()

    def _stop_measurer(self) -> None:
        if self._measurer is not None:
            self._measurer.shutdown(wait=True)

    def _default_endpoint(self) -> str:
        """The endpoint a default transport connects to.

        Raises:
            ConfigError: none is set.
        """
        if not self.endpoint:
            raise ConfigError(
                "the policy can send requests but no endpoint is set: pass endpoint= (or a transport), set "
                "SPLITSERVE_EDGE_ENDPOINT, or pin policy='local'"
            )
        return self.endpoint

    # -- request steps (no I/O) ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("the client is closed")

    def _start(self, image: ImageLike, timeout_s: float | None) -> _Job:
        """Preprocess ``image``, then ask the policy (which sees the deadline) what to run.

        The input is checked before the policy is asked, so a bad input leaves no decision behind.

        Raises:
            RequestError: the input does not fit the model.
        """
        self._check_open()
        budget_s = self.config.timeout_s if timeout_s is None else timeout_s
        if not budget_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {budget_s}")
        start = time.perf_counter()
        x = self.runtime.to_input(image)
        preprocess_ms = (time.perf_counter() - start) * 1e3
        remote_ms = budget_s * 1e3 - preprocess_ms - self._local_reserve_s * 1e3  # as _prepare grants
        with self._policy_lock:
            decision = self.policy.decide(deadline_ms=budget_s * 1e3, remote_budget_ms=remote_ms)
        job_id = f"{self._id_prefix}-{next(self._ids)}"
        return _Job(job_id, x, start, start + budget_s, decision, preprocess_ms=preprocess_ms)

    def _begin(self, image: ImageLike, timeout_s: float | None) -> _Job:
        """All device work before sending (:meth:`_start`, then :meth:`_prepare`)."""
        job = self._start(image, timeout_s)
        self._prepare(job)
        self._schedule_remeasure()
        return job

    def _prepare(self, job: _Job) -> None:
        """Device work before sending: the local model, or head + coding + request.

        Sets ``job.result`` when the job is answered without the endpoint.
        """
        x = job.x
        d = job.decision
        if d.kind == "local":
            job.result = self._local(job, None)
            return
        if not self.breaker.allow():
            job.result = self._fail(
                job, UnavailableError("circuit breaker open: endpoint failing"), waited_ms=0.0
            )
            return
        job.request, job.head_ms, job.encode_ms = self._build(job.request_id, d, x)
        budget_s = job.deadline - time.perf_counter() - self._local_reserve_s
        if budget_s < _MIN_REMOTE_S:
            job.result = self._fail(
                job,
                DeadlineExceededError("no time left in the deadline for a remote round trip"),
                waited_ms=0.0,
            )
            return
        job.request.deadline_ms = max(int(budget_s * 1e3), 1)
        job.payload_bytes = len(job.request.tensor.data)

    def _sending(self, job: _Job, *, stream: bool) -> None:
        """``job`` goes on the wire now: note when, and the bytes it costs there (framing included)."""
        assert self.transport is not None and job.request is not None
        job.bytes_sent = self.transport.request_bytes(job.request, stream=stream)
        job.sent = time.perf_counter()

    def _build(
        self, request_id: str, d: SplitDecision, x: np.ndarray
    ) -> tuple[pb.InferRequest, float, float]:
        """The request for decision ``d`` on input ``x``, with head and encoding times (ms)."""
        m = self.bundle.manifest
        t0 = time.perf_counter()
        if d.kind == "offload":
            level = d.level or 0
            image_codec, payload = self.runtime.offload_image(x, level)
            tensor = pb.CompressedTensor(codec=image_codec, codec_version=1, shape=x.shape, data=payload)
            head_ms, t1 = 0.0, t0
            split = OFFLOAD_SPLIT
        else:
            assert d.split is not None and d.level is not None
            y = self.runtime.head(d.split, x)
            t1 = time.perf_counter()
            data, crc = self.runtime.encode(d.split, d.level, y)
            tensor = pb.CompressedTensor(
                codec=CODEC_NAME,
                codec_version=self.runtime.tables[(d.split, d.level)].codec_version,
                shape=y.shape,
                data=data,
                symbols_crc32=crc,
            )
            head_ms = (t1 - t0) * 1e3
            split, level = d.split, d.level
        request = pb.InferRequest(
            request_id=request_id,
            model=m.name,
            version=m.version,
            split=split,
            level=level,
            tensor=tensor,
            top_k=self.config.top_k,
        )
        return request, head_ms, (time.perf_counter() - t1) * 1e3

    def _remote_wait_s(self, job: _Job) -> float:
        """How long to wait for the reply of ``job`` before falling back.

        Until the deadline less the local run's reserve, and with ``config.give_up_factor`` (and a
        fallback to give up to) no longer than that many times the latency the policy expected, but
        at least ``config.give_up_min_s``.
        """
        cfg = self.config
        until = job.deadline - self._local_reserve_s
        expected_ms = job.decision.expected_latency_ms
        if cfg.fallback and cfg.give_up_factor and expected_ms > 0:
            until = min(until, job.start + max(cfg.give_up_factor * expected_ms / 1e3, cfg.give_up_min_s))
        return max(until - time.perf_counter(), 0.0)

    def _reply(self, job: _Job, reply: pb.InferResponse, arrived: float) -> Result:
        """The result of a reply (or the fallback, when the reply carries an item error)."""
        rtt_ms = (arrived - job.sent) * 1e3
        error = item_error(reply)
        if error is not None:
            return self._fail(job, error, waited_ms=rtt_ms)
        d = job.decision
        t = reply.timings
        decode_ms, tail_ms = _known(t.decode_ms), _known(t.tail_ms)
        self.breaker.record_success()
        self._observe(
            Observation(
                d.option_id,
                job.device_ms,
                job.payload_bytes,
                job.bytes_sent,
                rtt_ms,
                ServerTimings(
                    decode_ms or 0.0,
                    t.queue_ms,
                    tail_ms if tail_ms is not None else max(t.total_ms - t.queue_ms, 0.0),
                    t.total_ms,
                    t.queue_delay_ms,
                ),
            )
        )
        classes = tuple(int(c) for c in reply.classes)
        return Result(
            request_id=job.request_id,
            classes=classes,
            scores=tuple(float(s) for s in reply.scores),
            labels=tuple(self._label(c) for c in classes),
            computed=d.kind,
            split=job.request.split if job.request is not None else None,
            level=d.level if d.kind == "split" else None,
            bytes_sent=job.bytes_sent,
            payload_bytes=job.payload_bytes,
            timings=Timings(
                preprocess_ms=job.preprocess_ms,
                head_ms=job.head_ms,
                encode_ms=job.encode_ms,
                rtt_ms=rtt_ms,
                server_receive_ms=_known(t.receive_ms),
                server_decode_ms=decode_ms,
                server_queue_ms=t.queue_ms,
                server_tail_ms=tail_ms,
                server_total_ms=t.total_ms,
                total_ms=(time.perf_counter() - job.start) * 1e3,
            ),
            chosen=d.option_id,
            fallback_reason=None,
            model=reply.model or self.bundle.manifest.name,
            version=reply.version or self.bundle.manifest.version,
        )

    def _fail(self, job: _Job, error: SplitServeError, *, waited_ms: float) -> Result:
        """A remote attempt failed (or was not made): tell the policy and the breaker, answer locally.

        Raises:
            SplitServeError: ``error`` itself, when ``config.fallback`` is off.
        """
        if job.sent:
            self.breaker.record_failure()
        self._observe(
            Observation(
                job.decision.option_id,
                job.device_ms if job.request is not None else 0.0,  # no head ran: nothing to learn about it
                job.payload_bytes,
                job.bytes_sent,
                waited_ms,
                failed=True,
                sent=bool(job.sent),
            )
        )
        if error.request_id is None:
            error.request_id = job.request_id
        if not self.config.fallback:
            raise error
        reason = f"{type(error).__name__}: {error.message}"
        _LOG.debug("request %s answered locally: %s", job.request_id, reason)
        return self._local(job, reason)

    def _local(self, job: _Job, reason: str | None) -> Result:
        """Answer ``job`` with the whole model on the device."""
        t0 = time.perf_counter()
        logits = self.runtime.local(job.x)
        local_ms = (time.perf_counter() - t0) * 1e3
        if LOCAL_ID in self._option_ids:
            self._observe(Observation(LOCAL_ID, job.preprocess_ms + local_ms))
        classes, scores = top_k(logits, self.config.top_k)
        m = self.bundle.manifest
        return Result(
            request_id=job.request_id,
            classes=classes,
            scores=scores,
            labels=tuple(self._label(c) for c in classes),
            computed="local",
            split=None,
            level=None,
            bytes_sent=job.bytes_sent if job.sent else 0,
            payload_bytes=job.payload_bytes if job.sent else 0,
            timings=Timings(
                preprocess_ms=job.preprocess_ms,
                head_ms=job.head_ms,
                encode_ms=job.encode_ms,
                local_ms=local_ms,
                total_ms=(time.perf_counter() - job.start) * 1e3,
            ),
            chosen=job.decision.option_id,
            fallback_reason=reason,
            model=m.name,
            version=m.version,
        )

    def _label(self, c: int) -> str:
        return self._classes[c] if 0 <= c < len(self._classes) else str(c)

    def _observe(self, obs: Observation) -> None:
        with self._policy_lock:
            self.policy.observe(obs)

    # -- probes -------------------------------------------------------------------------------------

    def _probe_for(self, job: _Job) -> _Probe | None:
        """The probe ``job``'s decision asks for, if any (built later, off the request's path)."""
        n = job.decision.probe_bytes
        if n is None or self._probe_option is None:
            return None
        option = self._remote_by_id.get(job.decision.probe_option or "", self._probe_option)
        return _Probe(x=job.x if n > 0 else None, option=option)

    def _build_probe(self, probe: _Probe) -> None:
        """Device work of a sized probe: a real request of the option the policy named (or the smallest)."""
        if probe.x is None or probe.option is None:
            return
        o = probe.option
        d = SplitDecision(o.kind, o.split, o.level, 0.0, o.accuracy, "probe", o.id)
        probe.request = self._build(f"{self._id_prefix}-probe-{next(self._ids)}", d, probe.x)[0]
        assert self.transport is not None
        probe.wire_bytes = self.transport.request_bytes(probe.request, stream=False)

    def _probe_done(
        self,
        probe: _Probe,
        started: float,
        reply: pb.InferResponse | None,
        load: ServerLoad | None,
        failed: bool,
    ) -> None:
        """Hand a probe's outcome to the policy: its network time, and the load the endpoint reported
        (a ping's, or the probe request's reply's queueing)."""
        server_ms = reply.timings.total_ms if reply is not None else 0.0
        rtt_ms = max((time.perf_counter() - started) * 1e3 - server_ms, 0.0)
        if not failed and probe.request is not None:
            self.breaker.record_success()
        queue_ms = load.queue_ms if load is not None else None
        if reply is not None:
            queue_ms = reply.timings.queue_delay_ms
        with self._policy_lock:
            self.policy.observe_probe(ProbeResult(probe.wire_bytes, rtt_ms, failed, queue_ms=None if failed else queue_ms))

    def __repr__(self) -> str:
        m = self.bundle.manifest
        return f"{type(self).__name__}({m.name!r}, version={m.version!r}, endpoint={self.endpoint!r})"


# ---------------------------------------------------------------------------------------------------
# synchronous client
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Ticket:
    """A submitted stream input: answered already, or waiting for its reply."""

    job: _Job
    future: concurrent.futures.Future[tuple[pb.InferResponse, float]] | None = None

    def ready(self) -> bool:
        return self.future is None or self.future.done()


class EdgeClient(BaseEdgeClient):
    """The synchronous edge client. Use as a context manager, or call :meth:`close`.

    Args:
        bundle: see :class:`BaseEdgeClient`.
        endpoint: see :class:`BaseEdgeClient`.
        credentials: see :class:`BaseEdgeClient`.
        policy: see :class:`BaseEdgeClient`.
        config: see :class:`BaseEdgeClient`.
        transport: how to reach the endpoint (default: :class:`GrpcTransport` to ``endpoint``); the
            client closes it.

    Example::

        with EdgeClient("bundle/", "cloud:50051", policy=FixedPolicy(split="layer1", level=0)) as client:
            result = client.infer(image)
            print(result.label, result.computed, result.bytes_sent, result.timings.total_ms)
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        endpoint: str | None = None,
        *,
        credentials: Credentials | None = None,
        policy: PolicyLike | None = None,
        config: EdgeConfig | None = None,
        transport: BaseTransport | None = None,
    ) -> None:
        super().__init__(bundle, endpoint, credentials=credentials, policy=policy, config=config)
        if transport is None and self._remote_options:
            transport = GrpcTransport(
                self._default_endpoint(), credentials=self.credentials, config=self.config
            )
        if transport is not None:
            transport.use_bundle(self.bundle.manifest)
        self.transport = transport
        self._probes: concurrent.futures.ThreadPoolExecutor | None = None
        self._probe_busy = threading.Lock()

    def infer(self, image: ImageLike, *, timeout_s: float | None = None) -> Result:
        """Classify one input.

        Args:
            image: a uint8 array, a PIL image, or an image file.
            timeout_s: this request's deadline (default ``config.timeout_s``).

        Raises:
            RequestError: the input does not fit the model.
            ClientClosedError: the client is closed.
            SplitServeError: the endpoint failed and ``config.fallback`` is off.
        """
        job = self._begin(image, timeout_s)
        self._schedule_probe(job)
        if job.result is not None:
            return job.result
        assert self.transport is not None and job.request is not None
        self._sending(job, stream=False)
        try:
            reply = self.transport.infer(job.request, timeout_s=max(self._remote_wait_s(job), _MIN_REMOTE_S))
        except SplitServeError as exc:
            return self._fail(job, exc, waited_ms=(time.perf_counter() - job.sent) * 1e3)
        return self._reply(job, reply, time.perf_counter())

    def stream(
        self, frames: Iterable[ImageLike], *, timeout_s: float | None = None, max_inflight: int | None = None
    ) -> Iterator[Result]:
        """Classify a sequence of inputs over one bidirectional stream, pipelined.

        Up to ``max_inflight`` requests are in flight at once; results come in input order, one per
        input. Inputs are read lazily, so ``frames`` may be an endless camera feed.

        Args:
            frames: the inputs.
            timeout_s: each request's deadline (default ``config.timeout_s``).
            max_inflight: requests in flight (default ``config.max_inflight``).

        Raises:
            RequestError: an input does not fit the model.
            ClientClosedError: the client is closed.
            SplitServeError: the endpoint failed and ``config.fallback`` is off.
        """
        self._check_open()
        window = max(max_inflight or self.config.max_inflight, 1)
        session = _StreamSession(self.transport) if self.transport is not None else None
        pending: deque[_Ticket] = deque()
        try:
            for frame in frames:
                while pending and (len(pending) >= window or pending[0].ready()):
                    yield self._settle(pending.popleft(), session)
                pending.append(self._submit(frame, timeout_s, session))
            while pending:
                yield self._settle(pending.popleft(), session)
        finally:
            if session is not None:
                session.close(abandon=bool(pending))

    def ping(self, *, timeout_s: float | None = None) -> float:
        """Round trip of a tiny call to the endpoint, in ms.

        Raises:
            ConfigError: the client has no endpoint.
            SplitServeError: no answer in time.
        """
        self._check_open()
        if self.transport is None:
            raise ConfigError("this client has no endpoint to ping")
        t0 = time.perf_counter()
        self.transport.ping(timeout_s=timeout_s or self.config.timeout_s)
        return (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        """Stop background probes and release the transport and the bundle (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._probes is not None:
            self._probes.shutdown(wait=True)
        self._stop_measurer()
        if self.transport is not None:
            self.transport.close()
        if self._owns_bundle:
            self.bundle.close()

    def __enter__(self) -> EdgeClient:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, frame: ImageLike, timeout_s: float | None, session: _StreamSession | None) -> _Ticket:
        job = self._begin(frame, timeout_s)
        self._schedule_probe(job)
        if job.result is not None:
            return _Ticket(job)
        assert session is not None and job.request is not None
        self._sending(job, stream=True)
        return _Ticket(job, session.send(job.request))

    def _settle(self, ticket: _Ticket, session: _StreamSession | None) -> Result:
        job, future = ticket.job, ticket.future
        if future is None:
            assert job.result is not None
            return job.result
        assert session is not None
        try:
            reply, arrived = future.result(timeout=self._remote_wait_s(job))
        except concurrent.futures.TimeoutError:
            session.forget(job.request_id)
            if future.done() and future.exception() is None:  # the reply won the race
                return self._reply(job, *future.result())
            waited_ms = (time.perf_counter() - job.sent) * 1e3
            result = self._fail(
                job, DeadlineExceededError(f"no reply within {waited_ms:.1f} ms"), waited_ms=waited_ms
            )
            if self.breaker.state == "open":
                session.reset()  # a hung stream: fail what is in flight now, reopen on the next trial
            return result
        except SplitServeError as exc:
            return self._fail(job, exc, waited_ms=(time.perf_counter() - job.sent) * 1e3)
        return self._reply(job, reply, arrived)

    def _schedule_probe(self, job: _Job) -> None:
        probe = self._probe_for(job)
        if probe is None or self.transport is None or not self._probe_busy.acquire(blocking=False):
            return
        if self._probes is None:
            self._probes = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="splitserve-edge-probe"
            )
        self._probes.submit(self._run_probe, probe)

    def _run_probe(self, probe: _Probe) -> None:
        assert self.transport is not None
        try:
            self._build_probe(probe)
            started, reply, load, failed = time.perf_counter(), None, None, False
            try:
                if probe.request is None:
                    load = self.transport.ping(timeout_s=self.config.probe_timeout_s)
                else:
                    reply = self.transport.infer(probe.request, timeout_s=self.config.probe_timeout_s)
            except SplitServeError:
                failed = True
            self._probe_done(probe, started, reply, load, failed)
        except Exception:  # noqa: BLE001 - a probe must never take the client down
            _LOG.exception("link probe failed")
        finally:
            self._probe_busy.release()


class _OpenCall:
    """One open stream call: its pending requests and the thread that reads its replies."""

    def __init__(self, call: StreamCall) -> None:
        self.call = call
        self.error: SplitServeError | None = None
        self._pending: dict[str, concurrent.futures.Future[tuple[pb.InferResponse, float]]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="splitserve-edge-stream", daemon=True)
        self._reader.start()

    def send(self, request: pb.InferRequest) -> concurrent.futures.Future[tuple[pb.InferResponse, float]]:
        future: concurrent.futures.Future[tuple[pb.InferResponse, float]] = concurrent.futures.Future()
        with self._lock:
            if self.error is not None:
                future.set_exception(self.error)
                return future
            self._pending[request.request_id] = future
        try:
            self.call.write(request)
        except SplitServeError as exc:
            # The call is over. Only this request fails now: replies that arrived before the end are
            # still read, and the reader fails the rest when it reaches the end.
            with self._lock:
                if self.error is None:
                    self.error = exc
                self._pending.pop(request.request_id, None)
            future.set_exception(exc)
        return future

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._pending

    def close(self, *, abandon: bool) -> None:
        if self.error is not None:  # the call is over: let the reader take the replies that arrived first
            self._reader.join(_STREAM_CLOSE_S)
        if abandon or not self.idle:
            self.call.cancel()
        else:
            self.call.done_writing()
        self._reader.join(_STREAM_CLOSE_S)
        if self._reader.is_alive():
            self.call.cancel()
            self._reader.join(_STREAM_CLOSE_S)

    def _read(self) -> None:
        error: SplitServeError
        try:
            for reply in self.call:
                arrived = time.perf_counter()
                with self._lock:
                    future = self._pending.pop(reply.request_id, None)
                if future is not None:
                    future.set_result((reply, arrived))
            error = UnavailableError("the endpoint ended the stream")
        except SplitServeError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - whatever broke the stream, its requests fall back
            error = ProtocolError(f"the stream failed: {exc!r}")
        self._fail(error)

    def _fail(self, error: SplitServeError) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            failed, self._pending = list(self._pending.values()), {}
        for future in failed:
            future.set_exception(self.error)


class _StreamSession:
    """The stream calls of one :meth:`EdgeClient.stream`: one open at a time, reopened after a break."""

    def __init__(self, transport: BaseTransport) -> None:
        self._transport = transport
        self._call: _OpenCall | None = None

    def send(self, request: pb.InferRequest) -> concurrent.futures.Future[tuple[pb.InferResponse, float]]:
        if self._call is None or self._call.error is not None:
            if self._call is not None:
                self._call.close(abandon=True)
            try:
                self._call = _OpenCall(self._transport.stream())
            except SplitServeError as exc:
                self._call = None
                future: concurrent.futures.Future[tuple[pb.InferResponse, float]] = (
                    concurrent.futures.Future()
                )
                future.set_exception(exc)
                return future
        return self._call.send(request)

    def forget(self, request_id: str) -> None:
        if self._call is not None:
            self._call.forget(request_id)

    def reset(self) -> None:
        """Abandon the current call (its pending requests fail at once)."""
        if self._call is not None:
            self._call.close(abandon=True)
            self._call = None

    def close(self, *, abandon: bool) -> None:
        if self._call is not None:
            self._call.close(abandon=abandon)
            self._call = None


# ---------------------------------------------------------------------------------------------------
# asyncio client
# ---------------------------------------------------------------------------------------------------


@dataclass
class _AsyncTicket:
    job: _Job
    future: asyncio.Future[tuple[pb.InferResponse, float]] | None = None

    def ready(self) -> bool:
        return self.future is None or self.future.done()


class AsyncEdgeClient(BaseEdgeClient):
    """The asyncio edge client; same verbs as :class:`EdgeClient`. Use ``async with``, or :meth:`aclose`.

    From a running event loop, build it with ``await AsyncEdgeClient.open(...)``: the constructor checks
    the bundle's hashes and times every option synchronously.

    Args:
        bundle: see :class:`BaseEdgeClient`.
        endpoint: see :class:`BaseEdgeClient`.
        credentials: see :class:`BaseEdgeClient`.
        policy: see :class:`BaseEdgeClient`.
        config: see :class:`BaseEdgeClient`.
        transport: how to reach the endpoint (default: :class:`AsyncGrpcTransport` to ``endpoint``).
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        endpoint: str | None = None,
        *,
        credentials: Credentials | None = None,
        policy: PolicyLike | None = None,
        config: EdgeConfig | None = None,
        transport: AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(bundle, endpoint, credentials=credentials, policy=policy, config=config)
        self._connect(transport)

    @classmethod
    async def open(
        cls,
        bundle: Bundle | str | Path,
        endpoint: str | None = None,
        *,
        credentials: Credentials | None = None,
        policy: PolicyLike | None = None,
        config: EdgeConfig | None = None,
        transport: AsyncBaseTransport | None = None,
    ) -> AsyncEdgeClient:
        """The client, built without blocking the event loop: the bundle's hash checks, the sessions and
        the timing of every option (about a second for an ImageNet-class bundle) run in a worker
        thread; the channel is made on the loop. Same arguments as the constructor."""
        self = cls.__new__(cls)
        await asyncio.to_thread(
            BaseEdgeClient.__init__, self, bundle, endpoint, credentials=credentials, policy=policy, config=config
        )
        self._connect(transport)
        return self

    def _connect(self, transport: AsyncBaseTransport | None) -> None:
        if transport is None and self._remote_options:
            transport = AsyncGrpcTransport(
                self._default_endpoint(), credentials=self.credentials, config=self.config
            )
        if transport is not None:
            transport.use_bundle(self.bundle.manifest)
        self.transport = transport
        self._device = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="splitserve-edge-device")
        self._probe_tasks: set[asyncio.Task[None]] = set()

    async def infer(self, image: ImageLike, *, timeout_s: float | None = None) -> Result:
        """Refer to :meth:`EdgeClient.infer`."""
        job = await self._on_device(self._begin, image, timeout_s)
        self._schedule_probe(job)
        if job.result is not None:
            return job.result
        assert self.transport is not None and job.request is not None
        self._sending(job, stream=False)
        try:
            reply = await self.transport.infer_async(
                job.request, timeout_s=max(self._remote_wait_s(job), _MIN_REMOTE_S)
            )
        except SplitServeError as exc:
            return await self._fail_async(job, exc)
        return await self._reply_async(job, reply, time.perf_counter())

    async def stream(
        self,
        frames: Iterable[ImageLike] | AsyncIterable[ImageLike],
        *,
        timeout_s: float | None = None,
        max_inflight: int | None = None,
    ) -> AsyncIterator[Result]:
        """Refer to :meth:`EdgeClient.stream`; ``frames`` may also be an async iterable."""
        self._check_open()
        window = max(max_inflight or self.config.max_inflight, 1)
        session = _AsyncStreamSession(self.transport) if self.transport is not None else None
        pending: deque[_AsyncTicket] = deque()
        try:
            async for frame in _aiter(frames):
                while pending and (len(pending) >= window or pending[0].ready()):
                    yield await self._settle(pending.popleft(), session)
                pending.append(await self._submit(frame, timeout_s, session))
            while pending:
                yield await self._settle(pending.popleft(), session)
        finally:
            if session is not None:
                await session.aclose(abandon=bool(pending))

    async def ping(self, *, timeout_s: float | None = None) -> float:
        """Refer to :meth:`EdgeClient.ping`."""
        self._check_open()
        if self.transport is None:
            raise ConfigError("this client has no endpoint to ping")
        t0 = time.perf_counter()
        await self.transport.ping_async(timeout_s=timeout_s or self.config.timeout_s)
        return (time.perf_counter() - t0) * 1e3

    async def aclose(self) -> None:
        """Refer to :meth:`EdgeClient.close`."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        for task in list(self._probe_tasks):
            task.cancel()
        if self._probe_tasks:
            await asyncio.gather(*self._probe_tasks, return_exceptions=True)
        if self.transport is not None:
            await self.transport.aclose()
        self._device.shutdown(wait=True)
        self._stop_measurer()
        if self._owns_bundle:
            self.bundle.close()

    async def __aenter__(self) -> AsyncEdgeClient:
        self._check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _on_device(self, fn: Callable[..., _T], *args: Any) -> _T:
        self._check_open()  # the device thread is gone once the client is closed
        return await asyncio.get_running_loop().run_in_executor(self._device, fn, *args)

    async def _fail_async(self, job: _Job, error: SplitServeError) -> Result:
        waited_ms = (time.perf_counter() - job.sent) * 1e3
        return await self._on_device(lambda: self._fail(job, error, waited_ms=waited_ms))

    async def _submit(
        self, frame: ImageLike, timeout_s: float | None, session: _AsyncStreamSession | None
    ) -> _AsyncTicket:
        job = await self._on_device(self._begin, frame, timeout_s)
        self._schedule_probe(job)
        if job.result is not None:
            return _AsyncTicket(job)
        assert session is not None and job.request is not None
        self._sending(job, stream=True)
        return _AsyncTicket(job, await session.send(job.request))

    async def _settle(self, ticket: _AsyncTicket, session: _AsyncStreamSession | None) -> Result:
        job, future = ticket.job, ticket.future
        if future is None:
            assert job.result is not None
            return job.result
        assert session is not None
        await asyncio.wait({future}, timeout=self._remote_wait_s(job))
        if not future.done():
            session.forget(job.request_id)
            future.cancel()
            waited_ms = (time.perf_counter() - job.sent) * 1e3
            result = await self._fail_async(job, DeadlineExceededError(f"no reply within {waited_ms:.1f} ms"))
            if self.breaker.state == "open":
                await session.reset()
            return result
        error = future.exception()
        if isinstance(error, SplitServeError):
            return await self._fail_async(job, error)
        reply, arrived = future.result()
        return await self._reply_async(job, reply, arrived)

    async def _reply_async(self, job: _Job, reply: pb.InferResponse, arrived: float) -> Result:
        if item_error(reply) is not None:  # the fallback runs the local model: on the device thread
            return await self._on_device(self._reply, job, reply, arrived)
        return self._reply(job, reply, arrived)

    def _schedule_probe(self, job: _Job) -> None:
        probe = self._probe_for(job)
        if probe is None or self.transport is None or self._probe_tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run_probe(probe))
        self._probe_tasks.add(task)
        task.add_done_callback(self._probe_tasks.discard)

    async def _run_probe(self, probe: _Probe) -> None:
        assert self.transport is not None
        try:
            await self._on_device(self._build_probe, probe)
            started, reply, load, failed = time.perf_counter(), None, None, False
            try:
                if probe.request is None:
                    load = await self.transport.ping_async(timeout_s=self.config.probe_timeout_s)
                else:
                    reply = await self.transport.infer_async(
                        probe.request, timeout_s=self.config.probe_timeout_s
                    )
            except SplitServeError:
                failed = True
            self._probe_done(probe, started, reply, load, failed)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a probe must never take the client down
            _LOG.exception("link probe failed")


async def _aiter(frames: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame


class _AsyncOpenCall:
    """Refer to :class:`_OpenCall`; the reader is a task."""

    def __init__(self, call: AsyncStreamCall) -> None:
        self.call = call
        self.error: SplitServeError | None = None
        self._pending: dict[str, asyncio.Future[tuple[pb.InferResponse, float]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(self, request: pb.InferRequest) -> asyncio.Future[tuple[pb.InferResponse, float]]:
        future: asyncio.Future[tuple[pb.InferResponse, float]] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            future.set_exception(self.error)
            return future
        self._pending[request.request_id] = future
        try:
            await self.call.write(request)
        except SplitServeError as exc:  # only this request fails now: see _OpenCall.send
            if self.error is None:
                self.error = exc
            self._pending.pop(request.request_id, None)
            future.set_exception(exc)
        return future

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def aclose(self, *, abandon: bool) -> None:
        if self.error is not None:  # the call is over: let the reader take the replies that arrived first
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), _STREAM_CLOSE_S)
        if abandon or self._pending:
            self.call.cancel()
        else:
            await self.call.done_writing()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), _STREAM_CLOSE_S)
        except asyncio.TimeoutError:
            self.call.cancel()
            self._reader.cancel()
        except asyncio.CancelledError:
            if not self._reader.cancelled():
                raise
        self._fail(ClientClosedError("the stream was closed"))

    async def _read(self) -> None:
        error: SplitServeError
        try:
            async for reply in self.call:
                future = self._pending.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result((reply, time.perf_counter()))
            error = UnavailableError("the endpoint ended the stream")
        except SplitServeError as exc:
            error = exc
        except asyncio.CancelledError:
            error = ClientClosedError("the stream was cancelled")
        except Exception as exc:  # noqa: BLE001 - whatever broke the stream, its requests fall back
            error = ProtocolError(f"the stream failed: {exc!r}")
        self._fail(error)

    def _fail(self, error: SplitServeError) -> None:
        if self.error is None:
            self.error = error
        failed, self._pending = list(self._pending.values()), {}
        for future in failed:
            if not future.done():
                future.set_exception(self.error)


class _AsyncStreamSession:
    """Refer to :class:`_StreamSession`."""

    def __init__(self, transport: AsyncBaseTransport) -> None:
        self._transport = transport
        self._call: _AsyncOpenCall | None = None

    async def send(self, request: pb.InferRequest) -> asyncio.Future[tuple[pb.InferResponse, float]]:
        if self._call is None or self._call.error is not None:
            if self._call is not None:
                await self._call.aclose(abandon=True)
            try:
                self._call = _AsyncOpenCall(self._transport.stream_async())
            except SplitServeError as exc:
                self._call = None
                future: asyncio.Future[tuple[pb.InferResponse, float]] = (
                    asyncio.get_running_loop().create_future()
                )
                future.set_exception(exc)
                return future
        return await self._call.send(request)

    def forget(self, request_id: str) -> None:
        if self._call is not None:
            self._call.forget(request_id)

    async def reset(self) -> None:
        if self._call is not None:
            await self._call.aclose(abandon=True)
            self._call = None

    async def aclose(self, *, abandon: bool) -> None:
        if self._call is not None:
            await self._call.aclose(abandon=abandon)
            self._call = None
