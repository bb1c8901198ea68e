"""What `llmroute run` checks before it touches anything, and `llmroute run --check` reports.

Each check returns a `Check` (ok or not, what it found, a hint). `run` stops at the first
failure, with one line and exit status 2, before any topic is created or port bound; a model
without its API key does not stop it but keeps /readyz failing (see `missing_keys`).

    config      the file parses and every section validates (worker.config)
    router      the artifact loads and fits the catalogue and policies (routing core built)
    keys        every model a policy can choose has its API key variable set
    telemetry   an exporter's settings and Langfuse keys, when configured
    broker      a Kafka broker answers a Metadata request
    metrics     the /metrics port is free (else a free one is used; a warning)
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from routers.artifact import Artifact, load_artifact
from routers.errors import RoutingError
from worker import config as config_mod
from worker.cli import UserError
from worker.cli.kafka_args import reach
from worker.config import Config
from worker.config.telemetry import TelemetryConfigError

# environment overrides of `llmroute run` (flags win over them, they win over the file)
ENV_BOOTSTRAP = "LLMROUTE_BOOTSTRAP_SERVERS"
ENV_GROUP = "LLMROUTE_GROUP_ID"
ENV_METRICS_PORT = "LLMROUTE_METRICS_PORT"
ENV_LOG_LEVEL = "LLMROUTE_LOG_LEVEL"
ENV_LOG_FORMAT = "LLMROUTE_LOG_FORMAT"

RUN_BROKER_HINT = (
    f"start a local broker with `make kafka-up`, or set --bootstrap / ${ENV_BOOTSTRAP} / "
    "[kafka].bootstrap_servers"
)
ROUTER_HINT = (
    "`make demo` trains one into .demo/router; or `llmroute train --data F.jsonl --out DIR` "
    "and set [router].artifact"
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str | None = None
    warning: bool = False

    def line(self) -> str:
        mark = "ok  " if self.ok and not self.warning else ("warn" if self.ok else "FAIL")
        return f"{mark} {self.name:<10} {self.detail}" + (
            f"  (hint: {self.hint})" if self.hint else ""
        )


def load_config(path: str, env: Mapping[str, str]) -> Config:
    """The config file with the environment overrides applied; `UserError` when invalid."""
    if not Path(path).is_file():
        raise UserError(
            f"no config file {path}",
            "deploy/config/local.toml runs against `make kafka-up` and `llmroute sim-provider`",
        )
    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise UserError(str(exc), "deploy/config/worker.example.toml documents every key") from None
    return with_env(config, env)


def with_env(config: Config, env: Mapping[str, str]) -> Config:
    """`LLMROUTE_BOOTSTRAP_SERVERS`, `LLMROUTE_GROUP_ID`, `LLMROUTE_METRICS_PORT` replace the
    file's values (12-factor style: one file, many members and environments)."""
    import msgspec

    kafka, metrics = config.kafka, config.metrics
    if env.get(ENV_BOOTSTRAP):
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=env[ENV_BOOTSTRAP])
    if env.get(ENV_GROUP):
        kafka = msgspec.structs.replace(kafka, group_id=env[ENV_GROUP])
    if env.get(ENV_METRICS_PORT):
        try:
            port = int(env[ENV_METRICS_PORT])
            if not 0 <= port < 65536:
                raise ValueError
        except ValueError:
            raise UserError(
                f"{ENV_METRICS_PORT}={env[ENV_METRICS_PORT]!r} is not a port number",
                "0 picks a free port",
            ) from None
        metrics = msgspec.structs.replace(metrics, port=port)
    return msgspec.structs.replace(config, kafka=kafka, metrics=metrics)


def check_router(config: Config) -> tuple[Check, Artifact | None]:
    from worker.pipeline.routing import RoutingCore
    from worker.training.registry import resolve_artifact

    where = config.router.artifact
    folder = resolve_artifact(where)
    if not (folder / "meta.json").is_file():
        return Check("router", False, f"no router artifact at {where}", ROUTER_HINT), None
    try:
        artifact = load_artifact(folder)
        RoutingCore(config, artifact, config.models)
    except (RoutingError, ValueError, OSError, KeyError) as exc:
        return Check("router", False, f"{folder}: {exc}", ROUTER_HINT), None
    r = artifact.router
    return Check("router", True, f"{r.name} {r.version} ({', '.join(r.models)})"), artifact


def policy_models(config: Config, artifact: Artifact) -> dict[str, set[str]]:
    """The catalogue models each policy can send a request to."""
    router = artifact.router
    routable = set(router.models) & set(config.models)
    out: dict[str, set[str]] = {}
    for name, spec in config.policies.items():
        if spec.kind == "threshold":
            models = {router.strong, router.weak}
        elif spec.kind == "cascade":
            models = {spec.cheap or router.weak, spec.strong or router.strong}
            if spec.cascade_grader is not None:  # every cheap answer is graded by this model
                models.add(spec.cascade_grader)
        else:
            models = set(routable)
        out[name] = models & set(config.models)
    return out


def missing_keys(config: Config, artifact: Artifact, env: Mapping[str, str]) -> dict[str, str]:
    """Model -> its unset API-key variable(s), for every model a policy can choose (the shadow
    and judge models too) that no deployment could serve: a request routed there would fail."""
    catalogue = config.models
    wanted = set().union(*policy_models(config, artifact).values())
    if config.shadow.sample > 0:
        shadow = config.shadow.model
        role = {"strong": artifact.router.strong, "weak": artifact.router.weak}
        if shadow == "other":
            wanted |= {artifact.router.strong, artifact.router.weak}
        else:
            wanted.add(role.get(shadow, shadow))
        if config.shadow.judge_model:
            wanted.add(config.shadow.judge_model)
    out = {}
    for model in sorted(wanted & set(catalogue.models)):
        # a model with several deployments is served while any of them has its key
        variables = [d.spec.api_key_env for d in catalogue[model].all_deployments]
        if not any(env.get(var) for var in variables):
            out[model] = ", ".join(dict.fromkeys(variables))
    return out


def keys_check(config: Config, artifact: Artifact, env: Mapping[str, str]) -> Check:
    missing = missing_keys(config, artifact, env)
    if not missing:
        return Check("keys", True, "every model a policy can choose has its API key set")
    by_var: dict[str, list[str]] = {}
    for model, var in missing.items():
        by_var.setdefault(var, []).append(model)
    listed = "; ".join(f"{var} (for {', '.join(models)})" for var, models in by_var.items())
    return Check(
        "keys",
        False,
        f"API key not set: {listed}",
        "export each variable (any value for the local simulator); /readyz fails until then",
    )


def telemetry_check(config: Config, env: Mapping[str, str]) -> Check:
    try:
        telemetry = config.telemetry
        if telemetry.langfuse is not None:
            telemetry.langfuse.resolve_keys(env)
    except TelemetryConfigError as exc:
        return Check(
            "telemetry",
            False,
            str(exc),
            "export the variable, or remove [telemetry.langfuse] to run without it",
        )
    parts = [p for p in (telemetry.otlp_endpoint, telemetry.langfuse and "langfuse") if p]
    return Check("telemetry", True, ", ".join(parts) if parts else "off (no exporter set)")


async def broker_check(config: Config, timeout_s: float = 10.0) -> Check:
    try:
        await reach(config.kafka, timeout_s, hint=RUN_BROKER_HINT)
    except UserError as exc:
        return Check("broker", False, str(exc), exc.hint)
    return Check("broker", True, f"{config.kafka.bootstrap_servers} answers")


def metrics_port_check(config: Config) -> Check:
    m = config.metrics
    if not m.enabled:
        return Check("metrics", True, "off")
    if m.port == 0:
        return Check("metrics", True, f"{m.host}: a free port")
    if port_free(m.host, m.port):
        return Check("metrics", True, f"http://{m.host}:{m.port}/metrics")
    return Check(
        "metrics",
        True,
        f"port {m.port} on {m.host} is taken (another member?): a free one will be used",
        f"give each member its own: {ENV_METRICS_PORT}=9465",
        warning=True,
    )


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.bind((host, port))
            return True
    return False


async def run_checks(config_path: str, env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in order, continuing past failures (for `run --check`)."""
    env = os.environ if env is None else env
    try:
        config = load_config(config_path, env)
    except UserError as exc:
        return [Check("config", False, str(exc), exc.hint)]
    checks = [Check("config", True, f"{config_path} (group {config.kafka.group_id})")]
    router, artifact = check_router(config)
    checks.append(router)
    if artifact is not None:
        checks.append(keys_check(config, artifact, env))
    checks.append(telemetry_check(config, env))
    checks.append(await broker_check(config))
    checks.append(metrics_port_check(config))
    return checks
