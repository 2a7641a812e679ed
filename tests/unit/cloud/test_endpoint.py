"""Package surface, torch-freedom of a running endpoint, tokens file, and the metrics HTTP server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from types import ModuleType

import pytest

import splitserve.cloud
from splitserve.cloud._auth import load_tokens
from splitserve.cloud._metrics import Metrics, MetricsHTTPServer
from splitserve.core.errors import ConfigError


def test_public_names_are_exported():
    public = {
        n
        for n, v in vars(splitserve.cloud).items()
        if not n.startswith("_") and not isinstance(v, ModuleType)
    }
    assert public - {"annotations"} == set(splitserve.cloud.__all__)


def test_a_serving_endpoint_never_imports_torch(tiny_bundle):
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        import grpc
        from splitserve.cloud import CloudConfig, create_server
        from splitserve.protos.v1 import inference_pb2 as pb, inference_pb2_grpc as pb_grpc

        async def main():
            config = CloudConfig(bundles=({str(tiny_bundle)!r},), address="127.0.0.1:0", metrics_port=-1)
            server, port = await create_server(config)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{{port}}") as channel:
                stub = pb_grpc.SplitInferenceStub(channel)
                reply = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
            await server.stop(0)
            assert reply.models, "no model served"

        if __name__ == "__main__":
            asyncio.run(main())
            assert "torch" not in sys.modules, "torch was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=120)


def test_tokens_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# fleet A\n  alpha  \n\nbeta\n")
    assert load_tokens(path) == {"alpha", "beta"}
    path.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_tokens(path)
    with pytest.raises(ConfigError, match="cannot read tokens file"):
        load_tokens(tmp_path / "missing")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_http_server_paths():
    metrics = Metrics()
    metrics.count("m", "1", "s", "0", "OK")
    metrics.observe_stages("m", "s", "0", decode=0.001, total=0.002)
    metrics.observe_received("m", "s", "0", 1234)
    ready = [False]
    http = MetricsHTTPServer(metrics, "127.0.0.1", 0, lambda: ready[0], "http://127.0.0.1:9/metrics")
    http.start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz") == (503, "not ready\n")
        ready[0] = True
        assert _get(f"{base}/readyz") == (200, "ready\n")
        status, text = _get(f"{base}/metrics")
        assert status == 200
        assert 'splitserve_requests_total{level="0",model="m",split="s",status="OK",version="1"} 1.0' in text
        assert 'splitserve_stage_seconds_count{level="0",model="m",split="s",stage="decode"} 1.0' in text
        assert 'splitserve_received_bytes_sum{level="0",model="m",split="s"} 1234.0' in text
        assert _get(f"{base}/metrics/triton")[0] == 502
        assert _get(f"{base}/other")[0] == 404
    finally:
        http.close()


def test_metrics_outlive_the_drain_by_the_linger(tiny_bundle):
    """Regression (soak): the counts of the last scrape interval were lost with a stopping endpoint."""
    import asyncio
    import time

    import grpc

    from splitserve.cloud import CloudConfig, create_server
    from splitserve.protos.v1 import inference_pb2 as pb
    from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

    async def main() -> None:
        config = CloudConfig(
            bundles=(str(tiny_bundle),),
            address="127.0.0.1:0",
            metrics_host="127.0.0.1",
            metrics_port=0,
            grace_s=0.1,
            metrics_linger_s=1.5,
        )
        server, port = await create_server(config)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.SplitInferenceStub(channel).Infer(pb.InferRequest(model="nope"), timeout=10)
        base = f"http://127.0.0.1:{server.metrics_port}"
        loop = asyncio.get_running_loop()
        stop = asyncio.create_task(server.stop())
        await asyncio.sleep(0.6)  # drained (grace 0.1 s), lingering
        assert not stop.done()
        status, text = await loop.run_in_executor(None, _get, f"{base}/metrics")
        assert status == 200 and 'status="NOT_FOUND"' in text
        assert (await loop.run_in_executor(None, _get, f"{base}/readyz"))[0] == 503
        t0 = time.monotonic()
        await stop
        assert time.monotonic() - t0 < 5.0
        with pytest.raises(urllib.error.URLError):
            _get(f"{base}/healthz")

    asyncio.run(main())


def test_metrics_linger_must_not_be_negative():
    from splitserve.cloud import CloudConfig

    with pytest.raises(ConfigError, match="metrics_linger_s"):
        CloudConfig(metrics_linger_s=-1)
    assert CloudConfig.from_env({"SPLITSERVE_CLOUD_METRICS_LINGER_S": "2.5"}).metrics_linger_s == 2.5
