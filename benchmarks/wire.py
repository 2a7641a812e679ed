"""Benchmark ``wire``: what one request costs on the wire, counted by the kernel, both directions.

The real endpoint (``splitserve cloud serve``, embedded tails, plaintext on loopback) and the real edge
client (``EdgeClient``, one option pinned). For every remote option of the bundle, each wire (``v1``:
``Infer``/``InferStream``; ``compact``: ``Run``/``RunStream``) and call kind (unary; a stream with one request
in flight at a time, as a camera feed slower than the round trip), ``requests`` sequential requests after
``warmup`` ones. The kernel's TCP counters of the client's connection (``ss -ti``: ``bytes_sent``,
``bytes_received``, TCP payload without TCP/IP headers) give the bytes up and down per request; they are
compared with the payload, with the client's own figure (``Result.bytes_sent``, what the orchestrator
prices options by) and with the issue-17 targets. Pings (``Ping`` against v1's ``ListModels``) likewise.

Writes ``<out>/wire.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from splitserve.benchmarks._inputs import bundle_images
from splitserve.benchmarks._machine import machine_info
from splitserve.benchmarks.cloud import endpoint
from splitserve.core.bundle import Bundle
from splitserve.core.wire import WINDOW_UPDATES_BYTES, wire_options
from splitserve.edge import EdgeClient, EdgeConfig

__all__ = ["TARGETS", "kernel_bytes", "measure_bytes", "run"]

TARGETS = {
    "stream_up_over_payload_max": 24,
    "stream_down_top1_max": 32,
    "unary_up_over_payload_max": 96,
    "client_vs_kernel_max_error": 0.05,
}
WIRES = ("v1", "compact")
_COUNTER = re.compile(r"\b(bytes_sent|bytes_received):(\d+)")


def kernel_bytes(port: int) -> tuple[int, int]:
    """TCP payload bytes sent and received so far by every client connection to loopback ``port``."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    totals = {"bytes_sent": 0, "bytes_received": 0}
    for name, value in _COUNTER.findall(out):
        totals[name] += int(value)
    return totals["bytes_sent"], totals["bytes_received"]


def _policy(split: str, level: int, offload: bool) -> str:
    if offload:
        return f"offload@{level}" if level else "offload"
    return f"{split}@{level}"


def measure_bytes(port: int, results: Iterator[Any], total: int, warmup: int) -> dict[str, float]:
    """Bytes per request of the requests behind ``results`` after the first ``warmup`` of ``total``, kernel
    and client. The counters are read between results, so a stream's opening and closing are not counted."""
    measured = []
    up0 = down0 = up1 = down1 = 0
    for i, result in enumerate(results):
        if not result.remote:
            raise RuntimeError(f"request {i} was answered on the device: {result.fallback_reason}")
        if i >= warmup:
            measured.append(result)
        if i in (warmup - 1, total - 1):
            time.sleep(0.05)
            if i == warmup - 1:
                up0, down0 = kernel_bytes(port)
            else:
                up1, down1 = kernel_bytes(port)
    n = len(measured)
    up, down = (up1 - up0) / n, (down1 - down0) / n
    payload = float(np.mean([r.payload_bytes for r in measured]))
    client_b = float(np.mean([r.bytes_sent for r in measured]))
    return {
        "payload_B": round(payload, 1),
        "up_B": round(up, 1),
        "down_B": round(down, 1),
        "up_over_payload_B": round(up - payload, 1),
        "client_B": round(client_b, 1),
        "client_vs_kernel": round(client_b / up, 4),
        "requests": n,
    }


def _pings(port: int, client: EdgeClient, n: int) -> dict[str, float]:
    for _ in range(10):
        client.ping()
    time.sleep(0.05)
    up0, down0 = kernel_bytes(port)
    for _ in range(n):
        client.ping()
    time.sleep(0.05)
    up1, down1 = kernel_bytes(port)
    up = (up1 - up0) / n
    return {
        "up_B": round(up, 1),
        "down_B": round((down1 - down0) / n, 1),
        "client_B": client.transport.ping_bytes(),
        "client_vs_kernel": round(client.transport.ping_bytes() / up, 4),
    }


def run(out: Path, bundle_path: Path, *, requests: int = 200, warmup: int = 20, top_k: int = 1) -> dict[str, Any]:
    """Measure every option, wire and call kind with ``top_k`` classes per reply; write ``<out>/wire.json``."""
    bundle = Bundle.open(bundle_path)
    options = wire_options(bundle.manifest)
    images = bundle_images(bundle)[: warmup + requests]
    bundle.close()
    rows: list[dict[str, Any]] = []
    pings: dict[str, dict[str, float]] = {}
    with endpoint(bundle_path, "embedded", "inline") as server:
        target, port = server.target, server.port
        for option in options:
            policy = _policy(option.split, option.level, option.offload)
            for wire in WIRES:
                config = EdgeConfig(
                    wire=wire, top_k=top_k, fallback=False, timeout_s=10.0, remeasure_s=0.0, retry_attempts=1
                )
                with EdgeClient(bundle_path, target, policy=policy, config=config) as client:
                    unary = measure_bytes(port, (client.infer(x) for x in images), len(images), warmup)
                    stream = measure_bytes(port, client.stream(images, max_inflight=1), len(images), warmup)
                    if wire not in pings:
                        pings[wire] = _pings(port, client, requests)
                rows.append({"option": policy, "wire": wire, "unary": unary, "stream": stream})
                print(
                    f"{policy:14s} {wire:8s} payload {unary['payload_B']:8.1f} B  unary up +{unary['up_over_payload_B']:6.1f} "
                    f"down {unary['down_B']:6.1f}  stream up +{stream['up_over_payload_B']:6.1f} down {stream['down_B']:6.1f}  "
                    f"client/kernel {unary['client_vs_kernel']:.3f} {stream['client_vs_kernel']:.3f}",
                    flush=True,
                )
    compact = [r for r in rows if r["wire"] == "compact"]
    worst = {
        "stream_up_over_payload_B": max(r["stream"]["up_over_payload_B"] for r in compact),
        "stream_down_B": max(r["stream"]["down_B"] for r in compact),
        "unary_up_over_payload_B": max(r["unary"]["up_over_payload_B"] for r in compact),
        "client_vs_kernel_max_error": max(
            abs(r[kind]["client_vs_kernel"] - 1.0) for r in rows for kind in ("unary", "stream")
        ),
    }
    met = {
        "stream_up": worst["stream_up_over_payload_B"] <= TARGETS["stream_up_over_payload_max"],
        "stream_down": worst["stream_down_B"] <= TARGETS["stream_down_top1_max"],
        "unary_up": worst["unary_up_over_payload_B"] <= TARGETS["unary_up_over_payload_max"],
        "client_bytes": worst["client_vs_kernel_max_error"] <= TARGETS["client_vs_kernel_max_error"],
    }
    result = {
        "benchmark": "wire",
        "bundle": bundle_path.name,
        "machine": machine_info(threads=1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requests_per_case": requests,
        "top_k": top_k,
        "window_updates_B": WINDOW_UPDATES_BYTES,
        "targets": TARGETS,
        "worst_compact": worst,
        "met": met,
        "pings": pings,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "wire.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
