"""Trace ids derived from the request, the way Langfuse derives them (the rule is
`schemas.trace`: Langfuse's `create_trace_id(seed=...)` of the request's tenant-scoped key), so a
request's trace is found in Langfuse and in any OTLP backend, and feedback scores land on it.

`RequestIdGenerator` is the tracer provider's `IdGenerator`: while `seeded(request_id)` is active
(only around the synchronous `start_span` of a request's root span) it returns the derived trace
id; otherwise, and for every span id, it defers to the wrapped generator (random by default,
a deterministic one in tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from schemas.trace import trace_id_hex

__all__ = ["RequestIdGenerator", "derive_trace_id"]

_SEED: ContextVar[int | None] = ContextVar("llmroute_trace_id_seed", default=None)


def derive_trace_id(seed: str) -> int:
    """The trace id of `seed` (`schemas.trace.trace_id_hex`) as the integer OpenTelemetry uses."""
    return int(trace_id_hex(seed), 16)


class RequestIdGenerator(IdGenerator):
    """Derived trace ids for request roots, the wrapped generator for everything else."""

    def __init__(self, fallback: IdGenerator | None = None) -> None:
        self._fallback = fallback if fallback is not None else RandomIdGenerator()

    @staticmethod
    @contextmanager
    def seeded(request_id: str | None) -> Iterator[None]:
        """Root spans started inside get the trace id derived from `request_id` (None: random)."""
        token = _SEED.set(derive_trace_id(request_id) if request_id else None)
        try:
            yield
        finally:
            _SEED.reset(token)

    def generate_span_id(self) -> int:
        return self._fallback.generate_span_id()

    def generate_trace_id(self) -> int:
        seed = _SEED.get()
        return seed if seed is not None else self._fallback.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        # A derived id is a hash, not random in the W3C level-2 sense; say so.
        return _SEED.get() is None and self._fallback.is_trace_id_random()
