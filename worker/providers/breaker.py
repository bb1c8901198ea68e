"""Per-model circuit breaker: closed -> open after ``failure_threshold`` consecutive failed
calls; open for ``cooldown_s``; then half-open, letting ``half_open_max_probes`` calls through;
a probe's success closes it, a probe's failure opens it for another cooldown."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    half_open_max_probes: int = 1


class CircuitBreaker:
    """Every ``allow()`` that returns True must be followed by exactly one of
    ``record_success()``, ``record_failure()`` or ``release()`` (the call ended without a verdict,
    e.g. it was cancelled or failed for a reason that says nothing about the model)."""

    def __init__(
        self,
        settings: BreakerSettings = BreakerSettings(),
        clock: Callable[[], float] = time.monotonic,
    ):
        self._settings = settings
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self._settings.cooldown_s:
            self._state = "half_open"
            self._probes = 0
        return self._state

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes < self._settings.half_open_max_probes:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        self._state = "closed"
        self._failures = 0
        self._probes = 0

    def record_failure(self) -> None:
        if self._state == "half_open":
            self._open()
            return
        self._failures += 1
        if self._failures >= self._settings.failure_threshold:
            self._open()

    def release(self) -> None:
        if self._state == "half_open" and self._probes > 0:
            self._probes -= 1

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._failures = 0
        self._probes = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self._failures})"
