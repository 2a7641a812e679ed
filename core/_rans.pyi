"""Types of the C inner loops (core/_rans.c); see the pure-Python twins in codec.py."""

from typing import Any

from numpy.typing import NDArray
from typing_extensions import Buffer

_In = Buffer | NDArray[Any]  # read as a C-contiguous buffer (y*)
_Out = Buffer | NDArray[Any]  # written in place (w*)

def encode_chunks(freqs: _In, cdfs: _In, escaped: _In, raw: _In, shift: int, chunk_len: int, /) -> bytes: ...
def decode_chunks(
    data: _In, out: _Out, hw: int, cdfs: _In, ranks: _In, lengths: _In, offsets: _In,
    shift: int, chunk_len: int, max_bits: int, /,
) -> int: ...
def encode_stream32(freqs: _In, cdfs: _In, escaped: _In, raw: _In, shift: int, /) -> bytes: ...
def decode_stream32(
    data: _In, out: _Out, hw: int, cdfs: _In, ranks: _In, lengths: _In, offsets: _In, shift: int, /
) -> int: ...
