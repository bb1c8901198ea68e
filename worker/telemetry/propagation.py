"""W3C trace context on the records the worker writes (responses, dead letters, batch answers).

Every such record carries `traceparent` (and `tracestate` when the span has one), so a consumer
downstream continues the request's trace:

- inside a recording span (the request's `process` span, a batch answer's span) it is that span's
  context, as OpenTelemetry's propagator writes it;
- when nothing records (tracing off, or the request not sampled) it names the request's trace id
  (derived from `request_id`, the same id as the response's `trace_id`), a fresh span id and the
  flags `00` (not sampled): the record is still joinable to its trace by id.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["CONTEXT_HEADERS", "context_headers", "record_context_headers"]

CONTEXT_HEADERS: Final = ("traceparent", "tracestate")
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_RANDOM: Final = random.Random()


def _span_id_hex() -> str:
    return f"{_RANDOM.getrandbits(64) or 1:016x}"


def context_headers(trace_id: str | None = None) -> list[tuple[str, bytes]]:
    """`traceparent` (+ `tracestate`) of the current span, else one naming `trace_id`.

    With neither a valid current span nor `trace_id`, a new (unsampled) trace id is made.
    """
    if trace.get_current_span().get_span_context().is_valid:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return [(k, carrier[k].encode("ascii")) for k in CONTEXT_HEADERS if carrier.get(k)]
    tid = trace_id if trace_id is not None else f"{_RANDOM.getrandbits(128) or 1:032x}"
    return [("traceparent", f"00-{tid}-{_span_id_hex()}-00".encode("ascii"))]


def record_context_headers(
    headers: Sequence[tuple[str, bytes]], trace_id: str | None = None
) -> list[tuple[str, bytes]]:
    """`headers` without any trace context of their own, plus `context_headers(trace_id)`."""
    kept = [(k, v) for k, v in headers if k.lower() not in CONTEXT_HEADERS]
    return kept + context_headers(trace_id)
