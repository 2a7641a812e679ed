"""One stack harness: the cloud endpoint as a child process, free ports, a throwaway PKI, readiness, stop.

::

    from splitserve.benchmarks.stack import Endpoint, make_pki

    with Endpoint("bundle/", triton="local", metrics_port=0) as endpoint:  # started, serving
        client = EdgeClient("bundle/", endpoint.target)
        ...                                                              # SIGTERM on exit

The endpoint is ``python -m splitserve.cloud serve``, exactly as deployed. It is ready when its gRPC
health service answers SERVING (``readiness="health"``), or when its metrics port answers ``/readyz``
with 200 (``"metrics"``: what works from another network namespace, or over TLS), or both. The demo,
every benchmark and the integration tests start their endpoint processes here. Torch-free: it imports
only the standard library and, for health checks, grpcio.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Self

__all__ = [
    "SERVER_NAME",
    "Endpoint",
    "Pki",
    "free_port",
    "http_get",
    "make_pki",
    "stop_process",
    "wait_serving",
    "wait_until",
]

SERVER_NAME = "splitserve.test"
"""The host name the harness's server certificates are issued for (besides ``localhost`` and 127.0.0.1)."""

_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host``, never one this process handed out before: the kernel can give the same
    ephemeral port to two binds in a row once the first socket is closed (a soak run once got both endpoint
    incarnations on one metrics port, and Prometheus counted the second one's requests twice)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET ``url``: (status, body); status 0 when nothing listens (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def wait_until(
    what: str, ok: Callable[[], bool], timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll ``ok`` every 0.2 s until it is true.

    Raises:
        RuntimeError: ``alive`` turned false (the process exited), or ``timeout_s`` passed.
    """
    deadline = time.monotonic() + timeout_s
    while not ok():
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.2)


def wait_serving(
    target: str,
    timeout_s: float = 180.0,
    *,
    alive: Callable[[], bool] = lambda: True,
    root_certificates: bytes | None = None,
    server_name: str = SERVER_NAME,
) -> None:
    """Poll the gRPC health service at ``target`` until it answers SERVING (overall status, ``""``).

    Args:
        target: ``HOST:PORT``.
        timeout_s: how long to wait.
        alive: false once the endpoint's process exited (the wait ends at once).
        root_certificates: the CA to trust when the endpoint serves TLS (``None``: plaintext).
        server_name: the name its certificate must carry (with ``root_certificates``).

    Raises:
        RuntimeError: not serving within ``timeout_s``, or the process exited.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if root_certificates is None:
        channel = grpc.insecure_channel(target)
    else:
        options = [("grpc.ssl_target_name_override", server_name)]
        channel = grpc.secure_channel(
            target, grpc.ssl_channel_credentials(root_certificates), options=options
        )
    serving = health_pb2.HealthCheckResponse.SERVING

    def ok() -> bool:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
        return bool(reply.status == serving)

    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        wait_until(f"the endpoint at {target} serving", ok, timeout_s, alive)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 20.0, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; always reaped. ``group``: signal its whole process group
    (a child started with ``start_new_session=True``, and everything it started)."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class Pki:
    """A throwaway certificate authority in ``directory``: ``<name>.pem`` / ``<name>.key`` per holder.

    Attributes:
        directory: where the files are.
        ca_name: the CA's file stem.
    """

    directory: Path
    ca_name: str = "ca"

    @property
    def ca(self) -> Path:
        """The CA certificate (what clients trust)."""
        return self.directory / f"{self.ca_name}.pem"

    def cert(self, name: str = "server") -> Path:
        """The certificate of ``name``."""
        return self.directory / f"{name}.pem"

    def key(self, name: str = "server") -> Path:
        """The private key of ``name``."""
        return self.directory / f"{name}.key"

    def issue(self, name: str, hosts: Sequence[str] = (SERVER_NAME, "localhost")) -> Pki:
        """A P-256 key and a certificate for ``hosts`` and 127.0.0.1, signed by this CA (returns self)."""
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
        self._openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        san = ",".join([*(f"DNS:{h}" for h in hosts), "IP:127.0.0.1"])
        (self.directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        signed_by = ["-CA", f"{self.ca_name}.pem", "-CAkey", f"{self.ca_name}.key", "-CAcreateserial"]
        self._openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            *signed_by,
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
        return self

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.directory, check=True, capture_output=True, timeout=60)


def make_pki(
    directory: Path,
    names: Sequence[str] = ("server", "client"),
    *,
    hosts: Sequence[str] = (SERVER_NAME, "localhost"),
    ca: str = "ca",
) -> Pki:
    """A new CA ``ca`` in ``directory`` (openssl, P-256, valid 2 days) and a certificate for each of
    ``names``, issued for ``hosts`` and 127.0.0.1. Call again with another ``ca`` in the same directory
    for a second, untrusted authority.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory, ca)
    pki._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{ca}.key")
    pki._openssl(
        "req", "-x509", "-new", "-key", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca}"
    )
    for name in names:
        pki.issue(name, hosts)
    return pki


Readiness = Literal["health", "metrics", "both"]


class Endpoint:
    """``python -m splitserve.cloud serve`` as a child process: start, wait until ready, stop; restartable.

    Args:
        bundles: the bundle(s) to serve (none: ``extra_args`` names them).
        address: gRPC listen address (default ``127.0.0.1:<free port>``); the port stays for restarts.
        triton: ``None`` for the embedded ONNX Runtime backend, ``"local"`` (a tritonserver the endpoint
            starts) or ``HOST:PORT`` of a running one.
        decode_mode: ``--decode-mode`` (``None``: the endpoint's default).
        metrics_port: HTTP port of ``/metrics`` and ``/readyz`` on 127.0.0.1; -1 turns it off, 0 picks a
            free one.
        tls: serve TLS with this PKI's ``server`` certificate (health checks trust its CA).
        tokens_file: the bearer tokens the endpoint accepts.
        grace_s: ``--grace-s`` (``None``: the endpoint's default).
        log_level: ``--log-level``.
        extra_args: further ``serve`` options.
        env: the child's environment (default: this one's).
        readiness: what :meth:`wait_ready` waits for: gRPC health SERVING, ``/readyz``, or both.
        startup_timeout_s: how long a start may take.
        stop_timeout_s: how long :meth:`stop` waits after SIGTERM before SIGKILL.
        launcher: a command prefix it starts through (``Netlab.exec_prefix("cloud")``).
        place: a context the readiness checks run in (``lambda: lab.inside("cloud")``); gRPC's own threads
            stay outside it, so it needs ``readiness="metrics"``.
        output: where its stdout and stderr go: a path (appended), ``"inherit"``, or ``None``: a temporary
            file whose tail a failed start reports.
        new_session: its own process group; :meth:`stop` and :meth:`kill` then signal the whole group.
        spawn: starts the command instead of :class:`subprocess.Popen` (for a harness that tracks its
            processes; ``launcher``, ``env``, ``output`` and ``new_session`` are then its business).
    """

    def __init__(
        self,
        bundles: str | Path | Sequence[str | Path] = (),
        *,
        address: str | None = None,
        triton: str | None = None,
        decode_mode: str | None = None,
        metrics_port: int = -1,
        tls: Pki | None = None,
        tokens_file: Path | None = None,
        grace_s: float | None = 2.0,
        log_level: str = "WARNING",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        readiness: Readiness = "health",
        startup_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
        launcher: Sequence[str] = (),
        place: Callable[[], AbstractContextManager[Any]] | None = None,
        output: Path | Literal["inherit"] | None = None,
        new_session: bool = False,
        spawn: Callable[[list[str]], subprocess.Popen[Any]] | None = None,
    ) -> None:
        self.bundles = [bundles] if isinstance(bundles, str | Path) else list(bundles)
        self.address = address or f"127.0.0.1:{free_port()}"
        self.metrics_port = free_port() if metrics_port == 0 else metrics_port
        if readiness != "health" and self.metrics_port < 0:
            raise ValueError(f"readiness {readiness!r} needs the metrics port")
        if place is not None and readiness != "metrics":
            raise ValueError("readiness checks in another place need readiness='metrics'")
        self.triton, self.decode_mode, self.tls, self.tokens_file = triton, decode_mode, tls, tokens_file
        self.grace_s, self.log_level, self.extra_args = grace_s, log_level, list(extra_args)
        self.env, self.readiness, self.launcher = env, readiness, list(launcher)
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.place, self.output, self.new_session, self._spawn = place, output, new_session, spawn
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The gRPC port."""
        return int(self.address.rsplit(":", 1)[1])

    @property
    def target(self) -> str:
        """Where clients on this host (or in its namespace) reach it: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The process id of the current incarnation."""
        assert self.proc is not None, "the endpoint was not started"
        return self.proc.pid

    def argv(self) -> list[str]:
        """The command line that starts it."""
        argv = [sys.executable, "-m", "splitserve.cloud", "serve"]
        for bundle in self.bundles:
            argv += ["--bundle", str(bundle)]
        argv += [
            "--address",
            self.address,
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-host",
            "127.0.0.1",
        ]
        if self.triton is not None:
            argv += ["--triton", self.triton]
        if self.decode_mode is not None:
            argv += ["--decode-mode", self.decode_mode]
        if self.tls is not None:
            argv += ["--tls-cert", str(self.tls.cert()), "--tls-key", str(self.tls.key())]
        if self.tokens_file is not None:
            argv += ["--tokens-file", str(self.tokens_file)]
        if self.grace_s is not None:
            argv += ["--grace-s", f"{self.grace_s:g}"]
        return [*argv, "--log-level", self.log_level, *self.extra_args]

    def start(self, *, wait: bool = True) -> Self:
        """Start a new incarnation (on the same ports) and, with ``wait``, :meth:`wait_ready`.

        Raises:
            RuntimeError: it exited or was not ready in time (it is stopped; the message has its log's tail).
        """
        if self._spawn is not None:
            self.proc = self._spawn(self.argv())
        else:
            out: Any = None
            if self.output is None:
                self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
                out = self._log
            elif self.output != "inherit":
                self._log = open(self.output, "ab")  # noqa: SIM115 - closed in stop()
                out = self._log
            self.proc = subprocess.Popen(
                [*self.launcher, *self.argv()],
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                env=self.env,
                start_new_session=self.new_session,
            )
        if wait:
            self.wait_ready()
        return self

    def alive(self) -> bool:
        """Whether the current incarnation runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self) -> None:
        """Wait until it serves (``readiness``), at most ``startup_timeout_s``.

        Raises:
            RuntimeError: it exited or was not ready in time (it is stopped; the message has its log's tail).
        """
        try:
            if self.readiness in ("metrics", "both"):
                url = f"http://127.0.0.1:{self.metrics_port}/readyz"
                with self.place() if self.place is not None else contextlib.nullcontext():
                    wait_until(
                        f"the endpoint at {self.address} ready",
                        lambda: http_get(url)[0] == 200,
                        self.startup_timeout_s,
                        self.alive,
                    )
            if self.readiness in ("health", "both"):
                ca = self.tls.ca.read_bytes() if self.tls is not None else None
                wait_serving(self.target, self.startup_timeout_s, alive=self.alive, root_certificates=ca)
        except RuntimeError as exc:
            tail = self.output_tail()
            self.stop()
            raise RuntimeError(f"{exc}\n{tail}") from None

    def output_tail(self, chars: int = 4000) -> str:
        """The end of its captured output (empty when it is not captured)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - chars))
        return self._log.read().decode(errors="replace")

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM (it drains), SIGKILL after ``timeout_s`` (default ``stop_timeout_s``); reaped."""
        if self.proc is not None:
            stop_process(
                self.proc, self.stop_timeout_s if timeout_s is None else timeout_s, group=self.new_session
            )
        self._close_log()

    def kill(self) -> None:
        """SIGKILL it (its group, with ``new_session``: everything it started) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL) if self.new_session else self.proc.kill()
            self.proc.wait(30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
