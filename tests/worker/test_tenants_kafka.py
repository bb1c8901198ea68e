"""Two tenants on one request topic and one consumer group, on a real broker (issue 13): the same
request id used by two tenants is two requests; neither suppresses, merges or cross-wires the
other's, before and after a restart of the member."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

import schemas
from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _run_until, _topics
from tests.worker.support import ROWS, poll_until, produce, read_all, request_event, worker_config
from worker.app import build
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator

pytestmark = pytest.mark.kafka


def _values(tenant: str, ids: range) -> list[tuple[bytes | None, bytes]]:
    return [
        (
            f"r-{i}".encode(),
            schemas.encode(request_event(ROWS[i], i, request_id=f"r-{i}", tenant=tenant)),
        )
        for i in ids
    ]


async def test_one_tenant_never_silences_another_with_the_same_request_id(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    await produce(kafka_bootstrap, topics["requests"], _values("alpha", range(5)))
    app = build(config)
    task = asyncio.create_task(app.worker.run())
    try:
        assert await poll_until(lambda: app.worker.stats["published"] >= 5, 60)
        # beta uses the ids alpha used, after alpha's answers are out
        await produce(kafka_bootstrap, topics["requests"], _values("beta", range(5)))
        await poll_until(
            lambda: app.worker.stats["published"] + app.worker.stats["duplicates"] >= 10, 60
        )
    finally:
        app.worker.stop()
        await asyncio.wait_for(task, timeout=60)
        await app.close()
    assert app.worker.stats["duplicates"] == 0
    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], 10)
    ]
    assert Counter((r.tenant, r.request_id) for r in responses) == {
        (t, f"r-{i}"): 1 for t in ("alpha", "beta") for i in range(5)
    }
    # the same id of two tenants makes two traces
    traces = {(r.tenant, r.request_id): r.trace_id for r in responses}
    assert traces[("alpha", "r-0")] != traces[("beta", "r-0")]

    # after a restart (dedupe memory read back from the done topic): a third tenant's r-0..r-4
    # are answered, the first two tenants' repeats are not
    await produce(kafka_bootstrap, topics["requests"], _values("gamma", range(5)))
    await produce(kafka_bootstrap, topics["requests"], _values("alpha", range(5)))
    app2 = build(config)
    try:
        await _run_until(
            app2.worker,
            lambda: app2.worker.stats["published"] >= 5 and app2.worker.stats["duplicates"] >= 5,
            60,
        )
    finally:
        await app2.close()
    assert (app2.worker.stats["published"], app2.worker.stats["duplicates"]) == (5, 5)
    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], 15)
    ]
    assert Counter(r.tenant for r in responses) == {"alpha": 5, "beta": 5, "gamma": 5}
