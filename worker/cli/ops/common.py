"""What every operator command shares: where Kafka is, reading a topic to a snapshot of its end,
pacing, and a progress bar on stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
import tomllib
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from worker.cli import UserError
from worker.config.kafka import KafkaSettings, TopicSettings

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
BROKER_HINT = (
    "start a local broker with `make kafka-up`, or point --bootstrap / $KAFKA_BOOTSTRAP / "
    "[kafka].bootstrap_servers at yours"
)


class OpsError(UserError):
    """A user-facing problem (bad input, missing topic); printed without a traceback."""


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


@dataclass(frozen=True)
class Connection:
    """The worker's own `[kafka]` and `[topics]` settings, so the tools see what members see."""

    kafka: KafkaSettings
    topics: TopicSettings

    def client_kwargs(self) -> dict[str, Any]:
        return self.kafka.common_kwargs()


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="the worker's TOML config: its [kafka] (TLS/SASL too) and [topics] are used",
    )
    p.add_argument(
        "--bootstrap",
        help=f"bootstrap servers (default: $KAFKA_BOOTSTRAP, the config's, or {DEFAULT_BOOTSTRAP})",
    )


def connection_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> Connection:
    return load_connection(args.config, args.bootstrap, dict(os.environ) if env is None else env)


def load_connection(
    config_path: str | None, bootstrap: str | None, env: dict[str, str]
) -> Connection:
    """`[kafka]` and `[topics]` of a worker config (other sections are not read here), then the
    overrides `llmroute run` takes too: bootstrap from --bootstrap, else
    $LLMROUTE_BOOTSTRAP_SERVERS, else $KAFKA_BOOTSTRAP when no config names one; the group from
    $LLMROUTE_GROUP_ID."""
    kafka, topics = KafkaSettings(bootstrap_servers=DEFAULT_BOOTSTRAP), TopicSettings()
    configured = False
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise OpsError(f"cannot read {config_path}: {exc}", "pass the worker's TOML") from None
        try:
            kafka = msgspec.convert(data.get("kafka", {}), KafkaSettings)
            topics = msgspec.convert(data.get("topics", {}), TopicSettings)
        except msgspec.ValidationError as exc:
            raise OpsError(f"invalid configuration {config_path}: {exc}") from None
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
    return Connection(kafka, topics)


def parse_range(text: str) -> tuple[int, int | None]:
    """`A:B` -> [A, B); `A:` -> [A, end); `:B` -> [0, B); `A` -> [A, A + 1)."""
    start_s, sep, end_s = text.partition(":")
    try:
        start = int(start_s) if start_s else 0
        end = (int(end_s) if end_s else None) if sep else start + 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad offset range {text!r}: use START:END") from None
    if start < 0 or (end is not None and end < start):
        raise argparse.ArgumentTypeError(f"bad offset range {text!r}")
    return start, end


@dataclass(frozen=True)
class Snapshot:
    """A topic's partitions with their first and end offsets at one moment."""

    topic: str
    beginning: dict[int, int]
    end: dict[int, int]

    @property
    def retained(self) -> int:
        return sum(self.end[p] - self.beginning[p] for p in self.end)


async def snapshot(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> Snapshot:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    beginning = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    return Snapshot(
        topic,
        {tp.partition: int(o) for tp, o in beginning.items()},
        {tp.partition: int(o) for tp, o in end.items()},
    )


async def partition_counts(client_kwargs: dict[str, Any], names: list[str]) -> dict[str, int]:
    """Partition count of each named topic that exists. Topics are listed first: a Metadata
    request naming a missing topic would make a broker with `auto.create.topics.enable` (the
    default) create it, and a status look-up must never create topics."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def topic_partitions(client_kwargs: dict[str, Any], topic: str) -> int:
    """Partition count of `topic`; OpsError when it does not exist."""
    counts = await partition_counts(client_kwargs, [topic])
    if topic not in counts:
        raise OpsError(f"topic {topic!r} does not exist")
    return counts[topic]


async def read_to_end(
    client_kwargs: dict[str, Any],
    topic: str,
    *,
    partitions: Iterable[int] | None = None,
    timeout_s: float = 120.0,
) -> AsyncGenerator[Any, None]:
    """Every record of `topic` (or of the given partitions) from its first retained offset up to
    the end offsets taken when reading starts: records added meanwhile are not read, so a replay
    into the topic being read cannot loop. Offsets may have gaps (compaction, transactions):
    a partition is done when the consumer's position reaches the end offset."""
    count = await topic_partitions(client_kwargs, topic)
    wanted = sorted(set(range(count) if partitions is None else partitions) & set(range(count)))
    # "earliest": assign() starts an offset reset of its own, which must not land at the end
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in wanted]
        if not tps:
            return
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        for tp, first in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, first)
        remaining = set()
        for tp in tps:
            if await consumer.position(tp) < end[tp]:
                remaining.add(tp)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise OpsError(f"timed out reading {topic} to its end offsets")
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


class Pacer:
    """At most `rate_per_s` sends per second, never bursting to catch up after a stall.

    `delay()` returns how long to wait before the next send (pure bookkeeping on the injected
    clock; the caller sleeps)."""

    def __init__(
        self, rate_per_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError("rate must be > 0")
        self._interval = 0.0 if rate_per_s is None else 1.0 / rate_per_s
        self._clock = clock
        self._next: float | None = None

    def delay(self) -> float:
        if not self._interval:
            return 0.0
        now = self._clock()
        slot = now if self._next is None else max(self._next, now)
        self._next = slot + self._interval
        return slot - now


class Progress:
    """One self-overwriting line on a terminal (`\\r`), or a line every few seconds when
    `stream` is not a terminal and progress was asked for."""

    def __init__(
        self,
        stream: IO[str],
        *,
        label: str,
        total: int | None,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.label, self.total, self.enabled = stream, label, total, enabled
        self.clock = clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = clock()
        self._last = -1e9
        self._every_s = 0.2 if self.tty else 5.0
        self._drawn = False

    def render(self, done: int, elapsed_s: float, width: int = 30) -> str:
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        if self.total:
            filled = min(width, int(width * done / self.total))
            bar = "#" * filled + "." * (width - filled)
            pct = 100.0 * done / self.total
            return f"{self.label} [{bar}] {done}/{self.total} {pct:5.1f}% {rate:8.1f}/s"
        return f"{self.label} {done} sent {rate:8.1f}/s"

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self._last < self._every_s:
            return
        self._last = now
        line = self.render(done, now - self.started)
        if self.tty:
            self.stream.write("\r" + line)
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def close(self, done: int) -> None:
        self.update(done, force=True)
        if self.enabled and self._drawn:
            self.stream.write("\n")
