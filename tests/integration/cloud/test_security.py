"""TLS, mutual TLS and bearer tokens, with certificates made by openssl for each test session."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve.benchmarks.stack import make_pki
from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc

TOKENS = ("s3cret-edge-token", "second-token")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA with a server and a client certificate for 127.0.0.1 / localhost, and a rogue CA's client."""
    d = tmp_path_factory.mktemp("pki")
    make_pki(d, ("server", "client"), hosts=("localhost",))
    make_pki(d, ("rogue-client",), hosts=("localhost",), ca="rogue-ca")
    return d


def _credentials(pki: Path, client: str | None = None) -> grpc.ChannelCredentials:
    key = (pki / f"{client}.key").read_bytes() if client else None
    cert = (pki / f"{client}.pem").read_bytes() if client else None
    return grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), private_key=key, certificate_chain=cert
    )


def _stub(target: str, credentials: grpc.ChannelCredentials) -> pb_grpc.SplitInferenceStub:
    return pb_grpc.SplitInferenceStub(grpc.secure_channel(target, credentials))


def test_tls_serves_encrypted_and_refuses_plaintext(start_server, test_bundle, samples, pki, cloud_helpers):
    server = start_server(
        cloud_helpers.config([test_bundle], tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    )
    sample = samples.latent("stem", 0, 1)[0]
    cloud_helpers.assert_answers(
        _stub(server.target, _credentials(pki)).Infer(sample.request, timeout=10), sample
    )
    with pytest.raises(grpc.RpcError) as info:
        server.stub().Infer(sample.request, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    start_server, test_bundle, samples, pki, cloud_helpers
):
    server = start_server(
        cloud_helpers.config(
            [test_bundle],
            tls_cert=str(pki / "server.pem"),
            tls_key=str(pki / "server.key"),
            tls_client_ca=str(pki / "ca.pem"),
        )
    )
    sample = samples.latent("stem", 0, 1)[0]
    reply = _stub(server.target, _credentials(pki, "client")).Infer(sample.request, timeout=10)
    cloud_helpers.assert_answers(reply, sample)
    for refused in (_credentials(pki), _credentials(pki, "rogue-client")):
        with pytest.raises(grpc.RpcError) as info:
            _stub(server.target, refused).Infer(sample.request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_tokens_over_tls(start_server, test_bundle, samples, pki, tmp_path, cloud_helpers):
    tokens = tmp_path / "tokens"
    tokens.write_text("# edge fleet\n" + "\n".join(TOKENS) + "\n\n")
    server = start_server(
        cloud_helpers.config(
            [test_bundle],
            tls_cert=str(pki / "server.pem"),
            tls_key=str(pki / "server.key"),
            tokens_file=str(tokens),
        )
    )
    sample = samples.latent("stem", 0, 1)[0]
    tls = _credentials(pki)
    for token in TOKENS:
        creds = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
        cloud_helpers.assert_answers(_stub(server.target, creds).Infer(sample.request, timeout=10), sample)

    stub = _stub(server.target, tls)
    calls = {
        "no token": lambda: stub.Infer(sample.request, timeout=5),
        "wrong token": lambda: stub.Infer(
            sample.request, timeout=5, metadata=[("authorization", "Bearer nope")]
        ),
        "wrong scheme": lambda: stub.Infer(
            sample.request, timeout=5, metadata=[("authorization", f"Basic {TOKENS[0]}")]
        ),
        "token prefix": lambda: stub.Infer(
            sample.request, timeout=5, metadata=[("authorization", "Bearer s3cret")]
        ),
        "two headers, the first valid": lambda: stub.Infer(
            sample.request, timeout=5,
            metadata=[("authorization", f"Bearer {TOKENS[0]}"), ("authorization", "Bearer nope")],
        ),
        "list models": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=5),
        "stream": lambda: list(stub.InferStream(iter([sample.request]), timeout=5)),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "bearer token" in info.value.details(), name

    health = health_pb2_grpc.HealthStub(grpc.secure_channel(server.target, tls))  # probes carry no token
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_tokens_without_tls_still_authenticate(start_server, test_bundle, samples, tmp_path, cloud_helpers):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS[0])
    server = start_server(cloud_helpers.config([test_bundle], tokens_file=str(tokens)))
    sample = samples.latent("stem", 0, 1)[0]
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(sample.request, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = stub.Infer(sample.request, timeout=5, metadata=[("authorization", f"Bearer {TOKENS[0]}")])
    cloud_helpers.assert_answers(reply, sample)
