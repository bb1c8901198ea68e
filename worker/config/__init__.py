"""The worker's configuration: one TOML file, decoded once into frozen typed sections.

    [kafka]      bootstrap, group, static membership, TLS / SASL      (worker.config.kafka)
    [topics]     topic names                                          (worker.config.kafka)
    [loop]       in-flight bounds, drain and commit timing, limits    (worker.config.kafka)
    [router]     the trained router artifact to load
    [policies.NAME]   named routing policies (threshold, strong_fraction, quality_target,
                      cost_tradeoff, cascade)
    [tenants.NAME]    per-tenant policy, allow/deny lists, budget, allowed overrides
    [models.NAME]     the model catalogue, one or several deployments each (worker.providers)
    [telemetry]  OTLP and Langfuse export (off by default)
    [metrics]    Prometheus /metrics, /healthz, /readyz

Unknown keys are errors, named with their path. `${VAR}` in strings is not expanded here: secrets
are referenced by environment variable *names*.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from worker.config.kafka import KafkaSettings, LoopSettings, TopicSettings
from worker.config.models import Catalogue
from worker.config.telemetry import TelemetryConfig
from worker.semcache_sync import CacheSettings

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


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class RouterSettings(_Section, frozen=True, kw_only=True):
    # folder written by `llmroute train`, or a registry folder whose CURRENT file names the
    # promoted version (`llmroute retrain --registry`)
    artifact: str
    watch_s: float = 0.0  # > 0: check the artifact (or CURRENT) this often; load a new version
    prompt_include_system: bool = False
    prompt_include_history: bool = False


class PolicySpec(_Section, frozen=True, kw_only=True):
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
    cheap: str | None = None  # cascade: default the router's weak model
    strong: str | None = None  # cascade: default the router's strong model
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


class TenantSettings(_Section, frozen=True, kw_only=True):
    policy: str = "default"
    allowed_models: tuple[str, ...] | None = None  # None: every catalogue model
    denied_models: tuple[str, ...] = ()
    max_cost_usd: float | None = None  # per request
    max_latency_ms: float | None = None  # default latency budget (a request may narrow it)
    # spend of all members together per UTC hour / day, shared on the `spend` topic
    # (worker.spend: the bound on overshoot is in its docstring)
    spend_limit_usd_per_hour: float | None = None
    spend_limit_usd_per_day: float | None = None
    mode: Literal["interactive", "batch"] = "interactive"  # "batch": every request can wait
    # Kafka topics this tenant's requests arrive on (None: any). When set, a request naming this
    # tenant from another topic, or naming another tenant from one of these, is rejected: the
    # topic's ACLs, not the payload, say who is asking.
    topics: tuple[str, ...] | None = None
    allow_overrides: tuple[Override, ...] = (
        "policy", "threshold", "strong_fraction", "allowed_models", "denied_models",
        "max_cost_usd", "mode",
    )  # fmt: skip


class BatchSettings(_Section, frozen=True, kw_only=True):
    """Requests routed with `mode: "batch"` (or a tenant whose `mode` is "batch") go through the
    providers' Batch APIs: accumulated per model, flushed by count, bytes or age, and tracked as
    durable jobs on the `batch_jobs` topic (see worker.batch)."""

    enabled: bool = True  # False: batch requests are answered interactively
    flush_requests: int = 10_000  # per (provider, model); capped by the provider's limit
    flush_bytes: int = 50 * 1024 * 1024  # capped by the provider's limit
    flush_age_s: float = 60.0  # the oldest request waits at most this long before submission
    poll_initial_s: float = 5.0
    poll_max_s: float = 300.0
    poll_multiplier: float = 1.5
    on_item_failure: Literal["interactive", "error"] = "interactive"  # failed/expired items
    max_open_jobs: int = 1_000  # per member; more flushes wait (backpressure)

    def __post_init__(self) -> None:
        if self.flush_requests < 1 or self.flush_bytes < 1 or self.flush_age_s <= 0:
            raise ValueError("batch flush_requests, flush_bytes and flush_age_s must be > 0")
        if self.poll_initial_s <= 0 or self.poll_max_s < self.poll_initial_s:
            raise ValueError("batch poll_initial_s must be > 0 and <= poll_max_s")


class ArmSpec(_Section, frozen=True, kw_only=True):
    """One arm of an A/B experiment: a share of the traffic routed by its own policy and/or
    router artifact (unset: the worker's own)."""

    name: str
    weight: float = 1.0
    policy: str | None = None
    artifact: str | None = None


class ExperimentSpec(_Section, frozen=True, kw_only=True):
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


class ShadowSettings(_Section, frozen=True, kw_only=True):
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


class MetricsSettings(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464


class ProviderSettings(_Section, frozen=True, kw_only=True):
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    max_retries: int = 2
    request_deadline_s: float = 300.0  # when the request carries no deadline
    max_connections: int = 2_000
    # several deployments per model (docs/deployments-per-model.md)
    rate_limit_max_wait_s: float = 30.0  # longest wait for rate-limit headroom, else reroute
    failover_timeout_min_s: float = 2.0  # a try with deployments after it: max(this,
    failover_timeout_factor: float = 5.0  # this x its expected latency)
    max_answer_bytes: int = 4 * 1024 * 1024  # longer answers: MalformedResponseError, no retry


class Config(_Section, frozen=True, kw_only=True):
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    loop: LoopSettings = LoopSettings()
    router: RouterSettings
    policies: dict[str, PolicySpec] = msgspec.field(
        default_factory=lambda: {"default": PolicySpec()}
    )
    tenants: dict[str, TenantSettings] = {}
    # a request naming a tenant not in `tenants` (names match exactly): "reject" answers it with
    # an error; "default" routes it with `default_tenant`'s settings
    unknown_tenant: Literal["reject", "default"] = "default"
    default_tenant: TenantSettings = TenantSettings()
    models: dict[str, dict[str, Any]]
    providers: ProviderSettings = ProviderSettings()
    telemetry: dict[str, Any] = {}
    metrics: MetricsSettings = MetricsSettings()
    batch: BatchSettings = BatchSettings()
    experiments: tuple[ExperimentSpec, ...] = ()
    shadow: ShadowSettings = ShadowSettings()
    cache: CacheSettings = CacheSettings()
    topic_replication_factor: int = 1

    def __post_init__(self) -> None:
        Catalogue.from_dict({"models": self.models})  # raises, naming the model and field
        TelemetryConfig.from_mapping(self.telemetry)
        for name, spec in self.policies.items():
            if spec.tight_latency_factor < 1.0:
                raise ValueError(f"policy {name!r}: tight_latency_factor must be >= 1")
        for name, tenant in {"default_tenant": self.default_tenant, **self.tenants}.items():
            if tenant.max_latency_ms is not None and tenant.max_latency_ms <= 0:
                raise ValueError(f"tenant {name!r}: max_latency_ms must be > 0")
            if tenant.policy not in self.policies:
                raise ValueError(f"tenant {name!r} uses unknown policy {tenant.policy!r}")
            for model in [*(tenant.allowed_models or []), *tenant.denied_models]:
                if model not in self.models:
                    raise ValueError(f"tenant {name!r} names unknown model {model!r}")
        for exp in self.experiments:
            for arm in exp.arms:
                if arm.policy is not None and arm.policy not in self.policies:
                    raise ValueError(f"experiment {exp.name!r} arm {arm.name!r} uses unknown "
                                     f"policy {arm.policy!r}")  # fmt: skip
        if len({e.name for e in self.experiments}) != len(self.experiments):
            raise ValueError("experiment names must be distinct")
        for name, spec in self.policies.items():
            if spec.cascade_grader is not None and spec.cascade_grader not in self.models:
                raise ValueError(
                    f"policy {name!r}: cascade_grader names unknown model {spec.cascade_grader!r}"
                )
        shadow = self.shadow
        for model in (
            shadow.judge_model,
            None if shadow.model in ("other", "strong", "weak") else shadow.model,
        ):
            if model is not None and model not in self.models:
                raise ValueError(f"shadow names unknown model {model!r}")  # fmt: skip

    def tenant(self, name: str) -> TenantSettings | None:
        """The settings of tenant `name` (exact match), `default_tenant` for an unknown name
        when `unknown_tenant` is "default", else None."""
        known = self.tenants.get(name)
        if known is not None:
            return known
        return self.default_tenant if self.unknown_tenant == "default" else None


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names the key."""


def parse(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    try:
        config = msgspec.convert(data, Config)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    if base_dir is not None and not Path(config.router.artifact).is_absolute():
        router = msgspec.structs.replace(
            config.router, artifact=str((base_dir / config.router.artifact).resolve())
        )
        config = msgspec.structs.replace(config, router=router)
    if base_dir is not None:
        policies = {
            name: msgspec.structs.replace(
                spec, cascade_scorer=str((base_dir / spec.cascade_scorer).resolve())
            )
            if spec.cascade_scorer is not None and not Path(spec.cascade_scorer).is_absolute()
            else spec
            for name, spec in config.policies.items()
        }
        config = msgspec.structs.replace(config, policies=policies)
    if base_dir is not None and config.experiments:
        experiments = tuple(
            msgspec.structs.replace(e, arms=tuple(
                msgspec.structs.replace(a, artifact=str((base_dir / a.artifact).resolve()))
                if a.artifact is not None and not Path(a.artifact).is_absolute() else a
                for a in e.arms
            ))
            for e in config.experiments
        )  # fmt: skip
        config = msgspec.structs.replace(config, experiments=experiments)
    return config


def load(path: str | Path) -> Config:
    """Read a TOML file (or JSON, by the `.json` suffix: handy for generated configs)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse(data, path.parent)
