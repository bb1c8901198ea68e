"""The decision policy, separate from scoring: predicted quality + estimated cost -> Decision.

Eligible models: those predicted, in `allow` (when given), not in `deny`, and whose estimated
cost is within `max_cost_usd` (when given).

Latency (the shell passes each model's expected latency for the request, measured live on its
deployments; a model without a measurement counts as meeting any budget):

- `max_latency_ms`: when every eligible model is measured and even the fastest is expected to
  need more than `max_latency_ms / tight_latency_factor`, the deadline is tight: the fastest
  eligible model is chosen ("latency_tight"). Otherwise models expected to miss the budget are no
  longer eligible.
- `latency_weight_per_s`: subtracted per expected second in the cost trade-off (3. below), as
  Unify's router weighs quality, cost and time.

Then, in order:

1. threshold (two models): when `threshold` is set and both the strong and the weak model are
   eligible, strong iff score = quality(strong) - quality(weak) >= threshold.
   If only one of the two is eligible, that one.
2. quality target (N models): the cheapest eligible model whose predicted quality reaches
   `quality_target`; if none does, the best predicted quality (ties: cheaper).
3. otherwise the best `quality - cost_weight_per_usd * cost - latency_weight_per_s * latency_s`
   (ties: cheaper, then name).

The reason names the latency constraint when it excluded a model or decided alone.

Before all of these, an unfamiliar prompt (`unfamiliar` > `unfamiliar_threshold`, i.e. further
from the router's training prompts than 99% of them) is handled by `on_unfamiliar`: "route" (the
default) routes it as usual and says so in the reason; "strong" / "weak" send it to the strong /
weak model when eligible (policy "unfamiliar"); "cascade" sends it to the weak model with policy
"unfamiliar", for the shell to check the answer and escalate as a cascade does.

No eligible model raises `NoEligibleModelError`: the shell decides what to do then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from routers.base import Router
from routers.decision import Candidate, Decision
from routers.errors import NoEligibleModelError
from routers.familiarity import UNFAMILIAR_THRESHOLD
from routers.features import prompt_text
from routers.learned import assess

__all__ = [
    "ModelPrice",
    "OnUnfamiliar",
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


OnUnfamiliar = Literal["route", "strong", "weak", "cascade"]
ON_UNFAMILIAR: tuple[str, ...] = ("route", "strong", "weak", "cascade")


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
    max_latency_ms: float | None = None
    latency_weight_per_s: float = 0.0  # in quality - lambda * cost - this * expected seconds
    tight_latency_factor: float = 1.5  # tight: max_latency_ms < this x the fastest's latency
    on_unfamiliar: OnUnfamiliar = "route"
    unfamiliar_threshold: float = UNFAMILIAR_THRESHOLD

    def __post_init__(self) -> None:
        if self.tight_latency_factor < 1.0:
            raise ValueError("tight_latency_factor must be >= 1")
        if self.on_unfamiliar not in ON_UNFAMILIAR:
            raise ValueError(f"on_unfamiliar must be one of {ON_UNFAMILIAR}")


def estimate_input_tokens(text: str, chars_per_token: float = 4.0) -> int:
    """A rough count from the text length (no tokenizer): ceil(chars / chars_per_token)."""
    return math.ceil(len(text) / chars_per_token) if text else 0


def estimate_cost_usd(price: ModelPrice, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


def _fmt_cost(usd: float) -> str:
    return f"${usd:.6f}" if math.isfinite(usd) else "$?"


def _latency_key(c: Candidate) -> tuple[float, float, str]:
    est = c.est_latency_ms if c.est_latency_ms is not None else math.inf
    return (est, c.est_cost_usd, c.model)


def decide(
    predicted: Mapping[str, float],
    est_cost: Mapping[str, float],
    options: PolicyOptions,
    *,
    router: str = "",
    router_version: str = "",
    est_latency_ms: Mapping[str, float] | None = None,
    unfamiliar: float | None = None,
) -> Decision:
    """Choose a model. `est_cost` lacks a model -> its cost is unknown (inf for budgets and
    ordering, so it is never chosen under `max_cost_usd`). `est_latency_ms` lacks a model -> its
    latency is unknown (it meets any budget). `unfamiliar`: the prompt's distance from the
    router's training prompts (None: unknown, never acted on)."""
    decision = _decide(
        predicted, est_cost, options, router, router_version, est_latency_ms or {}, unfamiliar
    )
    if unfamiliar is None:
        return decision
    return replace(decision, unfamiliar=unfamiliar)


def _decide(
    predicted: Mapping[str, float],
    est_cost: Mapping[str, float],
    options: PolicyOptions,
    router: str,
    router_version: str,
    latency: Mapping[str, float],
    unfamiliar: float | None,
) -> Decision:
    candidates = tuple(
        Candidate(m, float(q), float(est_cost.get(m, math.inf)), latency.get(m))
        for m, q in predicted.items()
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
    note = ""
    budget = options.max_latency_ms
    if budget is not None and latency:
        timed = [c for c in eligible if c.est_latency_ms is not None]
        fastest = min(timed, key=_latency_key) if timed else None
        if fastest is not None and fastest.est_latency_ms is not None:
            need = fastest.est_latency_ms
            # tight: every eligible model measured, and the fastest leaves little slack
            if len(timed) == len(eligible) and budget < options.tight_latency_factor * need:
                return Decision(
                    fastest.model,
                    -need,
                    None,
                    candidates,
                    f"{fastest.model}: tight deadline, fastest eligible (~{need:.0f} ms; "
                    f"max_latency_ms {budget:.0f} < {options.tight_latency_factor:g} x that)",
                    router,
                    router_version,
                    "latency_tight",
                )
            missing = [
                c for c in timed if c.est_latency_ms is not None and c.est_latency_ms > budget
            ]
            if missing:
                eligible = [c for c in eligible if c not in missing]
                note = "; latency excluded " + ", ".join(
                    f"{c.model} (~{c.est_latency_ms:.0f} ms > {budget:.0f} ms)" for c in missing
                )
    by_name = {c.model: c for c in eligible}

    notes: list[str] = []

    def done(chosen: Candidate, score: float, policy: str, reason: str) -> Decision:
        threshold = options.threshold if policy == "threshold" else None
        return Decision(
            chosen.model,
            score,
            threshold,
            candidates,
            reason + note + "".join("; " + n for n in notes),
            router,
            router_version,
            policy,
        )

    s, w = options.strong, options.weak
    if unfamiliar is not None and unfamiliar > options.unfamiliar_threshold:
        act = options.on_unfamiliar
        what = f"unfamiliar prompt ({unfamiliar:.2f} > {options.unfamiliar_threshold:.2f})"
        send_to = s if act == "strong" else w if act in ("weak", "cascade") else None
        if send_to is not None and send_to in by_name:
            role = "strong" if act == "strong" else "weak"
            then = ", answer checked by the cascade" if act == "cascade" else ""
            chosen = by_name[send_to]
            gap = chosen.predicted_quality
            if s is not None and w is not None:
                gap = float(predicted.get(s, math.nan)) - float(predicted.get(w, math.nan))
            return done(
                chosen,
                gap,
                "unfamiliar",
                f"{role}: {what}, on_unfamiliar={act!r}{then}",
            )
        notes.append(
            f"{what}, routed as usual"
            if act == "route"
            else f"{what}, on_unfamiliar={act!r} but that model is not eligible"
        )
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
    lat_w = options.latency_weight_per_s if latency else 0.0

    def objective(c: Candidate) -> float:
        value = c.predicted_quality
        if lam != 0.0:
            value -= lam * c.est_cost_usd
        if lat_w != 0.0 and c.est_latency_ms is not None:
            value -= lat_w * c.est_latency_ms / 1000.0
        return value

    chosen = min(eligible, key=lambda c: (-objective(c), *cheaper_key(c)))
    if lat_w == 0.0:
        return done(
            chosen,
            objective(chosen),
            "cost_tradeoff",
            f"{chosen.model}: best quality - {lam:g} x cost = {objective(chosen):.4f} "
            f"(quality {chosen.predicted_quality:.3f}, {_fmt_cost(chosen.est_cost_usd)})",
        )
    est = chosen.est_latency_ms
    shown = f"~{est:.0f} ms" if est is not None else "untimed"
    return done(
        chosen,
        objective(chosen),
        "cost_tradeoff",
        f"{chosen.model}: best quality - {lam:g} x cost - {lat_w:g} x latency_s = "
        f"{objective(chosen):.4f} (quality {chosen.predicted_quality:.3f}, "
        f"{_fmt_cost(chosen.est_cost_usd)}, {shown})",
    )


def _with_roles(router: Router, options: PolicyOptions) -> PolicyOptions:
    if options.strong is not None and options.weak is not None:
        return options
    return replace(
        options, strong=options.strong or router.strong, weak=options.weak or router.weak
    )


def route_batch(
    router: Router,
    requests: Sequence[Sequence[Mapping[str, Any]]],
    prices: Mapping[str, ModelPrice],
    options: PolicyOptions,
    *,
    max_tokens: Sequence[int | None] | None = None,
) -> list[Decision]:
    """Features + predict + policy for many chat requests (one predict call for all); each
    decision carries its prompt's `unfamiliar` when the router has a familiarity model."""
    texts = [prompt_text(messages) for messages in requests]
    opts = _with_roles(router, options)
    predicted, unfamiliar = assess(router, texts)
    out: list[Decision] = []
    for i, text in enumerate(texts):
        n_in = estimate_input_tokens(text, opts.chars_per_token)
        mt = max_tokens[i] if max_tokens is not None else None
        n_out = mt if mt is not None else opts.default_output_tokens
        costs = {m: estimate_cost_usd(prices[m], n_in, n_out) for m in router.models if m in prices}
        row = {m: float(predicted[i, j]) for j, m in enumerate(router.models)}
        u = float(unfamiliar[i]) if unfamiliar is not None else None
        out.append(
            decide(
                row, costs, opts, router=router.name, router_version=router.version, unfamiliar=u
            )
        )
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
