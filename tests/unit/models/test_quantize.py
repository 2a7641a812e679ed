"""Int8 quantization: which convolutions stay fp32, 7-bit weights, int8 models that agree with fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from splitserve.core.bundle import Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.models.export import MIN_INT8_IN_CHANNELS, fp32_convs, ort_session, quantize_int8


@pytest.fixture(scope="module")
def quantized(test_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """(fp32, int8) pairs: the test bundle's fp32 heads and whole model, quantized here."""
    b = Bundle.open(test_bundle)
    calib = load_fashion_mnist("train")[0][:128]
    out = tmp_path_factory.mktemp("int8")
    pairs = []
    for i, rel in enumerate([*(s.head_fp32 for s in b.manifest.splits), b.manifest.local.fp32]):
        int8 = out / f"{i}.int8.onnx"
        quantize_int8(b.path(rel), int8, calib)
        pairs.append((b.path(rel), int8))
    return pairs


def test_the_input_stem_stays_fp32_and_weights_fit_in_7_bits(quantized):
    for fp32, int8 in quantized:
        stem = fp32_convs(fp32)
        assert len(stem) == 1  # the 1-channel input conv, nothing else
        graph = onnx.load(str(int8)).graph
        float_weights = {
            t.name: t.dims[1]
            for t in graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4
        }
        plain = {
            n.name: float_weights[n.input[1]]
            for n in graph.node
            if n.op_type == "Conv" and n.input[1] in float_weights
        }
        assert set(plain) == set(stem) and all(c < MIN_INT8_IN_CHANNELS for c in plain.values())
        weights = [
            numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8
        ]
        assert len(weights) >= 2 and all(np.abs(w.astype(int)).max() <= 64 for w in weights)


def test_int8_models_agree_with_fp32(quantized):
    x = load_fashion_mnist("test")[0][:1000]
    for fp32, int8 in quantized:
        y8, y32 = (ort_session(p).run(None, {"image": x})[0] for p in (int8, fp32))
        if y32.ndim == 2:  # the whole model: logits
            assert np.mean(y8.argmax(1) == y32.argmax(1)) >= 0.97  # a weak 1-epoch test backbone
        else:  # a head: on the unit grid (the finest step of any level) few latents move by one symbol
            assert np.mean(np.rint(y8) != np.rint(y32)) < 0.02
