"""Offline datasets, read with numpy only (no downloads, ever).

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, installed under
``/usr/share/datasets/fashion-mnist/`` as the original gzipped IDX files.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "load_fashion_mnist"]

FASHION_MNIST_DIR = Path(os.environ.get("SPLITSERVE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> NDArray[Any]:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "test", root: Path | None = None) -> tuple[NDArray[Any], NDArray[Any]]:
    """Images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64 of the ``train`` or ``test`` split.

    Raises:
        ConfigError: the dataset is not installed; the message says how to install it.
    """
    if split not in _FILES:
        raise ConfigError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    root = root or FASHION_MNIST_DIR
    images_file, labels_file = (root / name for name in _FILES[split])
    if not images_file.exists() or not labels_file.exists():
        raise ConfigError(
            f"Fashion-MNIST is not installed at {root}. Install it with:\n"
            "    sudo apt-get install -y dataset-fashion-mnist\n"
            "(or point SPLITSERVE_FASHION_MNIST_DIR at a folder holding the four .gz IDX files)"
        )
    images = _read_idx(images_file)[:, None, :, :]
    labels = _read_idx(labels_file).astype(np.int64)
    return images, labels
