"""What the pipeline publishes, built in one place each: `route_response` is the only builder
of a `RouteResponse` (answers, errors, cached answers, batch items, shadow answers), and
`decision_event` the only builder of a `RoutingDecision`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import schemas
from routers.decision import Decision
from routers.features import prompt_text
from schemas.events import FinishReason, Mode
from worker.errors import WorkerError
from worker.providers.errors import CircuitOpenError, ProviderError
from worker.providers.types import Attempt, CompletionRequest, CompletionResult, Usage


@dataclass(frozen=True, slots=True)
class Answer:
    """A model's answer as the response carries it."""

    model: str
    provider: str | None
    content: str
    finish_reason: FinishReason | None
    usage: schemas.Usage

    @classmethod
    def of(cls, result: CompletionResult) -> Answer:
        return cls(
            result.model, result.provider, result.text, result.finish_reason, usage(result.usage)
        )


def route_response(
    request_id: str,
    tenant: str,
    *,
    trace_id: str | None,
    created_at: datetime,
    mode: Mode | None,
    answer: Answer | None = None,
    error: schemas.ErrorInfo | None = None,
    cost_usd: float = 0.0,
    latency_ms: float = 0.0,
    decision: schemas.DecisionInfo | None = None,
    attempts: list[schemas.Attempt] | None = None,
    cache_hit: bool | None = None,
) -> schemas.RouteResponse:
    """The response to one request: `answer` (status "ok") or `error` (status "error")."""
    if (answer is None) == (error is None):
        raise ValueError("a response carries an answer or an error")
    return schemas.RouteResponse(
        schema_version=1,
        request_id=request_id,
        tenant=tenant,
        status="ok" if error is None else "error",
        model=answer.model if answer is not None else None,
        provider=answer.provider if answer is not None else None,
        message=(
            schemas.OutputMessage(role="assistant", content=answer.content)
            if answer is not None
            else None
        ),
        finish_reason=answer.finish_reason if answer is not None else None,
        usage=answer.usage if answer is not None else schemas.Usage(),
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        decision=decision,
        attempts=attempts if attempts is not None else [],
        error=error,
        trace_id=trace_id,
        created_at=created_at,
        mode=mode,
        cache_hit=cache_hit,
    )


def error_info(
    error: type[WorkerError], message: str, retriable: bool | None = None
) -> schemas.ErrorInfo:
    """The wire's error: the class's stable code (`worker.errors`); `retriable` None: the
    class's."""
    return schemas.ErrorInfo(
        type=error.code,
        message=message,
        retriable=error.retriable if retriable is None else retriable,
    )


def provider_error(exc: ProviderError) -> schemas.ErrorInfo:
    """The wire's error for a provider failure."""
    return error_info(type(exc), str(exc), exc.retriable)


def retry_later(error: ProviderError) -> bool:
    """Whether the producer may send the request again later: a transient failure, or every
    model cooling down (the same model must not be retried now, but will recover)."""
    return error.retriable or isinstance(error, CircuitOpenError)


def decision_event(
    request: schemas.RouteRequest,
    info: schemas.DecisionInfo,
    *,
    trace_id: str,
    created_at: datetime,
    mask_prompts: bool,
    messages: list[dict[str, Any]] | None = None,
    text: str | None = None,
) -> schemas.RoutingDecision:
    """The decision event of one request. `text`: the messages' default `prompt_text`, when
    the caller has it already."""
    if text is None:
        if messages is None:
            messages = [schemas.to_builtins(m) for m in request.messages]
        text = prompt_text(messages)
    return schemas.RoutingDecision(
        schema_version=1,
        request_id=request.request_id,
        tenant=request.tenant,
        decision=info,
        trace_id=trace_id,
        created_at=created_at,
        mode=request.routing.mode,
        prompt=None if mask_prompts else text,
        prompt_sha256=hashlib.sha256(text.encode()).hexdigest(),
        params=schemas.to_builtins(request.params) or None,
    )


def decision_info(decision: Decision, arm: str | None = None) -> schemas.DecisionInfo:
    return schemas.DecisionInfo(
        arm=arm,
        router=decision.router or "unknown",
        router_version=decision.router_version or "unknown",
        policy=decision.policy,
        model=decision.model,
        score=decision.score if math.isfinite(decision.score) else 0.0,
        threshold=decision.threshold,
        candidates=[
            schemas.Candidate(
                model=c.model,
                predicted_quality=min(1.0, max(0.0, c.predicted_quality)),
                est_cost_usd=c.est_cost_usd,
                est_latency_ms=c.est_latency_ms
                if c.est_latency_ms is not None and math.isfinite(c.est_latency_ms)
                else None,
            )
            for c in decision.candidates
            if math.isfinite(c.est_cost_usd)
        ],
        reason=decision.reason,
        unfamiliar=(
            decision.unfamiliar
            if decision.unfamiliar is not None and math.isfinite(decision.unfamiliar)
            else None
        ),
    )


def completion_request(
    request: schemas.RouteRequest, messages: Sequence[dict[str, Any]] | None = None
) -> CompletionRequest:
    p = request.params
    stop: tuple[str, ...] = ()
    if isinstance(p.stop, str):
        stop = (p.stop,)
    elif p.stop:
        stop = tuple(p.stop)
    return CompletionRequest(
        messages=tuple(
            messages if messages is not None else (schemas.to_builtins(m) for m in request.messages)
        ),
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=stop,
        logprobs=bool(p.logprobs),
        top_logprobs=p.top_logprobs,
        request_id=request.request_id,
    )


def attempts(attempts: Sequence[Attempt]) -> list[schemas.Attempt]:
    return [
        schemas.Attempt(
            model=a.model,
            provider=a.provider,
            status=a.status,
            latency_ms=max(0.0, a.latency_ms),
            http_status=a.http_status,
            error_type=a.error_type,
            retry=a.retry,
            deployment=a.deployment,
        )
        for a in attempts
    ]


def usage(usage: Usage) -> schemas.Usage:
    return schemas.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_input_tokens,
    )
