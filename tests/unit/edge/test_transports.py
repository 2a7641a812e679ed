"""Transport pieces: retry service config, status mapping, and the mock's stream semantics."""

from __future__ import annotations

import json

import pytest

from splitserve.core.errors import (
    ClientClosedError,
    DeadlineExceededError,
    RequestError,
    SplitServeError,
    UnavailableError,
)
from splitserve.edge import Credentials, EdgeConfig, MockTransport
from splitserve.edge._transports import item_error
from splitserve.edge._transports.base import status_code, status_name
from splitserve.edge._transports.grpc import channel_options, service_config
from splitserve.protos.v1 import inference_pb2 as pb


def test_retries_are_declared_in_the_service_config() -> None:
    config = EdgeConfig(retry_attempts=4, retry_backoff_s=0.02, retry_max_backoff_s=0.5)
    (method,) = service_config(config)["methodConfig"]
    assert method["name"] == [{"service": "splitserve.v1.SplitInference"}]
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == 4 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["initialBackoff"] == "0.020000s" and policy["maxBackoff"] == "0.500000s"
    options = dict(channel_options(config, Credentials(server_name="cloud.test")))
    assert options["grpc.enable_retries"] == 1
    assert json.loads(options["grpc.service_config"]) == service_config(config)
    assert options["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["grpc.ssl_target_name_override"] == "cloud.test"
    single = EdgeConfig(retry_attempts=1)
    assert dict(channel_options(single, Credentials()))["grpc.enable_retries"] == 0
    assert "retryPolicy" not in service_config(single)["methodConfig"][0]


def test_item_errors_map_to_the_shared_error_tree() -> None:
    ok = pb.InferResponse(request_id="a", classes=[1])
    assert item_error(ok) is None
    err = item_error(pb.InferResponse(request_id="b", error=pb.ItemError(code=14, message="down")))
    assert isinstance(err, UnavailableError) and err.request_id == "b" and err.message == "down"
    assert isinstance(item_error(pb.InferResponse(error=pb.ItemError(code=3, message="x"))), RequestError)
    assert (
        status_name(99) == "UNKNOWN"
        and status_code("DEADLINE_EXCEEDED") == 4
        and status_name(4) == "DEADLINE_EXCEEDED"
    )


def _echo(request: pb.InferRequest | pb.ListModelsRequest) -> pb.InferResponse | pb.ListModelsResponse:
    if isinstance(request, pb.ListModelsRequest):
        return pb.ListModelsResponse()
    if request.request_id == "bad":
        raise RequestError("bad item")
    if request.request_id == "dead":
        raise UnavailableError("connection lost")
    return pb.InferResponse(request_id=request.request_id, classes=[7])


def test_mock_stream_item_and_stream_errors() -> None:
    t = MockTransport(_echo)
    call = t.stream()
    for rid in ("a", "bad", "b", "dead"):
        call.write(pb.InferRequest(request_id=rid))
    replies: list[pb.InferResponse] = []
    with pytest.raises(UnavailableError, match="connection lost"):
        for reply in call:
            replies.append(reply)
    assert [r.request_id for r in replies] == ["a", "bad", "b"]
    assert isinstance(item_error(replies[1]), RequestError) and item_error(replies[0]) is None
    with pytest.raises(UnavailableError):
        call.write(pb.InferRequest(request_id="c"))
    assert [r.request_id for r in t.requests] == ["a", "bad", "b", "dead"]


def test_mock_stream_ends_after_done_writing_and_cancels() -> None:
    t = MockTransport(_echo)
    call = t.stream()
    call.write(pb.InferRequest(request_id="a"))
    call.done_writing()
    assert [r.request_id for r in call] == ["a"]
    other = t.stream()
    other.cancel()
    with pytest.raises(ClientClosedError):
        list(other)


def test_mock_unary_deadline_ping_and_close() -> None:
    import time

    def slow(request: pb.InferRequest | pb.ListModelsRequest) -> pb.InferResponse:
        time.sleep(0.02)
        return pb.InferResponse(request_id="x")

    with pytest.raises(DeadlineExceededError):
        MockTransport(slow).infer(pb.InferRequest(request_id="x"), timeout_s=0.001)
    t = MockTransport(_echo)
    t.ping(timeout_s=1.0)
    assert t.pings == 1 and t.requests == []
    t.close()
    with pytest.raises(ClientClosedError):
        t.infer(pb.InferRequest(), timeout_s=1.0)
    with pytest.raises(SplitServeError):
        t.stream()
