"""A batch-job answer that cannot be published as asked ends like an interactive one: after
the bounded attempts, as a dead letter; it is never retried forever."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import schemas
from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _topics
from tests.kafka_support import create_topics
from tests.worker.support import ROWS, poll_until, produce, read_all, request_event, worker_config
from worker.app import build
from worker.kafka.topics import ensure_topics
from worker.sim import SimConfig, Simulator

pytestmark = pytest.mark.kafka


@pytest.fixture
async def batch_sim(sim_keys: None) -> AsyncIterator[Simulator]:
    from tests.worker.support import replay_dataset

    server = await Simulator(SimConfig(seed=5), replay_dataset()).start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_batch_answer_that_cannot_be_published_is_dead_lettered(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, batch_sim: Simulator
) -> None:
    """Batch requests whose reply topic Kafka refuses (its name collides with an existing
    topic's) were answered by publishing forever: the job never ended and the member retried
    every second until it stopped. They now end as dead letters after the bounded attempts;
    the job's other answers go out once."""
    topics = await _topics(new_topic, partitions=1)
    taken = f"{topics['requests']}.taken"
    await create_topics(kafka_bootstrap, [taken])
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        batch_sim.base_url,
        batch={"flush_age_s": 0.5, "poll_initial_s": 0.2, "poll_max_s": 0.5},
        loop={"reply_publish_timeout_s": 2.0},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    batch = schemas.RoutingOptions(mode="batch")
    good = [request_event(ROWS[i], i, routing=batch) for i in range(4)]
    bad = [
        request_event(
            ROWS[i], i, routing=batch, request_id=f"bad-{i}", reply_topic=taken.replace(".", "_")
        )
        for i in range(4, 6)
    ]
    await produce(
        kafka_bootstrap,
        topics["requests"],
        [(e.request_id.encode(), schemas.encode(e)) for e in good + bad],
    )
    app = build(config)
    task = asyncio.create_task(app.worker.run())
    try:
        assert await poll_until(
            lambda: app.worker.stats["dead_letters"] >= len(bad) or task.done(), 120
        ), app.worker.stats
    finally:
        app.worker.stop()
        await asyncio.wait_for(task, timeout=90)
        await app.close()
    responses = await read_all(kafka_bootstrap, topics["responses"], len(good))
    assert sorted(r.key for r in responses) == sorted(e.request_id.encode() for e in good)
    letters = [
        schemas.decode(r.value, schemas.DeadLetter)
        for r in await read_all(kafka_bootstrap, topics["dlq"], len(bad))
    ]
    assert sorted(base64.b64decode(d.original_key_b64 or b"") for d in letters) == [
        b"bad-4",
        b"bad-5",
    ]
    assert {d.error_type for d in letters} == {"Unpublishable"}
