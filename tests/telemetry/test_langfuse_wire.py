"""What the Langfuse SDK, our score client and our own OTLP exporter put on the wire, read by a
local stand-in of Langfuse's OTLP/HTTP trace endpoint and scores endpoint that refuses what the
real servers refuse (worker/sim/langfuse.py); score bodies are also checked against the
vendored fragment of Langfuse's API definition (fixtures/langfuse_scores_api.json)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from schemas.trace import trace_id_hex
from tests.telemetry.conftest import (
    ANSWER,
    DECISION,
    MESSAGES,
    PRODUCER_SPAN,
    PRODUCER_TRACE,
    PROMPT,
    SECRET,
    TRACEPARENT,
    feedback,
    langfuse_config,
)
from worker.config.telemetry import TelemetryConfig, TelemetryConfigError
from worker.sim.langfuse import LangfuseReceiver
from worker.telemetry import Tracing
from worker.telemetry.scores import LangfuseScores

OTLP_PATH = "/api/public/otel/v1/traces"
KIND_CONSUMER, KIND_CLIENT = 5, 3


def one_request(tracing: Tracing, request_id: str = "req-1") -> str | None:
    with tracing.process_span(
        "llm.requests", 1, 7, request_id.encode(), [("traceparent", TRACEPARENT)], "g", request_id
    ) as request:
        request.set_request(tenant="acme", request_id=request_id, input_messages=MESSAGES)
        with tracing.route_span(DECISION):
            pass
        with tracing.chat_span(
            "small", "openai", "gpt-4o-mini", max_tokens=64, input_messages=MESSAGES
        ) as chat:
            chat.set_response(
                response_model="gpt-4o-mini-2024-07-18",
                input_tokens=50,
                output_tokens=5,
                cached_tokens=10,
                cost_usd=0.00042,
                finish_reason="stop",
                output_text=ANSWER,
            )
        request.set_response(status="ok", model="small", output_text=ANSWER)
    return request.trace_id


async def test_generation_and_score_reach_langfuse_on_the_derived_trace(
    receiver: LangfuseReceiver,
):
    config = TelemetryConfig(langfuse=langfuse_config(receiver.url, environment="test"))
    tracing = Tracing(config, environ={})
    trace_id = one_request(tracing)
    assert config.langfuse is not None
    async with LangfuseScores(config.langfuse, environ={}) as scores:
        await scores.post(feedback(value=True, comment="matched label"))
        await scores.post(feedback(name="quality", value=0.8, source="judge"))
        await scores.post(feedback(name="label", value="B", request_id=None, trace_id=trace_id))
    assert await tracing.aclose(10) is True

    assert trace_id == trace_id_hex("req-1")
    spans = {s.name: s for s in receiver.spans}
    assert set(spans) == {"process llm.requests", "route", "chat small"}
    assert {s.path for s in receiver.spans} == {OTLP_PATH}
    assert {s.trace_id for s in receiver.spans} == {trace_id}
    assert {s.scope for s in receiver.spans} == {"llmroute.worker"}

    process, chat = spans["process llm.requests"], spans["chat small"]
    assert process.kind == KIND_CONSUMER and process.parent_span_id == ""
    assert process.links == [(PRODUCER_TRACE, PRODUCER_SPAN)]
    assert process.attributes["langfuse.internal.is_app_root"] is True  # set by the SDK
    assert process.resource["service.name"] == "llmroute-worker"
    assert process.resource["langfuse.environment"] == "test"

    a = chat.attributes
    assert chat.kind == KIND_CLIENT and chat.parent_span_id == process.span_id
    assert a["langfuse.observation.type"] == "generation"
    assert a["langfuse.observation.model.name"] == "gpt-4o-mini-2024-07-18"
    assert json.loads(a["langfuse.observation.usage_details"]) == {
        "input": 40,
        "input_cached_tokens": 10,
        "output": 5,
        "total": 55,
    }
    assert json.loads(a["langfuse.observation.cost_details"]) == {"total": 0.00042}
    assert a["gen_ai.usage.input_tokens"] == 50 and a["gen_ai.provider.name"] == "openai"
    assert a["langfuse.observation.metadata.router"] == "mf"  # plain, not JSON-quoted
    assert a["langfuse.observation.metadata.router_version"] == "2026.1"
    assert json.loads(a["langfuse.observation.metadata.score"]) == 0.31
    assert json.loads(a["langfuse.observation.metadata.candidates"])[1]["model"] == "strong"
    assert PROMPT in a["langfuse.observation.input"]
    assert a["langfuse.observation.output"] == ANSWER
    assert a["user.id"] == "acme" and a["langfuse.trace.name"] == "llmroute.request"
    assert a["langfuse.trace.metadata.tenant"] == "acme"
    # the trace's input is the routed prompt, its output the answer (root observation)
    assert PROMPT in process.attributes["langfuse.trace.input"]
    assert (
        process.attributes["langfuse.observation.input"]
        == (process.attributes["langfuse.trace.input"])
    )
    assert process.attributes["langfuse.trace.output"] == ANSWER

    # Basic auth with the keys, on every request; the secret nowhere in span data.
    public_key = config.langfuse.public_key if config.langfuse else ""
    expected = "Basic " + base64.b64encode(f"{public_key}:{SECRET}".encode()).decode()
    assert {r.headers["authorization"] for r in receiver.requests} == {expected}
    trace_requests = [r for r in receiver.requests if r.path == OTLP_PATH]
    assert {r.headers.get("content-encoding") for r in trace_requests} == {"gzip"}
    assert SECRET not in repr([(s.attributes, s.resource) for s in receiver.spans])

    scores = {s["name"]: s for s in receiver.scores}
    assert {s["traceId"] for s in receiver.scores} == {trace_id}
    assert scores["correct"]["value"] == 1 and scores["correct"]["dataType"] == "BOOLEAN"
    assert scores["correct"]["comment"] == "matched label"
    assert scores["correct"]["metadata"] == {
        "source": "task",
        "request_id": "req-1",
        "created_at": "2026-01-02T03:04:05+00:00",
    }
    assert scores["correct"]["environment"] == "test"
    assert scores["quality"]["value"] == 0.8 and scores["quality"]["dataType"] == "NUMERIC"
    assert scores["label"]["value"] == "B" and scores["label"]["dataType"] == "CATEGORICAL"
    assert receiver.refused == [] and receiver.unknown_fields == set()
    # Nothing else was called: no start-up probe, only the two ingestion endpoints.
    assert {r.path for r in receiver.requests} == {OTLP_PATH, "/api/public/scores"}
    # one object per score request, never a list (Langfuse v3 / v4 answer a list with 400)
    score_posts = [r for r in receiver.requests if r.path == "/api/public/scores"]
    assert len(score_posts) == 3
    assert all(isinstance(json.loads(r.body), dict) for r in score_posts)


async def test_a_redelivered_feedback_event_upserts_the_same_score(receiver: LangfuseReceiver):
    async with LangfuseScores(langfuse_config(receiver.url), environ={}) as scores:
        first = await scores.post(feedback())
        again = await scores.post(feedback())
        other = await scores.post(feedback(source="user"))
    assert first == again != other
    ids = [s["id"] for s in receiver.scores]
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2]


def test_masking_holds_on_the_wire(receiver: LangfuseReceiver):
    config = TelemetryConfig(
        langfuse=langfuse_config(receiver.url), mask_prompts=True, mask_outputs=True
    )
    tracing = Tracing(config, environ={})
    one_request(tracing)
    tracing.shutdown(10)
    assert len(receiver.spans) == 3
    assert "private" not in repr([s.attributes for s in receiver.spans])


def test_keys_come_from_the_named_environment_variables(receiver: LangfuseReceiver):
    lf = langfuse_config(receiver.url)
    from dataclasses import replace

    lf = replace(lf, secret_key=None, secret_key_env="LF_SK_FOR_TEST")
    tracing = Tracing(TelemetryConfig(langfuse=lf), environ={"LF_SK_FOR_TEST": "sk-lf-fromenv"})
    one_request(tracing)
    tracing.shutdown(10)
    auth = base64.b64decode(receiver.requests[0].headers["authorization"].split()[1]).decode()
    assert auth == f"{lf.public_key}:sk-lf-fromenv"


def test_otlp_export_and_langfuse_share_one_provider(receiver: LangfuseReceiver):
    config = TelemetryConfig(
        otlp_endpoint=f"{receiver.url}/v1/traces",
        otlp_headers=(("x-tenant-token", "t0k3n"),),
        langfuse=langfuse_config(receiver.url),
    )
    tracing = Tracing(config, environ={})
    trace_id = one_request(tracing)
    tracing.shutdown(10)
    for path in ("/v1/traces", OTLP_PATH):
        got = [s for s in receiver.spans if s.path == path]
        assert {s.name for s in got} == {"process llm.requests", "route", "chat small"}
        assert {s.trace_id for s in got} == {trace_id}
    otlp_request = next(r for r in receiver.requests if r.path == "/v1/traces")
    assert otlp_request.headers["x-tenant-token"] == "t0k3n"
    assert "authorization" not in otlp_request.headers


def test_ending_spans_never_waits_for_the_server(receiver: LangfuseReceiver):
    receiver.trace_delay_s = 0.5
    tracing = Tracing(TelemetryConfig(langfuse=langfuse_config(receiver.url)), environ={})
    started = time.perf_counter()
    for i in range(50):
        one_request(tracing, request_id=f"req-{i}")
    elapsed_s = time.perf_counter() - started
    assert elapsed_s < 0.5, elapsed_s
    assert tracing.shutdown(10) is True
    assert len(receiver.spans) == 150


def test_shutdown_is_bounded_when_the_server_hangs(receiver: LangfuseReceiver):
    receiver.trace_delay_s = 1.5
    tracing = Tracing(TelemetryConfig(langfuse=langfuse_config(receiver.url)), environ={})
    one_request(tracing)
    started = time.perf_counter()
    assert tracing.shutdown(0.3) is False
    assert time.perf_counter() - started < 0.6


def test_one_live_client_per_key_and_a_new_one_after_shutdown(receiver: LangfuseReceiver):
    lf = langfuse_config(receiver.url)
    first = Tracing(TelemetryConfig(langfuse=lf), environ={})
    with pytest.raises(TelemetryConfigError, match="already attached"):
        Tracing(TelemetryConfig(langfuse=lf), environ={})
    first.shutdown(10)
    second = Tracing(TelemetryConfig(langfuse=lf), environ={})
    one_request(second, request_id="after-restart")
    second.shutdown(10)
    assert {s.trace_id for s in receiver.spans} == {trace_id_hex("after-restart")}
