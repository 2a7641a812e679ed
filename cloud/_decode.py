"""Entropy decoding (and image decoding for offload): inline or on a worker pool.

:func:`splitserve.core.codec.decode` holds the GIL: with its C loops (``core/_rans.c``) about 0.02-0.03 ms
for a Fashion-MNIST latent (400-800 symbols) and 0.07-0.15 ms for an 11k-symbol natural-image latent (codec
version 3); with the Python loops (no compiler at install) 0.2-0.3 ms for the small one, growing linearly
with the symbols.
Handing one decode to a process pool costs the event loop 0.26 ms of its CPU (pickle, pipe, wake-up)
plus 0.3-0.6 ms of latency, so small latents decode fastest where they are, and only big ones are worth
shipping out. Placement, by ``CloudConfig.decode_mode`` (measurements in ``cloud/README.md``):

- ``auto`` (default): latents of at most ``INLINE_MAX_SYMBOLS`` symbols (and images of at most
  ``INLINE_MAX_PIXELS`` pixels) decode inline; bigger ones go to a process pool, started only when a
  bundle needs it.
- ``process``: every decode goes to a ``ProcessPoolExecutor`` (spawned workers, one per core by
  default). Each worker keeps the entropy tables it has loaded, keyed by file path and sha256, so a
  request ships only its bytes.
- ``thread``: a thread pool; the GIL serialises the decodes (measured no better than inline).
- ``inline``: every decode runs on the event loop.

Spawned workers import the main module again: a script that starts a server must guard its entry point
with ``if __name__ == "__main__":`` (``python -m splitserve.cloud`` and the ``splitserve`` CLI do).

Every decode checks the whole contract of a request's payload: the stream decodes to exactly
``C*H*W`` symbols with no trailing bytes, and the symbols' CRC32 equals the one sent. Image payloads must
be in the codec their offload level names (PNG, baseline JPEG, still WebP), of the manifest's height,
width and channels, and are returned in the manifest's input layout.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from splitserve.core.codec import EntropyTables, decode, symbols_crc32
from splitserve.core.errors import DecodeError

from ._metrics import Metrics

__all__ = ["INLINE_MAX_PIXELS", "INLINE_MAX_SYMBOLS", "MAX_PNG_CHUNKS", "Decoder", "ImageLayout", "TablesRef"]

_T = TypeVar("_T")

INLINE_MAX_SYMBOLS = 16384  # about 0.5 ms of the event loop with the C loops
INLINE_MAX_PIXELS = 256 * 256


@dataclass(frozen=True)
class TablesRef:
    """Where a worker finds one level's entropy tables: a bundle file and its sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class ImageLayout:
    """How an offloaded PNG maps to the model's uint8 input of ``shape``.

    Attributes:
        shape: the manifest's input shape (without batch).
        height: image height in pixels.
        width: image width in pixels.
        channels: 1 (PNG mode ``L``) or 3 (``RGB``).
        channels_first: whether ``shape`` is (C, H, W) rather than (H, W, C) or (H, W).
    """

    shape: tuple[int, ...]
    height: int
    width: int
    channels: int
    channels_first: bool

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> ImageLayout:
        """Read the layout off an input shape: (H, W), (C, H, W) or (H, W, C) with C in {1, 3}.

        Raises:
            DecodeError: the shape is none of these.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            return cls(shape, shape[0], shape[1], 1, False)
        if len(shape) == 3 and shape[0] in (1, 3):
            return cls(shape, shape[1], shape[2], shape[0], True)
        if len(shape) == 3 and shape[2] in (1, 3):
            return cls(shape, shape[0], shape[1], shape[2], False)
        raise DecodeError(
            f"input shape {shape} is not an image layout (H,W), (C,H,W) or (H,W,C) with C 1 or 3"
        )


# ----------------------------------------------------------------------------------------------------
# Work functions: module level, so that a process pool can pickle them.

_TABLES: dict[TablesRef, EntropyTables] = {}


def _tables(ref: TablesRef) -> EntropyTables:
    tables = _TABLES.get(ref)
    if tables is None:
        tables = _TABLES[ref] = EntropyTables.load(ref.path)
    return tables


def _preload(refs: Sequence[TablesRef]) -> None:
    for ref in refs:
        _tables(ref)


def _decode_latent(ref: TablesRef, data: bytes, shape: tuple[int, int, int], crc32: int) -> NDArray[Any]:
    y_hat, symbols = decode(data, shape, _tables(ref))
    got = symbols_crc32(symbols)
    if got != crc32:
        raise DecodeError(
            f"symbols CRC32 mismatch: the request says {crc32:#010x}, the decoded symbols give {got:#010x} "
            "(encoder and decoder tables differ, or the stream is corrupt)"
        )
    return y_hat


# An offloaded PNG carries pixels: IHDR, IDATs, IEND and perhaps a few small ancillary chunks. Text
# and ICC chunks are refused before Pillow sees them (it inflates zTXt/iCCP up to 64 MiB), and so is a
# stream of more chunks than any encoder writes (330,000 empty chunks kept a decode busy for 0.8 s).
MAX_PNG_CHUNKS = 256
_REFUSED_PNG_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP"})


def _check_png_chunks(data: bytes) -> None:
    """Walk the chunk headers (no decompression): bounded count, no text or ICC chunks."""
    pos, count = 8, 0
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise DecodeError(f"PNG has more than {MAX_PNG_CHUNKS} chunks: refused")
        if kind in _REFUSED_PNG_CHUNKS:
            raise DecodeError(f"PNG chunk {kind.decode('latin-1')!r} is refused: offloaded images carry pixels only")
        pos += 12 + length
        if kind == b"IEND":
            return


# Lossy offload levels (JPEG, WebP): the size is bounded by the pixels (a 224x224 photo at quality 90 is
# 13-16 KB; more than twice its raw pixels is no encoder's output), a JPEG must be baseline (a progressive
# one may hold hundreds of scans, each a pass over the image) and a WebP a single still frame.
_SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "webp": (b"RIFF",)}


def _decode_image(data: bytes, layout: ImageLayout, codec: str) -> NDArray[Any]:
    from PIL import Image  # imported where it runs: only offload requests need Pillow

    name = codec.upper()
    if codec not in _SIGNATURES or not data.startswith(_SIGNATURES[codec]) or (
        codec == "webp" and data[8:12] != b"WEBP"
    ):
        raise DecodeError(f"payload is not a {name} image (bad signature)")
    if codec == "png":
        _check_png_chunks(data)
    elif len(data) > 2 * layout.height * layout.width * layout.channels + 4096:
        raise DecodeError(f"{name} of {len(data)} bytes is larger than any encoding of these pixels: refused")
    mode = "L" if layout.channels == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(data), formats=[name]) as img:
            if img.size != (layout.width, layout.height):
                raise DecodeError(
                    f"{name} is {img.size[0]}x{img.size[1]}, the model takes {layout.width}x{layout.height}"
                )
            if img.mode != mode:
                raise DecodeError(
                    f"{name} mode is {img.mode!r}, the model takes {mode!r} ({layout.channels} channels)"
                )
            if codec == "jpeg" and (img.info.get("progressive") or img.info.get("progression")):
                raise DecodeError("progressive JPEG is refused: offloaded JPEGs are baseline")
            frames = getattr(img, "n_frames", 1)  # multi-frame formats only (GIF, APNG, TIFF, WebP)
            if frames != 1:
                raise DecodeError(f"{name} with {frames} frames is refused: offloaded images are stills")
            pixels = np.asarray(img, dtype=np.uint8)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt files; all are bad input
        raise DecodeError(f"{name} does not decode: {type(exc).__name__}: {exc}") from None
    if layout.channels_first:
        pixels = pixels.reshape(layout.height, layout.width, layout.channels).transpose(2, 0, 1)
    return np.ascontiguousarray(pixels.reshape(layout.shape))


# ----------------------------------------------------------------------------------------------------


class Decoder:
    """Runs each decode where it is cheapest and keeps the pool saturation gauge.

    Args:
        mode: ``auto``, ``process``, ``thread`` or ``inline``.
        workers: pool size (ignored inline).
        metrics: where the pool saturation is reported.
        inline_max_symbols: in ``auto`` mode, latents of at most this many symbols decode inline.
    """

    def __init__(
        self, mode: str, workers: int, metrics: Metrics, *, inline_max_symbols: int = INLINE_MAX_SYMBOLS
    ) -> None:
        self.mode = mode
        self.workers = max(1, workers)
        self.inline_max_symbols = inline_max_symbols
        self._metrics = metrics
        self._pending = 0
        self._executor: Executor | None = None
        if mode == "thread":
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="splitserve-decode")

    async def prepare(
        self, latents: Sequence[tuple[TablesRef, EntropyTables, int]], max_pixels: int = 0
    ) -> None:
        """Get ready for a bundle: keep its tables for inline decodes, start the process pool if needed.

        Args:
            latents: every (split, level): its tables file, the loaded tables, the symbols per latent.
            max_pixels: pixels of the bundle's offload image (0 without offload).
        """
        for ref, tables, _ in latents:
            _TABLES[ref] = tables
        pooled = [ref for ref, _, symbols in latents if not self._inline(symbols)]
        needed = self.mode == "process" or (
            self.mode == "auto" and (pooled or max_pixels > INLINE_MAX_PIXELS)
        )
        if not needed or self._executor is not None:
            return
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_preload,
            initargs=(tuple(pooled),),
        )
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, time.sleep, 0.05) for _ in range(self.workers))
        )

    async def latent(
        self, ref: TablesRef, data: bytes, shape: tuple[int, int, int], crc32: int
    ) -> NDArray[Any]:
        """Decode an entropy-coded latent to ``y_hat`` (float32, ``shape``), checking count and CRC32.

        Raises:
            DecodeError: the stream is corrupt, truncated, too long, or its symbols fail the CRC32.
        """
        work = partial(_decode_latent, ref, data, shape, crc32)
        if self._inline(shape[0] * shape[1] * shape[2]):
            return work()
        return await self._pooled(work)

    async def image(self, data: bytes, layout: ImageLayout, codec: str = "png") -> NDArray[Any]:
        """Decode an offloaded image (``codec``: png, jpeg or webp) to the model's uint8 input.

        Raises:
            DecodeError: not that format, corrupt, too large, or of the wrong size, mode or kind.
        """
        work = partial(_decode_image, data, layout, codec)
        if self._executor is None or (
            self.mode == "auto" and layout.height * layout.width <= INLINE_MAX_PIXELS
        ):
            return work()
        return await self._pooled(work)

    def _inline(self, symbols: int) -> bool:
        return self.mode == "inline" or (self.mode == "auto" and symbols <= self.inline_max_symbols)

    async def _pooled(self, work: Callable[[], _T]) -> _T:
        if self._executor is None:
            return work()
        self._pending += 1
        self._metrics.decode_saturation.set(self._pending / self.workers)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self._pending -= 1
            self._metrics.decode_saturation.set(self._pending / self.workers)

    def forget(self, refs: Sequence[TablesRef]) -> None:
        """Drop tables of an unloaded bundle from this process (workers keep theirs until they exit)."""
        for ref in refs:
            _TABLES.pop(ref, None)

    def close(self) -> None:
        """Stop the pool and wait for its workers to exit (no orphaned processes)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
