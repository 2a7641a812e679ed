"""Configuration of the cloud endpoint: one frozen dataclass, read from ``SPLITSERVE_CLOUD_*`` variables.

Every field has an environment variable (the Helm chart sets them) and a ``splitserve cloud serve`` flag;
flags override the environment (:meth:`CloudConfig.with_overrides`).

==========================================  =========================  =====================================
variable                                    field                      default
==========================================  =========================  =====================================
``SPLITSERVE_CLOUD_BUNDLES``                ``bundles``                (none: comma-separated bundle paths)
``SPLITSERVE_CLOUD_ADDRESS``                ``address``                ``[::]:50051``
``SPLITSERVE_CLOUD_METRICS_PORT``           ``metrics_port``           ``9464`` (``-1`` disables HTTP)
``SPLITSERVE_CLOUD_METRICS_HOST``           ``metrics_host``           ``0.0.0.0``
``SPLITSERVE_CLOUD_TRITON_URL``             ``triton_url``             empty: embedded ONNX Runtime;
                                                                       ``local``: start tritonserver;
                                                                       ``HOST:PORT``: an existing Triton
``SPLITSERVE_CLOUD_TLS_CERT`` / ``_KEY``    ``tls_cert``, ``tls_key``  empty: plaintext
``SPLITSERVE_CLOUD_TLS_CLIENT_CA``          ``tls_client_ca``          empty; set: mutual TLS required
``SPLITSERVE_CLOUD_TOKENS_FILE``            ``tokens_file``            empty: no authentication
``SPLITSERVE_CLOUD_TRUSTED_KEYS_FILE``      ``trusted_keys_file``      empty: unsigned bundles served
``SPLITSERVE_CLOUD_MAX_MESSAGE_BYTES``      ``max_message_bytes``      ``4194304``
``SPLITSERVE_CLOUD_MAX_INFLIGHT_PER_CLIENT`` ``max_inflight_per_client`` ``64``
``SPLITSERVE_CLOUD_DECODE_WORKERS``         ``decode_workers``         ``0`` (= CPU cores)
``SPLITSERVE_CLOUD_DECODE_MODE``            ``decode_mode``            ``auto`` (or ``process``,
                                                                       ``thread``, ``inline``)
``SPLITSERVE_CLOUD_DECODE_INLINE_MAX_SYMBOLS`` ``decode_inline_max_symbols`` ``16384`` (``auto``: bigger
                                                                       latents go to the process pool)
``SPLITSERVE_CLOUD_EMBEDDED_THREADS``       ``embedded_threads``       ``1`` (ONNX Runtime batches run at
                                                                       once per tail, embedded backend)
``SPLITSERVE_CLOUD_GRACE_S``                ``grace_s``                ``10`` (drain time on SIGTERM)
``SPLITSERVE_CLOUD_METRICS_LINGER_S``       ``metrics_linger_s``       ``0`` (``/metrics`` stays up this long
                                                                       after the drain: the final counts
                                                                       get scraped)
``SPLITSERVE_CLOUD_LOG_LEVEL``              ``log_level``              ``INFO``
==========================================  =========================  =====================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from splitserve.core import envconfig
from splitserve.core.errors import ConfigError

__all__ = ["DECODE_MODES", "ENV_PREFIX", "LOCAL_TRITON", "CloudConfig"]

ENV_PREFIX = "SPLITSERVE_CLOUD_"
LOCAL_TRITON = "local"
DECODE_MODES = ("auto", "process", "thread", "inline")


@dataclass(frozen=True)
class CloudConfig:
    """Everything the endpoint needs to start; see the module docstring for the variables.

    Attributes:
        bundles: bundle paths (directories or ``.tar``) served from the start.
        address: gRPC listen address, ``host:port`` (port 0 picks a free one).
        metrics_port: HTTP port of ``/metrics``, ``/healthz`` and ``/readyz``; 0 picks a free one, -1
            disables HTTP.
        metrics_host: HTTP listen host.
        triton_url: empty for the embedded backend, ``"local"`` to start tritonserver, else ``HOST:PORT``.
        tls_cert: PEM server certificate chain (with ``tls_key``) for TLS.
        tls_key: PEM private key of ``tls_cert``.
        tls_client_ca: PEM CA bundle; when set, clients must present a certificate it signed.
        tokens_file: file of accepted bearer tokens, one per line (``#`` comments); empty disables auth.
        trusted_keys_file: PEM file of Ed25519 public keys; when set, only bundles signed by one of them
            (``splitserve export --sign``) are served.
        max_message_bytes: largest request message accepted (larger ones get RESOURCE_EXHAUSTED).
        max_inflight_per_client: concurrent requests one client (token, else connection) may have.
        decode_workers: entropy-decode workers; 0 means one per CPU core.
        decode_mode: where bitstreams are decoded: ``auto`` (inline when small, else a process pool),
            ``process`` pool, ``thread`` pool or ``inline``.
        decode_inline_max_symbols: with ``auto``, the largest latent (in symbols) decoded inline.
        embedded_threads: ONNX Runtime batches of one tail that may run at once (embedded backend).
        grace_s: seconds in-flight requests get to finish when the server stops.
        metrics_linger_s: seconds ``/metrics`` keeps answering after the drain, before the server exits;
            set it above the Prometheus scrape interval so that the requests served since the last
            scrape are not lost with the process.
        log_level: logging level name.
    """

    bundles: tuple[str, ...] = ()
    address: str = "[::]:50051"
    metrics_port: int = 9464
    metrics_host: str = "0.0.0.0"
    triton_url: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens_file: str = ""
    trusted_keys_file: str = ""
    max_message_bytes: int = 4 * 1024 * 1024
    max_inflight_per_client: int = 64
    decode_workers: int = 0
    decode_mode: str = "auto"
    decode_inline_max_symbols: int = 16384  # cloud._decode.INLINE_MAX_SYMBOLS
    embedded_threads: int = 1
    grace_s: float = 10.0
    metrics_linger_s: float = 0.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundles", tuple(str(b) for b in self.bundles))
        if ":" not in self.address:
            raise ConfigError(f"address {self.address!r} must be HOST:PORT (e.g. [::]:50051)")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port {self.metrics_port} is not a port number (or -1 to disable)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes {self.max_message_bytes} is below 1024")
        if self.max_inflight_per_client < 1:
            raise ConfigError(f"max_inflight_per_client {self.max_inflight_per_client} must be >= 1")
        if self.decode_workers < 0:
            raise ConfigError(f"decode_workers {self.decode_workers} must be >= 0 (0 = one per core)")
        if self.decode_mode not in DECODE_MODES:
            raise ConfigError(f"decode_mode {self.decode_mode!r} is not one of {DECODE_MODES}")
        if self.decode_inline_max_symbols < 0:
            raise ConfigError(f"decode_inline_max_symbols {self.decode_inline_max_symbols} must be >= 0")
        if self.embedded_threads < 1:
            raise ConfigError(f"embedded_threads {self.embedded_threads} must be >= 1")
        if self.grace_s < 0:
            raise ConfigError(f"grace_s {self.grace_s} must be >= 0")
        if self.metrics_linger_s < 0:
            raise ConfigError(f"metrics_linger_s {self.metrics_linger_s} must be >= 0")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ConfigError(f"log_level {self.log_level!r} is not a logging level")

    @property
    def decode_worker_count(self) -> int:
        """``decode_workers``, with 0 resolved to the CPU cores this process may use."""
        if self.decode_workers:
            return self.decode_workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CloudConfig:
        """Read the ``SPLITSERVE_CLOUD_*`` variables; unset or empty ones keep their defaults.

        Args:
            environ: the variables to read (``os.environ`` when omitted).

        Raises:
            ConfigError: a variable has a value of the wrong type or out of range.
        """
        return envconfig.from_env(cls, ENV_PREFIX, environ)

    def with_overrides(self, **overrides: Any) -> CloudConfig:
        """A copy with the given fields replaced; ``None`` values (flags not passed) are ignored."""
        return envconfig.with_overrides(self, "cloud config", **overrides)
