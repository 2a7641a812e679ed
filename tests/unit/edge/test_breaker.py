"""The circuit breaker's state machine, on a manual clock."""

from __future__ import annotations

import pytest

from splitserve.edge import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    b = CircuitBreaker(3, 1.0, clock=Clock())
    assert not b.record_failure() and not b.record_failure()
    b.record_success()
    assert not b.record_failure() and not b.record_failure()
    assert b.allow() and b.state == "closed"
    assert b.record_failure()
    assert b.state == "open" and not b.allow()
    assert not b.record_failure()  # late failures of requests already in flight change nothing


def test_half_open_lets_one_trial_through() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 2.0, clock=clock)
    b.record_failure()
    clock.now = 1.9
    assert not b.allow()
    clock.now = 2.0
    assert b.state == "half-open"
    assert b.allow() and not b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow()


def test_a_failed_trial_reopens_for_a_full_period() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 2.0, clock=clock)
    b.record_failure()
    clock.now = 2.5
    assert b.allow()
    assert b.record_failure()
    assert b.state == "open"
    clock.now = 4.4
    assert not b.allow()
    clock.now = 4.5
    assert b.allow()


def test_a_lost_trial_is_given_up_after_the_period() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 1.0, clock=clock)
    b.record_failure()
    clock.now = 1.0
    assert b.allow()
    clock.now = 1.5
    assert not b.allow()
    clock.now = 2.0
    assert b.allow()


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
