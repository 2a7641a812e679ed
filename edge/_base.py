"""What the sync and asyncio clients share: set-up, policy, and every step of a request but the I/O.

A request's path through the edge, and where each step lives::

    EdgeClient.infer(image) / AsyncEdgeClient.infer                    _sync.py / _async.py
      _start:   preprocess, then policy.decide(deadline) ──> decision        here
      _prepare: local ──> the whole model on the device ──> Result           here (_local)
                breaker open, or no time left ──> local fallback             here (_fail)
                split / offload: device work ──> InferRequest              _request.py (+ _runtime.py)
      transport: Run, or RunStream (max_inflight in flight); v1: Infer(Stream) _transports/, _streams.py
      _reply:   Result(computed="split"|"offload"); policy.observe           here, _results.py
                failure or deadline ──> local fallback ──> Result(computed="local", fallback_reason=...)
      background: the probes the policy asks for; every remeasure_s the device times measured again

Every input gets exactly one :class:`Result`, which says where it was computed. The remote part of a
request gets the deadline less the time a local run needs, so that a fallback still fits in it.
:class:`BaseEdgeClient` holds everything but I/O; :class:`EdgeClient` and :class:`AsyncEdgeClient` add
the transport calls and differ only in ``await`` (``close`` / ``aclose``).
"""

from __future__ import annotations

import concurrent.futures
import enum
import itertools
import logging
import math
import threading
import time
import uuid
from pathlib import Path

from splitserve.core.bundle import Bundle
from splitserve.core.errors import (
    ClientClosedError,
    ConfigError,
    DeadlineExceededError,
    SplitServeError,
    UnavailableError,
)
from splitserve.core.wire import top_k
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
from splitserve.orchestrator.types import LOCAL_ID
from splitserve.protos.v1 import inference_pb2 as pb

from ._breaker import CircuitBreaker
from ._config import Credentials, EdgeConfig
from ._policy import EdgePolicy, PolicyLike, plan_policy
from ._request import Job, Probe, build_request
from ._results import Result, Timings
from ._runtime import EdgeRuntime, ImageLike
from ._transports.base import ServerLoad, Wire, item_error

__all__ = ["BaseEdgeClient"]

_LOG = logging.getLogger(__name__)

# Below this much time left, a remote round trip is not attempted.
_MIN_REMOTE_S = 1e-3
# Timed calls per option of a periodic re-measurement (the start-up one takes 10).
_REMEASURE_REPEATS = 3


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

    transport: Wire | None
    """How requests reach the endpoint; each client kind sets its own (None: local only)."""

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

    @property
    def local_reserve_s(self) -> float:
        """The part of every request's deadline kept for a local run (the remote part gets the rest)."""
        return self._local_reserve_s

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

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("the client is closed")

    def _mark_closed(self) -> bool:
        """Mark the client closed; ``False`` when it already was (closing is idempotent)."""
        if self._state is _State.CLOSED:
            return False
        self._state = _State.CLOSED
        return True

    # -- request steps (no I/O), in the order a request takes them ----------------------------------

    def _start(self, image: ImageLike, timeout_s: float | None) -> Job:
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
        return Job(job_id, x, start, start + budget_s, decision, preprocess_ms=preprocess_ms)

    def _begin(self, image: ImageLike, timeout_s: float | None) -> Job:
        """All device work before sending (:meth:`_start`, then :meth:`_prepare`)."""
        job = self._start(image, timeout_s)
        self._prepare(job)
        self._schedule_remeasure()
        return job

    def _prepare(self, job: Job) -> None:
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
        job.request, job.head_ms, job.encode_ms = build_request(
            self.runtime, job.request_id, d, x, top_k=self.config.top_k
        )
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

    def _sending(self, job: Job, *, stream: bool) -> None:
        """``job`` goes on the wire now: note when, and the bytes it costs there (framing included)."""
        assert self.transport is not None and job.request is not None
        job.bytes_sent = self.transport.request_bytes(job.request, stream=stream)
        job.sent = time.perf_counter()

    def _unary_timeout_s(self, job: Job) -> float:
        """The timeout of ``job``'s unary call: :meth:`_remote_wait_s`, but never below ``_MIN_REMOTE_S``."""
        return max(self._remote_wait_s(job), _MIN_REMOTE_S)

    def _remote_wait_s(self, job: Job) -> float:
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

    def _reply(self, job: Job, reply: pb.InferResponse, arrived: float) -> Result:
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

    def _fail(self, job: Job, error: SplitServeError, *, waited_ms: float) -> Result:
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

    def _local(self, job: Job, reason: str | None) -> Result:
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

    def _probe_for(self, job: Job) -> Probe | None:
        """The probe ``job``'s decision asks for, if any (built later, off the request's path)."""
        n = job.decision.probe_bytes
        if n is None or self._probe_option is None:
            return None
        option = self._remote_by_id.get(job.decision.probe_option or "", self._probe_option)
        return Probe(x=job.x if n > 0 else None, option=option)

    def _build_probe(self, probe: Probe) -> None:
        """Device work of a sized probe: a real request of the option the policy named (or the smallest);
        a ping costs only its own bytes."""
        assert self.transport is not None
        if probe.x is None or probe.option is None:
            probe.wire_bytes = self.transport.ping_bytes()
            return
        o = probe.option
        d = SplitDecision(o.kind, o.split, o.level, 0.0, o.accuracy, "probe", o.id)
        probe_id = f"{self._id_prefix}-probe-{next(self._ids)}"
        probe.request = build_request(self.runtime, probe_id, d, probe.x, top_k=self.config.top_k)[0]
        probe.wire_bytes = self.transport.request_bytes(probe.request, stream=False)

    def _probe_done(
        self,
        probe: Probe,
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
            self.policy.observe_probe(
                ProbeResult(probe.wire_bytes, rtt_ms, failed, queue_ms=None if failed else queue_ms)
            )

    def __repr__(self) -> str:
        m = self.bundle.manifest
        return f"{type(self).__name__}({m.name!r}, version={m.version!r}, endpoint={self.endpoint!r})"
