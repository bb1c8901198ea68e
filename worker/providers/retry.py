"""Retries the way the official OpenAI/Anthropic SDKs do them, plus a per-request deadline.

As ``openai-python`` / ``anthropic-sdk-python`` ``_base_client.py``: retry connection errors,
timeouts, 408, 409, 429 and 5xx (Anthropic's 529 is a 5xx); ``x-should-retry: true|false``
overrides the status; the wait is ``retry-after-ms`` or ``retry-after`` when the server sends
one in (0, 60] s, else ``min(0.5 * 2**n, 8) * (1 - 0.25 * random())``; 2 retries by default.

Where we differ, on purpose: ``insufficient_quota`` (a 429 that never clears by waiting) is never
retried, even with ``x-should-retry: true``; a ``retry-after`` above the cap ends the tries of
this model (the fallback chain moves on) instead of being ignored; no wait or attempt may pass the
request's deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from worker.providers.errors import (
    DeadlineExceededError,
    InsufficientQuotaError,
    ProviderError,
    ProviderStatusError,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0
    jitter_fraction: float = 0.25


class Deadline:
    """An absolute deadline on an injected monotonic clock."""

    __slots__ = ("_at", "_clock")

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._at = clock() + timeout_s

    def remaining_s(self) -> float:
        return self._at - self._clock()

    @property
    def expired(self) -> bool:
        return self.remaining_s() <= 0.0


def is_retriable(error: ProviderError) -> bool:
    if isinstance(error, InsufficientQuotaError):
        return False
    if isinstance(error, ProviderStatusError) and error.should_retry_header is not None:
        return error.should_retry_header
    return error.retriable


def retry_delay_s(
    policy: RetryPolicy, retries_done: int, error: ProviderError, rand: Callable[[], float]
) -> float | None:
    """Seconds to wait before the next try, or None when the server asks for more than the cap."""
    retry_after = error.retry_after_s if isinstance(error, ProviderStatusError) else None
    if retry_after is not None and retry_after > 0:
        return retry_after if retry_after <= policy.max_retry_after_s else None
    backoff = min(policy.initial_delay_s * 2.0**retries_done, policy.max_delay_s)
    return backoff * (1.0 - policy.jitter_fraction * rand())


AttemptHook = Callable[[int, ProviderError | None, float], None]


async def call_with_retries(
    call: Callable[[float], Awaitable[T]],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    on_attempt: AttemptHook | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``call(timeout_s)`` until it succeeds, fails for good, or the deadline ends.

    ``on_attempt(retry_index, error_or_None, latency_ms)`` is told about every try."""
    retries = 0
    while True:
        remaining = deadline.remaining_s()
        if remaining <= 0:
            raise DeadlineExceededError("request deadline passed before the call")
        started = clock()
        try:
            result = await call(remaining)
        except ProviderError as exc:
            if on_attempt is not None:
                on_attempt(retries, exc, (clock() - started) * 1000.0)
            if retries >= policy.max_retries or not is_retriable(exc):
                raise
            delay = retry_delay_s(policy, retries, exc, rand)
            if delay is None or delay >= deadline.remaining_s():
                raise
            await sleep(delay)
            retries += 1
            continue
        if on_attempt is not None:
            on_attempt(retries, None, (clock() - started) * 1000.0)
        return result
