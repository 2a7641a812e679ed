"""Offline natural images, read from files that installed wheels ship (never downloaded, never imported).

* ``imagenet_val``: the 20 labelled ImageNet validation images inside the ``foolbox==3.3.4`` wheel
  (``foolbox/data/imagenet_<i>_<label>.jpg``, 512x512).
* ``photos``: the photographs shipped inside the ``scikit-image`` wheel (``skimage/data``: only files in
  the wheel, none that ``skimage.data`` would fetch with pooch) and the two of
  ``sklearn.datasets.load_sample_images()`` (``sklearn/datasets/images``).

The packages are installed without their dependencies (``pip install --no-deps``) and never imported:
their files are located through ``importlib.metadata``. Needs numpy and Pillow only.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ConfigError

__all__ = [
    "PHOTO_FILES",
    "NaturalImage",
    "center_crop",
    "imagenet_val",
    "load_natural_images",
    "package_file",
    "photos",
    "random_crop_box",
    "random_view",
]

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


@dataclass(frozen=True)
class NaturalImage:
    """One RGB image ``(H, W, 3)`` uint8, its source file and (for ImageNet images) its class index."""

    name: str
    source: str
    pixels: np.ndarray
    label: int | None = None


def package_file(dist: str, rel: str) -> Path:
    """The file ``rel`` of the installed distribution ``dist`` (a clear error naming the install)."""
    try:
        path = Path(str(md.distribution(dist).locate_file(rel)))
    except md.PackageNotFoundError:
        raise ConfigError(f"the offline images need the {dist} wheel's data files: {_INSTALL}") from None
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed {dist} wheel (reinstall: {_INSTALL})")
    return path


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def imagenet_val() -> list[NaturalImage]:
    """The 20 labelled ImageNet validation images of the foolbox wheel, in file order."""
    root = package_file("foolbox", "foolbox/data/imagenet_00_243.jpg").parent
    out = []
    for path in sorted(root.glob("imagenet_*.jpg")):
        m = re.fullmatch(r"imagenet_(\d+)_(\d+)\.jpg", path.name)
        if m:
            out.append(NaturalImage(path.stem, f"foolbox/data/{path.name}", _read_rgb(path), int(m.group(2))))
    if len(out) != 20:
        raise ConfigError(f"expected 20 ImageNet images in {root}, found {len(out)} (reinstall: {_INSTALL})")
    return out


def photos() -> list[NaturalImage]:
    """The unlabelled photographs of the scikit-image and scikit-learn wheels."""
    return [NaturalImage(Path(rel).stem, rel, _read_rgb(package_file(dist, rel))) for dist, rel in PHOTO_FILES]


def load_natural_images(which: str) -> list[NaturalImage]:
    """``imagenet_val`` or ``photos``."""
    loaders = {"imagenet_val": imagenet_val, "photos": photos}
    if which not in loaders:
        raise ConfigError(f"unknown image set {which!r} (known: {sorted(loaders)})")
    return loaders[which]()


def center_crop(pixels: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
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


def random_view(
    pixels: np.ndarray, rng: np.random.Generator, size: int = 224, scale: tuple[float, float] = (0.1, 1.0)
) -> np.ndarray:
    """A random crop (``scale`` of the area, aspect 3/4..4/3) resized to ``size``, flipped half the time."""
    h, w = pixels.shape[:2]
    box = random_crop_box(w, h, rng, scale)
    im = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR, box=box)
    a = np.asarray(im, dtype=np.uint8)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1))
