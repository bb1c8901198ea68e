from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from schemas.events import Candidate, DecisionInfo, Feedback, Message
from worker.config.telemetry import LangfuseConfig, TelemetryConfig
from worker.sim.langfuse import LangfuseReceiver
from worker.telemetry import build_tracer_provider

PRODUCER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01".encode()
SECRET = "sk-lf-TOPSECRET-0123456789abcdef"
PROMPT = "What is the capital of Australia? (private prompt text)"
ANSWER = "Canberra (private answer text)"

DECISION = DecisionInfo(
    router="mf",
    router_version="2026.1",
    policy="balanced",
    model="small",
    score=0.31,
    threshold=0.5,
    candidates=[
        Candidate(model="small", predicted_quality=0.72, est_cost_usd=0.0004),
        Candidate(model="strong", predicted_quality=0.91, est_cost_usd=0.012),
    ],
    reason="score 0.31 < threshold 0.50: the small model is predicted good enough",
    cache_hit=False,
    unfamiliar=0.42,
)
MESSAGES = [Message(role="system", content="Be brief."), Message(role="user", content=PROMPT)]


class CountingIds(IdGenerator):
    """Deterministic span ids (1, 2, 3, ...) and non-request trace ids."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._next)

    def generate_trace_id(self) -> int:
        return 0xFEED0000000000000000000000000000 + next(self._next)


def feedback(**kw: Any) -> Feedback:
    base: dict[str, Any] = {
        "schema_version": 1,
        "name": "correct",
        "value": True,
        "source": "task",
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "request_id": "req-1",
    }
    return Feedback(**(base | kw))


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(TelemetryConfig(), fallback_ids=CountingIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    r = LangfuseReceiver().start()
    yield r
    r.stop()


def langfuse_config(url: str, **kw) -> LangfuseConfig:
    """A fresh public key per test: the SDK keeps one client per key and process."""
    return LangfuseConfig(
        base_url=url,
        public_key=f"pk-lf-{uuid.uuid4().hex[:12]}",
        secret_key=SECRET,
        flush_interval_s=0.05,
        **kw,
    )
