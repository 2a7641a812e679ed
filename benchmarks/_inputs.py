"""The evaluation set a bundle's manifest figures were measured on, for benchmarks that check against them."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bundle_images", "photo_eval_set"]


def bundle_images(bundle: Any) -> np.ndarray:
    """Real unlabelled inputs of the bundle's kind: the Fashion-MNIST test images for a grey bundle, the
    held-out photo views (the images of :func:`photo_eval_set`) for a colour one."""
    if bundle.manifest.input_shape[0] == 1:
        from splitserve.core.datasets import load_fashion_mnist

        return load_fashion_mnist("test")[0]
    from splitserve.models.natural import heldout_views

    return heldout_views(2)[0]


def photo_eval_set(bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    """A photo bundle's evaluation set: the held-out photos, each as its centre crop and 2 random views
    (``models.natural.heldout_views(2)``, as ``heldout_eval_data`` exports with), labelled with the
    bundle's fp32 whole model, so accuracy on it is agreement, as in the manifest."""
    import onnxruntime as ort

    from splitserve.models.natural import heldout_views

    images = heldout_views(2)[0]
    session = ort.InferenceSession(str(bundle.path(bundle.manifest.local.fp32)), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    labels = np.concatenate([session.run(None, {name: images[i : i + 32]})[0].argmax(1) for i in range(0, len(images), 32)])
    return images, labels
