"""The decision policy, separate from scoring: predicted quality + estimated cost -> Decision.

Eligible models: those predicted, in `allow` (when given), not in `deny`, and whose estimated
cost is within `max_cost_usd` (when given). Then, in order:

1. threshold (two models): when `threshold` is set and both the strong and the weak model are
   eligible, strong iff score = quality(strong) - quality(weak) >= threshold.
   If only one of the two is eligible, that one.
2. quality target (N models): the cheapest eligible model whose predicted quality reaches
   `quality_target`; if none does, the best predicted quality (ties: cheaper).
3. otherwise the best `quality - cost_weight_per_usd * cost` (ties: cheaper, then name).

No eligible model raises `NoEligibleModelError`: the shell decides what to do then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routers.base import Router
from routers.decision import Candidate, Decision
from routers.errors import NoEligibleModelError
from routers.features import prompt_text

__all__ = [
    "ModelPrice",
    "PolicyOptions",
    "decide",
    "estimate_cost_usd",
    "estimate_input_tokens",
    "route",
    "route_batch",
]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    strong: str | None = None
    weak: str | None = None
    threshold: float | None = None
    quality_target: float | None = None
    cost_weight_per_usd: float = 0.0  # lambda in quality - lambda * cost
    allow: frozenset[str] = frozenset()  # empty = every model
    deny: frozenset[str] = frozenset()
    max_cost_usd: float | None = None
    default_output_tokens: int = 256
    chars_per_token: float = 4.0


def estimate_input_tokens(text: str, chars_per_token: float = 4.0) -> int:
    """A rough count from the text length (no tokenizer): ceil(chars / chars_per_token)."""
    return math.ceil(len(text) / chars_per_token) if text else 0


def estimate_cost_usd(price: ModelPrice, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


def _fmt_cost(usd: float) -> str:
    return f"${usd:.6f}" if math.isfinite(usd) else "$?"


def decide(
    predicted: Mapping[str, float],
    est_cost: Mapping[str, float],
    options: PolicyOptions,
    *,
    router: str = "",
    router_version: str = "",
) -> Decision:
    """Choose a model. `est_cost` lacks a model -> its cost is unknown (inf for budgets and
    ordering, so it is never chosen under `max_cost_usd`)."""
    candidates = tuple(
        Candidate(m, float(q), float(est_cost.get(m, math.inf))) for m, q in predicted.items()
    )
    eligible = [
        c
        for c in candidates
        if (not options.allow or c.model in options.allow)
        and c.model not in options.deny
        and (options.max_cost_usd is None or c.est_cost_usd <= options.max_cost_usd)
    ]
    if not eligible:
        raise NoEligibleModelError(
            f"no eligible model among {sorted(predicted)} (allow={sorted(options.allow)}, "
            f"deny={sorted(options.deny)}, max_cost_usd={options.max_cost_usd})"
        )
    by_name = {c.model: c for c in eligible}

    def done(chosen: Candidate, score: float, policy: str, reason: str) -> Decision:
        threshold = options.threshold if policy == "threshold" else None
        return Decision(
            chosen.model, score, threshold, candidates, reason, router, router_version, policy
        )

    s, w = options.strong, options.weak
    if options.threshold is not None and s is not None and w is not None:
        score = float(predicted.get(s, math.nan)) - float(predicted.get(w, math.nan))
        if s in by_name and w in by_name:
            strong = score >= options.threshold
            op = ">=" if strong else "<"
            chosen = by_name[s] if strong else by_name[w]
            role = "strong" if strong else "weak"
            return done(
                chosen,
                score,
                "threshold",
                f"{role}: need score {score:.4f} {op} threshold {options.threshold:.4f}",
            )
        if s in by_name or w in by_name:
            only = by_name[s] if s in by_name else by_name[w]
            return done(
                only, score, "only_candidate", f"{only.model}: the only eligible one of strong/weak"
            )

    def cheaper_key(c: Candidate) -> tuple[float, str]:
        return (c.est_cost_usd, c.model)

    if options.quality_target is not None:
        target = options.quality_target
        reaching = [c for c in eligible if c.predicted_quality >= target]
        if reaching:
            chosen = min(reaching, key=cheaper_key)
            return done(
                chosen,
                chosen.predicted_quality,
                "quality_target",
                f"{chosen.model}: cheapest ({_fmt_cost(chosen.est_cost_usd)}) with "
                f"predicted quality {chosen.predicted_quality:.3f} >= {target:.3f}",
            )
        chosen = min(eligible, key=lambda c: (-c.predicted_quality, *cheaper_key(c)))
        return done(
            chosen,
            chosen.predicted_quality,
            "quality_target",
            f"{chosen.model}: none reaches {target:.3f}; best predicted quality "
            f"{chosen.predicted_quality:.3f}",
        )
    lam = options.cost_weight_per_usd

    def objective(c: Candidate) -> float:
        if lam == 0.0:
            return c.predicted_quality
        return c.predicted_quality - lam * c.est_cost_usd

    chosen = min(eligible, key=lambda c: (-objective(c), *cheaper_key(c)))
    return done(
        chosen,
        objective(chosen),
        "cost_tradeoff",
        f"{chosen.model}: best quality - {lam:g} x cost = {objective(chosen):.4f} "
        f"(quality {chosen.predicted_quality:.3f}, {_fmt_cost(chosen.est_cost_usd)})",
    )


def _with_roles(router: Router, options: PolicyOptions) -> PolicyOptions:
    if options.strong is not None and options.weak is not None:
        return options
    return PolicyOptions(
        strong=options.strong or router.strong,
        weak=options.weak or router.weak,
        threshold=options.threshold,
        quality_target=options.quality_target,
        cost_weight_per_usd=options.cost_weight_per_usd,
        allow=options.allow,
        deny=options.deny,
        max_cost_usd=options.max_cost_usd,
        default_output_tokens=options.default_output_tokens,
        chars_per_token=options.chars_per_token,
    )


def route_batch(
    router: Router,
    requests: Sequence[Sequence[Mapping[str, Any]]],
    prices: Mapping[str, ModelPrice],
    options: PolicyOptions,
    *,
    max_tokens: Sequence[int | None] | None = None,
) -> list[Decision]:
    """Features + predict + policy for many chat requests (one predict call for all)."""
    texts = [prompt_text(messages) for messages in requests]
    opts = _with_roles(router, options)
    predicted = router.predict(texts)
    out: list[Decision] = []
    for i, text in enumerate(texts):
        n_in = estimate_input_tokens(text, opts.chars_per_token)
        mt = max_tokens[i] if max_tokens is not None else None
        n_out = mt if mt is not None else opts.default_output_tokens
        costs = {m: estimate_cost_usd(prices[m], n_in, n_out) for m in router.models if m in prices}
        row = {m: float(predicted[i, j]) for j, m in enumerate(router.models)}
        out.append(decide(row, costs, opts, router=router.name, router_version=router.version))
    return out


def route(
    router: Router,
    messages: Sequence[Mapping[str, Any]],
    prices: Mapping[str, ModelPrice],
    options: PolicyOptions,
    *,
    max_tokens: int | None = None,
) -> Decision:
    """Features + predict + policy for one chat request."""
    return route_batch(router, [messages], prices, options, max_tokens=[max_tokens])[0]
