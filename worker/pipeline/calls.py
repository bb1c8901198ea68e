"""Calling the models: one fallback chain inside a `chat {model}` span, and what the calls of one
request add up to (`Outcome`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import schemas
from routers.decision import Decision
from worker.config.models import Catalogue
from worker.pipeline import responses
from worker.pipeline.routing import Route
from worker.providers.client import ModelClient
from worker.providers.errors import AllModelsFailedError
from worker.providers.types import CompletionRequest, RoutedCompletion
from worker.telemetry import Tracing


@dataclass
class Outcome:
    """Everything the telemetry and metrics want to know about one handled request."""

    decision: Decision | None = None
    routing_ms: float = 0.0
    completion: RoutedCompletion | None = None
    strong_cost_usd: float | None = None  # the same usage priced at the strong model
    escalated: bool = False
    extra_cost_usd: float = 0.0  # paid beyond the answer used (escalated answer, grader call)
    cascade_reason: str | None = None  # why the cascade accepted or escalated
    attempts: list[schemas.Attempt] = field(default_factory=list)


class ModelCalls:
    """Calls a fallback chain through the provider client, traced."""

    def __init__(self, client: ModelClient, tracing: Tracing, catalogue: Catalogue) -> None:
        self.client = client
        self.tracing = tracing
        self.catalogue = catalogue

    async def call(
        self,
        request: schemas.RouteRequest,
        call: CompletionRequest,
        chain: Sequence[str],
        deadline_s: float,
        outcome: Outcome,
        route: Route | None = None,
    ) -> RoutedCompletion:
        """One fallback chain, inside a `chat {model}` span named for the first model."""
        spec = self.catalogue[chain[0]]
        with self.tracing.chat_span(
            spec.name,
            spec.provider,
            spec.provider_model,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            input_messages=request.messages,
        ) as chat:
            try:
                completion = await self.client.complete(
                    call,
                    chain,
                    deadline_s=deadline_s,
                    within_ms=route.budget_ms if route is not None else None,
                    fastest=route is not None and route.fastest,
                )
            except AllModelsFailedError as exc:
                chat.add_attempts(responses.attempts(exc.attempts))
                chat.set_error(type(exc.last_error).__name__, str(exc.last_error))
                raise
            attempts = responses.attempts(completion.attempts)
            outcome.attempts.extend(attempts)
            chat.add_attempts(attempts)
            if completion.deployment is not None:
                chat.set_deployment(completion.deployment, completion.deployment_reason or "")
            chat.set_result(completion.result)
            return completion
