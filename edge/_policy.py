"""What decides where each request runs: the orchestrator, or a pinned option.

The client talks to any object with the :class:`EdgePolicy` shape, which
:class:`~splitserve.orchestrator.Orchestrator` has. ``policy=`` also takes a :class:`FixedPolicy`, or a
string: ``"local"``, ``"offload"``, ``"offload@LEVEL"``, ``"SPLIT@LEVEL"`` (``"SPLIT"`` for level 0), or the name of a
registered orchestrator policy (``"min_latency"``, ``"max_accuracy"``, ``"mpc"``), which the client
builds over every option of the bundle once it has measured the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from splitserve.core.bundle import Manifest
from splitserve.core.errors import ConfigError
from splitserve.orchestrator import (
    Decider,
    Observation,
    Option,
    ProbeResult,
    SplitDecision,
    is_policy,
    list_policies,
    options_from_manifest,
)
from splitserve.orchestrator.types import LOCAL_ID, OFFLOAD_ID, OptionKind, option_id

__all__ = ["EdgePolicy", "FixedPolicy", "PolicyLike", "plan_policy"]


@runtime_checkable
class EdgePolicy(Decider, Protocol):
    """What the client needs from a policy: a :class:`~splitserve.orchestrator.Decider` (the orchestrator
    is one) that also lists its options.

    Attributes:
        options: every option the policy may pick; the client loads their heads at start.
    """

    options: tuple[Option, ...]


@dataclass(frozen=True)
class FixedPolicy:
    """Always the same option: ``FixedPolicy(split="layer1", level=0)``, ``FixedPolicy(kind="local")``.

    Attributes:
        kind: ``"split"`` (the default when ``split`` is given), ``"local"`` or ``"offload"``.
        split: the split name, for ``"split"``.
        level: the rate level, for ``"split"`` (default 0); for ``"offload"`` a JPEG/WebP offload level
            (default: PNG).
    """

    kind: OptionKind = "split"
    split: str | None = None
    level: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("split", "local", "offload"):
            raise ConfigError(f"FixedPolicy kind must be 'split', 'local' or 'offload', not {self.kind!r}")
        if self.kind == "split":
            if not self.split:
                raise ConfigError("FixedPolicy(kind='split') needs a split name")
            if self.level is None:
                object.__setattr__(self, "level", 0)
        elif self.kind == "offload":
            if self.split is not None:
                raise ConfigError("FixedPolicy(kind='offload') takes no split")
            if self.level == 0:
                object.__setattr__(self, "level", None)  # level 0 is the PNG option, "offload"
        elif self.split is not None or self.level is not None:
            raise ConfigError(f"FixedPolicy(kind={self.kind!r}) takes no split or level")

    @property
    def option_id(self) -> str:
        return option_id(self.kind, self.split, self.level)

    @classmethod
    def parse(cls, text: str) -> FixedPolicy:
        """``"local"``, ``"offload"``, ``"offload@LEVEL"`` (JPEG/WebP), ``"SPLIT@LEVEL"`` or ``"SPLIT"`` (level 0).

        Raises:
            ConfigError: a level that is not a non-negative integer.
        """
        if text in (LOCAL_ID, OFFLOAD_ID):
            return cls(kind=text)  # type: ignore[arg-type]
        split, sep, level = text.partition("@")
        if sep and not level.isdigit():
            raise ConfigError(f"policy {text!r}: the level after '@' must be a non-negative integer")
        if split == OFFLOAD_ID:
            return cls(kind="offload", level=int(level))
        return cls(split=split, level=int(level) if sep else 0)

    def bind(self, manifest: Manifest) -> EdgePolicy:
        """The pinned option of ``manifest`` as a policy.

        Raises:
            ConfigError: the bundle does not offer this option.
        """
        wanted = self.option_id
        for option in options_from_manifest(manifest):
            if option.id == wanted:
                return _Pinned(option)
        offered = [o.id for o in options_from_manifest(manifest)]
        raise ConfigError(f"bundle {manifest.name!r} does not offer {wanted!r} (options: {offered})")


class _Pinned:
    """A bound :class:`FixedPolicy`: one option, no learning."""

    def __init__(self, option: Option) -> None:
        self.options: tuple[Option, ...] = (option,)
        self._decision = SplitDecision(
            kind=option.kind,
            split=option.split,
            level=option.level,
            expected_latency_ms=float("nan"),
            expected_accuracy=option.accuracy,
            reason="fixed policy",
            option_id=option.id,
        )

    def decide(
        self, *, deadline_ms: float | None = None, remote_budget_ms: float | None = None
    ) -> SplitDecision:
        return self._decision

    def observe(self, obs: Observation) -> None:
        """A pinned option learns nothing."""

    def observe_probe(self, result: ProbeResult) -> None:
        """A pinned option sends no probes."""


PolicyLike = EdgePolicy | FixedPolicy | str


def plan_policy(policy: PolicyLike, manifest: Manifest) -> EdgePolicy | str:
    """A ready policy, or the name of an orchestrator policy to build once the device is measured.

    Raises:
        ConfigError: an unknown policy name, an option the bundle lacks, or an object without the
            :class:`EdgePolicy` methods.
    """
    if isinstance(policy, FixedPolicy):
        return policy.bind(manifest)
    if isinstance(policy, str):
        if is_policy(policy):
            return policy
        split = policy.partition("@")[0]
        if split in (LOCAL_ID, OFFLOAD_ID) or split in {s.name for s in manifest.splits}:
            return FixedPolicy.parse(policy).bind(manifest)
        raise ConfigError(
            f"unknown policy {policy!r}: use 'local', 'offload', 'offload@LEVEL', SPLIT@LEVEL (splits: "
            f"{[s.name for s in manifest.splits]}) or an orchestrator policy {list_policies()}"
        )
    if isinstance(policy, EdgePolicy):
        return policy
    raise ConfigError(
        f"policy must be an orchestrator, a FixedPolicy or a string, not {type(policy).__name__} "
        "(it needs options, decide, observe and observe_probe)"
    )
