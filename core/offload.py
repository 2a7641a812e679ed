"""Offload options: the model input sent whole, as PNG (level 0) or as JPEG/WebP at a quality.

A bundle's manifest lists its offload levels (``offload.levels``, beside the PNG fields of level 0;
parsed whole by ``core.bundle.OffloadInfo``); each names a codec and quality, and the bytes and accuracy
the exporter measured by encoding its evaluation set with :func:`encode_image`: the function the edge
client sends with, so the orchestrator prices an option with the bytes the client will send. The
endpoint decodes what the level names and nothing else (``cloud/_decode.py``).

Pillow is imported where it runs: only the lossy levels need it (the edge and cloud extras have it).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import BundleError, RequestError
from .png import png_bytes

__all__ = ["LOSSY_CODECS", "OFFLOAD_CODECS", "OffloadLevel", "encode_image"]

OFFLOAD_CODECS = ("png", "jpeg", "webp")
LOSSY_CODECS = ("jpeg", "webp")
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class OffloadLevel:
    """One offload option of a bundle.

    Attributes:
        level: 0 for PNG (lossless), 1.. for the lossy levels, as sent on the wire.
        codec: ``"png"``, ``"jpeg"`` or ``"webp"``.
        quality: the encoder's quality (1-100) for a lossy codec; ``None`` for PNG.
        bytes_per_sample: mean payload bytes the exporter measured on its evaluation set.
        accuracy: agreement (or top-1) of the whole model on the decoded images, measured at export.
    """

    level: int
    codec: str
    quality: int | None
    bytes_per_sample: float
    accuracy: float

    @property
    def label(self) -> str:
        """``"png"``, ``"jpeg q90"``: what a person reads in a table."""
        return self.codec if self.quality is None else f"{self.codec} q{self.quality}"

    def encode(self, x: NDArray[Any]) -> bytes:
        """The payload of this level for model input ``x`` (C, H, W) uint8."""
        return encode_image(x, self.codec, self.quality)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OffloadLevel:
        """Parse one level as the manifest writes it (see :meth:`to_dict`).

        Raises:
            BundleError: level 0 that is not PNG, a level in 1..255 without a lossy codec and a quality in
                1..100, or figures out of range.
        """
        try:
            level = cls(
                level=int(d["level"]),
                codec=str(d["codec"]),
                quality=None if d.get("quality") is None else int(d["quality"]),
                bytes_per_sample=float(d["bytes_per_sample"]),
                accuracy=float(d["accuracy"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed manifest: offload level {dict(d)!r}: {exc}") from None
        level._check()
        return level

    def to_dict(self) -> dict[str, Any]:
        """A lossy level's entry of ``offload.levels``: exactly what :meth:`from_dict` reads."""
        return asdict(self)

    def _check(self) -> None:
        lossy = self.codec in LOSSY_CODECS
        ok = (
            (self.level == 0 and self.codec == "png") or (1 <= self.level <= 255 and lossy)
        ) and (not lossy or (self.quality is not None and 1 <= self.quality <= 100))
        figures = math.isfinite(self.bytes_per_sample) and 0 <= self.bytes_per_sample < 1 << 30
        if not (ok and figures and 0.0 <= self.accuracy <= 1.0):
            raise BundleError(
                f"malformed manifest: offload level {self.level} ({self.codec}, quality {self.quality}): level 0 "
                "is png, levels 1-255 are jpeg or webp with a quality in 1..100, and figures must be in range"
            )


def encode_image(x: NDArray[Any], codec: str, quality: int | None = None) -> bytes:
    """``x`` (C, H, W) uint8 with 1 or 3 channels as a PNG, or as a baseline JPEG or lossy WebP at
    ``quality`` (Pillow's defaults otherwise: 4:2:0 chroma for JPEG, method 4 for WebP).

    Raises:
        RequestError: not 1 or 3 channels, an unknown codec, or a lossy codec without a quality in 1..100.
    """
    if codec == "png":
        return png_bytes(x)
    if codec not in _PIL_FORMAT:
        raise RequestError(f"offload codec {codec!r} is not one of {OFFLOAD_CODECS}")
    if quality is None or not 1 <= quality <= 100:
        raise RequestError(f"offload codec {codec} needs a quality in 1..100, not {quality!r}")
    c = x.shape[0]
    if x.ndim != 3 or c not in (1, 3):
        raise RequestError(f"only 1- or 3-channel inputs can be offloaded as {codec}, this one is {x.shape}")
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(x[0] if c == 1 else x.transpose(1, 2, 0)))
    buf = io.BytesIO()
    image.save(buf, format=_PIL_FORMAT[codec], quality=int(quality))
    return buf.getvalue()
