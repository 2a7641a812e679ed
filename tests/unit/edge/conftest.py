"""Fixtures of the edge unit tests: the test bundle, Fashion-MNIST, and in-memory endpoints.

:class:`TailHandler` answers requests the way the cloud endpoint does (decode the bitstream or PNG, run
the tail or the whole model with ONNX Runtime, softmax top-k), in memory, for :class:`MockTransport`.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from splitserve.core import codec
from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.core.errors import SplitServeError
from splitserve.core.wire import top_k
from splitserve.protos.v1 import inference_pb2 as pb


class TailHandler:
    """An in-memory endpoint over a bundle; ``fail`` (if set) decides per request whether to raise instead.

    Attributes:
        fail: ``request -> error or None``; the error is raised instead of answering.
        delay: ``request -> seconds`` to wait before answering.
        served: requests answered.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.fail: Callable[[Any], SplitServeError | None] | None = None
        self.delay: Callable[[pb.InferRequest], float] | None = None
        self.served = 0
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def __call__(
        self, request: pb.InferRequest | pb.ListModelsRequest
    ) -> pb.InferResponse | pb.ListModelsResponse:
        if isinstance(request, pb.ListModelsRequest):
            if self.fail is not None and (err := self.fail(request)) is not None:
                raise err
            return pb.ListModelsResponse()
        if self.fail is not None and (err := self.fail(request)) is not None:
            raise err
        if self.delay is not None:
            threading.Event().wait(self.delay(request))
        logits = self.logits(request)
        classes, scores = top_k(logits, request.top_k or 5)
        with self._lock:
            self.served += 1
        m = self.bundle.manifest
        return pb.InferResponse(
            request_id=request.request_id,
            model=m.name,
            version=m.version,
            classes=classes,
            scores=scores,
            timings=pb.ServerTimings(decode_ms=0.3, tail_ms=0.5, total_ms=1.0),
        )

    def logits(self, request: pb.InferRequest) -> np.ndarray:
        m = self.bundle.manifest
        if request.split == OFFLOAD_SPLIT:
            image = np.asarray(Image.open(io.BytesIO(request.tensor.data)), dtype=np.uint8)[None]
            return self._run(m.offload.onnx, "image", image)
        info = m.split(request.split)
        tables = self.bundle.tables(request.split, request.level)
        y_hat, q = codec.decode(request.tensor.data, tuple(request.tensor.shape), tables)  # type: ignore[arg-type]
        assert codec.symbols_crc32(q) == request.tensor.symbols_crc32
        return self._run(info.tail_onnx, "y_hat", y_hat)

    def _run(self, rel: str, name: str, x: np.ndarray) -> np.ndarray:
        with self._lock:
            if rel not in self._sessions:
                self._sessions[rel] = ort.InferenceSession(
                    str(self.bundle.path(rel)), providers=["CPUExecutionProvider"]
                )
            sess = self._sessions[rel]
        out: np.ndarray = sess.run(None, {name: x[None]})[0][0]
        return out


@pytest.fixture(scope="session")
def bundle_path(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture(scope="session")
def bundle(tiny_bundle: Path) -> Iterator[Bundle]:
    b = Bundle.open(tiny_bundle)
    yield b
    b.close()


@pytest.fixture(scope="session")
def fmnist() -> tuple[np.ndarray, np.ndarray]:
    return load_fashion_mnist("test")


@pytest.fixture(scope="session")
def images(fmnist: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return fmnist[0]


@pytest.fixture
def tail(bundle: Bundle) -> TailHandler:
    return TailHandler(bundle)
