"""The learned bottleneck injected at a split: encoder -> entropy model -> decoder.

::

    features f (edge) -> encoder -> y -> /step_l -> EntropyBottleneck_l -> y~ -> *step_l -> decoder -> f^ (cloud)
                                     \\__ rate level l: a quantization step and a learned density each __/

One encoder and one decoder serve every rate level, so changing level costs the device nothing: the
head's output ``y`` is the same, only the step and the entropy tables differ. Each level has its own
CompressAI ``EntropyBottleneck`` (a factorized prior, Ballé et al., ICLR 2018), trained on ``y / step``;
its CDFs are exported as integer tables for the torch-free coder in ``splitserve.core.codec``.
Training follows head distillation then knowledge distillation with a rate term (BottleFit, Matsubara
et al., WoWMoM 2022; Entropic Student, Matsubara et al., WACV 2022).
"""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn

from splitserve.core.codec import EntropyTables

from ._config import BottleneckCfg

__all__ = ["BottleneckCodec"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class BottleneckCodec(nn.Module):
    """Encoder, per-level entropy models and decoder for a feature map of ``feature_chs`` channels.

    Follows CompressAI's codec lifecycle: ``forward`` for training returns ``y_hat`` (here the
    reconstructed features ``f_hat``) and ``likelihoods``; ``update`` fills the CDF buffers; after
    that ``export_tables`` gives the integer tables the edge and the cloud code with.
    """

    def __init__(self, feature_chs: int, cfg: BottleneckCfg) -> None:
        super().__init__()
        if cfg.stride not in (1, 2, 4):
            raise ValueError(f"Invalid bottleneck stride {cfg.stride}: use 1, 2 or 4")
        self.cfg = cfg
        enc: list[nn.Module] = []
        cin = feature_chs
        for _ in range({1: 1, 2: 1, 4: 2}[cfg.stride]):
            enc += _conv_bn_relu(cin, cfg.hidden_chs, 2 if cfg.stride > 1 else 1)
            cin = cfg.hidden_chs
        enc.append(nn.Conv2d(cfg.hidden_chs, cfg.latent_chs, 3, 1, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = _conv_bn_relu(cfg.latent_chs, cfg.hidden_chs)
        for _ in range({1: 0, 2: 1, 4: 2}[cfg.stride]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_bn_relu(cfg.hidden_chs, cfg.hidden_chs)]
        dec += _conv_bn_relu(cfg.hidden_chs, feature_chs)
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("steps", torch.tensor(cfg.level_steps, dtype=torch.float32))
        self.entropy = nn.ModuleList(EntropyBottleneck(cfg.latent_chs) for _ in cfg.level_steps)

    @property
    def num_levels(self) -> int:
        return len(self.cfg.level_steps)

    def forward(self, f: torch.Tensor, level: int) -> dict[str, torch.Tensor]:
        """Training/eval pass at ``level``: ``{"y_hat": f_hat, "likelihoods": p(y~)}``."""
        y = self.encoder(f)
        step = self.steps[level]
        y_tilde, likelihoods = self.entropy[level](y / step)
        return {"y_hat": self.decoder(y_tilde * step), "likelihoods": likelihoods}

    def aux_loss(self) -> torch.Tensor:
        """Sum of the entropy models' quantile losses (trained by their own optimizer)."""
        return sum((eb.loss() for eb in self.entropy), torch.zeros(()))

    def update(self, force: bool = True) -> None:
        for eb in self.entropy:
            eb.update(force=force)

    def export_tables(self, level: int) -> EntropyTables:
        """Integer frequency tables of ``level`` (run :meth:`update` first)."""
        eb = self.entropy[level]
        if eb._quantized_cdf.numel() == 0:
            raise RuntimeError("Uninitialized CDFs. Run update() first")
        cdf = eb._quantized_cdf.cpu().tolist()
        lengths = eb._cdf_length.cpu().tolist()
        offsets = eb._offset.cpu().tolist()
        # CompressAI's CDF rows start at 0 and end at 2**16; the last bin is the overflow (escape) bin.
        freqs = [tuple(row[i + 1] - row[i] for i in range(n - 1)) for row, n in zip(cdf, lengths)]
        medians = eb._get_medians().detach().reshape(-1).cpu().tolist()
        return EntropyTables(
            step=float(self.steps[level]), medians=tuple(medians), offsets=tuple(offsets), freqs=tuple(freqs)
        )
