"""The call interceptor: bearer-token authentication and the arrival time of every call.

Every call to the inference service (and to server reflection) must carry ``authorization: Bearer
<token>`` metadata with a token from the tokens file when one is configured; otherwise it is answered
UNAUTHENTICATED before any of its messages is read. Health checks are exempt (Kubernetes' gRPC probes
send no metadata). Tokens are compared in constant time.

It also counts the inference calls being handled, for the drain: once
:meth:`CallInterceptor.start_draining` is called (the server got SIGTERM), every new inference call is
answered UNAVAILABLE, the status clients retry elsewhere, and :meth:`CallInterceptor.wait_idle` lets the
server wait for the calls in flight before gRPC's own shutdown (a call caught by that shutdown would see
CANCELLED, which clients do not retry).

The interceptor also records when each inference call arrived (before its request message was read), so
that the servicer can report the ``receive`` stage, and who the caller is (a hash of its token), for the
per-client concurrency limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from splitserve.core.errors import ConfigError

__all__ = ["CallInfo", "CallInterceptor", "current_call", "load_tokens"]

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_INFERENCE_PREFIX = "/splitserve.v1.SplitInference/"


@dataclass(frozen=True)
class CallInfo:
    """What the interceptor learnt about a call before its handler ran.

    Attributes:
        arrived: ``time.perf_counter()`` when the call's headers arrived.
        client: the authenticated caller (``token:<sha256 prefix>``), or ``None`` without authentication.
    """

    arrived: float
    client: str | None


_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("splitserve_call", default=None)


def current_call() -> CallInfo | None:
    """The :class:`CallInfo` of the call being handled, if it came through :class:`CallInterceptor`."""
    return _CALL.get()


def load_tokens(path: str | Path) -> frozenset[str]:
    """Read accepted bearer tokens, one per line; blank lines and ``#`` comments are skipped.

    Raises:
        ConfigError: the file cannot be read or holds no token.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
    tokens = frozenset(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
    if not tokens:
        raise ConfigError(f"tokens file {path} holds no token: every call would be refused")
    return tokens


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints: the base is Any
    """Authenticates calls (when ``tokens`` is given) and records their arrival.

    Args:
        tokens: accepted bearer tokens; ``None`` disables authentication.
    """

    def __init__(self, tokens: frozenset[str] | None = None) -> None:
        self._tokens = [t.encode() for t in sorted(tokens)] if tokens is not None else None
        self._draining = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start_draining(self) -> None:
        """Answer every later inference call UNAVAILABLE (the server is shutting down)."""
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until no inference call is being handled; ``True`` if none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self._idle.is_set()

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        arrived = time.perf_counter()
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        if self._draining and method.startswith(_INFERENCE_PREFIX):
            return _refusal(
                handler, "the server is shutting down: retry on another replica", grpc.StatusCode.UNAVAILABLE
            )
        client = None
        if self._tokens is not None:
            token = _bearer(handler_call_details.invocation_metadata or ())
            if token is None:
                return _refusal(
                    handler, "missing bearer token: send metadata 'authorization: Bearer <token>'"
                )
            if not self._accepts(token):
                return _refusal(handler, "invalid bearer token")
            client = "token:" + hashlib.sha256(token).hexdigest()[:16]
        if method.startswith(_INFERENCE_PREFIX):
            return _with_call_info(handler, CallInfo(arrived, client), self._counted)
        return handler

    def _accepts(self, token: bytes) -> bool:
        assert self._tokens is not None
        ok = False
        for accepted in self._tokens:  # no early exit: the time taken does not depend on which token matched
            ok |= hmac.compare_digest(token, accepted)
        return ok


def _bearer(metadata: Sequence[tuple[str, Any]]) -> bytes | None:
    """The bearer token of the call; None when missing, malformed or sent more than once (ambiguous:
    a proxy and a client could each think theirs counts)."""
    values = [value for key, value in metadata if key == "authorization"]
    if len(values) != 1:
        return None
    raw = values[0] if isinstance(values[0], bytes) else str(values[0]).encode()
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return None


def _refusal(
    handler: grpc.RpcMethodHandler,
    message: str,
    code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
) -> grpc.RpcMethodHandler:
    async def refuse(_: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


def _with_call_info(
    handler: grpc.RpcMethodHandler,
    info: CallInfo,
    counted: Callable[[], contextlib.AbstractContextManager[None]],
) -> grpc.RpcMethodHandler:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _CALL.set(info)
            with counted():
                return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.stream_stream is not None:
        stream_behavior = handler.stream_stream

        async def stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _CALL.set(info)
            with counted():
                async for response in stream_behavior(requests, context):
                    yield response

        return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
    return handler
