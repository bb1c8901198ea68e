"""`[batch]`: requests answered through the providers' Batch APIs."""

from __future__ import annotations

from typing import Literal

from worker.config.base import Section

__all__ = ["BatchSettings"]


class BatchSettings(Section, frozen=True, kw_only=True):
    """Requests routed with `mode: "batch"` (or a tenant whose `mode` is "batch") go through the
    providers' Batch APIs: accumulated per model, flushed by count, bytes or age, and tracked as
    durable jobs on the `batch_jobs` topic (see worker.batch)."""

    enabled: bool = True  # False: batch requests are answered interactively
    flush_requests: int = 10_000  # per (provider, model); capped by the provider's limit
    flush_bytes: int = 50 * 1024 * 1024  # capped by the provider's limit
    flush_age_s: float = 60.0  # the oldest request waits at most this long before submission
    poll_initial_s: float = 5.0
    poll_max_s: float = 300.0
    poll_multiplier: float = 1.5
    on_item_failure: Literal["interactive", "error"] = "interactive"  # failed/expired items
    max_open_jobs: int = 1_000  # per member; more flushes wait (backpressure)

    def __post_init__(self) -> None:
        if self.flush_requests < 1 or self.flush_bytes < 1 or self.flush_age_s <= 0:
            raise ValueError("batch flush_requests, flush_bytes and flush_age_s must be > 0")
        if self.poll_initial_s <= 0 or self.poll_max_s < self.poll_initial_s:
            raise ValueError("batch poll_initial_s must be > 0 and <= poll_max_s")
