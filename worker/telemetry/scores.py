"""Feedback events become Langfuse scores, posted by the worker itself so every answer is seen.

    POST {base_url}/api/public/scores    one JSON object per score (Langfuse's CreateScoreRequest)

One object per request is what both supported server lines accept: Langfuse v3 and v4 validate the
body with `PostScoresBodyV1` (one object; an array is answered 400). The Langfuse SDK's own score
queue is not used: it logs and drops what the server refuses, and the feedback offset would be
committed over a lost score. The fields sent are the ones the server's schema knows
(`tests/telemetry/fixtures/langfuse_scores_api.json` is the vendored fragment of its API
definition the tests check every body against): the event's time goes into `metadata.created_at`,
since the server stamps a score with its own ingestion time.

The score id is derived from the event (trace, name, source, time), so a redelivered event upserts
the same score instead of adding one; retrying is always safe.

Errors (the feedback consumer decides from the class, never from a message):

    ScoreError            root
    ├── ScoreUnavailable  retriable: network trouble, timeout, 408, 429, 5xx; retry with backoff,
    │                     keep the offset
    └── ScoreRejected     not retriable: any other answer; the event goes to the feedback
                          dead-letter topic with the server's answer (`status`, `body`)
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Final

import httpx

from schemas.errors import ErrorCode
from schemas.events import Feedback
from schemas.trace import request_trace_id, trace_id_hex
from worker.config.telemetry import LangfuseConfig
from worker.errors import WorkerError
from worker.secrets import redact

__all__ = [
    "SCORES_PATH",
    "LangfuseScores",
    "ScoreError",
    "ScoreRejected",
    "ScoreUnavailable",
    "score_body",
    "score_trace_id",
]

SCORES_PATH: Final = "/api/public/scores"
_ANSWER_CHARS: Final = 1000  # of the server's answer kept in errors and dead letters
_RETRIABLE_STATUS: Final = frozenset({408, 429})


class ScoreError(WorkerError):
    """A score was not accepted. `retriable` says whether sending it again may succeed."""

    code: ClassVar[ErrorCode] = "ScoreError"
    retriable = False

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ScoreUnavailable(ScoreError):
    """The server could not take the score now (network, timeout, 408, 429, 5xx)."""

    code = "ScoreUnavailable"
    retriable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after_s = retry_after_s


class ScoreRejected(ScoreError):
    """The server refused the score itself (400, 401, 403, 404, 413, ...): sending it again
    will not help."""

    code = "ScoreRejected"


def score_trace_id(feedback: Feedback) -> str:
    """The trace the score lands on: the event's `trace_id`, else derived from its tenant and
    `request_id` (`schemas.trace`, as the worker derives the request's trace)."""
    if feedback.trace_id is not None:
        return feedback.trace_id
    assert feedback.request_id is not None  # Feedback.__post_init__ guarantees one
    return request_trace_id(feedback.request_id, feedback.tenant)


def score_body(feedback: Feedback, environment: str | None = None) -> dict[str, Any]:
    """The CreateScoreRequest object for one feedback event (JSON-ready)."""
    trace_id = score_trace_id(feedback)
    seed = "\x1f".join((trace_id, feedback.name, feedback.source, feedback.created_at.isoformat()))
    metadata: dict[str, str] = {"source": feedback.source}
    if feedback.request_id is not None:
        metadata["request_id"] = feedback.request_id
    if feedback.model is not None:
        metadata["model"] = feedback.model
    metadata["created_at"] = feedback.created_at.isoformat()
    value = feedback.value
    body: dict[str, Any] = {"id": trace_id_hex(seed), "traceId": trace_id}
    body["name"] = feedback.name
    if isinstance(value, bool):  # before int: a bool is an int; the server wants 1 or 0
        body["value"], body["dataType"] = (1 if value else 0), "BOOLEAN"
    elif isinstance(value, str):
        body["value"], body["dataType"] = value, "CATEGORICAL"
    else:
        body["value"], body["dataType"] = float(value), "NUMERIC"
    if feedback.comment is not None:
        body["comment"] = feedback.comment
    body["metadata"] = metadata
    if environment:
        body["environment"] = environment
    return body


class LangfuseScores:
    """Posts one score per call to a Langfuse server; raises a `ScoreError` when not accepted.

    An async context manager (it owns an `httpx.AsyncClient`); `transport` is for tests.
    """

    def __init__(
        self,
        config: LangfuseConfig,
        *,
        environ: Mapping[str, str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        public_key, secret_key = config.resolve_keys(environ)
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self.url = config.base_url.rstrip("/") + SCORES_PATH
        self.environment = config.environment
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Basic {token}", "content-type": "application/json"},
            timeout=httpx.Timeout(float(config.timeout_s)),
            transport=transport,
        )

    async def __aenter__(self) -> LangfuseScores:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, feedback: Feedback) -> str:
        """Send the score of `feedback`; returns the score id the server acknowledged."""
        body = score_body(feedback, self.environment)
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TransportError as exc:  # connect, read, write, pool, timeouts
            raise ScoreUnavailable(f"{type(exc).__name__}: {redact(str(exc))}") from None
        answer = redact(response.text[:_ANSWER_CHARS])
        status = response.status_code
        if 200 <= status < 300:
            try:
                acknowledged = response.json().get("id")
            except (ValueError, AttributeError):
                acknowledged = None
            return acknowledged if isinstance(acknowledged, str) and acknowledged else body["id"]
        message = f"Langfuse answered {status}: {answer}"
        if status >= 500 or status in _RETRIABLE_STATUS:
            raise ScoreUnavailable(
                message, status=status, body=answer, retry_after_s=_retry_after(response)
            )
        raise ScoreRejected(message, status=status, body=answer)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
