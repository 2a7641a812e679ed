"""``splitserve export``: ONNX heads and tails, int8 quantization, entropy tables, Triton repositories,
measured figures and the manifest, written as one bundle (layout in ``splitserve.core.bundle``).

The bundle is written into a temporary directory next to the destination and renamed into place
only when complete, so an interrupted export never leaves a half bundle behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm.auto import tqdm

from splitserve.core import codec
from splitserve.core.bundle import (
    CodecInfo,
    ExportInfo,
    Int8Info,
    LevelInfo,
    LocalInfo,
    Manifest,
    OffloadInfo,
    SplitInfo,
    copy_python_backend_model,
    sha256_file,
)
from splitserve.core.offload import OffloadLevel, encode_image
from splitserve.core.png import png_bytes as encode_png

from ._split import SplitBackbone, count_macs
from .split_model import SplitModel

__all__ = [
    "MIN_INT8_IN_CHANNELS",
    "Calibration",
    "EvalData",
    "export_bundle",
    "export_onnx",
    "fp32_convs",
    "ort_session",
    "quantize_int8",
    "run_batched",
    "triton_config",
]

MAX_BATCH = 64


@dataclass(frozen=True)
class EvalData:
    """Data the exporter measures with: ``calib`` images for int8 calibration, a labelled eval set."""

    calib: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    name: str


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """Export ``module`` to a single ONNX file with a dynamic batch dimension."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}},
            opset_version=17,
            dynamo=False,
        )


class Calibration:
    """ONNX Runtime calibration reader over uint8 image batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 64) -> None:
        self._batches: Iterator[np.ndarray] = (images[i : i + batch] for i in range(0, len(images), batch))
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._batches, None)
        return None if b is None else {self._name: b}

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


# Convolutions that read fewer channels than this stay fp32 in the int8 models. Measured here (AVX2,
# no VNNI, ORT 1.32, one thread, conv + its Q/DQ boundary): a 3x3 conv 1->16 at 28x28 ran 0.26x of fp32
# in int8, 3->16 0.43x, 3->32 at 224x224 0.62x, 4->16 0.82x, 8->16 1.2x, 16->16 1.5x: with K = Cin*9
# this small the int8 GEMM cannot pay for itself. This keeps the input stem (grey or RGB) in fp32. With
# VNNI (AVX512-VNNI EPYC, same ORT) it still holds: the test bundle's layer1 head ran 56 us per image
# with its 1->16 stem conv in int8 and 43 us with it in fp32 (fp32 head: 70 us).
MIN_INT8_IN_CHANNELS = 4


def fp32_convs(model_path: Path, min_in_channels: int = MIN_INT8_IN_CHANNELS) -> list[str]:
    """Names of the Conv nodes of ``model_path`` that read fewer than ``min_in_channels`` channels."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type != "Conv" or node.input[1] not in shapes:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if shapes[node.input[1]][1] * group < min_in_channels:
            names.append(node.name)
    return names


def quantize_int8(
    fp32_path: Path, int8_path: Path, calib: np.ndarray, input_name: str = "image", *, weight_bits: int = 7
) -> None:
    """Static int8 quantization: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration.

    ``weight_bits`` 7 (``reduce_range``, the default): on x86 CPUs without VNNI, ONNX Runtime multiplies
    uint8 by int8 with ``vpmaddubsw``, whose int16 sums saturate with full-range weights. Measured here
    (AVX2) on the fmnist_resnet bundle: the whole int8 model lost 2.0 pp of top-1 with 8-bit weights and
    0.05 pp with 7-bit ones, at the same speed; on VNNI CPUs the result is the same either way, so the
    accuracy measured at export holds on every device. EfficientNet-Lite0 is different: 7-bit weights
    cost it 11.6 pp of agreement with fp32 on held-out photos (88.4%), 8-bit ones 1.4 pp (98.6%), at the
    same speed on an AVX512-VNNI CPU (`splitserve bench int8`), so its bundles use 8 bits (exact on VNNI
    x86 and Arm dot-product CPUs; an AVX2-only device may lose accuracy, and ``precision`` can pin fp32).
    Convolutions reading fewer than :data:`MIN_INT8_IN_CHANNELS` channels (the input stem) stay fp32,
    where int8 is slower.
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"Invalid int8 weight bits {weight_bits}: use 7 or 8")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(int8_path),
            Reader(calib, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=weight_bits == 7,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_convs(pre),
        )


def triton_config(name: str, backend: str, inp: tuple[str, str, tuple[int, ...]], out: tuple[str, str, tuple[int, ...]]) -> str:
    """A Triton ``config.pbtxt`` with dynamic batching (python flavour pinned to CPU instances)."""
    dims = lambda d: ", ".join(str(v) for v in d)  # noqa: E731
    instance = '\ninstance_group [{ count: 1, kind: KIND_CPU }]' if backend == "python" else ""
    return (
        f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: {MAX_BATCH}\n'
        f'input [{{ name: "{inp[0]}", data_type: {inp[1]}, dims: [{dims(inp[2])}] }}]\n'
        f'output [{{ name: "{out[0]}", data_type: {out[1]}, dims: [{dims(out[2])}] }}]\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: 500 }}{instance}\n"
    )


def ort_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A quiet CPU ONNX Runtime session; ``threads`` > 0 pins intra-op threads (for timing)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Run ``sess`` on ``x`` in batches and concatenate the first output."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def export_bundle(
    out_dir: Path,
    teacher: SplitBackbone,
    split_models: dict[str, SplitModel],
    data: EvalData,
    *,
    version: str = "1",
    progress: bool = True,
    int8_weight_bits: int = 7,
) -> Path:
    """Write a complete, verified-on-load bundle for ``teacher`` and its trained splits.

    ``int8_weight_bits`` is 7 (safe on AVX2 CPUs without VNNI, see :func:`quantize_int8`) or 8 (what
    VNNI x86 and Arm dot-product CPUs run exactly; EfficientNet-Lite0 lost 11 pp of agreement with 7).

    Every figure in the manifest is measured here on ``data``: bytes are the real entropy-coded
    payload of each sample, accuracies come from ONNX Runtime running the exported files.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        manifest = _write_bundle(work, teacher, split_models, data, version, progress, int8_weight_bits)
        (work / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


LOSSY_OFFLOAD = (("jpeg", 90), ("webp", 90))
"""Offload levels 1.. of colour bundles (codec, quality): on held-out photos through Lite0, JPEG q90 agrees
84% with the whole model at 16 KB and WebP q90 87% at 13 KB (results/natural.json); lower qualities lose
more agreement than a split level of a fifth of the bytes."""


def export_key() -> str:
    """What of the exporter itself a cached bundle depends on (the codec versions, the offload levels):
    part of every bundle's cache key, so a build that writes bundles differently never reuses an old one."""
    return f"{codec.CODEC_NAME}{list(codec.CODEC_VERSIONS)}-offload{[list(x) for x in LOSSY_OFFLOAD]}"


@dataclass(frozen=True)
class _Target:
    """What every part of one export shares: the folder being written, the evaluation data, the settings."""

    root: Path
    name: str
    data: EvalData
    example: torch.Tensor
    int8_weight_bits: int
    logits: tuple[str, str, tuple[int, ...]]
    bar: tqdm

    def onnx_pair(self, module: nn.Module, fp32: Path, int8: Path, output_name: str) -> None:
        """``module`` (uint8 image in) exported to ``fp32`` and quantized to ``int8``."""
        export_onnx(module, self.example, fp32, "image", output_name)
        quantize_int8(fp32, int8, self.data.calib, weight_bits=self.int8_weight_bits)

    def add_triton(self, model_name: str, onnx_path: Path, inp: tuple, out: tuple) -> None:
        """``onnx_path`` as Triton model ``model_name`` in both repository flavours."""
        for backend in ("onnxruntime", "python"):
            d = self.root / "triton" / backend / model_name
            (d / "1").mkdir(parents=True)
            shutil.copyfile(onnx_path, d / "1" / "model.onnx")
            (d / "config.pbtxt").write_text(triton_config(model_name, backend, inp, out))
            if backend == "python":
                copy_python_backend_model(d / "1" / "model.py")

    def accuracy(self, pred: np.ndarray) -> float:
        return float((pred == self.data.labels).mean())


class _Whole(NamedTuple):
    """The whole model as exported: its manifest entries and its predictions (the fidelity reference)."""

    local: LocalInfo
    offload: OffloadInfo
    pred: np.ndarray
    accuracy: float


def _write_bundle(
    root: Path,
    teacher: SplitBackbone,
    split_models: dict[str, SplitModel],
    data: EvalData,
    version: str,
    progress: bool,
    int8_weight_bits: int,
) -> Manifest:
    """Write every file of the bundle into ``root`` and return its manifest (not yet written)."""
    cfg = teacher.cfg
    example = torch.zeros((2, *cfg.input_shape), dtype=torch.uint8)
    total_macs = count_macs(teacher, example[:1])
    bar = tqdm(total=2 + 4 * len(split_models), desc=f"export {cfg.name}", unit="step", disable=not progress)
    logits = ("logits", "TYPE_FP32", (len(cfg.classes),))
    t = _Target(root, cfg.name, data, example, int8_weight_bits, logits, bar)
    (root / "edge").mkdir()
    whole = _export_whole(t, teacher)
    splits = [_export_split(t, split, sm, whole.pred, total_macs) for split, sm in split_models.items()]
    bar.close()
    # the newest codec version any split's tables need
    codec_version = max([codec.CODEC_VERSION, *(codec.codec_version_for(math.prod(s.latent_shape)) for s in splits)])
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return Manifest(
        name=cfg.name,
        version=version,
        input_shape=tuple(cfg.input_shape),
        input_dtype="uint8",
        preprocess=dict(cfg.preprocess),
        classes=tuple(cfg.classes),
        total_macs=total_macs,
        unsplit_accuracy=whole.accuracy,
        splits=tuple(splits),
        local=whole.local,
        offload=whole.offload,
        files={p.relative_to(root).as_posix(): sha256_file(p) for p in files},
        extra=ExportInfo(
            eval_set=data.name,
            eval_size=len(data.labels),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            codec=CodecInfo(codec.CODEC_NAME, codec_version),
            int8=Int8Info("QDQ, per-channel weights, uint8 activations, MinMax", int8_weight_bits),
        ),
    )


def _export_whole(t: _Target, teacher: SplitBackbone) -> _Whole:
    """The whole model: local fallback on the device (fp32 + int8) and offload in the cloud, PNG and (for
    colour inputs) the :data:`LOSSY_OFFLOAD` levels."""
    cfg, data = teacher.cfg, t.data
    full_fp32, full_int8 = t.root / "edge/full.fp32.onnx", t.root / "edge/full.int8.onnx"
    t.onnx_pair(teacher, full_fp32, full_int8, "logits")
    t.bar.update()
    full_model = f"{t.name}_full"
    t.add_triton(full_model, full_fp32, ("image", "TYPE_UINT8", cfg.input_shape), t.logits)
    full_sess = ort_session(full_fp32)
    ref_pred = run_batched(full_sess, data.images).argmax(1)
    unsplit_acc = t.accuracy(ref_pred)
    png = OffloadLevel(0, "png", None, float(np.mean([len(encode_png(im)) for im in data.images])), unsplit_acc)
    lossy = [
        _lossy_offload_level(level, codec_name, quality, data, full_sess)
        for level, (codec_name, quality) in enumerate(LOSSY_OFFLOAD if cfg.input_shape[0] == 3 else (), start=1)
    ]
    t.bar.update()
    local = LocalInfo(
        fp32="edge/full.fp32.onnx",
        int8="edge/full.int8.onnx",
        accuracy=t.accuracy(run_batched(ort_session(full_int8), data.images).argmax(1)),
        accuracy_fp32=unsplit_acc,
    )
    offload = OffloadInfo(full_model, f"triton/onnxruntime/{full_model}/1/model.onnx", (png, *lossy))
    return _Whole(local, offload, ref_pred, unsplit_acc)


def _lossy_offload_level(
    level: int, codec_name: str, quality: int, data: EvalData, full: ort.InferenceSession
) -> OffloadLevel:
    """Offload ``level``: the evaluation images encoded as the client will send them, their mean bytes,
    and the whole model's accuracy on the decoded images."""
    from PIL import Image

    sizes, decoded = [], []
    for im in data.images:
        payload = encode_image(im, codec_name, quality)
        sizes.append(len(payload))
        with Image.open(io.BytesIO(payload)) as img:
            decoded.append(np.asarray(img.convert("RGB")).transpose(2, 0, 1))
    pred = run_batched(full, np.ascontiguousarray(np.stack(decoded))).argmax(1)
    return OffloadLevel(level, codec_name, quality, float(np.mean(sizes)), float((pred == data.labels).mean()))


def _export_split(t: _Target, split: str, sm: SplitModel, ref_pred: np.ndarray, total_macs: int) -> SplitInfo:
    """One split: its int8 and fp32 heads, its tail in both Triton flavours, and its measured levels."""
    d = t.root / "edge" / split
    d.mkdir(parents=True)
    head, tail = sm.edge_head().eval(), sm.cloud_tail().eval()
    head_fp32, head_int8 = d / "head.fp32.onnx", d / "head.int8.onnx"
    t.onnx_pair(head, head_fp32, head_int8, "y")
    t.bar.update()
    c, h, w = (int(v) for v in head(t.example[:1]).shape[1:])
    latent_shape = (c, h, w)
    tail_model = f"{t.name}_tail_{split}"
    tmp_tail = t.root / f".tail_{split}.onnx"
    export_onnx(tail, torch.zeros((2, *latent_shape)), tmp_tail, "y_hat", "logits")
    t.add_triton(tail_model, tmp_tail, ("y_hat", "TYPE_FP32", latent_shape), t.logits)
    tmp_tail.unlink()
    tail_onnx = f"triton/onnxruntime/{tail_model}/1/model.onnx"
    t.bar.update()
    y = {
        "int8": run_batched(ort_session(head_int8), t.data.images),
        "fp32": run_batched(ort_session(head_fp32), t.data.images),
    }
    tail_sess = ort_session(t.root / tail_onnx)
    t.bar.update()
    levels = tuple(
        _export_level(t, split, sm, level, math.prod(latent_shape), y, tail_sess, ref_pred)
        for level in range(sm.codec.num_levels)
    )
    head_macs = count_macs(head, t.example[:1])
    t.bar.update()
    return SplitInfo(
        name=split,
        latent_shape=latent_shape,
        head_int8=f"edge/{split}/head.int8.onnx",
        head_fp32=f"edge/{split}/head.fp32.onnx",
        tail_model=tail_model,
        tail_onnx=tail_onnx,
        head_macs=head_macs,
        head_mac_share=head_macs / total_macs,
        levels=levels,
    )


def _export_level(
    t: _Target,
    split: str,
    sm: SplitModel,
    level: int,
    symbols: int,
    y: dict[str, np.ndarray],
    tail_sess: ort.InferenceSession,
    ref_pred: np.ndarray,
) -> LevelInfo:
    """Rate ``level`` of ``split``: its entropy tables, the mean coded bytes of the int8 head's latents, and
    the accuracy (int8 and fp32 heads) and fidelity of the tail on the decoded latents."""
    tables = dataclasses.replace(
        sm.codec.export_tables(level),
        chunk_symbols=codec.chunk_symbols_for(symbols),
        codec_version=codec.codec_version_for(symbols),
    )
    tables_rel = f"edge/{split}/level{level}.json"
    tables.save(t.root / tables_rel)
    pred, nbytes = {}, 0.0
    for kind, lat in y.items():
        q = np.stack([codec.quantize(v, tables) for v in lat])
        pred[kind] = run_batched(tail_sess, np.stack([codec.dequantize(v, tables) for v in q])).argmax(1)
        if kind == "int8":
            nbytes = float(np.mean([len(codec.encode_symbols(v, tables)) for v in q]))
    return LevelInfo(
        level=level,
        tables=tables_rel,
        bytes_per_sample=nbytes,
        accuracy=t.accuracy(pred["int8"]),
        accuracy_fp32=t.accuracy(pred["fp32"]),
        fidelity=float((pred["int8"] == ref_pred).mean()),
    )

