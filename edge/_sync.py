"""The synchronous client: :meth:`EdgeClient.infer` and :meth:`EdgeClient.stream` over a blocking transport.

Device work runs on the calling thread; a stream's replies are read by :class:`StreamSession`'s thread,
and background probes run on one worker thread of their own.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ConfigError, DeadlineExceededError, SplitServeError
from splitserve.protos.v1 import inference_pb2 as pb

from ._base import BaseEdgeClient
from ._config import Credentials, EdgeConfig
from ._policy import PolicyLike
from ._request import Job, Probe
from ._results import Result
from ._runtime import ImageLike
from ._streams import StreamSession
from ._transports.base import BaseTransport
from ._transports.grpc import GrpcTransport

__all__ = ["EdgeClient"]

_LOG = logging.getLogger(__name__)


@dataclass
class _Ticket:
    """A submitted stream input: answered already, or waiting for its reply."""

    job: Job
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

    transport: BaseTransport | None

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
            reply = self.transport.infer(job.request, timeout_s=self._unary_timeout_s(job))
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
        session = StreamSession(self.transport) if self.transport is not None else None
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
        if not self._mark_closed():
            return
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

    def _submit(self, frame: ImageLike, timeout_s: float | None, session: StreamSession | None) -> _Ticket:
        job = self._begin(frame, timeout_s)
        self._schedule_probe(job)
        if job.result is not None:
            return _Ticket(job)
        assert session is not None and job.request is not None
        self._sending(job, stream=True)
        return _Ticket(job, session.send(job.request))

    def _settle(self, ticket: _Ticket, session: StreamSession | None) -> Result:
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

    def _schedule_probe(self, job: Job) -> None:
        probe = self._probe_for(job)
        if probe is None or self.transport is None or not self._probe_busy.acquire(blocking=False):
            return
        if self._probes is None:
            self._probes = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="splitserve-edge-probe"
            )
        self._probes.submit(self._run_probe, probe)

    def _run_probe(self, probe: Probe) -> None:
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
