"""Bottlenecks for ImageNet-class classifiers, fitted or distilled on unlabelled photographs read from disk.

Two ways to make the codec, chosen by ``NaturalRecipe.fit``:

``"fisher"`` (the Lite0 recipe): a linear transform code fitted in one pass, no training loop
(:func:`fit_fisher`). The encoder keeps the principal components of the cut's features in the metric
of the tail's Fisher information (what the tail's answer is sensitive to, estimated from gradients of
the teacher's log-likelihood of its own sampled answers: no labels), one density per quantization step
is fitted to the latents, and the teacher's tail is used unchanged. On the held-out photos this agrees
13 points more often than the distilled codec at the same bytes (82.6% against 69.6% at 2.1 KB):
distilling on 287 photos over-fits them (``results/README.md``).

``"distill"`` (user models from ``splitserve export --model``, and the recipe
``efficientnet_lite0-natural-distilled``): the teacher (the unsplit classifier) stays frozen; the student is the teacher with a learned bottleneck
in the cut and its own copy of the first ``tune_tail_stages`` stages after it, trained to give the
teacher's answers (knowledge distillation, no labels) while its latent costs few bits (a rate term).
One loop, as BottleFit / Entropic Student (Matsubara et al.) but shaped for a CPU budget of about two
hours::

    photo -> random view (crop 25-100% area, flip, colour jitter, CutMix) -> teacher head -> f (frozen)
          -> encoder -> y -> /step_l -> EntropyBottleneck_l -> y~ * step_l -> decoder -> f^
          -> tuned first tail stage -> teacher's other tail stages (frozen) -> student logits
    loss = T^2 KL(teacher || student) + w_f(t) |f^ - f|^2 / var(f) + lambda * KiB(level 0)

* head distillation is the feature term, weighted 1 at the start and decayed to ``feature_weight_end``
  over ``feature_decay_steps`` (cosine): it starts the decoder on a reconstruction, then the logits
  take over (with the term at full weight for the whole run, a first run's codec kept spending bits
  on reconstructing features the tail does not need: 69% batch agreement at 2.5 KiB after 560 steps);
* ``lambda`` is a Lagrange multiplier, not a free weight: it rises while the rate of the reference
  level is above ``target_kib`` and falls below it, so the recipe states the bytes it wants;
* every level shares encoder and decoder and owns a quantization step and a density, so the device
  changes level without reloading anything.

Data: the training split of the photo corpus (``splitserve.core.photo_corpus``), or any folder of
images (``image_files``), resized once to a short side of ``prepare_side`` pixels in the cache and read
by a ``DataLoader``. Views are a pure function of ``(seed, step, index)``, so a resumed run sees the
same views as an uninterrupted one. A run writes a checkpoint every ``checkpoint_every`` steps and a
JSON line of figures per ``log_every`` steps beside it; :func:`distill` resumes from the last checkpoint,
on the same or another machine: it trains on a CUDA GPU where one is present (bf16 autocast, more
loader workers) and on the CPU otherwise, and ``run.json`` records each session's machine.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps
from torch import nn
from tqdm.auto import tqdm

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ConfigError, SplitServeError
from splitserve.core.natural_images import PHOTO_FILES, center_crop, package_file, random_crop_box
from splitserve.core.photo_corpus import load_corpus

from ._config import BottleneckCfg
from ._registry import get_backbone
from ._split import SplitBackbone
from .bottleneck import BottleneckCodec
from .export import EvalData, export_bundle, export_key
from .split_model import SplitModel
from .train import bf16_native
from .zoo import cache_dir

__all__ = [
    "NATURAL_RECIPES",
    "NaturalCodec",
    "NaturalRecipe",
    "PhotoViews",
    "add_levels",
    "build_natural_bundle",
    "commit_weights",
    "committed_weights",
    "distill",
    "feature_patches",
    "fisher_basis",
    "fit_densities",
    "fit_fisher",
    "heldout_eval_data",
    "heldout_views",
    "image_files",
    "prepare_images",
    "trained_natural_split",
    "training_files",
]

_CDF_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class NaturalRecipe:
    """Everything that determines a trained split (hashed, with the training images, into its cache key)."""

    backbone: str = "efficientnet_lite0"
    split: str = "stage3"
    bottleneck: BottleneckCfg = field(
        default_factory=lambda: BottleneckCfg(latent_chs=56, hidden_chs=96, stride=2, level_steps=(1.0, 0.7, 1.4, 2.0))
    )
    refine_blocks: int = 2
    latent_scale: float = 4.0
    steps: int = 4500
    batch: int = 16
    crop: int = 224
    view_scale: tuple[float, float] = (0.25, 1.0)
    cutmix: float = 0.25
    lr: float = 1e-3
    density_lr: float = 1e-2
    kd_temperature: float = 1.0
    feature_weight_end: float = 0.05
    feature_decay_steps: int = 1000
    tune_tail_stages: int = 1
    tail_lr: float = 1e-4
    target_kib: float = 2.0  # rate of level 0 that the multiplier steers to
    multiplier_lr: float = 0.02
    warmup_steps: int = 100
    prepare_side: int = 512
    checkpoint_every: int = 25
    log_every: int = 5
    seed: int = 0
    code_version: int = 2
    # Finer steps whose densities are fitted after training on the trained encoder's latents (the
    # decoder sees less quantization noise than it was trained on): the curve's high-rate end.
    extra_level_steps: tuple[float, ...] = (0.5, 0.35, 0.25)
    extra_level_views: int = 256
    extra_level_iters: int = 400
    fit: str = "distill"  # "distill" (train by KD, :func:`distill`) or "fisher" (fit, :func:`fit_fisher`)
    fit_views: int = 768  # fisher: training views whose features and tail gradients are fitted
    fisher_eps: float = 0.01  # fisher: ridge added to the metric, as a fraction of its mean diagonal

    def key(self, data_digest: str) -> str:
        """Names everything the trained split depends on (the final weights, the bundle)."""
        blob = json.dumps({**dataclasses.asdict(self), "data": data_digest}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def train_key(self, data_digest: str) -> str:
        """Names what the distillation run sees (its checkpoints): everything but the levels fitted after it."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _AFTER_TRAINING}
        blob = json.dumps({**fields, "data": data_digest}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def all_levels(self) -> BottleneckCfg:
        """The bottleneck with its trained levels followed by the levels fitted after training."""
        return dataclasses.replace(self.bottleneck, level_steps=self.bottleneck.level_steps + self.extra_level_steps)


_AFTER_TRAINING = ("extra_level_steps", "extra_level_views", "extra_level_iters")


NATURAL_RECIPES: dict[str, NaturalRecipe] = {
    # 57 components: the stage3 head is 29.53% of Lite0's MACs and each component of the encoder 0.008%.
    # One latent unit is 20 units of the Fisher-whitened patch (steps 7-40 there, swept on training views).
    "efficientnet_lite0-natural": NaturalRecipe(
        fit="fisher", refine_blocks=0, tune_tail_stages=0, latent_scale=20.0, extra_level_steps=(),
        bottleneck=BottleneckCfg(latent_chs=57, hidden_chs=96, stride=2, level_steps=(1.0, 0.7, 1.4, 2.0, 0.5, 0.35)),
    ),
    "efficientnet_lite0-natural-distilled": NaturalRecipe(),
}


# --- images ----------------------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    """Every readable image under ``folder`` (recursively); a clear error when there is none.

    Raises:
        ConfigError: no such folder, or no file in it decodes as an image (the skipped count is given).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist")
    good, skipped = [], 0
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            with Image.open(p) as im:
                im.verify()
            good.append(p)
        except Exception:  # noqa: BLE001 - any decoder failure means "not an image"
            skipped += 1
    if not good:
        raise ConfigError(f"no readable image in {folder} ({skipped} files skipped: not images or corrupt)")
    return good


def prepare_images(files: Sequence[Path], side: int, out: Path) -> list[Path]:
    """Each image resized (once, cached) so its short side is at most ``side``: JPEG q95, EXIF applied."""
    out.mkdir(parents=True, exist_ok=True)
    prepared = []
    for f in files:
        digest = hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16]
        dst = out / f"{digest}-{side}.jpg"
        if not dst.exists():
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                scale = side / min(im.size)
                if scale < 1:
                    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
                tmp = dst.with_suffix(".tmp")
                im.save(tmp, format="JPEG", quality=95)
                tmp.replace(dst)
        prepared.append(dst)
    return prepared


def _view(im: Image.Image, rng: np.random.Generator, size: int, scale: tuple[float, float]) -> np.ndarray:
    """Random resized crop (area ``scale``, aspect 3/4..4/3), flip, colour jitter: ``(3, size, size)`` uint8."""
    v = im.resize((size, size), Image.Resampling.BILINEAR, box=random_crop_box(*im.size, rng, scale))
    if rng.random() < 0.5:
        v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        v = enhance(v).enhance(float(rng.uniform(0.7, 1.3)))
    return np.ascontiguousarray(np.asarray(v, dtype=np.uint8).transpose(2, 0, 1))


class PhotoViews(torch.utils.data.Dataset):
    """View ``i`` of an endless stream: photo and augmentation drawn from ``(seed, i)`` alone."""

    def __init__(self, files: Sequence[Path], size: int, scale: tuple[float, float], seed: int) -> None:
        self.files, self.size, self.scale, self.seed = list(files), size, scale, seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, i])
        with Image.open(self.files[int(rng.integers(len(self.files)))]) as im:
            return torch.from_numpy(_view(im.convert("RGB"), rng, self.size, self.scale))


class _From(torch.utils.data.Sampler[int]):
    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _cutmix(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """With probability ``p`` per image, paste a random box of the next image of the batch into it."""
    n, _, h, w = x.shape
    out = x.clone()
    for i in range(n):
        if float(torch.rand((), generator=gen)) >= p:
            continue
        frac = float(torch.empty(()).uniform_(0.2, 0.6, generator=gen))
        bh, bw = int(h * math.sqrt(frac)), int(w * math.sqrt(frac))
        y0, x0 = int(torch.randint(0, h - bh + 1, (), generator=gen)), int(torch.randint(0, w - bw + 1, (), generator=gen))
        out[i, :, y0 : y0 + bh, x0 : x0 + bw] = x[(i + 1) % n, :, y0 : y0 + bh, x0 : x0 + bw]
    return out


# --- the codec -------------------------------------------------------------------------------------------


class _Refine(nn.Module):
    """``x + conv(relu(conv(x)))``, the second convolution zero-initialised (starts as the identity)."""

    def __init__(self, chs: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(chs, hidden, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, chs, 3, 1, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def feature_patches(t: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``stride x stride`` patch of ``t`` (N, C, H, W) as a row of ``C * stride**2`` values."""
    return F.pixel_unshuffle(t, stride).permute(0, 2, 3, 1).reshape(-1, t.shape[1] * stride * stride)


def fisher_basis(
    feats: torch.Tensor, grads: torch.Tensor, stride: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The patches' principal axes in the metric of the tail's Fisher information, best first (float64).

    Returns ``(rows, cols, mean)``: ``y = rows @ (p - mean)`` codes a patch ``p``, ``cols @ y + mean``
    rebuilds it (see :meth:`NaturalCodec.init_fisher`).
    """
    p, gp = feature_patches(feats, stride).double(), feature_patches(grads, stride).double()
    mean = p.mean(0)
    fisher = gp.T @ gp
    fisher = fisher / fisher.diagonal().mean() + eps * torch.eye(len(fisher), dtype=fisher.dtype)
    e, u = torch.linalg.eigh(fisher)
    root, inv_root = (u * e.sqrt()) @ u.T, (u / e.sqrt()) @ u.T
    _, v = torch.linalg.eigh(root @ torch.cov((p - mean).T) @ root)
    v = v.flip(1)  # largest first
    return v.T @ root, inv_root @ v, mean


class NaturalCodec(BottleneckCodec):
    """A linear patch transform on the device, its inverse plus residual refinement in the cloud.

    The encoder is space-to-depth + one 1x1 convolution: a learned linear map of each ``stride x stride``
    patch of the features, initialised with their principal components (:meth:`init_pca`), so training
    starts from the best linear code rather than from noise (a fresh conv+BN+ReLU encoder at stage2
    stayed near the mean reconstruction for the first hundred steps). With ``latent_chs`` equal to the
    patch size the map is a rotation onto the principal axes (transform coding: nothing is projected
    away, the quantization steps and the learned densities decide what costs bits); with fewer
    channels it also projects. Measured here on Lite0's stage3 (head 29.5% of the MACs, leaving 0.5%
    for the encoder: at most about 60 output channels), unquantized, before training: 2x2 patches to
    48 / 64 / 96 components 79 / 83 / 88% agreement, stage2 4x4 patches to 48 / 160 components 60 /
    81%. At stride 2 the map also decorrelates neighbouring positions, which a low rate needs: all 40
    channels at stride 1 (a rotation, nothing projected away) agreed on 78-100% of training views at
    13 KiB, but when the multiplier brought the rate to 3.7 KiB within 100 steps (0.9 bits per symbol
    over 31k symbols) agreement fell to 22-56%; 56 components at stride 2 (11k symbols) held 44-75% at
    1.1-2.5 KiB. The decoder inverts the map and adds ``refine_blocks`` zero-initialised residual 3x3
    blocks; it ends unclipped, as EfficientNet's stage outputs are signed.
    """

    def __init__(self, feature_chs: int, cfg: BottleneckCfg, refine_blocks: int) -> None:
        super().__init__(feature_chs, cfg)
        s, d = cfg.stride, feature_chs * cfg.stride**2
        self.encoder = nn.Sequential(nn.PixelUnshuffle(s), nn.Conv2d(d, cfg.latent_chs, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.latent_chs, d, 1), nn.PixelShuffle(s),
            *(_Refine(feature_chs, cfg.hidden_chs) for _ in range(refine_blocks)),
        )

    @torch.no_grad()
    def init_pca(self, feats: torch.Tensor, scale: float) -> None:
        """Principal components of the feature patches; one latent unit is ``scale`` feature units."""
        patches = feature_patches(feats, self.cfg.stride)
        mean = patches.mean(0)
        _, _, v = torch.linalg.svd(patches - mean, full_matrices=False)
        w = v[: self.cfg.latent_chs]  # (latent, d), orthonormal rows
        enc, dec = self.encoder[1], self.decoder[0]
        enc.weight.copy_((w / scale)[:, :, None, None])
        enc.bias.copy_(-(w @ mean) / scale)
        dec.weight.copy_((w.T * scale)[:, :, None, None])
        dec.bias.copy_(mean)

    @torch.no_grad()
    def init_fisher(self, feats: torch.Tensor, grads: torch.Tensor, scale: float, eps: float) -> None:
        """Principal components of the feature patches in the metric of the tail's Fisher information.

        ``grads`` are gradients of the tail's log-likelihood (of answers sampled from its own output)
        with respect to ``feats``; their patch covariance ``G`` is the Fisher information, a local
        measure of how much a change of the features moves the answer. With ``M = (G/mean diag + eps)^(1/2)``
        the code keeps the top eigenvectors ``V`` of ``M C M`` (``C`` the features' covariance):
        ``y = V^T M (p - mean) / scale``, ``p^ = M^-1 V y scale + mean``. A uniform quantization step
        on ``y`` then spreads the error evenly in that metric, which is what the tail notices. Measured
        on held-out photos, unquantized: 56 / 64 components agree 83 / 87% against plain PCA's 77 / 80%.
        """
        k = self.cfg.latent_chs
        rows, cols, mean = fisher_basis(feats, grads, self.cfg.stride, eps)
        enc_w, dec_w = rows[:k] / scale, cols[:, :k] * scale
        enc, dec = self.encoder[1], self.decoder[0]
        enc.weight.copy_(enc_w[:, :, None, None].float())
        enc.bias.copy_(-(enc_w @ mean).float())
        dec.weight.copy_(dec_w[:, :, None, None].float())
        dec.bias.copy_(mean.float())


def _split_model(teacher: SplitBackbone, recipe: NaturalRecipe, *, extra_levels: bool = False) -> SplitModel:
    cfg = recipe.all_levels() if extra_levels else recipe.bottleneck
    model = SplitModel(teacher, recipe.split, cfg)
    chs = teacher.cfg.split_point(recipe.split).num_chs
    model.codec = NaturalCodec(chs, cfg, recipe.refine_blocks)
    cloud = teacher.cloud_modules(recipe.split)  # the teacher's own modules, frozen ...
    tuned = [copy.deepcopy(m) for m in cloud[: recipe.tune_tail_stages]]  # ... but for tuned copies
    for p in nn.Sequential(*tuned).parameters():
        p.requires_grad_(True)
    model.tail = nn.Sequential(*tuned, *cloud[recipe.tune_tail_stages :])
    return model


def _trained(model: SplitModel, recipe: NaturalRecipe) -> nn.ModuleDict:
    """What training changes: the codec and the tuned first stages of the tail."""
    return nn.ModuleDict({"codec": model.codec, "tail": nn.Sequential(*list(model.tail)[: recipe.tune_tail_stages])})


# --- training --------------------------------------------------------------------------------------------


def _save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def distill(
    teacher: SplitBackbone,
    recipe: NaturalRecipe,
    files: Sequence[Path],
    run_dir: Path,
    *,
    steps: int | None = None,
    progress: bool = True,
) -> SplitModel:
    """Train the recipe's bottleneck on views of ``files``; resumes from ``run_dir/checkpoint.pt``.

    ``steps`` stops early (the run stays resumable); the returned model has its CDFs updated.
    Progress goes to ``run_dir/progress.jsonl`` (one JSON object per ``log_every`` steps).

    Longer than the house's ~80 lines on purpose: one resumable loop whose model, optimizer, schedule,
    data stream and checkpoint every step shares; split apart, each part would take most of them as arguments.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "progress.jsonl"
    torch.manual_seed(recipe.seed)
    model = _split_model(teacher, recipe).to(device)  # the teacher is a submodule: it moves too
    codec = model.codec
    named = list(codec.named_parameters())
    aux = [p for n, p in named if n.endswith(".quantiles")]
    density = [p for n, p in named if n.startswith("entropy.") and not n.endswith(".quantiles")]
    net = [p for n, p in named if not n.startswith("entropy.")]
    tail = [p for p in model.tail.parameters() if p.requires_grad]
    opt = torch.optim.Adam([{"params": net, "lr": recipe.lr}, {"params": density, "lr": recipe.density_lr},
                            {"params": tail, "lr": recipe.tail_lr}])
    aux_opt = torch.optim.Adam(aux, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_warmup_cosine, warmup=recipe.warmup_steps, total=recipe.steps))
    start, log_multiplier, var_f = 0, math.log(0.1), None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _trained(model, recipe).load_state_dict(state["trained"])
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        sched.load_state_dict(state["sched"])
        start, log_multiplier, var_f = state["step"], state["log_multiplier"], state["var_f"]
    stop = recipe.steps if steps is None else min(recipe.steps, steps)
    autocast = device.type == "cuda" or bf16_native()
    _record_session(run_dir / "run.json", recipe, start, autocast, device)
    loader = torch.utils.data.DataLoader(
        PhotoViews(prepare_images(files, recipe.prepare_side, cache_dir() / "prepared"), recipe.crop,
                   recipe.view_scale, recipe.seed),
        batch_size=recipe.batch, sampler=_From(start * recipe.batch, stop * recipe.batch),
        num_workers=1 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1)),
        prefetch_factor=4, persistent_workers=False, pin_memory=device.type == "cuda",
    )
    bar = tqdm(total=recipe.steps, initial=start, desc=f"distil {recipe.backbone}/{recipe.split}", unit="step",
               disable=not progress)
    model.eval()  # the tail's batch norms keep the teacher's statistics, tuned or not
    codec.train()
    t, level_count = recipe.kd_temperature, codec.num_levels
    t0, window = time.monotonic(), []
    step = start
    for x in loader:
        torch.manual_seed(recipe.seed * 1_000_003 + step)  # the densities' training noise, per step
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        x = _cutmix(x, gen, recipe.cutmix).to(device, non_blocking=True)
        level = step % level_count
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            f = teacher.forward_edge(x, recipe.split).float()
            target = teacher.forward_cloud(f, recipe.split).float()
        if var_f is None:
            var_f = float(f.var())
            codec.init_pca(f, recipe.latent_scale)
        # The densities run in float32 (their likelihoods are the rate); the convolutions in bf16 where native.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            y = codec.encoder(f).float()
        step_size = codec.steps[level]
        y_tilde, likelihoods = codec.entropy[level](y / step_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            f_hat = codec.decoder(y_tilde * step_size).float()
            logits = model.tail(f_hat).float()
        kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), reduction="batchmean", log_target=True)
        feat = F.mse_loss(f_hat, f) / var_f
        kib = -torch.log2(likelihoods).sum() / len(x) / 8192
        decay = min(1.0, step / recipe.feature_decay_steps)
        w_feat = recipe.feature_weight_end + (1 - recipe.feature_weight_end) * 0.5 * (1 + math.cos(math.pi * decay))
        loss = kd * t * t + w_feat * feat + math.exp(log_multiplier) * kib
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        aux_opt.zero_grad(set_to_none=True)
        codec.aux_loss().backward()
        aux_opt.step()
        if level == 0 and step >= recipe.warmup_steps:
            # Dual ascent on the multiplier, slower than the network learns, so the rate of level 0
            # steers to target_kib; bounded so that a transient cannot collapse or free the latent.
            log_multiplier += recipe.multiplier_lr * (kib.item() / recipe.target_kib - 1)
            log_multiplier = min(max(log_multiplier, math.log(1e-3)), math.log(10.0))
        agree = float((logits.argmax(1) == target.argmax(1)).float().mean())
        window.append((level, kd.item(), feat.item(), kib.item(), agree))
        step += 1
        bar.update()
        bar.set_postfix(kd=f"{kd.item():.3f}", kib=f"{kib.item():.2f}", L=level, agree=f"{agree:.2f}")
        if step % recipe.log_every == 0 or step == stop:
            _log(log_path, step, time.monotonic() - t0, window, log_multiplier, w_feat, level_count)
            window = []
        if step % recipe.checkpoint_every == 0 or step == stop:
            _save_atomic({"trained": _trained(model, recipe).state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                          "sched": sched.state_dict(), "step": step, "log_multiplier": log_multiplier,
                          "var_f": var_f, "recipe": dataclasses.asdict(recipe)}, ckpt_path)
    bar.close()
    model.to("cpu").eval()
    codec.update(force=True)
    return model


def _record_session(path: Path, recipe: NaturalRecipe, start: int, bf16: bool, device: torch.device) -> None:
    """Append this session (machine, threads, first step) to the run's record: which machine trained what."""
    record = json.loads(path.read_text()) if path.exists() else {"recipe": dataclasses.asdict(recipe), "sessions": []}
    record["sessions"].append({**_machine(device), "from_step": start, "bf16_autocast": bf16})
    path.write_text(json.dumps(record, indent=1, default=str))


def _machine(device: torch.device) -> dict[str, object]:
    """This process's machine, for the record of what trained (or fitted) a file."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.machine())
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine to 1% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _log(path: Path, step: int, elapsed_s: float, window: list, log_multiplier: float, w_feat: float, levels: int) -> None:
    rec: dict[str, object] = {"step": step, "session_s": round(elapsed_s, 1), "time": time.time(),
                              "multiplier": round(math.exp(log_multiplier), 4), "feature_weight": round(w_feat, 4)}
    for lv in range(levels):
        rows = [r for r in window if r[0] == lv]
        if rows:
            a = np.array([r[1:] for r in rows])
            rec[f"L{lv}"] = {"kd": round(float(a[:, 0].mean()), 4), "feat": round(float(a[:, 1].mean()), 4),
                             "kib": round(float(a[:, 2].mean()), 3), "agree": round(float(a[:, 3].mean()), 3)}
    with path.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


# --- the recipe's artefacts ------------------------------------------------------------------------------


def training_files() -> tuple[list[Path], str]:
    """The corpus's training photos and the digest that names them (a missing corpus: a clear error)."""
    corpus = load_corpus(split="train")
    photos = corpus.split("train")
    return [p.path(corpus.root) for p in photos], corpus.digest("train")


def fit_densities(codec: BottleneckCodec, levels: Sequence[int], y: torch.Tensor, iters: int, seed: int) -> None:
    """Fit the density of each of ``levels`` to latents ``y`` divided by its step (encoder and decoder
    untouched): the likelihood of ``y / step`` plus CompressAI's quantile loss, Adam, batches of 16."""
    gen = torch.Generator().manual_seed(seed)
    for level in levels:
        eb = codec.entropy[level]
        eb.train()
        opt = torch.optim.Adam([p for n, p in eb.named_parameters() if not n.endswith("quantiles")], lr=1e-2)
        aux = torch.optim.Adam([eb.quantiles], lr=1e-2)
        step = float(codec.steps[level])
        for _ in range(iters):
            _, likelihoods = eb(y[torch.randint(0, len(y), (16,), generator=gen)] / step)
            loss = -torch.log2(likelihoods).sum() / 16 / 8192
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            aux.zero_grad(set_to_none=True)
            eb.loss().backward()
            aux.step()


def fit_fisher(
    teacher: SplitBackbone, recipe: NaturalRecipe, files: Sequence[Path], *, progress: bool = True
) -> SplitModel:
    """Fit the recipe's transform code on ``recipe.fit_views`` views of ``files``: no training loop.

    For each view: the features at the cut and the gradient of the tail's log-likelihood of one answer
    sampled from its own softmax (so ``E[g g^T]`` is the Fisher information; no labels). Then
    :meth:`NaturalCodec.init_fisher` and one density per level (:func:`fit_densities`). About 2 minutes
    on 2 CPU cores for Lite0; deterministic for a given recipe and data.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(recipe.seed)
    model = _split_model(teacher, recipe, extra_levels=True)
    views = PhotoViews(prepare_images(files, recipe.prepare_side, cache_dir() / "prepared"), recipe.crop,
                       recipe.view_scale, recipe.seed)
    loader = torch.utils.data.DataLoader(views, batch_size=32, sampler=_From(0, recipe.fit_views), num_workers=1)
    gen = torch.Generator().manual_seed(recipe.seed)
    teacher.eval()
    feats, grads = [], []
    for x in tqdm(loader, desc=f"fit {recipe.backbone}/{recipe.split}", unit="batch", disable=not progress):
        with torch.no_grad():
            f = teacher.forward_edge(x, recipe.split)
        f.requires_grad_(True)
        log_p = F.log_softmax(teacher.forward_cloud(f, recipe.split), 1)
        answer = torch.multinomial(log_p.detach().exp(), 1, generator=gen)
        (g,) = torch.autograd.grad(log_p.gather(1, answer).sum(), f)
        feats.append(f.detach())
        grads.append(g)
    f = torch.cat(feats)
    model.codec.init_fisher(f, torch.cat(grads), recipe.latent_scale, recipe.fisher_eps)
    with torch.no_grad():
        y = model.codec.encoder(f)
    fit_densities(model.codec, range(model.codec.num_levels), y, recipe.extra_level_iters, recipe.seed)
    model.eval()
    model.codec.update(force=True)
    return model


WEIGHTS_DIR = Path(__file__).with_name("weights")


def committed_weights(name: str) -> tuple[Path, dict] | None:
    """The weights committed for recipe ``name`` that its current code still builds, hash-checked.

    A file is used only if ``recipe.key(its data digest)`` equals the key it was saved under: any
    change to the recipe makes it stale (then it is retrained, never silently reused).

    Raises:
        IntegrityError: a committed file does not match the sha256 its sidecar records.
    """
    from splitserve.core.bundle import sha256_file
    from splitserve.core.errors import IntegrityError

    recipe = NATURAL_RECIPES[name]
    for side in sorted(WEIGHTS_DIR.glob(f"{name}-*.json")):
        meta = json.loads(side.read_text())
        if meta.get("recipe") != name or recipe.key(meta["data_digest"]) != meta["key"]:
            continue
        path = side.with_suffix(".pt")
        if not path.is_file() or sha256_file(path) != meta["sha256"]:
            raise IntegrityError(f"{path} does not match the sha256 in {side.name}: restore it or delete both")
        return path, meta
    return None


def _load_trained(teacher: SplitBackbone, recipe: NaturalRecipe, path: Path) -> SplitModel:
    model = _split_model(teacher, recipe, extra_levels=True)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = _trained(model, recipe).load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(_CDF_BUFFERS) for k in missing):
        raise ConfigError(f"split weights {path} do not fit the recipe: delete them to retrain")
    model.eval()
    model.codec.update(force=True)
    return model


def trained_natural_split(
    name: str = "efficientnet_lite0-natural",
    teacher: SplitBackbone | None = None,
    *,
    steps: int | None = None,
    retrain: bool = False,
) -> SplitModel:
    """The recipe's trained split, CDFs updated: the committed weights (``models/weights``) if they fit the
    recipe, else the cache's, else trained now (resuming its run); ``retrain`` skips committed and cached."""
    recipe = NATURAL_RECIPES[name]
    teacher = teacher if teacher is not None else get_backbone(recipe.backbone)()
    committed = None if retrain else committed_weights(name)
    if committed is not None:
        return _load_trained(teacher, recipe, committed[0])
    files, digest = training_files()
    final = cache_dir() / f"{recipe.backbone}-{recipe.split}-natural-{recipe.key(digest)}.pt"
    if final.exists() and not retrain:
        return _load_trained(teacher, recipe, final)
    if recipe.fit == "fisher":
        model = fit_fisher(teacher, recipe, files)
    else:
        model = distill(teacher, recipe, files, cache_dir() / "runs" / f"{name}-{recipe.train_key(digest)}", steps=steps)
        if steps is not None and steps < recipe.steps:
            return model
        model = add_levels(model, recipe, files)
    trained = _trained(model, recipe).state_dict()
    _save_atomic({k: v for k, v in trained.items() if not k.endswith(_CDF_BUFFERS)}, final)
    return model


def commit_weights(name: str, figures: dict) -> Path:
    """Copy the cache's trained weights of ``name`` into ``models/weights`` with a sidecar JSON.

    The sidecar records the recipe and its key, the training data's digest, the sha256, the command
    that rebuilds the file, which machine trained it (the run's sessions) and ``figures``.
    """
    import shutil

    from splitserve.core.bundle import sha256_file

    recipe = NATURAL_RECIPES[name]
    _, digest = training_files()
    key = recipe.key(digest)
    final = cache_dir() / f"{recipe.backbone}-{recipe.split}-natural-{key}.pt"
    if not final.exists():
        raise ConfigError(f"no trained weights for {name} in the cache: run `splitserve train natural --recipe {name}`")
    if final.stat().st_size > 5 * 2**20:
        raise ConfigError(f"{final} is over 5 MB: not committed")
    WEIGHTS_DIR.mkdir(exist_ok=True)
    for side in WEIGHTS_DIR.glob(f"{name}-*.json"):  # one file per recipe: the older one goes
        if json.loads(side.read_text()).get("recipe") == name:  # (not "NAME-other"'s)
            side.with_suffix(".pt").unlink(missing_ok=True)
            side.unlink()
    dest = WEIGHTS_DIR / f"{name}-{key}.pt"
    shutil.copyfile(final, dest)
    run = cache_dir() / "runs" / f"{name}-{recipe.train_key(digest)}" / "run.json"
    meta = {
        "recipe": name, "key": key, "data_digest": digest, "sha256": sha256_file(dest), "bytes": dest.stat().st_size,
        "command": f"splitserve data photos && splitserve train natural --recipe {name} --retrain",
        "recipe_fields": json.loads(json.dumps(dataclasses.asdict(recipe), default=str)),
        "trained": json.loads(run.read_text())["sessions"] if run.exists() else [{**_machine(torch.device("cpu")), "fit": recipe.fit}],
        "figures": figures,
    }
    dest.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return dest


def add_levels(model: SplitModel, recipe: NaturalRecipe, files: Sequence[Path]) -> SplitModel:
    """Append the recipe's ``extra_level_steps``: a density per step fitted on the trained encoder's latents.

    Only the entropy models learn here (likelihood of ``y / step`` plus CompressAI's quantile loss);
    encoder, decoder and tail stay as distilled.
    """
    if not recipe.extra_level_steps:
        return model
    full = _split_model(model.teacher, recipe, extra_levels=True)
    n_trained = len(recipe.bottleneck.level_steps)
    state = {k: v for k, v in _trained(model, recipe).state_dict().items()
             if k != "codec.steps" and not k.endswith(_CDF_BUFFERS)}
    _trained(full, recipe).load_state_dict(state, strict=False)
    views = PhotoViews(prepare_images(files, recipe.prepare_side, cache_dir() / "prepared"), recipe.crop,
                       recipe.view_scale, recipe.seed + 13)
    head = full.edge_head().eval()
    with torch.no_grad():
        y = torch.cat([head(torch.stack([views[i + j] for j in range(min(32, recipe.extra_level_views - i))]))
                       for i in range(0, recipe.extra_level_views, 32)])
    fit_densities(full.codec, range(n_trained, full.codec.num_levels), y, recipe.extra_level_iters, recipe.seed)
    full.eval()
    full.codec.update(force=True)
    return full


def heldout_views(views_per_photo: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Held-out photos: each as its centre crop (the edge client's preprocessing) then random views.

    Returns ``(images, labels, photo_index, is_centre)``; labels are -1 where the photo has none (only
    the 20 ImageNet images carry one).
    """
    corpus = load_corpus(split="heldout")
    rng = np.random.default_rng(seed)
    images, labels, index, centre = [], [], [], []
    for i, photo in enumerate(corpus.split("heldout")):
        pixels = corpus.read(photo)
        images.append(center_crop(pixels))
        im = Image.fromarray(pixels)
        images += [_view(im, rng, 224, (0.25, 1.0)) for _ in range(views_per_photo)]
        labels += [-1 if photo.label is None else photo.label] * (views_per_photo + 1)
        index += [i] * (views_per_photo + 1)
        centre += [True] + [False] * views_per_photo
    return np.stack(images), np.array(labels), np.array(index), np.array(centre)


def build_natural_bundle(name: str = "efficientnet_lite0-natural", *, force: bool = False) -> Path:
    """Train what is missing and export the bundle (cached); manifest figures on held-out photos."""
    recipe = NATURAL_RECIPES[name]
    committed = committed_weights(name)
    key = committed[1]["key"] if committed is not None else recipe.key(training_files()[1])
    tag = hashlib.sha256(json.dumps([key, export_key()]).encode()).hexdigest()[:12]
    out_dir = cache_dir() / "bundles" / f"{name}-{tag}"
    if out_dir.exists() and not force:
        try:
            Bundle.open(out_dir).close()
            return out_dir
        except (SplitServeError, OSError, ValueError):  # a stale or damaged bundle is rebuilt
            pass
    teacher = get_backbone(recipe.backbone)()
    model = trained_natural_split(name, teacher)
    return export_bundle(out_dir, teacher, {recipe.split: model}, heldout_eval_data(teacher, recipe), int8_weight_bits=8)


def heldout_eval_data(teacher: SplitBackbone, recipe: NaturalRecipe) -> EvalData:
    """What a natural bundle is measured on: held-out photos (centre crop + 2 views each), labelled with the
    unsplit model's top-1 (so accuracy is agreement); int8 calibration on views of the training photos that
    ship in installed wheels (scikit-image, scikit-learn), so a bundle builds without the training corpus."""
    wheel_photos = [package_file(dist, rel) for dist, rel in PHOTO_FILES]
    calib_views = PhotoViews(prepare_images(wheel_photos, recipe.prepare_side, cache_dir() / "prepared"), recipe.crop,
                             recipe.view_scale, recipe.seed + 7)
    calib = np.stack([calib_views[i].numpy() for i in range(64)])
    images, _, _, centre = heldout_views(2)
    with torch.no_grad():
        agree_with = torch.cat([teacher(torch.from_numpy(images[i : i + 32])).argmax(1) for i in range(0, len(images), 32)])
    return EvalData(
        calib=calib, images=images, labels=agree_with.numpy(),
        name=f"held-out photo corpus: {int(centre.sum())} photos x (centre crop + 2 random views); "
             "labels are the unsplit model's top-1, so accuracy here is agreement",
    )

