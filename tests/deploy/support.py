"""Reading the deployment files the way their consumers do."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from worker import config as config_mod

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def worker_config(text: str) -> tuple[config_mod.Config, dict[str, Any]]:
    """The worker's own loader on a TOML text (unknown keys are errors), and the raw table."""
    data = tomllib.loads(text)
    return config_mod.parse(data), data


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"kafka://{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


def env_names(config: config_mod.Config) -> set[str]:
    """Every environment variable the config says the worker reads (secrets by name)."""
    names = {m.api_key_env for m in config.models.values()}
    langfuse = config.telemetry.langfuse
    if langfuse is not None:
        names.add(langfuse.public_key_env)
        names.add(langfuse.secret_key_env)
    for name in (config.kafka.sasl_username_env, config.kafka.sasl_password_env):
        if name:
            names.add(name)
    return names
