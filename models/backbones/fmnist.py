"""A small ResNet for Fashion-MNIST that the toolkit trains itself (``splitserve train backbone``).

Stages and their share of the 16.6 M multiply-accumulates per image::

    stem    conv3x3 1->16            28x28    0.7 %
    layer1  BasicBlock 16->32, /2    14x14   17   %   <- light split points: stem, layer1
    layer2  BasicBlock 32->64, /2     7x7    17   %
    layer3  BasicBlock 64->128        7x7    66   %
    head    global pool + linear 128->10
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from splitserve.core.datasets import FASHION_MNIST_CLASSES

from .._config import BackboneCfg, BottleneckCfg, SplitPointCfg
from .._registry import register_backbone
from .._split import Normalize, SplitBackbone

__all__ = ["BasicBlock", "fmnist_resnet"]

# Fashion-MNIST training-set pixel statistics (uint8 scale).
_MEAN, _STD = 72.94, 90.02


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU, with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


FMNIST_CFG = BackboneCfg(
    name="fmnist_resnet",
    input_shape=(1, 28, 28),
    preprocess={},
    classes=FASHION_MNIST_CLASSES,
    split_points=(
        SplitPointCfg("stem", "stem", 16, 1),
        SplitPointCfg("layer1", "layer1", 32, 2),
        SplitPointCfg("layer2", "layer2", 64, 4),
    ),
    weights="train",
    bottleneck={
        "stem": BottleneckCfg(latent_chs=12, hidden_chs=24, stride=4, level_steps=(0.5, 1.0, 1.6, 2.5)),
        "layer1": BottleneckCfg(latent_chs=12, hidden_chs=32, stride=2, level_steps=(0.5, 1.0, 1.6, 2.5)),
        "layer2": BottleneckCfg(latent_chs=12, hidden_chs=48, stride=1),
    },
)


@register_backbone(FMNIST_CFG)
def fmnist_resnet(weights_path: str | Path | None = None) -> SplitBackbone:
    """The Fashion-MNIST ResNet; ``weights_path`` is a state dict written by ``splitserve train``."""
    stages = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)),
        layer1=BasicBlock(16, 32, 2),
        layer2=BasicBlock(32, 64, 2),
        layer3=BasicBlock(64, 128, 1),
    )
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    model = SplitBackbone(FMNIST_CFG, Normalize(_MEAN, _STD), stages, classifier)
    if weights_path is not None:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model
