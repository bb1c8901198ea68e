"""Telemetry configuration: frozen, typed, loaded once and passed in.

Export is off by default: with neither `otlp_endpoint` nor `langfuse` set (and no tracer provider
passed to `Tracing`), spans are not recorded at all. Secrets are never part of a repr: Langfuse
keys and OTLP headers are excluded from `repr()`, and the keys are better given as the NAMES of
environment variables (the defaults) than as values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import msgspec

from worker.config.base import Section

__all__ = [
    "ExportLimits",
    "LangfuseConfig",
    "MetricsSettings",
    "TelemetryConfig",
    "TelemetryConfigError",
]


class TelemetryConfigError(ValueError):
    """The telemetry configuration is invalid or a required secret is not set.

    The message names the field or environment variable, never a secret's value.
    """


@dataclass(frozen=True, kw_only=True)
class ExportLimits:
    """Batching of each span export pipeline (OTLP and Langfuse each have their own queue).

    A full queue drops the newest spans (counted by the SDK), it never blocks the caller.
    """

    max_queue_size: int = 8192
    max_export_batch_size: int = 512
    schedule_delay_ms: int = 1000
    export_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.max_queue_size < 1 or self.max_export_batch_size < 1:
            raise TelemetryConfigError("export queue and batch sizes must be >= 1")
        if self.max_export_batch_size > self.max_queue_size:
            raise TelemetryConfigError("export.max_export_batch_size exceeds max_queue_size")
        if self.schedule_delay_ms <= 0 or self.export_timeout_ms <= 0:
            raise TelemetryConfigError("export delays and timeouts must be > 0 ms")


@dataclass(frozen=True, kw_only=True)
class LangfuseConfig:
    """Where and how the Langfuse SDK exports (OTLP/HTTP to `{base_url}/api/public/otel`).

    `public_key`/`secret_key` values win over the environment variables named by
    `public_key_env`/`secret_key_env`; prefer the variables so no secret sits in a config file.
    """

    base_url: str = "https://cloud.langfuse.com"
    public_key_env: str = "LANGFUSE_PUBLIC_KEY"
    secret_key_env: str = "LANGFUSE_SECRET_KEY"
    public_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    environment: str | None = None
    release: str | None = None
    trace_name: str = "llmroute.request"
    flush_at: int = 512
    flush_interval_s: float = 1.0
    timeout_s: int = 5
    compression: Literal["gzip", "none"] = "gzip"

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise TelemetryConfigError("langfuse.base_url must be an http(s) URL")
        if self.flush_at < 1 or self.flush_interval_s <= 0 or self.timeout_s < 1:
            raise TelemetryConfigError("langfuse flush_at, flush_interval_s, timeout_s must be > 0")

    def resolve_keys(self, environ: Mapping[str, str]) -> tuple[str, str]:
        """(public_key, secret_key) from the values or the named environment variables."""
        public = self.public_key or environ.get(self.public_key_env)
        secret = self.secret_key or environ.get(self.secret_key_env)
        if not public:
            raise TelemetryConfigError(
                f"Langfuse is configured but no public key: set {self.public_key_env}"
            )
        if not secret:
            raise TelemetryConfigError(
                f"Langfuse is configured but no secret key: set {self.secret_key_env}"
            )
        return public, secret


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """Traces of the worker. Everything is off unless an endpoint or Langfuse is set.

    `otlp_endpoint` is the full OTLP/HTTP traces URL (e.g. `http://collector:4318/v1/traces`).
    With `otlp_headers` empty the exporter reads `OTEL_EXPORTER_OTLP_TRACES_HEADERS` /
    `OTEL_EXPORTER_OTLP_HEADERS`, which keeps tokens out of config files.
    `mask_prompts` / `mask_outputs` replace message content on every span (both pipelines).
    `sample_ratio` keeps that share of requests, decided from the trace id, so from `request_id`:
    a replay makes the same choice, and Langfuse drops scores of traces it never received.
    """

    otlp_endpoint: str | None = None
    otlp_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    otlp_timeout_s: float = 10.0
    service_name: str = "llmroute-worker"
    service_instance_id: str | None = None
    langfuse: LangfuseConfig | None = None
    mask_prompts: bool = False
    mask_outputs: bool = False
    sample_ratio: float = 1.0
    export: ExportLimits = field(default_factory=ExportLimits)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise TelemetryConfigError("sample_ratio must be within [0, 1]")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(
            ("http://", "https://")
        ):
            raise TelemetryConfigError("otlp_endpoint must be an http(s) URL")
        if self.otlp_timeout_s <= 0:
            raise TelemetryConfigError("otlp_timeout_s must be > 0")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TelemetryConfig:
        """From the `[telemetry]` table of the worker's TOML file; unknown keys are errors.

        `otlp_headers` may be a table there (`{authorization = "..."}`).
        """
        _reject_unknown(data, cls, "telemetry")
        values = dict(data)
        headers = values.get("otlp_headers")
        if isinstance(headers, Mapping):
            values["otlp_headers"] = sorted(headers.items())
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise TelemetryConfigError(f"invalid [telemetry]: {exc}") from None

    @property
    def exports(self) -> bool:
        """Whether any exporter is configured."""
        return self.otlp_endpoint is not None or self.langfuse is not None


_NESTED: dict[str, type] = {"langfuse": LangfuseConfig, "export": ExportLimits}


def _reject_unknown(data: Mapping[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TelemetryConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}")
    for name, nested in _NESTED.items():
        value = data.get(name)
        if name in known and isinstance(value, Mapping):
            _reject_unknown(value, nested, f"{where}.{name}")


class MetricsSettings(Section, frozen=True, kw_only=True):
    """`[metrics]`: the Prometheus /metrics, /healthz and /readyz server."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464
