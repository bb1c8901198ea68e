"""The worker's configuration: one TOML file, decoded once into frozen typed sections.

    [kafka]      bootstrap, group, static membership, TLS / SASL      (worker.config.kafka)
    [topics]     topic names                                          (worker.config.kafka)
    [loop]       in-flight bounds, drain and commit timing, limits    (worker.config.kafka)
    [router]     the trained router artifact to load                  (worker.config.routing)
    [policies.NAME]   named routing policies (threshold, strong_fraction, quality_target,
                      cost_tradeoff, cascade)                         (worker.config.routing)
    [tenants.NAME]    per-tenant policy, allow/deny lists, budget, allowed overrides
    [[experiments]], [shadow]   A/B arms and shadow calls            (worker.config.routing)
    [models.NAME]     the model catalogue, one or several deployments each: a `Catalogue`
                      (worker.config.models)
    [providers]  timeouts, retries and limits of model calls          (worker.config.models)
    [telemetry]  OTLP and Langfuse export (off by default): a `TelemetryConfig`
    [metrics]    Prometheus /metrics, /healthz, /readyz               (worker.config.telemetry)
    [batch]      the providers' Batch APIs                            (worker.config.batch)
    [cache]      the semantic cache                                   (worker.config.cache)

`load` / `parse` decode the file once: every section, `models` and `telemetry` included, is a
frozen typed object read by attribute. Unknown keys are errors, named with their path. `${VAR}`
in strings is not expanded here: secrets are referenced by environment variable *names*.
Nothing here imports the runtime (Kafka, HTTP, telemetry SDKs): tests/test_import_direction.py.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from worker.config.base import Section
from worker.config.batch import BatchSettings
from worker.config.cache import CacheSettings
from worker.config.kafka import KafkaSettings, LoopSettings, TopicSettings
from worker.config.models import Catalogue, ProviderSettings
from worker.config.routing import (
    ArmSpec,
    ExperimentSpec,
    PolicySpec,
    RouterSettings,
    ShadowSettings,
    TenantSettings,
)
from worker.config.telemetry import MetricsSettings, TelemetryConfig

__all__ = [
    "ArmSpec",
    "BatchSettings",
    "CacheSettings",
    "Config",
    "ConfigError",
    "ExperimentSpec",
    "KafkaSettings",
    "LoopSettings",
    "MetricsSettings",
    "PolicySpec",
    "ProviderSettings",
    "RouterSettings",
    "ShadowSettings",
    "TenantSettings",
    "TopicSettings",
    "load",
    "parse",
]


class _Sections(Section, frozen=True, kw_only=True):
    """The sections decoded straight from the file (shared by `_Document` and `Config`)."""

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    loop: LoopSettings = LoopSettings()
    router: RouterSettings
    policies: dict[str, PolicySpec] = msgspec.field(
        default_factory=lambda: {"default": PolicySpec()}
    )
    tenants: dict[str, TenantSettings] = msgspec.field(default_factory=dict)
    # a request naming a tenant not in `tenants` (names match exactly): "reject" answers it with
    # an error; "default" routes it with `default_tenant`'s settings
    unknown_tenant: Literal["reject", "default"] = "default"
    default_tenant: TenantSettings = TenantSettings()
    providers: ProviderSettings = ProviderSettings()
    metrics: MetricsSettings = MetricsSettings()
    batch: BatchSettings = BatchSettings()
    experiments: tuple[ExperimentSpec, ...] = ()
    shadow: ShadowSettings = ShadowSettings()
    cache: CacheSettings = CacheSettings()
    topic_replication_factor: int = 1


class _Document(_Sections, frozen=True, kw_only=True):
    """The file as written: `models` and `telemetry` have their own decoders
    (`Catalogue.from_dict`, `TelemetryConfig.from_mapping`), run once by `parse`."""

    models: dict[str, dict[str, Any]]
    telemetry: dict[str, Any] = msgspec.field(default_factory=dict)


class Config(_Sections, frozen=True, kw_only=True):
    """The whole configuration, built once by `parse` / `load`."""

    models: Catalogue
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
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
                    raise ValueError(
                        f"experiment {exp.name!r} arm {arm.name!r} uses unknown policy "
                        f"{arm.policy!r}"
                    )
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
                raise ValueError(f"shadow names unknown model {model!r}")

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
    """Decode and check the configuration (paths relative to `base_dir` when given)."""
    where = _not_finite(data)
    if where is not None:  # TOML has nan and inf; a nan slips past every `< 0` check
        raise ConfigError(f"invalid configuration: {where} must be a finite number")
    try:
        document = msgspec.convert(data, _Document)
        if base_dir is not None:
            document = _resolve_paths(document, base_dir)
        sections = {name: getattr(document, name) for name in _Sections.__struct_fields__}
        return Config(
            **sections,
            models=Catalogue.from_dict({"models": document.models}),
            telemetry=TelemetryConfig.from_mapping(document.telemetry),
        )
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def _not_finite(value: Any, where: str = "") -> str | None:
    """The dotted key of the first nan or infinite number in `value` (None: there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(the document)"
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    for key, item in items:
        found = _not_finite(item, key)
        if found is not None:
            return found
    return None


def _resolve_paths(document: _Document, base_dir: Path) -> _Document:
    """Artifact and scorer folders relative to the configuration file's folder."""

    def resolve(path: str) -> str:
        return path if Path(path).is_absolute() else str((base_dir / path).resolve())

    router = msgspec.structs.replace(document.router, artifact=resolve(document.router.artifact))
    policies = {
        name: spec
        if spec.cascade_scorer is None
        else msgspec.structs.replace(spec, cascade_scorer=resolve(spec.cascade_scorer))
        for name, spec in document.policies.items()
    }
    experiments = tuple(
        msgspec.structs.replace(
            e,
            arms=tuple(
                a
                if a.artifact is None
                else msgspec.structs.replace(a, artifact=resolve(a.artifact))
                for a in e.arms
            ),
        )
        for e in document.experiments
    )
    return msgspec.structs.replace(
        document, router=router, policies=policies, experiments=experiments
    )


def load(path: str | Path) -> Config:
    """Read a TOML file (or JSON, by the `.json` suffix: handy for generated configs)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse(data, path.parent)
