"""The cloud endpoint: a ``grpc.aio`` server with the inference, health and reflection services.

::

    create_server(config) -> (CloudServer, port)
        backend.start()          embedded ONNX Runtime | Triton at HOST:PORT | a local tritonserver
        bundles: open (hashes checked), prepare decoding, load into the backend, publish
        decoding                 inline for small latents, process pool for big ones (``decode_mode``)
        grpc.aio server          CallInterceptor (token auth, arrival time) -> SplitInferenceServicer
                                 grpc.health.v1 ("" and "splitserve.v1.SplitInference"), reflection
        HTTP                     /metrics /healthz /readyz (/metrics/triton with a local tritonserver)

:func:`serve` runs one until SIGTERM or SIGINT, then drains: health turns NOT_SERVING, new inference
calls are refused UNAVAILABLE (clients retry that elsewhere), in-flight calls get ``grace_s`` to finish,
and the backend (and any tritonserver it started), the decode workers and, ``metrics_linger_s`` later
(so that the final counts get scraped), the HTTP server are stopped before it returns. SIGHUP re-reads
the configured bundle paths: new (name, version) pairs are loaded and published, vanished ones are
unpublished, drained and unloaded, without dropping traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ConfigError, DuplicateRegistrationError, SplitServeError
from splitserve.core.signing import load_trusted_keys

from ._auth import CallInterceptor, load_tokens
from ._backends import EmbeddedBackend, TailBackend
from ._decode import Decoder
from ._metrics import Metrics, MetricsHTTPServer
from ._registry import ModelRegistry, ServedBundle
from ._triton import LocalTriton, TritonBackend
from .config import LOCAL_TRITON, CloudConfig
from .servicer import SERVICE_NAME, SplitInferenceServicer, add_to_server

__all__ = ["SERVICE_NAME", "CloudServer", "create_server", "serve"]

_LOG = logging.getLogger(__name__)

_READY_POLL_S = 1.0


class CloudServer:
    """A started endpoint. Build it with :func:`create_server`; stop it with :meth:`stop`.

    Attributes:
        config: the configuration it was started with.
        port: the bound gRPC port.
        metrics_port: the bound HTTP port, or ``None`` when HTTP is disabled.
        backend: the tail backend.
        registry: the served bundles.
        metrics: its Prometheus metrics.
    """

    def __init__(
        self,
        config: CloudConfig,
        backend: TailBackend,
        decoder: Decoder,
        registry: ModelRegistry,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.backend = backend
        self.registry = registry
        self.metrics = metrics
        self.port = 0
        self.metrics_port: int | None = None
        self._decoder = decoder
        self._grpc: grpc.aio.Server | None = None
        self._interceptor: CallInterceptor | None = None
        self._health = health.aio.HealthServicer()
        self._http: MetricsHTTPServer | None = None
        self._ready = False
        self._ready_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Every bundle is loaded and the backend answered its last readiness check."""
        return self._ready

    async def load_bundle(self, path: str | Path) -> tuple[str, str]:
        """Open a bundle, load its models into the backend and publish it; returns (name, version).

        Raises:
            BundleError: the bundle is missing, malformed or fails its hash checks.
            DuplicateRegistrationError: that (name, version) is already served.
            ModelNotReadyError: the backend cannot load one of its models.
        """
        async with self._lock:
            served = await _open(path, self.config)
            await self._publish(served)
            return served.name, served.version

    async def unload_bundle(self, name: str, version: str) -> None:
        """Stop routing to (name, version), wait for its in-flight requests, then unload it.

        Raises:
            UnknownModelError: it is not served.
        """
        async with self._lock:
            await self._retire(self.registry.remove(name, version))

    async def reload_bundles(self, paths: Sequence[str | Path] | None = None) -> None:
        """Serve exactly the bundles at ``paths`` (default: the configured ones), without dropping traffic.

        New (name, version) pairs are loaded and published first, then pairs no longer present are
        unpublished, drained and unloaded.
        """
        async with self._lock:
            wanted = [await _open(p, self.config) for p in (self.config.bundles if paths is None else paths)]
            keys = {(s.name, s.version) for s in wanted}
            for served in wanted:
                if (served.name, served.version) in self.registry:
                    served.bundle.close()
                else:
                    await self._publish(served)
            for old in list(self.registry):
                if (old.name, old.version) not in keys:
                    await self._retire(self.registry.remove(old.name, old.version))
            _LOG.info("serving %s", [f"{s.name}:{s.version}" for s in self.registry])

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop everything this server started (idempotent).

        Args:
            grace_s: how long in-flight calls may take to finish (default ``config.grace_s``).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._interceptor is not None:
            self._interceptor.start_draining()
        await self._health.enter_graceful_shutdown()
        if self._ready_task is not None:
            self._ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready_task
        self._ready = False
        if self._grpc is not None:
            started = time.monotonic()
            if self._interceptor is not None:  # new calls get UNAVAILABLE while the ones in flight finish
                await self._interceptor.wait_idle(grace)
            await self._grpc.stop(max(0.0, grace - (time.monotonic() - started)))
        await self.backend.close()
        await asyncio.get_running_loop().run_in_executor(None, self._decoder.close)
        if self._http is not None:
            if self.config.metrics_linger_s > 0:  # every count is final now: let Prometheus scrape it
                await asyncio.sleep(self.config.metrics_linger_s)
            self._http.close()
        for served in list(self.registry):
            served.bundle.close()
        _LOG.info("cloud endpoint stopped")

    async def wait_for_termination(self) -> None:
        """Return once :meth:`stop` has been called."""
        await self._stopped.wait()

    async def _start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        tokens = load_tokens(self.config.tokens_file) if self.config.tokens_file else None
        if tokens is not None and not self.config.tls_cert:
            _LOG.warning("bearer tokens are configured without TLS: they cross the network in the clear")
        self._interceptor = CallInterceptor(tokens)
        server = grpc.aio.server(interceptors=[self._interceptor], options=options)
        add_to_server(
            SplitInferenceServicer(
                self.registry,
                self.backend,
                self._decoder,
                self.metrics,
                max_inflight_per_client=self.config.max_inflight_per_client,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        self.port = _bind(server, self.config)
        self._grpc = server
        await server.start()
        if self.config.metrics_port >= 0:
            triton = getattr(self.backend, "local", None)
            self._http = MetricsHTTPServer(
                self.metrics,
                self.config.metrics_host,
                self.config.metrics_port,
                lambda: self._ready,
                triton.metrics_url if isinstance(triton, LocalTriton) else None,
            )
            self._http.start()
            self.metrics_port = self._http.port
        await self._check_ready()
        self._ready_task = asyncio.create_task(self._watch_ready())
        _LOG.info(
            "cloud endpoint on port %d (%s backend, %s decode x%d), serving %s; metrics on %s",
            self.port,
            self.backend.name,
            self._decoder.mode,
            self._decoder.workers,
            [f"{s.name}:{s.version}" for s in self.registry],
            self.metrics_port,
        )

    async def _publish(self, served: ServedBundle) -> None:
        if (served.name, served.version) in self.registry:
            served.bundle.close()
            raise DuplicateRegistrationError(
                f"model {served.name!r} version {served.version!r} is already served"
            )
        try:
            await self._decoder.prepare(served.decode_work(), served.image_pixels)
            await self.backend.load(list(served.tails.values()))
        except BaseException:
            served.bundle.close()
            raise
        self.registry.add(served)
        _LOG.info("published %s %s from %s", served.name, served.version, served.bundle.root)

    async def _retire(self, served: ServedBundle) -> None:
        await served.drained()
        await self.backend.unload(list(served.tails.values()))
        self._decoder.forget([ref for ref, _, _ in served.decode_work()])
        served.bundle.close()
        _LOG.info("unloaded %s %s", served.name, served.version)

    async def _check_ready(self) -> None:
        ready = len(self.registry) > 0 and await self.backend.ready()
        if ready != self._ready:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in ("", SERVICE_NAME):
                await self._health.set(service, status)
            self._ready = ready

    async def _watch_ready(self) -> None:
        while True:
            await asyncio.sleep(_READY_POLL_S)
            try:
                await self._check_ready()
            except Exception:  # noqa: BLE001 - a failed check must not end the watch
                _LOG.exception("readiness check failed")


async def create_server(config: CloudConfig) -> tuple[CloudServer, int]:
    """Start an endpoint from ``config``: backend, bundles, decode pool, gRPC and HTTP servers.

    Returns:
        The started server and its bound gRPC port.

    Raises:
        ConfigError: bad TLS files or tokens file, or the address cannot be bound.
        BundleError: a configured bundle is missing, malformed or fails its hash checks.
        UnavailableError: the Triton backend cannot be reached or started.
    """
    served = [await _open(p, config) for p in config.bundles]
    metrics = Metrics()
    backend = _backend(config)
    decoder = Decoder(
        config.decode_mode,
        config.decode_worker_count,
        metrics,
        inline_max_symbols=config.decode_inline_max_symbols,
    )
    server = CloudServer(config, backend, decoder, ModelRegistry(), metrics)
    try:
        await backend.start()
        for s in served:
            await server._publish(s)
        await server._start()
    except BaseException:
        await server.stop(0)
        for s in served:
            s.bundle.close()
        raise
    return server, server.port


async def serve(config: CloudConfig) -> None:
    """Run an endpoint until SIGTERM or SIGINT, then drain and stop it; SIGHUP reloads the bundles."""
    server, _ = await create_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.create_task(_reload(server))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
        _LOG.info("stopping: draining in-flight requests for up to %.1f s", config.grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop()


async def _reload(server: CloudServer) -> None:
    try:
        await server.reload_bundles()
    except SplitServeError as exc:
        _LOG.error("bundle reload failed, still serving the previous set: %s", exc)


async def _open(path: str | Path, config: CloudConfig) -> ServedBundle:
    loop = asyncio.get_running_loop()
    trusted = load_trusted_keys([config.trusted_keys_file]) if config.trusted_keys_file else None
    bundle = await loop.run_in_executor(None, partial(Bundle.open, path, trusted_keys=trusted))
    try:
        return await loop.run_in_executor(None, ServedBundle.from_bundle, bundle)
    except BaseException:
        bundle.close()
        raise


def _backend(config: CloudConfig) -> TailBackend:
    if not config.triton_url:
        return EmbeddedBackend(config.embedded_threads)
    if config.triton_url == LOCAL_TRITON:
        return TritonBackend(local=LocalTriton())
    return TritonBackend(config.triton_url)


def _check_port_free(address: str) -> None:
    """Refuse an address in use before gRPC tries it (its C core would log a line of its own beside ours)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "::"
    if not port_text.isdigit() or int(port_text) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port_text)))
        except socket.gaierror:
            return  # a name gRPC resolves itself; let it report
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc} (choose --address)") from exc


def _bind(server: grpc.aio.Server, config: CloudConfig) -> int:
    _check_port_free(config.address)
    port: int  # grpc is untyped: add_*_port return the bound port, 0 when binding failed
    try:
        if config.tls_cert:
            port = server.add_secure_port(config.address, _server_credentials(config))
        else:
            port = server.add_insecure_port(config.address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {config.address}: {exc}") from exc
    if not port:
        raise ConfigError(f"cannot listen on {config.address}")
    return port


def _server_credentials(config: CloudConfig) -> grpc.ServerCredentials:
    try:
        cert = Path(config.tls_cert).read_bytes()
        key = Path(config.tls_key).read_bytes()
        client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
