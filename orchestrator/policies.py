"""Decision policies and their registry.

A policy sees a :class:`DecisionState` (every option with its expected latency now and, for lookahead
policies, over a horizon) and returns a :class:`Choice`. Policies keep no estimator state of their own;
the orchestrator tells them which option is current and for how many decisions it has been held, which
is all the hysteresis needs.

Registered policies:

- ``min_latency``: lowest expected latency among options that meet the accuracy floor.
- ``max_accuracy``: highest accuracy among options expected to meet the latency target.
- ``mpc``: lowest latency summed over a horizon of predicted bandwidth, with a cost for switching splits
  (model-predictive control as in Yin et al., SIGCOMM 2015, applied to split choice).

Every policy is sticky: it leaves the current option only for a clear gain (``margin``), after holding
it for ``min_dwell`` decisions, unless the current option has become clearly bad (``urgent_ratio``) or
misses the latency target when another meets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from splitserve.core.errors import DuplicateRegistrationError, RegistryError

from ._typing import BoolArray, FloatArray
from .types import Option

__all__ = [
    "Choice",
    "DecisionState",
    "MaxAccuracyPolicy",
    "MinLatencyPolicy",
    "MpcPolicy",
    "Policy",
    "create_policy",
    "is_policy",
    "list_policies",
    "register_policy",
]

_ACC_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class DecisionState:
    """Everything a policy may look at.

    Attributes:
        options: the option set.
        expected_ms: expected latency of each option now, same order as ``options``.
        forecast_ms: expected latency over the policy's horizon, shape ``(horizon, len(options))``
            (row 0 equals ``expected_ms``); ``None`` for policies with ``horizon == 0``.
        accuracy_floor: options below this accuracy are not eligible.
        latency_target_ms: the request's deadline or the configured target, if any.
        current: index of the option chosen last time, ``None`` at start.
        held: decisions for which ``current`` has been held.
    """

    options: tuple[Option, ...]
    expected_ms: FloatArray
    forecast_ms: FloatArray | None
    accuracy_floor: float
    latency_target_ms: float | None
    current: int | None
    held: int

    @property
    def accuracy(self) -> FloatArray:
        return np.array([o.accuracy for o in self.options])

    def eligible(self) -> BoolArray:
        """Boolean mask of options that meet the accuracy floor."""
        return self.accuracy >= self.accuracy_floor - _ACC_EPS


@dataclass(frozen=True)
class Choice:
    """A policy's answer: the option's index and a one-line reason."""

    index: int
    reason: str


class Policy(Protocol):
    """What the orchestrator needs from a policy."""

    name: str
    horizon: int

    def decide(self, state: DecisionState) -> Choice: ...


_P = TypeVar("_P", bound=type)
_POLICIES: dict[str, type] = {}


def register_policy(name: str) -> Callable[[_P], _P]:
    """Class decorator that registers a policy under ``name``.

    Raises:
        DuplicateRegistrationError: ``name`` is taken.
    """

    def wrap(cls: _P) -> _P:
        if name in _POLICIES:
            raise DuplicateRegistrationError(
                f"policy {name!r} is already registered by {_POLICIES[name].__name__}"
            )
        _POLICIES[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def list_policies() -> list[str]:
    return sorted(_POLICIES)


def is_policy(name: str) -> bool:
    return name in _POLICIES


def create_policy(name: str, **kwargs: Any) -> Policy:
    """Instantiate the policy registered as ``name``.

    Raises:
        RegistryError: no policy of that name.
    """
    try:
        cls = _POLICIES[name]
    except KeyError:
        raise RegistryError(f"unknown policy {name!r} (registered: {list_policies()})") from None
    policy: Policy = cls(**kwargs)
    return policy


def _fastest(state: DecisionState, mask: BoolArray) -> int:
    costs = np.where(mask, state.expected_ms, math.inf)
    return int(np.argmin(costs))


def _sticky(
    state: DecisionState,
    best: int,
    *,
    margin: float,
    margin_ms: float,
    min_dwell: int,
    urgent_ratio: float,
    why: str,
) -> Choice:
    """Keep the current option unless ``best`` is clearly faster (the hysteresis every policy shares)."""
    cur = state.current
    e = state.expected_ms
    if cur is None or cur == best or not state.eligible()[cur]:
        return Choice(best, why)
    target = state.latency_target_ms
    if target is not None and e[cur] > target >= e[best]:
        return Choice(best, f"{why}; current option misses the {target:.0f} ms target")
    if e[cur] > urgent_ratio * e[best]:
        return Choice(best, f"{why}; current option {e[cur]:.1f} ms is far slower")
    if state.held < min_dwell:
        return Choice(cur, f"dwell: held {state.held} < {min_dwell} decisions")
    if e[cur] - e[best] > max(margin * e[cur], margin_ms):
        return Choice(best, why)
    return Choice(cur, f"hysteresis: {e[best]:.1f} ms is within the margin of current {e[cur]:.1f} ms")


@register_policy("min_latency")
class MinLatencyPolicy:
    """Lowest expected latency subject to an accuracy floor.

    Args:
        margin: relative gain needed to leave the current option.
        margin_ms: absolute gain needed to leave the current option.
        min_dwell: decisions to hold an option before a non-urgent switch.
        urgent_ratio: switch at once when the current option is expected this many times slower.
    """

    name: str
    horizon = 0

    def __init__(
        self, *, margin: float = 0.1, margin_ms: float = 1.0, min_dwell: int = 2, urgent_ratio: float = 1.5
    ):
        self.margin, self.margin_ms, self.min_dwell, self.urgent_ratio = (
            margin,
            margin_ms,
            min_dwell,
            urgent_ratio,
        )

    def decide(self, state: DecisionState) -> Choice:
        eligible = state.eligible()
        if not eligible.any():
            best = int(np.argmax(state.accuracy))
            return Choice(
                best, f"no option meets the accuracy floor {state.accuracy_floor:.3f}: most accurate"
            )
        best = _fastest(state, eligible)
        return _sticky(
            state,
            best,
            margin=self.margin,
            margin_ms=self.margin_ms,
            min_dwell=self.min_dwell,
            urgent_ratio=self.urgent_ratio,
            why=f"lowest expected latency {state.expected_ms[best]:.1f} ms",
        )


@register_policy("max_accuracy")
class MaxAccuracyPolicy:
    """Highest accuracy subject to a latency target (the request's deadline or a configured target).

    A new option must be expected to meet the target with ``headroom`` to spare; the current option is
    kept as long as it meets the target itself (a hysteresis band between the two).

    Args:
        headroom: share of the target a newly chosen option must leave free.
        min_dwell: decisions to hold an option before moving to a more accurate one.
        accuracy_step: accuracy gain needed to move to another option that meets the target.
    """

    name: str
    horizon = 0

    def __init__(self, *, headroom: float = 0.1, min_dwell: int = 2, accuracy_step: float = 0.001):
        self.headroom, self.min_dwell, self.accuracy_step = headroom, min_dwell, accuracy_step

    def decide(self, state: DecisionState) -> Choice:
        e, acc, eligible = state.expected_ms, state.accuracy, state.eligible()
        target = state.latency_target_ms
        if target is None:
            pool = eligible if eligible.any() else np.ones_like(eligible)
            top = int(np.lexsort((e, -np.where(pool, acc, -math.inf)))[0])
            return Choice(top, "no latency target: most accurate option")
        roomy = eligible & (e <= target * (1.0 - self.headroom))
        meets = eligible & (e <= target)
        cur = state.current
        if cur is not None and meets[cur]:
            best = _most_accurate(acc, e, roomy)
            if (
                best is not None
                and acc[best] > acc[cur] + self.accuracy_step
                and state.held >= self.min_dwell
            ):
                return Choice(
                    best, f"more accurate ({acc[best]:.3f}) and expected {e[best]:.1f} ms within target"
                )
            return Choice(cur, f"current option meets the {target:.0f} ms target")
        for pool, why in (
            (roomy, "most accurate within target"),
            (meets, "most accurate at the target's edge"),
        ):
            best = _most_accurate(acc, e, pool)
            if best is not None:
                return Choice(best, f"{why} ({e[best]:.1f} <= {target:.0f} ms)")
        fastest = _fastest(state, eligible if eligible.any() else np.ones_like(eligible))
        return Choice(fastest, f"no option meets the {target:.0f} ms target: fastest")


def _most_accurate(acc: FloatArray, e: FloatArray, mask: BoolArray) -> int | None:
    if not mask.any():
        return None
    idx = np.flatnonzero(mask)
    return int(idx[np.lexsort((e[idx], -acc[idx]))[0]])


@register_policy("mpc")
class MpcPolicy:
    """Lookahead over predicted bandwidth: minimise latency summed over ``horizon`` requests.

    The cost of a plan is the expected latency of each step, plus ``switch_cost_ms`` whenever the split
    changes (a level change is free: same head, other entropy tables), plus ``miss_penalty_ms`` for
    every step expected to miss the latency target. Backward dynamic programming gives the best plan
    cost for every first step; the cheapest first step is taken unless the current option's best plan
    is within the margin of it.

    Args:
        horizon: requests to look ahead.
        switch_cost_ms: cost of changing split (head swap), in ms.
        miss_penalty_ms: cost of a step expected to miss the target, in ms.
        margin: relative plan-cost gain needed to leave the current option.
        margin_ms: absolute gain per step needed to leave the current option.
    """

    name: str

    def __init__(
        self,
        *,
        horizon: int = 5,
        switch_cost_ms: float = 2.0,
        miss_penalty_ms: float = 50.0,
        margin: float = 0.05,
        margin_ms: float = 0.5,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon, self.switch_cost_ms, self.miss_penalty_ms = horizon, switch_cost_ms, miss_penalty_ms
        self.margin, self.margin_ms = margin, margin_ms

    def decide(self, state: DecisionState) -> Choice:
        forecast = state.forecast_ms if state.forecast_ms is not None else state.expected_ms[None, :]
        eligible = state.eligible()
        if not eligible.any():
            eligible = np.ones_like(eligible)
        step = np.where(eligible[None, :], forecast, math.inf)
        if state.latency_target_ms is not None:
            step = step + self.miss_penalty_ms * (forecast > state.latency_target_ms)
        heads = [o.split if o.kind == "split" else o.kind for o in state.options]
        switch = self.switch_cost_ms * np.array([[a != b for b in heads] for a in heads], dtype=float)
        to_go = step[-1]
        for row in step[-2::-1]:
            to_go = row + np.min(switch + to_go[None, :], axis=1)
        cur = state.current
        plan = to_go + (0.0 if cur is None else switch[cur])
        best = int(np.argmin(plan))
        steps = len(step)
        if (
            cur is not None
            and cur != best
            and eligible[cur]
            and np.isfinite(plan[cur])
            and plan[cur] - plan[best] <= max(self.margin * plan[cur], self.margin_ms * steps)
        ):
            return Choice(
                cur, f"hysteresis: plan {plan[cur]:.1f} ms within the margin of {plan[best]:.1f} ms"
            )
        return Choice(best, f"lookahead {steps} steps: plan {plan[best]:.1f} ms")
