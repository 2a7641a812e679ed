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
from splitserve.orchestrator.traces import (
    constant_trace,
    on_off_trace,
    queueing_trace,
    step_trace,
    with_queue_cycle,
)
from splitserve.orchestrator.types import LOCAL_ID, Observation, ProbeResult, SplitDecision

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


class _Pinger:
    """Runs everything locally and asks for a ping beside every request; keeps each ping's outcome."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.pongs: list[tuple[float, ProbeResult]] = []

    def decide(self, *, deadline_ms: float | None = None, remote_budget_ms: float | None = None) -> SplitDecision:
        return SplitDecision("local", None, None, 0.0, 0.0, "test", LOCAL_ID, probe_bytes=0)

    def observe(self, obs: Observation) -> None:
        pass

    def observe_probe(self, result: ProbeResult) -> None:
        self.pongs.append((self.clock(), result))


@pytest.mark.parametrize("reports", [True, False])
def test_a_ping_carries_the_queue_it_finds_at_the_endpoint(example: Profile, reports: bool) -> None:
    trace = queueing_trace(hold_s=2.0)
    pingers: list[_Pinger] = []

    def build(clock: Callable[[], float]) -> _Pinger:
        pingers.append(_Pinger(clock))
        return pingers[0]

    sim = Simulation(trace, example, SimConfig(server_reports=reports))
    sim.orchestrate("ping", build)
    (pinger,) = pingers
    assert len(pinger.pongs) > 0.9 * len(sim.t_s)
    for replied_s, pong in pinger.pongs:
        reached_s = replied_s - float(trace.rtt_ms[0]) / 2000.0  # the reply's half of the round trip
        expected = float(trace.queue_ms[trace.index(reached_s)]) if reports else None
        assert pong.queue_ms == expected


def test_queue_reports_stop_the_thrash_on_a_queue_cycle(example: Profile) -> None:
    """Targets of issue 17 on a short queue cycle (0/30/120 ms, 5 s each) over a steady link."""
    sim = Simulation(with_queue_cycle(constant_trace(duration_s=60.0)), example, CFG)
    run, oracle = sim.orchestrate("o", factory(example)), sim.oracle()
    meets = oracle.latency_ms <= CFG.deadline_ms
    assert run.metrics(CFG.deadline_ms).mean_ms <= 1.05 * oracle.metrics(CFG.deadline_ms).mean_ms
    assert np.mean(run.latency_ms[meets] > CFG.deadline_ms) <= 0.02
    assert 10.0 * run.switches_per_100 <= 20.0
