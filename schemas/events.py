"""Python types that mirror the JSON Schema files in this folder, one Struct per event.

msgspec decodes and validates in one pass (figures: docs/benchmarks.md, bench/schema_bench.py).
Every Struct is frozen, keyword-only and forbids unknown fields, as the schemas do
(`additionalProperties: false`); `metadata` is the place for extra producer data. Tests keep the two
in step over the files in `examples/`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.errors import ErrorCode

SCHEMA_VERSION = 1

# any Unicode but control characters (C0, DEL, C1): ids reach headers, logs and record keys
NO_CONTROL = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
RequestId = Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_CONTROL)]
Tenant = Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_CONTROL)]
Timestamp = Annotated[datetime, Meta(tz=True)]
TraceId = Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
NonEmpty = Annotated[str, Meta(min_length=1)]
Unit = Annotated[float, Meta(ge=0, le=1)]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]
Mode = Literal["interactive", "batch"]
TopicName = Annotated[str, Meta(min_length=1, max_length=249, pattern="^[a-zA-Z0-9._-]+$")]


class _Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every wire type."""


# ---------------------------------------------------------------- messages


class TextPart(_Event, frozen=True, kw_only=True, tag_field="type", tag="text"):
    text: str


class ImageUrl(_Event, frozen=True, kw_only=True):
    url: NonEmpty
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Event, frozen=True, kw_only=True, tag_field="type", tag="image_url"):
    image_url: ImageUrl


ContentPart = TextPart | ImagePart


class Message(_Event, frozen=True, kw_only=True, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text; image parts contribute nothing."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))


# ---------------------------------------------------------------- route request


class GenerationParams(_Event, frozen=True, kw_only=True, omit_defaults=True):
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: str | None = None


class RoutingOptions(_Event, frozen=True, kw_only=True, omit_defaults=True):
    policy: NonEmpty | None = None
    threshold: Unit | None = None
    strong_fraction: Unit | None = None
    allowed_models: list[NonEmpty] | None = None
    denied_models: list[NonEmpty] | None = None
    max_cost_usd: NonNegative | None = None
    max_latency_ms: Annotated[float, Meta(gt=0)] | None = None
    mode: Mode = "interactive"


class RouteRequest(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    request_id: RequestId
    tenant: Tenant
    messages: Annotated[list[Message], Meta(min_length=1)]
    created_at: Timestamp
    params: GenerationParams = GenerationParams()
    routing: RoutingOptions = RoutingOptions()
    reply_topic: (
        Annotated[str, Meta(min_length=1, max_length=249, pattern="^[a-zA-Z0-9._-]+$")] | None
    ) = None
    deadline: Timestamp | None = None
    metadata: dict[str, str] | None = None


# ---------------------------------------------------------------- route response


class Usage(_Event, frozen=True, kw_only=True):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cached_tokens: Count = 0


class Candidate(_Event, frozen=True, kw_only=True, omit_defaults=True):
    model: NonEmpty
    predicted_quality: Unit
    est_cost_usd: NonNegative
    est_latency_ms: NonNegative | None = None


class DecisionInfo(_Event, frozen=True, kw_only=True, omit_defaults=True):
    router: NonEmpty
    router_version: NonEmpty
    policy: NonEmpty
    model: NonEmpty
    score: float
    threshold: float | None
    candidates: list[Candidate]
    reason: str
    cache_hit: bool | None = None
    arm: str | None = None
    deployment: NonEmpty | None = None
    deployment_reason: str | None = None
    unfamiliar: NonNegative | None = None


class ErrorInfo(_Event, frozen=True, kw_only=True):
    type: ErrorCode  # a stable code (schemas/errors.py), never a class name
    message: str
    retriable: bool


class Attempt(_Event, frozen=True, kw_only=True, omit_defaults=True):
    model: NonEmpty
    provider: NonEmpty
    status: Literal["ok", "error", "skipped", "escalated"]
    latency_ms: NonNegative
    http_status: int | None = None
    error_type: ErrorCode | None = None
    retry: Count | None = None
    deployment: NonEmpty | None = None


class OutputMessage(_Event, frozen=True, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str = ""


FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "other"]


class SourceRecord(_Event, frozen=True, kw_only=True, omit_defaults=True):
    """Where a record came from (topic, partition, offset)."""

    topic: NonEmpty
    partition: Count
    offset: Count


class Truncated(_Event, frozen=True, kw_only=True, omit_defaults=True):
    """Set when a record was cut to fit its topic's size limit: its size before the cut and
    the source record it answers (replay that to get the whole of it)."""

    original_bytes: Count
    source: SourceRecord


class RouteResponse(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    request_id: RequestId
    tenant: Tenant
    status: Literal["ok", "error"]
    model: str | None
    provider: str | None
    message: OutputMessage | None
    finish_reason: FinishReason | None
    usage: Usage
    cost_usd: NonNegative
    latency_ms: NonNegative
    decision: DecisionInfo | None
    attempts: list[Attempt]
    error: ErrorInfo | None
    trace_id: TraceId | None
    created_at: Timestamp
    mode: Mode | None = None
    cache_hit: bool | None = None
    truncated: Truncated | None = None


# ---------------------------------------------------------------- decisions and feedback


class RoutingDecision(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    request_id: RequestId
    tenant: Tenant
    decision: DecisionInfo
    trace_id: TraceId | None
    created_at: Timestamp
    mode: Mode | None = None
    prompt: str | None = None
    prompt_sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")] | None = None
    params: dict[str, object] | None = None
    shadow: bool | None = None
    cache_hit: bool | None = None
    shadow_model: NonEmpty | None = None


class Feedback(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    value: float | bool | str
    source: Literal["user", "task", "judge", "system"]
    created_at: Timestamp
    request_id: RequestId | None = None
    # the tenant of `request_id`: request ids are the tenant's own (without it, and without
    # `trace_id`, the score lands on the trace of the bare request id)
    tenant: Tenant | None = None
    trace_id: TraceId | None = None
    comment: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.request_id is None and self.trace_id is None:
            raise ValueError("feedback needs `request_id` or `trace_id`")


# ---------------------------------------------------------------- operator commands


class Control(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    command_id: Annotated[str, Meta(min_length=1, max_length=128)]
    action: Literal["cancel_batch", "reload_router"]
    issued_at: Timestamp
    job_id: NonEmpty | None = None
    artifact_path: NonEmpty | None = None
    router_version: NonEmpty | None = None
    reason: str | None = None


# ---------------------------------------------------------------- batch jobs and dead letters


class BatchItem(_Event, frozen=True, kw_only=True, omit_defaults=True):
    custom_id: Annotated[str, Meta(min_length=1, max_length=64)]
    request_id: RequestId
    tenant: Tenant | None = None  # with request_id, the request's identity (absent: older jobs)
    topic: NonEmpty
    partition: Count
    offset: Count
    decision: DecisionInfo | None = None  # made at submission; the answer carries it
    traceparent: str | None = None  # the submission span's context; the answer span links to it


BatchStatus = Literal[
    "accumulated",
    "uploaded",
    "submitted",
    "in_progress",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
    "published",
]


class BatchJob(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    job_id: NonEmpty
    provider: Literal["openai", "anthropic"]
    model: NonEmpty
    status: BatchStatus
    items: list[BatchItem]
    created_at: Timestamp
    updated_at: Timestamp
    provider_batch_id: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    requests_total: Annotated[int, Meta(ge=1)] | None = None
    error: str | None = None


class DeadLetterHeader(_Event, frozen=True, kw_only=True):
    key: str
    value_b64: str


class DeadLetterSource(_Event, frozen=True, kw_only=True, omit_defaults=True):
    topic: NonEmpty
    partition: Count
    offset: Count
    timestamp_ms: int | None = None


class DeadLetter(_Event, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    reason: NonEmpty
    error_type: ErrorCode
    original_value_b64: str
    source: DeadLetterSource
    first_seen_at: Timestamp
    original_key_b64: str | None = None
    original_headers: list[DeadLetterHeader] | None = None
    worker_id: str | None = None
    truncated: Truncated | None = None


# ---------------------------------------------------------------- semantic cache


Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class CacheEntry(_Event, frozen=True, kw_only=True, omit_defaults=True):
    """One answer shared through the compacted cache topic; key
    "<tenant>/<params_key>/<prompt_sha256>", a null value removes the entry."""

    schema_version: Literal[1]
    tenant: Tenant
    params_key: Sha256
    prompt_sha256: Sha256
    prompt: str
    model: NonEmpty
    content: str
    usage: Usage
    cost_usd: NonNegative
    created_at: Timestamp
    expires_at: Timestamp
    provider: NonEmpty | None = None
    finish_reason: FinishReason | None = None
    request_id: RequestId | None = None
    worker_id: str | None = None


# ---------------------------------------------------------------- routing dataset


class DatasetRecord(_Event, frozen=True, kw_only=True, omit_defaults=True):
    id: NonEmpty
    scores: Annotated[dict[str, Unit], Meta(min_length=1)]
    prompt: str | None = None
    messages: Annotated[list[Message], Meta(min_length=1)] | None = None
    costs: dict[str, NonNegative] | None = None
    tags: dict[str, str] | None = None
    answers: dict[str, str] | None = None  # model -> its answer text (cascade training)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a dataset record needs exactly one of `prompt` or `messages`")
