"""Benchmark ``rate-accuracy``: bytes per sample vs top-1 on the Fashion-MNIST test set.

Every point is measured here from the exported bundle (ONNX Runtime + the wire codec), not copied
from the manifest: real entropy-coded bytes per image for every (split, level), through the int8 and
the fp32 heads, against the baselines in the same run:

* the input image sent as PNG, lossless WebP, and WebP / JPEG at several qualities (accuracy of the
  unsplit model on the decoded image);
* the split features as 8-bit (per-sample min/max) + zstd at each split;
* local only: 0 bytes, the int8 whole model on the device.

Also measured: head latency fp32 vs int8 (median of single-image runs, one thread) and the ratio of
real bytes to the rate the entropy model predicts.

Writes ``results/rate_accuracy.json`` and ``results/rate_accuracy.png``.
"""

from __future__ import annotations

import io
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from tqdm.auto import tqdm

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.models.export import ort_session, run_batched

__all__ = ["run"]

WEBP_QUALITIES = (5, 10, 25, 50, 75, 90)
JPEG_QUALITIES = (5, 10, 25, 50, 75, 90)


def _median_ms(sess: ort.InferenceSession, x: np.ndarray, repeats: int = 200) -> float:
    name = sess.get_inputs()[0].name
    for i in range(20):
        sess.run(None, {name: x[i : i + 1]})
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x[i % len(x) : i % len(x) + 1]})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _image_codec(images: np.ndarray, fmt: str, **params: Any) -> tuple[float, np.ndarray]:
    sizes, decoded = [], []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im[0]).save(buf, format=fmt, **params)
        sizes.append(buf.tell())
        buf.seek(0)
        decoded.append(np.asarray(Image.open(buf).convert("L"))[None])
    return float(np.mean(sizes)), np.stack(decoded)


def _features_zstd(feats: np.ndarray, level: int = 19) -> tuple[float, np.ndarray]:
    """8-bit per-sample min/max quantization + zstd; the 8 bytes of min/max are counted."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=level)
    lo = feats.reshape(len(feats), -1).min(1)[:, None, None, None]
    hi = feats.reshape(len(feats), -1).max(1)[:, None, None, None]
    scale = np.maximum(hi - lo, 1e-8) / 255.0
    q = np.rint((feats - lo) / scale).astype(np.uint8)
    sizes = [len(comp.compress(s.tobytes())) + 8 for s in q]
    return float(np.mean(sizes)), (q.astype(np.float32) * scale + lo).astype(np.float32)


def _best_codec_at(baselines: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    ok = [b for b in baselines if b["name"].startswith(("png", "webp", "jpeg")) and b["accuracy"] >= accuracy]
    return min(ok, key=lambda b: b["bytes_per_sample"]) if ok else None


def _split_points(
    bundle: Bundle, split: Any, images: np.ndarray, labels: np.ndarray, ref_pred: np.ndarray
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Bytes, accuracy and fidelity of every level of ``split`` with int8 and fp32 heads; real against
    predicted bytes for the int8 heads."""
    points: list[dict[str, Any]] = []
    rate_check: list[dict[str, Any]] = []
    tail = ort_session(bundle.path(split.tail_onnx))
    for int8 in (True, False):
        y = run_batched(ort_session(bundle.path(split.head_int8 if int8 else split.head_fp32)), images)
        for lv in split.levels:
            tables = bundle.tables(split.name, lv.level)
            q = np.stack([codec.quantize(v, tables) for v in y])
            nbytes = np.array([len(codec.encode_symbols(v, tables)) for v in q])
            pred = run_batched(tail, np.stack([codec.dequantize(v, tables) for v in q])).argmax(1)
            points.append(
                {
                    "split": split.name,
                    "level": lv.level,
                    "int8": int8,
                    "bytes_per_sample": float(nbytes.mean()),
                    "accuracy": float((pred == labels).mean()),
                    "fidelity": float((pred == ref_pred).mean()),
                    "head_mac_share": split.head_mac_share,
                }
            )
            if int8:
                predicted = sum(codec.predicted_bits(v, tables) for v in q) / 8
                rate_check.append(
                    {"split": split.name, "level": lv.level, "real_bytes": float(nbytes.sum()),
                     "predicted_bytes": float(predicted), "ratio": float(nbytes.sum() / predicted)}
                )
    return points, rate_check


def _head_latency(bundle: Bundle, split: Any, images: np.ndarray) -> dict[str, Any]:
    fp32_ms = _median_ms(ort_session(bundle.path(split.head_fp32), threads=1), images)
    int8_ms = _median_ms(ort_session(bundle.path(split.head_int8), threads=1), images)
    return {"split": split.name, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}


def _feature_baseline(teacher: Any, split: str, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The backbone's own features at ``split``, 8-bit quantized and zstd-compressed."""
    import torch

    n = len(images)
    with torch.no_grad():
        feats = np.concatenate(
            [teacher.forward_edge(torch.from_numpy(images[i : i + 1000]), split).numpy() for i in range(0, n, 1000)]
        )
        nbytes_f, deq = _features_zstd(feats)
        pred = np.concatenate(
            [teacher.forward_cloud(torch.from_numpy(deq[i : i + 1000]), split).argmax(1).numpy()
             for i in range(0, n, 1000)]
        )
    return {"name": f"features8bit+zstd@{split}", "bytes_per_sample": nbytes_f, "accuracy": float((pred == labels).mean())}


def _image_baselines(full: Any, images: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """The whole model on PNG, lossless WebP and each WebP / JPEG quality of the images."""
    codecs: list[tuple[str, str, dict[str, Any]]] = [("png", "PNG", {"optimize": True}),
                                                     ("webp-lossless", "WEBP", {"lossless": True, "quality": 100})]
    codecs += [(f"webp-q{q}", "WEBP", {"quality": q}) for q in WEBP_QUALITIES]
    codecs += [(f"jpeg-q{q}", "JPEG", {"quality": q}) for q in JPEG_QUALITIES]
    baselines = []
    for name, fmt, params in codecs:
        nbytes_c, decoded = _image_codec(images, fmt, **params)
        acc = float((run_batched(full, decoded).argmax(1) == labels).mean())
        baselines.append({"name": name, "bytes_per_sample": nbytes_c, "accuracy": acc})
    return baselines


def run(recipe: str, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Build (or reuse) the recipe's bundle, measure everything, write JSON + PNG; returns the result."""
    from splitserve.models.zoo import RECIPES, build_bundle, trained_backbone

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.open(build_bundle(recipe))
    m = bundle.manifest
    images, labels = load_fashion_mnist("test")
    n = min(RECIPES[recipe].eval_size, len(labels))
    images, labels = images[:n], labels[:n]
    full = ort_session(bundle.path(m.local.fp32))
    ref_pred = run_batched(full, images).argmax(1)
    unsplit_acc = float((ref_pred == labels).mean())
    teacher, _ = trained_backbone(RECIPES[recipe])

    points: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    rate_check: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    bar = tqdm(total=len(m.splits) * 2 + 3, desc="rate-accuracy", unit="step", disable=not progress)
    for s in m.splits:
        split_points, split_check = _split_points(bundle, s, images, labels, ref_pred)
        points += split_points
        rate_check += split_check
        bar.update()
        heads.append(_head_latency(bundle, s, images))
        baselines.append(_feature_baseline(teacher, s.name, images, labels))
        bar.update()
    baselines += _image_baselines(full, images, labels)
    bar.update()
    local_acc = float((run_batched(ort_session(bundle.path(m.local.int8)), images).argmax(1) == labels).mean())
    baselines.append({"name": "local-only (int8 whole model)", "bytes_per_sample": 0.0, "accuracy": local_acc})
    bar.update()

    summary = _summary(points, baselines, heads, unsplit_acc)
    bar.update()
    bar.close()
    result = {
        "dataset": f"fashion-mnist test ({n} images)",
        "bundle": {"name": m.name, "version": m.version, "recipe": recipe},
        "unsplit_accuracy": unsplit_acc,
        "points": points,
        "baselines": baselines,
        "head_latency": heads,
        "rate_check": rate_check,
        "summary": summary,
        "machine": {"cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__},
        "command": f"splitserve bench rate-accuracy --recipe {recipe} --out {out_dir}",
    }
    (out_dir / "rate_accuracy.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "rate_accuracy.png")
    bundle.close()
    return result


def _summary(points: list[dict], baselines: list[dict], heads: list[dict], unsplit: float) -> dict[str, Any]:
    per_split = {}
    for split in dict.fromkeys(p["split"] for p in points):
        int8 = [p for p in points if p["split"] == split and p["int8"]]
        fp32 = {p["level"]: p for p in points if p["split"] == split and not p["int8"]}
        entry: dict[str, Any] = {"head_mac_share": int8[0]["head_mac_share"]}
        for drop in (0.5, 1.0):
            ok = [p for p in int8 if (unsplit - p["accuracy"]) * 100 <= drop + 1e-9]
            best = min(ok, key=lambda p: p["bytes_per_sample"]) if ok else None
            codec_best = _best_codec_at(baselines, best["accuracy"]) if best else None
            entry[f"min_bytes_within_{drop}pp"] = (
                None if best is None else {
                    "level": best["level"], "bytes_per_sample": best["bytes_per_sample"],
                    "accuracy": best["accuracy"],
                    "best_input_codec_at_same_accuracy": codec_best,
                }
            )
        entry["int8_extra_drop_pp"] = max((fp32[p["level"]]["accuracy"] - p["accuracy"]) * 100 for p in int8)
        head = next(h for h in heads if h["split"] == split)
        entry["int8_speedup"] = head["speedup"]
        per_split[split] = entry
    return {"unsplit_accuracy": unsplit, "splits": per_split}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for split in dict.fromkeys(p["split"] for p in result["points"]):
        pts = sorted((p for p in result["points"] if p["split"] == split and p["int8"]), key=lambda p: p["bytes_per_sample"])
        share = pts[0]["head_mac_share"]
        ax.plot([p["bytes_per_sample"] for p in pts], [100 * p["accuracy"] for p in pts], "o-",
                label=f"split {split} (int8 head, {share:.0%} MACs)")
    for prefix, marker in (("jpeg", "s"), ("webp-q", "^")):
        b = sorted((b for b in result["baselines"] if b["name"].startswith(prefix)), key=lambda b: b["bytes_per_sample"])
        ax.plot([x["bytes_per_sample"] for x in b], [100 * x["accuracy"] for x in b], marker + "--", alpha=0.7,
                label=f"input as {prefix.rstrip('-q').upper()}")
    for b in result["baselines"]:
        if b["name"] in ("png", "webp-lossless") or b["name"].startswith("features8bit"):
            ax.plot(b["bytes_per_sample"], 100 * b["accuracy"], "x", ms=9, label=b["name"])
    ax.axhline(100 * result["unsplit_accuracy"], color="k", lw=0.8, ls=":", label="unsplit model")
    ax.axhline(100 * result["unsplit_accuracy"] - 0.5, color="r", lw=0.8, ls=":", label="unsplit - 0.5 pp")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image on the wire (log)")
    ax.set_ylabel("top-1 accuracy (%)")
    lo = min(100 * p["accuracy"] for p in result["points"] if p["int8"])
    ax.set_ylim(max(lo - 2, 50), 100 * result["unsplit_accuracy"] + 1)
    ax.set_title(f"Rate vs accuracy, {result['dataset']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
