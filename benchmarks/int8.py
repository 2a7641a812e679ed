"""Benchmark ``int8``: which static-quantization settings keep a model's answers and make it faster.

For the whole local model and for every head of a bundle, each setting in :data:`SETTINGS` is
quantized from the bundle's fp32 ONNX file with the same calibration images (training views), then
measured on held-out photos: top-1 agreement of the int8 model with the fp32 one (whole model), or of
the split's answers through the fp32 tail (heads, level 0), and batch-1 latency on one thread
against the fp32 twin in the same run. Writes ``results/int8.json``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.models.export import fp32_convs, ort_session, run_batched

from ._machine import machine_info
from .natural import _median_ms

__all__ = ["SETTINGS", "Setting", "quantize", "run"]


@dataclass(frozen=True)
class Setting:
    """One way to quantize: format, weight range, calibration method, what stays fp32."""

    name: str
    fmt: str = "qdq"  # qdq | qoperator
    reduce_range: bool = True  # 7-bit weights (safe on AVX2 without VNNI)
    calibration: str = "minmax"  # minmax | percentile | entropy
    per_channel: bool = True
    fp32_depthwise: bool = False


SETTINGS = (
    Setting("qdq-minmax-7bit"),  # what the exporter used until now
    Setting("qdq-minmax-8bit", reduce_range=False),
    Setting("qdq-percentile-8bit", reduce_range=False, calibration="percentile"),
    Setting("qdq-entropy-8bit", reduce_range=False, calibration="entropy"),
    Setting("qoperator-minmax-8bit", fmt="qoperator", reduce_range=False),
    Setting("qdq-minmax-8bit-fp32-depthwise", reduce_range=False, fp32_depthwise=True),
)


def _depthwise_convs(model_path: Path) -> list[str]:
    import onnx

    names = []
    for node in onnx.load(str(model_path)).graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            names.append(node.name)
    return names


def quantize(fp32_path: Path, out_path: Path, calib: np.ndarray, setting: Setting, input_name: str = "image") -> None:
    """Quantize ``fp32_path`` with ``setting`` (the exporter's reader, pre-processing and exclusions)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from splitserve.models.export import Calibration

    class Reader(Calibration, CalibrationDataReader):
        pass

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[setting.calibration]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        exclude = fp32_convs(pre) + (_depthwise_convs(pre) if setting.fp32_depthwise else [])
        quantize_static(
            str(pre), str(out_path), Reader(calib, input_name),
            quant_format=QuantFormat.QDQ if setting.fmt == "qdq" else QuantFormat.QOperator,
            per_channel=setting.per_channel, reduce_range=setting.reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            nodes_to_exclude=exclude, extra_options={"CalibPercentile": 99.999},
        )


def run(out_dir: Path, bundle_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Every setting on the bundle's local model and heads; JSON to ``out_dir/int8.json``."""
    from splitserve.models.natural import (
        NATURAL_RECIPES,
        PhotoViews,
        heldout_views,
        prepare_images,
        training_files,
    )
    from splitserve.models.zoo import cache_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    recipe = NATURAL_RECIPES["efficientnet_lite0-natural"]
    files = prepare_images(training_files()[0], recipe.prepare_side, cache_dir() / "prepared")
    views = PhotoViews(files, m.input_shape[1], (0.25, 1.0), seed=11)
    calib = np.stack([views[i].numpy() for i in range(128)])
    images, _, _, centre = heldout_views(1)
    x1 = images[:1]
    full32 = ort_session(bundle.path(m.local.fp32))
    ref = run_batched(full32, images, 50).argmax(1)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(SETTINGS) * (1 + len(m.splits)), desc="int8", disable=not progress)
    fp32_ms = {"local": _median_ms(ort_session(bundle.path(m.local.fp32), threads=1), x1)}
    for s in m.splits:
        fp32_ms[s.name] = _median_ms(ort_session(bundle.path(s.head_fp32), threads=1), x1)
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            path = Path(tmp) / f"local-{setting.name}.onnx"
            quantize(bundle.path(m.local.fp32), path, calib, setting)
            pred = run_batched(ort_session(path), images, 50).argmax(1)
            ms = _median_ms(ort_session(path, threads=1), x1)
            rows.append(_row("local", setting, pred, ref, centre, ms, fp32_ms["local"]))
            bar.update()
            for s in m.splits:
                path = Path(tmp) / f"{s.name}-{setting.name}.onnx"
                quantize(bundle.path(s.head_fp32), path, calib, setting)
                tables = bundle.tables(s.name, s.levels[0].level)
                y = run_batched(ort_session(path), images, 50)
                yq = np.stack([codec.dequantize(codec.quantize(v, tables), tables) for v in y])
                pred = run_batched(ort_session(bundle.path(s.tail_onnx)), yq, 50).argmax(1)
                ms = _median_ms(ort_session(path, threads=1), x1)
                rows.append(_row(s.name, setting, pred, ref, centre, ms, fp32_ms[s.name]))
                bar.update()
    bar.close()
    result = {
        "bundle": {"name": m.name, "version": m.version},
        "eval": f"{int(centre.sum())} held-out photos, centre crop + 1 random view each; calibration: 128 views "
                "of training photos",
        "fp32_ms": fp32_ms,
        "rows": rows,
        "machine": machine_info(1),
        "command": f"splitserve bench int8 --bundle <bundle> --out {out_dir}",
    }
    (out_dir / "int8.json").write_text(json.dumps(result, indent=1))
    bundle.close()
    return result


def _row(model: str, setting: Setting, pred: np.ndarray, ref: np.ndarray, centre: np.ndarray, ms: float,
         fp32_ms: float) -> dict[str, Any]:
    return {
        "model": model, **asdict(setting),
        "agreement_centre": float((pred == ref)[centre].mean()), "agreement_views": float((pred == ref).mean()),
        "int8_ms": ms, "fp32_ms": fp32_ms, "speedup": fp32_ms / ms,
    }
