"""Benchmark ``hostile``: what hostile clients do to everyone else's latency on the real endpoint.

The endpoint (``splitserve cloud serve``, its own process, embedded tails) serves normal clients alone
(``baseline``), then the same normal clients while hostile ones run beside them (``hostile``), each hostile
kind in its own process:

- ``payloads``: pathological and oversized payloads of every codec, paced: a PNG padded with 100,000 empty
  chunks, a PNG with a zTXt bomb (32 MiB inflated), a latent stream of random bytes at its level's largest
  size, a request above the message limit, bytes that are not protobuf, and for colour bundles a
  progressive JPEG and a JPEG whose header claims 8000x8000 pixels at the offload levels;
- ``never_read``: four streams that write valid requests (25/s each) and never read a reply (each holds
  its client's slots until the endpoint ends it, ``stalled_stream_s``);
- ``slow_read``: four streams that read one reply a second while writing 25 requests/s;
- ``idle``: 200 idle TCP connections to the gRPC port and 200 to the metrics port.

Normal clients (unary calls on two connections and one stream, paced) send valid split requests with
symbols drawn from the bundle's tables (``benchmarks.cloud.sample_requests``). Target (issue 18): their p99
during the hostile phase within 2x of the baseline p99, and none of their requests failing. Hostile
processes are paced so that the box's CPU is shared, not exhausted: on a 2-core machine a client process
spinning on the same cores would slow the endpoint whatever it does; the JSON records each kind's rate.

Writes ``<out>/hostile.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from splitserve.benchmarks._machine import machine_info
from splitserve.benchmarks.cloud import endpoint, sample_requests
from splitserve.benchmarks.stack import free_port, stop_process
from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.protos.v1 import inference_pb2 as pb

__all__ = ["HOSTILE_KINDS", "run"]

HOSTILE_KINDS = ("payloads", "never_read", "slow_read", "idle")
TARGET_P99_RATIO = 2.0
_INFER = "/splitserve.v1.SplitInference/Infer"
_STREAM = "/splitserve.v1.SplitInference/InferStream"
_MAX_MESSAGE = 4 << 20  # the endpoint's default --max-message-bytes


def run(
    out: Path, bundle_path: Path, *, phase_s: float = 40.0, normal_rate: float = 30.0, hostile_rate: float = 20.0,
    stream_rate: float = 25.0, each_kind: bool = True, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the normal clients alone, then beside every hostile kind; write ``out/hostile.json``.

    Args:
        phase_s: seconds of each phase (the hostile one also needs the endpoint's 30 s stalled-stream
            limit to pass to show never-reading streams ended).
        normal_rate: requests per second of each of the three normal clients.
        hostile_rate: payloads per second of the ``payloads`` kind.
        stream_rate: items per second each ``never_read`` / ``slow_read`` stream writes.
        each_kind: also measure beside each hostile kind alone (before all of them together).
    """
    out.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port()
    spec_path = out / "hostile_spec.json"
    phases: dict[str, Any] = {}
    with endpoint(bundle_path, "embedded", "auto", metrics_port) as server:
        target, process = server.target, psutil.Process(server.pid)
        spec_path.write_text(json.dumps(
            {"target": target, "metrics_port": metrics_port, "bundle": str(bundle_path), "rate": hostile_rate,
             "stream_rate": stream_rate}
        ))
        try:
            requests = _normal_requests(bundle_path)
            _normal_phase(target, requests, 2.0, normal_rate)  # warm-up: sessions, first calls
            log(f"baseline: normal clients alone for {phase_s:g} s")
            baseline = _normal_phase(target, requests, phase_s, normal_rate)
            for kinds in [*([(k,) for k in HOSTILE_KINDS] if each_kind else []), HOSTILE_KINDS]:
                name = "all" if len(kinds) > 1 else kinds[0]
                log(f"hostile ({name}): the same normal clients beside {', '.join(kinds)} for {phase_s:g} s")
                phases[name] = _hostile_phase(kinds, spec_path, target, requests, phase_s, normal_rate)
                if not _alive(process):
                    break
            alive = _alive(process)
        finally:
            spec_path.unlink(missing_ok=True)
    loaded = phases["all"]["normal"] if "all" in phases else {"p99_ms": None, "failed": None}  # the endpoint died
    ratio = loaded["p99_ms"] / baseline["p99_ms"] if baseline["p99_ms"] and loaded["p99_ms"] else None
    result = {
        "benchmark": "hostile",
        "command": f"splitserve bench hostile --bundle {bundle_path} --phase-s {phase_s:g}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(threads=1),
        "bundle": str(bundle_path),
        "normal": {"clients": "2 unary connections + 1 stream, paced", "rate_per_client": normal_rate},
        "hostile": {"payloads_per_s": hostile_rate, "items_per_s_per_stream": stream_rate, "streams_per_kind": 4,
                    "idle_connections_per_port": 200},
        "baseline": baseline,
        "hostile_phase": loaded,
        "phases": {name: {**ph, "p99_ratio": ph["normal"]["p99_ms"] / baseline["p99_ms"] if baseline["p99_ms"] and
                          ph["normal"]["p99_ms"] else None} for name, ph in phases.items()},
        "p99_ratio": ratio,
        "endpoint_survived": alive,
        "targets": {"p99_ratio_max": TARGET_P99_RATIO, "normal_failures": 0},
        "met": bool(alive and ratio is not None and ratio <= TARGET_P99_RATIO and loaded["failed"] == 0
                    and baseline["failed"] == 0),
    }
    (out / "hostile.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _hostile_phase(
    kinds: tuple[str, ...], spec_path: Path, target: str, requests: list[pb.InferRequest], phase_s: float,
    normal_rate: float,
) -> dict[str, Any]:
    """The normal clients measured while a worker process of each of ``kinds`` runs; the workers' reports."""
    reports = {kind: spec_path.with_name(f"hostile_{kind}.json") for kind in kinds}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "splitserve.benchmarks.hostile", "--worker", kind, str(spec_path), str(path)],
            start_new_session=True,
        )
        for kind, path in reports.items()
    ]
    try:
        time.sleep(2.0)  # the hostile load in place before measuring
        normal = _normal_phase(target, requests, phase_s, normal_rate)
        for w in workers:
            w.send_signal(signal.SIGINT)  # each worker writes its report and exits
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
    finally:
        for w in workers:
            stop_process(w, 5.0)
    clients = {}
    for kind, path in reports.items():
        clients[kind] = json.loads(path.read_text()) if path.exists() else {"report": "missing"}
        path.unlink(missing_ok=True)
    return {"normal": normal, "hostile_clients": clients}


def _normal_requests(bundle_path: Path) -> list[pb.InferRequest]:
    with contextlib.closing(Bundle.open(bundle_path)) as bundle:
        split = bundle.manifest.splits[0]
        return sample_requests(bundle, split.name, split.levels[0].level, 64, seed=1)


def _normal_phase(target: str, requests: list[pb.InferRequest], duration_s: float, rate: float) -> dict[str, Any]:
    """Two unary clients (each its own connection) and one stream client, each at ``rate``/s."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + duration_s

    def record(ms: float | None, error: str | None) -> None:
        with lock:
            if error is None:
                latencies.append(ms or 0.0)
            else:
                failures[error] += 1

    def paced() -> Iterator[pb.InferRequest]:
        i, start = 0, time.monotonic()
        while (t := start + i / rate) < end:
            time.sleep(max(t - time.monotonic(), 0.0))
            yield requests[i % len(requests)]
            i += 1

    def unary() -> None:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(_INFER, pb.InferRequest.SerializeToString, pb.InferResponse.FromString)
            for request in paced():
                t0 = time.perf_counter()
                try:
                    call(request, timeout=5.0)
                    record((time.perf_counter() - t0) * 1e3, None)
                except grpc.RpcError as exc:
                    record(None, exc.code().name)

    def stream() -> None:
        with grpc.insecure_channel(target) as channel:
            call = channel.stream_stream(_STREAM, pb.InferRequest.SerializeToString, pb.InferResponse.FromString)
            for request in paced():  # one at a time: send, wait for its reply
                t0 = time.perf_counter()
                try:
                    reply = next(iter(call(iter([request]), timeout=5.0)))
                    record((time.perf_counter() - t0) * 1e3, "ITEM_ERROR" if reply.HasField("error") else None)
                except (grpc.RpcError, StopIteration) as exc:
                    record(None, exc.code().name if isinstance(exc, grpc.RpcError) else "NO_REPLY")

    threads = [threading.Thread(target=f) for f in (unary, unary, stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.asarray(latencies)
    return {
        "requests": int(len(lat) + sum(failures.values())),
        "ok": int(len(lat)),
        "failed": int(sum(failures.values())),
        "failures": dict(failures),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "max_ms": float(lat.max()) if len(lat) else None,
    }


# ----------------------------------------------------------------------------------------------------
# Hostile workers: each runs until SIGINT, then writes what it did and what it got back.


def _png(width: int, height: int, chunks: list[tuple[bytes, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + bytes(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(t, d) for t, d in chunks)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _payloads(bundle_path: Path) -> list[tuple[str, bytes]]:
    """(name, serialized InferRequest) of every pathological payload this bundle can be sent."""
    from PIL import Image

    with contextlib.closing(Bundle.open(bundle_path)) as bundle:
        m = bundle.manifest
        split = m.splits[0]
        level = split.levels[0].level
        tables = bundle.tables(split.name, level)
        c, h, w = m.input_shape
        levels = m.offload.levels

    def request(tensor: pb.CompressedTensor, split_name: str, lv: int) -> bytes:
        return pb.InferRequest(request_id="hostile", model=m.name, version=m.version, split=split_name, level=lv,
                               top_k=1, tensor=tensor).SerializeToString()

    rng = np.random.default_rng(0)
    cases = [
        ("latent of random bytes", request(pb.CompressedTensor(
            codec="bigrans", codec_version=tables.codec_version, shape=list(split.latent_shape),
            data=rng.integers(0, 256, 4 * int(np.prod(split.latent_shape)) // 3, dtype=np.uint8).tobytes(),
            symbols_crc32=1), split.name, level)),
        ("not protobuf", b"\xff\xff\xff\xff" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("over the message limit", request(pb.CompressedTensor(codec="png", codec_version=1, data=bytes(_MAX_MESSAGE + 1024)),
                                           OFFLOAD_SPLIT, 0)),
    ]
    if c in (1, 3):
        shape = [c, h, w]
        padded = _png(w, h, [(b"teXt", b"")] * 100_000)
        bomb = _png(w, h, [(b"zTXt", b"k\x00\x00" + zlib.compress(bytes(32 << 20)))])
        for name, data in (("PNG of 100,000 empty chunks", padded), ("PNG with a zTXt bomb", bomb)):
            if data is not None:
                cases.append((name, request(pb.CompressedTensor(codec="png", codec_version=1, shape=shape, data=data),
                                            OFFLOAD_SPLIT, 0)))
        for lv in levels:
            if lv.codec == "jpeg":
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    buf, format="JPEG", quality=95, progressive=True)
                cases.append(("progressive JPEG", request(pb.CompressedTensor(
                    codec="jpeg", codec_version=1, shape=shape, data=buf.getvalue()), OFFLOAD_SPLIT, lv.level)))
                big = io.BytesIO()
                Image.new("RGB", (8000, 8000)).save(big, format="JPEG", quality=10)
                cases.append(("JPEG of 8000x8000", request(pb.CompressedTensor(
                    codec="jpeg", codec_version=1, shape=shape, data=big.getvalue()), OFFLOAD_SPLIT, lv.level)))
    return cases


class _Tally:
    """Counts of what a hostile worker's threads saw."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1


def _payload_threads(spec: dict[str, Any], stop: threading.Event, count: _Tally) -> list[threading.Thread]:
    """Four threads sending every pathological payload in turn, paced to ``spec["rate"]`` a second."""
    cases = _payloads(Path(spec["bundle"]))
    options = [("grpc.max_send_message_length", 64 << 20)]

    def send() -> None:
        with grpc.insecure_channel(spec["target"], options=options) as channel:
            call = channel.unary_unary(_INFER)  # raw bytes both ways
            i = 0
            while not stop.is_set():
                name, data = cases[i % len(cases)]
                try:
                    call(data, timeout=10.0)
                    count(f"{name}: OK")
                except grpc.RpcError as exc:
                    count(f"{name}: {exc.code().name}")
                i += 1
                stop.wait(4 / spec["rate"])

    return [threading.Thread(target=send) for _ in range(4)]


def _stream_threads(
    spec: dict[str, Any], stop: threading.Event, count: _Tally, *, read: bool
) -> list[threading.Thread]:
    """Four streams writing valid requests at ``spec["stream_rate"]``; reading one reply a second, or none."""
    requests = _normal_requests(Path(spec["bundle"]))

    def flood() -> None:
        with grpc.insecure_channel(spec["target"]) as channel:
            call = channel.stream_stream(_STREAM, pb.InferRequest.SerializeToString, pb.InferResponse.FromString)

            def items() -> Iterator[pb.InferRequest]:  # paced: these hold slots and buffers, not the CPU
                i = 0
                while not stop.wait(1.0 / spec["stream_rate"]):
                    count("items written")
                    yield requests[i % len(requests)]
                    i += 1

            replies = call(items())
            try:
                if not read:
                    stop.wait()
                    count(f"stream at the end: {'running' if replies.running() else replies.code().name}")
                else:
                    for _ in replies:
                        count("replies read")
                        if stop.wait(1.0):
                            break
            except grpc.RpcError as exc:
                count(f"stream ended: {exc.code().name}")
            replies.cancel()

    return [threading.Thread(target=flood) for _ in range(4)]


def _idle_connections(spec: dict[str, Any], stop: threading.Event, count: _Tally) -> list[threading.Thread]:
    """200 idle connections to each port until stopped, then which ones the endpoint closed (no threads)."""
    socks = []
    host, port = spec["target"].rsplit(":", 1)
    for p in (int(port), spec["metrics_port"]):
        for _ in range(200):
            s = socket.socket()
            try:
                s.connect((host, p))
                socks.append((p, s))
                count(f"connected to {'gRPC' if p == int(port) else 'metrics'}")
            except OSError:
                count("refused")
    stop.wait()
    for p, s in socks:  # which ones the endpoint closed: a read returns b"" on a closed connection
        s.setblocking(False)
        try:
            closed = s.recv(1) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        what = "gRPC" if p == int(port) else "metrics"
        count(f"{what} connections closed by the endpoint" if closed else f"{what} connections still open")
        s.close()
    return []


def _worker(kind: str, spec: dict[str, Any], report_path: Path) -> None:
    """One hostile kind in this process until SIGINT; its counts go to ``report_path``."""
    stop, count = threading.Event(), _Tally()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    if kind == "payloads":
        threads = _payload_threads(spec, stop, count)
    elif kind in ("never_read", "slow_read"):
        threads = _stream_threads(spec, stop, count, read=kind == "slow_read")
    elif kind == "idle":
        threads = _idle_connections(spec, stop, count)
    else:
        raise ValueError(f"unknown hostile kind {kind!r} (one of {HOSTILE_KINDS})")
    for t in threads:
        t.daemon = True
        t.start()
    stop.wait()
    for t in threads:
        t.join(10.0)
    report_path.write_text(json.dumps({"seconds": round(time.monotonic() - started, 1), "counts": dict(count.counts)}))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=HOSTILE_KINDS, required=True)
    parser.add_argument("spec", type=Path)
    parser.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker(args.worker, json.loads(args.spec.read_text()), args.report)


if __name__ == "__main__":
    main()
