"""Offload levels: one encoder for the client and the exporter's prices, and a manifest entry checked whole
(``core.bundle.OffloadInfo``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from splitserve.core.bundle import OffloadInfo
from splitserve.core.errors import BundleError, RequestError
from splitserve.core.offload import encode_image
from splitserve.core.png import png_bytes

OFFLOAD = {"codec": "png", "bytes_per_sample": 86000.0, "accuracy": 1.0}


def test_every_codec_encodes_the_model_input_at_its_size():
    x = np.random.default_rng(0).integers(0, 255, (3, 40, 56), dtype=np.uint8)
    assert encode_image(x, "png") == png_bytes(x)
    sizes = {}
    for name, fmt in (("jpeg", "JPEG"), ("webp", "WEBP")):
        for quality in (30, 90):
            data = encode_image(x, name, quality)
            with Image.open(io.BytesIO(data)) as img:
                assert img.format == fmt and img.size == (56, 40) and img.mode == "RGB"
                assert not img.info.get("progressive")
            sizes[name, quality] = len(data)
        assert sizes[name, 30] < sizes[name, 90]
    grey = x[:1]
    with Image.open(io.BytesIO(encode_image(grey, "jpeg", 80))) as img:
        assert img.mode == "L"


@pytest.mark.parametrize(
    "codec_name, quality, shape, message",
    [("gif", 90, (3, 8, 8), "not one of"), ("jpeg", None, (3, 8, 8), "quality in 1..100"),
     ("webp", 101, (3, 8, 8), "quality in 1..100"), ("jpeg", 90, (4, 8, 8), "1- or 3-channel")],
)
def test_bad_encoder_arguments_are_request_errors(codec_name, quality, shape, message):
    with pytest.raises(RequestError, match=message):
        encode_image(np.zeros(shape, np.uint8), codec_name, quality)


def test_levels_are_png_then_the_listed_lossy_ones_and_are_written_back_as_read():
    entry = {"split": "input", **OFFLOAD, "triton_model": "m_full", "onnx": "triton/m_full.onnx", "levels": [
        {"level": 1, "codec": "jpeg", "quality": 90, "bytes_per_sample": 16000.0, "accuracy": 0.84},
        {"level": 2, "codec": "webp", "quality": 90, "bytes_per_sample": 13000.0, "accuracy": 0.87},
    ]}
    offload = OffloadInfo.from_dict(entry)
    assert [(lv.level, lv.label) for lv in offload.levels] == [(0, "png"), (1, "jpeg q90"), (2, "webp q90")]
    assert offload.level(2).bytes_per_sample == 13000.0 and offload.onnx == "triton/m_full.onnx"
    assert OffloadInfo.from_dict(offload.to_dict()) == offload
    written = offload.to_dict()
    assert written == entry
    assert list(written) == ["split", "codec", "triton_model", "onnx", "bytes_per_sample", "accuracy", "levels"]
    assert OffloadInfo.from_dict({}) == OffloadInfo()
    assert [lv.level for lv in OffloadInfo.from_dict(OFFLOAD).levels] == [0]


@pytest.mark.parametrize(
    "entry",
    [{"level": 0, "codec": "jpeg", "quality": 90}, {"level": 1, "codec": "png"}, {"level": 1, "codec": "jpeg", "quality": 0},
     {"level": 1, "codec": "gif", "quality": 50}, {"level": 256, "codec": "jpeg", "quality": 50},
     {"level": 1, "codec": "jpeg", "quality": 50, "accuracy": 2.0}, {"level": 1, "codec": "jpeg", "quality": "high"},
     {"level": 1, "codec": "jpeg", "quality": 50, "bytes_per_sample": float("nan")}, {"codec": "jpeg", "quality": 50}],
)
def test_malformed_levels_are_bundle_errors(entry):
    full = {"bytes_per_sample": 100.0, "accuracy": 0.5, **entry}
    with pytest.raises(BundleError, match="malformed manifest"):
        OffloadInfo.from_dict({**OFFLOAD, "levels": [full]})


def test_duplicate_or_non_list_levels_are_bundle_errors():
    lv = {"level": 1, "codec": "jpeg", "quality": 90, "bytes_per_sample": 1.0, "accuracy": 0.5}
    for levels in ([lv, lv], {"level": 1}, ["jpeg"]):
        with pytest.raises(BundleError, match="malformed manifest"):
            OffloadInfo.from_dict({**OFFLOAD, "levels": levels})
    with pytest.raises(BundleError, match="offload split"):
        OffloadInfo.from_dict({**OFFLOAD, "split": "stem"})
