"""The client side of ``InferStream``: requests in flight on one stream call, matched to their replies.

A :class:`StreamSession` (one per :meth:`EdgeClient.stream`) keeps one :class:`OpenCall` open at a time and
opens a new one after a break; an :class:`OpenCall` writes requests, and its reader hands each reply to
the future of the request it answers (a thread; a task in :class:`AsyncOpenCall`). When the call ends,
every request still pending fails with the call's error, and the client answers it on the device.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time

from splitserve.core.errors import ClientClosedError, ProtocolError, SplitServeError, UnavailableError
from splitserve.protos.v1 import inference_pb2 as pb

from ._transports.base import AsyncBaseTransport, AsyncStreamCall, BaseTransport, StreamCall

__all__ = ["STREAM_CLOSE_S", "AsyncOpenCall", "AsyncStreamSession", "OpenCall", "StreamSession"]

# How long closing a stream waits for the endpoint to finish it before cancelling.
STREAM_CLOSE_S = 2.0


class OpenCall:
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
            self._reader.join(STREAM_CLOSE_S)
        if abandon or not self.idle:
            self.call.cancel()
        else:
            self.call.done_writing()
        self._reader.join(STREAM_CLOSE_S)
        if self._reader.is_alive():
            self.call.cancel()
            self._reader.join(STREAM_CLOSE_S)

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


class StreamSession:
    """The stream calls of one :meth:`EdgeClient.stream`: one open at a time, reopened after a break."""

    def __init__(self, transport: BaseTransport) -> None:
        self._transport = transport
        self._call: OpenCall | None = None

    def send(self, request: pb.InferRequest) -> concurrent.futures.Future[tuple[pb.InferResponse, float]]:
        if self._call is None or self._call.error is not None:
            if self._call is not None:
                self._call.close(abandon=True)
            try:
                self._call = OpenCall(self._transport.stream())
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


class AsyncOpenCall:
    """Refer to :class:`OpenCall`; the reader is a task."""

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
        except SplitServeError as exc:  # only this request fails now: see OpenCall.send
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
                await asyncio.wait_for(asyncio.shield(self._reader), STREAM_CLOSE_S)
        if abandon or self._pending:
            self.call.cancel()
        else:
            await self.call.done_writing()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), STREAM_CLOSE_S)
        except TimeoutError:
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


class AsyncStreamSession:
    """Refer to :class:`StreamSession`."""

    def __init__(self, transport: AsyncBaseTransport) -> None:
        self._transport = transport
        self._call: AsyncOpenCall | None = None

    async def send(self, request: pb.InferRequest) -> asyncio.Future[tuple[pb.InferResponse, float]]:
        if self._call is None or self._call.error is not None:
            if self._call is not None:
                await self._call.aclose(abandon=True)
            try:
                self._call = AsyncOpenCall(self._transport.stream_async())
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
