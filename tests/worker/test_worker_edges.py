"""Edges of the member's life: stopping mid-rebalance or mid-state-load, hostile records (codecs,
undecodable headers, unpublishable results), and the paid model call made once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import schemas
from tests.conftest import TopicFactory
from tests.kafka_support import java_produce
from tests.worker.support import ROWS, poll_until, read_all, request_event, worker_config
from tests.worker.test_worker_kafka import _run_until, _topics
from worker.app import build
from worker.dedupe import marker
from worker.sim import Simulator
from worker.topics import ensure_topics

pytestmark = pytest.mark.kafka


async def _fill_done_topic(bootstrap: str, topic: str, n: int) -> None:
    """`n` dedupe markers of source partition 0: a state load that takes a while to read."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    try:
        acks = [
            await producer.send(topic, marker(0, i), key=b"old-%08d" % i, partition=0)
            for i in range(n)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def test_stop_during_the_assignment_state_load_returns_cleanly(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """SIGTERM while the rebalance callback loads the partition's dedupe markers: the member
    stops without an exception (it was a CancelledError out of `consumer.stop()`)."""
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(
        kafka_bootstrap, topics, artifact, sim.base_url, loop={"dedupe_window": 400_000}
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    await _fill_done_topic(kafka_bootstrap, topics["done"], 150_000)
    app = build(config)
    worker = app.worker
    task = asyncio.create_task(worker.run())
    try:
        loading = await poll_until(lambda: bool(worker._answered) or task.done(), 60, 0.01)
        assert loading and not task.done()
        assert not worker._answered[0].done(), "the load finished before the stop: too small"
        worker.stop()
        done, _ = await asyncio.wait([task], timeout=60)
        assert done, "the member did not stop"
        assert not task.cancelled()
        assert task.exception() is None, repr(task.exception())
    finally:
        if not task.done():
            task.cancel()
        await app.close()


def _request_values(ids: range, prefix: str = "req") -> list[tuple[bytes, bytes]]:
    return [
        (
            f"{prefix}-{i:06d}".encode(),
            schemas.encode(request_event(ROWS[i % len(ROWS)], i, request_id=f"{prefix}-{i:06d}")),
        )
        for i in ids
    ]


async def _committed_to_end(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    check = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await check.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await check.end_offsets(tps)
        committed = [await check.committed(tp) for tp in tps]
        return committed == [ends[tp] for tp in tps]
    finally:
        await check.stop()


async def test_every_kafka_codec_is_decoded(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Records from Kafka's Java producer with each compression.type are answered (lz4, snappy
    and zstd crashed the member: no codec library)."""
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    per = 6
    values = [
        (codec, key, value)
        for c, codec in enumerate(codecs)
        for key, value in _request_values(range(c * per, (c + 1) * per), prefix=codec)
    ]
    await asyncio.to_thread(java_produce, kafka_bootstrap, topics["requests"], values)
    n = per * len(codecs)
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= n, timeout_s=120)
    finally:
        await app.close()
    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], n)
    ]
    counts = Counter(r.request_id for r in responses)
    assert set(counts) == {f"{c}-{i:06d}" for j, c in enumerate(codecs)
                           for i in range(j * per, (j + 1) * per)}  # fmt: skip
    assert max(counts.values()) == 1
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 2)
