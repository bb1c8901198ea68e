"""Traces of the routing worker: OpenTelemetry spans per request, exported over OTLP and to
Langfuse through its OpenTelemetry-based SDK (see `tracing.py` for the span tree).

Importing this package starts nothing and does not import the Langfuse SDK; `Tracing(config)`
builds the export pipelines.
"""

from worker.telemetry.ids import RequestIdGenerator, derive_trace_id
from worker.telemetry.tracing import (
    MASKED,
    SCOPE_NAME,
    ChatSpan,
    RequestSpan,
    RouteSpan,
    Tracing,
    build_tracer_provider,
)

__all__ = [
    "MASKED",
    "SCOPE_NAME",
    "ChatSpan",
    "RequestIdGenerator",
    "RequestSpan",
    "RouteSpan",
    "Tracing",
    "build_tracer_provider",
    "derive_trace_id",
]
