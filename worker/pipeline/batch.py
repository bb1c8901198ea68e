"""The responses to the items of ended batch jobs (`worker.batch`): the answer priced with the
batch discount, or why there is none."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import schemas
from schemas.trace import request_trace_id
from worker.batch.jobs import Finished
from worker.errors import BatchCancelled, MissingBatchResult, SourceRecordLost
from worker.kafka.records import Handled
from worker.pipeline import responses
from worker.pipeline.routing import RoutingCore
from worker.providers.errors import ProviderError
from worker.providers.redaction import scrub_error, scrub_result
from worker.providers.types import CompletionResult
from worker.secrets import Redactor


def redacted(finished: Finished, redactor: Redactor) -> Finished:
    """The ended item with its provider strings redacted by the configured keys (batch results
    are parsed outside the client's call path)."""
    outcome = finished.outcome
    if isinstance(outcome, CompletionResult):
        return replace(finished, outcome=scrub_result(outcome, redactor))
    if isinstance(outcome, ProviderError):
        scrub_error(outcome, redactor)
    return finished


def batch_response(
    finished: Finished, core: RoutingCore, now: datetime, created_at: datetime
) -> Handled:
    """The response for one item of an ended batch job (`finished`, redacted): its answer, or
    an error response (cancelled job, failed or missing item). `now`: for its latency."""
    item, request, outcome = finished.item, finished.request, finished.outcome
    tenant = item.tenant if item.tenant is not None else (request and request.tenant)
    spec = core.catalogue.models.get(finished.model)
    ok = isinstance(outcome, CompletionResult)
    attempt = schemas.Attempt(
        model=finished.model,
        provider=spec.provider if spec is not None else "unknown",
        status="ok" if ok else "error",
        latency_ms=0.0,
        error_type=None if ok else _error_name(outcome),
    )
    answer, error, cost_usd = None, None, 0.0
    if isinstance(outcome, CompletionResult):
        answer, cost_usd = responses.Answer.of(outcome), outcome.cost_usd
    else:
        error = _error(finished)
    response = responses.route_response(
        item.request_id,
        tenant or "unknown",
        answer=answer,
        error=error,
        cost_usd=cost_usd,
        latency_ms=_since_ms(request.created_at if request else None, now),
        decision=item.decision,
        attempts=[attempt],
        trace_id=request_trace_id(item.request_id, tenant or None),
        created_at=created_at,
        mode="batch",
    )
    if not isinstance(outcome, CompletionResult):
        return Handled(response=response)
    strong = core.catalogue.models.get(core.router.strong)
    return Handled(
        response=response,
        strong_cost_usd=strong.cost_usd(outcome.usage, batch=True) if strong else None,
    )


def _error(finished: Finished) -> schemas.ErrorInfo:
    """Why an ended batch item has no answer: its request is gone, its job was cancelled, or
    the provider failed it (or left it out of the results)."""
    item, outcome = finished.item, finished.outcome
    if finished.request is None:
        return responses.error_info(
            SourceRecordLost,
            f"the request at {item.topic}[{item.partition}]@{item.offset} is no "
            "longer retained; it cannot be answered",
            True,
        )
    if finished.cancelled:
        return responses.error_info(
            BatchCancelled,
            f"batch job {finished.job_id} was cancelled before this request ran",
            True,
        )
    message = str(outcome) if outcome is not None else "missing from the batch results"
    failed = type(outcome) if isinstance(outcome, ProviderError) else MissingBatchResult
    return responses.error_info(failed, message, True)


def _error_name(outcome: object) -> schemas.ErrorCode:
    return outcome.code if isinstance(outcome, ProviderError) else MissingBatchResult.code


def _since_ms(start: datetime | None, now: datetime) -> float:
    return max(0.0, (now - start).total_seconds() * 1000) if start is not None else 0.0
