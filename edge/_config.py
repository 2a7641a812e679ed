"""Configuration of the edge client: one frozen dataclass, read from ``SPLITSERVE_EDGE_*`` variables.

Apps usually build an :class:`EdgeConfig` in code; :meth:`EdgeConfig.from_env` reads the same fields
from the environment (the ``splitserve edge run`` command does, and its flags override it).

=============================================  ===========================  ==================================
variable                                       field                        default
=============================================  ===========================  ==================================
``SPLITSERVE_EDGE_ENDPOINT``                   ``endpoint``                 (none: ``HOST:PORT``)
``SPLITSERVE_EDGE_POLICY``                     ``policy``                   ``min_latency`` (or ``local``,
                                                                            ``offload``, ``SPLIT@LEVEL``,
                                                                            another orchestrator policy)
``SPLITSERVE_EDGE_ACCURACY_FLOOR``             ``accuracy_floor``           ``0`` (options below it not chosen)
``SPLITSERVE_EDGE_TIMEOUT_S``                  ``timeout_s``                ``1.0`` (per-request deadline)
``SPLITSERVE_EDGE_MAX_INFLIGHT``               ``max_inflight``             ``8`` (stream window)
``SPLITSERVE_EDGE_TOKEN`` / ``_TOKEN_FILE``    ``token``, ``token_file``    empty: no bearer token
``SPLITSERVE_EDGE_TLS``                        ``tls``                      ``false`` (true with any TLS file)
``SPLITSERVE_EDGE_TLS_CA``                     ``tls_ca``                   empty: the system roots
``SPLITSERVE_EDGE_TLS_CERT`` / ``_KEY``        ``tls_cert``, ``tls_key``    empty: no client certificate
``SPLITSERVE_EDGE_TLS_SERVER_NAME``            ``tls_server_name``          empty: the endpoint's host
``SPLITSERVE_EDGE_RETRY_ATTEMPTS``             ``retry_attempts``           ``3`` (gRPC retryPolicy)
``SPLITSERVE_EDGE_RETRY_BACKOFF_S``            ``retry_backoff_s``          ``0.01``
``SPLITSERVE_EDGE_RETRY_MAX_BACKOFF_S``        ``retry_max_backoff_s``      ``0.2``
``SPLITSERVE_EDGE_RECONNECT_MAX_S``            ``reconnect_max_s``          ``1.0``
``SPLITSERVE_EDGE_BREAKER_FAILURES``           ``breaker_failures``         ``3``
``SPLITSERVE_EDGE_BREAKER_RESET_S``            ``breaker_reset_s``          ``2.0``
``SPLITSERVE_EDGE_FALLBACK``                   ``fallback``                 ``true``
``SPLITSERVE_EDGE_GIVE_UP_FACTOR``             ``give_up_factor``           ``3`` (0: wait the whole budget)
``SPLITSERVE_EDGE_GIVE_UP_MIN_S``              ``give_up_min_s``            ``0.05``
``SPLITSERVE_EDGE_PRECISION``                  ``precision``                ``auto`` (or ``int8``, ``fp32``)
``SPLITSERVE_EDGE_ORT_THREADS``                ``ort_threads``              ``1`` (0: ONNX Runtime's choice)
``SPLITSERVE_EDGE_TOP_K``                      ``top_k``                    ``5``
``SPLITSERVE_EDGE_PROBE_TIMEOUT_S``            ``probe_timeout_s``          ``0.5``
``SPLITSERVE_EDGE_REMEASURE_S``                ``remeasure_s``              ``60`` (0: measure at start only)
``SPLITSERVE_EDGE_MAX_MESSAGE_BYTES``          ``max_message_bytes``        ``4194304``
``SPLITSERVE_EDGE_DEVICE_SLOWDOWN``            ``device_slowdown``          ``1`` (emulate a slower device)
``SPLITSERVE_EDGE_WIRE``                       ``wire``                     ``compact`` (or ``v1``)
``SPLITSERVE_EDGE_TIMINGS_EVERY``              ``timings_every``            ``0`` (stream replies with full timings)
=============================================  ===========================  ==================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitserve.core import envconfig
from splitserve.core.errors import ConfigError

__all__ = ["ENV_PREFIX", "PRECISIONS", "Credentials", "EdgeConfig"]

ENV_PREFIX = "SPLITSERVE_EDGE_"
PRECISIONS = ("int8", "fp32", "auto")
WIRES = ("compact", "v1")


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge client needs besides the bundle; see the module docstring for the variables.

    Attributes:
        endpoint: ``HOST:PORT`` of the cloud endpoint; empty is allowed only for a local-only policy.
        policy: policy used when the client is given none: ``local``, ``offload``, ``SPLIT@LEVEL`` or
            a registered orchestrator policy name (``min_latency``, ``max_accuracy``, ``mpc``).
        accuracy_floor: with a named orchestrator policy, options whose accuracy in the manifest is
            below this are not chosen (0 to 1; ``min_latency`` among the rest).
        timeout_s: per-request deadline, from the call to the result, local fallback included.
        max_inflight: requests :meth:`EdgeClient.stream` keeps in flight (at least 2).
        token: bearer token sent as ``authorization: Bearer <token>``.
        token_file: file holding the bearer token (first non-empty line), used when ``token`` is empty.
        tls: use TLS (implied by any ``tls_*`` file).
        tls_ca: PEM file of the CA that signed the endpoint's certificate (default: system roots).
        tls_cert: PEM client certificate chain, for mutual TLS (with ``tls_key``).
        tls_key: PEM private key of ``tls_cert``.
        tls_server_name: name to verify the endpoint's certificate against (default: its host).
        retry_attempts: attempts per call on UNAVAILABLE (gRPC service-config ``retryPolicy``), 1 to 5.
        retry_backoff_s: initial backoff between attempts.
        retry_max_backoff_s: largest backoff between attempts.
        reconnect_max_s: largest backoff between reconnection attempts to a lost endpoint.
        breaker_failures: consecutive remote failures that open the circuit breaker.
        breaker_reset_s: how long an open breaker sends everything local before one trial request.
        fallback: run the whole model on the device when the endpoint fails; ``False`` raises instead.
        give_up_factor: with ``fallback``, stop waiting for a reply once the request has taken this many
            times the latency the policy expected for it, and answer on the device: a link that died
            costs that wait, not the whole remote budget. ``0`` waits for the whole budget.
        give_up_min_s: the earliest a request is given up that way: a reply expected in 5 ms that has
            not come after 15 ms is late (a scheduling or garbage-collection pause on a busy device), not
            lost, and answering it on the device throws the remote work away.
        precision: heads and local model in ``int8``, ``fp32``, or ``auto``: whichever is faster on this
            device, timed at start (int8 is not faster everywhere: ``results/edge.json``).
        ort_threads: ONNX Runtime intra-op threads per session (0 lets ONNX Runtime choose).
        top_k: classes returned per result.
        probe_timeout_s: deadline of the background link probes the orchestrator asks for.
        remeasure_s: how often the device times of every option (heads with entropy coding, the local
            model, PNG encoding) are measured again, in a background thread, and handed to the policy;
            ``0`` measures at start only.
        max_message_bytes: largest gRPC message sent or received.
        device_slowdown: emulate a device this many times slower than this machine (>= 1): on-device
            work (heads, entropy coding, local model, offload encoding) is padded by a sleep to this
            multiple of its time here, and the policy sees the padded times. For planning and demos
            on a workstation; ``splitserve demo`` sets it from a published measurement of the model.
        wire: ``compact`` (``Run``/``RunStream``/``Ping``: the bundle named by a 32-bit id, the option by
            an index, ~13 bytes of message around a payload) or ``v1`` (``Infer``/``InferStream``, every
            name spelled out: ~70 bytes more per request; what endpoints before the compact wire speak).
            A compact client falls back to v1 by itself when the endpoint answers UNIMPLEMENTED.
        timings_every: every n-th reply of a stream, and every unary reply when not 0, carries the
            endpoint's full stage timings (receive, decode, tail); the others only its total and queueing
            (``0``: none, so those stages of a result are ``None``). Compact wire only: v1 replies carry
            them always.
    """

    endpoint: str = ""
    policy: str = "min_latency"
    accuracy_floor: float = 0.0
    timeout_s: float = 1.0
    max_inflight: int = 8
    token: str = ""
    token_file: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    retry_attempts: int = 3
    retry_backoff_s: float = 0.01
    retry_max_backoff_s: float = 0.2
    reconnect_max_s: float = 1.0
    breaker_failures: int = 3
    breaker_reset_s: float = 2.0
    fallback: bool = True
    give_up_factor: float = 3.0
    give_up_min_s: float = 0.05
    precision: str = "auto"
    ort_threads: int = 1
    top_k: int = 5
    probe_timeout_s: float = 0.5
    remeasure_s: float = 60.0
    max_message_bytes: int = 4 * 1024 * 1024
    device_slowdown: float = 1.0
    wire: str = "compact"
    timings_every: int = 0

    def __post_init__(self) -> None:
        if self.endpoint and ":" not in self.endpoint:
            raise ConfigError(f"endpoint {self.endpoint!r} must be HOST:PORT (e.g. 127.0.0.1:50051)")
        if not 0.0 <= self.accuracy_floor <= 1.0:
            raise ConfigError(f"accuracy_floor must be 0 to 1, got {self.accuracy_floor}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_inflight < 2:
            raise ConfigError(f"max_inflight must be >= 2 (a pipelined stream), got {self.max_inflight}")
        if not 1 <= self.retry_attempts <= 5:
            raise ConfigError(f"retry_attempts must be 1 to 5 (gRPC's limit), got {self.retry_attempts}")
        if not 0 < self.retry_backoff_s <= self.retry_max_backoff_s:
            raise ConfigError(
                f"need 0 < retry_backoff_s <= retry_max_backoff_s, got {self.retry_backoff_s} and "
                f"{self.retry_max_backoff_s}"
            )
        if not self.reconnect_max_s > 0:
            raise ConfigError(f"reconnect_max_s must be > 0, got {self.reconnect_max_s}")
        if self.breaker_failures < 1 or self.breaker_reset_s < 0:
            raise ConfigError(
                f"breaker_failures must be >= 1 and breaker_reset_s >= 0, got {self.breaker_failures} and "
                f"{self.breaker_reset_s}"
            )
        if self.give_up_factor != 0 and not self.give_up_factor >= 1:
            raise ConfigError(f"give_up_factor must be 0 (off) or >= 1, got {self.give_up_factor}")
        if not self.give_up_min_s >= 0:
            raise ConfigError(f"give_up_min_s must be >= 0, got {self.give_up_min_s}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.ort_threads < 0:
            raise ConfigError(f"ort_threads must be >= 0, got {self.ort_threads}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not self.probe_timeout_s > 0:
            raise ConfigError(f"probe_timeout_s must be > 0, got {self.probe_timeout_s}")
        if self.remeasure_s < 0:
            raise ConfigError(f"remeasure_s must be >= 0 (0: never), got {self.remeasure_s}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes {self.max_message_bytes} is below 1024")
        if not 1.0 <= self.device_slowdown <= 1000.0:
            raise ConfigError(f"device_slowdown must be 1 to 1000, got {self.device_slowdown}")
        if self.wire not in WIRES:
            raise ConfigError(f"wire {self.wire!r} is not one of {WIRES}")
        if self.timings_every < 0:
            raise ConfigError(f"timings_every must be >= 0 (0: never), got {self.timings_every}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be given together")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert or self.tls_server_name)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EdgeConfig:
        """Read the ``SPLITSERVE_EDGE_*`` variables; unset or empty ones keep their defaults.

        Args:
            environ: the variables to read (``os.environ`` when omitted).

        Raises:
            ConfigError: a variable has a value of the wrong type or out of range.
        """
        return envconfig.from_env(cls, ENV_PREFIX, environ)

    def with_overrides(self, **overrides: Any) -> EdgeConfig:
        """A copy with the given fields replaced; ``None`` values (flags not passed) are ignored.

        Raises:
            ConfigError: an unknown field, or a value out of range.
        """
        return envconfig.with_overrides(self, "edge config", **overrides)


@dataclass(frozen=True)
class Credentials:
    """How the client proves who it is and checks the endpoint.

    Attributes:
        token: bearer token sent in ``authorization`` metadata with every call.
        tls: use TLS (implied by any certificate field).
        root_certificates: PEM CA bundle to verify the endpoint (``None``: system roots).
        certificate_chain: PEM client certificate chain, for mutual TLS.
        private_key: PEM private key of ``certificate_chain``.
        server_name: name to verify the endpoint's certificate against (``None``: its host).
    """

    token: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ConfigError("certificate_chain and private_key must be given together")
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            raise ConfigError("the bearer token must be a non-empty single line")

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(
            v is not None for v in (self.root_certificates, self.certificate_chain, self.server_name)
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @classmethod
    def from_config(cls, config: EdgeConfig) -> Credentials:
        """Read the token and TLS files a config names.

        Raises:
            ConfigError: a named file cannot be read, or the token file is empty.
        """
        token = config.token or (_token_from_file(config.token_file) if config.token_file else None)
        return cls(
            token=token or None,
            tls=config.uses_tls,
            root_certificates=_read(config.tls_ca) if config.tls_ca else None,
            certificate_chain=_read(config.tls_cert) if config.tls_cert else None,
            private_key=_read(config.tls_key) if config.tls_key else None,
            server_name=config.tls_server_name or None,
        )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _token_from_file(path: str) -> str:
    for line in _read(path).decode(errors="replace").splitlines():
        if line.strip():
            return line.strip()
    raise ConfigError(f"token file {path} holds no token")
