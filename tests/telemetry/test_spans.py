"""Spans from the real SDK (InMemorySpanExporter), deterministic ids: names, kinds, attributes,
the producer link, the trace id derived from request_id, masking, errors, sampling."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from schemas.events import Attempt
from schemas.trace import trace_id_hex
from tests.telemetry.conftest import (
    ANSWER,
    DECISION,
    MESSAGES,
    PRODUCER_SPAN,
    PRODUCER_TRACE,
    PROMPT,
    TRACEPARENT,
)
from worker.config.telemetry import LangfuseConfig, TelemetryConfig, TelemetryConfigError
from worker.telemetry import MASKED, RequestSpan, Tracing, build_tracer_provider

Memory = tuple[TracerProvider, InMemorySpanExporter]


def one_request(
    tracing: Tracing,
    request_id: str | None = "req-1",
    headers: list[tuple[str, bytes]] | None = None,
) -> RequestSpan:
    with tracing.process_span(
        "llm.requests",
        3,
        1042,
        b"req-1",
        headers if headers is not None else [("traceparent", TRACEPARENT)],
        "llmroute",
        request_id,
    ) as request:
        request.set_request(tenant="acme", request_id=request_id, mode="interactive")
        with tracing.route_span() as route:
            route.set_decision(DECISION)
        with tracing.chat_span(
            "small",
            "openai",
            "gpt-4o-mini",
            max_tokens=256,
            temperature=0.2,
            top_p=0.9,
            input_messages=MESSAGES,
        ) as chat:
            chat.set_response(
                response_model="gpt-4o-mini-2024-07-18",
                input_tokens=120,
                output_tokens=8,
                cached_tokens=100,
                cost_usd=0.000123,
                finish_reason="stop",
                output_text=ANSWER,
                response_id="chatcmpl-1",
            )
        request.set_response(status="ok", model="small", cost_usd=0.000123)
    return request


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_a_request_makes_process_route_chat_with_a_trace_id_from_request_id(memory: Memory):
    from langfuse import Langfuse

    provider, exporter = memory
    request = one_request(Tracing(TelemetryConfig(), tracer_provider=provider))
    spans = by_name(exporter)
    assert set(spans) == {"process llm.requests", "route", "chat small"}
    process, route, chat = spans["process llm.requests"], spans["route"], spans["chat small"]

    expected = Langfuse.create_trace_id(seed="req-1")
    assert request.trace_id == expected == trace_id_hex("req-1")
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {expected}
    # Deterministic span ids from the injected generator; the tree is root -> (route, chat).
    assert process.parent is None
    assert route.parent.span_id == chat.parent.span_id == process.context.span_id
    assert [process.context.span_id, route.context.span_id, chat.context.span_id] == [1, 2, 3]

    assert (process.kind, route.kind, chat.kind) == (
        SpanKind.CONSUMER,
        SpanKind.INTERNAL,
        SpanKind.CLIENT,
    )
    assert [
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in process.links
    ] == [(PRODUCER_TRACE, PRODUCER_SPAN)]
    assert {k: v for k, v in process.attributes.items() if k.startswith("messaging.")} == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "llm.requests",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 1042,
        "messaging.kafka.message.key": "req-1",
        "messaging.consumer.group.name": "llmroute",
    }
    assert process.attributes["llm_router.status"] == "ok"

    r = route.attributes
    assert (r["llm_router.router"], r["llm_router.router_version"], r["llm_router.policy"]) == (
        "mf",
        "2026.1",
        "balanced",
    )
    assert (r["llm_router.model"], r["llm_router.score"], r["llm_router.threshold"]) == (
        "small",
        0.31,
        0.5,
    )
    assert r["llm_router.reason"] == DECISION.reason
    assert r["llm_router.cache_hit"] is False
    assert r["llm_router.unfamiliar"] == 0.42
    assert json.loads(r["llm_router.candidates"]) == [
        {"model": "small", "predicted_quality": 0.72, "est_cost_usd": 0.0004},
        {"model": "strong", "predicted_quality": 0.91, "est_cost_usd": 0.012},
    ]

    c = chat.attributes
    assert {k: v for k, v in c.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 256,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 8,
        "gen_ai.usage.cache_read.input_tokens": 100,
    }
    assert c["llm_router.cost_usd"] == 0.000123
    # What makes it a Langfuse generation with model, usage, cost, I/O and routing metadata.
    assert c["langfuse.observation.type"] == "generation"
    assert c["langfuse.observation.model.name"] == "gpt-4o-mini-2024-07-18"
    assert json.loads(c["langfuse.observation.usage_details"]) == {
        "input": 20,
        "input_cached_tokens": 100,
        "output": 8,
        "total": 128,
    }
    assert json.loads(c["langfuse.observation.cost_details"]) == {"total": 0.000123}
    assert json.loads(c["langfuse.observation.model.parameters"]) == {
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
    }
    assert json.loads(c["langfuse.observation.input"])[1] == {"role": "user", "content": PROMPT}
    assert c["langfuse.observation.output"] == ANSWER
    assert c["langfuse.observation.metadata.router"] == "mf"  # plain strings, not JSON
    assert c["langfuse.observation.metadata.routed_model"] == "small"
    assert json.loads(c["langfuse.observation.metadata.threshold"]) == 0.5
    # Trace-level attributes ride on the root and the generation (not the cheap route span).
    assert "user.id" not in route.attributes
    for span in (process, chat):
        assert span.attributes["user.id"] == "acme"
        assert span.attributes["langfuse.trace.name"] == "llmroute.request"
        assert span.attributes["langfuse.trace.tags"] == ("tenant:acme", "mode:interactive")
        assert span.attributes["langfuse.trace.metadata.request_id"] == "req-1"


def test_the_same_request_id_always_gives_the_same_trace(memory: Memory):
    provider, exporter = memory
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
    first, again = one_request(tracing), one_request(tracing)
    other = one_request(tracing, request_id="req-2")
    assert first.trace_id == again.trace_id == trace_id_hex("req-1")
    assert other.trace_id == trace_id_hex("req-2") != first.trace_id
    assert len({s.context.span_id for s in exporter.get_finished_spans()}) == 9


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("traceparent", b"not-a-traceparent")],
        [("traceparent", b"00-00000000000000000000000000000000-b7ad6b7169203331-01")],
        [("other", b"x")],
    ],
)
def test_no_or_broken_traceparent_means_no_link(memory: Memory, headers):
    provider, exporter = memory
    one_request(Tracing(TelemetryConfig(), tracer_provider=provider), headers=headers)
    assert list(by_name(exporter)["process llm.requests"].links) == []


def test_traceparent_header_name_is_case_insensitive(memory: Memory):
    provider, exporter = memory
    one_request(
        Tracing(TelemetryConfig(), tracer_provider=provider),
        headers=[("Traceparent", TRACEPARENT), ("tracestate", b"vendor=1")],
    )
    (link,) = by_name(exporter)["process llm.requests"].links
    assert f"{link.context.trace_id:032x}" == PRODUCER_TRACE
    assert link.context.trace_state.get("vendor") == "1"


def test_without_request_id_the_trace_id_is_random_but_reported(memory: Memory):
    provider, exporter = memory
    request = one_request(Tracing(TelemetryConfig(), tracer_provider=provider), request_id=None)
    process = by_name(exporter)["process llm.requests"]
    assert request.trace_id == f"{process.context.trace_id:032x}"
    assert request.trace_id.startswith("feed")  # from the injected fallback generator


def test_masking_keeps_prompts_and_outputs_off_every_span(memory: Memory):
    provider, exporter = memory
    config = TelemetryConfig(mask_prompts=True, mask_outputs=True)
    tracing = Tracing(config, tracer_provider=provider)
    with tracing.process_span("t", 0, 0, None, [], "g", "req-1") as request:
        request.set_request(tenant="acme", input_messages=MESSAGES)
        with tracing.chat_span("small", "openai", "gpt-4o-mini", input_messages=MESSAGES) as chat:
            chat.set_response(
                response_model=None, input_tokens=1, output_tokens=1, output_text=ANSWER
            )
        request.set_response(status="ok", output_text=ANSWER)
    dump = repr([s.attributes for s in exporter.get_finished_spans()])
    assert "private" not in dump
    chat_attrs = by_name(exporter)["chat small"].attributes
    assert json.loads(chat_attrs["langfuse.observation.input"])[1] == {
        "role": "user",
        "content": MASKED,
    }
    assert chat_attrs["langfuse.observation.output"] == MASKED


def test_an_exception_in_a_span_is_recorded_with_error_type_and_reraised(memory: Memory):
    provider, exporter = memory
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)

    class RateLimitError(Exception):
        pass

    with pytest.raises(RateLimitError):  # noqa: SIM117
        with tracing.process_span("t", 0, 0, None, [], "g", "req-1"):
            with tracing.chat_span("small", "openai", "gpt-4o-mini"):
                raise RateLimitError("429 for key sk-proj-abcdefghijklmnopqrstuvwxyz")
    spans = by_name(exporter)
    for span in spans.values():
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "RateLimitError"
        assert span.attributes["langfuse.observation.level"] == "ERROR"
        assert "sk-proj" not in span.status.description
    assert [e.name for e in spans["chat small"].events] == ["exception"]


def test_handled_errors_mark_the_spans(memory: Memory):
    provider, exporter = memory
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
    with tracing.process_span("t", 0, 0, None, [], "g", "req-1") as request:
        with tracing.chat_span("small", "openai", "gpt-4o-mini") as chat:
            chat.set_error("ProviderTimeoutError", "read timeout")
        request.set_response(status="error", error_type="DeadlineExceededError")
    spans = by_name(exporter)
    assert spans["chat small"].attributes["error.type"] == "ProviderTimeoutError"
    assert spans["chat small"].status.description == "read timeout"
    assert spans["process t"].attributes["error.type"] == "DeadlineExceededError"


def test_chat_span_takes_an_explicit_decision_and_works_without_a_request(memory: Memory):
    provider, exporter = memory
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
    with tracing.chat_span("small", "openai", "m", decision=DECISION):
        pass
    chat = by_name(exporter)["chat small"]
    assert chat.attributes["langfuse.observation.metadata.policy"] == "balanced"


def test_sampling_is_decided_by_request_id():
    provider = build_tracer_provider(TelemetryConfig(sample_ratio=0.5))
    tracing = Tracing(TelemetryConfig(sample_ratio=0.5), tracer_provider=provider)

    def sampled(rid: str) -> bool:
        with tracing.process_span("t", 0, 0, None, [], "g", rid) as request:
            assert request.trace_id == trace_id_hex(rid)
            return request.span.is_recording()

    ids = [f"req-{i}" for i in range(400)]
    first = [sampled(r) for r in ids]
    assert first == [sampled(r) for r in ids]
    assert 140 < sum(first) < 260


def test_with_nothing_configured_nothing_is_recorded_but_trace_ids_are_derived():
    tracing = Tracing(TelemetryConfig())
    assert tracing.provider is None
    request = one_request(tracing)
    assert request.trace_id == trace_id_hex("req-1")
    assert not request.span.is_recording()
    assert one_request(tracing, request_id=None).trace_id is None
    assert tracing.shutdown(1) is True


def test_a_foreign_provider_is_refused():
    with pytest.raises(TelemetryConfigError, match="RequestIdGenerator"):
        Tracing(TelemetryConfig(), tracer_provider=TracerProvider())


def test_config_keeps_secrets_out_of_reprs_and_errors():
    config = TelemetryConfig(
        otlp_endpoint="http://collector:4318/v1/traces",
        otlp_headers=(("authorization", "Bearer abcdefghijklmnop"),),
        langfuse=LangfuseConfig(public_key="pk-lf-1", secret_key="sk-lf-SECRETVALUE"),
    )
    assert "SECRETVALUE" not in repr(config) and "abcdefghijklmnop" not in repr(config)
    lf = LangfuseConfig(secret_key_env="MY_LF_SECRET")
    with pytest.raises(TelemetryConfigError, match="LANGFUSE_PUBLIC_KEY"):
        lf.resolve_keys({})
    with pytest.raises(TelemetryConfigError, match="MY_LF_SECRET"):
        lf.resolve_keys({"LANGFUSE_PUBLIC_KEY": "pk"})
    assert lf.resolve_keys({"LANGFUSE_PUBLIC_KEY": "pk", "MY_LF_SECRET": "sk"}) == ("pk", "sk")
    with pytest.raises(TelemetryConfigError):
        TelemetryConfig(sample_ratio=1.5)


def test_importing_the_package_starts_nothing_and_skips_the_langfuse_sdk():
    code = (
        "import sys, threading, worker.telemetry, worker.metrics, worker.logs;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'langfuse'),"
        " threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] 1"


def test_attempts_become_events_and_exception_events_are_scrubbed(memory: Memory):
    provider, exporter = memory
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
    attempts = [
        Attempt(
            model="small",
            provider="openai",
            status="error",
            latency_ms=30.0,
            http_status=429,
            error_type="RateLimitError",
            retry=1,
        ),
        Attempt(model="strong", provider="openai", status="ok", latency_ms=410.0),
    ]
    with pytest.raises(ValueError), tracing.chat_span("small", "openai", "m") as chat:
        chat.add_attempts(attempts)
        raise ValueError("bad key sk-proj-abcdefghijklmnopqrstuvwxyz")
    (span,) = exporter.get_finished_spans()
    events = {e.name: e for e in span.events}
    assert [e.name for e in span.events] == ["attempt", "attempt", "exception"]
    first: Any = span.events[0].attributes
    assert (first["llm_router.attempt.model"], first["error.type"]) == ("small", "RateLimitError")
    assert first["llm_router.attempt.http_status"] == 429 and first["llm_router.attempt.retry"] == 1
    exc: Any = events["exception"].attributes
    assert exc["exception.type"] == "ValueError"
    assert "sk-proj" not in exc["exception.message"] + exc["exception.stacktrace"]
    assert "[REDACTED]" in exc["exception.stacktrace"]


def test_config_from_the_toml_table():
    config = TelemetryConfig.from_mapping(
        {
            "otlp_endpoint": "http://collector:4318/v1/traces",
            "otlp_headers": {"x-token": "abc"},
            "mask_prompts": True,
            "sample_ratio": 0.25,
            "langfuse": {"base_url": "http://langfuse:3000", "flush_interval_s": 0.5},
            "export": {"max_queue_size": 4096},
        }
    )
    assert config.otlp_headers == (("x-token", "abc"),)
    assert config.langfuse == LangfuseConfig(base_url="http://langfuse:3000", flush_interval_s=0.5)
    assert config.export.max_queue_size == 4096 and config.sample_ratio == 0.25
    assert TelemetryConfig.from_mapping({}) == TelemetryConfig()
    with pytest.raises(TelemetryConfigError, match=r"\[telemetry.langfuse\]: secret"):
        TelemetryConfig.from_mapping({"langfuse": {"secret": "x"}})
    with pytest.raises(TelemetryConfigError, match="sample_ratio"):
        TelemetryConfig.from_mapping({"sample_ratio": 2})
    with pytest.raises(TelemetryConfigError, match="Expected `int`"):
        TelemetryConfig.from_mapping({"export": {"max_queue_size": "big"}})


async def test_concurrent_requests_in_tasks_keep_their_own_trees(memory: Memory):
    provider, exporter = memory
    tracing = Tracing(TelemetryConfig(), tracer_provider=provider)

    async def handle(i: int) -> None:
        with tracing.process_span("t", 0, i, None, [], "g", f"req-{i}") as request:
            request.set_request(tenant=f"tenant-{i}")
            await asyncio.sleep(0.001 * (i % 5))
            with tracing.route_span(DECISION):
                pass
            await asyncio.sleep(0.001 * (7 - i % 7))
            with tracing.chat_span("small", "openai", "m") as chat:
                await asyncio.sleep(0)
                chat.set_response(response_model="m", input_tokens=1, output_tokens=1)

    await asyncio.gather(*(handle(i) for i in range(40)))
    spans: Any = exporter.get_finished_spans()
    roots = {s.context.span_id: s for s in spans if s.parent is None}
    assert len(roots) == 40 and len(spans) == 120
    for span in spans:
        if span.parent is None:
            continue
        root = roots[span.parent.span_id]
        assert span.context.trace_id == root.context.trace_id
        offset = root.attributes["messaging.kafka.offset"]
        assert f"{span.context.trace_id:032x}" == trace_id_hex(f"req-{offset}")
        if span.name == "chat small":
            assert span.attributes["user.id"] == f"tenant-{offset}"
