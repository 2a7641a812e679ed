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

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm.auto import tqdm

from splitserve.core import codec
from splitserve.core.offload import encode_image
from splitserve.core.png import png_bytes as encode_png
from splitserve.core.bundle import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    OFFLOAD_SPLIT,
    copy_python_backend_model,
    sha256_file,
)

from ._split import SplitBackbone, count_macs
from .split_model import SplitModel

__all__ = [
    "MIN_INT8_IN_CHANNELS",
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


class _Calibration:
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

    class Reader(_Calibration, CalibrationDataReader):
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
    name = teacher.cfg.name
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        manifest = _write_bundle(work, teacher, split_models, data, name, version, progress, int8_weight_bits)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
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


def _lossy_offload_level(
    level: int, codec_name: str, quality: int, data: EvalData, full: ort.InferenceSession
) -> dict:
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
    return {
        "level": level,
        "codec": codec_name,
        "quality": quality,
        "bytes_per_sample": float(np.mean(sizes)),
        "accuracy": float((pred == data.labels).mean()),
    }


def _write_bundle(
    root: Path,
    teacher: SplitBackbone,
    split_models: dict[str, SplitModel],
    data: EvalData,
    name: str,
    version: str,
    progress: bool,
    int8_weight_bits: int,
) -> dict:
    cfg = teacher.cfg
    n_cls = len(cfg.classes)
    example = torch.zeros((2, *cfg.input_shape), dtype=torch.uint8)
    total_macs = count_macs(teacher, example[:1])
    bar = tqdm(total=2 + 4 * len(split_models), desc=f"export {name}", unit="step", disable=not progress)

    def add_triton(model_name: str, onnx_path: Path, inp: tuple, out: tuple) -> None:
        for backend in ("onnxruntime", "python"):
            d = root / "triton" / backend / model_name
            (d / "1").mkdir(parents=True)
            shutil.copyfile(onnx_path, d / "1" / "model.onnx")
            (d / "config.pbtxt").write_text(triton_config(model_name, backend, inp, out))
            if backend == "python":
                copy_python_backend_model(d / "1" / "model.py")

    # Whole model: local fallback on the device (fp32 + int8) and offload in the cloud.
    (root / "edge").mkdir()
    full_fp32, full_int8 = root / "edge/full.fp32.onnx", root / "edge/full.int8.onnx"
    export_onnx(teacher, example, full_fp32, "image", "logits")
    quantize_int8(full_fp32, full_int8, data.calib, weight_bits=int8_weight_bits)
    bar.update()
    full_model = f"{name}_full"
    add_triton(full_model, full_fp32, ("image", "TYPE_UINT8", cfg.input_shape), ("logits", "TYPE_FP32", (n_cls,)))
    full_sess = ort_session(full_fp32)
    ref_logits = run_batched(full_sess, data.images)
    ref_pred = ref_logits.argmax(1)
    unsplit_acc = float((ref_pred == data.labels).mean())
    local_int8_acc = float((run_batched(ort_session(full_int8), data.images).argmax(1) == data.labels).mean())
    png_bytes = float(np.mean([len(encode_png(im)) for im in data.images]))
    lossy_levels = [
        _lossy_offload_level(level, codec_name, quality, data, full_sess)
        for level, (codec_name, quality) in enumerate(LOSSY_OFFLOAD if cfg.input_shape[0] == 3 else (), start=1)
    ]
    bar.update()

    splits = []
    codec_version = codec.CODEC_VERSION  # the newest version any split's tables need
    for split, sm in split_models.items():
        d = root / "edge" / split
        d.mkdir(parents=True)
        head, tail = sm.edge_head().eval(), sm.cloud_tail().eval()
        head_fp32, head_int8 = d / "head.fp32.onnx", d / "head.int8.onnx"
        export_onnx(head, example, head_fp32, "image", "y")
        quantize_int8(head_fp32, head_int8, data.calib, weight_bits=int8_weight_bits)
        bar.update()
        latent_shape = tuple(int(v) for v in head(example[:1]).shape[1:])
        tail_model = f"{name}_tail_{split}"
        tmp_tail = root / f".tail_{split}.onnx"
        export_onnx(tail, torch.zeros((2, *latent_shape)), tmp_tail, "y_hat", "logits")
        add_triton(tail_model, tmp_tail, ("y_hat", "TYPE_FP32", latent_shape), ("logits", "TYPE_FP32", (n_cls,)))
        tmp_tail.unlink()
        tail_onnx = f"triton/onnxruntime/{tail_model}/1/model.onnx"
        bar.update()

        y = {
            "int8": run_batched(ort_session(head_int8), data.images),
            "fp32": run_batched(ort_session(head_fp32), data.images),
        }
        tail_sess = ort_session(root / tail_onnx)
        bar.update()
        levels = []
        for level in range(sm.codec.num_levels):
            symbols = math.prod(latent_shape)
            tables = dataclasses.replace(
                sm.codec.export_tables(level),
                chunk_symbols=codec.chunk_symbols_for(symbols),
                codec_version=codec.codec_version_for(symbols),
            )
            codec_version = max(codec_version, tables.codec_version)
            tables_rel = f"edge/{split}/level{level}.json"
            tables.save(root / tables_rel)
            figures = {}
            for kind, lat in y.items():
                q = np.stack([codec.quantize(v, tables) for v in lat])
                pred = run_batched(tail_sess, np.stack([codec.dequantize(v, tables) for v in q])).argmax(1)
                figures[kind] = (float((pred == data.labels).mean()), float((pred == ref_pred).mean()))
                if kind == "int8":
                    nbytes = float(np.mean([len(codec.encode_symbols(v, tables)) for v in q]))
            levels.append(
                {
                    "level": level,
                    "tables": tables_rel,
                    "bytes_per_sample": nbytes,
                    "accuracy": figures["int8"][0],
                    "accuracy_fp32": figures["fp32"][0],
                    "fidelity": figures["int8"][1],
                }
            )
        head_macs = count_macs(head, example[:1])
        splits.append(
            {
                "name": split,
                "latent_shape": list(latent_shape),
                "head_int8": f"edge/{split}/head.int8.onnx",
                "head_fp32": f"edge/{split}/head.fp32.onnx",
                "tail_model": tail_model,
                "tail_onnx": tail_onnx,
                "head_macs": head_macs,
                "head_mac_share": head_macs / total_macs,
                "levels": levels,
            }
        )
        bar.update()
    bar.close()

    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "name": name,
        "version": version,
        "input": {"shape": list(cfg.input_shape), "dtype": "uint8", "preprocess": dict(cfg.preprocess)},
        "classes": list(cfg.classes),
        "total_macs": total_macs,
        "unsplit_accuracy": unsplit_acc,
        "splits": splits,
        "local": {
            "fp32": "edge/full.fp32.onnx",
            "int8": "edge/full.int8.onnx",
            "accuracy": local_int8_acc,
            "accuracy_fp32": unsplit_acc,
        },
        "offload": {
            "split": OFFLOAD_SPLIT,
            "codec": "png",
            "triton_model": full_model,
            "onnx": f"triton/onnxruntime/{full_model}/1/model.onnx",
            "bytes_per_sample": png_bytes,
            "accuracy": unsplit_acc,
            "levels": lossy_levels,
        },
        "files": {p.relative_to(root).as_posix(): sha256_file(p) for p in files},
        "extra": {
            "eval_set": data.name,
            "eval_size": int(len(data.labels)),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "codec": {"name": codec.CODEC_NAME, "version": codec_version},
            "int8": {"format": "QDQ, per-channel weights, uint8 activations, MinMax", "weight_bits": int8_weight_bits},
        },
    }
