"""Shadow calls: for a stable sample of requests (and every unfamiliar prompt), another model
answers too, in the background; its answer, decision (`shadow: true`) and, with a judge the
request may reach, a pairwise verdict go to the sink. The user's response never changes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

import schemas
from routers import split
from routers.decision import Decision
from routers.familiarity import UNFAMILIAR_THRESHOLD
from routers.features import prompt_text
from worker.pipeline import responses
from worker.pipeline.routing import Resolved, RoutingCore, trace_id_for
from worker.providers.client import ModelClient
from worker.providers.errors import ProviderError
from worker.providers.types import CompletionRequest
from worker.training.judge import Judge

log = logging.getLogger(__name__)

ShadowSink = Callable[
    [schemas.RouteResponse, schemas.RoutingDecision, list[schemas.Feedback]], Awaitable[None]
]


@dataclass(frozen=True, slots=True)
class Answered:
    """One answered request, as a shadow call compares against it."""

    request: schemas.RouteRequest
    call: CompletionRequest
    core: RoutingCore
    resolved: Resolved
    decision: Decision
    info: schemas.DecisionInfo
    model: str  # the model that answered
    answer: str
    messages: list[dict[str, Any]]


class ShadowCalls:
    def __init__(
        self,
        client: ModelClient,
        sink: ShadowSink | None,
        judge: Judge | None = None,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        perf: Callable[[], float] = time.perf_counter,
        mask_prompts: bool = False,
    ) -> None:
        self.client = client
        self.sink = sink
        self.judge = judge
        self.wall_clock = wall_clock
        self.perf = perf
        self.mask_prompts = mask_prompts
        self.stats: dict[str, float] = {
            "calls": 0,
            "errors": 0,
            "skipped": 0,
            "cost_usd": 0.0,
            "judge_cost_usd": 0.0,
        }
        self._tasks: set[asyncio.Task[None]] = set()

    def model_for(self, done: Answered) -> str | None:
        """The model to shadow this answer with (None: not sampled, nothing to compare, or a
        model the tenant may not reach)."""
        request, decision, core = done.request, done.decision, done.core
        shadow = core.config.shadow
        if shadow.sample <= 0 or self.sink is None:
            return None
        if shadow.tenants is not None and request.tenant not in shadow.tenants:
            return None
        unfamiliar = (
            shadow.unfamiliar
            and decision.unfamiliar is not None
            and decision.unfamiliar > UNFAMILIAR_THRESHOLD
        )
        if not unfamiliar and not split.sampled(request.request_id, shadow.sample, "shadow"):
            return None
        strong, weak = core.router.strong, core.router.weak
        model = {
            "other": weak if done.model == strong else strong,
            "strong": strong,
            "weak": weak,
        }.get(shadow.model, shadow.model)
        if model == done.model or model not in core.catalogue.models:
            return None  # nothing to compare against
        if model not in decision.eligible:
            return None  # the tenant's prompt never goes to a model it may not use
        return model

    def maybe_start(self, done: Answered) -> None:
        """Start the shadow call of this answer in the background, when one is due."""
        model = self.model_for(done)
        if model is None:
            return
        if len(self._tasks) >= done.core.config.shadow.max_in_flight:
            self.stats["skipped"] += 1
            return
        judge = self.judge
        judged = judge is not None and done.core.permits(done.resolved, judge.settings.model)
        task = asyncio.create_task(self._shadow(done, model, judged))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, done: Answered, model: str, judged: bool) -> None:
        """Call `model` too; publish its answer, its decision (`shadow: true`) and, with a
        judge the request may reach (it reads the prompt), the pairwise verdict. Never touches
        the user's response; never raises."""
        request = done.request
        started = self.perf()
        trace_id = trace_id_for(request)
        try:
            completion = await self.client.complete(
                done.call, [model], deadline_s=done.core.config.providers.request_deadline_s
            )
        except ProviderError as exc:
            self.stats["errors"] += 1
            log.info("shadow call to %s failed: %s", model, type(exc).__name__)
            return
        except Exception:
            log.exception("shadow call to %s failed", model)
            return
        result = completion.result
        self.stats["calls"] += 1
        self.stats["cost_usd"] += completion.cost_usd
        response = responses.route_response(
            request.request_id,
            request.tenant,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode=request.routing.mode,
            answer=responses.Answer.of(result),
            cost_usd=completion.cost_usd,
            latency_ms=(self.perf() - started) * 1000,
            decision=done.info,
            attempts=responses.attempts(completion.attempts),
        )
        event = responses.decision_event(
            request,
            done.info,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mask_prompts=self.mask_prompts,
            messages=done.messages,
        )
        event = msgspec.structs.replace(event, shadow=True, shadow_model=model)
        feedback = await self._verdicts(done, model, result.text) if judged else []
        assert self.sink is not None
        try:
            await self.sink(response, event, feedback)
        except Exception:
            log.exception("publishing the shadow answer of %s failed", request.request_id)

    async def _verdicts(self, done: Answered, model: str, answer: str) -> list[schemas.Feedback]:
        """The judge's pairwise verdict on the two answers, as one feedback event per side."""
        judge = self.judge
        assert judge is not None
        try:
            verdict = await judge.compare(prompt_text(done.messages), done.answer, answer)
        except Exception as exc:
            log.info("shadow judge failed: %s", type(exc).__name__)
            return []
        self.stats["judge_cost_usd"] += verdict.cost_usd
        sides: tuple[tuple[Literal["a", "b"], str], ...] = (("a", done.model), ("b", model))
        feedback: list[schemas.Feedback] = []
        for which, who in sides:
            value = verdict.value_for(which)
            if value is not None:
                feedback.append(
                    judge.feedback(
                        done.request.request_id,
                        who,
                        value,
                        pairwise=True,
                        comment=f"shadow comparison, consistent={verdict.consistent}",
                        tenant=done.request.tenant,
                    )
                )
        return feedback

    async def close(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the shadow calls in flight, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()
