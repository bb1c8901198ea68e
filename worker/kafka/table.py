"""Reading a topic to its end, and following a compacted topic: the one way the member does it.

    read_to_end    every record of a topic (or of some partitions, or of an offset window of
                   each) up to the end offsets taken when reading starts; all of it or
                   `TopicNotReady`, never a part
    scan           the same read as it goes, one fetched batch at a time (for tools that print
                   or replay as they read and keep no table)
    latest         the table a compacted topic stands for: the last value of each key, a
                   tombstone (null value) removing its key
    TopicFollower  reads a topic from its beginning (or its end) and then keeps following it;
                   `loaded` is set once the records present at the start are applied; after a
                   failure it resumes where it was
    home_partition, last_per_source
                   where a per-source state topic (dedupe markers, answer journal) keeps a
                   source partition's entries, and the window holding its last ones

One timeout behaviour: a read that makes no progress (no partition's position moves) for
`timeout_s` seconds on the injected clock raises `TopicNotReady` and hands back nothing; a read
that keeps moving is never cut short, whatever the topic's size. Records written after the end
offsets were taken are not read, so a read into the topic being read cannot loop. Offsets can
have gaps (compaction, transaction markers): a partition is done when the consumer's position
reaches its end offset, never by counting records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.kafka.topics import partition_counts

log = logging.getLogger(__name__)

__all__ = [
    "Bounds",
    "TopicFollower",
    "TopicNotReady",
    "home_partition",
    "last_per_source",
    "latest",
    "read_to_end",
    "scan",
]


class TopicNotReady(TimeoutError):
    """A topic was not read to its end: `timeout_s` passed without progress. Nothing of what
    was read is handed back (a part of a table is a wrong table)."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """One partition when reading starts: its first retained offset and its end offset."""

    partition: int
    beginning: int
    end: int


# which offsets of a partition to read: (first, stop), clamped to [beginning, end)
Window = Callable[[Bounds], tuple[int, int]]


def home_partition(source_partition: int, partitions: int) -> int:
    """The partition of a per-source state topic (dedupe markers, answer journal) with
    `partitions` partitions that holds a source partition's entries."""
    return source_partition % partitions


def last_per_source(window: int, source_count: int, partitions: int) -> Window:
    """The offsets holding at least the last `window` entries of each source partition, when
    `source_count` source partitions write to `partitions` partitions (several may share one,
    see `home_partition`)."""
    share = -(-source_count // partitions)  # source partitions writing to one partition
    return lambda b: (b.end - window * share, b.end)


def _consumer(
    client_kwargs: Mapping[str, Any], options: Mapping[str, Any] | None, committed_only: bool
) -> Any:
    # "earliest": assign() starts an offset reset of its own, which must not land at the end
    isolation = {"isolation_level": "read_committed"} if committed_only else {}
    return AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **{**client_kwargs, **isolation, **(options or {})},
    )


async def scan(
    client_kwargs: Mapping[str, Any],
    topic: str,
    *,
    partitions: Iterable[int] | None = None,
    window: Window | None = None,
    timeout_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    consumer_options: Mapping[str, Any] | None = None,
    committed_only: bool = False,
) -> AsyncGenerator[list[Any], None]:
    """The records of `topic` up to its end offsets at the start, one fetched batch at a time
    (per partition in offset order). `partitions`: None for all (a missing topic has none);
    `window`: the offsets to read of each partition (default: all retained). Raises
    `TopicNotReady` after `timeout_s` without progress. `committed_only`: records of committed
    transactions only (read_committed; the end offsets are then the last stable offsets)."""
    if partitions is None:
        counts = await partition_counts(dict(client_kwargs), [topic])
        wanted = list(range(counts.get(topic, 0)))
    else:
        wanted = sorted(set(partitions))
    if not wanted:
        return
    tps = [TopicPartition(topic, p) for p in wanted]
    consumer = _consumer(client_kwargs, consumer_options, committed_only)
    try:
        await consumer.start()
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        stop: dict[TopicPartition, int] = {}
        position: dict[TopicPartition, int] = {}
        for tp in tps:
            first, last = begins[tp], ends[tp]
            if window is not None:
                first, last = window(Bounds(tp.partition, begins[tp], ends[tp]))
                first, last = max(first, begins[tp]), min(last, ends[tp])
            if first < last:
                consumer.seek(tp, first)
                stop[tp], position[tp] = last, first
        moved_at = clock()
        while stop:
            batch = await consumer.getmany(*stop, timeout_ms=500)
            out = [r for tp, rs in batch.items() for r in rs if tp in stop and r.offset < stop[tp]]
            moved = False
            for tp in list(stop):
                now_at = await consumer.position(tp)
                if now_at != position[tp]:
                    position[tp], moved = now_at, True
                if now_at >= stop[tp]:
                    del stop[tp]
            now = clock()
            if stop and now - moved_at >= timeout_s:
                raise TopicNotReady(
                    f"{topic} partitions {sorted(tp.partition for tp in stop)} not read to "
                    f"their end: no progress for {timeout_s:g}s"
                )
            if moved:
                moved_at = now
            if out:
                yield out
    finally:
        await consumer.stop()


async def read_to_end(
    client_kwargs: Mapping[str, Any],
    topic: str,
    *,
    partitions: Iterable[int] | None = None,
    window: Window | None = None,
    timeout_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    consumer_options: Mapping[str, Any] | None = None,
    committed_only: bool = False,
) -> list[Any]:
    """Every record `scan` reads, once all of them are read (`TopicNotReady`: none)."""
    out: list[Any] = []
    reads = scan(
        client_kwargs,
        topic,
        partitions=partitions,
        window=window,
        timeout_s=timeout_s,
        clock=clock,
        consumer_options=consumer_options,
        committed_only=committed_only,
    )
    async for batch in reads:
        out.extend(batch)
    return out


def latest(
    records: Iterable[Any], keep: Callable[[bytes], bool] | None = None
) -> dict[bytes, bytes]:
    """The last value of each key (records in offset order per partition; keys live on one
    partition); a tombstone removes its key; records without a key, or whose key `keep`
    refuses, are left out."""
    table: dict[bytes, bytes] = {}
    for record in records:
        key = record.key
        if key is None or (keep is not None and not keep(key)):
            continue
        if record.value is None:
            table.pop(key, None)
        else:
            table[key] = record.value
    return table


class TopicFollower:
    """Reads `topic` from its beginning (`start="beginning"`) or from its end offsets when
    first started (`start="end"`), hands every fetched batch to `apply`, and keeps following
    until cancelled. `loaded` is set once the records present at the first start are applied
    (at once for `start="end"`). A failure (a topic not there yet, a broker restart) is
    logged and retried with backoff; the follower resumes at the positions it had reached, so
    no record is skipped and none applied twice within one `run`."""

    def __init__(
        self,
        client_kwargs: Mapping[str, Any],
        topic: str,
        apply: Callable[[list[Any]], Awaitable[None]],
        *,
        start: Literal["beginning", "end"] = "beginning",
        max_records: int | None = None,
        retry_s: float = 0.5,
        max_retry_s: float = 30.0,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.client_kwargs = client_kwargs
        self.topic = topic
        self.apply = apply
        self.start = start
        self.max_records = max_records
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.consumer_options = consumer_options
        self.loaded = asyncio.Event()
        self._positions: dict[TopicPartition, int] | None = None
        self._backlog: dict[TopicPartition, int] = {}
        self._delay = retry_s

    async def wait_loaded(self, timeout_s: float) -> bool:
        """True once the records present at the start are applied; False on timeout (the
        follower is then not ready: nothing says how much of the backlog is in)."""
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Follow until cancelled."""
        self._delay = self.retry_s
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "following %s failed (%s: %s); retrying in %.1fs",
                    self.topic,
                    type(exc).__name__,
                    exc,
                    self._delay,
                )
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.max_retry_s)

    async def _follow(self) -> None:
        consumer = _consumer(self.client_kwargs, self.consumer_options, False)
        try:
            await consumer.start()
            if self._positions is None:
                counts = await partition_counts(dict(self.client_kwargs), [self.topic])
                if not counts.get(self.topic):
                    raise LookupError(f"topic {self.topic!r} does not exist")
                tps = [TopicPartition(self.topic, p) for p in range(counts[self.topic])]
                consumer.assign(tps)
                ends = await consumer.end_offsets(tps)
                if self.start == "end":
                    positions = dict(ends)
                else:
                    positions = dict(await consumer.beginning_offsets(tps))
                self._backlog = {tp: end for tp, end in ends.items() if positions[tp] < end}
                self._positions = positions
            else:
                consumer.assign(list(self._positions))
            for tp, position in self._positions.items():
                consumer.seek(tp, position)
            self._check_loaded()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                records = [r for rs in batch.values() for r in rs]
                if records:
                    await self.apply(records)
                for tp in batch:
                    self._positions[tp] = await consumer.position(tp)
                if self._backlog:
                    for tp in list(self._backlog):
                        if await consumer.position(tp) >= self._backlog[tp]:
                            del self._backlog[tp]
                    self._check_loaded()
                self._delay = self.retry_s  # the broker answers: the next failure waits little
        finally:
            await consumer.stop()

    def _check_loaded(self) -> None:
        if not self._backlog and not self.loaded.is_set():
            log.info("%s read to its end; following it", self.topic)
            self.loaded.set()
