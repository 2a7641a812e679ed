"""Triton python-backend model: run the ``model.onnx`` beside it with ONNX Runtime on the CPU.

``splitserve export`` copies this file byte-for-byte into every ``triton/python/<model>/1/model.py`` of a
bundle (:mod:`splitserve.core.bundle` accepts no other ``model.py``), so that the ``tritonserver`` binary
shipped in the ``nvidia-pytriton`` wheel, which has only the python backend, serves the same ONNX files
as the official image's onnxruntime backend.

It runs inside Triton's python stub, not inside splitserve: it imports nothing of splitserve, only
``numpy``, ``onnxruntime`` and Triton's ``triton_python_backend_utils``. Input and output names and
types come from the model's ``config.pbtxt``. With ``max_batch_size > 0`` the requests of one dynamic
batch are concatenated along the batch axis and run as one ONNX Runtime call.

ONNX Runtime's intra-op thread count comes from ``SPLITSERVE_TRITON_ORT_THREADS`` (default 1: Triton
scales with model instances, not with threads inside one).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from numpy.typing import NDArray

__all__ = ["THREADS_ENV", "TritonPythonModel"]

THREADS_ENV = "SPLITSERVE_TRITON_ORT_THREADS"


class TritonPythonModel:
    """The python-backend entry points Triton calls: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open ``<model dir>/<version>/model.onnx`` and read the tensor names from the config.

        Args:
            args: Triton's model arguments (``model_config`` JSON, ``model_repository``, ``model_version``).
        """
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(os.environ.get(THREADS_ENV, "1") or "1"))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self._outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self._batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run one batch of requests; a failure answers every request of the batch with its message.

        Args:
            requests: ``pb_utils.InferenceRequest`` objects of one (dynamic) batch.

        Returns:
            One ``pb_utils.InferenceResponse`` per request, in order.
        """
        try:
            if self._batched:
                return self._run_batched(requests)
            return [self._response(self._run([self._feed(r)])[0]) for r in requests]
        except Exception as exc:  # noqa: BLE001 - every failure must become a per-request error for Triton
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

    def finalize(self) -> None:
        """Release the ONNX Runtime session."""
        self._session = None

    def _feed(self, request: Any) -> dict[str, NDArray[Any]]:
        feed = {}
        for name, dtype in self._inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"request has no input tensor {name!r}")
            feed[name] = np.ascontiguousarray(tensor.as_numpy(), dtype=dtype)
        return feed

    def _run(self, feeds: list[dict[str, NDArray[Any]]]) -> list[list[NDArray[Any]]]:
        names = [name for name, _ in self._outputs]
        return [self._session.run(names, feed) for feed in feeds]

    def _run_batched(self, requests: list[Any]) -> list[Any]:
        feeds = [self._feed(r) for r in requests]
        first = self._inputs[0][0]
        sizes = [feed[first].shape[0] for feed in feeds]
        merged = {name: np.concatenate([feed[name] for feed in feeds]) for name, _ in self._inputs}
        outputs = self._run([merged])[0]
        bounds = np.cumsum([0, *sizes])
        return [
            self._response([out[lo:hi] for out in outputs]) for lo, hi in zip(bounds[:-1], bounds[1:])
        ]

    def _response(self, outputs: list[NDArray[Any]]) -> Any:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(out, dtype=dtype))
            for (name, dtype), out in zip(self._outputs, outputs)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
