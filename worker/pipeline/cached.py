"""The semantic cache step: answer from a cached answer the tenant may use now (no routing, no
model call), and offer each new answer to the cache in the background."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

import schemas
from worker.errors import RequestRejected
from worker.kafka.records import Handled
from worker.pipeline import responses
from worker.pipeline.routing import RoutingCore, trace_id_for
from worker.providers.types import CompletionResult, Usage

if TYPE_CHECKING:
    from routers.semcache import CacheHit
    from worker.kafka.semcache_sync import CachedAnswer, SemanticCacheSync


class CachedAnswers:
    def __init__(
        self,
        cache: SemanticCacheSync,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        perf: Callable[[], float] = time.perf_counter,
        mask_prompts: bool = False,
    ) -> None:
        self.cache = cache
        self.wall_clock = wall_clock
        self.perf = perf
        self.mask_prompts = mask_prompts
        self._background: set[asyncio.Task[bool]] = set()

    def answer(
        self, request: schemas.RouteRequest, core: RoutingCore, started: float
    ) -> Handled | None:
        """The cached answer to this request, when the cache has one its tenant may use now
        (the model must be in its eligible set now: entries are shared between members, whose
        configs can differ)."""
        hit = self.cache.lookup(request)
        if hit is None:
            return None
        answer = hit.value
        try:
            resolved = core.resolve(request)
        except RequestRejected:
            return None
        if answer.model not in core.eligible(request, resolved):
            return None
        return self._served(request, core, hit, started)

    def _served(
        self,
        request: schemas.RouteRequest,
        core: RoutingCore,
        hit: CacheHit[CachedAnswer],
        started: float,
    ) -> Handled:
        """The response and decision event of a cache hit; the answer priced at the strong
        model is what the hit saved at most."""
        answer = hit.value
        tenant = core.config.tenant(request.tenant)
        info = schemas.DecisionInfo(
            router="semantic-cache",
            router_version=core.router.version,
            policy=tenant.policy if tenant is not None else "unknown",
            model=answer.model,
            score=hit.similarity,
            threshold=core.config.cache.similarity_threshold,
            candidates=[],
            reason=f"semantic cache hit: similarity {hit.similarity:.3f} to the prompt of "
            f"{answer.request_id or 'an earlier request'}",
            cache_hit=True,
        )
        trace_id = trace_id_for(request)
        usage = schemas.Usage(
            input_tokens=answer.usage.input_tokens, output_tokens=answer.usage.output_tokens
        )
        finish = answer.finish_reason if answer.finish_reason in ("stop", "length") else "stop"
        response = responses.route_response(
            request.request_id,
            request.tenant,
            answer=responses.Answer(
                answer.model,
                answer.provider,
                answer.content,
                finish,  # type: ignore[arg-type]
                usage,
            ),
            cost_usd=0.0,
            latency_ms=(self.perf() - started) * 1000,
            decision=info,
            attempts=[],
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode=request.routing.mode,
            cache_hit=True,
        )
        event = responses.decision_event(
            request,
            info,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mask_prompts=self.mask_prompts,
        )
        strong = core.catalogue.models.get(core.router.strong)
        strong_cost = None
        if strong is not None:
            priced = Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
            strong_cost = strong.cost_usd(priced)
        return Handled(
            response=response,
            decision=msgspec.structs.replace(event, cache_hit=True),
            routing_ms=0.0,
            strong_cost_usd=strong_cost,
        )

    def store(self, request: schemas.RouteRequest, result: CompletionResult) -> None:
        """Offer the answer to the cache, in the background."""
        stored = responses.route_response(
            request.request_id,
            request.tenant,
            trace_id=None,
            created_at=datetime.now(UTC),
            mode=request.routing.mode,
            answer=responses.Answer.of(result),
            cost_usd=result.cost_usd,
            attempts=[],
        )
        task = asyncio.create_task(self.cache.publish(request, stored))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
