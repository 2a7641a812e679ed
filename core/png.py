"""The offload payload: a lossless PNG of the model input, written with numpy and zlib.

One encoder for both sides of the contract: the edge client sends what :func:`png_bytes` writes, and
the exporter prices the offload option in the manifest with the same function, so the orchestrator
plans with the bytes the client will send (Pillow's optimised PNG, which the manifest used before,
was 2% smaller than what the client sent on Fashion-MNIST and 28% smaller on photos).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import RequestError

__all__ = ["png_bytes"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NONE, _PAETH = 0, 4


def png_bytes(x: NDArray[Any]) -> bytes:
    """A lossless 8-bit PNG (grey for 1 channel, RGB for 3) of ``x`` (C, H, W) uint8.

    Grey rows are stored unfiltered, zlib level 9 (on Fashion-MNIST within 2% of Pillow's adaptive
    filtering and twice as fast); colour rows with the Paeth filter at zlib level 3: on 224x224 crops of
    30 held-out photos 86.1 KB in 5.2 ms, against 114 KB unfiltered (5.3 ms), 83.8 KB at level 9 (26 ms),
    84.4 KB at level 6 (10.6 ms) and Pillow's optimised 81.7 KB (31 ms). The encoding runs on the device,
    where a slower CPU multiplies it: level 3 keeps it near the unfiltered time for 2.8% more bytes.

    Raises:
        RequestError: ``x`` has neither 1 nor 3 channels.
    """
    c, h, w = x.shape
    if c not in (1, 3):
        raise RequestError(f"only 1- or 3-channel inputs can be offloaded as PNG, this one has {c}")
    rows = np.ascontiguousarray(x.transpose(1, 2, 0)).reshape(h, w * c)
    kind, level = (_NONE, 9) if c == 1 else (_PAETH, 3)
    body = rows if kind == _NONE else _paeth(rows, c)
    raw = np.hstack([np.full((h, 1), kind, np.uint8), body]).tobytes()  # the filter byte before every row
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


def _paeth(rows: NDArray[Any], bpp: int) -> NDArray[np.uint8]:
    """PNG filter type 4 on every row (``bpp`` bytes per pixel): each byte minus its Paeth predictor."""
    x = rows.astype(np.int16)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    diag = np.zeros_like(x)
    diag[1:, bpp:] = x[:-1, :-bpp]
    p = left + up - diag
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - diag)
    pred: NDArray[np.int16] = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, diag))
    return ((x - pred) & 0xFF).astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
