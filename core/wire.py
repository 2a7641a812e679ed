"""Rules both ends of the compact wire share (``Run``, ``RunStream``, ``Ping``): ids, options, top-k, bytes.

A compact request names its bundle by :func:`wire_id` and its split and level by an index into
:func:`wire_options`; both are derived from the manifest alone, so an edge client and an endpoint holding
the same bundle agree without a handshake, and a client whose bundle differs from every served one gets
NOT_FOUND instead of a wrong answer.

What a request costs on the wire beyond its payload (TCP payload bytes, measured against the kernel's
counters by ``splitserve bench wire``; plaintext HTTP/2 as grpcio 1.85 writes it)::

    RunStream item   message + 5 (gRPC prefix) + 9 (DATA frame) + 26 (two WINDOW_UPDATE frames)
    Run (unary)      the same + its HEADERS frame (``UNARY_HEADERS_BYTES`` once the connection's HPACK
                     table holds the call's headers: all indexed but the literal ``grpc-timeout``)

With TLS every write is one TLS 1.3 record: 22 B more (5 B header, 16 B AEAD tag, 1 B content type;
measured with grpcio's TLS on loopback, up and down, streams and unary calls alike).

The two WINDOW_UPDATEs (connection and stream, 13 B each) are gRPC core's: each side returns the flow-control
window for the bytes it received with its next write, so every request carries them for the previous reply,
and every reply for its request. No channel argument turns that off (tried: ``grpc.http2.bdp_probe``,
``grpc.http2.lookahead_bytes``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .bundle import OFFLOAD_SPLIT, Manifest

__all__ = [
    "DEFAULT_TOP_K",
    "GRPC_PREFIX_BYTES",
    "SEQ_MODULUS",
    "TLS_RECORD_BYTES",
    "UNARY_HEADERS_BYTES",
    "WINDOW_UPDATES_BYTES",
    "WireOption",
    "offload_codecs",
    "stream_item_bytes",
    "top_k",
    "unary_request_bytes",
    "wire_id",
    "wire_options",
]

DEFAULT_TOP_K = 5
"""Classes returned when a request does not say (``top_k`` 0)."""
SEQ_MODULUS = 1 << 14
"""Stream items are numbered modulo this (a two-byte varint); far more than a client may have in flight."""
GRPC_PREFIX_BYTES = 5
"""gRPC's length prefix of every message (compression flag + 4-byte length)."""
FRAME_HEADER_BYTES = 9
"""An HTTP/2 frame header."""
WINDOW_UPDATES_BYTES = 2 * (FRAME_HEADER_BYTES + 4)
"""The connection and stream WINDOW_UPDATE frames gRPC core sends with each write after receiving data."""
TLS_RECORD_BYTES = 22
"""A TLS 1.3 record's overhead; gRPC writes one record per request."""
UNARY_HEADERS_BYTES = 18
"""A unary call's HEADERS frame once its headers are in the connection's HPACK table: frame header,
indexed fields and the literal ``grpc-timeout`` (17-18 B measured by ``splitserve bench wire``)."""


@dataclass(frozen=True)
class WireOption:
    """One entry of :func:`wire_options`: a split and level (``split == OFFLOAD_SPLIT`` for an image)."""

    split: str
    level: int

    @property
    def offload(self) -> bool:
        return self.split == OFFLOAD_SPLIT


def offload_codecs(manifest: Manifest) -> dict[int, str]:
    """The image codec of each offload level the bundle serves (``{}`` without an offload model).

    A manifest without offload figures still serves PNG at level 0.
    """
    if not (manifest.offload.onnx and manifest.offload.triton_model):
        return {}
    return {lv.level: lv.codec for lv in manifest.offload.levels} or {0: "png"}


def wire_options(manifest: Manifest) -> tuple[WireOption, ...]:
    """Every remote option of the bundle, in wire order: each split's levels as the manifest lists them,
    then the offload levels in ascending order."""
    latent = [WireOption(s.name, int(lv.level)) for s in manifest.splits for lv in s.levels]
    return (*latent, *(WireOption(OFFLOAD_SPLIT, level) for level in sorted(offload_codecs(manifest))))


def wire_id(manifest: Manifest) -> int:
    """The bundle's 32-bit wire id: its name, version and the sha256 of every file, hashed (never 0)."""
    canonical = json.dumps([manifest.name, manifest.version, sorted(manifest.files.items())])
    value = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big")
    return value or 1


def top_k(logits: NDArray[Any], k: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The ``k`` most likely classes and their softmax probabilities, highest first (edge and endpoint)."""
    z = logits.astype(np.float64) - float(np.max(logits))
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return tuple(int(i) for i in order), tuple(float(p[i]) for i in order)


def stream_item_bytes(message_bytes: int, *, tls: bool = False) -> int:
    """TCP payload bytes of one stream item of ``message_bytes`` (steady state)."""
    record = TLS_RECORD_BYTES if tls else 0
    return message_bytes + GRPC_PREFIX_BYTES + FRAME_HEADER_BYTES + WINDOW_UPDATES_BYTES + record


def unary_request_bytes(message_bytes: int, *, tls: bool = False) -> int:
    """TCP payload bytes of one unary call's request of ``message_bytes`` (steady state)."""
    return stream_item_bytes(message_bytes, tls=tls) + UNARY_HEADERS_BYTES
