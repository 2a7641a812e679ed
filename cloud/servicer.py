"""The ``splitserve.v1.SplitInference`` servicer: validate, decode, run the tail, answer the top-k.

::

    InferRequest --validate (ServedBundle's checks)--> (bundle, split, level) --decode--> y_hat / image
                 --TailBackend.infer--> logits --softmax, top-k--> InferResponse{classes, scores, timings}

Every field is checked before any work is done, and every failure is a :class:`SplitServeError` whose
``status`` becomes the gRPC status at this boundary: an unknown model, version, split or level is
NOT_FOUND; a bad codec, shape, size, bitstream or CRC32 is INVALID_ARGUMENT; a client over its
concurrency limit gets RESOURCE_EXHAUSTED; a request whose deadline passes gets DEADLINE_EXCEEDED. A
failure answers only its own request: the server keeps serving everyone else.

Scores are softmax probabilities of the returned classes, highest first. ``top_k`` 0 means 5; values
above the number of classes are capped to it.

The compact RPCs (``Run``, ``RunStream``) name the bundle by its wire id and the split and level by an
option index (``splitserve.core.wire``); each is expanded here into the ``InferRequest`` it stands for and
served by the same code, so both forms check, decode and answer alike. ``Ping`` answers the endpoint's
current load.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from numpy.typing import NDArray

from splitserve.core.bundle import OFFLOAD_SPLIT
from splitserve.core.codec import CODEC_NAME
from splitserve.core.errors import (
    DeadlineExceededError,
    InferenceError,
    RequestError,
    ResourceExhaustedError,
    SplitServeError,
)
from splitserve.core.wire import DEFAULT_TOP_K, SEQ_MODULUS, top_k
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

from ._auth import current_call
from ._backends import TailBackend
from ._decode import Decoder
from ._fair import FairGate
from ._metrics import UNKNOWN, Metrics
from ._registry import MAX_NAME, ModelRegistry, ServedBundle

__all__ = [
    "DEFAULT_TOP_K",
    "SERVICE_NAME",
    "MalformedMessage",
    "SplitInferenceServicer",
    "add_to_server",
]

_LOG = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
STALLED_STREAM_S = 30.0
_LOAD_FRESH_S = 1.0  # a Ping reports recent items' queueing for this long after the last one


@dataclass(frozen=True)
class MalformedMessage:
    """What the request deserializer hands the servicer for bytes that are not a valid message.

    Protobuf's own parse error would become gRPC's INTERNAL; this way the servicer answers
    INVALID_ARGUMENT (for a stream item, in that item's reply) like every other bad input.
    """

    kind: str
    error: str
    size: int
    request_id: str = ""


def _parser(cls: type[Message]) -> Callable[[bytes], Message | MalformedMessage]:
    def parse(data: bytes) -> Message | MalformedMessage:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return MalformedMessage(cls.DESCRIPTOR.name, str(exc), len(data))

    return parse


def add_to_server(servicer: SplitInferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as ``splitserve.v1.SplitInference`` with malformed-message tolerant parsing."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer,
            request_deserializer=_parser(pb.InferRequest),
            response_serializer=pb.InferResponse.SerializeToString,
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream,
            request_deserializer=_parser(pb.InferRequest),
            response_serializer=pb.InferResponse.SerializeToString,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=_parser(pb.ListModelsRequest),
            response_serializer=pb.ListModelsResponse.SerializeToString,
        ),
        "Run": grpc.unary_unary_rpc_method_handler(
            servicer.Run,
            request_deserializer=_parser(pb.RunRequest),
            response_serializer=pb.RunReply.SerializeToString,
        ),
        "RunStream": grpc.stream_stream_rpc_method_handler(
            servicer.RunStream,
            request_deserializer=_parser(pb.RunRequest),
            response_serializer=pb.RunReply.SerializeToString,
        ),
        "Ping": grpc.unary_unary_rpc_method_handler(
            servicer.Ping,
            request_deserializer=_parser(pb.PingRequest),
            response_serializer=pb.Load.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


@dataclass
class _Labels:
    """Metric labels of one request, filled in as its fields are found to be served values."""

    model: str = UNKNOWN
    version: str = UNKNOWN
    split: str = UNKNOWN
    level: str = UNKNOWN


class _ClientLimiter:
    """At most ``limit`` requests in flight per client.

    A unary call over the limit is refused with RESOURCE_EXHAUSTED; a stream instead stops reading its
    next item until one of the client's requests finishes (gRPC flow control then holds the client back).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def acquire_nowait(self, client: str) -> None:
        n = self._inflight.get(client, 0)
        if n >= self.limit:
            raise ResourceExhaustedError(
                f"too many concurrent requests from this client: {n} in flight, the limit is {self.limit}"
            )
        self._inflight[client] = n + 1

    async def acquire(self, client: str) -> None:
        while self._inflight.get(client, 0) >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            queue = self._waiters.setdefault(client, deque())
            queue.append(waiter)
            try:
                await waiter
            finally:
                if waiter in queue:
                    queue.remove(waiter)
                if not queue:
                    self._waiters.pop(client, None)
        self._inflight[client] = self._inflight.get(client, 0) + 1

    def release(self, client: str) -> None:
        left = self._inflight[client] - 1
        if left:
            self._inflight[client] = left
        else:
            del self._inflight[client]
        for waiter in self._waiters.get(client, ()):
            if not waiter.done():
                waiter.set_result(None)
                break


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    """Async servicer of ``Infer``, ``InferStream`` and ``ListModels``.

    Args:
        registry: the served bundles.
        backend: where tails run.
        decoder: where payloads are decoded.
        metrics: where requests are counted and timed.
        max_inflight_per_client: the concurrency limit of each client: of each bearer token where tokens
            are on, else of each connection (not each address: behind NAT or a proxy that is everyone).
        stalled_stream_s: a stream whose client has read no reply for this long while all its slots
            are held is ended with RESOURCE_EXHAUSTED (its slots go back to the others).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        backend: TailBackend,
        decoder: Decoder,
        metrics: Metrics,
        *,
        max_inflight_per_client: int,
        stalled_stream_s: float = STALLED_STREAM_S,
    ) -> None:
        self._stalled_stream_s = stalled_stream_s
        self._registry = registry
        self._backend = backend
        self._decoder = decoder
        self._metrics = metrics
        self._limiter = _ClientLimiter(max_inflight_per_client)
        self._gate = FairGate()
        self._queue_ms = _Recent()
        self._tail_ms = _Recent()

    async def Infer(
        self, request: pb.InferRequest | MalformedMessage, context: grpc.aio.ServicerContext
    ) -> pb.InferResponse:
        received = time.perf_counter()
        call = current_call()
        client = call.client if call and call.client else context.peer()
        try:
            return await self._serve(
                _checked(request),
                _size(request),
                client,
                call.arrived if call else received,
                received,
                context.time_remaining(),
                enforce_deadline=False,
                slot_held=False,
            )
        except SplitServeError as exc:
            await context.abort(grpc.StatusCode[exc.status], exc.message)
            raise  # unreachable: abort raises

    async def InferStream(
        self,
        request_iterator: AsyncIterator[pb.InferRequest | MalformedMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.InferResponse]:
        call = current_call()
        client = call.client if call and call.client else context.peer()
        async for reply in _Stream(self, client, context).run(request_iterator):
            yield reply

    async def Run(
        self, request: pb.RunRequest | MalformedMessage, context: grpc.aio.ServicerContext
    ) -> pb.RunReply:
        received = time.perf_counter()
        call = current_call()
        client = call.client if call and call.client else context.peer()
        try:
            reply = await self._serve(
                self._expanded(_checked(request), _CompactState()),
                _size(request),
                client,
                call.arrived if call else received,
                received,
                context.time_remaining(),
                enforce_deadline=False,
                slot_held=False,
            )
        except SplitServeError as exc:
            await context.abort(grpc.StatusCode[exc.status], exc.message)
            raise  # unreachable: abort raises
        return _compact_reply(reply, 0, timings=not isinstance(request, MalformedMessage) and request.timings_every > 0)

    async def RunStream(
        self,
        request_iterator: AsyncIterator[pb.RunRequest | MalformedMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.RunReply]:
        call = current_call()
        client = call.client if call and call.client else context.peer()
        async for reply in _CompactStream(self, client, context).run(request_iterator):
            yield reply

    async def Ping(self, request: pb.PingRequest | MalformedMessage, context: grpc.aio.ServicerContext) -> pb.Load:
        if isinstance(request, MalformedMessage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(request).message)
        return pb.Load(queue_dms=_dms(self._queue_now_ms()), tail_dms=_dms(self._tail_ms.value))

    async def ListModels(
        self, request: pb.ListModelsRequest | MalformedMessage, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        if isinstance(request, MalformedMessage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(request).message)
        models = []
        for served in self._registry:
            m = served.bundle.manifest
            models.append(
                pb.ModelInfo(
                    name=m.name,
                    version=m.version,
                    input_shape=list(m.input_shape),
                    input_dtype=m.input_dtype,
                    num_classes=len(m.classes),
                    splits=[
                        pb.SplitInfo(name=s.name, latent_shape=list(s.latent_shape), levels=sorted(s.levels))
                        for s in served.splits.values()
                    ],
                    offload=served.image is not None,
                )
            )
        return pb.ListModelsResponse(models=models)

    def _expanded(
        self, run: pb.RunRequest | SplitServeError, state: _CompactState
    ) -> pb.InferRequest | SplitServeError:
        """:meth:`_expand`, with its error returned (to be counted and answered like any other)."""
        if isinstance(run, SplitServeError):
            return run
        try:
            return self._expand(run, state)
        except SplitServeError as exc:
            return exc

    def _expand(self, run: pb.RunRequest, state: _CompactState) -> pb.InferRequest:
        """The ``InferRequest`` a compact request stands for (``state``: its stream's settings so far).

        Raises:
            UnknownModelError: no served bundle has its wire id, or the bundle has no such option.
        """
        if run.bundle:
            state.bundle = run.bundle
        if run.top_k:
            state.top_k = run.top_k
        if run.deadline_ms:
            state.deadline_ms = run.deadline_ms
        if not state.bundle:
            raise RequestError("bundle is required (in a stream, on its first message)")
        served = self._registry.by_wire_id(state.bundle)
        option = served.option(run.option)
        if option.offload:
            tensor = pb.CompressedTensor(codec=served.offload_codecs[option.level], codec_version=1, data=run.data)
        else:
            split = served.splits[option.split]
            tensor = pb.CompressedTensor(
                codec=CODEC_NAME,
                codec_version=split.levels[option.level].tables.codec_version,
                shape=split.latent_shape,
                data=run.data,
                symbols_crc32=run.check,
            )
        return pb.InferRequest(
            model=served.name,
            version=served.version,
            split=option.split,
            level=option.level,
            tensor=tensor,
            top_k=state.top_k,
            deadline_ms=state.deadline_ms,
        )

    def _queue_now_ms(self) -> float:
        """The queueing delay a request arriving now should expect: the backend's, or the recent items'."""
        backend = max(
            (self._backend.queue_delay_s(spec) for served in self._registry for spec in served.tails.values()),
            default=0.0,
        )
        recent = self._queue_ms.value if time.perf_counter() - self._queue_ms.updated < _LOAD_FRESH_S else 0.0
        return max(backend * 1e3, recent)

    async def _serve(
        self,
        request: pb.InferRequest | SplitServeError,
        size: int,
        client: str,
        arrived: float,
        received: float,
        timeout_s: float | None,
        *,
        enforce_deadline: bool,
        slot_held: bool,
    ) -> pb.InferResponse:
        """Serve one request end to end, with limits, deadline and metrics; raise on failure.

        Args:
            request: the request, or the error found while reading it (counted, then raised).
            size: the size of the message it came in (for the metrics).
            client: who sent it (for the concurrency limit).
            arrived: when its call arrived.
            received: when its message was read.
            timeout_s: time left until its deadline, from ``received``.
            enforce_deadline: cancel the work at the deadline here (stream items); unary calls are
                cancelled by gRPC itself when their deadline passes.
            slot_held: the caller holds (and will give back) a concurrency slot of ``client`` (stream
                items); else one is taken and given back here, or the request is refused with
                RESOURCE_EXHAUSTED.
        """
        labels = _Labels()
        status = "OK"
        deadline = None if timeout_s is None else received + timeout_s
        self._metrics.inflight.inc()
        acquired = False
        try:
            if isinstance(request, SplitServeError):
                raise request
            if not slot_held:
                self._limiter.acquire_nowait(client)
                acquired = True
            if timeout_s is not None and timeout_s <= 0:
                raise DeadlineExceededError("the request's deadline had passed when it was read")
            work = self._process(request, client, labels, arrived, received, deadline)
            if not enforce_deadline or timeout_s is None:
                return await work
            try:
                return await asyncio.wait_for(work, timeout_s)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"deadline of {timeout_s * 1e3:.1f} ms exceeded before the reply was ready"
                ) from None
        except SplitServeError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = (
                "DEADLINE_EXCEEDED"
                if deadline is not None and time.perf_counter() >= deadline
                else "CANCELLED"
            )
            raise
        except Exception as exc:
            status = "INTERNAL"
            _LOG.exception("internal error serving request %r", getattr(request, "request_id", "")[:MAX_NAME])
            raise InferenceError(f"internal error: {type(exc).__name__}") from exc
        finally:
            if acquired:
                self._limiter.release(client)
            self._metrics.inflight.dec()
            self._metrics.count(labels.model, labels.version, labels.split, labels.level, status)
            self._metrics.observe_received(labels.model, labels.split, labels.level, size)

    async def _process(
        self,
        request: pb.InferRequest,
        client: str,
        labels: _Labels,
        arrived: float,
        received: float,
        deadline: float | None,
    ) -> pb.InferResponse:
        for field in ("request_id", "model", "version", "split"):
            if len(getattr(request, field)) > MAX_NAME:
                raise RequestError(f"{field} is longer than {MAX_NAME} characters")
        if not request.model:
            raise RequestError("model is required")
        served = self._registry.resolve(request.model, request.version)
        labels.model, labels.version = served.name, served.version
        served.acquire()
        try:
            if not request.HasField("tensor"):
                raise RequestError("tensor is required")
            waiting = time.perf_counter()
            # Decoding and the tail take their turn with other clients' requests (cloud/_fair.py): a client
            # with many requests in flight gets its share of the CPU, not all of it.
            async with self._gate.slot(client):
                start = time.perf_counter()
                if request.split == OFFLOAD_SPLIT:
                    x = await self._decode_image(request, served, labels)
                else:
                    x = await self._decode_latent(request, served, labels)
                decoded = time.perf_counter()
                if deadline is not None and decoded >= deadline:
                    raise DeadlineExceededError("deadline exceeded while decoding the payload")
                spec = served.tails[labels.split]
                remaining = None if deadline is None else deadline - decoded
                result = await self._backend.infer(spec, x, timeout_s=remaining)
            num_classes = served.num_classes
            k = min(request.top_k or DEFAULT_TOP_K, num_classes)
            if result.logits.shape != (num_classes,):
                raise InferenceError(
                    f"tail returned logits of shape {result.logits.shape}, "
                    f"the manifest has {num_classes} classes"
                )
            classes, scores = top_k(result.logits, k)
            done = time.perf_counter()
        finally:
            served.release()
        timings = pb.ServerTimings(
            receive_ms=(received - arrived) * 1e3,
            decode_ms=(decoded - start) * 1e3,
            queue_ms=(start - waiting + result.queue_s) * 1e3,  # waiting for its turn, then in the backend
            tail_ms=result.tail_s * 1e3,
            total_ms=(done - arrived) * 1e3,
            queue_delay_ms=self._backend.queue_delay_s(spec) * 1e3,
        )
        self._queue_ms.add(timings.queue_ms, done)
        self._tail_ms.add(timings.tail_ms, done)
        self._metrics.observe_stages(
            labels.model, labels.split, labels.level,
            receive=received - arrived,
            decode=decoded - start,
            queue=start - waiting + result.queue_s,
            tail=result.tail_s,
            total=done - arrived,
        )
        return pb.InferResponse(
            request_id=request.request_id,
            model=served.name,
            version=served.version,
            classes=classes,
            scores=scores,
            timings=timings,
        )

    async def _decode_latent(
        self, request: pb.InferRequest, served: ServedBundle, labels: _Labels
    ) -> NDArray[Any]:
        """Check the latent against the bundle (labelling the split and level once found), decode it."""
        split = served.split(request.split)
        labels.split = split.name
        level = served.latent_level(split, request.level)
        labels.level = str(request.level)
        tensor = request.tensor
        served.check_latent(split, request.level, tensor)
        return await self._decoder.latent(level.ref, tensor.data, split.latent_shape, tensor.symbols_crc32)

    async def _decode_image(
        self, request: pb.InferRequest, served: ServedBundle, labels: _Labels
    ) -> NDArray[Any]:
        """Check the image against the bundle (labelling the split and level once found), decode it."""
        layout = served.offload_layout()
        labels.split = OFFLOAD_SPLIT
        image_codec = served.offload_codec(request.level)
        labels.level = str(request.level)
        served.check_image(request.level, request.tensor)
        return await self._decoder.image(request.tensor.data, layout, image_codec)


class _Stream:
    """One ``InferStream`` call: items are read while the client has free slots and answered as they finish.

    Each item holds one of its client's concurrency slots from when it is read until its reply has been
    handed to gRPC, so a client that stops reading replies stops being read from: per client, the server
    holds at most ``max_inflight_per_client`` items and unsent replies.
    """

    def __init__(
        self, servicer: SplitInferenceServicer, client: str, context: grpc.aio.ServicerContext
    ) -> None:
        self._servicer = servicer
        self._limiter = servicer._limiter
        self._client = client
        self._context = context
        self._replies: asyncio.Queue[Message | None] = asyncio.Queue()
        self._items: set[asyncio.Task[None]] = set()
        self._closed = False

    async def run(self, requests: AsyncIterator[Message | MalformedMessage]) -> AsyncIterator[Any]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while (reply := await self._replies.get()) is not None:
                try:
                    yield reply
                finally:
                    self._limiter.release(self._client)
            await reader
        finally:
            self._closed = True
            reader.cancel()
            for item in list(self._items):
                item.cancel()
            while not self._replies.empty():
                if self._replies.get_nowait() is not None:
                    self._limiter.release(self._client)

    async def _read(self, requests: AsyncIterator[Message | MalformedMessage]) -> None:
        try:
            stall = self._servicer._stalled_stream_s
            async for message in requests:
                received = time.perf_counter()
                try:
                    await asyncio.wait_for(self._limiter.acquire(self._client), stall)
                except TimeoutError:
                    await self._context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the client read no reply for {stall:g} s while {self._limiter.limit} waited: stream ended",
                    )
                item = asyncio.create_task(self._answer(self._admit(message), _size(message), received))
                self._items.add(item)
                item.add_done_callback(self._item_done)
            if self._items:
                await asyncio.gather(*self._items)
        finally:
            self._replies.put_nowait(None)

    def _admit(self, message: Message | MalformedMessage) -> _Admitted:
        """What to serve for ``message``, and how to address its reply (in arrival order)."""
        request = _checked(message)
        key = request.request_id[:MAX_NAME] if isinstance(request, pb.InferRequest) else ""
        return _Admitted(request, key)

    def _answered(self, admitted: _Admitted, reply: pb.InferResponse | SplitServeError) -> Message:
        """The reply message of ``admitted``: the answer, or its error."""
        if isinstance(reply, SplitServeError):
            return pb.InferResponse(request_id=str(admitted.key), error=_item_error(reply))
        return reply

    async def _answer(self, admitted: _Admitted, size: int, received: float) -> None:
        request = admitted.request
        deadline_ms = request.deadline_ms if isinstance(request, pb.InferRequest) else 0
        timeout_s = deadline_ms / 1000 if deadline_ms else None
        stream_left = self._context.time_remaining()
        if stream_left is not None:
            timeout_s = stream_left if timeout_s is None else min(timeout_s, stream_left)
        try:
            answer: pb.InferResponse | SplitServeError = await self._servicer._serve(
                request, size, self._client, received, received, timeout_s, enforce_deadline=True, slot_held=True
            )
        except SplitServeError as exc:
            answer = exc
        if self._closed:  # nobody will send it: give its slot back now
            self._limiter.release(self._client)
        else:
            self._replies.put_nowait(self._answered(admitted, answer))

    def _item_done(self, item: asyncio.Task[None]) -> None:
        self._items.discard(item)
        if item.cancelled() or item.exception() is not None:  # it enqueued no reply
            self._limiter.release(self._client)


class _CompactStream(_Stream):
    """One ``RunStream`` call: items numbered in arrival order, replies compact (full timings when due)."""

    def __init__(
        self, servicer: SplitInferenceServicer, client: str, context: grpc.aio.ServicerContext
    ) -> None:
        super().__init__(servicer, client, context)
        self._state = _CompactState()
        self._seq = 0

    def _admit(self, message: Message | MalformedMessage) -> _Admitted:
        seq, self._seq = self._seq, (self._seq + 1) % SEQ_MODULUS
        request = _checked(message)
        if isinstance(request, pb.RunRequest):
            if request.timings_every:
                self._state.timings_every = request.timings_every
            request = self._servicer._expanded(request, self._state)
        every = self._state.timings_every
        return _Admitted(request, seq, timings=bool(every) and seq % every == 0)

    def _answered(self, admitted: _Admitted, reply: pb.InferResponse | SplitServeError) -> Message:
        seq = int(admitted.key)
        if isinstance(reply, SplitServeError):
            return pb.RunReply(seq=seq, error=_item_error(reply))
        return _compact_reply(reply, seq, timings=admitted.timings)


@dataclass
class _CompactState:
    """A compact stream's settings: set by its first message, changed by any later one that says so."""

    bundle: int = 0
    top_k: int = 0
    deadline_ms: int = 0
    timings_every: int = 0


@dataclass(frozen=True)
class _Admitted:
    """A stream item as read: what to serve (or the error found reading it) and its reply's address."""

    request: pb.InferRequest | SplitServeError
    key: str | int
    timings: bool = False


class _Recent:
    """An exponential moving average of recent values, with the time of the last one."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.value = 0.0
        self.updated = -math.inf

    def add(self, value: float, now: float) -> None:
        self.value += self.alpha * (value - self.value)
        self.updated = now


def _item_error(exc: SplitServeError) -> pb.ItemError:
    """A stream item's failure as its reply carries it: the gRPC status number and the message."""
    return pb.ItemError(code=grpc.StatusCode[exc.status].value[0], message=exc.message)


def _compact_reply(reply: pb.InferResponse, seq: int, *, timings: bool) -> pb.RunReply:
    t = reply.timings
    return pb.RunReply(
        seq=seq,
        classes=reply.classes,
        scores=reply.scores,
        server_dms=_dms(t.total_ms),
        queue_dms=_dms(max(t.queue_ms, t.queue_delay_ms)),
        timings=t if timings else None,
    )


def _dms(ms: float) -> int:
    """Milliseconds in the compact wire's units of 0.1 ms."""
    return max(round(ms * 10.0), 0)


def _checked(message: Message | MalformedMessage) -> Any:
    """``message``, or the INVALID_ARGUMENT error of a message that did not parse."""
    return _malformed(message) if isinstance(message, MalformedMessage) else message


def _size(message: Message | MalformedMessage) -> int:
    return message.size if isinstance(message, MalformedMessage) else message.ByteSize()


def _malformed(message: MalformedMessage) -> RequestError:
    return RequestError(f"the request is not a valid {message.kind} message: {message.error[:200]}")
