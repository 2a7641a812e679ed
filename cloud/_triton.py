"""The Triton tail backend (``tritonclient.grpc.aio``) and the local ``tritonserver`` process manager.

``--triton HOST:PORT`` (production): the models named in the manifest must be in that server's
repository; a model that is not ready is loaded through the repository API when the server allows
explicit model control, else the bundle is refused with UNAVAILABLE.

``--triton local``: :class:`LocalTriton` starts the ``tritonserver`` binary shipped in the
``nvidia-pytriton`` wheel (python backend only) on free loopback ports, in explicit model-control mode,
on a repository directory it owns. Each bundle's ``triton/python/<model>`` is staged there under a name
that carries the bundle's name and version, so two versions of one model load side by side::

    <workdir>/repository/<triton_model>__<model>__<version>/config.pbtxt   (name rewritten)
                                                           /1/model.py     -> bundle file (symlink)
                                                           /1/model.onnx   -> bundle file (symlink)

The bundle itself is never written to (Triton's stub would drop ``__pycache__`` beside ``model.py``).
The server is stopped by pid (SIGTERM, then SIGKILL) and reaped; it is also started with
``PR_SET_PDEATHSIG`` so it dies with this process even if this process is killed outright.

Timings: Triton does not report per-request queueing, so :class:`TritonBackend` polls each model's
statistics once a second and reports the mean queue time of the last interval as the sample's
``queue_s`` (capped by the round trip); ``tail_s`` is the rest of the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from splitserve.core.errors import (
    DeadlineExceededError,
    InferenceError,
    ModelNotReadyError,
    ResourceExhaustedError,
    SplitServeError,
    UnavailableError,
)

from ._backends import TailResult
from ._registry import OUTPUT, TailSpec

__all__ = ["LocalTriton", "TritonBackend"]

_LOG = logging.getLogger(__name__)
_STATS_INTERVAL_S = 1.0
_MAX_MESSAGE = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


class LocalTriton:
    """A ``tritonserver`` child process on loopback ports, with a model repository it owns.

    Args:
        workdir: where the repository, backend directory and log go (a temporary directory by default,
            removed on :meth:`stop`).
        startup_timeout_s: how long :class:`TritonBackend` waits for the server to become ready.
        ports: fixed (grpc, http, metrics) ports, so that a restarted server is found at the same address
            (default: free ports picked at every start).
        load_all: load every model of the repository at start (``--model-control-mode=none``), as a
            stand-alone production server does, instead of on request (``explicit``).
        launcher: a command the server is started through, such as ``("ip", "netns", "exec", NS)`` to
            run it in a network namespace (it must ``exec`` the server, keeping its process id).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        startup_timeout_s: float = 120.0,
        *,
        ports: tuple[int, int, int] | None = None,
        load_all: bool = False,
        launcher: Sequence[str] = (),
    ) -> None:
        self._launcher = tuple(launcher)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="splitserve-triton-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.repository = self.workdir / "repository"
        self.startup_timeout_s = startup_timeout_s
        self._ports = ports
        self._load_all = load_all
        self.grpc_port = 0
        self.metrics_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def start(self) -> None:
        """Start ``tritonserver`` and return at once (:meth:`TritonBackend.start` waits until it is ready).

        The server is told to exit when the thread that started it ends (``PR_SET_PDEATHSIG``), so start
        it from a thread that outlives it, such as the event loop's.

        Raises:
            UnavailableError: the ``nvidia-pytriton`` wheel or its stub for this Python is missing.
        """
        dist = _pytriton_dist()
        backends = self.workdir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        self.repository.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            link = python_backend / name
            if not link.exists():
                link.symlink_to(dist / "backends" / "python" / name)
        stub = dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = stub / "triton_python_backend_stub"
        if not stub.is_file():
            raise UnavailableError(
                f"nvidia-pytriton has no python backend stub for Python {sys.version_info[:2]}"
            )
        if not (python_backend / stub.name).is_file():  # a restart: a dying stub may still run the copy
            shutil.copy2(stub, python_backend / stub.name)
        self.grpc_port, http_port, self.metrics_port = self._ports or _free_ports(3)
        args = [
            *self._launcher,
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            f"--model-control-mode={'none' if self._load_all else 'explicit'}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--allow-metrics=true",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_server_env(dist),
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl; no locks are taken
            cwd=self.workdir,
        )
        _LOG.info(
            "started tritonserver pid %d (grpc %s, log %s)", self._proc.pid, self.grpc_url, self.log_path
        )

    def check_alive(self) -> None:
        """Raise :class:`UnavailableError` (with the log's tail) if the server has exited."""
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise UnavailableError(
                f"tritonserver is not running (exit code {code}); log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stage(self, spec: TailSpec) -> str:
        """Copy ``spec``'s python-backend model into the repository (links for big files); return its name."""
        name = f"{spec.triton_model}__{_slug(spec.model)}__{_slug(spec.version)}"
        target = self.repository / name
        if target.exists():
            shutil.rmtree(target)
        (target / "1").mkdir(parents=True)
        config = (spec.triton_dir / "config.pbtxt").read_text()
        config, found = re.subn(r'^name:\s*"[^"]*"', f'name: "{name}"', config, count=1, flags=re.MULTILINE)
        (target / "config.pbtxt").write_text(config if found else f'name: "{name}"\n{config}')
        for entry in (spec.triton_dir / "1").iterdir():
            (target / "1" / entry.name).symlink_to(entry.resolve())
        return name

    def unstage(self, name: str) -> None:
        shutil.rmtree(self.repository / name, ignore_errors=True)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server, SIGKILL it after ``timeout_s``, reap it and remove the work directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    _LOG.warning(
                        "tritonserver pid %d ignored SIGTERM for %.0f s: killing it", proc.pid, timeout_s
                    )
                    proc.kill()
                    proc.wait()
            _LOG.info("tritonserver pid %d exited with %s", proc.pid, proc.returncode)
            self._kill_stray_stubs()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _kill_stray_stubs(self) -> None:
        """Kill python-backend stubs a crashed tritonserver left behind, and free their shared memory.

        A stub outlives its server when the server dies without stopping its models (SIGKILL, crash);
        ours are recognised by their executable, which lies in this server's own work directory.
        """
        stub = str(self.workdir / "backends" / "python" / "triton_python_backend_stub")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].decode(errors="replace") != stub:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                _LOG.warning("killed python-backend stub pid %s left behind by tritonserver", entry.name)
            if len(argv) > 2 and argv[2].startswith(b"triton_python_backend_shm_region_"):
                with contextlib.suppress(OSError):
                    os.unlink(Path("/dev/shm") / argv[2].decode())


class TritonBackend:
    """Tails run by Triton over gRPC (``tritonclient.grpc.aio``; tensors go in ``raw_input_contents``).

    Args:
        url: ``HOST:PORT`` of Triton's gRPC endpoint; ignored with ``local``.
        local: a :class:`LocalTriton` this backend starts, stages bundles into and stops.
        startup_timeout_s: how long :meth:`start` waits for a remote Triton to be ready (a local one
            has its own ``LocalTriton.startup_timeout_s``).
    """

    name = "triton"

    def __init__(
        self, url: str = "", *, local: LocalTriton | None = None, startup_timeout_s: float = 60.0
    ) -> None:
        if not url and local is None:
            raise ValueError("TritonBackend needs a url or a LocalTriton")
        self.url = url
        self.local = local
        self.startup_timeout_s = startup_timeout_s
        self._client: Any = None
        self._names: dict[tuple[str, str, str], str] = {}
        self._queue_s: dict[str, float] = {}
        self._stats: dict[str, tuple[int, int]] = {}
        self._stats_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the local server if any, connect, and wait until Triton is ready.

        Raises:
            UnavailableError: Triton did not become ready in time.
        """
        import tritonclient.grpc.aio as triton_aio  # imported here: the embedded backend never needs it

        timeout_s = self.startup_timeout_s
        if self.local is not None:
            self.local.start()
            self.url = self.local.grpc_url
            timeout_s = self.local.startup_timeout_s
        self._client = triton_aio.InferenceServerClient(
            self.url,
            channel_args=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ],
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.local is not None:
                self.local.check_alive()
            with contextlib.suppress(Exception):
                if await self._client.is_server_ready(client_timeout=2.0):
                    break
            if time.monotonic() > deadline:
                raise UnavailableError(f"Triton at {self.url} is not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
        self._stats_task = asyncio.create_task(self._poll_stats())

    async def load(self, specs: Sequence[TailSpec]) -> None:
        names = [self.local.stage(spec) if self.local is not None else spec.triton_model for spec in specs]
        await asyncio.gather(*(self._load_one(name) for name in names))
        for spec, name in zip(specs, names, strict=True):
            self._names[spec.key] = name

    async def _load_one(self, name: str) -> None:
        try:
            if self.local is not None or not await self._client.is_model_ready(name):
                await self._client.load_model(name)
        except Exception as exc:
            detail = self.local.log_tail() if self.local is not None else ""
            raise ModelNotReadyError(f"Triton cannot load model {name!r}: {exc}\n{detail}".rstrip()) from exc

    async def unload(self, specs: Sequence[TailSpec]) -> None:
        for spec in specs:
            name = self._names.pop(spec.key, None)
            if name is None or self.local is None:
                continue  # a shared production server's models are not ours to unload
            with contextlib.suppress(Exception):
                await self._client.unload_model(name)
            self.local.unstage(name)

    async def infer(self, spec: TailSpec, x: NDArray[Any], timeout_s: float | None = None) -> TailResult:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        name = self._names.get(spec.key)
        if name is None:
            raise ModelNotReadyError(f"{spec.model} {spec.version} split {spec.split}: tail is not loaded")
        batch = x[np.newaxis]
        tensor = InferInput(spec.input_name, list(batch.shape), np_to_triton_dtype(batch.dtype))
        tensor.set_data_from_numpy(batch)
        start = time.perf_counter()
        try:
            result = await self._client.infer(
                name, [tensor], outputs=[InferRequestedOutput(OUTPUT)], client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            raise _error(name, exc) from exc
        rtt = time.perf_counter() - start
        logits = result.as_numpy(OUTPUT)
        if logits is None or logits.shape[0] != 1:
            raise InferenceError(f"Triton model {name!r} returned no {OUTPUT!r} of batch 1")
        queue_s = min(self._queue_s.get(name, 0.0), rtt)
        return TailResult(np.asarray(logits[0], dtype=np.float32), queue_s, rtt - queue_s)

    async def ready(self) -> bool:
        if self._client is None or (self.local is not None and not self.local.running):
            return False
        try:
            if not await self._client.is_server_ready(client_timeout=2.0):
                return False
            for name in list(self._names.values()):
                if not await self._client.is_model_ready(name, client_timeout=2.0):
                    return False
        except Exception:  # noqa: BLE001 - unreachable is simply not ready
            return False
        return True

    def queue_delay_s(self, spec: TailSpec) -> float:
        name = self._names.get(spec.key)
        return self._queue_s.get(name, 0.0) if name else 0.0

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self.local is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.local.stop)

    async def _poll_stats(self) -> None:
        while True:
            await asyncio.sleep(_STATS_INTERVAL_S)
            try:
                stats = await self._client.get_inference_statistics(client_timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - a missed poll only leaves the estimate stale
                _LOG.debug("triton statistics poll failed: %s", exc)
                continue
            for model in stats.model_stats:
                queue = model.inference_stats.queue
                count, ns = int(queue.count), int(queue.ns)
                last_count, last_ns = self._stats.get(model.name, (count, ns))
                self._stats[model.name] = (count, ns)
                delta = count - last_count
                self._queue_s[model.name] = (ns - last_ns) / delta / 1e9 if delta > 0 else 0.0


def _error(name: str, exc: Any) -> SplitServeError:
    status = str(exc.status() or "").removeprefix("StatusCode.")
    message = f"Triton model {name!r}: {exc.message()}"
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(message)
    if status in ("UNAVAILABLE", "CANCELLED"):
        return UnavailableError(message)
    if status == "RESOURCE_EXHAUSTED":
        return ResourceExhaustedError(message)
    if status in ("NOT_FOUND", "FAILED_PRECONDITION"):
        return ModelNotReadyError(message)
    return InferenceError(message)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _pytriton_dist() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UnavailableError("--triton local needs the nvidia-pytriton wheel (pip install nvidia-pytriton)")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise UnavailableError(f"nvidia-pytriton at {dist.parent} has no tritonserver binary")
    return dist


def _server_env(dist: Path) -> dict[str, str]:
    """The environment the python-backend stub needs: this interpreter's libpython and bin first."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(dist.parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
