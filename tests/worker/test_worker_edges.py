"""Edges of the member's life: stopping mid-rebalance or mid-state-load, hostile records (codecs,
undecodable headers, unpublishable results), and the paid model call made once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import TopicFactory
from tests.worker.support import poll_until, worker_config
from tests.worker.test_worker_kafka import _topics
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
