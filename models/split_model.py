"""A backbone split at one point with a bottleneck in the cut: the unit that is trained and exported."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._config import BottleneckCfg
from ._split import SplitBackbone
from .bottleneck import BottleneckCodec

__all__ = ["CloudTail", "EdgeHead", "SplitModel"]


class EdgeHead(nn.Module):
    """uint8 image -> latent ``y``: preprocess, backbone stages up to the split, bottleneck encoder."""

    def __init__(self, preprocess: nn.Module, stages: list[nn.Module], encoder: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.stages = nn.Sequential(*stages)
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.stages(self.preprocess(x)))


class CloudTail(nn.Module):
    """Dequantized latent ``y_hat`` -> logits: bottleneck decoder, remaining stages, classifier."""

    def __init__(self, decoder: nn.Module, stages: list[nn.Module]) -> None:
        super().__init__()
        self.decoder = decoder
        self.stages = nn.Sequential(*stages)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.stages(self.decoder(y_hat))


class SplitModel(nn.Module):
    """Teacher head (frozen) + bottleneck + a student copy of the teacher's tail (fine-tuned)."""

    def __init__(self, teacher: SplitBackbone, split: str, cfg: BottleneckCfg) -> None:
        super().__init__()
        self.split = split
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        chs = teacher.cfg.split_point(split).num_chs
        self.codec = BottleneckCodec(chs, cfg)
        self.tail = nn.Sequential(*copy.deepcopy(teacher.cloud_modules(split)))

    def train(self, mode: bool = True) -> SplitModel:
        super().train(mode)
        self.teacher.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher.forward_edge(x, self.split)

    def forward(self, x: torch.Tensor, level: int) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        f = self.features(x)
        out = self.codec(f, level)
        return {"logits": self.tail(out["y_hat"]), "f": f, "f_hat": out["y_hat"], "likelihoods": out["likelihoods"]}

    def edge_head(self) -> EdgeHead:
        return EdgeHead(self.teacher.preprocess, self.teacher.edge_modules(self.split), self.codec.encoder)

    def cloud_tail(self) -> CloudTail:
        return CloudTail(self.codec.decoder, list(self.tail))
