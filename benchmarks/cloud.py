"""Benchmark ``cloud``: requests/s and latency of the cloud endpoint at 1, 8 and 64 concurrent clients.

For each backend (embedded ONNX Runtime, and Triton: the local ``tritonserver`` of the nvidia-pytriton
wheel), the endpoint runs as its own process (``python -m splitserve.cloud serve``), exactly as deployed,
and this process drives it over loopback gRPC with N clients, each sending its next unary ``Infer`` as
soon as the previous reply arrives. Payloads are real bitstreams: symbols drawn from the entropy tables
of the split and level under test, coded with the wire codec, so their sizes are the model's rate.

Per run: requests/s, client-side p50/p99 latency, and the server's own timings from the replies. The
endpoint's **overhead** is everything in its total except tail compute and the queue in front of the
tail (Triton's queue, or the embedded batcher's): receive, validation, decode (with its pool hand-off),
top-k and the reply. ``overhead_share`` = sum of overhead / sum of server total time. Targets (2 cores):
overhead p50 <= 1 ms, share <= 25% at 64 clients.

The load generator shares the machine's cores with the server: on a 2-core box the figures are a floor.

Writes ``<out_dir>/cloud.json`` and ``<out_dir>/cloud.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from splitserve.benchmarks.stack import Endpoint
from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

__all__ = ["endpoint", "run", "sample_requests"]

CLIENTS = (1, 8, 64)
BACKENDS = ("embedded", "triton")
_CHANNELS = 8


def sample_requests(bundle: Bundle, split: str, level: int, n: int, seed: int = 0) -> list[pb.InferRequest]:
    """``n`` valid requests for ``split``/``level``: symbols drawn from the level's own tables.

    Args:
        bundle: the bundle the server serves.
        split: a latent split of it.
        level: a level of that split.
        n: how many requests.
        seed: random seed (the same seed gives the same requests).
    """
    info = bundle.manifest.split(split)
    tables = bundle.tables(split, level)
    rng = np.random.default_rng(seed)
    c, h, w = info.latent_shape
    requests = []
    for i in range(n):
        q = np.empty((c, h, w), dtype=np.int32)
        for ch in range(c):
            freqs = np.asarray(tables.freqs[ch][:-1], dtype=np.float64)  # no escapes
            bins = rng.choice(len(freqs), size=h * w, p=freqs / freqs.sum())
            q[ch] = (bins + tables.offsets[ch]).reshape(h, w)
        requests.append(
            pb.InferRequest(
                request_id=f"bench-{i}",
                model=bundle.manifest.name,
                version=bundle.manifest.version,
                split=split,
                level=level,
                top_k=5,
                tensor=pb.CompressedTensor(
                    codec=codec.CODEC_NAME,
                    codec_version=tables.codec_version,
                    shape=[c, h, w],
                    data=codec.encode_symbols(q, tables),
                    symbols_crc32=codec.symbols_crc32(q),
                ),
            )
        )
    return requests


def run(
    out_dir: str | Path,
    bundle_path: str | Path,
    *,
    clients: Sequence[int] = CLIENTS,
    backends: Sequence[str] = BACKENDS,
    decode_modes: Sequence[str] = ("auto",),
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    split: str | None = None,
    level: int | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Measure the endpoint and write ``cloud.json`` (and ``cloud.png``) into ``out_dir``.

    Args:
        out_dir: results directory.
        bundle_path: the bundle to serve.
        clients: concurrent client counts.
        backends: ``embedded`` and/or ``triton`` (a local tritonserver).
        decode_modes: decode placements to measure (``auto``, ``process``, ``thread``, ``inline``).
        duration_s: measured seconds per run (after ``warmup_s``).
        warmup_s: seconds of load before measuring.
        split: split under test (default: the bundle's first).
        level: level under test (default: the split's first).
        plot: also write ``cloud.png``.

    Returns:
        ``{"runs": [{"backend", "decode_mode", "clients", "rps", "p50_ms", "p99_ms", "overhead_p50_ms",
        "overhead_share", ...}], ...}``
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.open(bundle_path)
    info = bundle.manifest.split(split) if split else bundle.manifest.splits[0]
    lvl = info.levels[0].level if level is None else level
    requests = sample_requests(bundle, info.name, lvl, 256)
    runs = []
    for backend in backends:
        for mode in decode_modes:
            with endpoint(Path(bundle_path), backend, mode) as server:
                process = psutil.Process(server.pid)
                for n in clients:
                    result = asyncio.run(_load(server.target, process, requests, n, duration_s, warmup_s))
                    result.update(backend=backend, decode_mode=mode, clients=n)
                    runs.append(result)
                    print(
                        f"cloud bench {backend:8s} {mode:7s} clients={n:3d} rps={result['rps']:7.0f} "
                        f"p50={result['p50_ms']:6.2f} ms p99={result['p99_ms']:6.2f} ms "
                        f"overhead p50={result['overhead_p50_ms']:.3f} ms "
                        f"share={result['overhead_share']:.2f} "
                        f"cpu/request={result['server_cpu_ms_per_request']:.2f} ms",
                        flush=True,
                    )
    mean_bytes = float(np.mean([len(r.tensor.data) for r in requests]))
    report = {
        "benchmark": "cloud",
        "command": f"splitserve bench cloud --bundle {bundle_path} --out {out_dir} --duration-s {duration_s:g}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bundle": {
            "name": bundle.manifest.name,
            "version": bundle.manifest.version,
            "path": str(bundle_path),
            "created": bundle.manifest.extra.created,
        },
        "split": info.name,
        "level": lvl,
        "payload_bytes_mean": mean_bytes,
        "message_bytes_mean": float(np.mean([r.ByteSize() for r in requests])),
        "duration_s": duration_s,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "targets": {"overhead_p50_ms": 1.0, "overhead_share_at_64": 0.25},
        "runs": runs,
    }
    bundle.close()
    (out / "cloud.json").write_text(json.dumps(report, indent=1))
    if plot:
        _plot(report, out / "cloud.png")
    return report


def endpoint(bundle: Path, backend: str, decode_mode: str, metrics_port: int = -1) -> Endpoint:
    """The endpoint these benchmarks measure (not started): ``backend`` ``embedded`` or ``triton`` (a local
    tritonserver), ``decode_mode`` as ``--decode-mode``, 2 s grace, 60 s to stop; ``metrics_port`` -1 leaves
    the metrics port off."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (one of {BACKENDS})")
    triton = "local" if backend == "triton" else None
    return Endpoint(
        bundle, triton=triton, decode_mode=decode_mode, metrics_port=metrics_port, stop_timeout_s=60
    )


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds used so far by ``process`` and every process below it (decode workers, Triton)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def _load(
    target: str,
    process: psutil.Process,
    requests: list[pb.InferRequest],
    clients: int,
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(clients, _CHANNELS))]
    stubs = [pb_grpc.SplitInferenceStub(c) for c in channels]
    latencies: list[float] = []
    server: list[tuple[float, float, float, float]] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def client(i: int) -> None:
        nonlocal errors
        stub = stubs[i % len(stubs)]
        k = i
        while (now := time.perf_counter()) < stop_at:
            request = requests[k % len(requests)]
            k += clients
            try:
                reply = await stub.Infer(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            done = time.perf_counter()
            if now >= measure_from:
                t = reply.timings
                latencies.append(done - now)
                server.append((t.total_ms, t.tail_ms, t.queue_ms, t.decode_ms))

    async def cpu_at_start() -> float:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        return _cpu_s(process)

    cpu_start = asyncio.create_task(cpu_at_start())
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - measure_from
    server_cpu_s = _cpu_s(process) - await cpu_start
    for c in channels:
        await c.close()
    lat = np.asarray(latencies) * 1e3
    s = np.asarray(server, dtype=np.float64).reshape(-1, 4)
    overhead = s[:, 0] - s[:, 1] - s[:, 2]
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "outside_server_p50_ms": float(np.percentile(lat - s[:, 0], 50)),
        "server_cpu_ms_per_request": 1e3 * server_cpu_s / max(1, len(latencies)),
        "server_total_p50_ms": float(np.percentile(s[:, 0], 50)),
        "tail_p50_ms": float(np.percentile(s[:, 1], 50)),
        "queue_p50_ms": float(np.percentile(s[:, 2], 50)),
        "decode_p50_ms": float(np.percentile(s[:, 3], 50)),
        "overhead_p50_ms": float(np.percentile(overhead, 50)),
        "overhead_share": float(overhead.sum() / s[:, 0].sum()),
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series: dict[str, list[dict[str, Any]]] = {}
    for r in report["runs"]:
        series.setdefault(f"{r['backend']} ({r['decode_mode']} decode)", []).append(r)
    for label, runs in series.items():
        n = [r["clients"] for r in runs]
        axes[0].plot(n, [r["rps"] for r in runs], "o-", label=label)
        axes[1].plot(n, [r["p50_ms"] for r in runs], "o-", label=f"{label} p50")
        axes[1].plot(n, [r["p99_ms"] for r in runs], "x--", label=f"{label} p99")
        axes[2].plot(n, [100 * r["overhead_share"] for r in runs], "o-", label=label)
    axes[2].axhline(25, color="grey", linestyle=":", label="target 25%")
    titles = ("requests/s", "client latency (ms)", "endpoint overhead share of server time (%)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"cloud endpoint: {report['bundle']['name']} {report['bundle']['version']} "
        f"split {report['split']} level {report['level']}, {report['payload_bytes_mean']:.0f} B payload, "
        f"{report['machine']['cpus']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
