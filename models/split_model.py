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
    """Head + bottleneck + a student copy of the teacher's tail (fine-tuned).

    The head is the frozen teacher's, or with ``own_head`` a student copy of it that training may
    fine-tune (Entropic Student trains the whole student end to end); the teacher stays frozen and
    provides the distillation targets either way.
    """

    def __init__(self, teacher: SplitBackbone, split: str, cfg: BottleneckCfg, *, own_head: bool = False) -> None:
        super().__init__()
        self.split = split
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        chs = teacher.cfg.split_point(split).num_chs
        self.codec = BottleneckCodec(chs, cfg)
        self.tail = nn.Sequential(*copy.deepcopy(teacher.cloud_modules(split)))
        self.head: nn.Sequential | None = None
        if own_head:
            self.head = nn.Sequential(*copy.deepcopy(teacher.edge_modules(split)))
            for p in self.head.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> SplitModel:
        super().train(mode)
        self.teacher.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher.forward_edge(x, self.split)

    def forward(self, x: torch.Tensor, level: int) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """``f``: the teacher's features at the split; ``f_hat``: the decoder's reconstruction."""
        f = self.features(x)
        h = f if self.head is None else self.head(self.teacher.preprocess(x))
        out = self.codec(h, level)
        return {"logits": self.tail(out["y_hat"]), "f": f, "f_hat": out["y_hat"], "likelihoods": out["likelihoods"]}

    def edge_head(self) -> EdgeHead:
        stages = self.teacher.edge_modules(self.split) if self.head is None else list(self.head)
        return EdgeHead(self.teacher.preprocess, stages, self.codec.encoder)

    def cloud_tail(self) -> CloudTail:
        return CloudTail(self.codec.decoder, list(self.tail))
