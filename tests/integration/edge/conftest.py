"""Fixtures of the edge end-to-end tests: real cloud endpoints on loopback, in-process or as a process.

- :class:`EndpointThread`: ``splitserve.cloud.create_server`` on its own event loop (embedded ONNX Runtime
  tails, or a local ``tritonserver``);
- :class:`EndpointProcess`: ``python -m splitserve.cloud serve`` (the stack harness's
  :class:`~splitserve.benchmarks.stack.Endpoint`) in its own process group, so a test can SIGKILL it (and
  everything it started) mid-stream, and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pytest

from splitserve.benchmarks.stack import Endpoint
from splitserve.cloud import CloudConfig, create_server
from splitserve.core.bundle import Bundle
from splitserve.core.datasets import load_fashion_mnist

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


class EndpointProcess(Endpoint):
    """An :class:`Endpoint` in its own process group on a fixed loopback port: a test may SIGKILL it (and
    everything it started) mid-stream and start it again on the same port."""

    def __init__(self, bundle: Path) -> None:
        super().__init__(bundle, grace_s=0, new_session=True, startup_timeout_s=120.0)
        self._shm_before: set[str] = set()

    def start(self, *, wait: bool = True) -> Self:
        self._shm_before = _triton_shm_regions()
        return super().start(wait=wait)

    def kill(self) -> None:
        """SIGKILL the endpoint and everything it started (its process group), then reap it."""
        super().kill()
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
    n = int(bundle.manifest.extra.eval_size)
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
