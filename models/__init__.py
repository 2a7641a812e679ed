"""splitserve model toolkit: split, train, quantize and export (needs the ``[train]`` extra: torch).

Only this part of splitserve imports torch; edge, cloud and orchestrator read what it exports.
"""

from . import backbones as backbones
from ._config import BackboneCfg as BackboneCfg
from ._config import BottleneckCfg as BottleneckCfg
from ._config import SplitPointCfg as SplitPointCfg
from ._registry import get_backbone as get_backbone
from ._registry import get_backbone_cfg as get_backbone_cfg
from ._registry import is_backbone as is_backbone
from ._registry import list_backbones as list_backbones
from ._registry import list_split_points as list_split_points
from ._registry import register_backbone as register_backbone
from ._split import SplitBackbone as SplitBackbone

__all__ = [
    "BackboneCfg",
    "BottleneckCfg",
    "SplitBackbone",
    "SplitPointCfg",
    "backbones",
    "get_backbone",
    "get_backbone_cfg",
    "is_backbone",
    "list_backbones",
    "list_split_points",
    "register_backbone",
]
