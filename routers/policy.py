"""The decision policy, separate from scoring: predicted quality + estimated cost -> Decision.

Eligible models (`routers.eligibility`): those predicted, in `allow` (when given: None allows
every model, an empty set none), not in `deny`, and whose cost is within `max_cost_usd` (when
given). The `Decision` carries that set; the shell draws every model it calls from it.

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
from routers.eligibility import Limits
from routers.eligibility import eligible as eligible_set
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
    "input_tokens_bound",
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
    allow: frozenset[str] | None = None  # None: every model; empty: none
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


MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of one chat message (OpenAI's format: 3-4)
REPLY_PRIMING_TOKENS = 3
IMAGE_LOW_DETAIL_TOKENS = 85  # OpenAI: a `detail: "low"` image costs 85 tokens
# The most one image costs in input tokens: Anthropic (width x height / 750, images above
# ~1.15 megapixels are scaled down first) about 1,600; OpenAI high detail (85 + 170 per 512 px
# tile of an image scaled into 2048 x 768) at most 1,445. Models that count more set their own.
IMAGE_MAX_TOKENS = 1_600


def input_tokens_bound(
    messages: Sequence[Mapping[str, Any]], image_tokens: int = IMAGE_MAX_TOKENS
) -> int:
    """An upper bound on the input tokens of a chat request: every string of every message
    (system and developer prompts, history, tool results, names) counted at one token per UTF-8
    byte (a byte-level BPE token is at least one byte), images at their documented maximum
    (`image_tokens`; 85 for `detail: "low"`), plus the per-message and reply framing."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + _bound(message, image_tokens)
    return total


def _bound(value: Any, image_tokens: int) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        if value.get("type") == "image_url":
            image = value.get("image_url")
            low = isinstance(image, Mapping) and image.get("detail") == "low"
            return IMAGE_LOW_DETAIL_TOKENS if low else image_tokens
        return sum(_bound(v, image_tokens) for k, v in value.items() if k != "type")
    if isinstance(value, list | tuple):
        return sum(_bound(v, image_tokens) for v in value)
    return len(str(value)) if value is not None else 0


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
    limits = Limits("policy", options.allow, options.deny, options.max_cost_usd)
    allowed = eligible_set(predicted, (limits,), est_cost)
    if not allowed:
        raise NoEligibleModelError(allowed.why_none())
    eligible = [c for c in candidates if c.model in allowed]
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
                    eligible=allowed.models,
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
            eligible=allowed.models,
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
