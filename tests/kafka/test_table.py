"""The topic-table primitive (worker.kafka.table) on a real broker: a read reaches the end
offsets or raises and hands back nothing; a follower picks up later writes and tombstones and
resumes where it was after a failure."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import TopicFactory
from tests.worker.support import poll_until
from worker.kafka.table import TopicFollower, TopicNotReady, latest, read_to_end, scan

pytestmark = pytest.mark.kafka

# every fetch brings a few records: a read of a few hundred takes many fetches
SMALL_FETCHES = {"max_partition_fetch_bytes": 2048}


async def _send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        acks = [await producer.send(topic, v, key=k, partition=p) for k, v, p in records]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _jumping_clock(step_s: float) -> Any:
    """A clock that moves `step_s` on every reading: every fetch looks like a stall."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


async def test_a_read_reaches_the_end_of_every_partition(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("table", partitions=3)
    await _send(kafka_bootstrap, topic, [(b"k%d" % i, b"v%d" % i, i % 3) for i in range(600)])
    kwargs = {"bootstrap_servers": kafka_bootstrap}
    records = await read_to_end(kwargs, topic, consumer_options=SMALL_FETCHES)
    assert sorted(r.value for r in records) == sorted(b"v%d" % i for i in range(600))
    one = await read_to_end(kwargs, topic, partitions=[1])
    assert {r.partition for r in one} == {1} and len(one) == 200
    # a window: the last 10 records of each partition
    tail = await read_to_end(kwargs, topic, window=lambda b: (b.end - 10, b.end))
    assert len(tail) == 30 and all(r.offset >= 190 for r in tail)
    assert await read_to_end(kwargs, await new_topic("empty", partitions=2)) == []
    assert await read_to_end(kwargs, "no-such-topic-table-test") == []


async def test_a_read_without_progress_raises_and_hands_back_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("table", partitions=1)
    await _send(kafka_bootstrap, topic, [(b"k%d" % i, b"x" * 100, 0) for i in range(500)])
    kwargs = {"bootstrap_servers": kafka_bootstrap}
    got: list[Any] = []
    with pytest.raises(TopicNotReady):
        got = await read_to_end(
            kwargs, topic, timeout_s=5, clock=_jumping_clock(10), consumer_options=SMALL_FETCHES
        )
    assert got == []
    # scan hands out what it read before the stall, then raises: for tools that keep no table
    seen = 0
    with pytest.raises(TopicNotReady):
        async for batch in scan(
            kwargs, topic, timeout_s=5, clock=_jumping_clock(10), consumer_options=SMALL_FETCHES
        ):
            seen += len(batch)
    assert seen < 500
    # the same read on a clock that does not jump reaches the end
    assert len(await read_to_end(kwargs, topic, consumer_options=SMALL_FETCHES)) == 500


async def test_a_committed_only_read_skips_aborted_and_open_transactions(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("table", partitions=1)
    kwargs = {"bootstrap_servers": kafka_bootstrap}
    done = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-a")
    still_open = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-b")
    await done.start()
    await still_open.start()
    try:
        async with done.transaction():
            await done.send_and_wait(topic, b"committed", partition=0)
        await done.begin_transaction()
        await done.send_and_wait(topic, b"aborted", partition=0)
        await done.abort_transaction()
        await still_open.begin_transaction()
        await still_open.send_and_wait(topic, b"open", partition=0)
        # the open transaction does not stop the read: it ends at the last stable offset
        committed = await read_to_end(kwargs, topic, committed_only=True, timeout_s=10)
        assert [r.value for r in committed] == [b"committed"]
        everything = await read_to_end(kwargs, topic, timeout_s=10)
        assert sorted(r.value for r in everything) == [b"aborted", b"committed", b"open"]
        await still_open.abort_transaction()
    finally:
        await done.stop()
        await still_open.stop()


async def test_latest_of_a_compacted_topic_drops_tombstoned_keys(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("table", partitions=2, **{"cleanup.policy": "compact"})
    await _send(
        kafka_bootstrap,
        topic,
        [(b"a", b"1", 0), (b"b", b"1", 1), (b"a", b"2", 0), (b"b", None, 1), (b"c", b"1", 1)],
    )
    records = await read_to_end({"bootstrap_servers": kafka_bootstrap}, topic)
    assert latest(records) == {b"a": b"2", b"c": b"1"}
    assert latest(records, keep=lambda k: k != b"c") == {b"a": b"2"}


async def test_a_follower_loads_the_backlog_then_picks_up_later_writes(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("follow", partitions=2, **{"cleanup.policy": "compact"})
    await _send(kafka_bootstrap, topic, [(b"k%d" % i, b"old", i % 2) for i in range(300)])
    kwargs = {"bootstrap_servers": kafka_bootstrap}
    table: dict[bytes, bytes] = {}
    from_end: list[Any] = []

    async def apply(records: list[Any]) -> None:
        table.update(latest(records))
        for r in records:
            if r.value is None:
                table.pop(r.key, None)

    async def keep(records: list[Any]) -> None:
        from_end.extend(records)

    follower = TopicFollower(kwargs, topic, apply, consumer_options=SMALL_FETCHES)
    tail = TopicFollower(kwargs, topic, keep, start="end")
    tasks = [asyncio.create_task(follower.run()), asyncio.create_task(tail.run())]
    try:
        assert await follower.wait_loaded(60)
        assert len(table) == 300  # the whole backlog, not a part
        assert await tail.wait_loaded(60)
        await _send(kafka_bootstrap, topic, [(b"k1", None, 1), (b"new", b"v", 0)])
        assert await poll_until(lambda: b"new" in table and b"k1" not in table, 30)
        assert await poll_until(lambda: len(from_end) == 2, 30)
        assert {r.key for r in from_end} == {b"k1", b"new"}  # nothing of the backlog
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_follower_resumes_where_it_was_after_a_failure(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("follow", partitions=1)
    await _send(kafka_bootstrap, topic, [(b"k%d" % i, b"%d" % i, 0) for i in range(50)])
    applied: list[int] = []
    failures = 0

    async def apply(records: list[Any]) -> None:
        nonlocal failures
        if failures == 0 and len(applied) >= 10:
            failures += 1
            raise RuntimeError("the table's owner failed once")
        applied.extend(int(r.value) for r in records)

    follower = TopicFollower(
        {"bootstrap_servers": kafka_bootstrap},
        topic,
        apply,
        max_records=10,
        retry_s=0.05,
    )
    task = asyncio.create_task(follower.run())
    try:
        assert await follower.wait_loaded(60)
        await _send(kafka_bootstrap, topic, [(b"late", b"50", 0)])
        assert await poll_until(lambda: len(applied) >= 51, 30)
        assert failures == 1
        assert applied == list(range(51))  # nothing skipped, nothing twice
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
