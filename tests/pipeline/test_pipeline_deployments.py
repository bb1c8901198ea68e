"""The worker's request path with several deployments per model and latency budgets: the
deployment and its reason on the `chat` span, the response and the decision event; models expected
to miss `max_latency_ms` are not chosen; a tight budget goes to the fastest. The provider client
runs on a fake clock that each answer advances (no timing is measured for real)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from routers.artifact import load_artifact
from schemas import RoutingOptions
from tests.providers.conftest import FakeClock
from tests.worker.support import ROWS, SIM_KEYS, request_event, worker_config, worker_config_data
from worker.config.models import STRONG_MODEL, WEAK_MODEL
from worker.config.telemetry import TelemetryConfig
from worker.kafka.records import Handled, RecordInfo
from worker.pipeline.core import Pipeline
from worker.pipeline.routing import RoutingCore
from worker.providers import CompletionRequest, ModelClient
from worker.telemetry import Tracing, build_tracer_provider

RECORD = RecordInfo("unit.requests", 0, 0, None, [], None)
SECONDS = {"west.test": 0.05, "east.test": 2.0, "weak.test": 0.2}  # answer time per host


def _handler(clock: FakeClock, down: set[str]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in down:
            return httpx.Response(503, json={"error": {"message": "down", "code": "overloaded"}})
        clock.now += SECONDS[host]
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "model": "m",
                "choices": [{"message": {"content": f"from {host}"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 12},
            },
        )

    return handle


@pytest.fixture
def spans() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(TelemetryConfig())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _pipeline(artifact: Path, provider: Any, down: set[str], **sections: Any) -> Pipeline:
    topics = {"requests": "unit.requests"}
    models = dict(worker_config_data("127.0.0.1:1", topics, artifact, "http://x")["models"])
    models[STRONG_MODEL] = {
        **models[STRONG_MODEL],
        "routing_strategy": "latency-based-routing",
        "deployments": [
            {"name": "west", "base_url": "http://west.test/v1"},
            {"name": "east", "base_url": "http://east.test/v1", "rpm": 1000},
        ],
    }
    models[WEAK_MODEL] = {**models[WEAK_MODEL], "base_url": "http://weak.test/v1"}
    config = worker_config("127.0.0.1:1", topics, artifact, "http://x", models=models, **sections)
    catalogue = config.models
    clock = FakeClock()
    client = ModelClient(
        catalogue,
        env=SIM_KEYS,
        http_transport=httpx.MockTransport(_handler(clock, down)),
        clock=clock,
        sleep=clock.sleep,
    )
    core = RoutingCore(config, load_artifact(artifact), catalogue)
    return Pipeline(core, client, tracing=Tracing(TelemetryConfig(), tracer_provider=provider))


async def test_the_deployment_and_its_reason_reach_the_span_response_and_event(artifact, spans):
    provider, exporter = spans
    pipeline = _pipeline(artifact, provider, down={"west.test"})
    request = request_event(ROWS[0], 1, routing=RoutingOptions(allowed_models=[STRONG_MODEL]))
    handled = await pipeline.handle(request, RECORD)
    assert isinstance(handled, Handled)
    response, event = handled.response, handled.decision
    assert response.status == "ok" and response.model == STRONG_MODEL
    assert [(a.deployment, a.status, a.http_status) for a in response.attempts] == [
        ("west", "error", 503),
        ("east", "ok", 200),
    ]
    assert event is not None and response.decision is not None
    for info in (event.decision, response.decision):
        assert info.deployment == "east"
        assert info.deployment_reason is not None
        assert "failed over from west (OverloadedError)" in info.deployment_reason
    (chat,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")]
    assert chat.attributes["llm_router.deployment"] == "east"
    assert "latency-based-routing" in chat.attributes["llm_router.deployment_reason"]
    deployments = [e.attributes.get("llm_router.attempt.deployment") for e in chat.events]
    assert deployments == ["west", "east"]


async def test_single_deployment_models_answer_as_before(artifact, spans):
    provider, _ = spans
    pipeline = _pipeline(artifact, provider, down=set())
    request = request_event(ROWS[0], 2, routing=RoutingOptions(allowed_models=[WEAK_MODEL]))
    handled = await pipeline.handle(request, RECORD)
    assert isinstance(handled, Handled) and handled.response.model == WEAK_MODEL
    assert handled.response.decision is not None
    assert handled.response.decision.deployment is None
    assert [a.deployment for a in handled.response.attempts] == [None]


async def test_a_latency_budget_excludes_models_expected_to_miss_it(artifact, spans):
    provider, _ = spans
    pipeline = _pipeline(
        artifact,
        provider,
        down={"west.test"},
        policies={"default": {"kind": "quality_target", "quality_target": 0.0}},
    )
    client = pipeline.client
    for model in (STRONG_MODEL, WEAK_MODEL):  # measured: strong ~2000 ms (east), weak ~200 ms
        await client.complete(CompletionRequest.from_prompt("warm up", max_tokens=64), [model])
    expected = client.expected_latency_ms([STRONG_MODEL, WEAK_MODEL], 64)
    assert expected[STRONG_MODEL] > 1000 > expected[WEAK_MODEL]

    ask = RoutingOptions(allowed_models=[STRONG_MODEL, WEAK_MODEL], max_latency_ms=1000)
    handled = await pipeline.handle(request_event(ROWS[1], 3, routing=ask), RECORD)
    assert isinstance(handled, Handled) and handled.response.decision is not None
    info = handled.response.decision
    assert info.model == WEAK_MODEL and "latency excluded" in info.reason
    latencies = {c.model: c.est_latency_ms for c in info.candidates}
    assert latencies[STRONG_MODEL] is not None and latencies[STRONG_MODEL] > 1000

    tight = RoutingOptions(allowed_models=[STRONG_MODEL, WEAK_MODEL], max_latency_ms=250)
    handled = await pipeline.handle(request_event(ROWS[1], 4, routing=tight), RECORD)
    assert isinstance(handled, Handled) and handled.response.decision is not None
    assert handled.response.decision.policy == "latency_tight"
    assert handled.response.model == WEAK_MODEL


async def test_a_tenant_default_budget_applies_and_a_request_narrows_it(artifact, spans):
    provider, _ = spans
    pipeline = _pipeline(artifact, provider, down=set(), tenants={"acme": {"max_latency_ms": 5000}})
    loose = pipeline.core.resolve(request_event(ROWS[0], 5))
    assert loose.options.max_latency_ms == 5000
    narrow = pipeline.core.resolve(
        request_event(ROWS[0], 6, routing=RoutingOptions(max_latency_ms=800))
    )
    assert narrow.options.max_latency_ms == 800
    wider = pipeline.core.resolve(
        request_event(ROWS[0], 7, routing=RoutingOptions(max_latency_ms=9000))
    )
    assert wider.options.max_latency_ms == 5000
