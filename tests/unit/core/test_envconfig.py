"""Environment-variable configs: typed parsing, defaults, overrides, clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from splitserve.core import envconfig
from splitserve.core.errors import ConfigError


@dataclass(frozen=True)
class Demo:
    name: str = "x"
    port: int = 1
    ratio: float = 0.5
    tls: bool = False
    bundles: tuple[str, ...] = ()


def test_parses_every_kind_and_keeps_defaults_for_unset_or_empty() -> None:
    env = {"P_NAME": "edge", "P_PORT": "8001", "P_TLS": "Yes", "P_BUNDLES": "a, b,,c", "P_RATIO": "  "}
    assert envconfig.from_env(Demo, "P_", env) == Demo("edge", 8001, 0.5, True, ("a", "b", "c"))


@pytest.mark.parametrize(("var", "raw"), [("P_PORT", "80.5"), ("P_RATIO", "half"), ("P_TLS", "maybe")])
def test_wrong_type_names_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}={raw!r} is not a valid"):
        envconfig.from_env(Demo, "P_", {var: raw})


def test_overrides_ignore_none_and_refuse_unknown_fields() -> None:
    assert envconfig.with_overrides(Demo(), "demo config", port=9, name=None) == Demo(port=9)
    with pytest.raises(ConfigError, match=r"unknown demo config fields: \['colour'\]"):
        envconfig.with_overrides(Demo(), "demo config", colour="red")
