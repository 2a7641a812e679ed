"""The servicer over a real loopback channel with a fake tail backend: deadlines, limits, error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from splitserve.cloud import TailResult
from splitserve.cloud._auth import CallInterceptor
from splitserve.cloud._decode import Decoder
from splitserve.cloud._metrics import Metrics
from splitserve.cloud._registry import ModelRegistry, ServedBundle
from splitserve.cloud.servicer import SplitInferenceServicer, _Stream, add_to_server
from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.errors import ModelNotReadyError, UnavailableError
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


class FakeBackend:
    """Answers fixed logits after ``delay_s``, or raises ``error``; counts cancelled calls."""

    name = "fake"

    def __init__(self, num_classes: int, delay_s: float = 0.0, error: BaseException | None = None) -> None:
        self.logits = np.arange(num_classes, dtype=np.float32)
        self.delay_s = delay_s
        self.error = error
        self.cancelled = 0

    async def infer(self, spec, x, timeout_s=None):
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return TailResult(self.logits, 0.0, self.delay_s)

    def queue_delay_s(self, spec):
        return 0.0


def _request(bundle: Bundle, request_id: str = "r", **fields) -> pb.InferRequest:
    tables = bundle.tables("stem", 0)
    shape = bundle.manifest.split("stem").latent_shape
    q = np.zeros(shape, dtype=np.int32)
    return pb.InferRequest(
        request_id=request_id,
        model=bundle.manifest.name,
        split="stem",
        level=0,
        tensor=pb.CompressedTensor(
            codec=codec.CODEC_NAME,
            codec_version=tables.codec_version,
            shape=list(shape),
            data=codec.encode_symbols(q, tables),
            symbols_crc32=codec.symbols_crc32(q),
        ),
        **fields,
    )


_TARGET: dict[str, str] = {}  # the running test server's address, for scenarios that open a second connection
Scenario = Callable[[pb_grpc.SplitInferenceStub, FakeBackend, Metrics, grpc.aio.Channel], Awaitable[None]]


def _run(
    tiny_bundle: Path,
    backend_kwargs: dict,
    scenario: Scenario,
    limit: int = 64,
    interceptor: CallInterceptor | None = None,
) -> None:
    async def main() -> None:
        bundle = Bundle.open(tiny_bundle)
        registry = ModelRegistry()
        registry.add(ServedBundle.from_bundle(bundle))
        backend = FakeBackend(len(bundle.manifest.classes), **backend_kwargs)
        metrics = Metrics()
        servicer = SplitInferenceServicer(
            registry, backend, Decoder("inline", 1, metrics), metrics, max_inflight_per_client=limit
        )
        server = grpc.aio.server(interceptors=[interceptor or CallInterceptor()])
        add_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                _TARGET["address"] = f"127.0.0.1:{port}"
                await scenario(pb_grpc.SplitInferenceStub(channel), backend, metrics, channel)
            for _ in range(200):  # every slot is given back once the calls are over
                if not servicer._limiter._inflight and not servicer._limiter._waiters:
                    break
                await asyncio.sleep(0.01)
            assert servicer._limiter._inflight == {} and servicer._limiter._waiters == {}
        finally:
            await server.stop(0)
            bundle.close()

    asyncio.run(main())


def _count(metrics: Metrics, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "splitserve_requests_total",
        {"model": "fmnist_tiny", "version": "1", "split": "stem", "level": "0", "status": status},
    )
    return value or 0.0


def _bundle_requests(tiny_bundle: Path, n: int, **fields) -> list[pb.InferRequest]:
    bundle = Bundle.open(tiny_bundle)
    try:
        return [_request(bundle, f"r{i}", **fields) for i in range(n)]
    finally:
        bundle.close()


def test_unary_deadline_cancels_the_work_and_counts_deadline_exceeded(tiny_bundle):
    (request,) = _bundle_requests(tiny_bundle, 1)

    async def scenario(stub, backend, metrics, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(request, timeout=0.2)
        assert info.value.code() == DEADLINE
        await asyncio.sleep(0.1)
        assert backend.cancelled == 1
        assert _count(metrics, "DEADLINE_EXCEEDED") == 1
        assert metrics.registry.get_sample_value("splitserve_inflight_requests") == 0

    _run(tiny_bundle, {"delay_s": 2.0}, scenario)


def test_draining_refuses_new_calls_unavailable_while_calls_in_flight_finish(tiny_bundle):
    first, second = _bundle_requests(tiny_bundle, 2)
    interceptor = CallInterceptor()

    async def scenario(stub, backend, metrics, channel):
        in_flight = asyncio.ensure_future(stub.Infer(first, timeout=10))
        for _ in range(500):  # until the server handles it
            if interceptor._active:
                break
            await asyncio.sleep(0.01)
        interceptor.start_draining()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(second, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable, unlike gRPC's own CANCELLED
        assert "shutting down" in info.value.details()
        assert not await interceptor.wait_idle(0.05)
        assert (await in_flight).request_id == first.request_id
        assert await interceptor.wait_idle(1.0)

    _run(tiny_bundle, {"delay_s": 2.0}, scenario, interceptor=interceptor)


def test_stream_item_deadline_is_honoured_per_item(tiny_bundle):
    fast, slow = _bundle_requests(tiny_bundle, 2)
    slow.deadline_ms = 100

    async def scenario(stub, backend, metrics, channel):
        backend.delay_s = 0.4
        replies = [r async for r in stub.InferStream(iter([fast, slow]), timeout=10)]
        by_id = {r.request_id: r for r in replies}
        assert by_id["r1"].error.code == DEADLINE.value[0]
        assert "deadline of 100.0 ms exceeded" in by_id["r1"].error.message
        assert not by_id["r0"].HasField("error") and list(by_id["r0"].classes)[:1] == [9]

    _run(tiny_bundle, {}, scenario)


def test_per_client_concurrency_limit(tiny_bundle):
    requests = _bundle_requests(tiny_bundle, 5)

    async def scenario(stub, backend, metrics, channel):
        calls = [stub.Infer(r, timeout=10) for r in requests]
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) == 3
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "the limit is 2" in errors[0].details()
        backend.delay_s = 0.0
        assert len((await stub.Infer(requests[0], timeout=10)).classes) == 5  # slots were given back

    _run(tiny_bundle, {"delay_s": 1.0}, scenario, limit=2)


def test_streams_wait_for_free_slots_instead_of_refusing_items(tiny_bundle):
    requests = _bundle_requests(tiny_bundle, 12)

    async def scenario(stub, backend, metrics, channel):
        replies = [r async for r in stub.InferStream(iter(requests), timeout=10)]
        assert sorted(r.request_id for r in replies) == sorted(r.request_id for r in requests)
        assert not any(r.HasField("error") for r in replies)

    _run(tiny_bundle, {"delay_s": 0.05}, scenario, limit=2)


def test_a_stream_cancelled_midway_gives_back_every_slot(tiny_bundle):
    requests = _bundle_requests(tiny_bundle, 40)

    async def scenario(stub, backend, metrics, channel):
        call = stub.InferStream(iter(requests), timeout=10)
        await call.read()
        call.cancel()
        await asyncio.sleep(0.3)
        replies = await asyncio.gather(*(stub.Infer(r, timeout=10) for r in requests[:3]))
        assert [r.request_id for r in replies] == ["r0", "r1", "r2"]

    _run(tiny_bundle, {"delay_s": 0.02}, scenario, limit=3)


def test_bytes_that_are_not_a_message_are_invalid_argument(tiny_bundle):
    garbage = b"\x0a\xff\xff\xff\x0f"  # field 1 with a length far beyond the message

    async def scenario(stub, backend, metrics, channel):
        infer = channel.unary_unary("/splitserve.v1.SplitInference/Infer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await infer(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid InferRequest message" in info.value.details()
        stream = channel.stream_stream("/splitserve.v1.SplitInference/InferStream")
        (reply,) = [pb.InferResponse.FromString(r) async for r in stream(iter([garbage]), timeout=10)]
        assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        listing = channel.unary_unary("/splitserve.v1.SplitInference/ListModels")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await listing(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    _run(tiny_bundle, {}, scenario)


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (UnavailableError("triton down"), grpc.StatusCode.UNAVAILABLE, "triton down"),
        (ModelNotReadyError("not loaded"), grpc.StatusCode.UNAVAILABLE, "not loaded"),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "internal error: RuntimeError"),
    ],
)
def test_backend_failures_map_to_their_status_and_the_server_keeps_serving(tiny_bundle, error, code, text):
    (request,) = _bundle_requests(tiny_bundle, 1)

    async def scenario(stub, backend, metrics, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(request, timeout=10)
        assert info.value.code() == code and text in info.value.details()
        backend.error = None
        assert (await stub.Infer(request, timeout=10)).request_id == "r0"

    _run(tiny_bundle, {"error": error}, scenario)


def test_limits_are_per_connection_not_per_address(tiny_bundle):
    """Two connections from one address (a NAT, a proxy) each get the whole limit."""
    requests = _bundle_requests(tiny_bundle, 3)

    async def scenario(stub, backend, metrics, channel):
        busy = [stub.Infer(r, timeout=10) for r in requests[:2]]  # this connection's two slots
        await asyncio.sleep(0.2)
        own_connection = [("grpc.use_local_subchannel_pool", 1)]  # else gRPC shares the first channel's
        async with grpc.aio.insecure_channel(_TARGET["address"], options=own_connection) as other:
            reply = await pb_grpc.SplitInferenceStub(other).Infer(requests[2], timeout=10)
        assert reply.request_id == "r2"
        await asyncio.gather(*busy)

    _run(tiny_bundle, {"delay_s": 0.6}, scenario, limit=2)


def test_a_stream_whose_client_stops_reading_is_ended(tiny_bundle):
    """Replies pile up unread (the client's slots stay held): the stream ends RESOURCE_EXHAUSTED, slots back."""
    requests = _bundle_requests(tiny_bundle, 10)

    class Aborted(Exception):
        pass

    class Context:
        code: grpc.StatusCode | None = None

        def time_remaining(self):
            return None

        async def abort(self, code, details):
            self.code, self.details = code, details
            raise Aborted(details)

    async def main() -> None:
        bundle = Bundle.open(tiny_bundle)
        registry = ModelRegistry()
        registry.add(ServedBundle.from_bundle(bundle))
        metrics = Metrics()
        servicer = SplitInferenceServicer(
            registry, FakeBackend(len(bundle.manifest.classes)), Decoder("inline", 1, metrics), metrics,
            max_inflight_per_client=2, stalled_stream_s=0.3,
        )

        async def incoming():
            for r in requests:
                yield r

        context = Context()
        replies = _Stream(servicer, "ipv4:127.0.0.1:1", context).run(incoming())
        first = await replies.__anext__()  # the client reads one reply, then stops reading
        assert first.request_id == "r0"
        await asyncio.sleep(0.8)
        assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "read no reply for 0.3 s" in context.details
        await replies.aclose()
        assert servicer._limiter._inflight == {} and servicer._limiter._waiters == {}
        bundle.close()

    asyncio.run(main())
