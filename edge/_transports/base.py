"""The transport interface: what the edge client needs from the wire, sync and async.

A transport moves ``splitserve.v1`` messages and nothing else: the client builds requests, runs the
device side and decides about retries and fallback. Every failure a transport reports is a
:class:`~splitserve.core.errors.SplitServeError` (the most specific class for the gRPC status), raised
``from`` the transport's own exception.

::

    BaseTransport.infer(request, timeout_s)  -> InferResponse      (one call)
    BaseTransport.stream()                   -> StreamCall          (write / iterate / done_writing)
    BaseTransport.ping(timeout_s)            -> ServerLoad | None   (a tiny call: a link probe)
    BaseTransport.use_bundle(manifest)                              (the bundle requests are for)
    BaseTransport.request_bytes(request, stream=...) -> int         (what a request costs on the wire)
    BaseTransport.ping_bytes() -> int                               (what a ping costs)

:class:`AsyncBaseTransport` has the same verbs with an ``_async`` suffix (``aclose`` for ``close``), so
one class (the mock) can implement both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from splitserve.core.bundle import Manifest
from splitserve.core.errors import SplitServeError, error_for_status
from splitserve.protos.v1 import inference_pb2 as pb

from .compact import message_bytes

__all__ = [
    "AsyncBaseTransport",
    "AsyncStreamCall",
    "BaseTransport",
    "ServerLoad",
    "StreamCall",
    "Wire",
    "item_error",
    "status_name",
]

# google.rpc.Code numbers, as ItemError.code carries them.
_STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


def status_name(code: int) -> str:
    """The name of a numeric gRPC status code (``14`` -> ``"UNAVAILABLE"``)."""
    return _STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else "UNKNOWN"


def status_code(status: str) -> int:
    """The number of a gRPC status code name (``"UNAVAILABLE"`` -> ``14``)."""
    return _STATUS_NAMES.index(status) if status in _STATUS_NAMES else _STATUS_NAMES.index("UNKNOWN")


@dataclass(frozen=True)
class ServerLoad:
    """What the endpoint said about its load in a ping reply.

    Attributes:
        queue_ms: its current queueing delay in front of the tails.
        tail_ms: its recent mean tail time per request.
    """

    queue_ms: float
    tail_ms: float

    @classmethod
    def from_message(cls, load: pb.Load) -> ServerLoad:
        return cls(load.queue_dms / 10.0, load.tail_dms / 10.0)


def item_error(reply: pb.InferResponse) -> SplitServeError | None:
    """The error a stream reply carries for its own item, or ``None`` for a successful reply."""
    if not reply.HasField("error") or reply.error.code == 0:
        return None
    return error_for_status(
        status_name(reply.error.code), reply.error.message, request_id=reply.request_id or None
    )


class StreamCall(ABC):
    """One open bidirectional ``InferStream`` call (sync).

    Replies come back in any order, each with its request's ``request_id``. Iteration ends when the
    endpoint closes the stream after :meth:`done_writing`; it raises a :class:`SplitServeError` when the
    stream breaks.
    """

    @abstractmethod
    def write(self, request: pb.InferRequest) -> None:
        """Send one request.

        Raises:
            TransportError: the stream is already broken or closed.
        """

    @abstractmethod
    def done_writing(self) -> None:
        """No more requests: the endpoint finishes the pending ones, then ends the stream."""

    @abstractmethod
    def __iter__(self) -> Iterator[pb.InferResponse]:
        """Replies as they arrive."""

    @abstractmethod
    def cancel(self) -> None:
        """Abandon the call at once (idempotent)."""


class AsyncStreamCall(ABC):
    """One open bidirectional ``InferStream`` call (asyncio); see :class:`StreamCall`."""

    @abstractmethod
    async def write(self, request: pb.InferRequest) -> None:
        """Refer to :meth:`StreamCall.write`."""

    @abstractmethod
    async def done_writing(self) -> None:
        """Refer to :meth:`StreamCall.done_writing`."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[pb.InferResponse]:
        """Refer to :meth:`StreamCall.__iter__`."""

    @abstractmethod
    def cancel(self) -> None:
        """Refer to :meth:`StreamCall.cancel`."""


class Wire:
    """What both transport kinds share: the bundle requests are for, and their size on the wire."""

    def use_bundle(self, manifest: Manifest) -> None:
        """Requests will be for this bundle (a transport may then name it compactly); default: ignored."""

    def request_bytes(self, request: pb.InferRequest, *, stream: bool) -> int:
        """Bytes ``request`` puts on the wire (default: the message and gRPC's prefix)."""
        return message_bytes(request)

    def ping_bytes(self) -> int:
        """Bytes a ping puts on the wire (default: 0, none known)."""
        return 0


class BaseTransport(Wire, ABC):
    """A synchronous transport."""

    @abstractmethod
    def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        """One unary ``Infer`` call with a deadline.

        Raises:
            SplitServeError: the call failed; the class follows its gRPC status.
        """

    @abstractmethod
    def stream(self) -> StreamCall:
        """Open an ``InferStream`` call."""

    @abstractmethod
    def ping(self, *, timeout_s: float) -> ServerLoad | None:
        """A tiny call that proves the endpoint answers; its load, where the endpoint reports it.

        Raises:
            SplitServeError: no answer in time.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""


class AsyncBaseTransport(Wire, ABC):
    """An asyncio transport; each verb refers to :class:`BaseTransport`'s."""

    @abstractmethod
    async def infer_async(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        """Refer to :meth:`BaseTransport.infer`."""

    @abstractmethod
    def stream_async(self) -> AsyncStreamCall:
        """Refer to :meth:`BaseTransport.stream`."""

    @abstractmethod
    async def ping_async(self, *, timeout_s: float) -> ServerLoad | None:
        """Refer to :meth:`BaseTransport.ping`."""

    @abstractmethod
    async def aclose(self) -> None:
        """Refer to :meth:`BaseTransport.close`."""
