"""Simulator: determinism, speed, oracle and fixed baselines, and the targets on the example profile."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from splitserve.orchestrator import (
    Orchestrator,
    OrchestratorConfig,
    Profile,
    SimConfig,
    Simulation,
    trace_set,
)
from splitserve.orchestrator.traces import constant_trace, on_off_trace, step_trace

CFG = SimConfig()


def factory(profile: Profile, policy: str = "min_latency") -> Callable[[Callable[[], float]], Orchestrator]:
    def build(clock: Callable[[], float]) -> Orchestrator:
        return Orchestrator(
            profile.options,
            profile.device_latency(),
            policy=policy,
            accuracy_floor=CFG.accuracy_floor,
            server_ms=profile.server_ms(),
            config=OrchestratorConfig(framing_bytes=profile.framing_bytes),
            clock=clock,
        )

    return build


def test_deterministic(example: Profile) -> None:
    runs = [Simulation(on_off_trace(), example, CFG).orchestrate("o", factory(example)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].choice, runs[1].choice)
    np.testing.assert_array_equal(runs[0].latency_ms, runs[1].latency_ms)


def test_oracle_bounds_every_fixed_option(example: Profile) -> None:
    sim = Simulation(step_trace(), example, CFG)
    oracle = sim.oracle().metrics(CFG.deadline_ms)
    eligible = [oid for oid, ok in zip(sim.ids, sim.eligible) if ok]
    means = {oid: sim.fixed(oid).metrics(CFG.deadline_ms).mean_ms for oid in eligible}
    assert oracle.mean_ms <= min(means.values()) + 1e-9
    assert sim.best_fixed() == min(means, key=means.__getitem__)


def test_constant_link_settles_on_the_oracle_choice(example: Profile) -> None:
    sim = Simulation(constant_trace(), example, CFG)
    run = sim.orchestrate("o", factory(example))
    oracle = sim.oracle()
    assert np.mean(run.choice[5:] == oracle.choice[5:]) > 0.95
    assert run.switches_per_100 < 1.0


def test_whole_trace_set_in_seconds(example: Profile) -> None:
    start = time.perf_counter()
    for tr in trace_set():
        Simulation(tr, example, CFG).orchestrate("o", factory(example))
    assert time.perf_counter() - start < 10.0  # about 1 s on an idle core


@pytest.mark.parametrize("name", ["on_off"])
def test_targets_on_the_example_profile(example: Profile, name: str) -> None:
    """Sanity check where the trace leaves room for adaptation; the benchmark reports every trace."""
    tr = next(t for t in trace_set() if t.name == name)
    sim = Simulation(tr, example, CFG)
    orch = sim.orchestrate("o", factory(example))
    oracle, best = sim.oracle(), sim.fixed(sim.best_fixed())
    m, mo, mb = (r.metrics(CFG.deadline_ms) for r in (orch, oracle, best))
    assert m.mean_ms <= 1.10 * mo.mean_ms
    assert m.mean_ms <= 0.70 * mb.mean_ms
    meets = oracle.latency_ms <= CFG.deadline_ms
    assert np.mean(orch.latency_ms[meets] > CFG.deadline_ms) <= 0.05
    assert m.accuracy >= CFG.accuracy_floor


@pytest.mark.parametrize("name", ["step", "queueing"])
def test_close_to_the_oracle(example: Profile, name: str) -> None:
    tr = next(t for t in trace_set() if t.name == name)
    sim = Simulation(tr, example, CFG)
    m = sim.orchestrate("o", factory(example)).metrics(CFG.deadline_ms)
    assert m.mean_ms <= 1.10 * sim.oracle().metrics(CFG.deadline_ms).mean_ms
    assert m.miss_rate <= 0.05


def test_mpc_and_max_accuracy_run(example: Profile) -> None:
    sim = Simulation(step_trace(), example, CFG)
    mpc = sim.orchestrate("mpc", factory(example, "mpc")).metrics(CFG.deadline_ms)
    acc = sim.orchestrate("acc", factory(example, "max_accuracy")).metrics(CFG.deadline_ms)
    assert mpc.mean_ms <= 1.10 * sim.oracle().metrics(CFG.deadline_ms).mean_ms
    assert acc.accuracy > mpc.accuracy and acc.miss_rate <= 0.05
