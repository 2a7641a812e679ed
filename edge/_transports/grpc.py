"""gRPC transports (``grpc`` and ``grpc.aio``) to the ``splitserve.v1.SplitInference`` endpoint.

Retries are declared, not looped: the channel's service config carries a ``retryPolicy`` that retries
UNAVAILABLE with exponential backoff inside each call's deadline (a server that is restarting, a
connection refused, a tail not ready yet). Reconnection backoff is capped by ``reconnect_max_s`` so a
returning endpoint is found again quickly. Authentication is a bearer token in call metadata; TLS
verifies the endpoint (and presents a client certificate for mutual TLS).
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio

from splitserve.core.errors import SplitServeError, UnavailableError, error_for_status
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

from .._config import Credentials, EdgeConfig
from .base import AsyncBaseTransport, AsyncStreamCall, BaseTransport, StreamCall

__all__ = ["AsyncGrpcTransport", "GrpcTransport", "channel_options", "service_config"]

SERVICE = "splitserve.v1.SplitInference"


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


class GrpcTransport(BaseTransport):
    """Synchronous gRPC transport.

    Args:
        endpoint: ``HOST:PORT``.
        credentials: token and TLS settings (default: plaintext, no token).
        config: retry, backoff and message-size settings.
    """

    def __init__(
        self, endpoint: str, *, credentials: Credentials | None = None, config: EdgeConfig | None = None
    ) -> None:
        self.endpoint = endpoint
        creds = credentials or Credentials()
        options = channel_options(config or EdgeConfig(), creds)
        if creds.uses_tls:
            self._channel = grpc.secure_channel(endpoint, _channel_credentials(creds), options=options)
        else:
            self._channel = grpc.insecure_channel(endpoint, options=options)
        self._stub = pb_grpc.SplitInferenceStub(self._channel)
        self._metadata = creds.metadata

    def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        try:
            reply: pb.InferResponse = self._stub.Infer(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc, request.request_id) from exc
        return reply

    def stream(self) -> StreamCall:
        return _GrpcStreamCall(self._stub, self._metadata)

    def ping(self, *, timeout_s: float) -> None:
        try:
            self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        self._channel.close()


class _GrpcStreamCall(StreamCall):
    """A sync ``InferStream`` call fed from a queue (gRPC reads requests on its own thread)."""

    def __init__(self, stub: pb_grpc.SplitInferenceStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._queue: queue.SimpleQueue[pb.InferRequest | None] = queue.SimpleQueue()
        self._ended = False
        self._call = stub.InferStream(self._requests(), metadata=metadata)

    def _requests(self) -> Iterator[pb.InferRequest]:
        while (request := self._queue.get()) is not None:
            yield request

    def write(self, request: pb.InferRequest) -> None:
        if self._ended or self._call.done():
            raise UnavailableError("the stream is closed", request_id=request.request_id)
        self._queue.put(request)

    def done_writing(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def __iter__(self) -> Iterator[pb.InferResponse]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()
        self.done_writing()


class AsyncGrpcTransport(AsyncBaseTransport):
    """asyncio gRPC transport; the channel is created on first use, inside the running loop.

    Args:
        endpoint: ``HOST:PORT``.
        credentials: token and TLS settings (default: plaintext, no token).
        config: retry, backoff and message-size settings.
    """

    def __init__(
        self, endpoint: str, *, credentials: Credentials | None = None, config: EdgeConfig | None = None
    ) -> None:
        self.endpoint = endpoint
        self._creds = credentials or Credentials()
        self._options = channel_options(config or EdgeConfig(), self._creds)
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
        try:
            reply: pb.InferResponse = await self._stub.Infer(
                request, timeout=timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc, request.request_id) from exc
        return reply

    def stream_async(self) -> AsyncStreamCall:
        return _AsyncGrpcStreamCall(self._stub.InferStream(metadata=self._metadata))

    async def ping_async(self, *, timeout_s: float) -> None:
        try:
            await self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub_ = None


class _AsyncGrpcStreamCall(AsyncStreamCall):
    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, request: pb.InferRequest) -> None:
        try:
            await self._call.write(request)
        except grpc.RpcError as exc:
            raise _error(exc, request.request_id) from exc
        except asyncio.InvalidStateError as exc:
            raise UnavailableError("the stream is closed", request_id=request.request_id) from exc

    async def done_writing(self) -> None:
        try:
            await self._call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the stream already ended; its reader reports why

    async def __aiter__(self) -> AsyncIterator[pb.InferResponse]:
        try:
            async for reply in self._call:
                yield reply
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()
