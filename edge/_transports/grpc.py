"""gRPC transports (``grpc`` and ``grpc.aio``) to the ``splitserve.v1.SplitInference`` endpoint.

Retries are declared, not looped: the channel's service config carries a ``retryPolicy`` that retries
UNAVAILABLE with exponential backoff inside each call's deadline (a server that is restarting, a
connection refused, a tail not ready yet). Reconnection backoff is capped by ``reconnect_max_s`` so a
returning endpoint is found again quickly. Authentication is a bearer token in call metadata; TLS
verifies the endpoint (and presents a client certificate for mutual TLS).

Once told the bundle (:meth:`~.base.BaseTransport.use_bundle`), a transport speaks the compact wire
(``Run``, ``RunStream``, ``Ping``; :mod:`.compact`) unless ``config.wire`` is ``"v1"``; an endpoint that
answers UNIMPLEMENTED (one from before the compact wire) turns it back to ``Infer``/``InferStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio

from splitserve.core.bundle import Manifest
from splitserve.core.errors import SplitServeError, UnavailableError, error_for_status
from splitserve.core.wire import SEQ_MODULUS, unary_request_bytes
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

from .._config import Credentials, EdgeConfig
from .base import AsyncBaseTransport, AsyncStreamCall, BaseTransport, ServerLoad, StreamCall
from .compact import CompactWire, deadline_to_send, v1_request_bytes

__all__ = ["AsyncGrpcTransport", "GrpcTransport", "channel_options", "service_config"]

SERVICE = "splitserve.v1.SplitInference"
_LOG = logging.getLogger(__name__)


def service_config(config: EdgeConfig) -> dict[str, Any]:
    """The channel's service config: retry UNAVAILABLE with exponential backoff on every method.

    A single attempt gets no ``retryPolicy`` at all (gRPC requires ``maxAttempts >= 2``).
    """
    method: dict[str, Any] = {"name": [{"service": SERVICE}]}
    if config.retry_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": config.retry_attempts,
            "initialBackoff": f"{config.retry_backoff_s:.6f}s",
            "maxBackoff": f"{config.retry_max_backoff_s:.6f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return {"methodConfig": [method]}


def channel_options(config: EdgeConfig, credentials: Credentials) -> list[tuple[str, Any]]:
    """gRPC channel arguments: retries, message limits, reconnection backoff, TLS name override."""
    reconnect_max_ms = int(config.reconnect_max_s * 1000)
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if config.retry_attempts > 1 else 0),
        ("grpc.service_config", json.dumps(service_config(config))),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", min(100, reconnect_max_ms)),
        ("grpc.max_reconnect_backoff_ms", reconnect_max_ms),
        # The client receives only small replies: probing the bandwidth-delay product of the downlink
        # would grow a window they never fill, for a PING (17 B) up and its ack down now and then.
        ("grpc.http2.bdp_probe", 0),
    ]
    if credentials.server_name:
        options.append(("grpc.ssl_target_name_override", credentials.server_name))
    return options


def _channel_credentials(credentials: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=credentials.root_certificates,
        private_key=credentials.private_key,
        certificate_chain=credentials.certificate_chain,
    )


def _error(exc: grpc.RpcError, request_id: str | None = None) -> SplitServeError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return error_for_status(name, details or f"gRPC call failed with {name}", request_id=request_id)


def _unimplemented(exc: grpc.RpcError) -> bool:
    return hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNIMPLEMENTED


class _WireChoice:
    """The wire a transport speaks: compact once it knows the bundle (unless configured ``v1``)."""

    def __init__(self, endpoint: str, config: EdgeConfig, tls: bool) -> None:
        self.endpoint = endpoint
        self._config = config
        self._tls = tls
        self._compact: CompactWire | None = None

    @property
    def compact(self) -> bool:
        """Whether requests go out in the compact form."""
        return self._compact is not None

    def use_bundle(self, manifest: Manifest) -> None:
        if self._config.wire == "compact":
            self._compact = CompactWire(manifest, timings_every=self._config.timings_every)

    def request_bytes(self, request: pb.InferRequest, *, stream: bool) -> int:
        if self._compact is not None:
            return self._compact.request_bytes(request, stream=stream, tls=self._tls)
        return v1_request_bytes(request, stream=stream, tls=self._tls)

    def ping_bytes(self) -> int:
        """An empty unary call (``Ping``, or v1's ``ListModels``): headers, an empty message, the updates."""
        return unary_request_bytes(0, tls=self._tls)

    def _old_endpoint(self) -> None:
        """The endpoint answered UNIMPLEMENTED to a compact call: speak v1 from now on."""
        if self._compact is not None:
            _LOG.warning("endpoint %s does not speak the compact wire (UNIMPLEMENTED): using v1", self.endpoint)
            self._compact = None


class GrpcTransport(_WireChoice, BaseTransport):
    """Synchronous gRPC transport.

    Args:
        endpoint: ``HOST:PORT``.
        credentials: token and TLS settings (default: plaintext, no token).
        config: retry, backoff and message-size settings.
    """

    def __init__(
        self, endpoint: str, *, credentials: Credentials | None = None, config: EdgeConfig | None = None
    ) -> None:
        creds = credentials or Credentials()
        super().__init__(endpoint, config or EdgeConfig(), creds.uses_tls)
        options = channel_options(self._config, creds)
        if creds.uses_tls:
            self._channel = grpc.secure_channel(endpoint, _channel_credentials(creds), options=options)
        else:
            self._channel = grpc.insecure_channel(endpoint, options=options)
        self._stub = pb_grpc.SplitInferenceStub(self._channel)
        self._metadata = creds.metadata

    def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        compact = self._compact
        try:
            if compact is not None:
                run = compact.request(request, stream=False)
                return compact.reply(self._stub.Run(run, timeout=timeout_s, metadata=self._metadata), request.request_id)
            reply: pb.InferResponse = self._stub.Infer(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            if compact is not None and _unimplemented(exc):
                self._old_endpoint()
                return self.infer(request, timeout_s=timeout_s)
            raise _error(exc, request.request_id) from exc
        return reply

    def stream(self) -> StreamCall:
        if self._compact is not None:
            return _GrpcStreamCall(self._stub.RunStream, self._metadata, self._compact, self._old_endpoint)
        return _GrpcStreamCall(self._stub.InferStream, self._metadata)

    def ping(self, *, timeout_s: float) -> ServerLoad | None:
        try:
            if self._compact is not None:
                try:
                    return ServerLoad.from_message(
                        self._stub.Ping(pb.PingRequest(), timeout=timeout_s, metadata=self._metadata)
                    )
                except grpc.RpcError as exc:
                    if not _unimplemented(exc):
                        raise
                    self._old_endpoint()
            self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return None

    def close(self) -> None:
        self._channel.close()


class _Numbering:
    """A compact stream's item numbers: the endpoint numbers items in arrival order, so does the client."""

    def __init__(self, wire: CompactWire) -> None:
        self.wire = wire
        self._next = 0
        self._opened = False
        self._deadline_ms = 0
        self._ids: dict[int, str] = {}

    def outgoing(self, request: pb.InferRequest) -> pb.RunRequest:
        """The next item's message (the first names the bundle); call in write order."""
        deadline_ms = deadline_to_send(request.deadline_ms, self._deadline_ms)
        run = self.wire.request(request, stream=True, opening=not self._opened, deadline_ms=deadline_ms)
        self._opened = True
        self._deadline_ms = deadline_ms or self._deadline_ms
        self._ids[self._next] = request.request_id
        self._next = (self._next + 1) % SEQ_MODULUS
        return run

    def incoming(self, reply: pb.RunReply) -> pb.InferResponse:
        return self.wire.reply(reply, self._ids.pop(reply.seq, ""))


class _GrpcStreamCall(StreamCall):
    """A sync stream call fed from a queue (gRPC reads requests on its own thread); compact or v1."""

    def __init__(
        self,
        method: Any,
        metadata: tuple[tuple[str, str], ...],
        wire: CompactWire | None = None,
        on_unimplemented: Any = None,
    ) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ended = False
        self._numbering = _Numbering(wire) if wire is not None else None
        self._lock = threading.Lock()
        self._on_unimplemented = on_unimplemented
        self._call = method(self._requests(), metadata=metadata)

    def _requests(self) -> Iterator[Any]:
        while (request := self._queue.get()) is not None:
            yield request

    def write(self, request: pb.InferRequest) -> None:
        if self._ended or self._call.done():
            raise UnavailableError("the stream is closed", request_id=request.request_id)
        if self._numbering is None:
            self._queue.put(request)
            return
        with self._lock:  # numbers follow the order of the queue
            self._queue.put(self._numbering.outgoing(request))

    def done_writing(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def __iter__(self) -> Iterator[pb.InferResponse]:
        try:
            for reply in self._call:
                if self._numbering is None:
                    yield reply
                else:
                    with self._lock:
                        answer = self._numbering.incoming(reply)
                    yield answer
        except grpc.RpcError as exc:
            if self._numbering is not None and _unimplemented(exc) and self._on_unimplemented:
                self._on_unimplemented()
            raise _error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()
        self.done_writing()


class AsyncGrpcTransport(_WireChoice, AsyncBaseTransport):
    """asyncio gRPC transport; the channel is created on first use, inside the running loop.

    Args:
        endpoint: ``HOST:PORT``.
        credentials: token and TLS settings (default: plaintext, no token).
        config: retry, backoff and message-size settings.
    """

    def __init__(
        self, endpoint: str, *, credentials: Credentials | None = None, config: EdgeConfig | None = None
    ) -> None:
        self._creds = credentials or Credentials()
        super().__init__(endpoint, config or EdgeConfig(), self._creds.uses_tls)
        self._options = channel_options(self._config, self._creds)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.SplitInferenceStub | None = None
        self._metadata = self._creds.metadata

    @property
    def _stub(self) -> pb_grpc.SplitInferenceStub:
        if self._stub_ is None:
            if self._creds.uses_tls:
                creds = _channel_credentials(self._creds)
                self._channel = grpc.aio.secure_channel(self.endpoint, creds, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.endpoint, options=self._options)
            self._stub_ = pb_grpc.SplitInferenceStub(self._channel)
        return self._stub_

    async def infer_async(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        compact = self._compact
        try:
            if compact is not None:
                run = compact.request(request, stream=False)
                reply = await self._stub.Run(run, timeout=timeout_s, metadata=self._metadata)
                return compact.reply(reply, request.request_id)
            answer: pb.InferResponse = await self._stub.Infer(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            if compact is not None and _unimplemented(exc):
                self._old_endpoint()
                return await self.infer_async(request, timeout_s=timeout_s)
            raise _error(exc, request.request_id) from exc
        return answer

    def stream_async(self) -> AsyncStreamCall:
        if self._compact is not None:
            call = self._stub.RunStream(metadata=self._metadata)
            return _AsyncGrpcStreamCall(call, _Numbering(self._compact), self._old_endpoint)
        return _AsyncGrpcStreamCall(self._stub.InferStream(metadata=self._metadata))

    async def ping_async(self, *, timeout_s: float) -> ServerLoad | None:
        try:
            if self._compact is not None:
                try:
                    load = await self._stub.Ping(pb.PingRequest(), timeout=timeout_s, metadata=self._metadata)
                    return ServerLoad.from_message(load)
                except grpc.RpcError as exc:
                    if not _unimplemented(exc):
                        raise
                    self._old_endpoint()
            await self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return None

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub_ = None


class _AsyncGrpcStreamCall(AsyncStreamCall):
    def __init__(self, call: Any, numbering: _Numbering | None = None, on_unimplemented: Any = None) -> None:
        self._call = call
        self._numbering = numbering
        self._on_unimplemented = on_unimplemented

    async def write(self, request: pb.InferRequest) -> None:
        message = request if self._numbering is None else self._numbering.outgoing(request)
        try:
            await self._call.write(message)
        except grpc.RpcError as exc:
            raise _error(exc, request.request_id) from exc
        except asyncio.InvalidStateError as exc:
            raise UnavailableError("the stream is closed", request_id=request.request_id) from exc

    async def done_writing(self) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):  # the stream already ended;
            await self._call.done_writing()  # its reader reports why

    async def __aiter__(self) -> AsyncIterator[pb.InferResponse]:
        try:
            async for reply in self._call:
                yield reply if self._numbering is None else self._numbering.incoming(reply)
        except grpc.RpcError as exc:
            if self._numbering is not None and _unimplemented(exc) and self._on_unimplemented:
                self._on_unimplemented()
            raise _error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()
