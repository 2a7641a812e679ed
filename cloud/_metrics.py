"""Prometheus metrics of the endpoint and the small HTTP server that exposes them.

Series (one registry per server, so several servers can live in one process)::

    splitserve_requests_total{model,version,split,level,status}   counter
    splitserve_received_bytes{model,split,level}                   histogram of request message sizes
    splitserve_stage_seconds{model,split,level,stage}              histogram; receive|decode|queue|tail|total
    splitserve_inflight_requests                                   gauge
    splitserve_decode_pool_saturation                              gauge: decodes in the pool / workers

Label values come only from what the server serves: a model, split or level it does not know is
recorded as ``"unknown"``, so malformed requests cannot grow the number of series.

HTTP paths: ``/metrics``; ``/healthz`` (liveness: 200 while the process serves HTTP); ``/readyz`` (200
when every bundle is loaded and the backend is reachable, else 503); ``/metrics/triton`` (the local
tritonserver's own metrics, when this endpoint started one).
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from splitserve.core.errors import ConfigError

__all__ = ["HTTP_IDLE_TIMEOUT_S", "STAGES", "UNKNOWN", "Metrics", "MetricsHTTPServer"]

HTTP_IDLE_TIMEOUT_S = 10.0

_LOG = logging.getLogger(__name__)

STAGES = ("receive", "decode", "queue", "tail", "total")
UNKNOWN = "unknown"
_SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BYTES_BUCKETS = tuple(float(16 << (2 * i)) for i in range(10))  # 16 B .. 4 MiB


class Metrics:
    """The endpoint's metric families, in their own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "splitserve_requests",
            "Inference requests by model, version, split, level and gRPC status.",
            ["model", "version", "split", "level", "status"],
            registry=self.registry,
        )
        # Per option (model, split, level: values the served bundles define, or "unknown"), so an operator
        # sees what each split and rate costs; the label sets stay as few as the bundles' options.
        self.received_bytes = Histogram(
            "splitserve_received_bytes",
            "Size of received inference request messages in bytes, by model, split and level.",
            ["model", "split", "level"],
            buckets=_BYTES_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "splitserve_stage_seconds",
            "Server time per request stage (receive, decode, queue, tail, total), by model, split and level.",
            ["model", "split", "level", "stage"],
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "splitserve_inflight_requests", "Requests being served.", registry=self.registry
        )
        self.decode_saturation = Gauge(
            "splitserve_decode_pool_saturation",
            "Decodes submitted to the pool and not finished, divided by its workers (above 1: queueing).",
            registry=self.registry,
        )

    def observe_stages(self, model: str, split: str, level: str, **seconds: float) -> None:
        """Record one request's stage durations, e.g. ``observe_stages("m", "stem", "1", decode=0.0004)``
        (labels must already be sanitised to known values)."""
        for stage, value in seconds.items():
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}")
            self.stage_seconds.labels(model, split, level, stage).observe(value)

    def observe_received(self, model: str, split: str, level: str, size: int) -> None:
        """Record one request message's size in bytes (labels sanitised, ``unknown`` where not served)."""
        self.received_bytes.labels(model, split, level).observe(size)

    def count(self, model: str, version: str, split: str, level: str, status: str) -> None:
        """Count one finished request (labels must already be sanitised to known values)."""
        self.requests.labels(model, version, split, level, status).inc()

    def exposition(self) -> bytes:
        """The text exposition format of every series."""
        return generate_latest(self.registry)


class MetricsHTTPServer:
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/metrics/triton`` on a daemon thread.

    Args:
        metrics: what ``/metrics`` exposes.
        host: listen host.
        port: listen port (0 picks a free one; see :attr:`port`).
        ready: returns whether the endpoint is ready (read from the HTTP thread; keep it cheap).
        triton_metrics_url: the local tritonserver's metrics URL, proxied at ``/metrics/triton``.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        ready: Callable[[], bool],
        triton_metrics_url: str | None = None,
    ) -> None:
        handler = _handler_class(metrics, ready, triton_metrics_url)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (choose --metrics-port; -1 disables)"
            ) from exc
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="splitserve-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port (blocks until the serving thread returns)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


def _handler_class(
    metrics: Metrics, ready: Callable[[], bool], triton_metrics_url: str | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # An idle or stalled connection is closed after this many seconds, so idle clients cannot pin
        # threads (one per connection) for ever.
        timeout = HTTP_IDLE_TIMEOUT_S

        def handle(self) -> None:
            try:
                super().handle()
            except (ConnectionError, TimeoutError):  # the peer went away or stalled: nothing to log as an error
                _LOG.debug("metrics http: connection from %s ended early", self.client_address[0])

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            elif path == "/metrics/triton" and triton_metrics_url:
                try:
                    with urllib.request.urlopen(triton_metrics_url, timeout=5) as resp:
                        self._send(200, resp.read(), CONTENT_TYPE_LATEST)
                except (urllib.error.URLError, OSError) as exc:
                    self._send(502, f"triton metrics unavailable: {exc}\n".encode())
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            _LOG.debug("metrics http: " + format, *args)

    return Handler
