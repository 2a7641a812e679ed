"""``splitserve demo``: the main job, end to end on one machine.

Builds (or reuses) the Fashion-MNIST bundle, starts the real cloud endpoint as its own process on a
loopback port (embedded ONNX Runtime tail, the default when no Triton is configured), and streams
real test images through the edge client for every option (local, offload, every split and level)
and for the orchestrator. Prints one table: bytes on the wire, accuracy, latency, where it ran.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["run_demo"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_endpoint(bundle: Path, port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "splitserve.cloud", "serve", "--bundle", str(bundle),
           "--address", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
           "--log-level", "WARNING"]
    return subprocess.Popen(cmd, start_new_session=True)


def _wait_ready(metrics_port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the endpoint exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the endpoint was not ready within {timeout_s:.0f} s")


def _measure(client: Any, images: np.ndarray, labels: np.ndarray, desc: str) -> dict[str, Any]:
    results = list(tqdm(client.stream(images), total=len(images), desc=desc, unit="img", leave=False))
    top1 = np.array([r.top1 for r in results])
    total = np.array([r.timings.total_ms for r in results])
    where = Counter(r.computed for r in results)
    chosen = Counter(r.chosen for r in results)
    return {
        "accuracy": float((top1 == labels).mean()),
        "payload_bytes": float(np.mean([r.payload_bytes for r in results])),
        "wire_bytes": float(np.mean([r.bytes_sent for r in results])),
        "p50_ms": float(np.percentile(total, 50)),
        "p95_ms": float(np.percentile(total, 95)),
        "where": ", ".join(f"{k} {v}" for k, v in where.most_common()),
        "chosen": ", ".join(f"{k} {v}" for k, v in chosen.most_common(3)),
    }


def run_demo(recipe: str = "fmnist_resnet-quick", n_images: int = 2000) -> list[dict[str, Any]]:
    """Run the demo and print its table; returns the rows."""
    from splitserve.core.bundle import Bundle
    from splitserve.core.datasets import load_fashion_mnist
    from splitserve.edge import EdgeClient
    from splitserve.models.zoo import build_bundle

    print(f"[1/3] bundle for recipe {recipe!r} (trained and exported on the first run, then cached)")
    bundle_path = build_bundle(recipe)
    manifest = Bundle.open(bundle_path).manifest
    images, labels = load_fashion_mnist("test")
    images, labels = images[:n_images], labels[:n_images]

    port, metrics_port = _free_port(), _free_port()
    print(f"[2/3] cloud endpoint on 127.0.0.1:{port} (embedded ONNX Runtime tail), metrics on :{metrics_port}")
    proc = _start_endpoint(bundle_path, port, metrics_port)
    rows = []
    try:
        _wait_ready(metrics_port, proc)
        options = ["local", "offload"] + [f"{s.name}@{lv.level}" for s in manifest.splits for lv in s.levels]
        print(f"[3/3] edge client: {len(images)} Fashion-MNIST test images per option")
        for option in [*options, "min_latency"]:
            with EdgeClient(bundle_path, f"127.0.0.1:{port}", policy=option) as client:
                row = _measure(client, images, labels, option)
            row["option"] = "orchestrator (min_latency)" if option == "min_latency" else option
            rows.append(row)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _print_table(rows, manifest.unsplit_accuracy, len(images))
    return rows


def _print_table(rows: list[dict[str, Any]], unsplit: float, n: int) -> None:
    print(f"\nsplitserve demo: {n} Fashion-MNIST test images, unsplit model accuracy "
          f"{unsplit:.2%} (manifest, on its eval set)")
    head = f"{'option':28s} {'payload B':>9s} {'wire B':>7s} {'accuracy':>8s} {'p50 ms':>7s} {'p95 ms':>7s}  where"
    print(head)
    print("-" * len(head) + "-" * 12)
    for r in rows:
        print(f"{r['option']:28s} {r['payload_bytes']:9.1f} {r['wire_bytes']:7.1f} {r['accuracy']:8.2%} "
              f"{r['p50_ms']:7.2f} {r['p95_ms']:7.2f}  {r['where']}")
    print("\npayload = bitstream (split) or PNG (offload); wire = the whole gRPC request message.")
