"""Every bad request gets the right status and a clear message, and the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from splitserve.protos.v1 import inference_pb2 as pb

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _edit(request: pb.InferRequest, **fields) -> pb.InferRequest:
    out = pb.InferRequest()
    out.CopyFrom(request)
    for name, value in fields.items():
        if name.startswith("tensor_"):
            attr = name.removeprefix("tensor_")
            if attr == "shape":
                del out.tensor.shape[:]
                out.tensor.shape.extend(value)
            else:
                setattr(out.tensor, attr, value)
        elif name == "no_tensor":
            out.ClearField("tensor")
        else:
            setattr(out, name, value)
    return out


def _latent_cases(good: pb.InferRequest, max_bytes: int):
    data = good.tensor.data
    return [
        ("no model", _edit(good, model=""), INVALID, "model is required"),
        ("unknown model", _edit(good, model="resnet9000"), NOT_FOUND, "'resnet9000' is not served"),
        ("unknown version", _edit(good, version="99"), NOT_FOUND, "no version '99'"),
        ("unknown split", _edit(good, split="layer9"), NOT_FOUND, "no split 'layer9'"),
        ("unknown level", _edit(good, level=9), NOT_FOUND, "no level 9"),
        ("no tensor", _edit(good, no_tensor=True), INVALID, "tensor is required"),
        ("wrong codec", _edit(good, tensor_codec="zstd"), INVALID, "takes codec 'bigrans'"),
        (
            "wrong codec version",
            _edit(good, tensor_codec_version=7),
            grpc.StatusCode.FAILED_PRECONDITION,
            "version 7",
        ),
        ("wrong shape", _edit(good, tensor_shape=[8, 7, 6]), INVALID, "does not match split"),
        ("no shape", _edit(good, tensor_shape=[]), INVALID, "does not match split"),
        ("empty payload", _edit(good, tensor_data=b""), INVALID, "payload of 0 bytes"),
        (
            "payload too long",
            _edit(good, tensor_data=b"\x01" * (max_bytes + 1)),
            INVALID,
            "outside the bounds",
        ),
        ("truncated stream", _edit(good, tensor_data=data[: len(data) // 2]), INVALID, "bitstream"),
        ("trailing bytes", _edit(good, tensor_data=data + b"\x00\x01"), INVALID, "bitstream"),
        ("flipped bit", _edit(good, tensor_data=bytes([data[0] ^ 4]) + data[1:]), INVALID, ""),
        (
            "crc mismatch",
            _edit(good, tensor_symbols_crc32=good.tensor.symbols_crc32 ^ 1),
            INVALID,
            "CRC32 mismatch",
        ),
        ("long request id", _edit(good, request_id="x" * 500), INVALID, "request_id is longer"),
        ("huge model name", _edit(good, model="m" * 100_000), INVALID, "model is longer"),
    ]


def _offload_cases(good: pb.InferRequest, png_bytes):
    rng = np.random.default_rng(0)
    png = good.tensor.data
    return [
        ("offload level", _edit(good, level=1), NOT_FOUND, "has no level 1 (levels: [0])"),
        ("offload codec", _edit(good, tensor_codec="jpeg"), INVALID, "takes codec 'png'"),
        ("not a png", _edit(good, tensor_data=b"GIF89a" + bytes(64)), INVALID, "not a PNG"),
        ("corrupt png", _edit(good, tensor_data=png[:40] + bytes(len(png) - 40)), INVALID, "PNG"),
        (
            "png wrong size",
            _edit(good, tensor_data=png_bytes(rng.integers(0, 255, (20, 28), np.uint8))),
            INVALID,
            "28x20",
        ),
        (
            "png wrong mode",
            _edit(good, tensor_data=png_bytes(rng.integers(0, 255, (28, 28, 3), np.uint8), "RGB")),
            INVALID,
            "mode is 'RGB'",
        ),
        ("offload shape", _edit(good, tensor_shape=[3, 28, 28]), INVALID, "does not match the input shape"),
    ]


@pytest.fixture(scope="module")
def cases(embedded_endpoint, samples, cloud_helpers):
    good = samples.latent("stem", 0, 1)[0].request
    max_bytes = (
        embedded_endpoint.server.registry.resolve(samples.model, "").splits["stem"].levels[0].max_bytes
    )
    offload = samples.offload(1)[0].request
    return _latent_cases(good, max_bytes) + _offload_cases(offload, cloud_helpers.png_bytes)


def test_each_bad_request_gets_its_status_and_message(embedded_endpoint, samples, cases, cloud_helpers):
    stub = embedded_endpoint.stub(options=[("grpc.max_send_message_length", -1)])
    for name, request, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(request, timeout=10)
        assert info.value.code() == code, f"{name}: {info.value.code()} {info.value.details()}"
        assert text in info.value.details(), f"{name}: {info.value.details()!r}"
        assert len(info.value.details()) < 600, name
    # ... and a good request right after all of them is still answered right
    sample = samples.latent("stem", 0, 1)[0]
    cloud_helpers.assert_answers(stub.Infer(sample.request, timeout=10), sample)


def test_bad_requests_are_counted_under_known_label_values_only(embedded_endpoint, cases):
    stub = embedded_endpoint.stub()
    for _, request, _, _ in cases:
        with pytest.raises(grpc.RpcError):
            stub.Infer(request, timeout=10)
    text = embedded_endpoint.server.metrics.exposition().decode()
    assert 'model="unknown",split="unknown",status="NOT_FOUND",version="unknown"' in text
    assert 'split="stem",status="INVALID_ARGUMENT",version="1"' in text
    assert "resnet9000" not in text and "layer9" not in text and "mmmm" not in text


def test_messages_over_the_size_limit_are_resource_exhausted(
    start_server, test_bundle, samples, cloud_helpers
):
    server = start_server(cloud_helpers.config([test_bundle], max_message_bytes=64 * 1024))
    stub = server.stub(options=[("grpc.max_send_message_length", -1)])
    big = _edit(samples.offload(1)[0].request, tensor_data=b"\x89PNG" + bytes(100 * 1024))
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    sample = samples.latent("stem", 0, 1)[0]
    cloud_helpers.assert_answers(stub.Infer(sample.request, timeout=10), sample)


def test_a_version_that_vanished_is_not_found_with_the_versions_served(embedded_endpoint, samples):
    request = _edit(samples.latent("stem", 0, 1)[0].request, version="0.9")
    with pytest.raises(grpc.RpcError) as info:
        embedded_endpoint.stub().Infer(request, timeout=10)
    assert info.value.code() == NOT_FOUND
    assert "versions: ['1']" in info.value.details()
