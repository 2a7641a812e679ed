"""How the edge client reaches the endpoint: gRPC in production, a mock in tests (as httpx does)."""

from __future__ import annotations

from .base import AsyncBaseTransport as AsyncBaseTransport
from .base import AsyncStreamCall as AsyncStreamCall
from .base import BaseTransport as BaseTransport
from .base import ServerLoad as ServerLoad
from .base import StreamCall as StreamCall
from .base import item_error as item_error
from .grpc import AsyncGrpcTransport as AsyncGrpcTransport
from .grpc import GrpcTransport as GrpcTransport
from .mock import MockTransport as MockTransport

__all__ = [
    "AsyncBaseTransport",
    "AsyncGrpcTransport",
    "AsyncStreamCall",
    "BaseTransport",
    "GrpcTransport",
    "MockTransport",
    "ServerLoad",
    "StreamCall",
    "item_error",
]
