"""Retries, deadlines and the circuit breaker over real gRPC, against a scripted (flaky, slow) servicer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from splitserve.core.bundle import Bundle
from splitserve.core.errors import UnavailableError
from splitserve.edge import AsyncEdgeClient, EdgeClient, EdgeConfig
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc


class Flaky(pb_grpc.SplitInferenceServicer):
    """Answers UNAVAILABLE for the first ``failures`` attempts of every request, then after ``delay_s``."""

    def __init__(self) -> None:
        self.failures = 0
        self.delay_s = 0.0
        self.attempts: Counter[str] = Counter()
        self.deadlines_s: list[float | None] = []
        self._lock = threading.Lock()

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:  # noqa: N802
        with self._lock:
            self.attempts[request.request_id] += 1
            attempt = self.attempts[request.request_id]
            self.deadlines_s.append(context.time_remaining())
        if attempt <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        time.sleep(self.delay_s)
        return pb.InferResponse(
            request_id=request.request_id,
            classes=[3, 1],
            scores=[0.9, 0.1],
            timings=pb.ServerTimings(total_ms=0.1),
        )

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:  # noqa: N802
        return pb.ListModelsResponse()


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_SplitInferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


IMAGE = np.zeros((1, 28, 28), np.uint8)


def test_unavailable_is_retried_with_backoff(flaky: tuple[Flaky, str], bundle: Bundle) -> None:
    servicer, target = flaky
    servicer.failures = 2
    config = EdgeConfig(retry_attempts=3, retry_backoff_s=0.01, retry_max_backoff_s=0.05)
    with EdgeClient(bundle, target, policy="stem@0", config=config) as client:
        r = client.infer(IMAGE)
    assert r.computed == "split" and r.classes == (3, 1)
    assert list(servicer.attempts.values()) == [3]


def test_retries_run_out_then_the_device_answers(flaky: tuple[Flaky, str], bundle: Bundle) -> None:
    servicer, target = flaky
    servicer.failures = 10
    config = EdgeConfig(retry_attempts=2, breaker_failures=100)
    with EdgeClient(bundle, target, policy="stem@0", config=config) as client:
        results = [client.infer(IMAGE) for _ in range(3)]
    assert all(r.computed == "local" and "UnavailableError" in (r.fallback_reason or "") for r in results)
    assert list(servicer.attempts.values()) == [2, 2, 2]
    with (
        EdgeClient(bundle, target, policy="stem@0", config=EdgeConfig(fallback=False)) as client,
        pytest.raises(UnavailableError, match="warming up"),
    ):
        client.infer(IMAGE)


def test_the_deadline_reaches_the_server_and_holds(flaky: tuple[Flaky, str], bundle: Bundle) -> None:
    servicer, target = flaky
    servicer.delay_s = 1.0
    with EdgeClient(bundle, target, policy="stem@0", config=EdgeConfig(timeout_s=0.2)) as client:
        t0 = time.perf_counter()
        r = client.infer(IMAGE)
        wall_ms = (time.perf_counter() - t0) * 1e3
    assert r.computed == "local" and "DeadlineExceededError" in (r.fallback_reason or "")
    assert wall_ms < 200 + 300  # the deadline, plus slack for a busy CI
    (remaining_s,) = servicer.deadlines_s
    assert remaining_s is not None and remaining_s < 0.2


def test_breaker_keeps_calls_off_a_failing_endpoint(flaky: tuple[Flaky, str], bundle: Bundle) -> None:
    servicer, target = flaky
    servicer.failures = 10**6
    config = EdgeConfig(retry_attempts=1, breaker_failures=2, breaker_reset_s=60)
    with EdgeClient(bundle, target, policy="stem@0", config=config) as client:
        results = [client.infer(IMAGE) for _ in range(20)]
    assert all(r.computed == "local" for r in results)
    assert sum(servicer.attempts.values()) == 2


def test_async_client_retries_too(flaky: tuple[Flaky, str], bundle: Bundle) -> None:
    servicer, target = flaky
    servicer.failures = 1

    async def main() -> str:
        async with AsyncEdgeClient(bundle, target, policy="stem@0") as client:
            return (await client.infer(IMAGE)).computed

    assert asyncio.run(main()) == "split"
    assert list(servicer.attempts.values()) == [2]
