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
    assert FixedPolicy.parse("offload@2") == FixedPolicy(kind="offload", level=2)
    assert FixedPolicy.parse("offload@2").option_id == "offload@2"
    assert FixedPolicy(kind="offload", level=0).option_id == FixedPolicy.parse("offload@0").option_id == "offload"


def test_offload_levels_are_options_of_their_own(bundle: Bundle) -> None:
    from dataclasses import replace

    from splitserve.core.offload import OffloadLevel
    from splitserve.orchestrator import options_from_manifest

    base = bundle.manifest
    jpeg = OffloadLevel(1, "jpeg", 90, 40.0, 0.8)
    m = replace(base, offload=replace(base.offload, levels=(*base.offload.levels, jpeg)))
    options = {o.id: o for o in options_from_manifest(m)}
    assert {"local", "offload", "offload@1"} <= set(options)
    lossy = options["offload@1"]
    assert (lossy.kind, lossy.split, lossy.level, lossy.payload_bytes, lossy.accuracy) == ("offload", "input", 1, 40.0, 0.8)
    d = plan_policy("offload@1", m).decide()  # type: ignore[union-attr]
    assert (d.kind, d.split, d.level, d.option_id) == ("offload", "input", 1, "offload@1")
    device = DeviceLatency({}, 5.0, 2.0, {1: 1.5})
    assert device.for_option(lossy) == 1.5 and device.for_option(options["offload"]) == 2.0
    with pytest.raises(ConfigError, match="does not offer 'offload@2'"):
        plan_policy("offload@2", m)


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
