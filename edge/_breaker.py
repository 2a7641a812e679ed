"""A small circuit breaker: stop sending to an endpoint that keeps failing, try again later.

::

    closed --(failures consecutive failures)--> open --(reset_s later)--> half-open
    half-open --(its one trial succeeds)--> closed;  --(it fails)--> open again

While the breaker is open the client answers every input locally at once, instead of waiting for
calls that are bound to fail. A half-open trial that never reports back is given up after ``reset_s``
and another one is let through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Thread-safe circuit breaker.

    Args:
        failures: consecutive failures that open it.
        reset_s: how long it stays open before letting one trial through.
        clock: monotonic time in seconds.
    """

    def __init__(
        self, failures: int = 3, reset_s: float = 2.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1 or reset_s < 0:
            raise ValueError(f"need failures >= 1 and reset_s >= 0, got {failures} and {reset_s}")
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half-open" if now - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether a remote call may go out now (in half-open, only the one trial may)."""
        with self._lock:
            now = self._clock()
            state = self._state(now)
            if state == "closed":
                return True
            if state == "open":
                return False
            if self._trial_at is not None and now - self._trial_at < self.reset_s:
                return False
            self._trial_at = now
            return True

    def record_success(self) -> None:
        with self._lock:
            self._count = 0
            self._opened_at = self._trial_at = None

    def record_failure(self) -> bool:
        """Count a failure; returns True when this failure opened (or re-opened) the breaker."""
        with self._lock:
            now = self._clock()
            self._count += 1
            if self._opened_at is not None:
                if self._state(now) == "open":
                    return False
                self._opened_at, self._trial_at = now, None
                return True
            if self._count >= self.failures:
                self._opened_at = now
                return True
            return False
