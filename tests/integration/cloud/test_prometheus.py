"""A real Prometheus server scrapes the endpoint; the series are queried back through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import pytest

from splitserve.protos.v1 import inference_pb2 as pb

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError) as exc:  # not listening (yet)
        return 0, str(exc)


@pytest.fixture
def prometheus(tmp_path, embedded_endpoint, cloud_helpers):
    """Prometheus 2 scraping the shared embedded endpoint every second; yields its base URL."""
    port = cloud_helpers.free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: splitserve\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{embedded_endpoint.server.metrics_port}']\n"
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _get(f"{base}/-/ready")[0] != 200:
            assert proc.poll() is None, f"prometheus exited with code {proc.returncode}"
            assert time.monotonic() < deadline, "prometheus did not become ready within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query(base: str, expr: str, timeout_s: float = 40.0) -> list[dict]:
    """Poll an instant query until it returns series (the first scrapes land a few seconds in)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        if status == 200:
            result = json.loads(body)["data"]["result"]
            if result:
                return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus returned no series for {expr!r} in {timeout_s} s")


@pytest.mark.skipif(not shutil.which(PROMETHEUS), reason="Debian package prometheus is not installed")
def test_prometheus_scrapes_every_series(prometheus, embedded_endpoint, samples):
    stub = embedded_endpoint.stub()
    for sample in samples.latent("stem", 0, 8) + samples.offload(4):
        stub.Infer(sample.request, timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Infer(pb.InferRequest(model="nope"), timeout=10)

    _query(prometheus, 'up{job="splitserve"} == 1')
    ok_total = 'sum by (model) (splitserve_requests_total{status="OK",split="stem",level="0"}) >= 8'
    (ok,) = _query(prometheus, ok_total)
    assert ok["metric"]["model"] == samples.model
    _query(prometheus, 'splitserve_requests_total{status="OK",split="input"}')
    _query(prometheus, 'splitserve_requests_total{status="NOT_FOUND",model="unknown"}')
    stages = {r["metric"]["stage"] for r in _query(prometheus, "splitserve_stage_seconds_count > 0")}
    assert stages == {"receive", "decode", "queue", "tail", "total"}
    p50 = _query(
        prometheus, 'histogram_quantile(0.5, sum by (le) (splitserve_stage_seconds_bucket{stage="total"}))'
    )
    assert 0 < float(p50[0]["value"][1]) < 1.0
    _query(prometheus, "splitserve_received_bytes_count > 0")
    # per option: the split requests' bytes and server time apart from the offloaded images'
    by_option = {(r["metric"]["split"], r["metric"]["level"]): float(r["value"][1]) for r in _query(
        prometheus, "sum by (split, level) (splitserve_received_bytes_sum) / sum by (split, level) (splitserve_received_bytes_count)")}
    assert 0 < by_option[("stem", "0")] < by_option[("input", "0")]
    _query(prometheus, 'splitserve_stage_seconds_count{stage="tail",split="stem",level="0"} > 0')
    _query(prometheus, "splitserve_inflight_requests")
    _query(prometheus, "splitserve_decode_pool_saturation")


def test_health_endpoints(embedded_endpoint):
    port = embedded_endpoint.server.metrics_port
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    assert _get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
    assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "splitserve_inflight_requests" in text
