"""The worker on a real broker, with the real pipeline and the provider simulator over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import schemas
from tests.conftest import TopicFactory
from tests.worker.support import (
    ROWS,
    poll_until,
    produce,
    read_all,
    request_event,
    worker_config,
)
from worker.app import build
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator
from worker.sim.harness import topic_names

pytestmark = pytest.mark.kafka


async def _topics(new_topic: TopicFactory, partitions: int = 3) -> dict[str, str]:
    requests = await new_topic("requests", partitions=partitions)
    return topic_names(requests)


async def _run_until(worker: Any, predicate: Any, timeout_s: float = 90.0) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await poll_until(lambda: predicate() or task.done(), timeout_s)
        if task.done():
            task.result()  # a worker that died says why
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)


async def test_happy_path_invalid_and_oversized_records(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics(new_topic)
    config = worker_config(
        kafka_bootstrap, topics, artifact, sim.base_url, loop={"max_request_bytes": 20_000}
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 120
    values: list[tuple[bytes | None, bytes]] = [
        (f"req-{i:06d}".encode(), schemas.encode(request_event(ROWS[i], i))) for i in range(n)
    ]
    bad = [
        (b"bad-1", b"{not json"),
        (
            b"bad-2",
            json.dumps(
                {
                    "schema_version": 1,
                    "request_id": "x",
                    "tenant": "t",
                    "messages": [{"role": "usr", "content": "hi"}],
                    "created_at": "2026-11-27T10:00:00Z",
                }
            ).encode(),
        ),
        (b"big", schemas.encode(request_event(ROWS[0], 999_999, metadata={"pad": "x" * 30_000}))),
    ]
    await produce(kafka_bootstrap, topics["requests"], values + bad)

    app = build(config)
    try:
        await _run_until(
            app.worker,
            lambda: (
                app.worker.stats["published"] + app.worker.stats["dead_letters"] >= n + len(bad)
            ),
        )
    finally:
        await app.close()

    responses = [
        schemas.decode(r.value, schemas.RouteResponse)
        for r in await read_all(kafka_bootstrap, topics["responses"], n)
    ]
    counts = Counter(r.request_id for r in responses)
    assert set(counts) == {f"req-{i:06d}" for i in range(n)}
    assert max(counts.values()) == 1
    for r in responses:
        assert r.status == "ok", r.error
        assert r.model in (
            r.decision.model if r.decision else None,
            *(c.model for c in (r.decision.candidates if r.decision else [])),
        )
        assert r.cost_usd > 0 and r.usage.output_tokens > 0
        assert r.trace_id is not None and len(r.trace_id) == 32
        assert r.decision is not None and r.decision.reason
    models = Counter(r.model for r in responses)
    assert len(models) == 2, models  # both the strong and the weak model were used

    decisions = await read_all(kafka_bootstrap, topics["decisions"], n)
    assert {schemas.decode(d.value, schemas.RoutingDecision).request_id for d in decisions} == set(
        counts
    )

    letters = [
        schemas.decode(r.value, schemas.DeadLetter)
        for r in await read_all(kafka_bootstrap, topics["dlq"], 3)
    ]
    by_key = {base64.b64decode(d.original_key_b64 or ""): d for d in letters}
    assert set(by_key) == {b"bad-1", b"bad-2", b"big"}
    assert base64.b64decode(by_key[b"bad-1"].original_value_b64) == b"{not json"
    assert by_key[b"bad-1"].error_type == "InvalidEvent"
    assert "$.messages[0].role" in by_key[b"bad-2"].reason
    assert by_key[b"big"].error_type == "OversizedEvent"
    assert by_key[b"big"].source.topic == topics["requests"]

    # everything finished was committed: the group's position is the end of every partition
    check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=config.kafka.group_id)
    await check.start()
    try:
        tps = [TopicPartition(topics["requests"], p) for p in range(3)]
        ends = await check.end_offsets(tps)
        for tp in tps:
            assert await check.committed(tp) == ends[tp]
    finally:
        await check.stop()


async def test_redelivered_request_is_not_answered_twice_after_restart(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    first = [(f"req-{i:06d}".encode(), schemas.encode(request_event(ROWS[i], i))) for i in range(5)]
    await produce(kafka_bootstrap, topics["requests"], first)
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= 5)
    finally:
        await app.close()
    # the producer sends the same requests again (a retry on its side); a new member answers none
    await produce(kafka_bootstrap, topics["requests"], first)
    calls_before = sim.stats.to_json()
    app2 = build(config)
    try:
        await _run_until(app2.worker, lambda: app2.worker.stats["duplicates"] >= 5)
    finally:
        await app2.close()
    assert app2.worker.stats["published"] == 0
    assert sim.stats.to_json() == calls_before
    responses = await read_all(kafka_bootstrap, topics["responses"], 5)
    assert len(responses) == 5


async def test_cascade_escalates_weak_answers_and_replies_go_to_reply_topic(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    from worker.config.models import STRONG_MODEL, WEAK_MODEL

    topics = await _topics(new_topic, partitions=1)
    reply = f"{topics['requests']}.replies"
    # threshold 1.0: the router never asks for the strong model, so every request takes the
    # cascade; a 0.99 bar fails any answer whose token log-probs are below ~0 on average
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        sim.base_url,
        policies={"default": {"kind": "cascade", "threshold": 1.0, "cascade_threshold": 0.99}},
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    n = 10
    values: list[tuple[bytes | None, bytes]] = []
    for i in range(2 * n):
        params = schemas.GenerationParams(max_tokens=64, logprobs=i < n)
        event = request_event(ROWS[i], i, params=params, reply_topic=reply)
        values.append((event.request_id.encode(), schemas.encode(event)))
    await produce(kafka_bootstrap, topics["requests"], values)
    app = build(config)
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= 2 * n)
    finally:
        await app.close()
    replies = {
        r.request_id: r
        for r in (
            schemas.decode(v.value, schemas.RouteResponse)
            for v in await read_all(kafka_bootstrap, reply, 2 * n)
        )
    }
    assert len(replies) == 2 * n
    assert await read_all(kafka_bootstrap, topics["responses"], 0, timeout_s=1) == []
    for i in range(2 * n):
        r = replies[f"req-{i:06d}"]
        assert r.status == "ok" and r.decision is not None
        assert r.decision.model == WEAK_MODEL
        if i < n:  # log-probs came back: the scorer saw doubt and escalated
            assert [a.status for a in r.attempts] == ["escalated", "ok"]
            assert r.model == STRONG_MODEL and r.attempts[-1].model == STRONG_MODEL
        else:  # nothing to doubt: the cheap answer stands
            assert [(a.model, a.status) for a in r.attempts] == [(WEAK_MODEL, "ok")]
            assert r.model == WEAK_MODEL
