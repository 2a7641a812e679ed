"""The compact RPCs (Run, RunStream, Ping) over a real loopback channel with a fake tail backend."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from splitserve.cloud._auth import CallInterceptor
from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.wire import SEQ_MODULUS, wire_id, wire_options
from splitserve.edge import AsyncEdgeClient, EdgeConfig
from splitserve.protos.v1 import inference_pb2 as pb

from .test_servicer import _TARGET, _count, _run


def _run_request(b: Bundle, **fields) -> pb.RunRequest:
    """A compact request of option 0 (the first split's first level), zeros as symbols."""
    option = wire_options(b.manifest)[0]
    tables = b.tables(option.split, option.level)
    q = np.zeros(b.manifest.split(option.split).latent_shape, dtype=np.int32)
    message = pb.RunRequest(
        bundle=wire_id(b.manifest),
        option=0,
        data=codec.encode_symbols(q, tables),
        check=codec.symbols_crc32(q),
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return message


@pytest.fixture
def bundle(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    yield b
    b.close()


def test_run_answers_like_infer_in_a_few_bytes(tiny_bundle, bundle):
    request = _run_request(bundle, top_k=1)

    async def scenario(stub, backend, metrics, channel):
        reply = await stub.Run(request, timeout=10)
        best = int(np.argmax(backend.logits))
        assert list(reply.classes) == [best] and reply.scores[0] > 0
        assert not reply.HasField("timings") and not reply.HasField("error")
        assert reply.ByteSize() <= 16
        timed = await stub.Run(_run_request(bundle, top_k=1, timings_every=1), timeout=10)
        assert timed.HasField("timings") and timed.timings.total_ms >= 0
        assert _count(metrics, "OK") == 2

    _run(tiny_bundle, {}, scenario)


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"bundle": 12345}, grpc.StatusCode.NOT_FOUND, "differs from every bundle served here"),
        ({"option": 999}, grpc.StatusCode.NOT_FOUND, "has no option 999"),
        ({"bundle": 0}, grpc.StatusCode.INVALID_ARGUMENT, "bundle is required"),
        ({"check": 1}, grpc.StatusCode.INVALID_ARGUMENT, "CRC32 mismatch"),
        ({"data": b"\x01\x02"}, grpc.StatusCode.INVALID_ARGUMENT, ""),
    ],
)
def test_bad_compact_requests_get_their_status(tiny_bundle, bundle, fields, code, text):
    request = _run_request(bundle, **fields)

    async def scenario(stub, backend, metrics, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Run(request, timeout=10)
        assert info.value.code() == code and text in info.value.details()
        assert (await stub.Run(_run_request(bundle), timeout=10)).classes  # still serving

    _run(tiny_bundle, {}, scenario)


def test_a_stream_numbers_items_and_keeps_its_first_messages_settings(tiny_bundle, bundle):
    first = _run_request(bundle, top_k=2, timings_every=3, deadline_ms=5000)
    later = _run_request(bundle, bundle=0)
    bad = _run_request(bundle, bundle=0, option=999)

    async def scenario(stub, backend, metrics, channel):
        replies = [r async for r in stub.RunStream(iter([first, later, bad, later, later]), timeout=10)]
        by_seq = {r.seq: r for r in replies}
        assert sorted(by_seq) == [0, 1, 2, 3, 4]
        assert by_seq[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        for seq in (0, 1, 3, 4):
            assert len(by_seq[seq].classes) == 2 and not by_seq[seq].HasField("error")
        assert [seq for seq, r in by_seq.items() if r.HasField("timings")] == [0, 3]

    _run(tiny_bundle, {}, scenario)


def test_a_stream_without_a_bundle_answers_each_item_with_an_error(tiny_bundle, bundle):
    async def scenario(stub, backend, metrics, channel):
        replies = [r async for r in stub.RunStream(iter([_run_request(bundle, bundle=0)] * 2), timeout=10)]
        assert {r.error.code for r in replies} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}

    _run(tiny_bundle, {}, scenario)


def test_malformed_compact_messages_are_invalid_argument(tiny_bundle):
    garbage = b"\x1a\xff\xff\xff\x0f"  # field 3 (data) with a length far beyond the message

    async def scenario(stub, backend, metrics, channel):
        run = channel.unary_unary("/splitserve.v1.SplitInference/Run")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await run(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid RunRequest message" in info.value.details()
        stream = channel.stream_stream("/splitserve.v1.SplitInference/RunStream")
        (reply,) = [pb.RunReply.FromString(r) async for r in stream(iter([garbage]), timeout=10)]
        assert reply.seq == 0 and reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    _run(tiny_bundle, {}, scenario)


def test_ping_reports_the_load(tiny_bundle, bundle):
    async def scenario(stub, backend, metrics, channel):
        idle = await stub.Ping(pb.PingRequest(), timeout=10)
        assert idle.queue_dms == 0
        await stub.Run(_run_request(bundle), timeout=10)
        loaded = await stub.Ping(pb.PingRequest(), timeout=10)
        assert loaded.tail_dms > 0  # the fake tail takes delay_s
        assert loaded.ByteSize() <= 6

    _run(tiny_bundle, {"delay_s": 0.02}, scenario)


def test_item_numbers_wrap_at_the_modulus():
    assert SEQ_MODULUS == 1 << 14  # two varint bytes; the client numbers items the same way


class _OldEndpoint(CallInterceptor):
    """An endpoint from before the compact wire: Run, RunStream and Ping are UNIMPLEMENTED."""

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.rsplit("/", 1)[-1] in ("Run", "RunStream", "Ping"):
            return None
        return await super().intercept_service(continuation, handler_call_details)


@pytest.mark.parametrize("old", [False, True], ids=["new endpoint", "old endpoint"])
def test_the_edge_client_speaks_compact_and_falls_back_to_v1_on_an_old_endpoint(tiny_bundle, old):
    images = [np.full((28, 28), i * 20, np.uint8) for i in range(4)]
    config = EdgeConfig(fallback=False, retry_attempts=1, remeasure_s=0.0, timeout_s=10.0)

    async def scenario(stub, backend, metrics, channel):
        client = await AsyncEdgeClient.open(tiny_bundle, _TARGET["address"], policy="stem@0", config=config)
        async with client:
            assert client.transport.compact
            result = await client.infer(images[0])
            streamed = [r async for r in client.stream(images)]
            await client.ping()
            assert client.transport.compact is not old
        assert result.remote and all(r.remote for r in streamed)
        assert {r.top1 for r in [result, *streamed]} == {int(np.argmax(backend.logits))}

    _run(tiny_bundle, {}, scenario, interceptor=_OldEndpoint() if old else None)
