"""The Triton python-backend model, local repository staging, and the Triton backend's error mapping."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitserve.cloud import LocalTriton, TritonBackend
from splitserve.cloud._registry import ServedBundle
from splitserve.cloud._triton import _error, _server_env
from splitserve.core.bundle import TRITON_PYTHON_MODEL, Bundle
from splitserve.core.errors import (
    DeadlineExceededError,
    InferenceError,
    ModelNotReadyError,
    ResourceExhaustedError,
    UnavailableError,
)


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self._array = name, array

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors, error=None) -> None:
        self.output_tensors, self.error = output_tensors, error


def _fake_pb_utils() -> types.ModuleType:
    """The slice of Triton's ``triton_python_backend_utils`` the model uses."""
    pb = types.ModuleType("triton_python_backend_utils")
    types_ = {"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8}
    pb.triton_string_to_numpy = types_.__getitem__
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    pb.Tensor = _Tensor
    pb.InferenceResponse = _Response
    pb.TritonError = str
    return pb


@pytest.fixture
def python_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("splitserve_triton_model_under_test", TRITON_PYTHON_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _init(python_model, bundle: Bundle, triton_model: str, max_batch_size: int):
    model_dir = bundle.root / "triton" / "python" / triton_model
    config = {
        "max_batch_size": max_batch_size,
        "input": [{"name": "y_hat", "data_type": "TYPE_FP32"}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32"}],
    }
    model = python_model.TritonPythonModel()
    model.initialize(
        {"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"}
    )
    return model, ort.InferenceSession(str(model_dir / "1" / "model.onnx"))


@pytest.mark.parametrize("max_batch_size", [0, 64])
def test_python_model_runs_each_request_of_a_batch(python_model, tiny_bundle, max_batch_size):
    bundle = Bundle.open(tiny_bundle)
    model, reference = _init(python_model, bundle, "fmnist_tiny_tail_stem", max_batch_size)
    rng = np.random.default_rng(0)
    shape = bundle.manifest.split("stem").latent_shape
    inputs = [rng.normal(size=(n, *shape)).astype(np.float32) for n in (1, 3, 2)]
    responses = model.execute([{"y_hat": _Tensor("y_hat", x)} for x in inputs])
    assert len(responses) == 3
    for x, response in zip(inputs, responses, strict=True):
        (logits,) = response.output_tensors
        assert logits.name == "logits" and response.error is None
        np.testing.assert_allclose(
            logits.as_numpy(), reference.run(None, {"y_hat": x})[0], rtol=1e-5, atol=1e-5
        )
    model.finalize()


def test_python_model_answers_every_request_with_the_error(python_model, tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    model, _ = _init(python_model, bundle, "fmnist_tiny_tail_stem", 64)
    y_hat = np.zeros((1, *bundle.manifest.split("stem").latent_shape), np.float32)
    responses = model.execute([{"y_hat": _Tensor("y_hat", y_hat)}, {}])
    assert [r.output_tensors for r in responses] == [[], []]
    assert all("no input tensor 'y_hat'" in r.error for r in responses)


def test_the_bundle_ships_this_exact_python_model(tiny_bundle):
    shipped = sorted((Path(tiny_bundle) / "triton" / "python").glob("*/1/model.py"))
    assert shipped and all(p.read_bytes() == TRITON_PYTHON_MODEL.read_bytes() for p in shipped)


def test_staging_renames_per_version_and_never_writes_into_the_bundle(tiny_bundle, tmp_path):
    served = ServedBundle.from_bundle(Bundle.open(tiny_bundle))
    before = sorted(p.relative_to(tiny_bundle) for p in Path(tiny_bundle).rglob("*"))
    local = LocalTriton(workdir=tmp_path)
    name = local.stage(served.tails["stem"])
    assert name == "fmnist_tiny_tail_stem__fmnist_tiny__1"
    staged = local.repository / name
    assert 'name: "fmnist_tiny_tail_stem__fmnist_tiny__1"' in (staged / "config.pbtxt").read_text()
    assert 'fmnist_tiny_tail_stem"' not in (staged / "config.pbtxt").read_text()
    assert (staged / "1" / "model.onnx").resolve() == (
        served.tails["stem"].triton_dir / "1" / "model.onnx"
    ).resolve()
    assert sorted(p.relative_to(tiny_bundle) for p in Path(tiny_bundle).rglob("*")) == before
    local.unstage(name)
    assert not staged.exists()


def test_stub_environment_puts_this_python_first():
    env = _server_env(Path("/opt/pytriton/tritonserver"))
    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_an_unreachable_triton_is_unavailable(cloud_free_port):
    backend = TritonBackend(f"127.0.0.1:{cloud_free_port}", startup_timeout_s=1.0)

    async def main():
        try:
            await backend.start()
        finally:
            await backend.close()

    with pytest.raises(UnavailableError, match="not ready after 1 s"):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceededError),
        ("StatusCode.UNAVAILABLE", UnavailableError),
        ("StatusCode.RESOURCE_EXHAUSTED", ResourceExhaustedError),
        ("StatusCode.NOT_FOUND", ModelNotReadyError),
        ("StatusCode.INTERNAL", InferenceError),
        (None, InferenceError),
    ],
)
def test_triton_statuses_map_to_splitserve_errors(status, error):
    from tritonclient.utils import InferenceServerException

    got = _error("m", InferenceServerException("went wrong", status=status))
    assert type(got) is error and "Triton model 'm': went wrong" in got.message


@pytest.fixture
def cloud_free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
