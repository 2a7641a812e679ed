"""torchvision ResNet-50 and MobileNetV3-Large with the user's own weights, from a path.

The weights file is a torchvision ``state_dict`` (as saved by ``torch.save(model.state_dict(), path)``),
loaded with ``weights_only=True``; nothing is downloaded. Without a path the networks are randomly
initialised (enough for shapes and latency). Input: 224x224 RGB crop of a short side resized to 256, uint8;
the graph normalises with the ImageNet mean and std. Share of the multiply-accumulates a head up to and
including each stage does (ResNet-50: 4.09 G per image; MobileNetV3-Large: 217 M)::

    resnet50            output           share     mobilenet_v3_large   output          share
    stem   conv7x7+pool  64 x 56 x 56     2.9 %    stem    conv3x3 /2    16 x 112 x 112   2.5 %
    layer1 3 blocks     256 x 56 x 56    19.2 %    stage1  IR k3         16 x 112 x 112   4.8 %
    layer2 4 blocks     512 x 28 x 28    44.4 %    stage2  IR k3 x2      24 x  56 x  56  19.8 %
    layer3 6 blocks    1024 x 14 x 14    80.2 %    stage3  IR k5 SE x3   40 x  28 x  28  33.1 %
    (layer4: 2048 x 7 x 7, not a split point)      stage4  IR k3 x4      80 x  14 x  14  47.2 %
                                                   stage5  IR k3 SE x2  112 x  14 x  14  70.2 %
                                                   stage6  IR k5 SE x3  160 x   7 x   7  95.4 %
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from splitserve.core.errors import ConfigError

from .._config import BackboneCfg, BottleneckCfg, SplitPointCfg
from .._registry import register_backbone
from .._split import Normalize, SplitBackbone

__all__ = [
    "IMAGENET_CLASSES",
    "MOBILENET_V3_LARGE_CFG",
    "RESNET50_CFG",
    "check_weights_file",
    "load_state_dict_file",
    "mobilenet_v3_large",
    "resnet50",
]

# The 1000 ImageNet class names, from torchvision's weight metadata (no download involved).
IMAGENET_CLASSES: tuple[str, ...] = tuple(tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_PREPROCESS = {"resize": 256, "crop": 224}

RESNET50_CFG = BackboneCfg(
    name="resnet50",
    input_shape=(3, 224, 224),
    preprocess=_PREPROCESS,
    classes=IMAGENET_CLASSES,
    split_points=(
        SplitPointCfg("stem", "stem", 64, 4),
        SplitPointCfg("layer1", "layer1", 256, 4),
        SplitPointCfg("layer2", "layer2", 512, 8),
        SplitPointCfg("layer3", "layer3", 1024, 16),
    ),
    weights="path",
    bottleneck={"layer1": BottleneckCfg(latent_chs=24, hidden_chs=96, stride=4)},
)

MOBILENET_V3_LARGE_CFG = BackboneCfg(
    name="mobilenet_v3_large",
    input_shape=(3, 224, 224),
    preprocess=_PREPROCESS,
    classes=IMAGENET_CLASSES,
    split_points=(
        SplitPointCfg("stem", "stem", 16, 2),
        SplitPointCfg("stage1", "stage1", 16, 2),
        SplitPointCfg("stage2", "stage2", 24, 4),
        SplitPointCfg("stage3", "stage3", 40, 8),
        SplitPointCfg("stage4", "stage4", 80, 16),
        SplitPointCfg("stage5", "stage5", 112, 16),
        SplitPointCfg("stage6", "stage6", 160, 32),
    ),
    weights="path",
    bottleneck={
        "stage2": BottleneckCfg(latent_chs=24, hidden_chs=64, stride=4),
        "stage6": BottleneckCfg(latent_chs=24, hidden_chs=96, stride=1),  # 7x7: no further downsampling
    },
)


def check_weights_file(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it is a readable, non-empty file; a clear ``ConfigError`` otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file {p} does not exist")
    if p.stat().st_size == 0:
        raise ConfigError(f"weights file {p} is empty")
    return p


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only``), with a clear error for a missing or corrupt file."""
    p = check_weights_file(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise ConfigError(f"weights file {p} is not a readable torch state dict: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {p} does not hold a state dict (a mapping of names to tensors)")
    return state


def _load_into(net: nn.Module, path: str | Path, arch: str) -> None:
    state = load_state_dict_file(path)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"weights file {path} does not fit torchvision {arch}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, wrong shapes
        raise ConfigError(f"weights file {path} does not fit torchvision {arch}: {exc}") from exc


@register_backbone(RESNET50_CFG)
def resnet50(weights_path: str | Path | None = None) -> SplitBackbone:
    """torchvision ResNet-50; ``weights_path``: a torchvision state dict (``None``: random init)."""
    net = tvm.resnet50(weights=None)
    if weights_path is not None:
        _load_into(net, weights_path, "resnet50")
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        layer1=net.layer1,
        layer2=net.layer2,
        layer3=net.layer3,
        layer4=net.layer4,
    )
    classifier = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
    return SplitBackbone(RESNET50_CFG, Normalize(_IMAGENET_MEAN, _IMAGENET_STD), stages, classifier).eval()


@register_backbone(MOBILENET_V3_LARGE_CFG)
def mobilenet_v3_large(weights_path: str | Path | None = None) -> SplitBackbone:
    """torchvision MobileNetV3-Large; ``weights_path``: a torchvision state dict (``None``: random init)."""
    net = tvm.mobilenet_v3_large(weights=None)
    if weights_path is not None:
        _load_into(net, weights_path, "mobilenet_v3_large")
    f = net.features
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=f[0],
        stage1=f[1],
        stage2=f[2:4],
        stage3=f[4:7],
        stage4=f[7:11],
        stage5=f[11:13],
        stage6=f[13:16],
        last=f[16],
    )
    classifier = nn.Sequential(net.avgpool, nn.Flatten(), net.classifier)
    return SplitBackbone(MOBILENET_V3_LARGE_CFG, Normalize(_IMAGENET_MEAN, _IMAGENET_STD), stages, classifier).eval()
