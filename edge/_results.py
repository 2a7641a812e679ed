"""What a request answers: the :class:`Result` of one input and the :class:`Timings` of its stages."""

from __future__ import annotations

from dataclasses import dataclass

from splitserve.orchestrator.types import OptionKind

__all__ = ["Result", "Timings"]


@dataclass(frozen=True)
class Timings:
    """Where the time of one request went, in ms (``None``: the stage did not happen).

    Attributes:
        preprocess_ms: input to the model's uint8 tensor.
        head_ms: the head on the device (split).
        encode_ms: entropy coding (split) or PNG encoding (offload).
        rtt_ms: from sending the request to its reply (network plus the endpoint's total).
        server_receive_ms: the endpoint reading the request (``None`` for a compact reply without full
            timings: see ``EdgeConfig.timings_every``).
        server_decode_ms: the endpoint decoding the payload (``None`` likewise).
        server_queue_ms: waiting for the tail.
        server_tail_ms: the tail (``None`` likewise).
        server_total_ms: the endpoint's total.
        local_ms: the whole model on the device (local, or a fallback).
        total_ms: from the call to the result.
    """

    preprocess_ms: float = 0.0
    head_ms: float = 0.0
    encode_ms: float = 0.0
    rtt_ms: float | None = None
    server_receive_ms: float | None = None
    server_decode_ms: float | None = None
    server_queue_ms: float | None = None
    server_tail_ms: float | None = None
    server_total_ms: float | None = None
    local_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def device_ms(self) -> float:
        """Time spent computing on the device."""
        return self.preprocess_ms + self.head_ms + self.encode_ms + self.local_ms


@dataclass(frozen=True)
class Result:
    """The answer for one input.

    Attributes:
        request_id: the id sent on the wire (also for local results).
        classes: top-k class indexes, most likely first.
        scores: their softmax probabilities.
        labels: their class names from the bundle.
        computed: where the answer was computed: ``"split"`` (head here, tail in the cloud),
            ``"offload"`` (all in the cloud) or ``"local"`` (all on the device).
        split: the split whose tail answered (``"input"`` for offload; ``None`` for local).
        level: the rate level sent (``None`` unless ``computed == "split"``).
        bytes_sent: TCP payload bytes the request put on the wire: the message with its gRPC and HTTP/2
            framing (``splitserve.core.wire``, checked against the kernel's counters by ``bench wire``),
            also for a request that failed and fell back; 0 when nothing was sent.
        payload_bytes: of which the bitstream or PNG.
        timings: time per stage.
        chosen: the option the policy chose (``"local"``, ``"offload"``, ``"SPLIT@LEVEL"``).
        fallback_reason: why the chosen remote option was answered locally instead (``None`` if it
            was not).
        model: the model name.
        version: the model version.
    """

    request_id: str
    classes: tuple[int, ...]
    scores: tuple[float, ...]
    labels: tuple[str, ...]
    computed: OptionKind
    split: str | None
    level: int | None
    bytes_sent: int
    payload_bytes: int
    timings: Timings
    chosen: str
    fallback_reason: str | None
    model: str
    version: str

    @property
    def top1(self) -> int:
        return self.classes[0]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def remote(self) -> bool:
        """The answer came from the endpoint."""
        return self.computed != "local"
