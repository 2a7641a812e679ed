"""Dataclass configs read from ``PREFIX_FIELD`` environment variables, with flag overrides.

Shared by the cloud endpoint (``SPLITSERVE_CLOUD_*``) and the edge client (``SPLITSERVE_EDGE_*``): a
field's annotation (``str``, ``int``, ``float``, ``bool`` or ``tuple[str, ...]``) says how its
variable is parsed; unset or empty variables keep the dataclass default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["from_env", "with_overrides"]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """``cls(**values)`` from the ``prefix + FIELD`` variables of ``environ`` (``os.environ`` if None).

    Raises:
        ConfigError: a variable holds a value of the wrong type (or the dataclass rejects it).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = prefix + f.name.upper()
        raw = env.get(var, "").strip()
        if raw:
            values[f.name] = _parse(var, str(f.type), raw)
    return cls(**values)


def with_overrides(config: T, what: str, **overrides: Any) -> T:
    """A copy of ``config`` with the given fields replaced; ``None`` values (flags not passed) are ignored.

    Raises:
        ConfigError: an unknown field (named with ``what``, e.g. "cloud config"), or a rejected value.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(given.keys() - {f.name for f in dataclasses.fields(config)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {what} fields: {unknown}")
    return dataclasses.replace(config, **given)  # type: ignore[type-var]


def _parse(var: str, kind: str, raw: str) -> Any:
    try:
        if kind.startswith("tuple"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if kind == "bool":
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind}") from exc
    return raw
