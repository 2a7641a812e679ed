"""A backbone cut into named stages, so that any split point gives a head and a tail.

::

    uint8 image -> preprocess -> stage_0 -> ... -> stage_k | stage_k+1 -> ... -> classifier -> logits
                   \\_________ forward_edge(x, k) ________/   \\______ forward_cloud(f, k) ______/
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ._config import BackboneCfg

__all__ = ["Normalize", "SplitBackbone", "count_macs"]


class Normalize(nn.Module):
    """uint8 -> float ``(x - mean) / std``, inside the exported graph so the edge feeds raw pixels.

    ``mean`` and ``std`` are scalars or one value per channel (uint8 scale).
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        self.mean: float | torch.Tensor
        self.std: float | torch.Tensor
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
            self.mean, self.std = float(mean), float(std)
        else:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class SplitBackbone(nn.Module):
    """A classifier as ``preprocess``, ordered ``stages`` and a ``classifier``."""

    def __init__(self, cfg: BackboneCfg, preprocess: nn.Module, stages: OrderedDict[str, nn.Module], classifier: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.preprocess = preprocess
        self.stages = nn.ModuleDict(stages)
        self.classifier = classifier

    def _stage_index(self, split: str) -> int:
        module = self.cfg.split_point(split).module
        return list(self.stages.keys()).index(module)

    def forward_edge(self, x: torch.Tensor, split: str) -> torch.Tensor:
        """Features at ``split`` (the edge half of the backbone)."""
        x = self.preprocess(x)
        last = self._stage_index(split)
        for i, stage in enumerate(self.stages.values()):
            x = stage(x)
            if i == last:
                break
        return x

    def forward_cloud(self, f: torch.Tensor, split: str) -> torch.Tensor:
        """Logits from features at ``split`` (the cloud half)."""
        first = self._stage_index(split) + 1
        for stage in list(self.stages.values())[first:]:
            f = stage(f)
        return self.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        for stage in self.stages.values():
            x = stage(x)
        return self.classifier(x)

    def edge_modules(self, split: str) -> list[nn.Module]:
        return list(self.stages.values())[: self._stage_index(split) + 1]

    def cloud_modules(self, split: str) -> list[nn.Module]:
        return [*list(self.stages.values())[self._stage_index(split) + 1 :], self.classifier]


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers), counted by hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d | nn.ConvTranspose2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        if isinstance(m, nn.ConvTranspose2d):
            total += inp[0].numel() // inp[0].shape[0] * (m.out_channels // m.groups) * kh * kw
        else:
            total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            module.eval()(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total
