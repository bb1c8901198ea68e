"""Where a command finds Kafka: the one loader of every `llmroute` command that talks to a broker
(`produce`, `tail`, `status`, `dlq`, `topics`, `dataset`, `judge`, `retrain --publish`, `ab`).

    --config FILE      the worker's config (TOML, or JSON by the `.json` suffix): its [kafka]
                       (TLS/SASL included) and [topics]; other sections are not read here
    --bootstrap H:P    bootstrap servers
    --NAME-topic T     one per topic a command reads, over the config's [topics]

The bootstrap servers are the first of: --bootstrap, $LLMROUTE_BOOTSTRAP_SERVERS, the config's
`[kafka].bootstrap_servers`, $KAFKA_BOOTSTRAP, 127.0.0.1:19092. The group id comes from
$LLMROUTE_GROUP_ID over the config's (the overrides `llmroute run` takes too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from worker.cli import POSITIVE, UserError
from worker.config.kafka import KafkaSettings, TopicSettings

__all__ = [
    "BROKER_HINT",
    "DEFAULT_BOOTSTRAP",
    "Connection",
    "add_kafka_args",
    "connection_from_args",
    "load_connection",
    "reach",
]

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
_TOPIC_FLAG = "kafka_topic_"  # the dest prefix of the --NAME-topic flags
BROKER_HINT = (
    "start a local broker with `make kafka-up`, or point --bootstrap / $KAFKA_BOOTSTRAP / "
    "[kafka].bootstrap_servers at yours"
)


@dataclass(frozen=True)
class Connection:
    """The worker's own `[kafka]` and `[topics]` settings, so the tools see what members see."""

    kafka: KafkaSettings
    topics: TopicSettings

    def client_kwargs(self) -> dict[str, Any]:
        return self.kafka.common_kwargs()


def add_kafka_args(
    p: argparse.ArgumentParser, topics: Sequence[str] = (), *, read_timeout: bool = False
) -> None:
    """--config and --bootstrap; a --NAME-topic flag per name in `topics` (a [topics] field);
    --read-timeout-s for commands that read topics to their ends."""
    p.add_argument(
        "--config",
        help="the worker's TOML config: its [kafka] (TLS/SASL too) and [topics] are used",
    )
    p.add_argument(
        "--bootstrap",
        help=f"bootstrap servers (default: $KAFKA_BOOTSTRAP, the config's, or {DEFAULT_BOOTSTRAP})",
    )
    for name in topics:
        flag = name.replace("_", "-")
        p.add_argument(
            f"--{flag}-topic",
            dest=f"{_TOPIC_FLAG}{name}",
            metavar=f"{name.upper()}_TOPIC",
            help=f"the {name} topic",
        )
    if read_timeout:
        p.add_argument(
            "--read-timeout-s",
            type=POSITIVE,
            default=30.0,
            help="give up when a read stalls this long",
        )


def connection_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> Connection:
    """The connection `add_kafka_args`'s flags describe, with the environment's overrides."""
    overrides = {
        name.removeprefix(_TOPIC_FLAG): value
        for name, value in vars(args).items()
        if name.startswith(_TOPIC_FLAG) and value
    }
    return load_connection(
        args.config, args.bootstrap, dict(os.environ) if env is None else env, overrides
    )


def load_connection(
    config_path: str | Path | None,
    bootstrap: str | None,
    env: Mapping[str, str],
    topic_overrides: Mapping[str, str] | None = None,
) -> Connection:
    """`[kafka]` and `[topics]` of a worker config, then the overrides (module docstring)."""
    kafka, topics = KafkaSettings(bootstrap_servers=DEFAULT_BOOTSTRAP), TopicSettings()
    configured = False
    if config_path:
        data = _read(Path(config_path))
        try:
            kafka = msgspec.convert(data.get("kafka", {}), KafkaSettings)
            topics = msgspec.convert(data.get("topics", {}), TopicSettings)
        except (msgspec.ValidationError, ValueError) as exc:
            raise UserError(f"invalid configuration {config_path}: {exc}") from None
        configured = "bootstrap_servers" in data.get("kafka", {})
    chosen = (
        bootstrap
        or env.get("LLMROUTE_BOOTSTRAP_SERVERS")
        or (None if configured else env.get("KAFKA_BOOTSTRAP"))
    )
    if chosen:
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=chosen)
    if env.get("LLMROUTE_GROUP_ID"):
        kafka = msgspec.structs.replace(kafka, group_id=env["LLMROUTE_GROUP_ID"])
    if topic_overrides:
        try:
            topics = msgspec.structs.replace(topics, **topic_overrides)
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad topic flags: {exc}") from None
    return Connection(kafka, topics)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}", "pass the worker's TOML") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: not a table of sections", "pass the worker's TOML")
    return data


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    """aiokafka logs each failed connection attempt at ERROR; the caller reports one line."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def reach(kafka: KafkaSettings, timeout_s: float = 10.0, hint: str = BROKER_HINT) -> None:
    """Return once a broker answers a Metadata request; `UserError` (one line, with a hint)
    when none does within `timeout_s`. Nothing is created or changed on the broker."""
    try:
        kw = kafka.common_kwargs()
    except (ValueError, OSError) as exc:  # a SASL variable unset, an unreadable TLS file
        raise UserError(f"Kafka client settings: {exc}") from None
    where = kafka.bootstrap_servers
    with _quiet_kafka_client():
        client = AIOKafkaClient(**kw)
        try:
            await asyncio.wait_for(client.bootstrap(), timeout_s)
        except (KafkaError, OSError, TimeoutError):
            raise UserError(f"cannot reach Kafka at {where}: no broker answered", hint) from None
        finally:
            await client.close()
