"""Offline natural images: read from installed wheels' files, preprocessed like the edge client does."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
from PIL import Image
from splitserve.core import natural_images as ni
from splitserve.core.errors import ConfigError


def test_imagenet_val_has_20_labelled_rgb_images():
    ims = ni.imagenet_val()
    assert len(ims) == 20
    assert [im.label for im in ims[:3]] == [243, 559, 438]
    assert all(im.pixels.dtype == np.uint8 and im.pixels.shape[2] == 3 for im in ims)


def test_photos_are_disjoint_from_the_evaluation_images():
    ph = ni.photos()
    assert len(ph) == len(ni.PHOTO_FILES) == 19
    assert all(im.label is None and im.pixels.ndim == 3 for im in ph)
    assert not {im.source for im in ph} & {im.source for im in ni.imagenet_val()}


def test_centre_crop_matches_the_edge_clients_preprocessing():
    from splitserve.edge._runtime import to_input

    im = ni.photos()[0]
    assert np.array_equal(
        ni.center_crop(im.pixels), to_input(Image.fromarray(im.pixels), (3, 224, 224), {"resize": 256, "crop": 224})
    )


def test_random_views_are_seeded_crops():
    pixels = ni.imagenet_val()[0].pixels
    a = ni.random_view(pixels, np.random.default_rng(3))
    b = ni.random_view(pixels, np.random.default_rng(3))
    assert a.shape == (3, 224, 224) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, b)
    assert not np.array_equal(a, ni.random_view(pixels, np.random.default_rng(4)))


def test_missing_wheel_says_what_to_install(monkeypatch):
    def missing(name: str):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(ni.md, "distribution", missing)
    with pytest.raises(ConfigError, match="pip install --no-deps foolbox"):
        ni.imagenet_val()
    with pytest.raises(ConfigError, match="unknown image set"):
        ni.load_natural_images("cifar")
