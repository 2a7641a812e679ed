"""Torch-free entropy codec for bottleneck latents: exact rANS with integer frequency tables.

The bottleneck is trained with CompressAI's ``EntropyBottleneck`` (one learned density per
channel). ``splitserve export`` turns each density into a table of integer frequencies that sum to
``2**precision_bits`` (every bin at least 1, the last bin an escape); edge and cloud code with the
same tables, so decoding is bit-exact by construction: only integer arithmetic touches the stream.

Two coders share the tables (each tables file says which, ``codec_version``, and the wire repeats it):

**Version 2, short latents (up to 4096 symbols: Fashion-MNIST's 588).** A word-based coder's 32-bit
state costs 3-4 bytes per stream, 10-20% of a 30-byte latent. rANS on an unbounded integer state ``x``
needs no renormalisation and no flush; the stream is ``x`` itself, so its length is the information
content plus the start-up cost below (a state that starts at 1) and the last byte's rounding: measured
on the test bundle's Fashion-MNIST latents (2,000 per split and level, int8 heads) 1.7-1.9 bytes on
average per stream, 2.0-2.2 at the 99th percentile, 2.2 at most::

    encode (symbols in reverse):  x <- (x // f[s]) * M + cdf[s] + x % f[s]      (start x = 1)
    decode (symbols in order):    slot = x % M;  s = bin of slot;  x <- f[s] * (x // M) + slot - cdf[s]

While ``x < f[s]`` a symbol costs ``log2(cdf[s] + x)`` bits rather than its information content, so the
coder lays each channel's bins out in order of falling frequency: the most likely value sits at
``cdf = 0`` and a run of them at the start of the state costs nothing (with CompressAI's value-ordered
layout, the first symbol alone cost up to 15 bits). After the last symbol the decoder must be back at
``x == 1``: a truncated or corrupted stream fails that check (and the symbol count) and raises
:class:`DecodeError` instead of decoding garbage. A step costs time linear in the state's length, so
latents are cut into chunks of ``chunk_symbols`` (every chunk but the last prefixed by its byte length,
LEB128); on long latents that costs about 3 bytes a chunk and still grows with the chunk length: the
Lite0 stage3 latent (57 x 14 x 14, 11,172 symbols, 256 per chunk) cost 120 bytes of chunking over its
1.96 KB of information and 0.3 ms to decode.

**Version 3, long latents (more than 4096 symbols).** The same recurrence on a 32-bit state kept in
``[2**23, 2**31)``: before coding a symbol the encoder moves whole low bytes out while the state would
overflow, the decoder reads them back while it is below ``2**23``. One stream, no chunks; it starts
at ``x = 2**23`` (the 23 bits of this start and the 4-byte final state are its whole overhead: 3-4 bytes
per stream, however long) and the decoder must end at exactly that state having read every byte. On the
Lite0 latent: 4 bytes over the information content instead of 120, and decoding 11k symbols in C takes
0.06-0.08 ms (the bins are scanned from the most likely one, so most symbols take one comparison).

Values outside a channel's table are sent as the escape bin followed by the raw value, uniform over
``[-2**15, 2**15)``, so no value is ever clipped silently (values beyond that range are clipped).

Speed: numpy looks up every symbol's table entry at once; the per-symbol recurrence runs in C
(``splitserve.core._rans``, built at install where a C compiler exists; :data:`NATIVE` says whether it
is in use) or else in the Python loops below, which write and read the same bytes. On this project's
2-core dev box, a 588-symbol latent: encode 0.05-0.12 ms in C against 0.22-0.40 ms in Python, decode
0.02-0.03 ms against 0.23-0.43 ms.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import CodecError, CodecVersionError, DecodeError

try:  # the C inner loops, built at install where a C compiler exists; the same bytes either way
    from . import _rans
except ImportError:  # pragma: no cover - depends on the install
    # The module's stub types _rans as present; NATIVE (below) gates every call into it.
    _rans = None  # type: ignore[assignment]
    logging.getLogger(__name__).warning(
        "splitserve.core._rans is not built (no C compiler at install): the codec runs its Python loops, "
        "4-15x slower (a 588-symbol latent: 0.2-0.4 ms instead of 0.02-0.12 ms per encode or decode); "
        "install gcc and the Python headers, then reinstall splitserve"
    )

__all__ = [
    "CHUNK_SYMBOLS",
    "LONG_LATENT_CHUNK",
    "chunk_symbols_for",
    "read_leb128",
    "CODEC_NAME",
    "CODEC_VERSION",
    "NATIVE",
    "EntropyTables",
    "decode",
    "decode_symbols",
    "encode",
    "encode_symbols",
    "predicted_bits",
    "quantize",
    "symbols_crc32",
]

Symbols = NDArray[np.int32]
"""Quantized latent symbols, (C, H, W) or flat, as the coder reads and writes them."""
_Ints = NDArray[np.int64]  # per symbol: coded frequency, cumulative frequency, raw value
_Flags = NDArray[np.bool_]  # per symbol: escaped (out of its channel's table)

CODEC_NAME = "bigrans"
CODEC_VERSION = 2
"""The version of short latents' tables (the big-integer state); tables say their own version."""
STREAM_VERSION = 3
"""The version of long latents' tables (the 32-bit state renormalized a byte at a time)."""
CODEC_VERSIONS = (CODEC_VERSION, STREAM_VERSION)
_L32 = 1 << 23
TABLES_FORMAT = "splitserve.entropy-tables"
CHUNK_SYMBOLS = 4096
LONG_LATENT_CHUNK = 256


def chunk_symbols_for(symbols: int) -> int:
    """The chunk length for a latent of ``symbols``: one chunk up to 4096, else 256 (about 3 bytes each)."""
    return CHUNK_SYMBOLS if symbols <= CHUNK_SYMBOLS else LONG_LATENT_CHUNK


def codec_version_for(symbols: int) -> int:
    """The coder for a latent of ``symbols``: the big-integer state (one chunk) up to 4096, else version 3."""
    return CODEC_VERSION if symbols <= CHUNK_SYMBOLS else STREAM_VERSION
_RAW_BITS = 16
_RAW_HALF = 1 << (_RAW_BITS - 1)


@dataclass(frozen=True)
class EntropyTables:
    """Integer frequency tables for one rate level of one split.

    Attributes:
        step: quantization step of this level: symbols are ``round(y / step - median)``.
        medians: per-channel median of the learned density (CompressAI's ``_get_medians``).
        offsets: per-channel symbol value of table bin 0.
        freqs: per-channel integer frequencies; each row sums to ``2**precision_bits`` and its last
            bin is the escape bin.
        precision_bits: total frequency is ``2**precision_bits``.
        chunk_symbols: version 2: symbols per chunk of the big-integer state.
        codec_version: 2, the big-integer state in chunks (short latents), or 3, the 32-bit state
            renormalized a byte at a time (long latents); see the module doc.
    """

    step: float
    medians: tuple[float, ...]
    offsets: tuple[int, ...]
    freqs: tuple[tuple[int, ...], ...]
    precision_bits: int = 16
    chunk_symbols: int = CHUNK_SYMBOLS
    codec_version: int = CODEC_VERSION

    def __post_init__(self) -> None:
        if not 16 <= self.chunk_symbols <= 1 << 20:
            raise CodecError(f"entropy tables: chunk_symbols {self.chunk_symbols} outside 16..2**20")
        if self.codec_version not in CODEC_VERSIONS:
            raise CodecVersionError(f"entropy tables: codec version {self.codec_version} is not one of {CODEC_VERSIONS}")
        if self.codec_version == STREAM_VERSION and not 1 <= self.precision_bits <= 16:
            raise CodecError(f"entropy tables: version {STREAM_VERSION} codes with precision_bits 1..16")
        object.__setattr__(self, "freqs", tuple(tuple(int(f) for f in row) for row in self.freqs))
        object.__setattr__(self, "offsets", tuple(int(o) for o in self.offsets))
        object.__setattr__(self, "medians", tuple(float(m) for m in self.medians))
        total = 1 << self.precision_bits
        if not (len(self.medians) == len(self.offsets) == len(self.freqs)) or not self.freqs:
            raise CodecError("entropy tables: medians, offsets and freqs must have one entry per channel")
        if not (self.step > 0 and math.isfinite(self.step)):
            raise CodecError(f"entropy tables: invalid step {self.step!r}")
        for c, row in enumerate(self.freqs):
            if len(row) < 2 or min(row) < 1 or sum(row) != total:
                raise CodecError(
                    f"entropy tables: channel {c} frequencies must be >= 1, at least 2 bins, and sum to {total}"
                )
        # The coder's layout: per channel, bins by falling frequency (ties by bin), see the module doc.
        order = tuple(_by_falling_frequency(r) for r in self.freqs)
        rank = []
        for o in order:
            inv = [0] * len(o)
            for pos, b in enumerate(o):
                inv[b] = pos
            rank.append(tuple(inv))
        coded = tuple(tuple(r[b] for b in o) for r, o in zip(self.freqs, order))
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_coded_freqs", coded)
        # The same as padded arrays (per channel: the rank of each bin, then the coded frequency, cdf
        # and bin of each rank): the encoder looks every symbol up at once, the C decoder reads them.
        cdfs = tuple(tuple(_cumsum(r)) for r in coded)
        pad = np.zeros((4, len(self.freqs), max(len(r) for r in self.freqs)), dtype=np.int64)
        for c, rows in enumerate(zip(rank, coded, cdfs, order)):
            for k, row in enumerate(rows):
                pad[k, c, : len(row)] = row
        object.__setattr__(self, "_coded_cdfs", cdfs)
        object.__setattr__(self, "_padded", pad)
        object.__setattr__(self, "_lengths", np.asarray([len(r) for r in self.freqs], dtype=np.int64))
        object.__setattr__(self, "_offsets", np.asarray(self.offsets, dtype=np.int64))

    @property
    def channels(self) -> int:
        return len(self.freqs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLES_FORMAT,
            # version 2 adds chunk_symbols; tables with the old chunk length stay version 1, readable by
            # older builds, and a build that cannot honour another length (or codec version) refuses the file.
            "format_version": 1 if self.chunk_symbols == CHUNK_SYMBOLS else 2,
            **({} if self.chunk_symbols == CHUNK_SYMBOLS else {"chunk_symbols": self.chunk_symbols}),
            "codec": CODEC_NAME,
            "codec_version": self.codec_version,
            "precision_bits": self.precision_bits,
            "step": self.step,
            "medians": list(self.medians),
            "offsets": list(self.offsets),
            "freqs": [list(r) for r in self.freqs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EntropyTables:
        if d.get("format") != TABLES_FORMAT or d.get("codec") != CODEC_NAME:
            raise CodecVersionError(f"not a {CODEC_NAME} entropy-table file (format={d.get('format')!r})")
        if d.get("format_version") not in (1, 2) or d.get("codec_version") not in CODEC_VERSIONS:
            raise CodecVersionError(
                f"entropy tables version {d.get('format_version')}/{d.get('codec_version')} is not supported "
                f"(this build reads 1-2/{'-'.join(map(str, CODEC_VERSIONS))})"
            )
        try:
            return cls(
                step=float(d["step"]),
                medians=tuple(float(m) for m in d["medians"]),
                offsets=tuple(int(o) for o in d["offsets"]),
                freqs=tuple(tuple(int(f) for f in row) for row in d["freqs"]),
                precision_bits=int(d["precision_bits"]),
                chunk_symbols=int(d.get("chunk_symbols", CHUNK_SYMBOLS)) if d["format_version"] == 2 else CHUNK_SYMBOLS,
                codec_version=int(d["codec_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"malformed entropy tables: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> EntropyTables:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _cumsum(row: tuple[int, ...]) -> list[int]:
    out, acc = [], 0
    for f in row:
        out.append(acc)
        acc += f
    return out


def _by_falling_frequency(row: tuple[int, ...]) -> tuple[int, ...]:
    """The bins of one channel's ``row`` by falling frequency, ties by bin."""
    return tuple(sorted(range(len(row)), key=lambda b: (-row[b], b)))


def quantize(y: NDArray[np.floating[Any]], tables: EntropyTables) -> Symbols:
    """Latent ``y`` of shape (C, H, W) to integer symbols ``round(y / step - median)``."""
    if y.ndim != 3 or y.shape[0] != tables.channels:
        raise CodecError(f"latent shape {tuple(y.shape)} does not match {tables.channels} channels")
    med = np.asarray(tables.medians, dtype=np.float32)[:, None, None]
    q = np.rint(y.astype(np.float32) / np.float32(tables.step) - med)
    return np.clip(q, -_RAW_HALF, _RAW_HALF - 1).astype(np.int32)


def dequantize(q: Symbols, tables: EntropyTables) -> NDArray[np.float32]:
    med = np.asarray(tables.medians, dtype=np.float32)[:, None, None]
    return ((q.astype(np.float32) + med) * np.float32(tables.step)).astype(np.float32)


def _lookup(q: Symbols, tables: EntropyTables) -> tuple[_Ints, _Ints, _Flags]:
    """Per symbol (flattened C-major): its coded frequency, its coded cumulative frequency, and
    whether it is out of its channel's table (sent as the escape bin plus the raw value)."""
    c, h, w = q.shape
    offsets = np.asarray(tables.offsets, dtype=np.int64)[:, None, None]
    escape = np.asarray([len(r) - 1 for r in tables.freqs], dtype=np.int64)[:, None, None]
    idx = q.astype(np.int64) - offsets
    escaped = (idx < 0) | (idx >= escape)
    bins = np.where(escaped, escape, idx).reshape(-1)
    chans = np.repeat(np.arange(c), h * w)
    table = tables._padded  # type: ignore[attr-defined]
    ranks = table[0, chans, bins]
    return table[1, chans, ranks], table[2, chans, ranks], escaped.reshape(-1)


def encode_symbols(q: Symbols, tables: EntropyTables) -> bytes:
    """Entropy-code integer symbols of shape (C, H, W)."""
    freqs, cdfs, escaped = _lookup(q, tables)
    raw = q.reshape(-1).astype(np.int64) + _RAW_HALF
    if tables.codec_version == STREAM_VERSION:
        return _encode_stream32(freqs, cdfs, escaped, raw, tables.precision_bits)
    return _encode_stream(freqs, cdfs, escaped, raw, tables.precision_bits, tables.chunk_symbols)


def _encode_stream32_py(freqs: _Ints, cdfs: _Ints, escaped: _Flags, raw: _Ints, shift: int) -> bytes:
    """Version 3: the 32-bit state, renormalized a byte at a time (rANS codes in reverse)."""
    out = bytearray()  # the bytes in the order they are emitted; the stream is the state, then them reversed
    x = _L32

    def put(x: int, f: int, cdf: int, bits: int) -> int:
        x_max = ((_L32 >> bits) << 8) * f
        while x >= x_max:
            out.append(x & 0xFF)
            x >>= 8
        d, r = divmod(x, f)
        return (d << bits) + cdf + r

    for f, cdf, esc, value in zip(freqs[::-1].tolist(), cdfs[::-1].tolist(), escaped[::-1].tolist(), raw[::-1].tolist()):
        if esc:
            x = put(x, 1, value, _RAW_BITS)
        x = put(x, f, cdf, shift)
    return x.to_bytes(4, "big") + bytes(reversed(out))


def _encode_stream32_c(freqs: _Ints, cdfs: _Ints, escaped: _Flags, raw: _Ints, shift: int) -> bytes:
    """:func:`_encode_stream32_py` in the C module: the same bytes."""
    c = np.ascontiguousarray
    flags = c(escaped, dtype=np.uint8)
    return _rans.encode_stream32(c(freqs), c(cdfs), flags, c(raw), shift)


def _encode_stream_py(
    freqs: _Ints, cdfs: _Ints, escaped: _Flags, raw: _Ints, shift: int, chunk_len: int
) -> bytes:
    """Every chunk coded on its own, each but the last prefixed by its byte length (LEB128)."""
    out = bytearray()
    n = len(freqs)
    for start in range(0, n, chunk_len):
        part = slice(start, min(start + chunk_len, n))
        chunk = _encode_chunk_py(freqs[part], cdfs[part], escaped[part], raw[part], shift)
        if part.stop < n:
            out += _leb128(len(chunk))
        out += chunk
    return bytes(out)


def _encode_chunk_py(
    freqs: _Ints, cdfs: _Ints, escaped: _Flags, raw: _Ints, shift: int
) -> bytes:
    """One chunk (rANS codes in reverse)."""
    x = 1
    if escaped.any():
        for f, cdf, esc, value in zip(
            freqs[::-1].tolist(), cdfs[::-1].tolist(), escaped[::-1].tolist(), raw[::-1].tolist()
        ):
            if esc:  # the raw value is decoded right after the escape bin
                x = (x << _RAW_BITS) | value
            d, r = divmod(x, f)
            x = (d << shift) + cdf + r
    else:  # the common case, kept to two operations per symbol
        for f, cdf in zip(freqs[::-1].tolist(), cdfs[::-1].tolist()):
            d, r = divmod(x, f)
            x = (d << shift) + cdf + r
    return x.to_bytes((x.bit_length() + 7) // 8, "little")


def _encode_stream_c(
    freqs: _Ints, cdfs: _Ints, escaped: _Flags, raw: _Ints, shift: int, chunk_len: int
) -> bytes:
    """:func:`_encode_stream_py` in one call of the C module: the same bytes."""
    flags = np.ascontiguousarray(escaped, dtype=np.uint8)
    c = np.ascontiguousarray
    return _rans.encode_chunks(c(freqs), c(cdfs), flags, c(raw), shift, chunk_len)


def decode_symbols(data: bytes, shape: tuple[int, int, int], tables: EntropyTables) -> Symbols:
    """Inverse of :func:`encode_symbols`; raises :class:`DecodeError` on any inconsistency."""
    c, h, w = shape
    if c != tables.channels or h <= 0 or w <= 0:
        raise DecodeError(f"shape {shape} does not match the entropy tables ({tables.channels} channels)")
    out = np.empty(c * h * w, dtype=np.int32)
    if tables.codec_version == STREAM_VERSION:
        status = _decode_stream32(data, out, h * w, tables)
    else:
        status = _decode_stream(data, out, h * w, tables)
    if status:
        raise DecodeError(_DECODE_ERRORS[status])
    return out.reshape(shape)


_DECODE_ERRORS = {  # what a stream decoder's non-zero status means
    1: "bitstream truncated in a chunk length",
    2: "bitstream truncated or not canonical",
    3: "bitstream chunk is too long for its symbols",
    4: "bitstream corrupt: rANS state did not return to its initial value",
    5: "bitstream has trailing bytes",
}


def _max_chunk_bits(tables: EntropyTables) -> int:
    """Each symbol adds at most precision + 1 bits to the state (+16 for an escaped raw value)."""
    return tables.precision_bits + 1 + _RAW_BITS


def _decode_stream_py(data: bytes, out: NDArray[np.int32], hw: int, tables: EntropyTables) -> int:
    """All ``len(out)`` symbols of a stream into ``out``: 0, or the first problem (:data:`_DECODE_ERRORS`)."""
    n, pos, chunk_len = len(out), 0, tables.chunk_symbols
    for start in range(0, n, chunk_len):
        stop = min(start + chunk_len, n)
        if stop < n:
            try:
                length, pos = read_leb128(data, pos)
            except ValueError:
                return 1
        else:
            length = len(data) - pos
        chunk = data[pos : pos + length]
        pos += length
        if len(chunk) != length or length <= 0 or chunk[-1] == 0:
            return 2
        if 8 * (length - 1) > (stop - start) * _max_chunk_bits(tables):
            return 3
        if not _decode_chunk_py(chunk, out[start:stop], start, hw, tables):
            return 4
    return 5 if pos != len(data) else 0


def _decode_chunk_py(chunk: bytes, out: NDArray[np.int32], start: int, hw: int, tables: EntropyTables) -> bool:
    """Decode ``len(out)`` symbols from flat position ``start``; whether the state came back to 1."""
    freqs, orders, shift = tables._coded_freqs, tables._order, tables.precision_bits  # type: ignore[attr-defined]
    cdfs = tables._coded_cdfs  # type: ignore[attr-defined]
    mask = (1 << shift) - 1
    x = int.from_bytes(chunk, "little")
    values = [0] * len(out)
    for k in range(len(out)):
        ch = (start + k) // hw
        row, cdf, order = freqs[ch], cdfs[ch], orders[ch]
        slot = x & mask
        s = bisect.bisect_right(cdf, slot) - 1
        x = row[s] * (x >> shift) + slot - cdf[s]
        b = order[s]
        if b == len(row) - 1:
            values[k] = (x & 0xFFFF) - _RAW_HALF
            x >>= _RAW_BITS
        else:
            values[k] = b + tables.offsets[ch]
    out[:] = values
    return x == 1


def _decode_stream_c(data: bytes, out: NDArray[np.int32], hw: int, tables: EntropyTables) -> int:
    """:func:`_decode_stream_py` in one call of the C module: the same symbols and the same status."""
    pad = tables._padded  # type: ignore[attr-defined]
    return int(_rans.decode_chunks(
        data, out, hw, pad[2], pad[3], tables._lengths, tables._offsets,  # type: ignore[attr-defined]
        tables.precision_bits, tables.chunk_symbols, _max_chunk_bits(tables),
    ))


def _decode_stream32_py(data: bytes, out: NDArray[np.int32], hw: int, tables: EntropyTables) -> int:
    """Version 3, the inverse of :func:`_encode_stream32_py`: 0, or the first problem (:data:`_DECODE_ERRORS`)."""
    freqs, orders, shift = tables._coded_freqs, tables._order, tables.precision_bits  # type: ignore[attr-defined]
    cdfs = tables._coded_cdfs  # type: ignore[attr-defined]
    mask, n = (1 << shift) - 1, len(data)
    if n < 4:
        return 2
    x, pos = int.from_bytes(data[:4], "big"), 4
    if not _L32 <= x < _L32 << 8:
        return 2
    values = [0] * len(out)
    for k in range(len(out)):
        ch = k // hw
        row, cdf, order = freqs[ch], cdfs[ch], orders[ch]
        slot = x & mask
        s = bisect.bisect_right(cdf, slot) - 1
        x = row[s] * (x >> shift) + slot - cdf[s]
        while x < _L32 and pos < n:
            x, pos = (x << 8) | data[pos], pos + 1
        if order[s] == len(row) - 1:  # the raw value follows its escape bin
            values[k] = (x & 0xFFFF) - _RAW_HALF
            x >>= _RAW_BITS
            while x < _L32 and pos < n:
                x, pos = (x << 8) | data[pos], pos + 1
        else:
            values[k] = order[s] + tables.offsets[ch]
        if x < _L32:
            return 2
    out[:] = values
    return 4 if x != _L32 else 5 if pos != n else 0


def _decode_stream32_c(data: bytes, out: NDArray[np.int32], hw: int, tables: EntropyTables) -> int:
    """:func:`_decode_stream32_py` in the C module: the same symbols and the same status."""
    pad = tables._padded  # type: ignore[attr-defined]
    return int(_rans.decode_stream32(
        data, out, hw, pad[2], pad[3], tables._lengths, tables._offsets, tables.precision_bits,  # type: ignore[attr-defined]
    ))


def encode(y: NDArray[np.floating[Any]], tables: EntropyTables) -> tuple[bytes, Symbols]:
    """Quantize and code a latent of shape (C, H, W); returns the stream and the symbols."""
    q = quantize(y, tables)
    return encode_symbols(q, tables), q


def decode(data: bytes, shape: tuple[int, int, int], tables: EntropyTables) -> tuple[NDArray[np.float32], Symbols]:
    """Decode a stream to the dequantized latent ``y_hat`` (float32) and its symbols."""
    q = decode_symbols(data, shape, tables)
    return dequantize(q, tables), q


def predicted_bits(q: Symbols, tables: EntropyTables) -> float:
    """Information content of symbols under the tables, in bits: what an ideal coder would emit."""
    freqs, _, escaped = _lookup(q, tables)
    return float(-np.log2(freqs / (1 << tables.precision_bits)).sum()) + int(escaped.sum()) * _RAW_BITS


def symbols_crc32(q: Symbols) -> int:
    """CRC32 of the symbols as little-endian int32: sent beside the stream so a desync is an error."""
    return zlib.crc32(np.ascontiguousarray(q, dtype="<i4").tobytes())


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_leb128(data: bytes, pos: int, max_bits: int = 35) -> tuple[int, int]:
    """The unsigned LEB128 (protobuf varint) at ``data[pos]`` and the position after it.

    Raises:
        ValueError: truncated, or longer than ``max_bits``.
    """
    n = shift = 0
    while True:
        if pos >= len(data) or shift >= max_bits:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


NATIVE = _rans is not None
"""Whether the C inner loops are in use (else the Python ones: the same bytes, 4-15x slower)."""
_encode_stream = _encode_stream_c if NATIVE else _encode_stream_py
_decode_stream = _decode_stream_c if NATIVE else _decode_stream_py
_encode_stream32 = _encode_stream32_c if NATIVE else _encode_stream32_py
_decode_stream32 = _decode_stream32_c if NATIVE else _decode_stream32_py
