"""Experiment: the natural recipe's stage3 split with an undistilled transform code (``results/natural_pca_only``).

The encoder is the principal components of training views' features (``NaturalCodec.init_pca``), the
decoder their inverse (no refinement blocks), the tail the teacher's own; only one density per level is
fitted to the latents. Build the bundle, then measure it like the recipe's::

    python -m splitserve.benchmarks.natural_pca_only /tmp/pcabundle
    splitserve bench natural --bundle /tmp/pcabundle --out results/natural_pca_only
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from splitserve.models import get_backbone
from splitserve.models.export import export_bundle
from splitserve.models.natural import (
    NATURAL_RECIPES,
    NaturalCodec,
    PhotoViews,
    fit_densities,
    heldout_eval_data,
    prepare_images,
    training_files,
)
from splitserve.models.split_model import SplitModel
from splitserve.models.zoo import cache_dir

__all__ = ["STEPS", "build"]

STEPS = (2.0, 1.4, 1.0, 0.7, 0.5, 0.35, 0.25)


def build(out: Path, views: int = 512, fit_iters: int = 600) -> Path:
    """Fit the transform code and its densities on ``views`` training views; export the bundle to ``out``."""
    base = NATURAL_RECIPES["efficientnet_lite0-natural"]
    cfg = dataclasses.replace(base.bottleneck, level_steps=STEPS)
    teacher = get_backbone(base.backbone)()
    files = prepare_images(training_files()[0], base.prepare_side, cache_dir() / "prepared")
    train = PhotoViews(files, base.crop, base.view_scale, seed=21)
    with torch.no_grad():
        f = torch.cat([teacher.forward_edge(torch.stack([train[i + j] for j in range(32)]), base.split)
                       for i in range(0, views, 32)])
    torch.manual_seed(0)
    model = SplitModel(teacher, base.split, cfg)
    model.codec = NaturalCodec(f.shape[1], cfg, refine_blocks=0)
    model.codec.init_pca(f[: views // 2], base.latent_scale)
    with torch.no_grad():
        y = model.codec.encoder(f)
    fit_densities(model.codec, range(len(STEPS)), y, fit_iters, seed=0)
    model.eval()
    model.codec.update(force=True)
    return export_bundle(out, teacher, {base.split: model}, heldout_eval_data(teacher, base), int8_weight_bits=8)


if __name__ == "__main__":  # pragma: no cover - an experiment's entry point
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "bundles/natural-pca-only")))
