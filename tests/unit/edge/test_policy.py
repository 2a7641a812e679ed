"""Policies the client accepts: FixedPolicy, option strings, orchestrator names, policy objects."""

from __future__ import annotations

import pytest

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ConfigError
from splitserve.edge import EdgePolicy, FixedPolicy
from splitserve.edge._policy import plan_policy
from splitserve.orchestrator import DeviceLatency, Orchestrator


def test_fixed_policy_forms() -> None:
    assert FixedPolicy(split="layer1").level == 0
    assert FixedPolicy(split="layer1", level=2).option_id == "layer1@2"
    assert FixedPolicy(kind="local").option_id == "local"
    assert FixedPolicy.parse("offload") == FixedPolicy(kind="offload")
    assert FixedPolicy.parse("stem@1") == FixedPolicy(split="stem", level=1)
    assert FixedPolicy.parse("stem") == FixedPolicy(split="stem", level=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "split"}, "needs a split"),
        ({"kind": "local", "split": "stem"}, "takes no split"),
        ({"kind": "edge"}, "kind must be"),
    ],
)
def test_fixed_policy_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FixedPolicy(**kwargs)


def test_bad_level_text() -> None:
    with pytest.raises(ConfigError, match="non-negative integer"):
        FixedPolicy.parse("stem@x")


def test_plan_pins_or_defers(bundle: Bundle) -> None:
    m = bundle.manifest
    pinned = plan_policy("layer1@1", m)
    assert isinstance(pinned, EdgePolicy)
    assert [o.id for o in pinned.options] == ["layer1@1"]
    d = pinned.decide(deadline_ms=10.0)
    assert (d.kind, d.split, d.level, d.option_id) == ("split", "layer1", 1, "layer1@1")
    assert d.expected_accuracy == m.split("layer1").level(1).accuracy
    assert plan_policy("offload", m).decide().split == "input"  # type: ignore[union-attr]
    assert plan_policy(FixedPolicy(kind="local"), m).decide().kind == "local"  # type: ignore[union-attr]
    assert plan_policy("mpc", m) == "mpc"
    orch = Orchestrator.from_manifest(m, DeviceLatency({s.name: 1.0 for s in m.splits}, 1.0, 1.0))
    assert plan_policy(orch, m) is orch


def test_plan_refuses_unknown_things(bundle: Bundle) -> None:
    with pytest.raises(ConfigError, match="unknown policy 'fastest'"):
        plan_policy("fastest", bundle.manifest)
    with pytest.raises(ConfigError, match="needs options"):
        plan_policy(object(), bundle.manifest)  # type: ignore[arg-type]
