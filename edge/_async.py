"""The asyncio client: :class:`AsyncEdgeClient`, the same verbs as :class:`EdgeClient` with ``await``.

Device work (preprocess, head, local model) runs on one worker thread so that the event loop never
waits for it; a stream's replies are read by a task (:class:`AsyncStreamSession`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ConfigError, DeadlineExceededError, SplitServeError
from splitserve.protos.v1 import inference_pb2 as pb

from ._base import BaseEdgeClient
from ._config import Credentials, EdgeConfig
from ._policy import PolicyLike
from ._request import Job, Probe
from ._results import Result
from ._runtime import ImageLike
from ._streams import AsyncStreamSession
from ._transports.base import AsyncBaseTransport, item_error
from ._transports.grpc import AsyncGrpcTransport

__all__ = ["AsyncEdgeClient"]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass
class _AsyncTicket:
    job: Job
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

    transport: AsyncBaseTransport | None

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
            BaseEdgeClient.__init__,
            self,
            bundle,
            endpoint,
            credentials=credentials,
            policy=policy,
            config=config,
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
            reply = await self.transport.infer_async(job.request, timeout_s=self._unary_timeout_s(job))
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
        session = AsyncStreamSession(self.transport) if self.transport is not None else None
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
        if not self._mark_closed():
            return
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

    async def _fail_async(self, job: Job, error: SplitServeError) -> Result:
        waited_ms = (time.perf_counter() - job.sent) * 1e3
        return await self._on_device(lambda: self._fail(job, error, waited_ms=waited_ms))

    async def _submit(
        self, frame: ImageLike, timeout_s: float | None, session: AsyncStreamSession | None
    ) -> _AsyncTicket:
        job = await self._on_device(self._begin, frame, timeout_s)
        self._schedule_probe(job)
        if job.result is not None:
            return _AsyncTicket(job)
        assert session is not None and job.request is not None
        self._sending(job, stream=True)
        return _AsyncTicket(job, await session.send(job.request))

    async def _settle(self, ticket: _AsyncTicket, session: AsyncStreamSession | None) -> Result:
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

    async def _reply_async(self, job: Job, reply: pb.InferResponse, arrived: float) -> Result:
        if item_error(reply) is not None:  # the fallback runs the local model: on the device thread
            return await self._on_device(self._reply, job, reply, arrived)
        return self._reply(job, reply, arrived)

    def _schedule_probe(self, job: Job) -> None:
        probe = self._probe_for(job)
        if probe is None or self.transport is None or self._probe_tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run_probe(probe))
        self._probe_tasks.add(task)
        task.add_done_callback(self._probe_tasks.discard)

    async def _run_probe(self, probe: Probe) -> None:
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
