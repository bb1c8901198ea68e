"""The `Tracing` facade the Kafka loop calls per request, over one OpenTelemetry TracerProvider.

One request makes one trace whose id is derived from `request_id` (see `ids.py`):

    process {topic}   CONSUMER  messaging.* ; link to the producer's `traceparent`; trace root
    ├── route         INTERNAL  llm_router.* (router, version, policy, score, threshold, model, ...)
    └── chat {model}  CLIENT    gen_ai.* (provider, request/response model, usage, finish reasons)
                                + langfuse.observation.* so Langfuse shows a generation with model,
                                  usage, cost, input/output and the routing metadata

The root carries the trace's input (the routed prompt) and output. A batch-mode request's answer
comes later, in the same trace: `batch answer {topic}` (CONSUMER, linked to the submission's
`process` span) with its own `chat {model}` child. Records the worker writes carry the trace
context of these spans (`propagation.py`).

Export: an OTLP/HTTP `BatchSpanProcessor` when `otlp_endpoint` is set, and the Langfuse SDK's own
span processor (a `BatchSpanProcessor` subclass) on the SAME provider when `langfuse` is set. Both
queue spans and export from a background thread, so ending a span never blocks the event loop.
Feedback becomes a Langfuse score through `worker.telemetry.scores` (one POST per score, every
refusal seen), not through the SDK's score queue.

Spans are plain OpenTelemetry spans of the scope `llmroute.worker`; the Langfuse processor is told
to export that scope (its default filter keeps only LLM spans). Trace-level Langfuse attributes
(`langfuse.trace.name`, `user.id` = tenant, `langfuse.trace.tags`, `langfuse.trace.metadata.*`)
are written on the root and on every generation, as the SDK's `propagate_attributes` would (the
`route` span goes without them: it is cheap and never filtered on).

Exporting costs the loop thread CPU per request (figures in docs/benchmarks.md); above a few
hundred requests/s, lower `sample_ratio`.

Each request must run in its own asyncio task (or thread): the current span and the request's
state live in context variables.
"""

from __future__ import annotations

import asyncio
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from schemas.events import Attempt, DecisionInfo, Message
from schemas.trace import trace_id_hex
from worker.config.telemetry import TelemetryConfig, TelemetryConfigError
from worker.errors import WorkerError
from worker.secrets import redact
from worker.telemetry import semconv as sc
from worker.telemetry.ids import RequestIdGenerator

if TYPE_CHECKING:
    from langfuse import Langfuse

    from worker.providers.types import CompletionResult

__all__ = [
    "MASKED",
    "SCOPE_NAME",
    "ChatSpan",
    "RequestSpan",
    "RouteSpan",
    "Tracing",
    "build_tracer_provider",
]

SCOPE_NAME: Final = "llmroute.worker"
MASKED: Final = "[masked]"

Attributes = dict[str, AttributeValue]

# Ours.
ROUTER_PREFIX: Final = "llm_router."

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_CONTEXT_HEADERS: Final = frozenset({"traceparent", "tracestate"})
_JSON = msgspec.json.Encoder()


def _lf_json(value: object) -> str:
    """A JSON attribute value (usage and cost details, model parameters, chat messages)."""
    return _JSON.encode(value).decode()


def _lf_meta(value: object) -> AttributeValue:
    """A Langfuse metadata value as the 4.x SDK writes it: strings and integers (bools too) as
    they are, anything else JSON-encoded. Langfuse stores prefixed metadata attributes raw, so a
    JSON-encoded string would arrive quoted."""
    if isinstance(value, str | int):
        return value
    return _lf_json(value)


def _error_type(exc: BaseException) -> str:
    """OpenTelemetry's `error.type`: the stable code of our errors, else the class name."""
    return exc.code if isinstance(exc, WorkerError) else type(exc).__name__


def _record_exception(span: trace.Span, exc: BaseException) -> None:
    """The `exception` event and `error.type`, with credentials scrubbed from message/trace."""
    message = str(exc)
    span.record_exception(
        exc,
        attributes={
            "exception.message": redact(message),
            "exception.stacktrace": redact("".join(traceback.format_exception(exc))),
        },
    )
    _set_error(span, _error_type(exc), message)


def _set_error(span: trace.Span, error_type: str, message: str) -> None:
    """OTel `error.type` + ERROR status, and Langfuse's level/status message."""
    description = redact(message) or error_type
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attributes(
        {sc.ERROR_TYPE: error_type, sc.LF_LEVEL: "ERROR", sc.LF_STATUS_MESSAGE: description}
    )


@dataclass(slots=True)
class _RequestState:
    """What the child spans of one request copy from it (shared by reference with sub-tasks)."""

    trace_attributes: Attributes = field(default_factory=dict)
    decision_metadata: Attributes = field(default_factory=dict)


_STATE: ContextVar[_RequestState | None] = ContextVar("llmroute_request_state", default=None)


# ---------------------------------------------------------------- handles


class RequestSpan:
    """The `process {topic}` span of one request; `trace_id` goes into the response."""

    __slots__ = ("_masks", "_state", "_trace_name", "span", "trace_id")

    def __init__(
        self,
        span: trace.Span,
        trace_id: str | None,
        state: _RequestState,
        trace_name: str,
        masks: tuple[bool, bool],
    ) -> None:
        self.span = span
        self.trace_id = trace_id
        self._state = state
        self._trace_name = trace_name
        self._masks = masks

    def set_request(
        self,
        *,
        tenant: str,
        request_id: str | None = None,
        mode: str | None = None,
        metadata: Mapping[str, str] | None = None,
        input_messages: Sequence[Message] | None = None,
    ) -> None:
        """Once the request is decoded: tenant (Langfuse user id and tag), trace metadata.

        `input_messages` (the routed prompt) become the root observation's input and the
        Langfuse trace's input, masked when `mask_prompts` is set.
        """
        if not self.span.is_recording():
            return
        tags = [f"tenant:{tenant}"] + ([f"mode:{mode}"] if mode else [])
        trace_attrs: Attributes = {
            sc.LF_TRACE_NAME: self._trace_name,
            sc.LF_TRACE_USER_ID: tenant,
            sc.LF_TRACE_TAGS: tags,
            f"{sc.LF_TRACE_METADATA}.tenant": tenant,
        }
        if request_id is not None:
            trace_attrs[f"{sc.LF_TRACE_METADATA}.request_id"] = request_id
        for key, value in (metadata or {}).items():
            trace_attrs[f"{sc.LF_TRACE_METADATA}.{key}"] = value
        self._state.trace_attributes = trace_attrs
        self.span.set_attributes(trace_attrs)
        self.span.set_attribute(f"{ROUTER_PREFIX}tenant", tenant)
        if request_id is not None:
            self.span.set_attribute(f"{ROUTER_PREFIX}request_id", request_id)
        if input_messages is not None:
            text = _messages_json(input_messages, self._masks[0])
            self.span.set_attributes({sc.LF_INPUT: text, sc.LF_TRACE_INPUT: text})

    def traceparent(self) -> str | None:
        """This span's W3C `traceparent` (None when it records nothing)."""
        ctx = self.span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def set_response(
        self,
        *,
        status: Literal["ok", "error", "batched"],
        model: str | None = None,
        cost_usd: float | None = None,
        output_text: str | None = None,
        error_type: str | None = None,
        error_message: str = "",
    ) -> None:
        """The outcome of the request (also for handled errors: dead letter, deadline, ...)."""
        if not self.span.is_recording():
            return
        attrs: Attributes = {f"{ROUTER_PREFIX}status": status}
        if model is not None:
            attrs[f"{ROUTER_PREFIX}model"] = model
        if cost_usd is not None:
            attrs[f"{ROUTER_PREFIX}cost_usd"] = cost_usd
        if output_text is not None:
            attrs[sc.LF_OUTPUT] = attrs[sc.LF_TRACE_OUTPUT] = (
                MASKED if self._masks[1] else output_text
            )
        self.span.set_attributes(attrs)
        if status == "error":
            _set_error(self.span, error_type or "error", error_message)


class RouteSpan:
    """The `route` span; `set_decision` once the router has decided."""

    __slots__ = ("_state", "span")

    def __init__(self, span: trace.Span, state: _RequestState | None) -> None:
        self.span = span
        self._state = state

    def set_decision(self, decision: DecisionInfo) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attributes(_decision_attributes(decision))
        if self._state is not None:
            self._state.decision_metadata = _decision_metadata(decision)


class ChatSpan:
    """The `chat {model}` span of one model call (a cascade makes one per model tried)."""

    __slots__ = ("_mask_output", "span")

    def __init__(self, span: trace.Span, mask_output: bool) -> None:
        self.span = span
        self._mask_output = mask_output

    def set_result(self, result: CompletionResult) -> None:
        """The response attributes from a model's answer (interactive calls and the answers of
        batch jobs alike)."""
        self.set_response(
            response_model=result.response_model,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            cached_tokens=result.usage.cached_input_tokens,
            cost_usd=result.cost_usd,
            finish_reason=result.finish_reason,
            output_text=result.text,
            response_id=result.provider_request_id,
        )

    def set_response(
        self,
        *,
        response_model: str | None,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cost_usd: float | None = None,
        finish_reason: str | None = None,
        output_text: str | None = None,
        response_id: str | None = None,
    ) -> None:
        """Usage as OpenAI counts it: `input_tokens` includes `cached_tokens`."""
        if not self.span.is_recording():
            return
        attrs: Attributes = {
            sc.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: cached_tokens,
            sc.LF_USAGE_DETAILS: _lf_json(
                {
                    "input": input_tokens - cached_tokens,
                    "input_cached_tokens": cached_tokens,
                    "output": output_tokens,
                    "total": input_tokens + output_tokens,
                }
            ),
        }
        if response_model is not None:
            attrs[sc.GEN_AI_RESPONSE_MODEL] = response_model
            attrs[sc.LF_MODEL] = response_model
        if response_id is not None:
            attrs[sc.GEN_AI_RESPONSE_ID] = response_id
        if finish_reason is not None:
            attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = [finish_reason]
        if cost_usd is not None:
            attrs[f"{ROUTER_PREFIX}cost_usd"] = cost_usd
            attrs[sc.LF_COST_DETAILS] = _lf_json({"total": cost_usd})
        if output_text is not None:
            attrs[sc.LF_OUTPUT] = MASKED if self._mask_output else output_text
        self.span.set_attributes(attrs)

    def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        """One `attempt` event per try (retries and fallbacks made inside the provider client)."""
        if not self.span.is_recording():
            return
        for a in attempts:
            attrs: Attributes = {
                "llm_router.attempt.model": a.model,
                "llm_router.attempt.provider": a.provider,
                "llm_router.attempt.status": a.status,
                "llm_router.attempt.latency_ms": a.latency_ms,
            }
            if a.http_status is not None:
                attrs["llm_router.attempt.http_status"] = a.http_status
            if a.error_type is not None:
                attrs[sc.ERROR_TYPE] = a.error_type
            if a.retry is not None:
                attrs["llm_router.attempt.retry"] = a.retry
            if a.deployment is not None:
                attrs["llm_router.attempt.deployment"] = a.deployment
            self.span.add_event("attempt", attrs)

    def set_deployment(self, deployment: str, reason: str) -> None:
        """Which of the model's deployments answered, and why that one."""
        if self.span.is_recording():
            self.span.set_attributes(
                {
                    f"{ROUTER_PREFIX}deployment": deployment,
                    f"{ROUTER_PREFIX}deployment_reason": reason,
                }
            )

    def set_error(self, error_type: str, message: str = "") -> None:
        """A failed call that did not raise out of the `with` (e.g. mapped to a fallback)."""
        if self.span.is_recording():
            _set_error(self.span, error_type, message)


# ---------------------------------------------------------------- attribute builders


def _messages_json(messages: Sequence[Message], mask: bool) -> str:
    if mask:
        return _JSON.encode([{"role": m.role, "content": MASKED} for m in messages]).decode()
    return _JSON.encode(messages).decode()


def _decision_attributes(d: DecisionInfo) -> Attributes:
    p = ROUTER_PREFIX
    attrs: Attributes = {
        f"{p}router": d.router,
        f"{p}router_version": d.router_version,
        f"{p}policy": d.policy,
        f"{p}model": d.model,
        f"{p}score": d.score,
        f"{p}reason": d.reason,
        f"{p}candidates": _JSON.encode(d.candidates).decode(),
    }
    if d.threshold is not None:
        attrs[f"{p}threshold"] = d.threshold
    if d.cache_hit is not None:
        attrs[f"{p}cache_hit"] = d.cache_hit
    if d.arm is not None:
        attrs[f"{p}arm"] = d.arm
    if d.unfamiliar is not None:
        attrs[f"{p}unfamiliar"] = d.unfamiliar
    return attrs


def _decision_metadata(d: DecisionInfo) -> Attributes:
    meta: dict[str, Any] = {
        "router": d.router,
        "router_version": d.router_version,
        "policy": d.policy,
        "routed_model": d.model,
        "score": d.score,
        "threshold": d.threshold,
        "reason": d.reason,
        "cache_hit": d.cache_hit,
        "arm": d.arm,
        "unfamiliar": d.unfamiliar,
        "candidates": msgspec.to_builtins(d.candidates),
    }
    return {f"{sc.LF_METADATA}.{k}": _lf_meta(v) for k, v in meta.items() if v is not None}


def _producer_links(headers: Sequence[tuple[str, bytes]]) -> list[Link]:
    carrier: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _CONTEXT_HEADERS and value:
            carrier[lowered] = value.decode("latin-1")
    if "traceparent" not in carrier:
        return []
    producer = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return [Link(producer)] if producer.is_valid else []


# ---------------------------------------------------------------- provider


def build_tracer_provider(
    config: TelemetryConfig, *, fallback_ids: IdGenerator | None = None
) -> TracerProvider:
    """A TracerProvider whose request roots get trace ids derived from `request_id`.

    Not registered globally. `fallback_ids` makes span ids (and non-request trace ids)
    deterministic in tests. Sampling is `TraceIdRatioBased(sample_ratio)`, hence by request id.
    """
    attrs: dict[str, AttributeValue] = {"service.name": config.service_name}
    if config.service_instance_id:
        attrs["service.instance.id"] = config.service_instance_id
    if config.langfuse is not None:
        if config.langfuse.environment:
            attrs[sc.LF_ENVIRONMENT] = config.langfuse.environment
        if config.langfuse.release:
            attrs[sc.LF_RELEASE] = config.langfuse.release
    sampler: Sampler = (
        ALWAYS_ON if config.sample_ratio >= 1.0 else TraceIdRatioBased(config.sample_ratio)
    )
    return TracerProvider(
        sampler=sampler,
        resource=Resource.create(attrs),
        id_generator=RequestIdGenerator(fallback_ids),
    )


def _langfuse_export_filter() -> Callable[[ReadableSpan], bool]:
    """Our spans, plus what the SDK exports by default (other LLM instrumentations)."""
    from langfuse.span_filter import is_default_export_span

    def should_export(span: ReadableSpan) -> bool:
        scope = span.instrumentation_scope
        return (scope is not None and scope.name == SCOPE_NAME) or is_default_export_span(span)

    return should_export


def _claim_langfuse_key(public_key: str, provider: TracerProvider) -> None:
    """The SDK keeps one resource manager per public key per process (a singleton that holds
    the processor it attached to the FIRST provider). Refuse a second live provider for the
    same key; forget a manager that was shut down, so a new one is attached to `provider`."""
    from langfuse._client.resource_manager import LangfuseResourceManager as Manager

    instances = getattr(Manager, "_instances", None)
    if not isinstance(instances, dict):  # a future SDK without the singleton: nothing to do
        return
    with Manager._lock:
        existing = instances.get(public_key)
        if existing is None:
            return
        if getattr(existing, "_shutdown", False):
            del instances[public_key]
            return
        if getattr(existing, "tracer_provider", None) is not provider:
            raise TelemetryConfigError(
                "a Langfuse client with this public key is already attached to another "
                "TracerProvider in this process; use one Tracing per process and key"
            )


# ---------------------------------------------------------------- facade


class Tracing:
    """Builds the export pipelines once and makes the spans of each request.

    `tracer_provider`: use this provider (e.g. one with an `InMemorySpanExporter`) instead of
    building one; it must come from `build_tracer_provider` (or use a `RequestIdGenerator`).
    The exporters of `config` are added to it. Without a provider and with no exporter
    configured, nothing is recorded and `trace_id` is still derived from `request_id`.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        tracer_provider: TracerProvider | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._masks = (config.mask_prompts, config.mask_outputs)
        self._trace_name = (
            config.langfuse.trace_name if config.langfuse is not None else "llmroute.request"
        )
        self._owns_provider = tracer_provider is None
        self._processors: list[SpanProcessor] = []
        self.langfuse: Langfuse | None = None
        self._closed = False

        if tracer_provider is None and not config.exports:
            self.provider: TracerProvider | None = None
            self._tracer: trace.Tracer = trace.NoOpTracer()
            return
        if tracer_provider is not None and not isinstance(
            tracer_provider.id_generator, RequestIdGenerator
        ):
            raise TelemetryConfigError(
                "tracer_provider must use a RequestIdGenerator (see build_tracer_provider) "
                "so trace ids derive from request_id"
            )
        provider = tracer_provider or build_tracer_provider(config)
        self.provider = provider
        if config.otlp_endpoint is not None:
            self._add_otlp(provider)
        if config.langfuse is not None:
            self._add_langfuse(provider, os.environ if environ is None else environ)
        self._tracer = provider.get_tracer(SCOPE_NAME)

    def _add_otlp(self, provider: TracerProvider) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        c = self.config
        exporter = OTLPSpanExporter(
            endpoint=c.otlp_endpoint,
            headers=dict(c.otlp_headers) if c.otlp_headers else None,
            timeout=c.otlp_timeout_s,
        )
        processor = BatchSpanProcessor(
            exporter,
            max_queue_size=c.export.max_queue_size,
            schedule_delay_millis=c.export.schedule_delay_ms,
            max_export_batch_size=c.export.max_export_batch_size,
            export_timeout_millis=c.export.export_timeout_ms,
        )
        provider.add_span_processor(processor)
        self._processors.append(processor)

    def _add_langfuse(self, provider: TracerProvider, environ: Mapping[str, str]) -> None:
        from langfuse import Langfuse

        lf = self.config.langfuse
        assert lf is not None
        public_key, secret_key = lf.resolve_keys(environ)
        _claim_langfuse_key(public_key, provider)
        # Langfuse adds its LangfuseSpanProcessor (OTLP/HTTP, basic auth, gzip) to `provider`;
        # it never touches the global provider when one is passed.
        self.langfuse = Langfuse(
            public_key=public_key,
            secret_key=secret_key,
            base_url=lf.base_url.rstrip("/"),
            timeout=lf.timeout_s,
            flush_at=lf.flush_at,
            flush_interval=lf.flush_interval_s,
            environment=lf.environment,
            release=lf.release,
            tracer_provider=provider,
            should_export_span=_langfuse_export_filter(),
            otel_compression=lf.compression,
        )

    # ------------------------------------------------------------ per request

    def process_span(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        group: str,
        request_id: str | None,
    ) -> AbstractContextManager[RequestSpan]:
        """The root span of one consumed record; a trace id derived from `request_id`.

        An exception escaping the block is recorded (`error.type`, status ERROR) and re-raised.
        """
        if self.provider is None:  # nothing records: skip the work, keep the derived trace id
            derived = trace_id_hex(request_id) if request_id else None
            return _Entered(RequestSpan(trace.INVALID_SPAN, derived, _NO_STATE, "", self._masks))
        return self._process_span(topic, partition, offset, key, headers, group, request_id)

    def answer_span(
        self,
        topic: str,
        partition: int,
        offset: int,
        request_id: str,
        job_id: str,
        submission: str | None,
        trace_seed: str | None = None,
    ) -> AbstractContextManager[RequestSpan]:
        """The root span of a batch answer, `batch answer {topic}`: in the request's trace (the
        trace id derived from `trace_seed`, else `request_id`, like its `process` span at
        submission) and linked to that submission span (`submission`: its traceparent, kept
        with the job's item)."""
        seed = trace_seed if trace_seed is not None else request_id
        if self.provider is None:
            derived = trace_id_hex(seed)
            return _Entered(RequestSpan(trace.INVALID_SPAN, derived, _NO_STATE, "", self._masks))
        headers = [("traceparent", submission.encode())] if submission else []
        return self._process_span(
            topic,
            partition,
            offset,
            request_id.encode(),
            headers,
            "",
            seed,
            name=f"batch answer {topic}",
            extra={f"{ROUTER_PREFIX}batch.job_id": job_id},
        )

    @contextmanager
    def _process_span(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        group: str,
        request_id: str | None,
        *,
        name: str | None = None,
        extra: Attributes | None = None,
    ) -> Iterator[RequestSpan]:
        attrs: Attributes = {
            sc.MESSAGING_SYSTEM: "kafka",
            sc.MESSAGING_OPERATION_TYPE: "process",
            sc.MESSAGING_OPERATION_NAME: "process",
            sc.MESSAGING_DESTINATION_NAME: topic,
            sc.MESSAGING_DESTINATION_PARTITION_ID: str(partition),
            sc.MESSAGING_KAFKA_OFFSET: offset,
            sc.MESSAGING_CONSUMER_GROUP_NAME: group,
        }
        if key is not None:
            attrs[sc.MESSAGING_KAFKA_MESSAGE_KEY] = key.decode("utf-8", errors="replace")
        if not group:
            del attrs[sc.MESSAGING_CONSUMER_GROUP_NAME]
        if extra:
            attrs.update(extra)
        with RequestIdGenerator.seeded(request_id):
            span = self._tracer.start_span(
                name or f"process {topic}",
                context=otel_context.Context(),  # always a root: the producer is a link
                kind=SpanKind.CONSUMER,
                attributes=attrs,
                links=_producer_links(headers),
            )
        span_context = span.get_span_context()
        if span_context.is_valid:
            trace_id: str | None = trace.format_trace_id(span_context.trace_id)
        else:
            trace_id = trace_id_hex(request_id) if request_id else None
        state = _RequestState()
        token = _STATE.set(state)
        try:
            with _ending(span):
                yield RequestSpan(span, trace_id, state, self._trace_name, self._masks)
        finally:
            _STATE.reset(token)

    def route_span(self, decision: DecisionInfo | None = None) -> AbstractContextManager[RouteSpan]:
        """The `route` span, a child of the current request; set the decision in or before."""
        if self.provider is None:
            return _NO_ROUTE
        return self._route_span(decision)

    @contextmanager
    def _route_span(self, decision: DecisionInfo | None) -> Iterator[RouteSpan]:
        span = self._tracer.start_span("route", kind=SpanKind.INTERNAL)
        handle = RouteSpan(span, _STATE.get())
        if decision is not None:
            handle.set_decision(decision)
        with _ending(span):
            yield handle

    def chat_span(
        self,
        model: str,
        provider: str,
        request_model: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        input_messages: Sequence[Message] | None = None,
        attempt: int | None = None,
        decision: DecisionInfo | None = None,
    ) -> AbstractContextManager[ChatSpan]:
        """A `chat {model}` CLIENT span and Langfuse generation for one model call.

        `model` is the catalogue name that was routed to, `request_model` the provider's model
        id sent on the wire. The routing decision defaults to the one set by `route_span`.
        """
        if self.provider is None:
            return _NO_CHAT[self._masks[1]]
        return self._chat_span(
            model,
            provider,
            request_model,
            max_tokens,
            temperature,
            top_p,
            input_messages,
            attempt,
            decision,
        )

    @contextmanager
    def _chat_span(
        self,
        model: str,
        provider: str,
        request_model: str,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        input_messages: Sequence[Message] | None,
        attempt: int | None,
        decision: DecisionInfo | None,
    ) -> Iterator[ChatSpan]:
        state = _STATE.get()
        span = self._tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT)
        if span.is_recording():
            attrs: Attributes = dict(state.trace_attributes) if state is not None else {}
            params: dict[str, float | int] = {}
            attrs[sc.GEN_AI_OPERATION_NAME] = "chat"
            attrs[sc.GEN_AI_PROVIDER_NAME] = provider
            attrs[sc.GEN_AI_SYSTEM] = provider
            attrs[sc.GEN_AI_REQUEST_MODEL] = request_model
            attrs[f"{ROUTER_PREFIX}model"] = model
            if max_tokens is not None:
                attrs[sc.GEN_AI_REQUEST_MAX_TOKENS] = params["max_tokens"] = max_tokens
            if temperature is not None:
                attrs[sc.GEN_AI_REQUEST_TEMPERATURE] = params["temperature"] = temperature
            if top_p is not None:
                attrs[sc.GEN_AI_REQUEST_TOP_P] = params["top_p"] = top_p
            if attempt is not None:
                attrs[f"{ROUTER_PREFIX}attempt"] = attempt
            attrs[sc.LF_TYPE] = "generation"
            attrs[sc.LF_MODEL] = request_model
            if params:
                attrs[sc.LF_MODEL_PARAMETERS] = _lf_json(params)
            if input_messages is not None:
                attrs[sc.LF_INPUT] = _messages_json(input_messages, self._masks[0])
            if decision is not None:
                attrs.update(_decision_metadata(decision))
            elif state is not None:
                attrs.update(state.decision_metadata)
            span.set_attributes(attrs)
        with _ending(span):
            yield ChatSpan(span, self._masks[1])

    # ------------------------------------------------------------ lifecycle

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued (blocking; from a thread when called by the loop)."""
        if self.provider is None:
            return True
        return self.provider.force_flush(int(timeout_s * 1000))

    async def aclose(self, timeout_s: float = 5.0) -> bool:
        """`shutdown` from the event loop, in a worker thread."""
        return await asyncio.to_thread(self.shutdown, timeout_s)

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush spans and scores and stop the export threads, waiting at most `timeout_s`.

        Blocking: from the event loop use `await tracing.aclose(t)`. Returns False if the
        export did not finish in time (it goes on in a daemon thread). Idempotent.
        """
        if self._closed or self.provider is None:
            self._closed = True
            return True
        self._closed = True
        provider, langfuse = self.provider, self.langfuse
        timeout_ms = int(timeout_s * 1000)
        flushed: list[bool] = []

        def close_all() -> None:
            flushed.append(provider.force_flush(timeout_ms))
            if langfuse is not None:
                langfuse.shutdown()  # flushes the provider again, then drains the score queue
            if self._owns_provider:
                provider.shutdown()
            else:
                for processor in self._processors:
                    processor.shutdown()

        # Langfuse waits for its score queue without a bound, so the caller's bound is kept
        # by waiting on a thread.
        closer = threading.Thread(target=close_all, name="llmroute-telemetry-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        return not closer.is_alive() and all(flushed)


_T = TypeVar("_T")


class _Entered(Generic[_T]):
    """A context manager that only hands out `value`: the handles of spans nothing records
    (a class, not a generator: per request, with tracing off, that difference is measurable)."""

    __slots__ = ("value",)

    def __init__(self, value: _T) -> None:
        self.value = value

    def __enter__(self) -> _T:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


# Handles of spans that record nothing hold no per-request state: shared.
_NO_STATE: Final = _RequestState()
_NO_ROUTE: Final = _Entered(RouteSpan(trace.INVALID_SPAN, None))
_NO_CHAT: Final = {mask: _Entered(ChatSpan(trace.INVALID_SPAN, mask)) for mask in (False, True)}


@contextmanager
def _ending(span: trace.Span) -> Iterator[None]:
    """Make `span` current and end it; record an escaping exception with `error.type`."""
    with trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield
        except BaseException as exc:
            if span.is_recording():
                _record_exception(span, exc)
            raise
