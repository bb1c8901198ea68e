"""What every operator command shares: running it once a broker answers, reading a topic to a
snapshot of its end, pacing, and a progress bar on stderr (where Kafka is: `kafka_args`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.cli import Subparsers, UserError
from worker.cli.kafka_args import Connection, add_kafka_args, connection_from_args, reach
from worker.kafka.table import TopicNotReady, scan

Runner = Callable[[argparse.Namespace, Connection], int]


def add_broker_command(
    subparsers: Subparsers, name: str, runner: Runner, prog: str | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand that runs `runner(args, connection)` once a broker answers (an unreachable
    one is a `UserError`, before anything else happens); it takes `add_kafka_args`'s flags."""
    p: argparse.ArgumentParser = subparsers.add_parser(name, **kwargs)
    add_kafka_args(p)

    def handle(args: argparse.Namespace) -> int:
        conn = connection_from_args(args)
        asyncio.run(reach(conn.kafka))
        return runner(args, conn)

    p.set_defaults(handler=handle, command_prog=f"llmroute {prog or name}")
    return p


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
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def topic_partitions(client_kwargs: dict[str, Any], topic: str) -> int:
    """Partition count of `topic`; UserError when it does not exist."""
    counts = await partition_counts(client_kwargs, [topic])
    if topic not in counts:
        raise UserError(f"topic {topic!r} does not exist")
    return counts[topic]


async def read_to_end(
    client_kwargs: dict[str, Any],
    topic: str,
    *,
    partitions: Iterable[int] | None = None,
    timeout_s: float = 120.0,
) -> AsyncGenerator[Any, None]:
    """Every record of `topic` (or of the given partitions) from its first retained offset up to
    the end offsets taken when reading starts (`worker.kafka.table.scan`): records added
    meanwhile are not read, so a replay into the topic being read cannot loop. OpsError when
    the topic does not exist, or when the read makes no progress for `timeout_s`."""
    count = await topic_partitions(client_kwargs, topic)
    wanted = set(range(count) if partitions is None else partitions) & set(range(count))
    reads = scan(client_kwargs, topic, partitions=wanted, timeout_s=timeout_s)
    try:
        async for batch in reads:
            for record in batch:
                yield record
    except TopicNotReady:
        raise UserError(f"timed out reading {topic} to its end offsets") from None
    finally:
        await reads.aclose()


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
