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

Each rule is a small policy class; they compose by wrapping, in the shape of OpenTelemetry's
`ParentBased(root=...)` sampler: a wrapper decides, or hands the situation (narrowed, or with a
note for the reason) to the policy it wraps. `decide` applies `STANDARD`:

    Eligibility(LatencyBudget(Unfamiliar(Threshold(QualityTarget(CostTradeoff())))))

and takes another composition through `policy=`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, NamedTuple, Protocol

from routers.base import Router
from routers.decision import Candidate, Decision
from routers.eligibility import Limits
from routers.eligibility import eligible as eligible_set
from routers.errors import NoEligibleModelError
from routers.familiarity import UNFAMILIAR_THRESHOLD
from routers.features import prompt_text
from routers.learned import assess

__all__ = [
    "STANDARD",
    "CostTradeoff",
    "Eligibility",
    "LatencyBudget",
    "ModelPrice",
    "OnUnfamiliar",
    "Policy",
    "PolicyOptions",
    "QualityTarget",
    "Situation",
    "Threshold",
    "Unfamiliar",
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


def _cheaper_key(c: Candidate) -> tuple[float, str]:
    return (c.est_cost_usd, c.model)


# ---------------------------------------------------------------- policies


class Situation(NamedTuple):
    """What a policy sees of one request: every scored candidate, those it may still choose
    (`choosable`), the eligible set the decision carries, and the notes for its reason."""

    predicted: Mapping[str, float]
    est_cost: Mapping[str, float]
    candidates: tuple[Candidate, ...]  # every scored model
    choosable: tuple[Candidate, ...]  # eligible and, with a latency budget, expected to meet it
    eligible: frozenset[str]  # the models the request may reach (the decision carries them)
    options: PolicyOptions
    latency: Mapping[str, float]
    unfamiliar: float | None
    router: str = ""
    router_version: str = ""
    notes: tuple[str, ...] = ()  # appended to the reason, in order

    def by_name(self) -> dict[str, Candidate]:
        return {c.model: c for c in self.choosable}

    def gap(self) -> float:
        """quality(strong) - quality(weak) (NaN when either is not predicted)."""
        s, w = self.options.strong, self.options.weak
        return float(self.predicted.get(s or "", math.nan)) - float(
            self.predicted.get(w or "", math.nan)
        )

    def noted(self, note: str) -> Situation:
        return self._replace(notes=(*self.notes, note))

    def decided(self, chosen: Candidate, score: float, policy: str, reason: str) -> Decision:
        threshold = self.options.threshold if policy == "threshold" else None
        return Decision(
            chosen.model,
            score,
            threshold,
            self.candidates,
            reason + "".join("; " + n for n in self.notes),
            self.router,
            self.router_version,
            policy,
            eligible=self.eligible,
        )


class Policy(Protocol):
    """Chooses a model for one request. A wrapper policy narrows or decides, and otherwise
    hands the situation to the policy it wraps (as OpenTelemetry's `ParentBased` sampler hands
    a root span to its `root` sampler)."""

    def decide(self, situation: Situation) -> Decision: ...


class Eligibility:
    """Only models within the options' allow / deny lists and `max_cost_usd`
    (`routers.eligibility`); none raises `NoEligibleModelError`."""

    def __init__(self, delegate: Policy) -> None:
        self.delegate = delegate

    def decide(self, situation: Situation) -> Decision:
        o = situation.options
        limits = Limits("policy", o.allow, o.deny, o.max_cost_usd)
        allowed = eligible_set(situation.predicted, (limits,), situation.est_cost)
        if not allowed:
            raise NoEligibleModelError(allowed.why_none())
        choosable = tuple(c for c in situation.candidates if c.model in allowed)
        narrowed = situation._replace(choosable=choosable, eligible=allowed.models)
        return self.delegate.decide(narrowed)


class LatencyBudget:
    """With `max_latency_ms`: a tight deadline (every eligible model measured, the fastest
    leaving little slack) goes to the fastest ("latency_tight"); otherwise models expected to
    miss the budget are no longer choosable, and the reason says so."""

    def __init__(self, delegate: Policy) -> None:
        self.delegate = delegate

    def decide(self, situation: Situation) -> Decision:
        budget = situation.options.max_latency_ms
        if budget is None or not situation.latency:
            return self.delegate.decide(situation)
        eligible = situation.choosable
        timed = [c for c in eligible if c.est_latency_ms is not None]
        fastest = min(timed, key=_latency_key) if timed else None
        if fastest is None or fastest.est_latency_ms is None:
            return self.delegate.decide(situation)
        need = fastest.est_latency_ms
        factor = situation.options.tight_latency_factor
        if len(timed) == len(eligible) and budget < factor * need:
            return situation.decided(
                fastest,
                -need,
                "latency_tight",
                f"{fastest.model}: tight deadline, fastest eligible (~{need:.0f} ms; "
                f"max_latency_ms {budget:.0f} < {factor:g} x that)",
            )
        missing = [c for c in timed if c.est_latency_ms is not None and c.est_latency_ms > budget]
        if not missing:
            return self.delegate.decide(situation)
        choosable = tuple(c for c in eligible if c not in missing)
        note = "latency excluded " + ", ".join(
            f"{c.model} (~{c.est_latency_ms:.0f} ms > {budget:.0f} ms)" for c in missing
        )
        return self.delegate.decide(situation.noted(note)._replace(choosable=choosable))


class Unfamiliar:
    """A prompt further from the router's training prompts than `unfamiliar_threshold` is
    handled by `on_unfamiliar`: "strong" / "weak" / "cascade" send it to that model when
    choosable (policy "unfamiliar"); "route", or that model not choosable, routes it as usual
    and says so in the reason."""

    def __init__(self, delegate: Policy) -> None:
        self.delegate = delegate

    def decide(self, situation: Situation) -> Decision:
        o, unfamiliar = situation.options, situation.unfamiliar
        if unfamiliar is None or not unfamiliar > o.unfamiliar_threshold:
            return self.delegate.decide(situation)
        act = o.on_unfamiliar
        what = f"unfamiliar prompt ({unfamiliar:.2f} > {o.unfamiliar_threshold:.2f})"
        send_to = o.strong if act == "strong" else o.weak if act in ("weak", "cascade") else None
        by_name = situation.by_name()
        if send_to is not None and send_to in by_name:
            role = "strong" if act == "strong" else "weak"
            then = ", answer checked by the cascade" if act == "cascade" else ""
            chosen = by_name[send_to]
            gap = chosen.predicted_quality
            if o.strong is not None and o.weak is not None:
                gap = situation.gap()
            return situation.decided(
                chosen, gap, "unfamiliar", f"{role}: {what}, on_unfamiliar={act!r}{then}"
            )
        note = (
            f"{what}, routed as usual"
            if act == "route"
            else f"{what}, on_unfamiliar={act!r} but that model is not eligible"
        )
        return self.delegate.decide(situation.noted(note))


class Threshold:
    """Two models (`threshold`, `strong` and `weak` set): strong iff score = quality(strong) -
    quality(weak) >= threshold; when only one of the two is choosable, that one."""

    def __init__(self, delegate: Policy) -> None:
        self.delegate = delegate

    def decide(self, situation: Situation) -> Decision:
        o = situation.options
        s, w, threshold = o.strong, o.weak, o.threshold
        if threshold is None or s is None or w is None:
            return self.delegate.decide(situation)
        score = situation.gap()
        by_name = situation.by_name()
        if s in by_name and w in by_name:
            strong = score >= threshold
            op = ">=" if strong else "<"
            chosen = by_name[s] if strong else by_name[w]
            role = "strong" if strong else "weak"
            return situation.decided(
                chosen,
                score,
                "threshold",
                f"{role}: need score {score:.4f} {op} threshold {threshold:.4f}",
            )
        if s in by_name or w in by_name:
            only = by_name[s] if s in by_name else by_name[w]
            return situation.decided(
                only, score, "only_candidate", f"{only.model}: the only eligible one of strong/weak"
            )
        return self.delegate.decide(situation)


class QualityTarget:
    """N models (`quality_target` set): the cheapest whose predicted quality reaches the
    target; if none does, the best predicted quality (ties: cheaper)."""

    def __init__(self, delegate: Policy) -> None:
        self.delegate = delegate

    def decide(self, situation: Situation) -> Decision:
        target = situation.options.quality_target
        if target is None:
            return self.delegate.decide(situation)
        eligible = situation.choosable
        reaching = [c for c in eligible if c.predicted_quality >= target]
        if reaching:
            chosen = min(reaching, key=_cheaper_key)
            return situation.decided(
                chosen,
                chosen.predicted_quality,
                "quality_target",
                f"{chosen.model}: cheapest ({_fmt_cost(chosen.est_cost_usd)}) with "
                f"predicted quality {chosen.predicted_quality:.3f} >= {target:.3f}",
            )
        chosen = min(eligible, key=lambda c: (-c.predicted_quality, *_cheaper_key(c)))
        return situation.decided(
            chosen,
            chosen.predicted_quality,
            "quality_target",
            f"{chosen.model}: none reaches {target:.3f}; best predicted quality "
            f"{chosen.predicted_quality:.3f}",
        )


class CostTradeoff:
    """The best `quality - cost_weight_per_usd * cost - latency_weight_per_s * latency_s`
    (ties: cheaper, then name). Decides always: the innermost policy."""

    def decide(self, situation: Situation) -> Decision:
        lam = situation.options.cost_weight_per_usd
        lat_w = situation.options.latency_weight_per_s if situation.latency else 0.0

        def objective(c: Candidate) -> float:
            value = c.predicted_quality
            if lam != 0.0:
                value -= lam * c.est_cost_usd
            if lat_w != 0.0 and c.est_latency_ms is not None:
                value -= lat_w * c.est_latency_ms / 1000.0
            return value

        chosen = min(situation.choosable, key=lambda c: (-objective(c), *_cheaper_key(c)))
        value = objective(chosen)
        quality, cost = chosen.predicted_quality, _fmt_cost(chosen.est_cost_usd)
        if lat_w == 0.0:
            return situation.decided(
                chosen,
                value,
                "cost_tradeoff",
                f"{chosen.model}: best quality - {lam:g} x cost = {value:.4f} "
                f"(quality {quality:.3f}, {cost})",
            )
        est = chosen.est_latency_ms
        shown = f"~{est:.0f} ms" if est is not None else "untimed"
        return situation.decided(
            chosen,
            value,
            "cost_tradeoff",
            f"{chosen.model}: best quality - {lam:g} x cost - {lat_w:g} x latency_s = "
            f"{value:.4f} (quality {quality:.3f}, {cost}, {shown})",
        )


# The policy `decide` applies: eligibility, then the latency budget, unfamiliar prompts, the
# two-model threshold, the quality target, and the cost trade-off that always decides.
STANDARD: Final[Policy] = Eligibility(
    LatencyBudget(Unfamiliar(Threshold(QualityTarget(CostTradeoff()))))
)


def decide(
    predicted: Mapping[str, float],
    est_cost: Mapping[str, float],
    options: PolicyOptions,
    *,
    router: str = "",
    router_version: str = "",
    est_latency_ms: Mapping[str, float] | None = None,
    unfamiliar: float | None = None,
    policy: Policy = STANDARD,
) -> Decision:
    """Choose a model. `est_cost` lacks a model -> its cost is unknown (inf for budgets and
    ordering, so it is never chosen under `max_cost_usd`). `est_latency_ms` lacks a model -> its
    latency is unknown (it meets any budget). `unfamiliar`: the prompt's distance from the
    router's training prompts (None: unknown, never acted on)."""
    latency = est_latency_ms or {}
    candidates = tuple(
        Candidate(m, float(q), float(est_cost.get(m, math.inf)), latency.get(m))
        for m, q in predicted.items()
    )
    situation = Situation(
        predicted,
        est_cost,
        candidates,
        candidates,
        frozenset(predicted),
        options,
        latency,
        unfamiliar,
        router,
        router_version,
    )
    decision = policy.decide(situation)
    if unfamiliar is None:
        return decision
    return replace(decision, unfamiliar=unfamiliar)


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
