"""Frozen value types shared by the orchestrator, its policies, the simulator and the edge client.

The edge client talks to :class:`~splitserve.orchestrator.Orchestrator` with exactly these::

    start-up:        DeviceLatency (head ms per split, local ms, offload encode ms, measured on the device)
    before request:  decide() -> SplitDecision          (what to run, and whether to send a probe)
    after request:   observe(Observation)               (what happened; ServerTimings from the reply)
    probe reply:     observe_probe(ProbeResult)         (with the endpoint's queue report, if any)
    periodically:    update_device(DeviceLatency)       (re-measured head latencies)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "LOCAL_ID",
    "OFFLOAD_ID",
    "Decider",
    "DeviceLatency",
    "Estimates",
    "Observation",
    "Option",
    "OptionKind",
    "ProbeResult",
    "ServerTimings",
    "SplitDecision",
    "option_id",
]

OptionKind = Literal["split", "local", "offload"]
LOCAL_ID = "local"
OFFLOAD_ID = "offload"


def option_id(kind: OptionKind, split: str | None = None, level: int | None = None) -> str:
    """The stable string id of an option: ``"local"``, ``"offload"`` (PNG), ``"offload@<level>"``
    (JPEG/WebP, see ``core.offload``) or ``"<split>@<level>"``.

    Raises:
        ValueError: a split option without its split name or level.
    """
    if kind == "local":
        return LOCAL_ID
    if kind == "offload":
        return f"{OFFLOAD_ID}@{level}" if level else OFFLOAD_ID
    if split is None or level is None:
        raise ValueError(f"a split option needs a split and a level, got split={split!r} level={level!r}")
    return f"{split}@{level}"


@dataclass(frozen=True)
class Option:
    """One way to serve a request, with the figures the bundle manifest records for it.

    Attributes:
        kind: ``"split"`` (head on the device, tail in the cloud), ``"local"`` or ``"offload"``.
        split: split name for ``"split"``; the manifest's offload split name (``"input"``) for
            ``"offload"``; ``None`` for ``"local"``.
        level: rate level for ``"split"``; the offload level for a JPEG/WebP ``"offload"`` (``None`` for
            PNG and ``"local"``).
        payload_bytes: mean bytes per sample of the payload (bitstream or compressed image); 0 for local.
        accuracy: top-1 accuracy measured at export.
        tail_share: share of the whole model's compute that runs in the cloud (1 for offload, 0 for local).
    """

    kind: OptionKind
    split: str | None
    level: int | None
    payload_bytes: float
    accuracy: float
    tail_share: float

    @property
    def id(self) -> str:
        return option_id(self.kind, None if self.kind != "split" else self.split, self.level)

    @property
    def remote(self) -> bool:
        """True when the request crosses the network (split or offload)."""
        return self.kind != "local"


@dataclass(frozen=True)
class SplitDecision:
    """What to run for the next request.

    Attributes:
        kind: ``"split"``, ``"local"`` or ``"offload"``.
        split: split name to send (for offload the manifest's ``"input"``); ``None`` for local.
        level: rate level for a split; ``None`` otherwise (send 0 on the wire).
        expected_latency_ms: the orchestrator's estimate of end-to-end latency.
        expected_accuracy: accuracy of this option from the manifest.
        reason: one line on why this option was chosen (for logs).
        option_id: the option's id, to pass back in :class:`Observation`.
        probe_bytes: ``None``: no probe. Otherwise send a background probe beside this request and
            report it with ``observe_probe``: 0 asks for a bare ping (any tiny RPC), ``n > 0`` for a
            probe carrying about ``n`` bytes on the wire (sent while the request itself runs locally).
        probe_option: for a sized probe, the remote option to send as the probe (a real request of it,
            ``n`` bytes on the wire); ``None``: the client's choice.
    """

    kind: OptionKind
    split: str | None
    level: int | None
    expected_latency_ms: float
    expected_accuracy: float
    reason: str
    option_id: str
    probe_bytes: int | None = None
    probe_option: str | None = None


@dataclass(frozen=True)
class ServerTimings:
    """The endpoint's own timings from a reply (``splitserve.v1.ServerTimings``), in ms."""

    decode_ms: float = 0.0
    queue_ms: float = 0.0
    tail_ms: float = 0.0
    total_ms: float = 0.0
    queue_delay_ms: float = 0.0


@dataclass(frozen=True)
class Observation:
    """What the edge client saw for one request.

    Attributes:
        option_id: the decision's ``option_id``.
        device_ms: time spent on the device before sending (head + entropy coding, image encoding for
            offload) or the whole local run for ``"local"``.
        payload_bytes: payload size (bitstream or image); 0 for local.
        wire_bytes: request size on the wire (payload plus protobuf/gRPC framing); 0 for local.
        rtt_ms: wall time from sending the request to receiving the reply (the network round trip plus
            the server's total time); ``None`` for local. For a failed request: the time waited.
        server: the reply's server timings; ``None`` for local or a failed request.
        failed: the request got no reply (deadline exceeded, unavailable, connection lost).
        sent: the request went on the wire. ``False`` for a remote option the client answered locally
            without sending it (circuit breaker open, no time left in the deadline): that says nothing
            about the link.
    """

    option_id: str
    device_ms: float
    payload_bytes: int = 0
    wire_bytes: int = 0
    rtt_ms: float | None = None
    server: ServerTimings | None = None
    failed: bool = False
    sent: bool = True


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of a background probe requested by ``SplitDecision.probe_bytes``.

    Attributes:
        wire_bytes: bytes the probe put on the wire (for a ping, the ping RPC's own size, or 0).
        rtt_ms: wall time from sending to the reply, minus any server time; for a failed probe the time
            waited.
        failed: no reply came in time.
        queue_ms: the endpoint's own report of its current queueing delay in ms, carried by the ping's
            reply or by the sized probe's reply (the endpoint's figure for its queue now, not what the
            probe itself waited); ``None`` when the endpoint did not say (an old endpoint, a failed probe).
    """

    wire_bytes: int
    rtt_ms: float
    failed: bool = False
    queue_ms: float | None = None


@dataclass(frozen=True)
class DeviceLatency:
    """Latencies measured on the device itself (never derived from FLOPs).

    Attributes:
        head_ms: per split name, the head (backbone up to the split + encoder + entropy coding) in ms.
        local_ms: the whole model on the device, in ms.
        offload_ms: preparing the PNG offload payload (preprocess + image encoding), in ms.
        offload_level_ms: the same for each JPEG/WebP offload level (by level number).
    """

    head_ms: Mapping[str, float] = field(default_factory=dict)
    local_ms: float = 0.0
    offload_ms: float = 0.0
    offload_level_ms: Mapping[int, float] = field(default_factory=dict)

    def for_option(self, option: Option) -> float:
        """Device time of ``option`` in ms.

        Raises:
            KeyError: no head latency was measured for the option's split.
        """
        if option.kind == "local":
            return self.local_ms
        if option.kind == "offload":
            if option.level:
                try:
                    return float(self.offload_level_ms[option.level])
                except KeyError:
                    raise KeyError(
                        f"no measured device time for offload level {option.level} "
                        f"(measured: {sorted(self.offload_level_ms)})"
                    ) from None
            return self.offload_ms
        assert option.split is not None
        try:
            return float(self.head_ms[option.split])
        except KeyError:
            raise KeyError(
                f"no measured head latency for split {option.split!r} (measured: {sorted(self.head_ms)})"
            ) from None


@dataclass(frozen=True)
class Estimates:
    """A snapshot of what the orchestrator currently believes (for logs, plots and tests).

    Attributes:
        base_rtt_ms: propagation round trip, without transfer or server time.
        throughput_bps: planning throughput (after the safety margin).
        link_up: False after a failed request or probe, until the next success.
        queue_ms: expected queueing at the endpoint.
        server_slowdown: endpoint compute now relative to its priors.
        device_slowdown: device compute now relative to the start-up measurements.
        framing_bytes: request bytes on the wire beyond the payload.
        expected_ms: expected latency per option id.
    """

    base_rtt_ms: float
    throughput_bps: float
    link_up: bool
    queue_ms: float
    server_slowdown: float
    device_slowdown: float
    framing_bytes: float
    expected_ms: Mapping[str, float]


@runtime_checkable
class Decider(Protocol):
    """What a client (the edge client, the simulator) drives: ask before each request, report after it.

    :class:`~splitserve.orchestrator.Orchestrator` is one; so is the edge's ``FixedPolicy``.
    """

    def decide(
        self, *, deadline_ms: float | None = None, remote_budget_ms: float | None = None
    ) -> SplitDecision: ...

    def observe(self, obs: Observation) -> None: ...

    def observe_probe(self, result: ProbeResult) -> None: ...
