"""Offload levels of a colour bundle (PNG, JPEG q90, WebP q90) through the real endpoint and edge client."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitserve.core.bundle import Bundle, Manifest
from splitserve.core.offload import encode_image
from splitserve.edge import EdgeClient, EdgeConfig
from splitserve.models.custom import ModelSpec, export_user_model
from splitserve.models.export import LOSSY_OFFLOAD, ort_session

from .conftest import EndpointThread, _config

COLOUR_NET = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
        )
    """
)


@pytest.fixture(scope="module")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colour")
    (root / "colour_net.py").write_text(COLOUR_NET)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    spec = ModelSpec(name="colournet", input_size=32, resize=36, splits=("1",))
    return export_user_model(f"{root / 'colour_net.py'}:build", spec, images, root / "bundle", heldout_every=3,
                             progress=False)


def test_the_exporter_lists_jpeg_and_webp_levels_priced_with_the_client_encoder(colour_bundle: Path) -> None:
    levels = Bundle.open(colour_bundle).manifest.offload.levels
    assert [(lv.level, lv.codec, lv.quality) for lv in levels] == [
        (0, "png", None), *((i, c, q) for i, (c, q) in enumerate(LOSSY_OFFLOAD, start=1))
    ]
    assert all(lv.bytes_per_sample > 0 and 0.0 <= lv.accuracy <= 1.0 for lv in levels)
    text = (colour_bundle / "manifest.json").read_text()  # written through the typed manifest, read back whole
    assert json.dumps(Manifest.from_dict(json.loads(text)).to_dict(), indent=1) == text


def test_every_offload_level_is_served_and_answers_as_the_model_on_the_decoded_image(colour_bundle: Path) -> None:
    bundle = Bundle.open(colour_bundle)
    full = ort_session(bundle.path(bundle.manifest.offload.onnx))
    photos = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    endpoint = EndpointThread(_config(colour_bundle))
    try:
        for lv in bundle.manifest.offload.levels:
            policy = "offload" if lv.level == 0 else f"offload@{lv.level}"
            with EdgeClient(bundle, endpoint.target, policy=policy, config=EdgeConfig(timeout_s=10.0)) as client:
                results = [client.infer(p) for p in photos]
            assert all(r.computed == "offload" for r in results), [r.fallback_reason for r in results]
            for photo, r in zip(photos, results):
                payload = encode_image(photo.transpose(2, 0, 1), lv.codec, lv.quality)
                assert r.payload_bytes == len(payload)
                with Image.open(io.BytesIO(payload)) as img:
                    decoded = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
                expected = full.run(None, {full.get_inputs()[0].name: decoded[None]})[0][0].argmax()
                assert r.top1 == expected, policy
    finally:
        endpoint.close()
        bundle.close()
