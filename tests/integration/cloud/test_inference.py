"""Serving the test bundle end to end, on both backends: every answer equals the reference answer.

The same tests run against the embedded ONNX Runtime backend and against a real local tritonserver
(nvidia-pytriton's binary, python backend); both must give the reference classes for every request.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from splitserve.cloud import SERVICE_NAME
from splitserve.protos.v1 import inference_pb2 as pb

BACKENDS = ["embedded", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.fixture(params=BACKENDS)
def endpoint(request):
    return request.getfixturevalue(f"{request.param}_endpoint")


def _all_latent_samples(samples, n=24):
    return [
        s
        for split in samples.bundle.manifest.splits
        for level in split.levels
        for s in samples.latent(split.name, level.level, n, start=100 * level.level)
    ]


def test_infer_answers_every_split_and_level(endpoint, samples, cloud_helpers):
    stub = endpoint.stub()
    for sample in _all_latent_samples(samples):
        reply = stub.Infer(sample.request, timeout=10)
        cloud_helpers.assert_answers(reply, sample)
        assert reply.model == samples.model and reply.version == samples.bundle.manifest.version
        t = reply.timings
        assert t.total_ms > 0 and t.tail_ms > 0 and t.decode_ms > 0
        assert t.total_ms >= t.decode_ms + t.tail_ms


def test_offload_png_runs_the_whole_model(endpoint, samples, cloud_helpers):
    stub = endpoint.stub()
    for sample in samples.offload(16):
        cloud_helpers.assert_answers(stub.Infer(sample.request, timeout=10), sample)


def test_concurrent_requests_batch_and_still_answer_right(endpoint, samples, cloud_helpers):
    stub = endpoint.stub()
    batch = _all_latent_samples(samples) + samples.offload(16)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda s: stub.Infer(s.request, timeout=20), batch))
    for reply, sample in zip(replies, batch, strict=True):
        cloud_helpers.assert_answers(reply, sample)


def test_stream_is_pipelined_and_item_errors_do_not_end_it(endpoint, samples, cloud_helpers):
    stub = endpoint.stub()
    good = samples.latent("stem", 0, 24)
    bad = pb.InferRequest(
        request_id="bad", model=samples.model, split="stem", level=7, tensor=good[0].request.tensor
    )
    requests = [s.request for s in good[:12]] + [bad] + [s.request for s in good[12:]]
    replies = {r.request_id: r for r in stub.InferStream(iter(requests), timeout=30)}
    assert len(replies) == len(requests)
    assert replies["bad"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no level 7" in replies["bad"].error.message
    for sample in good:
        reply = replies[sample.request.request_id]
        assert not reply.HasField("error")
        cloud_helpers.assert_answers(reply, sample)


def test_top_k_is_capped_and_defaults_to_five(endpoint, samples):
    stub = endpoint.stub()
    request = pb.InferRequest()
    request.CopyFrom(samples.latent("stem", 0, 1)[0].request)
    request.top_k = 0
    assert len(stub.Infer(request, timeout=10).classes) == 5
    request.top_k = 1000
    reply = stub.Infer(request, timeout=10)
    assert sorted(reply.classes) == list(range(len(samples.bundle.manifest.classes)))
    assert abs(sum(reply.scores) - 1.0) < 1e-5


def test_list_models_describes_the_bundle(endpoint, samples):
    reply = endpoint.stub().ListModels(pb.ListModelsRequest(), timeout=10)
    (model,) = reply.models
    m = samples.bundle.manifest
    assert (model.name, model.version, list(model.input_shape)) == (m.name, m.version, list(m.input_shape))
    assert model.num_classes == len(m.classes) and model.offload
    assert {s.name: (list(s.latent_shape), list(s.levels)) for s in model.splits} == {
        s.name: (list(s.latent_shape), [lv.level for lv in s.levels]) for s in m.splits
    }


def test_health_and_reflection(endpoint):
    channel = grpc.insecure_channel(endpoint.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    (reply,) = list(
        reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


@pytest.mark.triton
def test_both_backends_agree_on_every_prediction(embedded_endpoint, triton_endpoint, samples):
    embedded, triton = embedded_endpoint.stub(), triton_endpoint.stub()
    for sample in _all_latent_samples(samples, n=48) + samples.offload(48, start=500):
        a = embedded.Infer(sample.request, timeout=10)
        b = triton.Infer(sample.request, timeout=10)
        assert list(a.classes) == list(b.classes), sample.request.request_id
        assert list(a.scores) == pytest.approx(list(b.scores), rel=1e-4, abs=1e-5)


@pytest.mark.triton
def test_triton_local_serves_its_own_metrics(triton_endpoint):
    import urllib.request

    port = triton_endpoint.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/triton", timeout=10) as r:
        text = r.read().decode()
    assert "nv_inference_request_success" in text


def test_several_models_are_served_at_once(start_server, test_bundle, samples, tmp_path, cloud_helpers):
    twin = tmp_path / "twin"
    shutil.copytree(test_bundle, twin)
    manifest = json.loads((twin / "manifest.json").read_text())
    manifest["name"] = "fmnist_twin"
    (twin / "manifest.json").write_text(json.dumps(manifest))
    server = start_server(cloud_helpers.config([test_bundle, twin]))
    stub = server.stub()
    listed = {(m.name, m.version) for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert listed == {(samples.model, "1"), ("fmnist_twin", "1")}
    for sample in samples.latent("layer1", 1, 8):
        cloud_helpers.assert_answers(stub.Infer(sample.request, timeout=10), sample)
        twin_request = pb.InferRequest()
        twin_request.CopyFrom(sample.request)
        twin_request.model = "fmnist_twin"
        reply = stub.Infer(twin_request, timeout=10)
        assert reply.model == "fmnist_twin" and list(reply.classes) == sample.classes
