"""Policies on crafted states: floor, target, hysteresis, lookahead, registry."""

from __future__ import annotations

import numpy as np
import pytest

from splitserve.core.errors import DuplicateRegistrationError, RegistryError
from splitserve.orchestrator import DecisionState, Option, create_policy, list_policies, register_policy
from splitserve.orchestrator.policies import MaxAccuracyPolicy, MinLatencyPolicy, MpcPolicy

OPTIONS = (
    Option("split", "a", 0, 20.0, 0.88, 0.8),  # 0: fast, inaccurate
    Option("split", "a", 1, 40.0, 0.91, 0.8),  # 1
    Option("split", "b", 0, 10.0, 0.92, 0.3),  # 2
    Option("local", None, None, 0.0, 0.93, 0.0),  # 3: slow, accurate
    Option("offload", "input", None, 500.0, 0.94, 1.0),  # 4
)


def state(
    expected: list[float],
    *,
    floor: float = 0.0,
    target: float | None = None,
    current: int | None = None,
    held: int = 10,
    forecast: np.ndarray | None = None,
) -> DecisionState:
    return DecisionState(OPTIONS, np.array(expected, dtype=float), forecast, floor, target, current, held)


class TestMinLatency:
    def test_respects_the_accuracy_floor(self) -> None:
        p = MinLatencyPolicy()
        assert p.decide(state([10, 20, 30, 60, 50])).index == 0
        assert p.decide(state([10, 20, 30, 60, 50], floor=0.91)).index == 1
        assert p.decide(state([10, 20, 30, 60, 50], floor=0.935)).index == 4

    def test_no_option_meets_the_floor_picks_the_most_accurate(self) -> None:
        choice = MinLatencyPolicy().decide(state([10, 20, 30, 60, 50], floor=0.99))
        assert choice.index == 4 and "floor" in choice.reason

    def test_hysteresis_keeps_a_nearly_equal_option(self) -> None:
        p = MinLatencyPolicy(margin=0.1)
        assert p.decide(state([30, 29, 50, 60, 50], current=0)).index == 0
        assert p.decide(state([30, 20, 50, 60, 50], current=0)).index == 1

    def test_dwell_holds_a_fresh_choice_unless_urgent(self) -> None:
        p = MinLatencyPolicy(min_dwell=3, urgent_ratio=1.5)
        assert p.decide(state([30, 25, 50, 60, 50], current=0, held=1)).index == 0
        assert p.decide(state([60, 25, 50, 60, 50], current=0, held=1)).index == 1

    def test_leaves_an_option_that_misses_the_target_at_once(self) -> None:
        p = MinLatencyPolicy(min_dwell=5, margin=0.5)
        assert p.decide(state([105, 95, 150, 160, 150], current=0, held=1, target=100)).index == 1

    @staticmethod
    def switches(p: MinLatencyPolicy) -> int:
        rng = np.random.default_rng(0)
        current, held, switches = None, 0, 0
        for _ in range(500):
            e = [40 + rng.normal(0, 1.5), 41 + rng.normal(0, 1.5), 80, 90, 85]
            c = p.decide(state(e, current=current, held=held)).index
            switches += current is not None and c != current
            held = held + 1 if c == current else 1
            current = c
        return switches

    def test_does_not_flap_on_noisy_estimates(self) -> None:
        assert self.switches(MinLatencyPolicy(margin=0.0, margin_ms=0.0, min_dwell=0)) > 150
        assert self.switches(MinLatencyPolicy()) <= 10


class TestMaxAccuracy:
    def test_most_accurate_within_the_target(self) -> None:
        p = MaxAccuracyPolicy(headroom=0.1)
        assert p.decide(state([10, 20, 30, 60, 50], target=55)).index == 2
        assert p.decide(state([10, 20, 30, 60, 50], target=100)).index == 4

    def test_hysteresis_band_keeps_an_option_at_the_edge(self) -> None:
        p = MaxAccuracyPolicy(headroom=0.1)
        assert p.decide(state([10, 20, 30, 60, 53], target=55, current=4)).index == 4
        assert p.decide(state([10, 20, 30, 60, 53], target=55, current=2)).index == 2
        assert p.decide(state([10, 20, 30, 60, 56], target=55, current=4)).index == 2

    def test_nothing_meets_the_target_picks_the_fastest(self) -> None:
        choice = MaxAccuracyPolicy().decide(state([10, 20, 30, 60, 50], target=5))
        assert choice.index == 0 and "no option" in choice.reason


class TestMpc:
    def test_matches_min_latency_on_a_flat_forecast(self) -> None:
        e = [30, 20, 25, 60, 50]
        forecast = np.tile(np.array(e, dtype=float), (5, 1))
        assert MpcPolicy().decide(state(e, forecast=forecast)).index == 1

    def test_looks_ahead_past_a_one_step_advantage(self) -> None:
        # offload is fastest now but collapses next; option 2 wins over the horizon
        forecast = np.array([[90, 90, 31, 60, 30]] + [[90, 90, 31, 60, 200]] * 4, dtype=float)
        assert MpcPolicy(horizon=5).decide(state(list(forecast[0]), forecast=forecast)).index == 2
        assert MinLatencyPolicy().decide(state(list(forecast[0]))).index == 4

    def test_switch_cost_keeps_the_current_split(self) -> None:
        e = [50, 50, 49, 60, 70]
        forecast = np.tile(np.array(e, dtype=float), (5, 1))
        assert MpcPolicy(switch_cost_ms=5.0).decide(state(e, forecast=forecast, current=0)).index == 0


class TestRegistry:
    def test_registered_names(self) -> None:
        assert {"min_latency", "max_accuracy", "mpc"} <= set(list_policies())
        assert isinstance(create_policy("mpc", horizon=3), MpcPolicy)

    def test_unknown_and_duplicate(self) -> None:
        with pytest.raises(RegistryError, match="unknown policy"):
            create_policy("nope")
        with pytest.raises(DuplicateRegistrationError):
            register_policy("min_latency")(type("Other", (), {}))
