"""The routing core loaded once at start-up (router artifact, catalogue prices, policies) and
what it makes of one request: admission, the tenant's policy narrowed by the request, the
decision, the fallback chain.

Policy resolution: a request may only *narrow* what its tenant allows (fewer models, more denied,
a lower budget); `policy`, `threshold`, `strong_fraction` and `mode` overrides apply when the
tenant lists them in `allow_overrides`, and are otherwise ignored and said so in the reason
(`routers.eligibility.narrow`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

import schemas
from routers import policy as rpolicy
from routers.artifact import Artifact
from routers.calibration import threshold_from_quantiles
from routers.decision import Candidate, Decision
from routers.eligibility import Eligible, Limits, eligible, narrow
from routers.errors import NoEligibleModelError
from routers.features import prompt_text
from routers.learned import assess
from schemas.trace import request_trace_id
from worker.config import Config, PolicySpec
from worker.config.models import Catalogue
from worker.errors import RequestRejected


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
            if spec.kind == "cascade":
                self._check_cascade_models(name, spec.cheap, spec.strong)

    def _check_cascade_models(self, policy: str, cheap: str | None, strong: str | None) -> None:
        """A cascade's cheap and strong models must be ones the router predicts and prices: any
        other would never be a candidate, and the cascade would quietly route around it."""
        routable = [m for _, m, _ in self._priced]
        for role, model, default in (("cheap", cheap, "weak"), ("strong", strong, "strong")):
            if model is not None and model not in routable:
                raise ValueError(
                    f"policy {policy!r}: the cascade's {role} model {model!r} is not one of the "
                    f"router's priced models ({', '.join(routable)}): train a router that covers "
                    f"it, or leave `{role}` unset to use the router's {default} model"
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
            routed = with_roles(options, self.router.strong, self.router.weak)
            self._routed[id(options)] = (options, routed)
        return resolved

    def _resolve(self, request: schemas.RouteRequest, policy: str | None) -> Resolved:
        tenant = self.config.tenant(request.tenant)
        if tenant is None:
            raise RequestRejected(f"unknown tenant {request.tenant!r}")
        if policy is not None:
            tenant = msgspec.structs.replace(tenant, policy=policy)
        ask = request.routing
        # the mode override matters only when it asks for batch of an interactive tenant
        asks_batch = tenant.mode != "batch" and ask.mode == "batch"
        narrowed = narrow(
            Limits.of("tenant", tenant.allowed_models, tenant.denied_models, tenant.max_cost_usd),
            Limits.of("request", ask.allowed_models, ask.denied_models, ask.max_cost_usd),
            asked=(
                ("policy", ask.policy),
                ("threshold", ask.threshold),
                ("strong_fraction", ask.strong_fraction),
                ("mode", ask.mode if asks_batch else None),
            ),
            allow_overrides=tenant.allow_overrides,
            max_latency_ms=(tenant.max_latency_ms, ask.max_latency_ms),
        )
        overrides = narrowed.overrides
        name = ask.policy if "policy" in overrides else tenant.policy
        assert name is not None
        spec = self.config.policies.get(name)
        if spec is None:
            raise RequestRejected(f"unknown routing policy {name!r}")
        threshold = spec.threshold
        fraction = spec.strong_fraction
        if "threshold" in overrides:
            threshold, fraction = ask.threshold, None
        if "strong_fraction" in overrides:
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
            max_latency_ms=narrowed.max_latency_ms,
            latency_weight_per_s=spec.latency_weight_per_s,
            tight_latency_factor=spec.tight_latency_factor,
            on_unfamiliar=spec.on_unfamiliar,
        )
        batch = tenant.mode == "batch" or "mode" in overrides
        mode: Literal["interactive", "batch"] = "batch" if batch else "interactive"
        return Resolved(name, spec, options, narrowed.notes, mode, narrowed.limits)

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
            options = with_roles(resolved.options, self.router.strong, self.router.weak)
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
class Route:
    """What the client needs of the routing for choosing deployments: the latency budget, and
    whether the deadline is tight (the fastest deployment first)."""

    budget_ms: float | None
    fastest: bool


def with_roles(options: rpolicy.PolicyOptions, strong: str, weak: str) -> rpolicy.PolicyOptions:
    return replace(options, strong=options.strong or strong, weak=options.weak or weak)


def _with_reason(decision: Decision, reason: str) -> Decision:
    return replace(decision, reason=reason)
