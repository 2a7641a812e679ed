"""Lifecycle: SIGTERM drains and leaves no child process; versions swap under traffic; Triton loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest

from splitserve.protos.v1 import inference_pb2 as pb
from splitserve.protos.v1 import inference_pb2_grpc as pb_grpc


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _assert_all_gone(procs: list[psutil.Process], timeout_s: float = 15.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    assert not alive, f"orphaned: {[(p.pid, p.name()) for p in alive]}"


def _copy_with_version(bundle: Path, dest: Path, version: str) -> Path:
    shutil.copytree(bundle, dest, dirs_exist_ok=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_sigterm_drains_in_flight_requests_and_reaps_the_decode_pool(
    start_process, test_bundle, samples, cloud_helpers
):
    proc = start_process(["--bundle", str(test_bundle), "--decode-mode", "process", "--decode-workers", "2"])
    proc.wait_ready()
    workers = _children(proc.proc.pid)
    assert len(workers) >= 2  # spawned decode workers (and multiprocessing's resource tracker)
    stub = pb_grpc.SplitInferenceStub(grpc.insecure_channel(proc.target))
    batch = samples.latent("stem", 0, 64) + samples.latent("layer1", 1, 64)
    replies = stub.InferStream(iter([s.request for s in batch]), timeout=60)
    first = next(replies)
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    with pytest.raises(grpc.RpcError) as refused:  # new calls are refused while draining ...
        while time.monotonic() < deadline:
            stub.Infer(batch[0].request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    answered = {r.request_id: r for r in [first, *replies]}  # ... while the stream in flight completes
    assert len(answered) == len(batch)
    for sample in batch:
        cloud_helpers.assert_answers(answered[sample.request.request_id], sample)
    assert proc.proc.wait(30) == 0
    _assert_all_gone(workers)


@pytest.mark.triton
def test_triton_loss_is_unavailable_and_sigterm_leaves_no_tritonserver(start_process, test_bundle, samples):
    proc = start_process(["--bundle", str(test_bundle), "--triton", "local"])
    proc.wait_ready()
    children = _children(proc.proc.pid)
    (triton,) = [p for p in children if p.name() == "tritonserver"]
    assert any("triton_python_backend_stub" in p.name() for p in children)
    stub = pb_grpc.SplitInferenceStub(grpc.insecure_channel(proc.target))
    sample = samples.latent("stem", 0, 1)[0]
    assert list(stub.Infer(sample.request, timeout=10).classes) == sample.classes

    triton.kill()
    triton.wait(10)
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(sample.request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    ready = f"http://127.0.0.1:{proc.metrics_port}/readyz"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(ready, timeout=2)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            break
        time.sleep(0.2)
    else:
        raise AssertionError("/readyz stayed 200 after tritonserver died")

    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0
    _assert_all_gone(children)


@pytest.mark.triton
def test_tritonserver_dies_with_a_killed_endpoint(start_process, test_bundle):
    proc = start_process(["--bundle", str(test_bundle), "--triton", "local"])
    proc.wait_ready()
    children = _children(proc.proc.pid)
    assert any(p.name() == "tritonserver" for p in children)
    proc.proc.kill()  # no handler runs: only PR_SET_PDEATHSIG can stop tritonserver now
    proc.proc.wait()
    _assert_all_gone(children, timeout_s=30)


class _Traffic:
    """Requests for the newest version (empty version) in a loop on a thread; records versions and errors."""

    def __init__(self, target: str, request: pb.InferRequest) -> None:
        self._stub = pb_grpc.SplitInferenceStub(grpc.insecure_channel(target))
        self._request = request
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.versions.append(self._stub.Infer(self._request, timeout=10).version)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code()}: {exc.details()}")

    def wait_for(self, version: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.versions and self.versions[-1] == version:
                return
            time.sleep(0.02)
        raise AssertionError(f"traffic never reached version {version}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize("backend", ["embedded", pytest.param("triton", marks=pytest.mark.triton)])
def test_new_version_loads_and_old_unloads_without_dropping_traffic(
    request, backend, test_bundle, samples, tmp_path
):
    endpoint = request.getfixturevalue(f"{backend}_endpoint")
    v2 = _copy_with_version(test_bundle, tmp_path / "v2", "2")
    sample = samples.latent("stem", 0, 1)[0]
    traffic = _Traffic(endpoint.target, sample.request)
    stub = endpoint.stub()
    try:
        traffic.wait_for("1")
        assert endpoint.run(endpoint.server.load_bundle(v2)) == (samples.model, "2")
        traffic.wait_for("2")
        versions = {m.version for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models}
        assert versions == {"1", "2"}
        old = pb.InferRequest()
        old.CopyFrom(sample.request)
        old.version = "1"
        assert stub.Infer(old, timeout=10).version == "1"

        endpoint.run(endpoint.server.unload_bundle(samples.model, "1"))
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(old, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        endpoint.run(endpoint.server.load_bundle(test_bundle))  # restore the shared endpoint: 1 only
        endpoint.run(endpoint.server.unload_bundle(samples.model, "2"))
        traffic.wait_for("1")
    finally:
        traffic.stop()
    assert not traffic.errors, traffic.errors[:3]
    assert len(traffic.versions) > 10 and set(traffic.versions) == {"1", "2"}


def test_sighup_reloads_the_configured_bundles(start_process, test_bundle, tmp_path):
    served = _copy_with_version(test_bundle, tmp_path / "bundle", "1")
    proc = start_process(["--bundle", str(served)])
    proc.wait_ready()
    stub = pb_grpc.SplitInferenceStub(grpc.insecure_channel(proc.target))
    _copy_with_version(test_bundle, served, "1.1")
    os.kill(proc.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        versions = [m.version for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models]
        if versions == ["1.1"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"still serving {versions} after SIGHUP")
