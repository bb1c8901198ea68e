"""No secret leaves the process (issue 13): a simulator that echoes the caller's key in headers,
answers, model ids and error bodies (JSON and plain text) drives the real pipeline; no fragment
of 12+ characters of a key, in any case, reaches the response, the decision event, a span
attribute or event, or a log line."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import schemas
from routers.artifact import load_artifact
from schemas import RoutingOptions
from tests.worker.support import ROWS, replay_dataset, request_event, worker_config
from worker.config.models import ANTHROPIC_MODEL, STRONG_MODEL, WEAK_MODEL
from worker.config.telemetry import TelemetryConfig
from worker.kafka.records import Handled, RecordInfo
from worker.logs import setup_logging
from worker.pipeline.core import Pipeline
from worker.pipeline.routing import RoutingCore
from worker.providers.client import ClientSettings, ModelClient
from worker.providers.errors import ProviderError
from worker.providers.retry import RetryPolicy
from worker.providers.types import CompletionRequest
from worker.secrets import MIN_FRAGMENT, Redactor
from worker.sim import Fault, SimConfig, Simulator
from worker.telemetry import Tracing, build_tracer_provider

# keys that do not start with sk- as well as one that does
KEYS = {
    "SIM_OPENAI_API_KEY": "tok_9f8E7d6C5b4A3928170FedcbaQ",
    "SIM_ANTHROPIC_API_KEY": "sk-ant-Zy98Xw76Vu54Ts32Rq10PoNm",
}


def fragments(text: str) -> list[str]:
    """Every 12-character fragment of a key found in `text` (any case)."""
    low = text.lower()
    found = []
    for key in KEYS.values():
        k = key.lower()
        found += [
            k[i : i + MIN_FRAGMENT]
            for i in range(len(k) - MIN_FRAGMENT + 1)
            if k[i : i + MIN_FRAGMENT] in low
        ]
    return found


def span_text(exporter: InMemorySpanExporter) -> str:
    parts: list[str] = []
    for span in exporter.get_finished_spans():
        parts.append(span.name)
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            parts.append(event.name)
            parts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
        if span.status.description:
            parts.append(span.status.description)
    return "\n".join(parts)


class Rig:
    def __init__(self, pipeline: Pipeline, exporter: InMemorySpanExporter, logs: io.StringIO):
        self.pipeline, self.exporter, self.logs = pipeline, exporter, logs

    async def direct(self, model: str) -> str:
        """Every string a direct call of `model` returns or raises (Anthropic's wire protocol
        is not among the router's models: asked through the client, the layer that redacts)."""
        call = CompletionRequest.from_messages([{"role": "user", "content": "hello there"}])
        try:
            done = await self.pipeline.client.complete(call, [model])
        except ProviderError as exc:
            last = getattr(exc, "last_error", exc)
            return f"{exc} {last} {last!r} {vars(last)}"
        r = done.result
        return f"{r.text} {r.response_model} {r.provider_request_id} {r.raw_finish_reason}"

    async def ask(self, i: int, model: str) -> tuple[schemas.RouteResponse, str]:
        req = request_event(ROWS[i], i, routing=RoutingOptions(allowed_models=[model]))
        handled = await self.pipeline.handle(req, RecordInfo("t", 0, i, None, [], None))
        assert isinstance(handled, Handled)
        wire = schemas.encode(handled.response).decode()
        if handled.decision is not None:
            wire += schemas.encode(handled.decision).decode()
        return handled.response, wire


async def _rig(artifact: Path, config: SimConfig, monkeypatch: Any) -> AsyncIterator[Rig]:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(TelemetryConfig())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logs = io.StringIO()
    handler = setup_logging(logging.DEBUG, logs)
    try:
        async with Simulator(config, replay_dataset()) as sim:
            core_config = worker_config("127.0.0.1:1", {"requests": "t"}, artifact, sim.base_url)
            core = RoutingCore(
                core_config,
                load_artifact(artifact),
                core_config.models,
            )
            settings = ClientSettings(
                retry=RetryPolicy(max_retries=1, initial_delay_s=0.0, max_delay_s=0.0)
            )
            async with ModelClient(core.catalogue, settings, env=KEYS) as client:
                tracing = Tracing(TelemetryConfig(), tracer_provider=provider)
                yield Rig(Pipeline(core, client, tracing=tracing), exporter, logs)
    finally:
        logging.getLogger().removeHandler(handler)
        provider.shutdown()


MODELS = [STRONG_MODEL, WEAK_MODEL]  # the router's models (OpenAI's wire protocol)


@pytest.fixture
async def echoing(artifact: Path, monkeypatch: Any) -> AsyncIterator[Rig]:
    async for rig in _rig(
        artifact, SimConfig(seed=1, echo_key=("header", "answer", "model")), monkeypatch
    ):
        yield rig


async def test_keys_echoed_in_headers_answers_and_model_ids_never_leave(echoing: Rig) -> None:
    for i, model in enumerate(MODELS * 3):
        response, wire = await echoing.ask(i, model)
        assert response.status == "ok", response.error
        assert "[REDACTED]" in (response.message.content if response.message else "")
        assert fragments(wire) == [], model
    assert fragments(await echoing.direct(ANTHROPIC_MODEL)) == []
    spans = span_text(echoing.exporter)
    assert "gen_ai.response.id" in spans
    assert fragments(spans) == []
    assert fragments(echoing.logs.getvalue()) == []


@pytest.mark.parametrize("kind", ["echo_text", "echo_json"])
async def test_keys_echoed_in_error_bodies_never_leave(
    artifact: Path, monkeypatch: Any, kind: str
) -> None:
    config = SimConfig(seed=1, faults=(Fault(kind=kind, rate=1.0),))  # type: ignore[arg-type]
    async for rig in _rig(artifact, config, monkeypatch):
        for i, model in enumerate(MODELS):
            response, wire = await rig.ask(i, model)
            assert response.status == "error" and response.error is not None
            assert fragments(wire) == [], (model, response.error.message)
        assert fragments(await rig.direct(ANTHROPIC_MODEL)) == []
        logging.getLogger("worker.test").error("last error: %s", response.error.message)
        assert fragments(span_text(rig.exporter)) == []
        assert fragments(rig.logs.getvalue()) == []


# ------------------------------------------------------------ the redactor itself

alphabet = st.characters(min_codepoint=33, max_codepoint=126)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet, min_size=20, max_size=80),
    st.data(),
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_no_fragment_of_twelve_or_more_survives(secret, data, before, after) -> None:
    start = data.draw(st.integers(0, len(secret) - MIN_FRAGMENT))
    end = data.draw(st.integers(start + MIN_FRAGMENT, len(secret)))
    fragment = secret[start:end]
    # any case, per character
    flips = data.draw(st.lists(st.booleans(), min_size=len(fragment), max_size=len(fragment)))
    shown = "".join(c.upper() if f else c.lower() for c, f in zip(fragment, flips, strict=True))
    out = Redactor([secret])(before + shown + after)
    low, s = out.lower(), secret.lower()
    assert all(s[i : i + MIN_FRAGMENT] not in low for i in range(len(s) - MIN_FRAGMENT + 1))


def test_the_redactor_keeps_ordinary_text_and_short_pieces() -> None:
    r = Redactor([KEYS["SIM_OPENAI_API_KEY"]])
    text = "a normal answer, with tok_9f8E7d6 (11 chars of the key) and more"
    assert r(text) == text
    assert r("x" + KEYS["SIM_OPENAI_API_KEY"].upper() + "y") == "x[REDACTED]y"
    assert "9f8e" not in repr(r).lower()


def test_logs_redact_the_configured_key_values_once_protected() -> None:
    from worker import secrets

    key = "plainkeynoprefix0123456789"  # matches none of the patterns
    buf = io.StringIO()
    handler = setup_logging(logging.INFO, buf)
    try:
        logging.getLogger("worker.test").warning("echo %s", key.upper()[2:])
        secrets.protect(Redactor([key]))
        logging.getLogger("worker.test").warning("echo %s and %s", key.upper()[2:], "x" + key)
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = buf.getvalue().splitlines()
    assert key.upper()[2:] in first  # patterns alone never knew it
    assert "[REDACTED] and x[REDACTED]" in second


async def test_batch_answers_and_errors_leave_redacted(echoing: Rig) -> None:
    """Batch results are parsed outside the interactive call path; they are redacted too."""
    from worker.batch.jobs import Finished
    from worker.providers.errors import InternalServerError
    from worker.providers.types import CompletionResult, Usage

    key = KEYS["SIM_OPENAI_API_KEY"]
    item = schemas.BatchItem(
        custom_id="p0-o1", request_id="r-1", tenant="acme", topic="t", partition=0, offset=1
    )
    request = request_event(ROWS[0], 1, request_id="r-1")
    result = CompletionResult(
        text=f"answer {key.upper()}",
        finish_reason="stop",
        usage=Usage(1, 1),
        cost_usd=0.0,
        latency_ms=0.0,
        provider="openai",
        model=WEAK_MODEL,
        response_model=f"m-{key}",
        provider_request_id=key,
    )
    error = InternalServerError(f"boom x{key}y", status=500, provider="openai")
    for outcome in (result, error):
        finished = Finished(item, request, outcome, WEAK_MODEL, "job-1", False)
        handled = echoing.pipeline.batch_response(finished)
        assert fragments(schemas.encode(handled.response).decode()) == []


def test_merging_the_same_keys_again_adds_no_work() -> None:
    one = Redactor(KEYS.values())
    again = one.merged(Redactor(KEYS.values()))
    assert again is one
    both = Redactor([KEYS["SIM_OPENAI_API_KEY"]]).merged(Redactor([KEYS["SIM_ANTHROPIC_API_KEY"]]))
    assert both(" ".join(KEYS.values()).upper()) == "[REDACTED] [REDACTED]"
