"""One request, end to end: admission and deadline -> semantic cache -> route -> call (cascade,
fallbacks, spend limits) -> response and decision events. The Kafka member
(`worker.kafka.member`) calls `Pipeline.handle`.

The parts: `routing` (the routing core and policy resolution), `responses` (the one builder of
each published event), `calls` (model calls, traced), `cascade`, `shadow`, `experiments` (A/B
arms), `cached` (the semantic cache step), `batch` (the answers of batch jobs) and `spend`
(per-tenant spend limits).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

import schemas
from routers.artifact import Artifact
from routers.cascade import checks_answer
from routers.decision import Decision
from routers.eligibility import Eligible
from routers.learned import assess
from worker.batch.jobs import Finished
from worker.config.telemetry import TelemetryConfig
from worker.errors import (
    RequestDeadlineExceeded,
    RequestRejected,
    WorkerError,
)
from worker.kafka.records import Deferred, Handled, RecordInfo
from worker.pipeline import batch, responses
from worker.pipeline.cached import CachedAnswers
from worker.pipeline.calls import ModelCalls, Outcome
from worker.pipeline.cascade import Cascade, CascadeCall, LoadedAnswerScorer
from worker.pipeline.experiments import Arm, Experiments
from worker.pipeline.routing import (
    Prepared,
    Resolved,
    Route,
    RoutingCore,
    trace_id_for,
)
from worker.pipeline.shadow import Answered, ShadowCalls, ShadowSink
from worker.pipeline.spend import SpendLedger
from worker.providers.client import ModelClient
from worker.providers.errors import AllModelsFailedError, ProviderError
from worker.providers.types import CompletionRequest, RoutedCompletion
from worker.telemetry import Tracing
from worker.training.judge import Judge

if TYPE_CHECKING:
    from worker.kafka.semcache_sync import SemanticCacheSync

log = logging.getLogger(__name__)

PREPARE_CHUNK = 64  # requests scored per batched `predict` (the member fetches up to thousands)


class _Failed(Exception):
    """A step ends the request with an error response (`routed`: the decision, when made)."""

    def __init__(self, error: schemas.ErrorInfo, routed: _Routed | None = None) -> None:
        self.error = error
        self.routed = routed


def _rejected(why: str) -> schemas.ErrorInfo:
    return responses.error_info(RequestRejected, why)


@dataclass(slots=True)
class _Job:
    """One request in flight: when it started, the routing work done for its fetch, what its
    calls cost and tried."""

    request: schemas.RouteRequest
    started: float
    now: datetime
    ready: Prepared | None
    outcome: Outcome = field(default_factory=Outcome)


@dataclass(frozen=True, slots=True)
class _Routed:
    """The routing of one request: its core, settings, decision and what its call is held to."""

    core: RoutingCore
    resolved: Resolved
    decision: Decision
    info: schemas.DecisionInfo
    messages: list[dict[str, Any]]
    ready: Prepared | None  # the fetch's routing work, when done by this core
    budget_ms: float | None  # the latency budget (max_latency_ms or time left, the smaller)
    deadline_s: float
    limited: bool  # the tenant has a spend limit


class Pipeline:
    """Route and answer one request; never raises for a request it was given.

    Every part comes through the constructor: `cache` (semantic cache), `can_batch` (model ->
    whether the provider's Batch API takes it), `arms` (A/B experiments), `shadow_sink` and
    `shadow_judge` (shadow calls), `spend` (per-tenant spend limits), `answer_scorers` (learned
    cascade scorers)."""

    def __init__(
        self,
        core: RoutingCore,
        client: ModelClient,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        perf: Callable[[], float] = time.perf_counter,
        mask_prompts: bool = False,
        tracing: Tracing | None = None,
        answer_scorers: dict[str, LoadedAnswerScorer] | None = None,
        spend: SpendLedger | None = None,
        cache: SemanticCacheSync | None = None,
        can_batch: Callable[[str], bool] | None = None,
        arms: dict[str, list[Arm]] | None = None,
        shadow_sink: ShadowSink | None = None,
        shadow_judge: Judge | None = None,
    ) -> None:
        scorers = answer_scorers or {}
        for name, spec in core.config.policies.items():
            if spec.cascade_scorer is not None and spec.cascade_scorer not in scorers:
                raise ValueError(
                    f"policy {name!r}: the learned scorer {spec.cascade_scorer} is not loaded"
                )
        self.core = core
        self.client = client
        self.spend = spend
        self.cache = cache  # the semantic cache (its stats are the app's metrics)
        self.cached = None
        if cache is not None:
            self.cached = CachedAnswers(
                cache, wall_clock=wall_clock, perf=perf, mask_prompts=mask_prompts
            )
        self.can_batch: Callable[[str], bool] = can_batch or (lambda model: False)
        self.tracing = tracing or Tracing(TelemetryConfig())
        self.wall_clock = wall_clock
        self.perf = perf
        self.mask_prompts = mask_prompts
        self.experiments = Experiments(core.config.experiments, arms)
        self.calls = ModelCalls(client, self.tracing, core.catalogue)
        self.cascade = Cascade(self.calls, client, scorers, perf)
        self.shadow = ShadowCalls(
            client,
            shadow_sink,
            shadow_judge,
            wall_clock=wall_clock,
            perf=perf,
            mask_prompts=mask_prompts,
        )

    @property
    def shadow_stats(self) -> dict[str, float]:
        return self.shadow.stats

    async def close_shadow(self, timeout_s: float) -> None:
        await self.shadow.close(timeout_s)

    def reload(self, artifact: Artifact) -> RoutingCore:
        """Route with `artifact` from now on (requests already routed finish as they were).
        Building the core validates the artifact against the config; on error nothing
        changes."""
        core = RoutingCore(self.core.config, artifact, self.core.catalogue)
        self.core = core
        log.info("router %s %s loaded", artifact.router.name, artifact.router.version)
        return core

    def prepare(self, requests: Sequence[schemas.RouteRequest]) -> list[Prepared | None]:
        """Score the routing prompts of a fetched batch with one `predict` call per
        `PREPARE_CHUNK` requests (per-call overhead dominates a single prompt's features; the
        chunk bounds the feature matrix a fetch of thousands would allocate). Never raises: on
        failure those requests are scored alone in `handle`, where errors end in a response."""
        out: list[Prepared | None] = []
        for lo in range(0, len(requests), PREPARE_CHUNK):
            chunk = requests[lo : lo + PREPARE_CHUNK]
            try:
                core = self.core
                messages = [[schemas.to_builtins(m) for m in r.messages] for r in chunk]
                texts = [core.prompt(m) for m in messages]
                t0 = self.perf()
                predicted, far = assess(core.router, texts)
                share_ms = (self.perf() - t0) * 1000 / len(texts)
            except Exception:
                log.exception("batched routing failed; scoring each request alone")
                out.extend([None] * len(chunk))
                continue
            out.extend(
                Prepared(
                    messages[i],
                    texts[i],
                    predicted[i].copy(),
                    share_ms,
                    core,
                    float(far[i]) if far is not None else None,
                )
                for i in range(len(texts))
            )
        return out

    # ------------------------------------------------------------ one request

    async def handle(
        self,
        request: schemas.RouteRequest,
        record: RecordInfo,
        prepared: object = None,
        *,
        interactive: bool = False,
    ) -> Handled | Deferred:
        """The response, or `Deferred` for a batch-mode request the loop hands to the batch jobs
        (`interactive=True` answers it now whatever its mode)."""
        ready = prepared if isinstance(prepared, Prepared) else None
        job = _Job(request, self.perf(), self.wall_clock(), ready)
        try:
            self._admit(request, record.topic, job.now)
            cached = None
            if self.cached is not None and not interactive:
                cached = self.cached.answer(request, self.core, job.started)
            if cached is not None:
                return cached
            routed = self._route(job)
            call = self._call_for(request, routed)
            if not interactive and self._batchable(routed):
                return self._deferred(request, routed, call)
            completion = await self._answer(job, routed, call)
        except _Failed as failed:
            return self._error(job, failed.error, failed.routed)
        info = self._with_cascade_reason(routed.info, job.outcome)
        self.shadow.maybe_start(self._answered(request, routed, call, info, completion))
        if self.cached is not None:
            self.cached.store(request, completion.result)
        return self._response(job, routed, info, completion)

    def _admit(self, request: schemas.RouteRequest, topic: str | None, now: datetime) -> None:
        """The tenant may send here, and the request's deadline has not passed."""
        try:
            self.core.admit(request, topic)
        except RequestRejected as exc:
            raise _Failed(_rejected(str(exc))) from None
        if request.deadline is not None and request.deadline <= now:
            raise _Failed(
                responses.error_info(
                    RequestDeadlineExceeded,
                    f"deadline {request.deadline.isoformat()} passed before routing",
                )
            )

    def _route(self, job: _Job) -> _Routed:
        """The decision, under the request's A/B arm (its router and policy, when it has one),
        traced on the `route` span."""
        request, outcome, now = job.request, job.outcome, job.now
        arm = self.experiments.arm_for(request)
        core = arm.core if arm is not None and arm.core is not None else self.core
        ready = job.ready if job.ready is not None and job.ready.core is core else None
        try:
            with self.tracing.route_span() as span:
                resolved = core.resolve(request, arm.policy if arm is not None else None)
                t0 = self.perf()
                budget = _latency_budget(request, resolved, now)
                est = None
                if budget is not None or resolved.options.latency_weight_per_s:
                    est = self.client.expected_latency_ms(
                        core.router.models, request.params.max_tokens
                    )
                decision = core.decide(
                    request, resolved, ready, est_latency_ms=est, latency_budget_ms=budget
                )
                outcome.routing_ms = (self.perf() - t0) * 1000
                if ready is not None:
                    outcome.routing_ms += ready.predict_ms
                info = responses.decision_info(decision, arm.label if arm is not None else None)
                span.set_decision(info)
        except RequestRejected as exc:
            raise _Failed(_rejected(str(exc))) from None
        outcome.decision = decision
        messages = (
            ready.messages
            if ready is not None
            else [schemas.to_builtins(m) for m in request.messages]
        )
        deadline_s = core.config.providers.request_deadline_s
        if request.deadline is not None:
            deadline_s = min(deadline_s, (request.deadline - now).total_seconds())
        limited = self.spend is not None and self.spend.limited(request.tenant)
        return _Routed(core, resolved, decision, info, messages, ready, budget, deadline_s, limited)

    def _call_for(self, request: schemas.RouteRequest, routed: _Routed) -> CompletionRequest:
        call = responses.completion_request(request, routed.messages)
        if (routed.resolved.budget_usd is not None or routed.limited) and call.max_tokens is None:
            # the budget was checked against this many output tokens: hold the provider to it
            call = replace(call, max_tokens=routed.core.output_tokens(request, routed.resolved))
        return call

    def _batchable(self, routed: _Routed) -> bool:
        """A batch-mode request goes to a batch job when its model's provider takes batches
        (batch spend is not tracked: a tenant with a spend limit is answered now)."""
        return (
            routed.resolved.mode == "batch"
            and not routed.limited
            and self.can_batch(routed.decision.model)
        )

    def _deferred(
        self, request: schemas.RouteRequest, routed: _Routed, call: CompletionRequest
    ) -> Deferred:
        trace_id = trace_id_for(request)
        event = self._event(request, routed.info, trace_id, messages=routed.messages)
        return Deferred(model=routed.decision.model, call=call, decision=event)

    async def _answer(
        self, job: _Job, routed: _Routed, call: CompletionRequest
    ) -> RoutedCompletion:
        """Call the chosen model (through the cascade when its answer is to be checked), its
        fallbacks after it, within the tenant's spend limit."""
        request, core, resolved, outcome = job.request, routed.core, routed.resolved, job.outcome
        decision, spec = routed.decision, resolved.spec
        chain = core.fallback_chain(decision, resolved.options, routed.budget_ms)
        plan = Route(routed.budget_ms, decision.policy == "latency_tight")
        # the model whose answer a cascade checks: the policy's `cheap` one, else the router's weak
        cheap = resolved.options.weak or core.router.weak
        cascade = checks_answer(decision, spec.kind == "cascade", spec.on_unfamiliar, cheap)
        allowed = None
        if cascade or routed.limited:
            allowed = core.eligible(request, resolved, routed.messages)
        reserved = self._reserve(request.tenant, routed, chain, cascade, allowed)
        try:
            if cascade:
                assert allowed is not None
                checked = self._cascade_call(request, routed, call, chain, allowed, plan)
                completion = await self.cascade.answer(checked, routed.deadline_s, outcome)
            else:
                completion = await self.calls.call(
                    request, call, chain, routed.deadline_s, outcome, plan
                )
            outcome.completion = completion
        except AllModelsFailedError as exc:
            outcome.attempts.extend(responses.attempts(exc.attempts))
            last = exc.last_error
            error = responses.error_info(type(last), exc.describe(), responses.retry_later(last))
            raise _Failed(error, routed) from None
        except ProviderError as exc:
            raise _Failed(responses.provider_error(exc), routed) from None
        finally:
            if reserved is not None:
                self._settle(request.tenant, reserved, outcome)
        return completion

    @staticmethod
    def _cascade_call(
        request: schemas.RouteRequest,
        routed: _Routed,
        call: CompletionRequest,
        chain: Sequence[str],
        allowed: Eligible,
        plan: Route,
    ) -> CascadeCall:
        core, resolved, ready = routed.core, routed.resolved, routed.ready
        spec = resolved.spec
        return CascadeCall(
            request,
            call,
            chain,
            spec,
            spec.strong or core.router.strong,
            ready.text if ready is not None else core.prompt(routed.messages),
            allowed,
            core.permits(resolved, spec.cascade_grader),
            plan,
        )

    def _reserve(
        self,
        tenant: str,
        routed: _Routed,
        chain: Sequence[str],
        cascade: bool,
        allowed: Eligible | None,
    ) -> float | None:
        """Reserve the request's cost bound against its tenant's spend limit (None: no limit):
        the dearest model of the chain, and the strong model too when a cascade may escalate."""
        spend = self.spend
        if not routed.limited or spend is None:
            return None
        assert allowed is not None
        core, resolved = routed.core, routed.resolved
        bounds = allowed.cost_bound_usd
        reserved = max(bounds.get(m, math.inf) for m in chain)
        if cascade:
            reserved += bounds.get(resolved.spec.strong or core.router.strong, 0.0)
        why = spend.reserve(tenant, reserved)
        if why is not None:
            raise _Failed(_rejected(why), routed)
        return reserved

    def _settle(self, tenant: str, reserved: float, outcome: Outcome) -> None:
        assert self.spend is not None
        done = outcome.completion
        paid = outcome.extra_cost_usd + (done.cost_usd if done is not None else 0.0)
        self.spend.settle(tenant, reserved, paid)

    @staticmethod
    def _with_cascade_reason(info: schemas.DecisionInfo, outcome: Outcome) -> schemas.DecisionInfo:
        if outcome.cascade_reason is None:
            return info
        return msgspec.structs.replace(info, reason=f"{info.reason}; {outcome.cascade_reason}")

    @staticmethod
    def _answered(
        request: schemas.RouteRequest,
        routed: _Routed,
        call: CompletionRequest,
        info: schemas.DecisionInfo,
        completion: RoutedCompletion,
    ) -> Answered:
        result = completion.result
        return Answered(
            request,
            call,
            routed.core,
            routed.resolved,
            routed.decision,
            info,
            result.model,
            result.text,
            routed.messages,
        )

    def _response(
        self,
        job: _Job,
        routed: _Routed,
        info: schemas.DecisionInfo,
        completion: RoutedCompletion,
    ) -> Handled:
        """The answer's response and decision event (the deployment on both, not on a shadow's),
        with the same usage priced at the strong model."""
        request, core, outcome, result = job.request, routed.core, job.outcome, completion.result
        if completion.deployment is not None:
            info = msgspec.structs.replace(
                info,
                deployment=completion.deployment,
                deployment_reason=completion.deployment_reason,
            )
        strong = core.catalogue.models.get(core.router.strong)
        if strong is not None:
            outcome.strong_cost_usd = strong.cost_usd(result.usage)
        trace_id = trace_id_for(request)
        response = responses.route_response(
            request.request_id,
            request.tenant,
            answer=responses.Answer.of(result),
            cost_usd=completion.cost_usd + outcome.extra_cost_usd,
            attempts=outcome.attempts,
            latency_ms=(self.perf() - job.started) * 1000,
            decision=info,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode=request.routing.mode,
        )
        ready = routed.ready
        routed_text = ready.text if ready is not None and core.default_prompt else None
        return Handled(
            response=response,
            decision=self._event(request, info, trace_id, routed.messages, routed_text),
            routing_ms=outcome.routing_ms,
            strong_cost_usd=outcome.strong_cost_usd,
        )

    def _error(self, job: _Job, error: schemas.ErrorInfo, routed: _Routed | None) -> Handled:
        """The error response; with the decision event when the request was routed."""
        request, outcome = job.request, job.outcome
        info = routed.info if routed is not None else None
        trace_id = trace_id_for(request)
        response = responses.route_response(
            request.request_id,
            request.tenant,
            error=error,
            cost_usd=outcome.extra_cost_usd,
            latency_ms=(self.perf() - job.started) * 1000,
            decision=info,
            attempts=outcome.attempts,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode=request.routing.mode,
        )
        event = None
        if routed is not None:
            event = self._event(request, routed.info, trace_id, routed.messages)
        return Handled(response=response, decision=event, routing_ms=outcome.routing_ms or None)

    def internal_error(
        self, request: schemas.RouteRequest, record: RecordInfo, exc: BaseException
    ) -> Handled:
        error = responses.error_info(
            WorkerError, f"{type(exc).__name__} while handling the request"
        )
        return self._error(_Job(request, self.perf(), self.wall_clock(), None), error, None)

    def _event(
        self,
        request: schemas.RouteRequest,
        info: schemas.DecisionInfo,
        trace_id: str,
        messages: list[dict[str, Any]] | None = None,
        text: str | None = None,
    ) -> schemas.RoutingDecision:
        return responses.decision_event(
            request,
            info,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mask_prompts=self.mask_prompts,
            messages=messages,
            text=text,
        )

    # ------------------------------------------------------------ batch jobs

    def redacted(self, finished: Finished) -> Finished:
        """The ended batch item with its provider strings redacted by the configured keys."""
        return batch.redacted(finished, self.client.redactor)

    def batch_response(self, finished: Finished) -> Handled:
        """The response for one item of an ended batch job: its answer (priced with the batch
        discount), or an error response (cancelled job, failed or missing item)."""
        done = self.redacted(finished)
        return batch.batch_response(done, self.core, self.wall_clock(), self.wall_clock())


def _latency_budget(
    request: schemas.RouteRequest, resolved: Resolved, now: datetime
) -> float | None:
    """The request's latency budget: its `max_latency_ms` or the time left to its deadline,
    the smaller."""
    budget = resolved.options.max_latency_ms
    if request.deadline is not None:
        left_ms = (request.deadline - now).total_seconds() * 1000.0
        budget = left_ms if budget is None else min(budget, left_ms)
    return budget
