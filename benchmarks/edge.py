"""Benchmark ``edge``: what the device pays per request, per split, on this CPU.

For every split of a bundle:

- **head latency**, fp32 vs int8 ONNX, at batch 1 (one request), median and p95 over real Fashion-MNIST
  test images, each session with the client's settings (``threads`` intra-op threads, sequential);
  ``speedup`` = fp32 median / int8 median. fp32 and int8 are timed in alternating rounds, so load
  from other jobs hits both alike. The per-sample time at batch 64 is reported beside it
  (``batch64``): a head this small is dominated by per-call overhead at batch 1, not by arithmetic.
- **where the time goes** (``profile``): ONNX Runtime's profiler on batch-1 runs, per op type, the
  kernels' sum and the whole run (the difference is the session's per-call overhead; the profiler
  itself adds a few microseconds per node, so compare these figures with each other, not with
  ``fp32_ms``), and ``client_precision``: the file the client keeps here with ``precision="auto"``.
- **entropy encoding** (quantize, rANS-code, CRC32 of the symbols) of the int8 latent, per level.
- **client overhead**: everything :class:`~splitserve.edge.EdgeClient` spends on a request beyond the
  head itself: preprocessing, the policy, encoding, building and serialising the request, parsing the
  reply, building the result. It is measured with a transport that serialises the request and parses a
  serialised reply, as a gRPC stub does, but sends nothing: network and server time are not the client's.
  ``client_overhead_ms`` includes entropy encoding; ``overhead_excl_encode_ms`` leaves it out.
- **int8 accuracy cost**: top-1 of head (int8 or fp32) -> quantize -> dequantize -> tail on the manifest's
  evaluation set, measured here with ONNX Runtime, in percentage points.

The local model (int8 vs fp32) and the offload payload (PNG) are measured the same way, and the cost of
the orchestrator's ``decide`` + ``observe`` per request. Targets: int8 at least 2x faster than fp32, and
client overhead at most 0.5 ms per request.

Writes ``<out_dir>/edge.json`` and ``<out_dir>/edge.png``.
"""

from __future__ import annotations

import bisect
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.core.png import png_bytes
from splitserve.edge import (
    BaseTransport,
    EdgeClient,
    EdgeConfig,
    EdgeRuntime,
    FixedPolicy,
    StreamCall,
    load_session,
    session_options,
)
from splitserve.orchestrator import DeviceLatency, Observation, Orchestrator, ServerTimings
from splitserve.protos.v1 import inference_pb2 as pb

from ._inputs import photo_eval_set
from ._machine import machine_info

__all__ = ["TARGET_OVERHEAD_MS", "TARGET_SPEEDUP", "run"]

TARGET_SPEEDUP = 2.0
TARGET_OVERHEAD_MS = 0.5
_WARMUP = 20
_BATCH = 64
_ROUND = 20  # batch-1 calls per model in each alternating round
_PROFILE_RUNS = 300


def run(
    out_dir: str | Path,
    bundle_path: str | Path,
    *,
    repeats: int = 1000,
    eval_size: int | None = None,
    threads: int = 1,
    plot: bool = True,
) -> dict[str, Any]:
    """Measure the device side of every split of a bundle and write ``edge.json`` (and ``edge.png``).

    Args:
        out_dir: results directory (created).
        bundle_path: the bundle to measure.
        repeats: timed runs per latency figure.
        eval_size: images for the accuracy figures (default: the manifest's evaluation-set size).
        threads: ONNX Runtime intra-op threads per session (the client's default is 1).
        plot: also write the PNG plot.

    Returns:
        The report written to ``edge.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.open(bundle_path)
    try:
        m = bundle.manifest
        n_eval = int(eval_size or m.extra.eval_size or 1000)
        images, labels, inputs = _eval_inputs(bundle, n_eval)
        splits = [_split_figures(bundle, s.name, images, labels, repeats, threads) for s in m.splits]
        local = _local_figures(bundle, images, labels, repeats, threads)
        report: dict[str, Any] = {
            "benchmark": "edge",
            "bundle": {"name": m.name, "version": m.version, "path": str(bundle.root)},
            "machine": machine_info(threads),
            "repeats": repeats,
            "eval_size": len(images),
            "inputs": inputs,
            "targets": {"speedup": TARGET_SPEEDUP, "client_overhead_ms": TARGET_OVERHEAD_MS},
            "splits": splits,
            "local": local,
            "offload": {"encode_ms": _timed(lambda i: png_bytes(images[i % len(images)]), repeats)},
            "orchestrator_ms": _orchestrator_ms(bundle, repeats),
            "met": {
                "speedup": all(s["speedup"] >= TARGET_SPEEDUP for s in splits),
                "client_overhead_ms": all(s["client_overhead_ms"] <= TARGET_OVERHEAD_MS for s in splits),
            },
            "command": f"splitserve bench edge --bundle {bundle_path} --out {out_dir}",
        }
    finally:
        bundle.close()
    (out / "edge.json").write_text(json.dumps(report, indent=1))
    if plot:
        _plot(report, out / "edge.png")
    return report


def _eval_inputs(bundle: Bundle, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """What the accuracy figures are measured on: Fashion-MNIST test images and their labels for a grey
    28x28 model; for a photo bundle the evaluation set of its manifest (:func:`photo_eval_set`)."""
    m = bundle.manifest
    if tuple(m.input_shape) == (1, 28, 28):
        images, labels = load_fashion_mnist("test")
        return images[:n], labels[:n], f"Fashion-MNIST test images (first {min(n, len(images))})"
    images, labels = photo_eval_set(bundle)
    return images[:n], labels[:n], (f"{min(n, len(images))} of the manifest's evaluation set (held-out photos, "
                                    "centre crop + 2 views); labels: the fp32 whole model's top-1")


def _timed(fn: Callable[[int], object], repeats: int) -> dict[str, float]:
    """Median and p95 wall time of ``fn(i)`` in ms, after a warm-up."""
    for i in range(_WARMUP):
        fn(i)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times[i] = time.perf_counter() - t0
    return {"median": float(np.median(times) * 1e3), "p95": float(np.percentile(times, 95) * 1e3)}


def _latencies(
    sessions: dict[str, ort.InferenceSession], images: np.ndarray, repeats: int
) -> dict[str, dict[str, float]]:
    """Batch-1 median and p95 (ms) and batch-64 median per sample of each session, timed in rounds
    that alternate between the sessions (and flip their order every round) after a warm-up."""
    names = {p: s.get_inputs()[0].name for p, s in sessions.items()}
    batch = images[:_BATCH]
    for p, s in sessions.items():
        for i in range(_WARMUP):
            s.run(None, {names[p]: images[i % len(images)][None]})
        s.run(None, {names[p]: batch})
    one: dict[str, list[float]] = {p: [] for p in sessions}
    many: dict[str, list[float]] = {p: [] for p in sessions}
    order = list(sessions)
    for r in range(max(repeats // _ROUND, 5)):
        for p in order if r % 2 == 0 else order[::-1]:
            s, name = sessions[p], names[p]
            for i in range(_ROUND):
                x = images[(r * _ROUND + i) % len(images)][None]
                t0 = time.perf_counter()
                s.run(None, {name: x})
                one[p].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s.run(None, {name: batch})
            many[p].append((time.perf_counter() - t0) / len(batch))
    return {
        p: {
            "median": float(np.median(one[p]) * 1e3),
            "p95": float(np.percentile(one[p], 95) * 1e3),
            "batch64_per_sample": float(np.median(many[p]) * 1e3),
        }
        for p in sessions
    }


def _profile(path: Path, threads: int, images: np.ndarray) -> dict[str, Any]:
    """Median microseconds per batch-1 run, per op type, from ONNX Runtime's profiler (warm-up excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "edge")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for i in range(_WARMUP + _PROFILE_RUNS):
            sess.run(None, {name: images[i % len(images)][None]})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(
        (e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run"
    )
    starts = [ts for ts, _ in runs]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            i = bisect.bisect_right(starts, e["ts"]) - 1
            if i >= 0:
                per_run[i][e["args"]["op_name"]] += e["dur"]
    kept = range(_WARMUP, len(runs))
    ops = sorted({op for i in kept for op in per_run[i]})
    return {
        "ops_us": {op: float(np.median([per_run[i][op] for i in kept])) for op in ops},
        "kernels_us": float(np.median([sum(per_run[i].values()) for i in kept])),
        "run_us": float(np.median([runs[i][1] for i in kept])),
    }


def _run_all(sess: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: images[i : i + 256]})[0] for i in range(0, len(images), 256)]
    )


def _split_figures(
    bundle: Bundle, split: str, images: np.ndarray, labels: np.ndarray, repeats: int, threads: int
) -> dict[str, Any]:
    info = bundle.manifest.split(split)
    files = {p: bundle.path(getattr(info, f"head_{p}")) for p in ("fp32", "int8")}
    heads = {p: load_session(f, threads) for p, f in files.items()}
    lat = _latencies(heads, images, repeats)
    tail = load_session(bundle.path(info.tail_onnx), threads)
    latents = {p: _run_all(s, images) for p, s in heads.items()}
    levels = []
    for lv in info.levels:
        tables = bundle.tables(split, lv.level)
        y = latents["int8"]

        def encode(i: int, y: np.ndarray = y, tables: codec.EntropyTables = tables) -> None:
            _, q = codec.encode(y[i % len(y)], tables)
            codec.symbols_crc32(q)

        acc = {}
        for p, lat_y in latents.items():
            y_hat = np.stack([codec.dequantize(codec.quantize(v, tables), tables) for v in lat_y])
            acc[p] = float((_run_all(tail, y_hat).argmax(1) == labels).mean())
        levels.append(
            {
                "level": lv.level,
                "encode_ms": _timed(encode, repeats)["median"],
                "accuracy_int8": acc["int8"],
                "accuracy_fp32": acc["fp32"],
                "int8_accuracy_drop_pp": (acc["fp32"] - acc["int8"]) * 100,
                "manifest_accuracy": lv.accuracy,
            }
        )
    overhead = _client_overhead(bundle, split, info.levels[0].level, images, repeats)
    return {
        "split": split,
        "fp32_ms": lat["fp32"]["median"],
        "int8_ms": lat["int8"]["median"],
        "fp32_p95_ms": lat["fp32"]["p95"],
        "int8_p95_ms": lat["int8"]["p95"],
        "speedup": lat["fp32"]["median"] / lat["int8"]["median"],
        "batch64": {
            "fp32_ms_per_sample": lat["fp32"]["batch64_per_sample"],
            "int8_ms_per_sample": lat["int8"]["batch64_per_sample"],
            "speedup": lat["fp32"]["batch64_per_sample"] / lat["int8"]["batch64_per_sample"],
        },
        "profile": {p: _profile(f, threads, images) for p, f in files.items()},
        "encode_ms": levels[0]["encode_ms"],
        **overhead,
        "int8_accuracy_drop_pp": levels[0]["int8_accuracy_drop_pp"],
        "head_macs": info.head_macs,
        "levels": levels,
    }


class _SerializingTransport(BaseTransport):
    """Does what a gRPC stub does to a message (serialise the request, parse the reply) and nothing else."""

    def __init__(self, reply: pb.InferResponse) -> None:
        self._reply = reply.SerializeToString()

    def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
        wire = request.SerializeToString()
        reply: pb.InferResponse = pb.InferResponse.FromString(self._reply)
        reply.request_id = pb.InferRequest.FromString(wire).request_id
        return reply

    def stream(self) -> StreamCall:
        raise NotImplementedError("the overhead benchmark uses unary calls")

    def ping(self, *, timeout_s: float) -> None:
        """Nothing to ping."""

    def close(self) -> None:
        """Nothing to release."""


def _client_overhead(
    bundle: Bundle, split: str, level: int, images: np.ndarray, repeats: int
) -> dict[str, float]:
    reply = pb.InferResponse(
        model=bundle.manifest.name,
        version=bundle.manifest.version,
        classes=[1, 2, 3, 4, 5],
        scores=[0.5, 0.2, 0.1, 0.1, 0.1],
        timings=pb.ServerTimings(receive_ms=0.1, decode_ms=0.4, queue_ms=0.1, tail_ms=0.5, total_ms=1.2),
    )
    config = EdgeConfig(timeout_s=10.0, precision="auto")
    policy = FixedPolicy(split=split, level=level)
    with EdgeClient(bundle, transport=_SerializingTransport(reply), policy=policy, config=config) as client:
        for i in range(_WARMUP):
            client.infer(images[i % len(images)])
        results = [client.infer(images[i % len(images)]) for i in range(repeats)]
        precision = client.runtime.precisions[split]
    beyond_head = np.array([r.timings.total_ms - r.timings.head_ms for r in results])
    encode = np.array([r.timings.encode_ms for r in results])
    return {
        "client_overhead_ms": float(np.median(beyond_head)),
        "client_overhead_p95_ms": float(np.percentile(beyond_head, 95)),
        "overhead_excl_encode_ms": float(np.median(beyond_head - encode)),
        "client_total_ms": float(np.median([r.timings.total_ms for r in results])),
        "client_precision": precision,
    }


def _local_figures(
    bundle: Bundle, images: np.ndarray, labels: np.ndarray, repeats: int, threads: int
) -> dict[str, Any]:
    local = bundle.manifest.local
    sessions = {p: load_session(bundle.path(rel), threads) for p, rel in local.files.items()}
    lat = _latencies(sessions, images, repeats)
    acc = {p: float((_run_all(s, images).argmax(1) == labels).mean()) for p, s in sessions.items()}
    return {
        "fp32_ms": lat["fp32"]["median"],
        "int8_ms": lat["int8"]["median"],
        "speedup": lat["fp32"]["median"] / lat["int8"]["median"],
        "fp32_p95_ms": lat["fp32"]["p95"],
        "int8_p95_ms": lat["int8"]["p95"],
        "batch64": {
            "fp32_ms_per_sample": lat["fp32"]["batch64_per_sample"],
            "int8_ms_per_sample": lat["int8"]["batch64_per_sample"],
            "speedup": lat["fp32"]["batch64_per_sample"] / lat["int8"]["batch64_per_sample"],
        },
        "client_precision": EdgeRuntime(bundle, [], precision="auto", threads=threads).precisions["local"],
        "accuracy_int8": acc["int8"],
        "accuracy_fp32": acc["fp32"],
        "int8_accuracy_drop_pp": (acc["fp32"] - acc["int8"]) * 100,
    }


def _orchestrator_ms(bundle: Bundle, repeats: int) -> dict[str, float]:
    """Median cost of the default orchestrator's ``decide`` and of ``observe`` of a remote reply, in ms.

    With a :class:`FixedPolicy`, as in ``client_overhead_ms``, neither is paid.
    """
    m = bundle.manifest
    lossy = {lv.level: 0.1 for lv in m.offload.levels if lv.level}
    orch = Orchestrator.from_manifest(m, DeviceLatency({s.name: 0.5 for s in m.splits}, 0.5, 0.1, lossy))
    server = ServerTimings(decode_ms=0.4, queue_ms=0.1, tail_ms=0.5, total_ms=1.2)
    remote = f"{m.splits[0].name}@{m.splits[0].levels[0].level}"
    decide = _timed(lambda i: orch.decide(deadline_ms=1000.0), repeats)["median"]
    observe = _timed(
        lambda i: orch.observe(Observation(remote, 0.5, 250, 330, 3.0 + (i % 7) * 0.1, server)), repeats
    )["median"]
    return {"decide": decide, "observe": observe}


# CPU features that decide how fast int8 runs: without a VNNI (or AMX) int8 dot product, ONNX Runtime
# multiplies int8 with AVX2's vpmaddubsw, and int8 convolutions gain far less over fp32.
_OP_GROUPS = {
    "convolutions": ("Conv", "QLinearConv", "FusedConv", "QLinearAdd", "Add", "Gemm", "QGemm"),
    "quantize / dequantize / layout": (
        "QuantizeLinear",
        "DequantizeLinear",
        "Transpose",
        "ReorderInput",
        "ReorderOutput",
    ),
}


def _plot_profile(ax: Any, splits: list[dict[str, Any]]) -> None:
    """Stacked batch-1 profile per split and precision: convolutions, Q/DQ and layout, the rest, and
    the session's per-call overhead (run minus kernels)."""
    labels, stacks = [], []
    for s in splits:
        for p in ("fp32", "int8"):
            prof = s["profile"][p]
            groups = {
                g: sum(v for op, v in prof["ops_us"].items() if op in ops) for g, ops in _OP_GROUPS.items()
            }
            groups["other ops (cast, normalise, ...)"] = prof["kernels_us"] - sum(groups.values())
            groups["per-call overhead"] = prof["run_us"] - prof["kernels_us"]
            labels.append(f"{s['split']}\n{p}")
            stacks.append(groups)
    bottom = np.zeros(len(stacks))
    for g in stacks[0]:
        v = np.array([st[g] for st in stacks])
        ax.bar(range(len(stacks)), v, bottom=bottom, label=g)
        bottom += v
    ax.set_ylim(0, bottom.max() * 1.45)
    ax.set_xticks(range(len(stacks)), labels, fontsize=8)
    ax.set_ylabel("us per batch-1 run (ORT profiler)")
    ax.set_title("where the head time goes")
    ax.legend(fontsize=7, loc="upper left")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = report["splits"]
    names = [s["split"] for s in splits] + ["local"]
    fp32 = [s["fp32_ms"] for s in splits] + [report["local"]["fp32_ms"]]
    int8 = [s["int8_ms"] for s in splits] + [report["local"]["int8_ms"]]
    b64 = [s["batch64"]["speedup"] for s in splits] + [report["local"]["batch64"]["speedup"]]
    x = np.arange(len(names))
    fig, (ax1, ax4, ax2, ax3) = plt.subplots(1, 4, figsize=(19, 4.2))
    ax1.bar(x - 0.2, fp32, 0.4, label="fp32")
    ax1.bar(x + 0.2, int8, 0.4, label="int8")
    for i, (a, b, c) in enumerate(zip(fp32, int8, b64, strict=True)):
        ax1.text(i, max(a, b), f"{a / b:.2f}x\n(b64 {c:.2f}x)", ha="center", va="bottom", fontsize=8)
    ax1.set_ylim(0, max(*fp32, *int8) * 1.3)
    ax1.set_xticks(x, names)
    ax1.set_ylabel("ms per request (batch 1, median)")
    ax1.set_title("model latency on this CPU (int8 speedup)")
    ax1.legend()
    xs = np.arange(len(splits))
    head = [s[f"{s['client_precision']}_ms"] for s in splits]
    encode = [s["encode_ms"] for s in splits]
    rest = [s["overhead_excl_encode_ms"] for s in splits]
    ax2.bar(xs, head, label="head (the client's precision)")
    ax2.bar(xs, encode, bottom=head, label="entropy encode")
    ax2.bar(xs, rest, bottom=np.add(head, encode), label="rest of the client")
    target = report["targets"]["client_overhead_ms"]
    ax2.hlines(
        np.add(head, target), xs - 0.4, xs + 0.4, color="k", ls="--", lw=1, label="head + overhead target"
    )
    ax2.set_xticks(xs, [f"{s['split']} ({s['client_precision']})" for s in splits])
    ax2.set_ylim(0, max(np.add(head, target)) * 1.4)
    ax2.set_ylabel("ms per request (median)")
    ax2.set_title("device time of one split request")
    ax2.legend(fontsize=8)
    for s in splits:
        ax3.plot(
            [lv["level"] for lv in s["levels"]],
            [lv["int8_accuracy_drop_pp"] for lv in s["levels"]],
            "o-",
            label=s["split"],
        )
    ax3.axhline(0, color="k", lw=0.5)
    ax3.set_xticks(sorted({lv["level"] for s in splits for lv in s["levels"]}))
    ax3.set_xlabel("rate level")
    ax3.set_ylabel("top-1 fp32 - int8 (pp)")
    ax3.set_title(f"int8 accuracy cost ({report['eval_size']} images)")
    ax3.legend()
    _plot_profile(ax4, splits)
    fig.suptitle(f"splitserve edge: {report['bundle']['name']} on {report['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
