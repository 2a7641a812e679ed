"""Backbone registry: ``@register_backbone`` plus ``list_backbones``/``is_backbone``/``get_backbone``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from splitserve.core.errors import DuplicateRegistrationError, UnknownBackboneError

from ._config import BackboneCfg

if TYPE_CHECKING:
    from ._split import SplitBackbone

__all__ = ["get_backbone", "get_backbone_cfg", "is_backbone", "list_backbones", "list_split_points", "register_backbone"]

BackboneFactory = Callable[..., "SplitBackbone"]
_BACKBONES: dict[str, tuple[BackboneCfg, BackboneFactory]] = {}


def register_backbone(cfg: BackboneCfg) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory ``fn(weights_path=None, **kwargs) -> SplitBackbone`` under ``cfg.name``."""

    def wrap(fn: BackboneFactory) -> BackboneFactory:
        if cfg.name in _BACKBONES:
            raise DuplicateRegistrationError(f"backbone {cfg.name!r} is already registered")
        _BACKBONES[cfg.name] = (cfg, fn)
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def is_backbone(name: str) -> bool:
    return name in _BACKBONES


def get_backbone_cfg(name: str) -> BackboneCfg:
    try:
        return _BACKBONES[name][0]
    except KeyError:
        raise UnknownBackboneError(f"unknown backbone {name!r} (known: {list_backbones()})") from None


def get_backbone(name: str) -> BackboneFactory:
    get_backbone_cfg(name)
    return _BACKBONES[name][1]


def list_split_points(name: str) -> list[str]:
    return [sp.name for sp in get_backbone_cfg(name).split_points]
