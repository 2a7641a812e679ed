"""The bundles an endpoint serves, and what each request needs from them.

A request is checked against the bundle it names here (:class:`ServedBundle`: its split and level, codec
and version, shape and payload bounds), before any work is done; the servicer only calls the checks.
Several bundles (models, and versions of one model) are served at once. A request names a model and
optionally a version; an empty version selects the newest one served (versions compare naturally:
``"1.10" > "1.9"``). Publishing a new version is one dictionary swap on the event loop, and a version
being removed stops taking requests first and is unloaded after its in-flight requests finish, so a
version change drops no traffic.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.core.codec import CODEC_NAME, STREAM_VERSION, EntropyTables
from splitserve.core.errors import (
    CodecVersionError,
    DuplicateRegistrationError,
    RequestError,
    UnknownModelError,
)
from splitserve.core.wire import WireOption, offload_codecs, wire_id, wire_options
from splitserve.protos.v1 import inference_pb2 as pb

from ._decode import ImageLayout, TablesRef

__all__ = ["MAX_NAME", "ModelRegistry", "ServedBundle", "TailSpec", "version_key"]

TAIL_INPUT = "y_hat"
FULL_INPUT = "image"
OUTPUT = "logits"
MAX_NAME = 128  # longest name a request may carry (and the most of one an error message repeats)
_IMAGE_CODEC_VERSIONS = (0, 1)


@dataclass(frozen=True)
class TailSpec:
    """One model a backend runs: the tail of a split, or the whole model for offload.

    Attributes:
        model: bundle (model) name.
        version: bundle version.
        split: split name, or :data:`OFFLOAD_SPLIT` for the whole model.
        onnx: ONNX file the embedded backend runs.
        triton_model: Triton model name in the bundle's repositories.
        triton_dir: the bundle's python-backend model directory (``triton/python/<triton_model>``).
        input_name: ONNX/Triton input tensor name (``y_hat`` or ``image``).
        input_dtype: numpy dtype of that input.
        input_shape: input shape without the batch axis.
    """

    model: str
    version: str
    split: str
    onnx: Path
    triton_model: str
    triton_dir: Path
    input_name: str
    input_dtype: np.dtype[Any]
    input_shape: tuple[int, ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.version, self.split)


@dataclass(frozen=True)
class _Level:
    ref: TablesRef
    tables: EntropyTables
    max_bytes: int


@dataclass(frozen=True)
class _Split:
    name: str
    latent_shape: tuple[int, int, int]
    levels: dict[int, _Level]


@dataclass
class ServedBundle:
    """An opened bundle with everything the request path looks up, precomputed.

    Attributes:
        bundle: the verified bundle.
        splits: latent splits by name, with their levels' tables and payload bounds.
        tails: what the backend runs, by split name (the offload model under :data:`OFFLOAD_SPLIT`).
        image: the offload input layout, or ``None`` when the bundle has no offload model.
        offload_codecs: the image codec of each offload level (0: ``"png"``; JPEG/WebP levels from 1).
        wire_id: the bundle's id in compact requests (:func:`splitserve.core.wire.wire_id`).
        options: its compact requests' options by index (:func:`splitserve.core.wire.wire_options`).
        inflight: requests currently using this bundle (drained before it is unloaded).
    """

    bundle: Bundle
    splits: dict[str, _Split]
    tails: dict[str, TailSpec]
    image: ImageLayout | None
    offload_codecs: dict[int, str] = field(default_factory=dict)
    wire_id: int = 0
    options: tuple[WireOption, ...] = ()
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    @property
    def num_classes(self) -> int:
        return len(self.bundle.manifest.classes)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ServedBundle:
        """Precompute tables references, payload bounds and backend specs of ``bundle``.

        Raises:
            BundleError: the manifest names files the bundle lacks, or a malformed offload level.
        """
        m = bundle.manifest
        splits: dict[str, _Split] = {}
        tails: dict[str, TailSpec] = {}
        for s in m.splits:
            c, h, w = s.latent_shape
            levels = {}
            for info in s.levels:
                tables = bundle.tables(s.name, info.level)
                levels[info.level] = _Level(
                    TablesRef(str(bundle.path(info.tables)), m.files[info.tables]),
                    tables,
                    _max_stream_bytes(c * h * w, tables),
                )
            splits[s.name] = _Split(s.name, s.latent_shape, levels)
            tails[s.name] = _spec(
                bundle, s.name, s.tail_model, s.tail_onnx, TAIL_INPUT, np.float32, s.latent_shape
            )
        image, codecs = None, offload_codecs(m)
        if codecs:
            image = ImageLayout.from_shape(m.input_shape)
            tails[OFFLOAD_SPLIT] = _spec(
                bundle,
                OFFLOAD_SPLIT,
                m.offload.triton_model,
                m.offload.onnx,
                FULL_INPUT,
                np.uint8,
                m.input_shape,
            )
        return cls(bundle, splits, tails, image, codecs, wire_id(m), wire_options(m))

    @property
    def image_pixels(self) -> int:
        """Pixels of the offload image (0 without offload)."""
        return self.image.height * self.image.width if self.image else 0

    def decode_work(self) -> list[tuple[TablesRef, EntropyTables, int]]:
        """The tables of every (split, level) with the symbols per latent of its split."""
        return [
            (level.ref, level.tables, math.prod(split.latent_shape))
            for split in self.splits.values()
            for level in split.levels.values()
        ]

    def split(self, name: str) -> _Split:
        """The latent split ``name``.

        Raises:
            UnknownModelError: no such split (NOT_FOUND).
        """
        try:
            return self.splits[name]
        except KeyError:
            known = [*self.splits, *([OFFLOAD_SPLIT] if self.image else [])]
            raise UnknownModelError(
                f"model {self.name!r} version {self.version!r} has no split {name!r} (splits: {known})"
            ) from None

    def latent_level(self, split: _Split, level: int) -> _Level:
        """Level ``level`` of the latent split ``split``.

        Raises:
            UnknownModelError: no such level (NOT_FOUND).
        """
        found = split.levels.get(level)
        if found is None:
            raise UnknownModelError(
                f"split {split.name!r} of {self.name} {self.version} has no level {level} "
                f"(levels: {sorted(split.levels)})"
            )
        return found

    def check_latent(self, split: _Split, level: int, tensor: pb.CompressedTensor) -> None:
        """Check a latent payload against the split and level it names (both served).

        Raises:
            RequestError: another codec, another shape than the split's latent, or a payload size no
                stream of this level can have (INVALID_ARGUMENT).
            CodecVersionError: the codec version of the level's tables differs.
        """
        tables, max_bytes = split.levels[level].tables, split.levels[level].max_bytes
        if tensor.codec != CODEC_NAME:
            raise RequestError(
                f"split {split.name!r} takes codec {CODEC_NAME!r}, not {tensor.codec[:MAX_NAME]!r}"
            )
        if tensor.codec_version != tables.codec_version:
            raise CodecVersionError(
                f"codec {CODEC_NAME} version {tensor.codec_version} does not match split {split.name!r} level "
                f"{level}, whose tables code with version {tables.codec_version}"
            )
        shape = tuple(tensor.shape)
        if shape != split.latent_shape:
            raise RequestError(
                f"tensor shape {list(shape[:8])} does not match split {split.name!r}'s latent shape "
                f"{list(split.latent_shape)}"
            )
        size = len(tensor.data)
        if not 0 < size <= max_bytes:
            raise RequestError(
                f"payload of {size} bytes is outside the bounds of this latent (1 to {max_bytes} bytes)"
            )

    def offload_layout(self) -> ImageLayout:
        """The input layout of the offload model.

        Raises:
            UnknownModelError: the bundle serves no offload model (NOT_FOUND).
        """
        if self.image is None:
            raise UnknownModelError(
                f"{self.name} {self.version} serves no offload model (split {OFFLOAD_SPLIT!r})"
            )
        return self.image

    def offload_codec(self, level: int) -> str:
        """The image codec of offload ``level``.

        Raises:
            UnknownModelError: no such offload level (NOT_FOUND).
        """
        image_codec = self.offload_codecs.get(level)
        if image_codec is None:
            raise UnknownModelError(
                f"split {OFFLOAD_SPLIT!r} has no level {level} (levels: {sorted(self.offload_codecs)})"
            )
        return image_codec

    def check_image(self, level: int, tensor: pb.CompressedTensor) -> None:
        """Check an offload payload against the (served) offload level it names.

        Raises:
            RequestError: another codec than the level's, another shape than the input's, or no payload
                (INVALID_ARGUMENT).
            CodecVersionError: an image codec version other than 0 or 1.
        """
        image_codec, image = self.offload_codecs[level], self.offload_layout()
        if tensor.codec != image_codec:
            raise RequestError(
                f"split {OFFLOAD_SPLIT!r} level {level} takes codec {image_codec!r}, "
                f"not {tensor.codec[:MAX_NAME]!r}"
            )
        if tensor.codec_version not in _IMAGE_CODEC_VERSIONS:
            raise CodecVersionError(
                f"codec {image_codec} version {tensor.codec_version} is not supported (0 or 1)"
            )
        if tensor.shape and tuple(tensor.shape) != image.shape:
            raise RequestError(
                f"tensor shape {list(tensor.shape[:8])} does not match the input shape {list(image.shape)}"
            )
        if not tensor.data:
            raise RequestError("payload is empty")

    def option(self, index: int) -> WireOption:
        """The split and level of compact option ``index``.

        Raises:
            UnknownModelError: no such option (NOT_FOUND).
        """
        if not 0 <= index < len(self.options):
            raise UnknownModelError(
                f"{self.name} {self.version} has no option {index} (options 0 to {len(self.options) - 1})"
            )
        return self.options[index]

    def acquire(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Return once no request uses this bundle."""
        if self.inflight:
            await self._idle.wait()


def _spec(
    bundle: Bundle,
    split: str,
    triton_model: str,
    onnx_rel: str,
    input_name: str,
    dtype: type,
    shape: tuple[int, ...],
) -> TailSpec:
    triton_dir = bundle.root / "triton" / "python" / triton_model
    bundle.path(f"triton/python/{triton_model}/config.pbtxt")  # raises BundleError if the bundle lacks it
    return TailSpec(
        model=bundle.manifest.name,
        version=bundle.manifest.version,
        split=split,
        onnx=bundle.path(onnx_rel),
        triton_model=triton_model,
        triton_dir=triton_dir,
        input_name=input_name,
        input_dtype=np.dtype(dtype),
        input_shape=tuple(int(v) for v in shape),
    )


def _max_stream_bytes(symbols: int, tables: EntropyTables) -> int:
    """An upper bound on a valid stream's length: every symbol an escape of the rarest bin."""
    chunks = 1 if tables.codec_version == STREAM_VERSION else math.ceil(symbols / tables.chunk_symbols)
    return math.ceil(symbols * (tables.precision_bits + 16) / 8) + 6 * chunks


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: digit runs compare as numbers, so ``"1.10"`` sorts after ``"1.9"``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d]+", version))


class ModelRegistry:
    """The served bundles by (name, version)."""

    def __init__(self) -> None:
        self._bundles: dict[tuple[str, str], ServedBundle] = {}
        self._newest: dict[str, ServedBundle] = {}
        self._by_wire_id: dict[int, ServedBundle] = {}

    def __iter__(self) -> Iterator[ServedBundle]:
        return iter(sorted(self._bundles.values(), key=lambda b: (b.name, version_key(b.version))))

    def __len__(self) -> int:
        return len(self._bundles)

    def __contains__(self, key: object) -> bool:
        return key in self._bundles

    def add(self, served: ServedBundle) -> None:
        """Publish a loaded bundle.

        Raises:
            DuplicateRegistrationError: this (name, version), or a bundle of the same wire id, is already
                served.
        """
        key = (served.name, served.version)
        if key in self._bundles:
            raise DuplicateRegistrationError(f"model {key[0]!r} version {key[1]!r} is already served")
        other = self._by_wire_id.get(served.wire_id)
        if other is not None:
            raise DuplicateRegistrationError(
                f"{served.name} {served.version} has the wire id {served.wire_id:#010x} of the served "
                f"{other.name} {other.version}: re-export one of them"
            )
        self._bundles[key] = served
        self._by_wire_id[served.wire_id] = served
        self._refresh(served.name)

    def remove(self, name: str, version: str) -> ServedBundle:
        """Stop routing requests to (name, version) and return it (the caller drains and unloads it).

        Raises:
            UnknownModelError: it is not served.
        """
        try:
            served = self._bundles.pop((name, version))
        except KeyError:
            raise UnknownModelError(f"model {name!r} version {version!r} is not served") from None
        self._by_wire_id.pop(served.wire_id, None)
        self._refresh(name)
        return served

    def by_wire_id(self, bundle_id: int) -> ServedBundle:
        """The bundle a compact request names by its wire id.

        Raises:
            UnknownModelError: no served bundle has that id (NOT_FOUND): the client's bundle differs from
                every served one.
        """
        served = self._by_wire_id.get(bundle_id)
        if served is None:
            served_now = ", ".join(f"{b.name} {b.version}" for b in self) or "none"
            raise UnknownModelError(
                f"no served bundle has wire id {bundle_id:#010x}: the client's bundle differs from every "
                f"bundle served here ({served_now}); give the client the served bundle"
            )
        return served

    def resolve(self, model: str, version: str) -> ServedBundle:
        """The bundle a request for ``model`` and ``version`` (empty: newest) goes to.

        Raises:
            UnknownModelError: no such model or version (NOT_FOUND).
        """
        served = self._bundles.get((model, version)) if version else self._newest.get(model)
        if served is None:
            if model not in self._newest:
                raise UnknownModelError(
                    f"model {model!r} is not served here (models: {sorted(self._newest)})"
                )
            versions = sorted((v for n, v in self._bundles if n == model), key=version_key)
            raise UnknownModelError(f"model {model!r} has no version {version!r} here (versions: {versions})")
        return served

    def _refresh(self, name: str) -> None:
        versions = [b for (n, _), b in self._bundles.items() if n == name]
        if versions:
            self._newest[name] = max(versions, key=lambda b: version_key(b.version))
        else:
            self._newest.pop(name, None)
