"""Trace ids derived from `request_id`, the way Langfuse derives them.

`Langfuse.create_trace_id(seed=s)` is `sha256(s.encode("utf-8")).digest()[:16].hex()`
(langfuse 5.x `_client/client.py`); `derive_trace_id` is the same function, so a request's trace is
found in Langfuse and in any OTLP backend by its request id alone, and feedback scores land on it.

`RequestIdGenerator` is the tracer provider's `IdGenerator`: while `seeded(request_id)` is active
(only around the synchronous `start_span` of a request's root span) it returns the derived trace
id; otherwise, and for every span id, it defers to the wrapped generator (random by default,
a deterministic one in tests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

__all__ = ["RequestIdGenerator", "derive_trace_id", "derive_trace_id_hex"]

_SEED: ContextVar[int | None] = ContextVar("llmroute_trace_id_seed", default=None)


def derive_trace_id_hex(request_id: str) -> str:
    """32 lowercase hex chars; equal to `Langfuse.create_trace_id(seed=request_id)`."""
    return hashlib.sha256(request_id.encode("utf-8")).digest()[:16].hex()


def derive_trace_id(request_id: str) -> int:
    """The derived trace id as the integer OpenTelemetry uses."""
    return int.from_bytes(hashlib.sha256(request_id.encode("utf-8")).digest()[:16], "big")


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
