"""Fixtures of the edge end-to-end tests: real cloud endpoints on loopback, in-process or as a process.

- :class:`EndpointThread`: ``splitserve.cloud.create_server`` on its own event loop (embedded ONNX Runtime
  tails, or a local ``tritonserver``);
- :class:`EndpointProcess`: ``python -m splitserve.cloud serve`` in its own process group, so a test can
  SIGKILL it (and everything it started) mid-stream, and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from splitserve.cloud import CloudConfig, create_server
from splitserve.core.bundle import Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

_T = TypeVar("_T")
_SHM = Path("/dev/shm")
_TRITON_SHM = "triton_python_backend_shm_region_"


def _triton_shm_regions() -> set[str]:
    return {p.name for p in _SHM.glob(_TRITON_SHM + "*")} if _SHM.is_dir() else set()


def _mapped_triton_shm_regions() -> set[str]:
    """Regions some live process still maps (another endpoint's, running now)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if _TRITON_SHM in line:
                mapped.add(line.rsplit("/", 1)[-1].split()[0])
    return mapped


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(
    target: str, timeout_s: float = 120.0, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Poll ``ListModels`` until the endpoint answers (any answer, even UNAUTHENTICATED, means it is up)."""
    deadline = time.monotonic() + timeout_s
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        while True:
            try:
                stub.ListModels(pb.ListModelsRequest(), timeout=1.0)
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"endpoint {target} not serving after {timeout_s} s: {exc}") from exc
            time.sleep(0.1)


class EndpointThread:
    """A cloud endpoint on its own event loop in a background thread."""

    def __init__(self, config: CloudConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edge-test-endpoint", daemon=True)
        self._thread.start()
        try:
            self.server, self.port = self._run(create_server(config))
        except BaseException:
            self._halt()
            raise
        self.target = f"127.0.0.1:{self.port}"

    def _run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = 180.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self._run(self.server.stop(0.5))
        self._halt()

    def _halt(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


class EndpointProcess:
    """``python -m splitserve.cloud serve`` in a new process group on a fixed loopback port."""

    def __init__(self, bundle: Path, port: int | None = None) -> None:
        self.bundle = bundle
        self.args: list[str] = []
        self._shm_before: set[str] = set()
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EndpointProcess:
        self._shm_before = _triton_shm_regions()
        cmd = [
            sys.executable,
            "-m",
            "splitserve.cloud",
            "serve",
            "--bundle",
            str(self.bundle),
            "--address",
            self.target,
            "--metrics-port",
            "-1",
            "--log-level",
            "WARNING",
            "--grace-s",
            "0",
            *self.args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_serving(self.target)
        except AssertionError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the endpoint and everything it started (its process group), then reap it."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)
            self.proc = None
            # A killed tritonserver leaves its python-backend shared memory behind: remove what this
            # endpoint created (new since its start, and mapped by no live process).
            for name in _triton_shm_regions() - self._shm_before - _mapped_triton_shm_regions():
                (_SHM / name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def bundle(test_bundle: Path) -> Iterator[Bundle]:
    b = Bundle.open(test_bundle)
    yield b
    b.close()


@pytest.fixture(scope="session")
def eval_set(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels the manifest's accuracies were measured on."""
    images, labels = load_fashion_mnist("test")
    n = int(bundle.manifest.extra["eval_size"])
    return images[:n], labels[:n]


def _config(bundle: Path, **overrides: Any) -> CloudConfig:
    values: dict[str, Any] = {
        "bundles": (str(bundle),),
        "address": "127.0.0.1:0",
        "metrics_port": -1,
        "grace_s": 0.5,
    }
    values.update(overrides)
    return CloudConfig(**values)


@pytest.fixture(scope="session")
def embedded(test_bundle: Path) -> Iterator[EndpointThread]:
    """The endpoint with its default (embedded ONNX Runtime) backend."""
    endpoint = EndpointThread(_config(test_bundle))
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="session")
def triton(test_bundle: Path) -> Iterator[EndpointThread]:
    """The endpoint with tails on a real tritonserver (the one shipped in nvidia-pytriton)."""
    endpoint = EndpointThread(_config(test_bundle, triton_url="local"))
    yield endpoint
    endpoint.close()


@pytest.fixture
def start_endpoint(test_bundle: Path) -> Iterator[Callable[..., EndpointThread]]:
    """Factory of endpoints with special settings (tokens, TLS), each stopped after the test."""
    started: list[EndpointThread] = []

    def start(**overrides: Any) -> EndpointThread:
        endpoint = EndpointThread(_config(test_bundle, **overrides))
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.close()


@pytest.fixture
def endpoint_process(test_bundle: Path) -> Iterator[EndpointProcess]:
    """An endpoint process the test may kill and restart; always killed and reaped at the end."""
    proc = EndpointProcess(test_bundle)
    yield proc
    proc.kill()
