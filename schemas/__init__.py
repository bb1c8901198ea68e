"""The wire contracts: JSON Schema files (next to this module) and their Python types.

Topics (defaults; each is configurable in the worker):

- `llm.requests`      RouteRequest, key = request_id, header `traceparent`
- `llm.responses`     RouteResponse (or the request's `reply_topic`), key = request_id
- `llm.decisions`     RoutingDecision, key = request_id
- `llm.feedback`      Feedback, key = request_id or trace_id
- `llm.batch-jobs`    BatchJob, compacted, key = "<topic>:<partition>:<job_id>"
- `llm.requests.dlq`  DeadLetter, key = the original key
- `llm.shadow`        RouteResponse of shadow calls (never the user's answer), key = request_id
- `llm.control`       Control (operator commands: cancel a batch job, reload the router)
- `llm.cache`         CacheEntry, compacted, key = "<tenant>/<params_key>/<prompt_sha256>"
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from schemas.codec import InvalidEvent, decode, encode, to_builtins
from schemas.errors import ERROR_CODES, ErrorCode
from schemas.events import (
    SCHEMA_VERSION,
    Attempt,
    BatchItem,
    BatchJob,
    CacheEntry,
    Candidate,
    Control,
    DatasetRecord,
    DeadLetter,
    DeadLetterHeader,
    DeadLetterSource,
    DecisionInfo,
    ErrorInfo,
    Feedback,
    GenerationParams,
    ImagePart,
    ImageUrl,
    Message,
    OutputMessage,
    RouteRequest,
    RouteResponse,
    RoutingDecision,
    RoutingOptions,
    SourceRecord,
    TextPart,
    Truncated,
    Usage,
)

TOPICS: dict[str, str] = {
    "requests": "llm.requests",
    "responses": "llm.responses",
    "decisions": "llm.decisions",
    "feedback": "llm.feedback",
    "batch_jobs": "llm.batch-jobs",
    "dlq": "llm.requests.dlq",
    "control": "llm.control",
    "cache": "llm.cache",
    "shadow": "llm.shadow",
}

# schema file name (without .schema.json) -> Python type
SCHEMA_TYPES: dict[str, type[Any]] = {
    "route_request": RouteRequest,
    "route_response": RouteResponse,
    "routing_decision": RoutingDecision,
    "feedback": Feedback,
    "batch_job": BatchJob,
    "control": Control,
    "dead_letter": DeadLetter,
    "dataset": DatasetRecord,
    "cache_entry": CacheEntry,
}


def load_schema(name: str) -> dict[str, Any]:
    """The parsed JSON Schema `name` (e.g. "route_request" or "common")."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


__all__ = [
    "ERROR_CODES",
    "SCHEMA_TYPES",
    "SCHEMA_VERSION",
    "TOPICS",
    "Attempt",
    "BatchItem",
    "BatchJob",
    "CacheEntry",
    "Candidate",
    "Control",
    "DatasetRecord",
    "DeadLetter",
    "DeadLetterHeader",
    "DeadLetterSource",
    "DecisionInfo",
    "ErrorCode",
    "ErrorInfo",
    "Feedback",
    "GenerationParams",
    "ImagePart",
    "ImageUrl",
    "InvalidEvent",
    "Message",
    "OutputMessage",
    "RouteRequest",
    "RouteResponse",
    "RoutingDecision",
    "RoutingOptions",
    "SourceRecord",
    "TextPart",
    "Truncated",
    "Usage",
    "decode",
    "encode",
    "load_schema",
    "to_builtins",
]
