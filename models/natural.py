"""EfficientNet-Lite0 split with a learned bottleneck, trained and exported on offline natural images.

Data (``splitserve.core.natural_images``), strictly disjoint:

* training: random crops (area 8-100%, flips) of the 19 photographs shipped in the scikit-image and
  scikit-learn wheels; int8 calibration uses the same training crops;
* evaluation: the 20 labelled ImageNet validation images of the foolbox wheel, never seen in training.

Training is head distillation then knowledge distillation, with a rate term (BottleFit / Entropic
Student, as ``models.train.train_split``), reshaped for a 2-core CPU budget of a few minutes:

1. the frozen teacher's features at the split are computed once per training crop;
2. head distillation on random feature patches: the bottleneck reconstructs the features and, through
   the frozen next stage, that stage's output (a cheap stand-in for the rest of the network);
3. a short knowledge distillation on whole crops: the decoder output goes through the frozen teacher
   tail, matched to the teacher's logits (the tail stays the teacher's; with 19 training photos,
   fine-tuning it would only overfit).

The bottleneck is a transform coder in ``BottleneckCodec``'s lifecycle (per-level steps and CompressAI
``EntropyBottleneck`` densities, exported as integer tables) with a patch transform suited to a few
minutes of training: the encoder is space-to-depth + a 1x1 convolution (a learned linear transform of each
``stride x stride`` patch of the features, initialised with their principal components, so training
starts from the best linear code instead of from noise); the decoder inverts it and adds a residual 3x3
refinement (zero-initialised). The features here are signed (EfficientNet's stage outputs are linear),
so nothing clips the reconstruction. Everything trained is cached under ``cache_dir()``, never committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from splitserve.core.bundle import Bundle
from splitserve.core.errors import SplitServeError
from splitserve.core.natural_images import center_crop, imagenet_val, photos, random_view
from torch import nn
from tqdm.auto import tqdm

from ._config import BottleneckCfg
from ._registry import get_backbone
from ._split import SplitBackbone
from .bottleneck import BottleneckCodec
from .export import EvalData, export_bundle
from .split_model import SplitModel
from .train import seed_everything
from .zoo import cache_dir

__all__ = [
    "NATURAL_RECIPES",
    "NaturalRecipe",
    "build_natural_bundle",
    "eval_views",
    "train_views",
    "trained_natural_split",
]

_CDF_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length")


@dataclass(frozen=True)
class NaturalRecipe:
    """Everything that determines the trained split (hashed into its cache key)."""

    backbone: str = "efficientnet_lite0"
    split: str = "stage2"
    bottleneck: BottleneckCfg = field(
        default_factory=lambda: BottleneckCfg(latent_chs=64, hidden_chs=48, stride=4, level_steps=(1.0, 3.0, 8.0, 16.0))
    )
    latent_scale: float = 4.0
    train_views: int = 384
    view_scale: tuple[float, float] = (0.08, 1.0)
    hd_steps: int = 150
    hd_batch: int = 16
    patch: int = 32
    kd_steps: int = 24
    kd_batch: int = 8
    kd_patch: int = 40
    kd_temperature: float = 2.0
    rate_weight: float = 0.02  # loss per KiB per image
    eval_views_per_image: int = 15
    export_views_per_image: int = 4
    calib_size: int = 64
    seed: int = 0
    code_version: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]


NATURAL_RECIPES: dict[str, NaturalRecipe] = {"efficientnet_lite0-natural": NaturalRecipe()}


def train_views(recipe: NaturalRecipe) -> np.ndarray:
    """``(train_views, 3, 224, 224)`` uint8 random crops of the training photographs (seeded)."""
    rng = np.random.default_rng(recipe.seed)
    ims = photos()
    return np.stack([random_view(ims[i % len(ims)].pixels, rng, scale=recipe.view_scale) for i in range(recipe.train_views)])


def eval_views(views_per_image: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out ImageNet images: per image its centre crop then ``views_per_image`` random crops/flips.

    Returns ``(images, labels, image_index)``; views of one image are correlated, ``image_index`` says
    which image each view comes from.
    """
    rng = np.random.default_rng(seed)
    images, labels, index = [], [], []
    for i, im in enumerate(imagenet_val()):
        images.append(center_crop(im.pixels))
        images += [random_view(im.pixels, rng, scale=(0.25, 1.0)) for _ in range(views_per_image)]
        labels += [im.label] * (views_per_image + 1)
        index += [i] * (views_per_image + 1)
    return np.stack(images), np.array(labels, dtype=np.int64), np.array(index, dtype=np.int64)


class _Refine(nn.Module):
    """``x + conv(relu(conv(x)))``, the second convolution zero-initialised (starts as the identity)."""

    def __init__(self, chs: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(chs, hidden, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, chs, 3, 1, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PatchTransformCodec(BottleneckCodec):
    """``BottleneckCodec`` with a linear patch transform: space-to-depth + 1x1 conv, and its inverse + refinement."""

    def __init__(self, feature_chs: int, cfg: BottleneckCfg) -> None:
        super().__init__(feature_chs, cfg)
        s, d = cfg.stride, feature_chs * cfg.stride**2
        self.encoder = nn.Sequential(nn.PixelUnshuffle(s), nn.Conv2d(d, cfg.latent_chs, 1))
        self.decoder = nn.Sequential(nn.Conv2d(cfg.latent_chs, d, 1), nn.PixelShuffle(s), _Refine(feature_chs, cfg.hidden_chs))

    @torch.no_grad()
    def init_pca(self, feats: torch.Tensor, scale: float) -> None:
        """Principal components of the feature patches; latent units are ``scale`` feature units."""
        s = self.cfg.stride
        patches = F.pixel_unshuffle(feats, s).permute(0, 2, 3, 1).reshape(-1, feats.shape[1] * s * s)
        mean = patches.mean(0)
        _, _, v = torch.linalg.svd(patches - mean, full_matrices=False)
        w = v[: self.cfg.latent_chs]  # (latent, d), orthonormal rows
        enc, dec = self.encoder[1], self.decoder[0]
        enc.weight.copy_((w / scale)[:, :, None, None])
        enc.bias.copy_(-(w @ mean) / scale)
        dec.weight.copy_((w.T * scale)[:, :, None, None])
        dec.bias.copy_(mean)


def _split_model(teacher: SplitBackbone, split: str, cfg: BottleneckCfg) -> SplitModel:
    model = SplitModel(teacher, split, cfg)
    model.codec = PatchTransformCodec(teacher.cfg.split_point(split).num_chs, cfg)
    for p in model.tail.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def _features(teacher: SplitBackbone, split: str, x: np.ndarray, batch: int = 32) -> torch.Tensor:
    out = [teacher.forward_edge(torch.from_numpy(x[i : i + batch]), split).half() for i in range(0, len(x), batch)]
    return torch.cat(out)


def _train(recipe: NaturalRecipe, teacher: SplitBackbone, views: np.ndarray) -> SplitModel:
    gen = seed_everything(recipe.seed)
    split, cfg = recipe.split, recipe.bottleneck
    model = _split_model(teacher, split, cfg)
    next_stage = teacher.cloud_modules(split)[0]
    feats = _features(teacher, split, views)
    full = feats.shape[-1]
    model.codec.init_pca(feats[:: max(1, len(feats) // 128)].float(), recipe.latent_scale)
    named = list(model.codec.named_parameters())
    aux_params = [p for n, p in named if n.endswith(".quantiles")]
    density = [p for n, p in named if n.startswith("entropy.") and not n.endswith(".quantiles")]
    codec = [p for n, p in named if not n.startswith("entropy.")]
    aux_opt = torch.optim.Adam(aux_params, lr=1e-2)
    # Distortions are relative to the signal's variance (these features are far from unit scale).
    with torch.no_grad():
        sample = feats[torch.randperm(len(feats), generator=gen)[:64]].float()
        var_f, var_g = sample.var().item(), next_stage(sample).var().item()

    def step(opt: torch.optim.Optimizer, sched, distortion: torch.Tensor, bits: torch.Tensor) -> None:
        loss = distortion + recipe.rate_weight * bits / 8192
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.codec.aux_loss().backward()
        aux_opt.step()

    # Head distillation on feature patches.
    opt = torch.optim.Adam([{"params": codec, "lr": 5e-4}, {"params": density, "lr": 1e-2}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.hd_steps)
    model.train()
    bar = tqdm(total=recipe.hd_steps + recipe.kd_steps, desc=f"{recipe.backbone}/{split}", unit="step")
    p, s = recipe.patch, cfg.stride
    def crops(batch: int, size: int) -> torch.Tensor:
        """``batch`` random feature maps, each cut to a random ``size`` square on the latent grid."""
        idx = torch.randint(0, len(feats), (batch,), generator=gen)
        y0, x0 = (int(v) * s for v in torch.randint(0, (full - size) // s + 1, (2,), generator=gen))
        return feats[idx, :, y0 : y0 + size, x0 : x0 + size].float()

    for _ in range(recipe.hd_steps):
        f = crops(recipe.hd_batch, p)
        level = int(torch.randint(0, model.codec.num_levels, (1,), generator=gen))
        out = model.codec(f, level)
        with torch.no_grad():
            g = next_stage(f)
        distortion = F.mse_loss(out["y_hat"], f) / var_f + F.mse_loss(next_stage(out["y_hat"]), g) / var_g
        bits = -torch.log2(out["likelihoods"]).sum() / len(f) * (full / p) ** 2
        step(opt, sched, distortion, bits)
        bar.update()
        bar.set_postfix(stage="hd", mse=f"{distortion.item():.3f}", kib=f"{bits.item() / 8192:.2f}", level=level)

    # Knowledge distillation on whole crops through the frozen teacher tail.
    opt = torch.optim.Adam([{"params": codec, "lr": 2e-4}, {"params": density, "lr": 2e-3}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(recipe.kd_steps, 1))
    t, kp = recipe.kd_temperature, recipe.kd_patch
    for _ in range(recipe.kd_steps):
        f = crops(recipe.kd_batch, kp)
        level = int(torch.randint(0, model.codec.num_levels, (1,), generator=gen))
        out = model.codec(f, level)
        with torch.no_grad():
            target = F.softmax(teacher.forward_cloud(f, split) / t, 1)
        kd = F.kl_div(F.log_softmax(teacher.forward_cloud(out["y_hat"], split) / t, 1), target, reduction="batchmean")
        bits = -torch.log2(out["likelihoods"]).sum() / len(f) * (full / kp) ** 2
        step(opt, sched, kd * t * t, bits)
        bar.update()
        bar.set_postfix(stage="kd", kd=f"{kd.item():.3f}", kib=f"{bits.item() / 8192:.2f}", level=level)
    bar.close()
    model.eval()
    model.codec.update(force=True)
    return model


def trained_natural_split(recipe: NaturalRecipe, teacher: SplitBackbone | None = None) -> SplitModel:
    """The recipe's split model, trained (or loaded from the cache), CDFs updated."""
    teacher = teacher if teacher is not None else get_backbone(recipe.backbone)()
    path = cache_dir() / f"{recipe.backbone}-{recipe.split}-natural-{recipe.key()}.pt"
    if path.exists():
        model = _split_model(teacher, recipe.split, recipe.bottleneck)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith(_CDF_BUFFERS) for k in missing):
            raise RuntimeError(f"cached split model {path} does not fit the recipe: delete it to retrain")
        model.eval()
        model.codec.update(force=True)
        return model
    model = _train(recipe, teacher, train_views(recipe))
    tmp = path.with_suffix(".tmp")
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith(_CDF_BUFFERS)}, tmp)
    tmp.replace(path)
    return model


def build_natural_bundle(name: str = "efficientnet_lite0-natural", *, force: bool = False) -> Path:
    """Train what is missing and export the bundle (cached); manifest figures on held-out views."""
    recipe = NATURAL_RECIPES[name]
    out_dir = cache_dir() / "bundles" / f"{name}-{recipe.key()}"
    if out_dir.exists() and not force:
        try:
            Bundle.open(out_dir).close()
            return out_dir
        except (SplitServeError, OSError, ValueError):  # a stale or damaged bundle is rebuilt
            pass
    teacher = get_backbone(recipe.backbone)()
    model = trained_natural_split(recipe, teacher)
    calib = train_views(recipe)[: recipe.calib_size]
    images, labels, _ = eval_views(recipe.export_views_per_image)
    data = EvalData(
        calib=calib, images=images, labels=labels,
        name=f"foolbox ImageNet val: 20 images x (centre crop + {recipe.export_views_per_image} random crops)",
    )
    return export_bundle(out_dir, teacher, {recipe.split: model}, data)

