"""The compact wire of one bundle: ``InferRequest`` -> ``RunRequest`` on the way out, ``RunReply`` ->
``InferResponse`` on the way back, so the client builds and reads one form whatever the wire.

A ``RunRequest`` names the bundle by its wire id and the split and level by an option index
(``splitserve.core.wire``); in a stream only the first message names the bundle, ``top_k`` and
``timings_every``, and an item carries its deadline only when it differs from the last one sent by more
than ``DEADLINE_SLACK`` (budgets of one client barely move: the same timeout less a few ms of device work). Stage timings a reply did not carry come back as NaN (the client reports them as
``None``).
"""

from __future__ import annotations

import math

from splitserve.core.bundle import Manifest
from splitserve.core.errors import RequestError
from splitserve.core.wire import (
    DEFAULT_TOP_K,
    GRPC_PREFIX_BYTES,
    stream_item_bytes,
    unary_request_bytes,
    wire_id,
    wire_options,
)
from splitserve.protos.v1 import inference_pb2 as pb

__all__ = ["DEADLINE_SLACK", "CompactWire", "deadline_to_send", "v1_request_bytes"]

_UNKNOWN = math.nan
DEADLINE_SLACK = 0.1
"""A stream item's deadline is sent when it differs from the last one sent by more than this share."""


def deadline_to_send(deadline_ms: int, last_ms: int) -> int:
    """The deadline a stream item carries: ``deadline_ms``, or 0 (keep ``last_ms``) when close to it."""
    return 0 if last_ms and abs(deadline_ms - last_ms) <= DEADLINE_SLACK * last_ms else deadline_ms


class CompactWire:
    """Compact messages for the bundle of ``manifest``.

    Args:
        manifest: the client's bundle manifest (the endpoint must serve the same bundle).
        timings_every: stream replies with full stage timings (every n-th; 0: none).
    """

    def __init__(self, manifest: Manifest, *, timings_every: int = 0) -> None:
        self.bundle_id = wire_id(manifest)
        self.model, self.version = manifest.name, manifest.version
        self.timings_every = timings_every
        self._index = {(o.split, o.level): i for i, o in enumerate(wire_options(manifest))}

    def request(
        self,
        request: pb.InferRequest,
        *,
        stream: bool,
        opening: bool = True,
        deadline_ms: int | None = None,
        payload: bool = True,
    ) -> pb.RunRequest:
        """The compact form of ``request``; ``opening``: the first message of a stream (or a unary call);
        ``deadline_ms``: the stream deadline to send (default: ``request``'s own, ``0`` keeps the last);
        ``payload=False`` leaves the data out (to size the rest).

        Raises:
            RequestError: the bundle has no such split and level.
        """
        option = self._index.get((request.split, request.level))
        if option is None:
            raise RequestError(
                f"{self.model} {self.version} has no option {request.split}@{request.level}",
                request_id=request.request_id or None,
            )
        top_k = request.top_k if request.top_k != DEFAULT_TOP_K else 0
        return pb.RunRequest(
            bundle=self.bundle_id if opening else 0,
            option=option,
            data=request.tensor.data if payload else b"",
            check=request.tensor.symbols_crc32,
            deadline_ms=(request.deadline_ms if deadline_ms is None else deadline_ms) if stream else 0,
            top_k=top_k if opening else 0,
            timings_every=self.timings_every if opening else 0,
        )

    def reply(self, reply: pb.RunReply, request_id: str) -> pb.InferResponse:
        """The ``InferResponse`` a compact reply stands for."""
        if reply.HasField("error"):
            return pb.InferResponse(request_id=request_id, error=reply.error)
        total, queue = reply.server_dms / 10.0, reply.queue_dms / 10.0
        t = reply.timings if reply.HasField("timings") else None
        timings = pb.ServerTimings(
            receive_ms=t.receive_ms if t else _UNKNOWN,
            decode_ms=t.decode_ms if t else _UNKNOWN,
            queue_ms=t.queue_ms if t else queue,
            tail_ms=t.tail_ms if t else _UNKNOWN,
            total_ms=total,
            queue_delay_ms=t.queue_delay_ms if t else queue,
        )
        return pb.InferResponse(
            request_id=request_id,
            model=self.model,
            version=self.version,
            classes=reply.classes,
            scores=reply.scores,
            timings=timings,
        )

    def request_bytes(self, request: pb.InferRequest, *, stream: bool, tls: bool = False) -> int:
        """TCP payload bytes ``request`` costs in its compact form (steady state: a stream item after the
        first, a unary call on a warm connection). Sized without copying the payload."""
        shell = self.request(request, stream=stream, opening=not stream, deadline_ms=0, payload=False)
        size = shell.ByteSize() + _bytes_field_size(len(request.tensor.data))
        return stream_item_bytes(size, tls=tls) if stream else unary_request_bytes(size, tls=tls)


def _bytes_field_size(n: int) -> int:
    """Encoded size of a ``bytes`` field number < 16 holding ``n`` bytes (none when empty, as proto3 does)."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n if n else 0


def v1_request_bytes(request: pb.InferRequest, *, stream: bool, tls: bool = False) -> int:
    """TCP payload bytes ``request`` costs as an ``Infer`` / ``InferStream`` message."""
    size = request.ByteSize()
    return stream_item_bytes(size, tls=tls) if stream else unary_request_bytes(size, tls=tls)


def message_bytes(request: pb.InferRequest) -> int:
    """The message plus gRPC's prefix (what a transport without HTTP/2, such as the mock, moves)."""
    size: int = request.ByteSize()
    return size + GRPC_PREFIX_BYTES
