"""An in-memory transport for tests: every request goes to a handler function (httpx's ``MockTransport``).

The handler gets a ``pb.InferRequest`` (or a ``pb.ListModelsRequest`` for a ping) and returns the reply
(for a ping, a ``pb.Load`` reports the endpoint's load; anything else reports none), or raises a :class:`~splitserve.core.errors.SplitServeError` to fail the call. Async clients may give a
coroutine function. In a stream, a :class:`~splitserve.core.errors.TransportError` breaks the whole stream
(as a lost connection does); any other error answers only its own item (as the endpoint does).
Stream requests are handled in order on a worker, so several can be in flight at once.

Example::

    def handler(request):
        if isinstance(request, pb.ListModelsRequest):
            return pb.ListModelsResponse()
        return pb.InferResponse(request_id=request.request_id, classes=[3], scores=[0.9])

    client = EdgeClient(bundle, transport=MockTransport(handler), policy="layer1@0")
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from splitserve.core.errors import (
    ClientClosedError,
    DeadlineExceededError,
    SplitServeError,
    TransportError,
    UnavailableError,
)
from splitserve.protos.v1 import inference_pb2 as pb

from .base import AsyncBaseTransport, AsyncStreamCall, BaseTransport, ServerLoad, StreamCall, status_code

__all__ = ["Handler", "MockTransport"]

Request = pb.InferRequest | pb.ListModelsRequest
Reply = pb.InferResponse | pb.ListModelsResponse | pb.Load
Handler = Callable[[Request], Reply | Awaitable[Reply]]
_END = object()


class MockTransport(BaseTransport, AsyncBaseTransport):
    """A transport that answers every call with ``handler``; implements the sync and async interface.

    Attributes:
        requests: every ``InferRequest`` received (unary and stream), in arrival order.
        pings: number of pings received.
        max_inflight: the most stream requests that were waiting for their reply at once.
        closed: whether the transport was closed.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[pb.InferRequest] = []
        self.pings = 0
        self.max_inflight = 0
        self.closed = False
        self._lock = threading.Lock()

    # -- sync ---------------------------------------------------------------------------------------

    def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        start = time.perf_counter()
        reply = self._call(request)
        if time.perf_counter() - start > timeout_s:
            raise DeadlineExceededError("Deadline Exceeded", request_id=request.request_id)
        assert isinstance(reply, pb.InferResponse)
        return reply

    def stream(self) -> StreamCall:
        self._check_open()
        return _MockStream(self)

    def ping(self, *, timeout_s: float) -> ServerLoad | None:
        return _load(self._call(pb.ListModelsRequest()))

    def close(self) -> None:
        self.closed = True

    # -- async --------------------------------------------------------------------------------------

    async def infer_async(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        try:
            reply = await asyncio.wait_for(self._call_async(request), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError("Deadline Exceeded", request_id=request.request_id) from None
        assert isinstance(reply, pb.InferResponse)
        return reply

    def stream_async(self) -> AsyncStreamCall:
        self._check_open()
        return _AsyncMockStream(self)

    async def ping_async(self, *, timeout_s: float) -> ServerLoad | None:
        return _load(await self._call_async(pb.ListModelsRequest()))

    async def aclose(self) -> None:
        self.closed = True

    # -- internals ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosedError("the transport is closed")

    def _record(self, request: Request) -> None:
        self._check_open()
        with self._lock:
            if isinstance(request, pb.InferRequest):
                self.requests.append(request)
            else:
                self.pings += 1

    def _call(self, request: Request) -> Reply:
        self._record(request)
        reply = self.handler(request)
        if inspect.isawaitable(reply):
            raise TypeError("a coroutine handler works only with the async client")
        return reply

    async def _call_async(self, request: Request) -> Reply:
        self._record(request)
        reply = self.handler(request)
        if inspect.isawaitable(reply):
            reply = await reply
        return reply

    def _inflight(self, delta: int, counter: list[int]) -> None:
        with self._lock:
            counter[0] += delta
            self.max_inflight = max(self.max_inflight, counter[0])


def _load(reply: Reply) -> ServerLoad | None:
    return ServerLoad.from_message(reply) if isinstance(reply, pb.Load) else None


def _item_reply(request: pb.InferRequest, exc: SplitServeError) -> pb.InferResponse:
    """What the endpoint answers for an item that failed on its own."""
    return pb.InferResponse(
        request_id=request.request_id, error=pb.ItemError(code=status_code(exc.status), message=exc.message)
    )


class _MockStream(StreamCall):
    def __init__(self, transport: MockTransport) -> None:
        self._t = transport
        self._in: queue.SimpleQueue[pb.InferRequest | None] = queue.SimpleQueue()
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: SplitServeError | None = None
        self._ended = False
        self._count = [0]
        self._worker = threading.Thread(target=self._serve, name="splitserve-mock-stream", daemon=True)
        self._worker.start()

    def _serve(self) -> None:
        while (request := self._in.get()) is not None:
            try:
                reply = self._t._call(request)
            except TransportError as exc:
                self._error = exc
                self._out.put(exc)
                return
            except SplitServeError as exc:
                reply = _item_reply(request, exc)
            self._t._inflight(-1, self._count)
            self._out.put(reply)
        self._out.put(_END)

    def write(self, request: pb.InferRequest) -> None:
        if self._error is not None or self._ended:
            raise UnavailableError("the stream is closed", request_id=request.request_id)
        self._t._inflight(+1, self._count)
        self._in.put(request)

    def done_writing(self) -> None:
        if not self._ended:
            self._ended = True
            self._in.put(None)

    def __iter__(self) -> Iterator[pb.InferResponse]:
        while (item := self._out.get()) is not _END:
            if isinstance(item, SplitServeError):
                raise item
            yield item

    def cancel(self) -> None:
        if self._error is None:
            self._error = ClientClosedError("the stream was cancelled")
            self._out.put(self._error)
        self.done_writing()


class _AsyncMockStream(AsyncStreamCall):
    def __init__(self, transport: MockTransport) -> None:
        self._t = transport
        self._in: asyncio.Queue[pb.InferRequest | None] = asyncio.Queue()
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._error: SplitServeError | None = None
        self._ended = False
        self._count = [0]
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while (request := await self._in.get()) is not None:
            try:
                reply = await self._t._call_async(request)
            except TransportError as exc:
                self._error = exc
                self._out.put_nowait(exc)
                return
            except SplitServeError as exc:
                reply = _item_reply(request, exc)
            self._t._inflight(-1, self._count)
            self._out.put_nowait(reply)
        self._out.put_nowait(_END)

    async def write(self, request: pb.InferRequest) -> None:
        if self._error is not None or self._ended:
            raise UnavailableError("the stream is closed", request_id=request.request_id)
        self._t._inflight(+1, self._count)
        self._in.put_nowait(request)

    async def done_writing(self) -> None:
        if not self._ended:
            self._ended = True
            self._in.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[pb.InferResponse]:
        while (item := await self._out.get()) is not _END:
            if isinstance(item, SplitServeError):
                raise item
            yield item

    def cancel(self) -> None:
        if self._error is None:
            self._error = ClientClosedError("the stream was cancelled")
            self._out.put_nowait(self._error)
        self._worker.cancel()
        self._ended = True
