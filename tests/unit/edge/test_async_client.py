"""The asyncio edge client: the same behaviour as the sync one, with ``await``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ClientClosedError, RequestError, UnavailableError
from splitserve.edge import AsyncEdgeClient, EdgeClient, EdgeConfig, MockTransport
from splitserve.protos.v1 import inference_pb2 as pb

from .conftest import TailHandler

# int8 pinned: with precision="auto" two clients may keep different heads (timed at start) and rank
# the low classes differently.
FAST = EdgeConfig(timeout_s=5.0, precision="int8")


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


def test_infer_split_and_local(bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
    async def main() -> tuple:
        async with AsyncEdgeClient(
            bundle, transport=MockTransport(tail), policy="layer1@0", config=FAST
        ) as c:
            remote = await c.infer(images[0])
        async with AsyncEdgeClient(bundle, policy="local") as c:
            local = await c.infer(images[0])
        return remote, local

    remote, local = _run(main())
    with EdgeClient(bundle, transport=MockTransport(tail), policy="layer1@0", config=FAST) as c:
        assert remote.classes == c.infer(images[0]).classes
    assert remote.computed == "split" and remote.bytes_sent > 0 and remote.timings.rtt_ms > 0
    assert local.computed == "local" and local.bytes_sent == 0


def test_stream_keeps_input_order_with_several_in_flight(
    bundle: Bundle, images: np.ndarray, tail: TailHandler
) -> None:
    async def slow(
        request: pb.InferRequest | pb.ListModelsRequest,
    ) -> pb.InferResponse | pb.ListModelsResponse:
        await asyncio.sleep(0.003)
        return tail(request)

    transport = MockTransport(slow)

    async def frames() -> AsyncIterator[np.ndarray]:
        for im in images[:24]:
            yield im

    async def main() -> list:
        async with AsyncEdgeClient(bundle, transport=transport, policy="stem@0", config=FAST) as c:
            return [r async for r in c.stream(frames(), max_inflight=3)]

    results = _run(main())
    with EdgeClient(bundle, policy="stem@0", transport=MockTransport(tail), config=FAST) as c:
        expected = [c.infer(im).classes for im in images[:24]]
    assert [r.classes for r in results] == expected
    assert [r.request_id for r in results] == [q.request_id for q in transport.requests]
    assert 2 <= transport.max_inflight <= 3


def test_stream_survives_losing_the_endpoint(bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
    tail.fail = lambda request: UnavailableError("gone") if tail.served >= 5 else None

    async def main() -> list:
        async with AsyncEdgeClient(
            bundle, transport=MockTransport(tail), policy="layer1@1", config=FAST
        ) as c:
            return [r async for r in c.stream(images[:20], max_inflight=4)]

    results = _run(main())
    assert len(results) == 20
    assert [r.computed for r in results] == ["split"] * 5 + ["local"] * 15


def test_item_error_and_deadline_fall_back(bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
    async def handler(
        request: pb.InferRequest | pb.ListModelsRequest,
    ) -> pb.InferResponse | pb.ListModelsResponse:
        n = request.request_id.split("-")[-1] if isinstance(request, pb.InferRequest) else ""
        if n in ("1", "4"):
            raise RequestError("bad")
        if n in ("2", "5"):
            await asyncio.sleep(0.5)
        return tail(request)

    async def main() -> tuple:
        config = EdgeConfig(timeout_s=0.15, breaker_failures=10)
        async with AsyncEdgeClient(
            bundle, transport=MockTransport(handler), policy="stem@0", config=config
        ) as c:
            unary = [await c.infer(images[i]) for i in range(3)]
            streamed = [r async for r in c.stream(images[:3])]
        return unary, streamed

    unary, streamed = _run(main())
    assert [r.computed for r in unary] == ["split", "local", "local"]
    assert "RequestError" in (unary[1].fallback_reason or "")
    assert "DeadlineExceededError" in (unary[2].fallback_reason or "")
    assert [r.computed for r in streamed] == ["split", "local", "local"]
    assert "RequestError" in (streamed[1].fallback_reason or "")
    assert "DeadlineExceededError" in (streamed[2].fallback_reason or "")
    assert all(
        r.timings.total_ms < 150 + 300 for r in unary + streamed
    )  # the deadline, plus slack for a busy CI


def test_closed_client_refuses_work(bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
    async def main() -> MockTransport:
        transport = MockTransport(tail)
        c = AsyncEdgeClient(bundle, transport=transport, policy="stem@0")
        await c.aclose()
        await c.aclose()
        with pytest.raises(ClientClosedError):
            await c.infer(images[0])
        with pytest.raises(ClientClosedError):
            [r async for r in c.stream(images[:2])]
        return transport

    assert _run(main()).closed


def test_stopping_a_stream_early(bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
    async def main() -> int:
        async with AsyncEdgeClient(bundle, transport=MockTransport(tail), policy="stem@0", config=FAST) as c:
            agen = c.stream(images[:40])
            async for _ in agen:
                break
            await agen.aclose()
            return len([r async for r in c.stream(images[:5])])

    assert _run(main()) == 5


def test_open_builds_the_client_without_blocking_the_loop(
    bundle: Bundle, images: np.ndarray, tail: TailHandler
) -> None:
    async def main() -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        # a 20x slower device: opening (which times every head) takes long enough to count the ticks
        config = dataclasses.replace(FAST, device_slowdown=20.0)
        client = await AsyncEdgeClient.open(bundle.root, transport=MockTransport(tail), policy="layer1@0", config=config)
        opened_ticks = ticks
        task.cancel()
        async with client:
            result = await client.infer(images[0])
        return opened_ticks, result.computed

    ticks, computed = _run(main())
    assert ticks > 3 and computed == "split"  # the loop kept running while the bundle was checked and timed
