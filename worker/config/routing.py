"""`[router]`, `[policies.NAME]`, `[tenants.NAME]`, `[[experiments]]` and `[shadow]`: how
requests are routed."""

from __future__ import annotations

from typing import Literal, get_args

from worker.config.base import Section

__all__ = [
    "OVERRIDES",
    "ArmSpec",
    "ExperimentSpec",
    "Override",
    "PolicyKind",
    "PolicySpec",
    "RouterSettings",
    "ShadowSettings",
    "TenantSettings",
]

PolicyKind = Literal["threshold", "quality_target", "cost_tradeoff", "cascade"]
Override = Literal[
    "policy",
    "threshold",
    "strong_fraction",
    "allowed_models",
    "denied_models",
    "max_cost_usd",
    "mode",
]
OVERRIDES: tuple[Override, ...] = get_args(Override)


class RouterSettings(Section, frozen=True, kw_only=True):
    # folder written by `llmroute train`, or a registry folder whose CURRENT file names the
    # promoted version (`llmroute retrain --registry`)
    artifact: str
    watch_s: float = 0.0  # > 0: check the artifact (or CURRENT) this often; load a new version
    prompt_include_system: bool = False
    prompt_include_history: bool = False


class PolicySpec(Section, frozen=True, kw_only=True):
    """A named routing policy. `threshold` and `strong_fraction` are for two models (the router's
    strong and weak ones); `strong_fraction` picks the threshold from the artifact's calibration
    scores. `cascade` calls `cheap` first and escalates to `strong` when the answer scorer says so:
    by default marker rules (`routers.cascade`); with `cascade_scorer`, a learned scorer (an
    artifact of `llmroute train --router cascade`); with `cascade_grader`, a catalogue model that
    grades the cheap answer with a rubric (its call is paid for and counted in the cost). The
    answer is accepted iff its score >= `cascade_threshold` (unset: 0.5 for rules and grader; for
    a learned scorer its artifact's `quality_95pct` calibration, else 0.5).
    """

    kind: PolicyKind = "threshold"
    threshold: float | None = None
    strong_fraction: float | None = None
    quality_target: float | None = None
    cost_weight_per_usd: float = 0.0
    cheap: str | None = None  # cascade: one of the router's models; default its weak one
    strong: str | None = None  # cascade: one of the router's models; default its strong one
    cascade_threshold: float | None = None
    cascade_scorer: str | None = None  # folder of a learned answer scorer
    cascade_grader: str | None = None  # catalogue model grading the cheap answer
    default_output_tokens: int = 256
    # latency (see routers.policy): expected seconds weigh this much in the cost trade-off, and
    # a budget below this factor x the fastest model's expected latency is a tight deadline
    latency_weight_per_s: float = 0.0
    tight_latency_factor: float = 1.5
    # a prompt further from the router's training prompts than 99% of them: routed as usual
    # ("route"), sent to the strong or weak model, or to the cheap one with a cascade check
    on_unfamiliar: Literal["route", "strong", "weak", "cascade"] = "route"
    # the input tokens one image may cost at most (routers.policy.IMAGE_MAX_TOKENS)
    image_input_tokens: int = 1_600

    def __post_init__(self) -> None:
        if self.cascade_scorer is not None and self.cascade_grader is not None:
            raise ValueError("a cascade policy takes cascade_scorer or cascade_grader, not both")


class TenantSettings(Section, frozen=True, kw_only=True):
    policy: str = "default"
    allowed_models: tuple[str, ...] | None = None  # None: every catalogue model
    denied_models: tuple[str, ...] = ()
    max_cost_usd: float | None = None  # per request
    max_latency_ms: float | None = None  # default latency budget (a request may narrow it)
    # spend of all members together per UTC hour / day, shared on the `spend` topic
    # (worker.pipeline.spend: the bound on overshoot is in its docstring)
    spend_limit_usd_per_hour: float | None = None
    spend_limit_usd_per_day: float | None = None
    mode: Literal["interactive", "batch"] = "interactive"  # "batch": every request can wait
    # Kafka topics this tenant's requests arrive on (None: any). When set, a request naming this
    # tenant from another topic, or naming another tenant from one of these, is rejected: the
    # topic's ACLs, not the payload, say who is asking.
    topics: tuple[str, ...] | None = None
    allow_overrides: tuple[Override, ...] = OVERRIDES  # every one by default


class ArmSpec(Section, frozen=True, kw_only=True):
    """One arm of an A/B experiment: a share of the traffic routed by its own policy and/or
    router artifact (unset: the worker's own)."""

    name: str
    weight: float = 1.0
    policy: str | None = None
    artifact: str | None = None


class ExperimentSpec(Section, frozen=True, kw_only=True):
    """Requests of `tenants` (None: all) are split between `arms` by a stable hash of the
    request id salted with the experiment name (routers.split)."""

    name: str
    arms: tuple[ArmSpec, ...]
    tenants: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.arms) < 1 or len({a.name for a in self.arms}) != len(self.arms):
            raise ValueError(f"experiment {self.name!r} needs arms with distinct names")
        if any(a.weight < 0 for a in self.arms) or sum(a.weight for a in self.arms) <= 0:
            raise ValueError(f"experiment {self.name!r}: weights must be >= 0, sum > 0")


class ShadowSettings(Section, frozen=True, kw_only=True):
    """For a stable `sample` of requests (hash of the request id), also call `model` in the
    background: "other" (the router's strong model when the weak one answered, else the weak),
    "strong", "weak", or a catalogue model name. The user's response never changes; the shadow
    answer goes to the shadow topic, its decision to the decisions topic (`shadow: true`), and
    a pairwise judge verdict to the feedback topic when `judge_model` is set."""

    sample: float = 0.0
    model: str = "other"
    tenants: tuple[str, ...] | None = None
    judge_model: str | None = None
    max_in_flight: int = 256  # shadow calls beyond this are skipped (never queue up)
    # with `sample` > 0, every unfamiliar prompt is shadowed too (judged first: the router
    # knows least about them)
    unfamiliar: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample <= 1.0:
            raise ValueError("shadow sample must be within [0, 1]")
