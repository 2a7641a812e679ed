"""Offline natural images: wheel photo files, and the crops every natural-image path takes."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
from PIL import Image

from splitserve.core import natural_images as ni
from splitserve.core.errors import ConfigError


def test_every_listed_wheel_photo_is_installed_and_an_rgb_image():
    assert len(ni.PHOTO_FILES) == 19
    for dist, rel in ni.PHOTO_FILES:
        with Image.open(ni.package_file(dist, rel)) as im:
            assert min(im.size) >= 224, rel


def test_centre_crop_matches_the_edge_clients_preprocessing():
    from splitserve.edge._runtime import to_input

    with Image.open(ni.package_file(*ni.PHOTO_FILES[0])) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert np.array_equal(
        ni.center_crop(pixels), to_input(Image.fromarray(pixels), (3, 224, 224), {"resize": 256, "crop": 224})
    )


def test_random_crop_boxes_are_seeded_and_inside_the_image():
    boxes = [ni.random_crop_box(400, 300, np.random.default_rng(3), (0.25, 1.0)) for _ in range(2)]
    assert boxes[0] == boxes[1]
    rng = np.random.default_rng(4)
    for _ in range(200):
        left, top, right, bottom = ni.random_crop_box(400, 300, rng, (0.25, 1.0))
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert 0.2 * 120_000 <= (right - left) * (bottom - top) <= 120_000


def test_missing_wheel_says_what_to_install(monkeypatch):
    def missing(name: str):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(ni.md, "distribution", missing)
    with pytest.raises(ConfigError, match="pip install --no-deps"):
        ni.package_file("scikit-image", "skimage/data/astronaut.png")
