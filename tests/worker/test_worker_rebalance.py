"""A rebalance that gives a member its partitions back (the classic protocol's eager assignors
revoke every partition on every rebalance) must not repeat the model calls in flight."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from tests.conftest import TopicFactory
from tests.kafka.test_worker_edges import _committed_to_end, _request_values
from tests.kafka.test_worker_kafka import _topics
from tests.worker.support import poll_until, produce, read_all, worker_config
from worker.app import build
from worker.kafka.member import Worker
from worker.kafka.observer import NullObserver
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator
from worker.sim.config import Latency

pytestmark = pytest.mark.kafka


class _Rebalances(NullObserver):
    """Records how many requests were in flight each time a rebalance began."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.in_flight_at_revoke: list[int] = []

    def ready(self, ready: bool, reason: str) -> None:
        if not ready and reason == "rebalancing" and self.worker is not None:
            self.in_flight_at_revoke.append(self.worker.tracker.in_flight())


async def test_partitions_that_come_back_after_a_rebalance_repeat_no_model_call(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    """Model calls outlast the revoke drain; another consumer joins the group (subscribed to
    another topic, so every partition comes back to the member). The in-flight requests were
    cancelled at the revoke and redone from the committed offset: every model call twice. Now
    they are held through the rebalance and go on: one call and one response each."""
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(
        kafka_bootstrap, topics, artifact, sim.base_url, loop={"revoke_drain_timeout_s": 0.2}
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    sim.config = dataclasses.replace(sim.config, latency=Latency(ms=4000))
    n = 12
    values = list(_request_values(range(n)))
    app = build(config)
    observer = _Rebalances()
    worker = Worker(config.kafka, config.topics, config.loop, app.pipeline, observer, app.tracing)
    observer.worker = worker
    before = sim.stats.requests
    other_topic = await new_topic("other")
    other = AIOKafkaConsumer(
        other_topic, group_id=config.kafka.group_id, bootstrap_servers=kafka_bootstrap
    )
    task = asyncio.create_task(worker.run())
    try:
        assert await poll_until(lambda: worker.ready.is_set(), 60)
        await produce(kafka_bootstrap, topics["requests"], values)
        assert await poll_until(lambda: sim.stats.requests - before >= n, 60)
        await other.start()  # joins the group: a rebalance while every call is in flight
        await other.getmany(timeout_ms=3000)
        assert await poll_until(lambda: worker.stats["published"] >= n or task.done(), 60), (
            worker.stats
        )
        await asyncio.sleep(1.0)  # time for a repeat to show
    finally:
        await other.stop()
        worker.stop()
        await asyncio.wait_for(task, timeout=60)
        await app.close()
    assert max(observer.in_flight_at_revoke, default=0) == n  # the rebalance met them all
    assert sim.stats.requests - before == n
    responses = await read_all(kafka_bootstrap, topics["responses"], n)
    assert Counter(r.key for r in responses) == Counter({k: 1 for k, _ in values})
    assert await _committed_to_end(kafka_bootstrap, config.kafka.group_id, topics["requests"], 2)
