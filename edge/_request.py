"""One input on its way through the client, and the request it puts on the wire.

::

    Job(input, deadline, decision) ──build_request──> split:   head ──> entropy code ──> CompressedTensor
                                                      offload: PNG / JPEG / WebP ──────> CompressedTensor
                                   ──> InferRequest(model, version, split, level, tensor, top_k)

The device work itself (ONNX Runtime sessions, entropy tables, image codecs) is :class:`EdgeRuntime`'s;
this module turns its output into the message (the compact wire packs that message again:
``_transports/compact.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from splitserve.core.bundle import OFFLOAD_SPLIT
from splitserve.core.codec import CODEC_NAME
from splitserve.orchestrator import Option, SplitDecision
from splitserve.protos.v1 import inference_pb2 as pb

from ._results import Result
from ._runtime import EdgeRuntime

__all__ = ["Job", "Probe", "build_request"]


@dataclass
class Job:
    """One input on its way through the client."""

    request_id: str
    x: NDArray[Any]
    start: float
    deadline: float
    decision: SplitDecision
    request: pb.InferRequest | None = None
    preprocess_ms: float = 0.0
    head_ms: float = 0.0
    encode_ms: float = 0.0
    payload_bytes: int = 0
    bytes_sent: int = 0
    sent: float = 0.0
    result: Result | None = None

    @property
    def device_ms(self) -> float:
        return self.preprocess_ms + self.head_ms + self.encode_ms


@dataclass
class Probe:
    """A background link probe the orchestrator asked for (a ping, or a real request of ~n bytes)."""

    x: NDArray[Any] | None
    option: Option | None = None
    request: pb.InferRequest | None = None
    wire_bytes: int = 0


def build_request(
    runtime: EdgeRuntime, request_id: str, d: SplitDecision, x: NDArray[Any], *, top_k: int
) -> tuple[pb.InferRequest, float, float]:
    """The request for decision ``d`` on input ``x``, with head and encoding times (ms)."""
    m = runtime.manifest
    t0 = time.perf_counter()
    if d.kind == "offload":
        level = d.level or 0
        image_codec, payload = runtime.offload_image(x, level)
        tensor = pb.CompressedTensor(codec=image_codec, codec_version=1, shape=x.shape, data=payload)
        head_ms, t1 = 0.0, t0
        split = OFFLOAD_SPLIT
    else:
        assert d.split is not None and d.level is not None
        y = runtime.head(d.split, x)
        t1 = time.perf_counter()
        data, crc = runtime.encode(d.split, d.level, y)
        tensor = pb.CompressedTensor(
            codec=CODEC_NAME,
            codec_version=runtime.tables[(d.split, d.level)].codec_version,
            shape=y.shape,
            data=data,
            symbols_crc32=crc,
        )
        head_ms = (t1 - t0) * 1e3
        split, level = d.split, d.level
    request = pb.InferRequest(
        request_id=request_id,
        model=m.name,
        version=m.version,
        split=split,
        level=level,
        tensor=tensor,
        top_k=top_k,
    )
    return request, head_ms, (time.perf_counter() - t1) * 1e3
