"""What runs on the device: ONNX Runtime sessions of the heads and the whole model, all loaded at start.

::

    image (array, PIL image or file) --to_input--> uint8 (C, H, W)
        split:   --head(split)--> latent y --encode(split, level)--> bitstream + symbols CRC32
        offload: --png--> PNG bytes
        local:   --local--> logits (the whole model: the fallback when the endpoint fails)

Every head the policy may pick, the local model and the entropy tables of every level are loaded in
the constructor, so a change of split or level later never loads anything. With ``precision="auto"``
(the client's default) both the int8 and the fp32 file of each model are timed here, interleaved, and
only the faster one is kept: a small int8 head can be slower than its fp32 twin on CPUs without int8
dot-product instructions (DESIGN.md, pitfalls; ``results/edge.json`` has the figures for this CPU).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.codec import EntropyTables
from splitserve.core.errors import BundleError, RequestError, UnknownModelError
from splitserve.core.offload import OffloadLevel
from splitserve.core.png import png_bytes
from splitserve.orchestrator import DeviceLatency

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["EdgeRuntime", "ImageLike", "load_session", "png_bytes", "session_options", "to_input"]

ImageLike = Union[NDArray[Any], "Image.Image", str, Path, bytes]
"""An input: a uint8 array ``(C, H, W)``, ``(H, W)`` or ``(H, W, C)`` of the model's size, an
``(H, W, C)`` photo of any size, a PIL image, an image file, or the bytes of one (JPEG, PNG, WebP...);
photos, images, files and bytes need pillow and get the bundle's preprocessing; arrays of the model's
size need nothing beyond numpy."""

_WARMUP = 2
_CHOICE_ROUNDS = 7  # interleaved rounds of the fp32/int8 timing behind precision="auto"
_CHOICE_CALLS = 8  # calls per model per round


def session_options(threads: int = 1) -> ort.SessionOptions:
    """ONNX Runtime options for one request at a time: ``threads`` intra-op threads (0: ORT's choice),
    sequential execution, every graph optimisation.

    All optimisations: QDQ pairs fuse into QLinearConv/QLinearAdd (NHWC) and fp32 convs get the NCHWc
    kernels; measured here, the extended level alone is 1.05-2x slower for both precisions.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def load_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of the ``.onnx`` file ``path`` with :func:`session_options`."""
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class _Model:
    """One loaded ONNX model with its input and output names."""

    def __init__(self, session: ort.InferenceSession, precision: str) -> None:
        self.session = session
        self.precision = precision
        self.input = session.get_inputs()[0].name
        self.output = [session.get_outputs()[0].name]

    def __call__(self, x: NDArray[Any]) -> NDArray[Any]:
        out: NDArray[Any] = self.session.run(self.output, {self.input: x[None]})[0][0]
        return out


class EdgeRuntime:
    """Preloaded heads, entropy tables and local model of one bundle.

    Args:
        bundle: the opened bundle.
        splits: splits whose heads to load (the ones the policy may pick).
        precision: ``int8``, ``fp32`` or ``auto`` (time both, keep the faster).
        threads: ONNX Runtime intra-op threads per session.
        slowdown: emulate a device this many times slower than this one: the head, entropy coding,
            local model and offload encoding are each padded by a sleep to ``slowdown`` times what they
            took here (``EdgeConfig.device_slowdown``).
        offload: the offload levels the policy may pick (0: PNG); :meth:`measure` times only these
            (default: every level the bundle has).

    Raises:
        BundleError: the bundle lacks a model file or the local model.
        UnknownModelError: a split is not in the bundle.
    """

    def __init__(
        self, bundle: Bundle, splits: Iterable[str], *, precision: str = "int8", threads: int = 1,
        slowdown: float = 1.0, offload: Iterable[int] | None = None,
    ) -> None:
        self.bundle = bundle
        self.slowdown = slowdown
        self.emulated: DeviceLatency | None = None
        self.manifest = m = bundle.manifest
        self.input_shape: tuple[int, ...] = tuple(m.input_shape)
        self._threads = threads
        self._sample = np.random.default_rng(0).integers(0, 256, self.input_shape, dtype=np.uint8)
        self.heads: dict[str, _Model] = {}
        self.tables: dict[tuple[str, int], EntropyTables] = {}
        for name in dict.fromkeys(splits):
            info = m.split(name)
            self.heads[name] = self._load(info.head_int8, info.head_fp32, precision)
            for lv in info.levels:
                self.tables[(name, lv.level)] = bundle.tables(name, lv.level)
        if m.local.int8 is None and m.local.fp32 is None:
            raise BundleError(f"bundle {m.name!r} has no local model: the edge client needs one for fallback")
        self.local_model = self._load(m.local.int8, m.local.fp32, precision)
        self.offload_levels: dict[int, OffloadLevel] = {lv.level: lv for lv in m.offload.levels if lv.level}
        self._measured_offload = set(offload) if offload is not None else {0, *self.offload_levels}

    @property
    def precisions(self) -> dict[str, str]:
        """The precision kept for each head and for ``local``."""
        return {**{s: h.precision for s, h in self.heads.items()}, "local": self.local_model.precision}

    def to_input(self, image: ImageLike) -> NDArray[Any]:
        """The model input for ``image`` (see :func:`to_input`)."""
        return to_input(image, self.input_shape, self.manifest.preprocess)

    def emulate(self, device: DeviceLatency | None) -> None:
        """Stand in for a device with these times (``None``: run at this machine's pace again).

        Each head, the local model and each offload level's encoding is then padded by a sleep to
        ``device``'s time for it; the entropy coding is not padded (a head's time includes it). Absolute
        times, unlike ``slowdown``'s multiple of each call's own duration: every run of a harness sees the
        same device whatever share of the CPU it gets.
        """
        self.emulated = device

    def head(self, split: str, x: NDArray[Any]) -> NDArray[Any]:
        """Latent ``y`` (C, H, W) float32 of input ``x`` at ``split``."""
        with self._device_work(lambda d: d.head_ms[split]):
            return self.heads[split](x)

    def encode(self, split: str, level: int, y: NDArray[Any]) -> tuple[bytes, int]:
        """Entropy-code ``y`` with the tables of (split, level); returns the bitstream and symbols' CRC32."""
        with self._device_work():
            data, symbols = codec.encode(y, self.tables[(split, level)])
            return data, codec.symbols_crc32(symbols)

    def local(self, x: NDArray[Any]) -> NDArray[Any]:
        """Logits of the whole model on input ``x``."""
        with self._device_work(lambda d: d.local_ms):
            return self.local_model(x)

    def png(self, x: NDArray[Any]) -> bytes:
        """Lossless PNG of input ``x``: the payload of the offload option (level 0)."""
        with self._device_work(lambda d: d.offload_ms):
            return png_bytes(x)

    def offload_image(self, x: NDArray[Any], level: int = 0) -> tuple[str, bytes]:
        """The payload of offload ``level`` for input ``x``: its codec and bytes (0: PNG, else the manifest's
        JPEG/WebP level, encoded with the function the exporter priced it with).

        Raises:
            UnknownModelError: the bundle has no such offload level.
        """
        if not level:
            return "png", self.png(x)
        off = self.offload_levels.get(level)
        if off is None:
            raise UnknownModelError(
                f"bundle {self.manifest.name!r} has no offload level {level} (levels: {sorted(self.offload_levels)})"
            )
        with self._device_work(lambda d: d.offload_level_ms[level]):
            return off.codec, off.encode(x)

    @contextlib.contextmanager
    def _device_work(self, emulated_ms: Callable[[DeviceLatency], float] | None = None) -> Iterator[None]:
        """Pad the work inside to the emulated device's time for it (``emulated_ms``; not padded without
        one), or else to ``slowdown`` times its duration (nothing when ``slowdown`` is 1)."""
        if self.emulated is None and self.slowdown == 1.0:
            yield
            return
        t0 = time.perf_counter()
        yield
        took = time.perf_counter() - t0
        if self.emulated is not None:
            if emulated_ms is not None:
                time.sleep(max(emulated_ms(self.emulated) / 1e3 - took, 0.0))
            return
        time.sleep(took * (self.slowdown - 1.0))

    def measure(self, repeats: int = 10) -> DeviceLatency:
        """Median device time of each option on a fixed sample, in ms.

        Heads include entropy coding (at their lowest level); offload is the image encoding of each level
        the policy may pick (the others read 0).
        """
        x = self._sample

        def split_fn(split: str) -> Any:
            level = min(lv for s, lv in self.tables if s == split)
            return lambda: self.encode(split, level, self.head(split, x))

        return DeviceLatency(
            head_ms={s: _median_ms(split_fn(s), repeats) for s in self.heads},
            local_ms=_median_ms(lambda: self.local(x), repeats),
            offload_ms=_median_ms(lambda: self.png(x), repeats) if 0 in self._measured_offload else 0.0,
            offload_level_ms={
                lv: _median_ms(lambda lv=lv: self.offload_image(x, lv), repeats)
                for lv in self.offload_levels
                if lv in self._measured_offload
            },
        )

    def _load(self, int8: str | None, fp32: str | None, precision: str) -> _Model:
        files = {"int8": int8, "fp32": fp32}
        wanted = ("int8", "fp32") if precision == "auto" else (precision,)
        models = []
        for p in wanted:
            rel = files[p]
            if rel is None:
                if precision != "auto":
                    raise BundleError(f"bundle {self.manifest.name!r} has no {p} file for this model")
                continue
            models.append(_Model(load_session(self.bundle.path(rel), self._threads), p))
        if not models:
            raise BundleError(
                f"bundle {self.manifest.name!r} has neither an int8 nor an fp32 file for a model"
            )
        if len(models) == 1:
            return models[0]
        return _fastest(models, self._sample)


def _fastest(models: list[_Model], x: NDArray[Any]) -> _Model:
    """The model with the lowest median time on ``x``, timed in interleaved rounds (fair under load)."""
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        for _ in range(_WARMUP):
            model(x)
    for _ in range(_CHOICE_ROUNDS):
        for model, t in zip(models, times):
            for _ in range(_CHOICE_CALLS):
                t0 = time.perf_counter()
                model(x)
                t.append(time.perf_counter() - t0)
    medians = [float(np.median(t)) for t in times]
    return models[medians.index(min(medians))]


def _median_ms(fn: Any, repeats: int) -> float:
    for _ in range(_WARMUP):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def to_input(
    image: ImageLike, shape: tuple[int, ...], preprocess: dict[str, Any] | None = None
) -> NDArray[Any]:
    """Turn ``image`` into the model's uint8 input of ``shape`` (C, H, W), C-contiguous.

    Arrays must already have the model's size: ``(C, H, W)``, ``(1, C, H, W)``, ``(H, W, C)``, or
    ``(H, W)`` for one channel. Images and files are converted to grey or RGB and, following the
    manifest's ``preprocess`` (``resize``: short side, ``crop``: centre square), resized to fit.

    Raises:
        RequestError: a wrong dtype or size, or a file that is not a readable image.
    """
    c, h, w = shape
    photo = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == c and image.shape[:2] != (h, w)
    if isinstance(image, np.ndarray) and not (photo and image.dtype == np.uint8 and c in (1, 3)):
        return _from_array(image, (c, h, w))
    source: ImageLike | io.BytesIO = image
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif not isinstance(source, (str, Path, np.ndarray)) and type(source).__module__.split(".")[0] != "PIL":
        raise RequestError(
            f"an input must be a numpy array, a PIL image, an image file or its bytes, not {type(image).__name__}"
        )
    try:
        from PIL import Image, ImageOps
    except ModuleNotFoundError as exc:
        raise RequestError("reading image files needs pillow (pip install pillow); arrays do not") from exc
    if isinstance(source, Image.Image):
        return _from_pil(source, (c, h, w), preprocess or {})
    if isinstance(source, np.ndarray):  # an (H, W, C) photo of another size than the model's input
        return _from_pil(Image.fromarray(source[:, :, 0] if c == 1 else source), (c, h, w), preprocess or {})
    try:
        with Image.open(source) as im:
            im.load()
            return _from_pil(ImageOps.exif_transpose(im), (c, h, w), preprocess or {})
    except (OSError, ValueError) as exc:
        name = "the given bytes" if isinstance(source, io.BytesIO) else source
        raise RequestError(f"cannot read image {name}: {exc}") from exc


def _from_array(a: NDArray[Any], shape: tuple[int, int, int]) -> NDArray[Any]:
    if a.dtype != np.uint8:
        raise RequestError(f"input arrays must be uint8 (the model's input), got {a.dtype}")
    c, h, w = shape
    if a.shape == (1, c, h, w):
        a = a[0]
    elif a.shape == (h, w, c) and a.shape != shape:
        a = a.transpose(2, 0, 1)
    elif c == 1 and a.shape == (h, w):
        a = a[None]
    if a.shape != shape:
        raise RequestError(f"input of shape {a.shape} does not fit the model's input {shape} (C, H, W)")
    return np.ascontiguousarray(a)


def _from_pil(im: Image.Image, shape: tuple[int, int, int], preprocess: dict[str, Any]) -> NDArray[Any]:
    from PIL import Image

    c, h, w = shape
    if c not in (1, 3):
        raise RequestError(f"images can feed only 1- or 3-channel models, this one takes {c}")
    im = im.convert("L" if c == 1 else "RGB")
    resize = int(preprocess.get("resize", 0))
    if resize and min(im.size) != resize:
        scale = resize / min(im.size)
        im = im.resize(
            (max(round(im.width * scale), 1), max(round(im.height * scale), 1)), Image.Resampling.BILINEAR
        )
    crop = int(preprocess.get("crop", 0))
    if crop:
        left, top = (im.width - crop) // 2, (im.height - crop) // 2
        im = im.crop((left, top, left + crop, top + crop))
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(a[None] if c == 1 else a.transpose(2, 0, 1))
