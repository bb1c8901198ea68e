"""One request, end to end: deadline -> tenant policy -> route -> call (cascade, fallbacks) ->
response and decision events. The Kafka loop (`worker.loop`) calls `Pipeline.handle`.

Policy resolution: a request may only *narrow* what its tenant allows (fewer models, more denied,
a lower budget); `policy`, `threshold`, `strong_fraction` and `mode` overrides apply when the
tenant lists them in `allow_overrides`, and are otherwise ignored and said so in the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

import schemas
from routers import policy as rpolicy
from routers import split
from routers.answer_scorer import LearnedAnswerScorer, load_answer_scorer
from routers.artifact import Artifact
from routers.calibration import threshold_from_quantiles
from routers.cascade import AnswerScorer, CascadeParams, CascadeResult
from routers.decision import Candidate, Decision
from routers.eligibility import Eligible, Limits, eligible
from routers.errors import NoEligibleModelError
from routers.familiarity import UNFAMILIAR_THRESHOLD
from routers.features import prompt_text
from routers.learned import assess
from schemas.trace import request_trace_id
from worker.batch.jobs import Finished
from worker.config import Config, PolicySpec
from worker.config.models import Catalogue
from worker.config.telemetry import TelemetryConfig
from worker.errors import (
    BatchCancelled,
    MissingBatchResult,
    RequestDeadlineExceeded,
    RequestRejected,
    SourceRecordLost,
    WorkerError,
)
from worker.loop import Deferred, Handled, RecordInfo
from worker.providers.client import ModelClient
from worker.providers.errors import AllModelsFailedError, CircuitOpenError, ProviderError
from worker.providers.redaction import scrub_error, scrub_result
from worker.providers.types import (
    Attempt,
    CompletionRequest,
    CompletionResult,
    RoutedCompletion,
    Usage,
)
from worker.spend import SpendLedger
from worker.telemetry import Tracing
from worker.training.judge import Judge, JudgeSettings

if TYPE_CHECKING:
    from routers.semcache import CacheHit
    from worker.semcache_sync import CachedAnswer, SemanticCacheSync

log = logging.getLogger(__name__)

ShadowSink = Callable[
    [schemas.RouteResponse, schemas.RoutingDecision, list[schemas.Feedback]], Awaitable[None]
]

PREPARE_CHUNK = 64  # requests scored per batched `predict` (worker.loop fetches up to thousands)


@dataclass(frozen=True)
class Resolved:
    """The effective routing settings for one request."""

    policy_name: str
    spec: PolicySpec
    options: rpolicy.PolicyOptions
    notes: tuple[str, ...] = ()
    mode: Literal["interactive", "batch"] = "interactive"
    limits: tuple[Limits, ...] = ()  # the tenant's and the request's (routers.eligibility)

    @property
    def budget_usd(self) -> float | None:
        budgets = [x.max_cost_usd for x in self.limits if x.max_cost_usd is not None]
        return min(budgets) if budgets else None


@dataclass(frozen=True, slots=True)
class Prepared:
    """Routing work done for a whole fetched batch at once (`Pipeline.prepare`): the request's
    messages as plain dicts, its routing prompt and its row of one batched `predict` call."""

    messages: list[dict[str, Any]]
    text: str
    predicted: npt.NDArray[np.float64]
    predict_ms: float  # this request's share of the batch's predict time
    core: RoutingCore | None = None  # the router that scored it (a reload may swap it)
    unfamiliar: float | None = None  # distance from the router's training prompts


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


@dataclass(frozen=True)
class Arm:
    """One arm of an A/B experiment, ready to route: its policy and router (None: the
    worker's current ones)."""

    experiment: str
    name: str
    weight: float
    policy: str | None = None
    core: RoutingCore | None = None

    @property
    def label(self) -> str:
        return f"{self.experiment}:{self.name}"


@dataclass(frozen=True)
class LoadedAnswerScorer:
    """A learned cascade scorer loaded at start-up, with its calibrated default threshold."""

    scorer: LearnedAnswerScorer
    default_threshold: float


def load_answer_scorers(config: Config) -> dict[str, LoadedAnswerScorer]:
    """Every learned scorer the cascade policies name, by folder (file I/O: call at start-up)."""
    out: dict[str, LoadedAnswerScorer] = {}
    for spec in config.policies.values():
        path = spec.cascade_scorer
        if path is None or path in out:
            continue
        scorer, meta = load_answer_scorer(path)
        calibration = meta.get("calibration") or {}
        default = 0.5
        for key in ("quality_95pct", "escalate_fraction_0.30"):
            value = calibration.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                default = float(value)
                break
        out[path] = LoadedAnswerScorer(scorer, default)
    return out


def trace_id_for(request: schemas.RouteRequest) -> str:
    """The trace id derived from the request's tenant and id (`schemas.trace`;
    Langfuse's `create_trace_id(seed=...)` rule): two tenants' same id makes two traces."""
    return request_trace_id(request.request_id, request.tenant)


class RoutingCore:
    """Loaded once at start-up: the router artifact, the catalogue prices and the policies."""

    def __init__(self, config: Config, artifact: Artifact, catalogue: Catalogue) -> None:
        self.config = config
        self.artifact = artifact
        self.router = artifact.router
        self.catalogue = catalogue
        self.prices = {
            name: rpolicy.ModelPrice(
                spec.prices.input_usd_per_mtok, spec.prices.output_usd_per_mtok
            )
            for name, spec in catalogue.models.items()
        }
        routable = set(self.router.models) & set(catalogue.models)
        if not routable:
            raise ValueError(
                f"no model of the router {self.router.models} is in the catalogue "
                f"{sorted(catalogue.models)}"
            )
        self.routable = frozenset(routable)
        owners: dict[str, set[str]] = {}
        for tenant_name, tenant in config.tenants.items():
            for topic in tenant.topics or ():
                owners.setdefault(topic, set()).add(tenant_name)
        self._topic_owners = {t: frozenset(names) for t, names in owners.items()}
        self._default_threshold = self._calibrated_default()
        self._fraction_thresholds: dict[float, float] = {}
        # requests without routing overrides resolve alike per (tenant, arm policy): memoised,
        # with their options as `decide` uses them (router roles filled in), by options' id
        self._plain: dict[tuple[str, str | None], Resolved] = {}
        self._routed: dict[int, tuple[rpolicy.PolicyOptions, rpolicy.PolicyOptions]] = {}
        self._priced = [
            (j, m, self.prices[m]) for j, m in enumerate(self.router.models) if m in self.prices
        ]
        # whether the routed prompt is `prompt_text`'s default one (the decision event's)
        self.default_prompt = not (
            config.router.prompt_include_system or config.router.prompt_include_history
        )
        for name, spec in config.policies.items():
            needs = spec.kind in ("threshold", "cascade") and spec.threshold is None
            if needs and spec.strong_fraction is None and self._default_threshold is None:
                raise ValueError(
                    f"policy {name!r} has no threshold or strong_fraction and the router "
                    f"artifact holds no calibrated threshold (train with --holdout or run "
                    f"`llmroute calibrate`)"
                )

    # ------------------------------------------------------------ policy

    def admit(self, request: schemas.RouteRequest, topic: str | None) -> None:
        """Raise `RequestRejected` unless the request's tenant is known (or unknown ones are
        routed as the default tenant) and may send on `topic` (None: not from Kafka)."""
        name = request.tenant
        tenant = self.config.tenants.get(name)
        if tenant is None and self.config.unknown_tenant == "reject":
            raise RequestRejected(f"unknown tenant {name!r}")
        if topic is None:
            return
        if tenant is not None and tenant.topics is not None and topic not in tenant.topics:
            raise RequestRejected(f"tenant {name!r} does not send on topic {topic!r}")
        owners = self._topic_owners.get(topic)
        if owners is not None and name not in owners:
            raise RequestRejected(
                f"topic {topic!r} carries only the requests of {', '.join(sorted(owners))}"
            )

    def resolve(self, request: schemas.RouteRequest, policy: str | None = None) -> Resolved:
        """`policy` (an A/B arm's) replaces the tenant's policy; request overrides still apply."""
        plain = request.routing == _NO_OVERRIDES
        if plain:
            known = self._plain.get((request.tenant, policy))
            if known is not None:
                return known
        resolved = self._resolve(request, policy)
        if plain and len(self._plain) < 1024:  # tenant names come from requests: bounded
            self._plain[(request.tenant, policy)] = resolved
            options = resolved.options
            routed = _with_roles(options, self.router.strong, self.router.weak)
            self._routed[id(options)] = (options, routed)
        return resolved

    def _resolve(self, request: schemas.RouteRequest, policy: str | None) -> Resolved:
        tenant = self.config.tenant(request.tenant)
        if tenant is None:
            raise RequestRejected(f"unknown tenant {request.tenant!r}")
        if policy is not None:
            tenant = msgspec.structs.replace(tenant, policy=policy)
        ask = request.routing
        notes: list[str] = []

        def allowed(name: str, value: object) -> bool:
            if value is None:
                return False
            if name in tenant.allow_overrides:
                return True
            notes.append(f"override {name!r} not allowed for tenant; ignored")
            return False

        name = ask.policy if allowed("policy", ask.policy) else tenant.policy
        assert name is not None
        spec = self.config.policies.get(name)
        if spec is None:
            raise RequestRejected(f"unknown routing policy {name!r}")

        limits = (
            Limits(
                "tenant",
                None if tenant.allowed_models is None else frozenset(tenant.allowed_models),
                frozenset(tenant.denied_models),
                tenant.max_cost_usd,
            ),
            Limits(  # a request may always narrow, never widen
                "request",
                None if ask.allowed_models is None else frozenset(ask.allowed_models),
                frozenset(ask.denied_models or ()),
                ask.max_cost_usd,
            ),
        )
        latency_budgets = [b for b in (tenant.max_latency_ms, ask.max_latency_ms) if b is not None]
        threshold = spec.threshold
        fraction = spec.strong_fraction
        if allowed("threshold", ask.threshold):
            threshold, fraction = ask.threshold, None
        if allowed("strong_fraction", ask.strong_fraction):
            threshold, fraction = None, ask.strong_fraction
        if fraction is not None:
            threshold = self.threshold_for_fraction(fraction)
        if spec.kind in ("threshold", "cascade") and threshold is None:
            threshold = self.default_threshold()
        options = rpolicy.PolicyOptions(
            strong=spec.strong if spec.kind == "cascade" and spec.strong else None,
            weak=spec.cheap if spec.kind == "cascade" and spec.cheap else None,
            threshold=threshold if spec.kind in ("threshold", "cascade") else None,
            quality_target=spec.quality_target if spec.kind == "quality_target" else None,
            cost_weight_per_usd=spec.cost_weight_per_usd,
            default_output_tokens=spec.default_output_tokens,
            max_latency_ms=min(latency_budgets) if latency_budgets else None,
            latency_weight_per_s=spec.latency_weight_per_s,
            tight_latency_factor=spec.tight_latency_factor,
            on_unfamiliar=spec.on_unfamiliar,
        )
        batch = tenant.mode == "batch" or (ask.mode == "batch" and allowed("mode", ask.mode))
        mode: Literal["interactive", "batch"] = "batch" if batch else "interactive"
        return Resolved(name, spec, options, tuple(notes), mode, limits)

    def threshold_for_fraction(self, fraction: float) -> float:
        """The threshold sending about `fraction` of calibration prompts to the strong model."""
        known = self._fraction_thresholds.get(fraction)
        if known is not None:
            return known
        quantiles = self.artifact.meta.get("score_quantiles")
        if not quantiles:
            raise RequestRejected(
                "strong_fraction needs calibration scores in the router artifact "
                "(train with --holdout or run `llmroute calibrate`)"
            )
        threshold = threshold_from_quantiles(quantiles, fraction)
        if len(self._fraction_thresholds) < 1024:  # fractions come from config and requests
            self._fraction_thresholds[fraction] = threshold
        return threshold

    def default_threshold(self) -> float:
        if self._default_threshold is None:
            raise RequestRejected("no threshold: the router artifact holds no calibration")
        return self._default_threshold

    def _calibrated_default(self) -> float | None:
        """The artifact's threshold for 95% of always-strong quality, else a 30% strong share."""
        calibration = self.artifact.calibration
        for key in ("default", "quality_95pct", "strong_fraction_0.30"):
            value = calibration.get(key)
            if value is not None and math.isfinite(value):
                return value
        return None

    # ------------------------------------------------------------ routing

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The text the router scores for these messages (as plain dicts)."""
        return prompt_text(
            messages,
            include_system=self.config.router.prompt_include_system,
            include_history=self.config.router.prompt_include_history,
        )

    def decide(
        self,
        request: schemas.RouteRequest,
        resolved: Resolved,
        prepared: Prepared | None = None,
        *,
        est_latency_ms: dict[str, float] | None = None,
        latency_budget_ms: float | None = None,
    ) -> Decision:
        """The routing decision; `prepared` carries the prompt and scores of a batched predict
        (a router's row does not depend on the other texts of the batch). `est_latency_ms`: each
        model's expected latency, measured live by the client; `latency_budget_ms`: the request's
        budget (its `max_latency_ms` or the time left to its deadline, the smaller)."""
        if prepared is not None:
            text, predicted = prepared.text, prepared.predicted
            unfamiliar = prepared.unfamiliar
        else:
            text = self.prompt([schemas.to_builtins(m) for m in request.messages])
            rows, far = assess(self.router, [text])
            predicted = rows[0]
            unfamiliar = float(far[0]) if far is not None else None
        known = self._routed.get(id(resolved.options))
        if known is not None and known[0] is resolved.options:
            options = known[1]
        else:
            options = _with_roles(resolved.options, self.router.strong, self.router.weak)
        if latency_budget_ms != options.max_latency_ms:
            options = replace(options, max_latency_ms=latency_budget_ms)
        n_in = rpolicy.estimate_input_tokens(text, options.chars_per_token)
        n_out = self.output_tokens(request, resolved)
        costs = {m: rpolicy.estimate_cost_usd(price, n_in, n_out) for _, m, price in self._priced}
        messages = prepared.messages if prepared is not None else None
        allowed = self.eligible(request, resolved, messages)
        if not allowed:
            raise RequestRejected(allowed.why_none())
        scores = predicted.tolist()
        row = {m: float(scores[j]) for j, m, _ in self._priced}
        options = replace(options, allow=allowed.models)
        try:
            decision = rpolicy.decide(
                row,
                costs,
                options,
                router=self.router.name,
                router_version=self.router.version,
                est_latency_ms=est_latency_ms,
                unfamiliar=unfamiliar,
            )
        except NoEligibleModelError as exc:
            raise RequestRejected(str(exc)) from None
        if resolved.notes:
            decision = _with_reason(decision, decision.reason + "; " + "; ".join(resolved.notes))
        return decision

    def output_tokens(self, request: schemas.RouteRequest, resolved: Resolved) -> int:
        """The most output tokens the call may produce: the request's `max_tokens`, else the
        policy's default (sent to the provider as the call's limit whenever a budget applies)."""
        return request.params.max_tokens or resolved.options.default_output_tokens

    def eligible(
        self,
        request: schemas.RouteRequest,
        resolved: Resolved,
        messages: list[dict[str, Any]] | None = None,
    ) -> Eligible:
        """The models this request may reach: the routable ones within every party's limits,
        priced at an upper bound of the whole input plus the maximum output."""
        if messages is None:
            messages = [schemas.to_builtins(m) for m in request.messages]
        n_in = rpolicy.input_tokens_bound(messages, resolved.spec.image_input_tokens)
        n_out = self.output_tokens(request, resolved)
        bounds = {m: rpolicy.estimate_cost_usd(price, n_in, n_out) for _, m, price in self._priced}
        return eligible(bounds.keys(), resolved.limits, bounds)

    def permits(self, resolved: Resolved, model: str | None) -> bool:
        """Whether every party (tenant, request, policy) lets this request reach `model`, a
        model outside the routed ones (a cascade's grader reads the prompt too); its cost is
        not bounded beforehand."""
        return model is not None and model in eligible([model], resolved.limits, {model: 0.0})

    def fallback_chain(
        self,
        decision: Decision,
        options: rpolicy.PolicyOptions,
        latency_budget_ms: float | None = None,
    ) -> list[str]:
        """The chosen model, then the other eligible candidates, best predicted quality first
        (with a latency budget: those expected to meet it first)."""

        def misses(c: Candidate) -> bool:
            est = c.est_latency_ms
            return latency_budget_ms is not None and est is not None and est > latency_budget_ms

        others = sorted(
            (
                c
                for c in decision.candidates
                if c.model != decision.model and c.model in decision.eligible
            ),
            key=lambda c: (misses(c), -c.predicted_quality, c.est_cost_usd),
        )
        return [decision.model, *(c.model for c in others)]


_NO_OVERRIDES: Final = schemas.RoutingOptions()


@dataclass(frozen=True, slots=True)
class _Route:
    """What the client needs of the routing for choosing deployments: the latency budget, and
    whether the deadline is tight (the fastest deployment first)."""

    budget_ms: float | None
    fastest: bool


def _with_roles(options: rpolicy.PolicyOptions, strong: str, weak: str) -> rpolicy.PolicyOptions:
    return replace(options, strong=options.strong or strong, weak=options.weak or weak)


def _with_reason(decision: Decision, reason: str) -> Decision:
    return replace(decision, reason=reason)


class Pipeline:
    """Route and answer one request; never raises for a request it was given."""

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
    ) -> None:
        self.core = core
        self.spend = spend  # per-tenant spend limits (worker.spend), when any tenant has one
        self.client = client
        self.answer_scorers = answer_scorers or {}
        for name, spec in core.config.policies.items():
            if spec.cascade_scorer is not None and spec.cascade_scorer not in self.answer_scorers:
                raise ValueError(
                    f"policy {name!r}: the learned scorer {spec.cascade_scorer} is not loaded"
                )
        self.tracing = tracing or Tracing(TelemetryConfig())
        self.wall_clock = wall_clock
        self.perf = perf
        self.mask_prompts = mask_prompts
        self.scorer_cache: dict[float, AnswerScorer] = {}
        # model -> whether its requests can go through the provider's Batch API (set by the app)
        self.can_batch: Callable[[str], bool] = lambda model: False
        self._arms: dict[str, list[Arm]] = {}
        # shadow calls: where their records go (set by the loop), the optional pairwise judge
        # (set by the app), and what they cost
        self.shadow_sink: ShadowSink | None = None
        self.shadow_judge: Judge | None = None
        self.shadow_stats: dict[str, float] = {
            "calls": 0, "errors": 0, "skipped": 0, "cost_usd": 0.0, "judge_cost_usd": 0.0,
        }  # fmt: skip
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.cache: SemanticCacheSync | None = None  # set by the app when [cache] is enabled
        self._background: set[asyncio.Task[bool]] = set()

    # ------------------------------------------------------------ versions and experiments

    def reload(self, artifact: Artifact) -> RoutingCore:
        """Route with `artifact` from now on (requests already routed finish as they were).
        Building the core validates the artifact against the config; on error nothing
        changes."""
        core = RoutingCore(self.core.config, artifact, self.core.catalogue)
        self.core = core
        log.info("router %s %s loaded", artifact.router.name, artifact.router.version)
        return core

    def set_experiments(self, arms: dict[str, list[Arm]]) -> None:
        """experiment name -> its arms (their cores loaded by the app)."""
        self._arms = arms

    def arm_for(self, request: schemas.RouteRequest) -> Arm | None:
        """The A/B arm of this request: the first experiment that covers its tenant, then a
        stable hash of the request id salted with the experiment name."""
        for exp in self.core.config.experiments:
            if exp.tenants is not None and request.tenant not in exp.tenants:
                continue
            arms = self._arms.get(exp.name)
            if not arms:
                continue
            return arms[split.choose(request.request_id, [a.weight for a in arms], exp.name)]
        return None

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
        started = self.perf()
        outcome = Outcome()
        ready = prepared if isinstance(prepared, Prepared) else None
        try:
            self.core.admit(request, record.topic)
        except RequestRejected as exc:
            return self._error(request, started, outcome, RequestRejected, str(exc))
        now = self.wall_clock()
        if request.deadline is not None and request.deadline <= now:
            return self._error(
                request,
                started,
                outcome,
                RequestDeadlineExceeded,
                f"deadline {request.deadline.isoformat()} passed before routing",
            )
        cache = self.cache
        if cache is not None and not interactive:
            hit = cache.lookup(request)
            if hit is not None and self._may_serve(request, hit.value.model):
                return self._cached(request, hit, started)
        arm = self.arm_for(request)
        core = arm.core if arm is not None and arm.core is not None else self.core
        if ready is not None and ready.core is not core:
            ready = None  # scored by another router (an arm's, or before a reload)
        try:
            with self.tracing.route_span() as route:
                resolved = core.resolve(request, arm.policy if arm is not None else None)
                t0 = self.perf()
                budget = resolved.options.max_latency_ms
                if request.deadline is not None:
                    left_ms = (request.deadline - now).total_seconds() * 1000.0
                    budget = left_ms if budget is None else min(budget, left_ms)
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
                info = _decision_info(decision, arm.label if arm is not None else None)
                route.set_decision(info)
        except RequestRejected as exc:
            return self._error(request, started, outcome, RequestRejected, str(exc))
        outcome.decision = decision
        messages = (
            ready.messages
            if ready is not None
            else [schemas.to_builtins(m) for m in request.messages]
        )
        deadline_s = core.config.providers.request_deadline_s
        if request.deadline is not None:
            deadline_s = min(deadline_s, (request.deadline - now).total_seconds())
        call = _completion_request(request, messages)
        spend = self.spend
        limited = spend is not None and spend.limited(request.tenant)
        if (resolved.budget_usd is not None or limited) and call.max_tokens is None:
            # the budget was checked against this many output tokens: hold the provider to it
            call = replace(call, max_tokens=core.output_tokens(request, resolved))
        if (
            resolved.mode == "batch"
            and not interactive
            and not limited  # batch spend is not tracked: a limited tenant is answered now
            and self.can_batch(decision.model)
        ):
            trace_id = trace_id_for(request)
            return Deferred(
                model=decision.model,
                call=call,
                decision=self._decision_event(request, info, messages, trace_id),
            )
        chain = core.fallback_chain(decision, resolved.options, budget)
        plan = _Route(budget, decision.policy == "latency_tight")
        cascade = (
            resolved.spec.kind == "cascade"
            or (decision.policy == "unfamiliar" and resolved.spec.on_unfamiliar == "cascade")
        ) and decision.model == core.router.weak
        allowed = core.eligible(request, resolved, messages) if cascade or limited else None
        reserved = 0.0
        if limited:
            assert spend is not None and allowed is not None
            bounds = allowed.cost_bound_usd
            reserved = max(bounds.get(m, math.inf) for m in chain)
            if cascade:
                reserved += bounds.get(resolved.spec.strong or core.router.strong, 0.0)
            why = spend.reserve(request.tenant, reserved)
            if why is not None:
                return self._error(
                    request,
                    started,
                    outcome,
                    RequestRejected,
                    why,
                    None,
                    decision,
                    info,
                    messages,
                )
        try:
            if cascade:
                assert allowed is not None
                question = ready.text if ready is not None else core.prompt(messages)
                completion = await self._cascade(
                    request,
                    call,
                    chain,
                    resolved.spec,
                    deadline_s,
                    outcome,
                    core.router.strong,
                    question,
                    plan,
                    allowed=allowed,
                    grader_allowed=core.permits(resolved, resolved.spec.cascade_grader),
                )
            else:
                completion = await self._call(request, call, chain, deadline_s, outcome, plan)
            outcome.completion = completion
        except AllModelsFailedError as exc:
            outcome.attempts.extend(_attempts(exc.attempts))
            last = exc.last_error
            return self._error(
                request,
                started,
                outcome,
                type(last),
                exc.describe(),
                _retry_later(last),
                decision,
                info,
                messages,
            )
        except ProviderError as exc:
            return self._error(
                request,
                started,
                outcome,
                type(exc),
                str(exc),
                exc.retriable,
                decision,
                info,
                messages,
            )
        finally:
            if limited:
                assert spend is not None
                done = outcome.completion
                paid = outcome.extra_cost_usd + (done.cost_usd if done is not None else 0.0)
                spend.settle(request.tenant, reserved, paid)
        result = completion.result
        if outcome.cascade_reason is not None:
            info = msgspec.structs.replace(info, reason=f"{info.reason}; {outcome.cascade_reason}")
        judge = self.shadow_judge
        self._maybe_shadow(
            request,
            call,
            core,
            decision,
            info,
            result.model,
            result.text,
            messages,
            judge_allowed=judge is not None and core.permits(resolved, judge.settings.model),
        )
        if completion.deployment is not None:  # on the response and its decision event only
            info = msgspec.structs.replace(
                info,
                deployment=completion.deployment,
                deployment_reason=completion.deployment_reason,
            )
        strong = core.catalogue.models.get(core.router.strong)
        if strong is not None:
            outcome.strong_cost_usd = strong.cost_usd(result.usage)
        cost = completion.cost_usd + outcome.extra_cost_usd
        if cache is not None:
            store = asyncio.create_task(cache.publish(request, _answer_of(request, result)))
            self._background.add(store)
            store.add_done_callback(self._background.discard)
        trace_id = trace_id_for(request)
        response = _ok_response(
            request, result, cost, outcome.attempts, (self.perf() - started) * 1000, info,
            trace_id, self.wall_clock(),
        )  # fmt: skip
        routed_text = ready.text if ready is not None and core.default_prompt else None
        return Handled(
            response=response,
            decision=self._decision_event(request, info, messages, trace_id, routed_text),
            routing_ms=outcome.routing_ms,
            strong_cost_usd=outcome.strong_cost_usd,
        )

    async def _call(
        self,
        request: schemas.RouteRequest,
        call: CompletionRequest,
        chain: Sequence[str],
        deadline_s: float,
        outcome: Outcome,
        route: _Route | None = None,
    ) -> RoutedCompletion:
        """One fallback chain, inside a `chat {model}` span named for the first model."""
        spec = self.core.catalogue[chain[0]]
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
                attempts = _attempts(exc.attempts)
                chat.add_attempts(attempts)
                chat.set_error(type(exc.last_error).__name__, str(exc.last_error))
                raise
            attempts = _attempts(completion.attempts)
            outcome.attempts.extend(attempts)
            r = completion.result
            chat.add_attempts(attempts)
            if completion.deployment is not None:
                chat.set_deployment(completion.deployment, completion.deployment_reason or "")
            chat.set_response(
                response_model=r.response_model,
                input_tokens=r.usage.input_tokens,
                output_tokens=r.usage.output_tokens,
                cached_tokens=r.usage.cached_input_tokens,
                cost_usd=r.cost_usd,
                finish_reason=r.finish_reason,
                output_text=r.text,
                response_id=r.provider_request_id,
            )
            return completion

    async def _cascade(
        self,
        request: schemas.RouteRequest,
        call: CompletionRequest,
        chain: Sequence[str],
        spec: PolicySpec,
        deadline_s: float,
        outcome: Outcome,
        router_strong: str,
        question: str,
        route: _Route | None = None,
        *,
        allowed: Eligible,
        grader_allowed: bool = False,
    ) -> RoutedCompletion:
        """Cheap model first; escalate to the strong model when the scorer rejects the answer,
        the strong model is eligible and its cost bound still fits the budget."""
        cheap = chain[0]
        strong = spec.strong or router_strong
        started = self.perf()
        first = await self._call(request, call, [cheap], deadline_s, outcome, route)
        remaining = deadline_s - (self.perf() - started)
        verdict, how = await self._judge_answer(
            spec, question, first, remaining, outcome, grader_allowed
        )
        outcome.cascade_reason = f"cascade {how}: {verdict.reason}"
        if verdict.accept or strong == cheap or strong not in allowed:
            return first
        budget = allowed.budget_usd
        bound = allowed.cost_bound_usd.get(strong, math.inf)
        if budget is not None and not outcome.extra_cost_usd + first.cost_usd + bound <= budget:
            return first  # escalating could overspend the budget
        # the grader's call is not an attempt: the last attempt is the cheap answer's
        last = outcome.attempts[-1]
        outcome.attempts[-1] = msgspec.structs.replace(last, status="escalated")
        outcome.escalated = True
        outcome.extra_cost_usd += first.cost_usd
        remaining = deadline_s - (self.perf() - started)
        rest = [strong, *(m for m in chain[1:] if m != strong)]
        return await self._call(request, call, rest, max(remaining, 0.001), outcome, route)

    async def _judge_answer(
        self,
        spec: PolicySpec,
        question: str,
        first: RoutedCompletion,
        remaining_s: float,
        outcome: Outcome,
        grader_allowed: bool,
    ) -> tuple[CascadeResult, str]:
        """The cascade's verdict on the cheap answer and how it was reached (rules, learned
        scorer or grader model). A grader call is paid for: its cost goes to the request. The
        grader reads the prompt: one the request may not reach is not asked (the rules are)."""
        answer = first.result.text
        if spec.cascade_grader is not None and not grader_allowed:
            verdict, how = await self._judge_answer(
                msgspec.structs.replace(spec, cascade_grader=None),
                question,
                first,
                remaining_s,
                outcome,
                False,
            )
            return verdict, f"{how} (grader {spec.cascade_grader} not eligible)"
        if spec.cascade_grader is not None:
            threshold = 0.5 if spec.cascade_threshold is None else spec.cascade_threshold
            judge = Judge(
                self.client,
                JudgeSettings(model=spec.cascade_grader, deadline_s=max(remaining_s, 0.001)),
            )
            try:
                graded = await judge.score(question, answer)
            except ProviderError as exc:
                reason = f"grader {spec.cascade_grader} failed ({type(exc).__name__})"
                return CascadeResult(False, 0.0, threshold, (reason,)), "grader"
            outcome.extra_cost_usd += graded.cost_usd
            if graded.score is None:
                reason = f"grader {spec.cascade_grader} gave no readable rating"
                return CascadeResult(False, 0.0, threshold, (reason,)), "grader"
            accept = graded.score >= threshold
            why = (f"{spec.cascade_grader} rated it {graded.rating:g}",)
            return CascadeResult(accept, graded.score, threshold, why), "grader"
        if spec.cascade_scorer is not None:
            loaded = self.answer_scorers[spec.cascade_scorer]
            threshold = (
                loaded.default_threshold
                if spec.cascade_threshold is None
                else spec.cascade_threshold
            )
            return loaded.scorer.verdict(question, answer, threshold), "learned scorer"
        threshold = 0.5 if spec.cascade_threshold is None else spec.cascade_threshold
        scorer = self.scorer_cache.get(threshold)
        if scorer is None:
            scorer = AnswerScorer(CascadeParams(threshold=threshold))
            if len(self.scorer_cache) < 64:
                self.scorer_cache[threshold] = scorer
        r = first.result
        logprobs = [t.logprob for t in r.logprobs] if r.logprobs else None
        return scorer.score(answer, logprobs), "rules"

    def _may_serve(self, request: schemas.RouteRequest, model: str) -> bool:
        """Whether a cached answer of `model` may answer this request: the model must be in its
        eligible set now (entries are shared between members, whose configs can differ)."""
        try:
            resolved = self.core.resolve(request)
        except RequestRejected:
            return False
        return model in self.core.eligible(request, resolved)

    def _cached(
        self, request: schemas.RouteRequest, hit: CacheHit[CachedAnswer], started: float
    ) -> Handled:
        """Answer from the semantic cache: no routing and no model call."""
        answer = hit.value
        core = self.core
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
        usage = schemas.Usage(input_tokens=answer.usage.input_tokens,
                              output_tokens=answer.usage.output_tokens)  # fmt: skip
        finish = answer.finish_reason if answer.finish_reason in ("stop", "length") else "stop"
        response = schemas.RouteResponse(
            schema_version=1,
            request_id=request.request_id,
            tenant=request.tenant,
            status="ok",
            model=answer.model,
            provider=answer.provider,
            message=schemas.OutputMessage(role="assistant", content=answer.content),
            finish_reason=finish,  # type: ignore[arg-type]
            usage=usage,
            cost_usd=0.0,
            latency_ms=(self.perf() - started) * 1000,
            decision=info,
            attempts=[],
            error=None,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode=request.routing.mode,
            cache_hit=True,
        )
        event = msgspec.structs.replace(
            self._decision_event(request, info, trace_id=trace_id), cache_hit=True
        )
        strong = core.catalogue.models.get(core.router.strong)
        strong_cost = (
            strong.cost_usd(Usage(input_tokens=usage.input_tokens,
                                  output_tokens=usage.output_tokens))
            if strong is not None else None
        )  # fmt: skip
        return Handled(response=response, decision=event, routing_ms=0.0,
                       strong_cost_usd=strong_cost)  # fmt: skip

    # ------------------------------------------------------------ shadow calls

    def _maybe_shadow(
        self,
        request: schemas.RouteRequest,
        call: CompletionRequest,
        core: RoutingCore,
        decision: Decision,
        info: schemas.DecisionInfo,
        answered_by: str,
        answer: str,
        messages: list[dict[str, Any]],
        *,
        judge_allowed: bool,
    ) -> None:
        shadow = core.config.shadow
        if shadow.sample <= 0 or self.shadow_sink is None:
            return
        if shadow.tenants is not None and request.tenant not in shadow.tenants:
            return
        unfamiliar = (
            shadow.unfamiliar
            and decision.unfamiliar is not None
            and decision.unfamiliar > UNFAMILIAR_THRESHOLD
        )
        if not unfamiliar and not split.sampled(request.request_id, shadow.sample, "shadow"):
            return
        strong, weak = core.router.strong, core.router.weak
        model = {
            "other": weak if answered_by == strong else strong,
            "strong": strong,
            "weak": weak,
        }.get(shadow.model, shadow.model)
        if model == answered_by or model not in core.catalogue.models:
            return  # nothing to compare against
        if model not in decision.eligible:
            return  # the tenant's prompt never goes to a model it may not use
        if len(self._shadow_tasks) >= shadow.max_in_flight:
            self.shadow_stats["skipped"] += 1
            return
        task = asyncio.create_task(
            self._shadow(
                request, call, model, decision, info, answered_by, answer, messages, judge_allowed
            )
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        request: schemas.RouteRequest,
        call: CompletionRequest,
        model: str,
        decision: Decision,
        info: schemas.DecisionInfo,
        answered_by: str,
        answer: str,
        messages: list[dict[str, Any]],
        judge_allowed: bool,
    ) -> None:
        """Call `model` too; publish its answer, its decision (`shadow: true`) and, with a
        judge the request may reach (it reads the prompt), the pairwise verdict. Never touches
        the user's response; never raises."""
        started = self.perf()
        trace_id = trace_id_for(request)
        try:
            completion = await self.client.complete(
                call, [model], deadline_s=self.core.config.providers.request_deadline_s
            )
        except ProviderError as exc:
            self.shadow_stats["errors"] += 1
            log.info("shadow call to %s failed: %s", model, type(exc).__name__)
            return
        except Exception:
            log.exception("shadow call to %s failed", model)
            return
        result = completion.result
        self.shadow_stats["calls"] += 1
        self.shadow_stats["cost_usd"] += completion.cost_usd
        response = _ok_response(
            request, result, completion.cost_usd, _attempts(completion.attempts),
            (self.perf() - started) * 1000, info, trace_id, self.wall_clock(),
        )  # fmt: skip
        event = msgspec.structs.replace(
            self._decision_event(request, info, messages, trace_id),
            shadow=True,
            shadow_model=model,
        )
        feedback: list[schemas.Feedback] = []
        judge = self.shadow_judge if judge_allowed else None
        if judge is not None:
            try:
                verdict = await judge.compare(prompt_text(messages), answer, result.text)
            except Exception as exc:
                log.info("shadow judge failed: %s", type(exc).__name__)
            else:
                self.shadow_stats["judge_cost_usd"] += verdict.cost_usd
                sides: tuple[tuple[Literal["a", "b"], str], ...] = (
                    ("a", answered_by), ("b", model),
                )  # fmt: skip
                for which, who in sides:
                    value = verdict.value_for(which)
                    if value is not None:
                        feedback.append(judge.feedback(
                            request.request_id, who, value, pairwise=True,
                            comment=f"shadow comparison, consistent={verdict.consistent}",
                            tenant=request.tenant,
                        ))  # fmt: skip
        assert self.shadow_sink is not None
        try:
            await self.shadow_sink(response, event, feedback)
        except Exception:
            log.exception("publishing the shadow answer of %s failed", request.request_id)

    async def close_shadow(self, timeout_s: float) -> None:
        if self._shadow_tasks:
            await asyncio.wait(set(self._shadow_tasks), timeout=timeout_s)
        for task in list(self._shadow_tasks):
            task.cancel()

    def redacted(self, finished: Finished) -> Finished:
        """The ended batch item with its provider strings redacted by the configured keys
        (batch results are parsed outside the client's call path)."""
        outcome = finished.outcome
        if isinstance(outcome, CompletionResult):
            return replace(finished, outcome=scrub_result(outcome, self.client.redactor))
        if isinstance(outcome, ProviderError):
            scrub_error(outcome, self.client.redactor)
        return finished

    def batch_response(self, finished: Finished) -> Handled:
        """The response for one item of an ended batch job: its answer (priced with the batch
        discount), or an error response (cancelled job, failed or missing item)."""
        item, request, outcome = finished.item, finished.request, self.redacted(finished).outcome
        tenant = item.tenant if item.tenant is not None else (request and request.tenant)
        trace_id = request_trace_id(item.request_id, tenant or None)
        spec = self.core.catalogue.models.get(finished.model)
        attempt = schemas.Attempt(
            model=finished.model,
            provider=spec.provider if spec is not None else "unknown",
            status="ok" if isinstance(outcome, CompletionResult) else "error",
            latency_ms=0.0,
            error_type=None if isinstance(outcome, CompletionResult) else _error_name(outcome),
        )
        base = schemas.RouteResponse(
            schema_version=1,
            request_id=item.request_id,
            tenant=tenant or "unknown",
            status="error",
            model=None,
            provider=None,
            message=None,
            finish_reason=None,
            usage=schemas.Usage(),
            cost_usd=0.0,
            latency_ms=_since_ms(request.created_at if request else None, self.wall_clock()),
            decision=item.decision,
            attempts=[attempt],
            error=None,
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode="batch",
        )
        if isinstance(outcome, CompletionResult):
            strong = self.core.catalogue.models.get(self.core.router.strong)
            response = msgspec.structs.replace(
                base,
                status="ok",
                model=outcome.model,
                provider=outcome.provider,
                message=schemas.OutputMessage(role="assistant", content=outcome.text),
                finish_reason=outcome.finish_reason,
                usage=_usage(outcome.usage),
                cost_usd=outcome.cost_usd,
            )
            return Handled(
                response=response,
                strong_cost_usd=strong.cost_usd(outcome.usage, batch=True) if strong else None,
            )
        if request is None:
            error = schemas.ErrorInfo(
                type=SourceRecordLost.code,
                message=f"the request at {item.topic}[{item.partition}]@{item.offset} is no "
                "longer retained; it cannot be answered",
                retriable=True,
            )
        elif finished.cancelled:
            error = schemas.ErrorInfo(
                type=BatchCancelled.code,
                message=f"batch job {finished.job_id} was cancelled before this request ran",
                retriable=True,
            )
        else:
            error = schemas.ErrorInfo(
                type=_error_name(outcome),
                message=str(outcome) if outcome is not None else "missing from the batch results",
                retriable=True,
            )
        response = msgspec.structs.replace(base, error=error)
        return Handled(response=response)

    def internal_error(
        self, request: schemas.RouteRequest, record: RecordInfo, exc: BaseException
    ) -> Handled:
        return self._error(
            request,
            self.perf(),
            Outcome(),
            WorkerError,
            f"{type(exc).__name__} while handling the request",
        )

    def _error(
        self,
        request: schemas.RouteRequest,
        started: float,
        outcome: Outcome,
        error: type[WorkerError],
        message: str,
        retriable: bool | None = None,  # None: the class's
        decision: Decision | None = None,
        info: schemas.DecisionInfo | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> Handled:
        if decision is not None and info is None:
            info = _decision_info(decision)
        trace_id = trace_id_for(request)
        response = schemas.RouteResponse(
            schema_version=1,
            request_id=request.request_id,
            tenant=request.tenant,
            status="error",
            model=None,
            provider=None,
            message=None,
            finish_reason=None,
            usage=schemas.Usage(),
            cost_usd=outcome.extra_cost_usd,
            latency_ms=(self.perf() - started) * 1000,
            decision=info,
            attempts=outcome.attempts,
            error=schemas.ErrorInfo(
                type=error.code,
                message=message,
                retriable=error.retriable if retriable is None else retriable,
            ),
            trace_id=trace_id,
            created_at=self.wall_clock(),
            mode=request.routing.mode,
        )
        event = (
            self._decision_event(request, info, messages, trace_id) if info is not None else None
        )
        return Handled(response=response, decision=event, routing_ms=outcome.routing_ms or None)

    def _decision_event(
        self,
        request: schemas.RouteRequest,
        info: schemas.DecisionInfo,
        messages: list[dict[str, Any]] | None = None,
        trace_id: str | None = None,
        text: str | None = None,
    ) -> schemas.RoutingDecision:
        """`text`: the messages' default `prompt_text`, when the caller has it already."""
        if text is None:
            if messages is None:
                messages = [schemas.to_builtins(m) for m in request.messages]
            text = prompt_text(messages)
        return schemas.RoutingDecision(
            schema_version=1,
            request_id=request.request_id,
            tenant=request.tenant,
            decision=info,
            trace_id=trace_id if trace_id is not None else trace_id_for(request),
            created_at=self.wall_clock(),
            mode=request.routing.mode,
            prompt=None if self.mask_prompts else text,
            prompt_sha256=hashlib.sha256(text.encode()).hexdigest(),
            params=schemas.to_builtins(request.params) or None,
        )


def _ok_response(
    request: schemas.RouteRequest,
    result: CompletionResult,
    cost_usd: float,
    attempts: list[schemas.Attempt],
    latency_ms: float,
    decision: schemas.DecisionInfo | None,
    trace_id: str | None,
    created_at: datetime,
) -> schemas.RouteResponse:
    return schemas.RouteResponse(
        schema_version=1,
        request_id=request.request_id,
        tenant=request.tenant,
        status="ok",
        model=result.model,
        provider=result.provider,
        message=schemas.OutputMessage(role="assistant", content=result.text),
        finish_reason=result.finish_reason,
        usage=_usage(result.usage),
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        decision=decision,
        attempts=attempts,
        error=None,
        trace_id=trace_id,
        created_at=created_at,
        mode=request.routing.mode,
    )


def _answer_of(request: schemas.RouteRequest, result: CompletionResult) -> schemas.RouteResponse:
    """The minimal response the semantic cache stores for an answer."""
    return _ok_response(request, result, result.cost_usd, [], 0.0, None, None, datetime.now(UTC))


def _error_name(outcome: object) -> schemas.ErrorCode:
    return outcome.code if isinstance(outcome, ProviderError) else MissingBatchResult.code


def _since_ms(start: datetime | None, now: datetime) -> float:
    return max(0.0, (now - start).total_seconds() * 1000) if start is not None else 0.0


def _retry_later(error: ProviderError) -> bool:
    """Whether the producer may send the request again later: a transient failure, or every
    model cooling down (the same model must not be retried now, but will recover)."""
    return error.retriable or isinstance(error, CircuitOpenError)


def _completion_request(
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


def _attempts(attempts: Sequence[Attempt]) -> list[schemas.Attempt]:
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


def _usage(usage: Usage) -> schemas.Usage:
    return schemas.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_input_tokens,
    )


def _decision_info(decision: Decision, arm: str | None = None) -> schemas.DecisionInfo:
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
