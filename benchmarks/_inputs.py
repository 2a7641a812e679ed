"""The evaluation set a bundle's manifest figures were measured on, for benchmarks that check against them."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["photo_eval_set"]


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
