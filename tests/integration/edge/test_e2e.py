"""The edge client against the real cloud endpoint (embedded and Triton tails) on Fashion-MNIST images."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from splitserve.benchmarks.stack import make_pki
from splitserve.benchmarks.wire import measure_bytes
from splitserve.core.bundle import Bundle
from splitserve.core.errors import AuthenticationError
from splitserve.core.wire import TLS_RECORD_BYTES, WINDOW_UPDATES_BYTES
from splitserve.edge import AsyncEdgeClient, Credentials, EdgeClient, EdgeConfig
from splitserve.edge.cli import edge
from splitserve.orchestrator import options_from_manifest

from .conftest import EndpointProcess, EndpointThread

PATIENT = EdgeConfig(timeout_s=10.0, precision="int8")  # the manifest's accuracy is the int8 head's
TOLERANCE = 0.002  # 0.2 percentage points


def _remote_options(bundle: Bundle) -> list[tuple[str, float]]:
    """(policy, manifest accuracy) of every option that runs a tail in the cloud."""
    return [(o.id, o.accuracy) for o in options_from_manifest(bundle.manifest) if o.remote]


@pytest.mark.parametrize("backend", ["embedded", pytest.param("triton", marks=pytest.mark.triton)])
def test_accuracy_of_every_option_equals_the_manifest(
    backend: str, request: pytest.FixtureRequest, bundle: Bundle, eval_set: tuple[np.ndarray, np.ndarray]
) -> None:
    endpoint: EndpointThread = request.getfixturevalue(backend)
    images, labels = eval_set
    report = {}
    for policy, expected in _remote_options(bundle):
        with EdgeClient(bundle, endpoint.target, policy=policy, config=PATIENT) as client:
            results = list(client.stream(images))
        assert len(results) == len(images)
        fell_back = [r.fallback_reason for r in results if not r.remote]
        assert not fell_back, f"{policy}: {len(fell_back)} results were local: {fell_back[:3]}"
        accuracy = float((np.array([r.top1 for r in results]) == labels).mean())
        report[policy] = (accuracy, expected)
    off = {p: v for p, v in report.items() if abs(v[0] - v[1]) > TOLERANCE}
    assert not off, f"accuracy (measured, manifest) beyond {TOLERANCE * 100:.1f} pp: {off}"


def test_unary_stream_and_async_agree(embedded: EndpointThread, bundle: Bundle, eval_set: tuple) -> None:
    images = eval_set[0][:48]
    with EdgeClient(bundle, embedded.target, policy="layer1@1", config=PATIENT) as client:
        streamed = list(client.stream(images, max_inflight=4))
        unary = [client.infer(im) for im in images]

    async def run_async() -> tuple[list, list]:
        async with AsyncEdgeClient(bundle, embedded.target, policy="layer1@1", config=PATIENT) as client:
            a_stream = [r async for r in client.stream(images, max_inflight=4)]
            a_unary = [await client.infer(im) for im in images[:8]]
        return a_stream, a_unary

    a_stream, a_unary = asyncio.run(run_async())
    for results in (streamed, unary, a_stream, a_unary):
        assert all(r.computed == "split" and r.split == "layer1" and r.level == 1 for r in results)
    assert [r.classes for r in streamed] == [r.classes for r in unary] == [r.classes for r in a_stream]
    assert [r.classes for r in a_unary] == [r.classes for r in unary[:8]]
    r = unary[0]
    t = r.timings
    assert r.bytes_sent > r.payload_bytes > 0
    assert t.server_total_ms is not None and t.rtt_ms is not None and t.rtt_ms >= t.server_total_ms > 0
    assert t.server_decode_ms is None and t.server_tail_ms is None  # compact replies: total and queue only
    timed = dataclasses.replace(PATIENT, timings_every=2)
    with EdgeClient(bundle, embedded.target, policy="layer1@1", config=timed) as client:
        t = client.infer(images[0]).timings
        every_other = [r.timings.server_decode_ms is not None for r in client.stream(images[:6], max_inflight=1)]
    assert t.server_decode_ms is not None and t.server_decode_ms > 0 and t.server_tail_ms is not None
    assert every_other == [True, False] * 3


@pytest.mark.parametrize("backend", ["embedded", pytest.param("triton", marks=pytest.mark.triton)])
def test_killing_the_endpoint_mid_stream_loses_no_input(
    backend: str, endpoint_process: EndpointProcess, bundle: Bundle, eval_set: tuple
) -> None:
    images = eval_set[0][:300]
    kill_at, window = 100, 8
    if backend == "triton":
        endpoint_process.triton = "local"
    endpoint_process.start()
    config = EdgeConfig(timeout_s=2.0, breaker_failures=3, breaker_reset_s=0.5, reconnect_max_s=0.5)

    def frames():  # noqa: ANN202
        for i, image in enumerate(images):
            if i == kill_at:
                endpoint_process.kill()
            yield image

    with EdgeClient(bundle, endpoint_process.target, policy="layer1@0", config=config) as client:
        t0 = time.perf_counter()
        results = list(client.stream(frames(), max_inflight=window))
        wall_s = time.perf_counter() - t0
        local_top1 = [int(np.argmax(client.runtime.local(im))) for im in images]

        assert len(results) == len(images) and len({r.request_id for r in results}) == len(images)
        assert all(r.computed == "split" for r in results[: kill_at - window])
        assert all(r.computed == "local" for r in results[kill_at:])
        assert any(r.fallback_reason for r in results[kill_at - window :])
        assert all(r.top1 == local_top1[i] for i, r in enumerate(results) if r.computed == "local")
        assert wall_s < 20, "inputs after the kill must not each wait out a deadline"

        # The endpoint comes back on the same port: the breaker's trial finds it and traffic returns.
        endpoint_process.start()
        deadline = time.monotonic() + 20
        while client.infer(images[0]).computed != "split":
            assert time.monotonic() < deadline, "the client never went back to the endpoint"
            time.sleep(0.05)
        assert client.breaker.state == "closed"
        assert all(r.computed == "split" for r in client.stream(images[:20]))


def test_the_orchestrator_learns_from_every_request(
    embedded: EndpointThread, bundle: Bundle, eval_set: tuple
) -> None:
    images = eval_set[0][:60]
    best = max(options_from_manifest(bundle.manifest), key=lambda o: o.accuracy)
    # int8 pinned: the client rates options by the precision it keeps, `best` by int8. No give-up: on a
    # busy CI box a reply may come later than 50 ms, which the give-up rule (unit-tested on its own)
    # would answer locally; this test is about what the orchestrator learns.
    config = EdgeConfig(timeout_s=1.0, precision="int8", give_up_factor=0)
    with EdgeClient(bundle, embedded.target, policy="max_accuracy", config=config) as client:
        prior_rtt_ms = client.policy.estimates().base_rtt_ms  # type: ignore[attr-defined]
        results = [client.infer(im) for im in images[:30]] + list(client.stream(images[30:]))
        estimates = client.policy.estimates()  # type: ignore[attr-defined]
    assert {r.chosen for r in results} == {best.id}
    assert all(r.remote for r in results) == best.remote, [r.fallback_reason for r in results if not r.remote]
    assert estimates.link_up and estimates.base_rtt_ms < prior_rtt_ms


def test_bearer_token(start_endpoint, tmp_path: Path, bundle: Bundle, eval_set: tuple) -> None:  # noqa: ANN001
    (tmp_path / "tokens").write_text("# edge devices\nedge-token\n")
    endpoint: EndpointThread = start_endpoint(tokens_file=str(tmp_path / "tokens"))
    image = eval_set[0][0]
    with EdgeClient(
        bundle, endpoint.target, credentials=Credentials(token="edge-token"), policy="stem@0"
    ) as c:
        assert c.infer(image).computed == "split"
    with EdgeClient(bundle, endpoint.target, policy="stem@0") as c:
        r = c.infer(image)
    assert r.computed == "local" and "AuthenticationError" in (r.fallback_reason or "")
    strict = EdgeConfig(fallback=False)
    with EdgeClient(
        bundle, endpoint.target, credentials=Credentials(token="wrong"), policy="stem@0", config=strict
    ) as c, pytest.raises(AuthenticationError):
        c.infer(image)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA with a server certificate for 127.0.0.1 and cloud.test, and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"), hosts=("cloud.test",)).directory


def test_mutual_tls_with_token(start_endpoint, pki: Path, bundle: Bundle, eval_set: tuple) -> None:  # noqa: ANN001
    (pki / "tokens").write_text("edge-token\n")
    endpoint: EndpointThread = start_endpoint(
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
        tokens_file=str(pki / "tokens"),
    )
    image = eval_set[0][0]
    config = EdgeConfig(
        tls_ca=str(pki / "ca.pem"),
        tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"),
        token="edge-token",
        tls_server_name="cloud.test",
    )
    with EdgeClient(bundle, endpoint.target, policy="offload", config=config) as c:
        assert c.infer(image).computed == "offload"
    no_client_cert = Credentials(token="edge-token", root_certificates=(pki / "ca.pem").read_bytes())
    with EdgeClient(bundle, endpoint.target, credentials=no_client_cert, policy="offload") as c:
        assert c.infer(image).computed == "local"


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (Debian package iproute2)")
def test_client_bytes_over_tls_match_the_kernel(start_endpoint, pki: Path, bundle: Bundle, eval_set: tuple) -> None:  # noqa: ANN001
    """Each request is one TLS record more (22 B): the client's figure still matches the kernel's count."""
    endpoint: EndpointThread = start_endpoint(tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    config = EdgeConfig(tls_ca=str(pki / "ca.pem"), tls_server_name="cloud.test", fallback=False, remeasure_s=0)
    port = int(endpoint.target.rsplit(":", 1)[1])
    images = list(eval_set[0][:50])
    with EdgeClient(bundle, endpoint.target, policy="stem@1", config=config) as c:
        unary = measure_bytes(port, (c.infer(x) for x in images), len(images), warmup=10)
        stream = measure_bytes(port, c.stream(images, max_inflight=1), len(images), warmup=10)
    for measured in (unary, stream):
        assert abs(measured["client_vs_kernel"] - 1) <= 0.05, measured
    assert stream["up_over_payload_B"] > TLS_RECORD_BYTES + WINDOW_UPDATES_BYTES


def test_cli_against_the_endpoint(
    embedded: EndpointThread, bundle: Bundle, eval_set: tuple, tmp_path: Path
) -> None:
    np.save(tmp_path / "frames.npy", eval_set[0][:12])
    result = CliRunner().invoke(
        edge,
        [
            "run",
            "--bundle",
            str(bundle.root),
            "--endpoint",
            embedded.target,
            "--policy",
            "stem@1",
            "--no-progress",
            str(tmp_path / "frames.npy"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "frames.npy[" in line]
    assert len(rows) == 12 and all(" split " in row and " stem " in row for row in rows)
    assert "12 inputs: split 12, offload 0, local 0 (0 fallbacks)" in result.output
