"""Fixtures of the cloud integration tests: real endpoints on loopback, real requests from the test bundle.

Requests are what an edge device sends: Fashion-MNIST test images through the bundle's int8 head, entropy
coded with the wire codec (or, for offload, the image as PNG). The reference answer of each request is
computed here, without the endpoint: decode the same bytes, run the tail ONNX with ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from splitserve.benchmarks.stack import Endpoint, free_port
from splitserve.cloud import CloudConfig, CloudServer, create_server
from splitserve.core import codec
from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

_T = TypeVar("_T")


class ServerThread:
    """A :class:`CloudServer` on its own event loop in a background thread (tests use sync stubs)."""

    def __init__(self, config: CloudConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cloud-test-server", daemon=True)
        self._thread.start()
        try:
            self.server: CloudServer
            self.server, self.port = self.run(create_server(config))
        except BaseException:
            self._halt()
            raise
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = 180.0) -> _T:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stub(self, **channel_kwargs: Any) -> pb_grpc.SplitInferenceStub:
        return pb_grpc.SplitInferenceStub(grpc.insecure_channel(self.target, **channel_kwargs))

    def close(self, grace_s: float = 1.0) -> None:
        self.run(self.server.stop(grace_s))
        self._halt()

    def _halt(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@dataclass(frozen=True)
class Sample:
    """One request with the answer the endpoint must give."""

    request: pb.InferRequest
    classes: list[int]
    scores: np.ndarray


class Samples:
    """Builds requests from the test bundle and their reference answers (cached per split and level)."""

    def __init__(self, bundle_path: Path) -> None:
        self.bundle = Bundle.open(bundle_path)
        self.images, self.labels = load_fashion_mnist("test")
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._cache: dict[tuple[str, int, int, int], list[Sample]] = {}

    @property
    def model(self) -> str:
        return self.bundle.manifest.name

    def latent(self, split: str, level: int, n: int, start: int = 0, top_k: int = 5) -> list[Sample]:
        """``n`` requests for ``split``/``level`` from test images ``start..start+n``."""
        key = (split, level, n, start)
        if key not in self._cache:
            info = self.bundle.manifest.split(split)
            tables = self.bundle.tables(split, level)
            head = self._session(info.head_int8)
            ys = head.run(None, {"image": self.images[start : start + n]})[0]
            samples = []
            for i, y in enumerate(ys):
                data, q = codec.encode(y, tables)
                request = pb.InferRequest(
                    request_id=f"{split}-{level}-{start + i}",
                    model=self.model,
                    split=split,
                    level=level,
                    top_k=top_k,
                    tensor=pb.CompressedTensor(
                        codec=codec.CODEC_NAME,
                        codec_version=tables.codec_version,
                        shape=list(info.latent_shape),
                        data=data,
                        symbols_crc32=codec.symbols_crc32(q),
                    ),
                )
                y_hat, _ = codec.decode(data, info.latent_shape, tables)
                logits = self._session(info.tail_onnx).run(["logits"], {"y_hat": y_hat[None]})[0][0]
                samples.append(_sample(request, logits, top_k))
            self._cache[key] = samples
        return self._cache[key]

    def offload(self, n: int, start: int = 0, top_k: int = 5) -> list[Sample]:
        """``n`` offload requests (the image as PNG) with the whole model's answers."""
        key = (OFFLOAD_SPLIT, 0, n, start)
        if key not in self._cache:
            full = self._session(self.bundle.manifest.offload.onnx)
            samples = []
            for i in range(start, start + n):
                image = self.images[i]
                request = pb.InferRequest(
                    request_id=f"offload-{i}",
                    model=self.model,
                    split=OFFLOAD_SPLIT,
                    top_k=top_k,
                    tensor=pb.CompressedTensor(codec="png", codec_version=1, data=png_bytes(image[0])),
                )
                logits = full.run(["logits"], {"image": image[None]})[0][0]
                samples.append(_sample(request, logits, top_k))
            self._cache[key] = samples
        return self._cache[key]

    def _session(self, rel: str) -> ort.InferenceSession:
        if rel not in self._sessions:
            self._sessions[rel] = ort.InferenceSession(
                str(self.bundle.path(rel)), providers=["CPUExecutionProvider"]
            )
        return self._sessions[rel]


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _sample(request: pb.InferRequest, logits: np.ndarray, top_k: int) -> Sample:
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:top_k]
    return Sample(request, [int(i) for i in order], p[order])


def assert_answers(reply: pb.InferResponse, sample: Sample) -> None:
    """The reply carries the reference classes, in order, with the reference probabilities."""
    assert reply.request_id == sample.request.request_id
    assert list(reply.classes) == sample.classes, f"request {reply.request_id}"
    np.testing.assert_allclose(reply.scores, sample.scores, rtol=1e-4, atol=1e-5)


def config(bundles: list[Path], **overrides: Any) -> CloudConfig:
    """A loopback test configuration: free ports, inline decoding, short drain."""
    values: dict[str, Any] = {
        "bundles": tuple(str(b) for b in bundles),
        "address": "127.0.0.1:0",
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "grace_s": 1.0,
    }
    values.update(overrides)
    return CloudConfig(**values)


@pytest.fixture(scope="session")
def samples(test_bundle: Path) -> Samples:
    return Samples(test_bundle)


@pytest.fixture(scope="session")
def embedded_endpoint(test_bundle: Path) -> Iterator[ServerThread]:
    """One shared endpoint with the embedded backend and default settings."""
    server = ServerThread(config([test_bundle]))
    yield server
    server.close()


@pytest.fixture(scope="session")
def triton_endpoint(test_bundle: Path) -> Iterator[ServerThread]:
    """One shared endpoint whose tails run on a local tritonserver (started and stopped with it)."""
    server = ServerThread(config([test_bundle], triton_url="local"))
    yield server
    server.close()


@pytest.fixture
def start_server() -> Iterator[Callable[[CloudConfig], ServerThread]]:
    """Factory of endpoints with special settings; each is stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(cfg: CloudConfig) -> ServerThread:
        server = ServerThread(cfg)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def start_process() -> Iterator[Callable[..., Endpoint]]:
    """Factory of endpoint processes (``python -m splitserve.cloud serve ARGS`` on free loopback ports, the
    metrics port included), started but not waited for (:meth:`Endpoint.wait_ready` waits for ``/readyz``);
    each is terminated (and reaped) at the end of the test."""
    started: list[Endpoint] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Endpoint:
        endpoint = Endpoint(
            extra_args=args, env=env, metrics_port=0, grace_s=None, readiness="metrics", startup_timeout_s=120.0
        )
        started.append(endpoint)
        return endpoint.start(wait=False)

    yield start
    for endpoint in started:
        endpoint.stop()


@pytest.fixture(scope="session")
def cloud_helpers() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not importable by name)."""
    return SimpleNamespace(
        ServerThread=ServerThread,
        assert_answers=assert_answers,
        config=config,
        free_port=free_port,
        png_bytes=png_bytes,
    )
