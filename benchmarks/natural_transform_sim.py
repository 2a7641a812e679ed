"""Experiment: how many linear components a split needs, and what the Fisher metric buys (``results/natural_transform_sim.json``).

A simulation on real features, no bundle: Lite0's features at a split for ``views`` training views and
for the held-out photos (centre crop + 4 views), a linear transform code fitted on the training views
(plain PCA, or PCA in the metric of the tail's Fisher information: ``models.natural.fisher_basis``),
its latent rounded with a uniform step, the rate estimated from each channel's histogram of the training
latents (add-half smoothing), the features rebuilt and run through the teacher's own tail. Agreement =
top-1 equal to the unsplit model. Run as::

    python -m splitserve.benchmarks.natural_transform_sim results/natural_transform_sim.json

(about 3 minutes on 2 cores; the corpus must be built: ``splitserve data photos``.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from splitserve.models import get_backbone
from splitserve.models.natural import (
    NATURAL_RECIPES,
    PhotoViews,
    feature_patches,
    fisher_basis,
    heldout_views,
    prepare_images,
    training_files,
)
from splitserve.models.zoo import cache_dir

__all__ = ["run"]

CASES = (  # (split, patch stride, components, steps in latent units: plain PCA, Fisher)
    ("stage3", 2, (48, 56, 64, 96), ((6.0, 10.0, 16.0), (14.0, 20.0, 28.0))),
    ("stage2", 4, (96, 160, 256), ((8.0, 16.0), (10.0, 20.0, 30.0))),
)


def _patches(f: torch.Tensor, s: int) -> torch.Tensor:
    return feature_patches(f, s).double()


def _features(teacher: Any, split: str, images: torch.Tensor, grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features at ``split`` and (with ``grads``) the gradient of the log-likelihood of a sampled answer."""
    feats, gs = [], []
    gen = torch.Generator().manual_seed(0)
    for i in range(0, len(images), 32):
        with torch.no_grad():
            f = teacher.forward_edge(images[i : i + 32], split)
        if grads:
            f.requires_grad_(True)
            log_p = F.log_softmax(teacher.forward_cloud(f, split), 1)
            answer = torch.multinomial(log_p.detach().exp(), 1, generator=gen)
            (g,) = torch.autograd.grad(log_p.gather(1, answer).sum(), f)
            gs.append(g)
        feats.append(f.detach())
    return torch.cat(feats), (torch.cat(gs) if grads else None)


def _codes(f: torch.Tensor, g: torch.Tensor, s: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Encoder rows and decoder columns (all components, best first) and the mean, per metric."""
    p = _patches(f, s)
    mean = p.mean(0)
    _, v = torch.linalg.eigh(torch.cov((p - mean).T))
    v = v.flip(1)
    return {"pca": (v.T, v, mean), "fisher": fisher_basis(f, g, s, 0.01)}


def run(out: Path, views: int = 768) -> dict[str, Any]:
    """Simulate every case; write and return the JSON report."""
    torch.set_num_threads(os.cpu_count() or 1)
    recipe = NATURAL_RECIPES["efficientnet_lite0-natural"]
    teacher = get_backbone(recipe.backbone)().eval()
    files = prepare_images(training_files()[0], recipe.prepare_side, cache_dir() / "prepared")
    train_views = PhotoViews(files, recipe.crop, recipe.view_scale, seed=21)
    train = torch.stack([train_views[i] for i in range(views)])
    held, _, _, centre_np = heldout_views(4)
    held_t, centre = torch.from_numpy(held), torch.from_numpy(centre_np)
    rows = []
    for split, s, components, (pca_steps, fisher_steps) in CASES:
        t0 = time.monotonic()
        f_tr, g_tr = _features(teacher, split, train, grads=True)
        f_ho, _ = _features(teacher, split, held_t, grads=False)
        with torch.no_grad():
            top = torch.cat([teacher.forward_cloud(f_ho[i : i + 64], split).argmax(1) for i in range(0, len(f_ho), 64)])
        n, c, h = len(f_ho), f_ho.shape[1], f_ho.shape[2]
        for metric, (enc, dec, mean) in _codes(f_tr, g_tr, s).items():
            for k in components:
                e, d = enc[:k].float(), dec[:, :k].float()
                y_tr, y_ho = (_patches(f_tr, s).float() - mean.float()) @ e.T, (_patches(f_ho, s).float() - mean.float()) @ e.T
                for step in (None, *(pca_steps if metric == "pca" else fisher_steps)):
                    q, kb = y_ho, None
                    if step is not None:
                        q_tr, q = torch.round(y_tr / step), torch.round(y_ho / step)
                        bits = torch.zeros(len(q))
                        for j in range(k):
                            lo = int(min(q_tr[:, j].min(), q[:, j].min()))
                            hi = int(max(q_tr[:, j].max(), q[:, j].max()))
                            counts = torch.bincount((q_tr[:, j] - lo).long(), minlength=hi - lo + 1).double() + 0.5
                            bits += -torch.log2((counts / counts.sum())[(q[:, j] - lo).long()]).float()
                        kb = float(bits.reshape(n, -1).sum(1)[centre].mean() / 8)
                        q = q * step
                    rebuilt = F.pixel_shuffle((q @ d.T + mean.float()).reshape(n, h // s, h // s, c * s * s).permute(0, 3, 1, 2), s)
                    with torch.no_grad():
                        got = torch.cat([teacher.forward_cloud(rebuilt[i : i + 64], split).argmax(1) for i in range(0, n, 64)])
                    agree = got == top
                    rows.append({"split": split, "stride": s, "metric": metric, "components": k, "step": step,
                                 "bytes_centre": kb, "agreement_centre": round(float(agree[centre].float().mean()), 4),
                                 "agreement_views": round(float(agree[~centre].float().mean()), 4)})
        print(f"{split}: {time.monotonic() - t0:.0f} s", flush=True)
    report = {"command": f"python -m splitserve.benchmarks.natural_transform_sim {out}", "views": views,
              "heldout": {"centre": int(centre.sum()), "views": int((~centre).sum())}, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":  # pragma: no cover - an experiment's entry point
    for row in run(Path(sys.argv[1] if len(sys.argv) > 1 else "results/natural_transform_sim.json"))["rows"]:
        print(row)
