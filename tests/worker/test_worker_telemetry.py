"""The worker's traces end to end: real broker, real SDKs, Langfuse's wire protocol checked on a
local receiver (a real Langfuse server cannot run here)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

import schemas
from schemas.trace import request_key, trace_id_hex
from tests.conftest import TopicFactory
from tests.kafka.test_worker_kafka import _run_until, _topics
from tests.telemetry.conftest import langfuse_config
from tests.worker.support import (
    ROWS,
    read_all,
    request_event,
    worker_config,
)
from worker.app import build
from worker.config.telemetry import TelemetryConfig
from worker.feedback import FeedbackRetry, FeedbackStats, run_feedback
from worker.kafka.topics import ensure_topics
from worker.sim import Simulator
from worker.sim.langfuse import LangfuseReceiver
from worker.telemetry import Tracing
from worker.telemetry.scores import LangfuseScores

pytestmark = pytest.mark.kafka

PRODUCER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{PRODUCER_TRACE}-b7ad6b7169203331-01".encode()


@pytest.fixture
def receiver() -> Any:
    r = LangfuseReceiver().start()
    yield r
    r.stop()


async def test_each_request_is_one_langfuse_trace_with_a_generation_and_scores(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    sim: Simulator,
    receiver: LangfuseReceiver,
) -> None:
    topics = await _topics(new_topic, partitions=2)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    tracing = Tracing(TelemetryConfig(langfuse=langfuse_config(receiver.url)), environ={})
    n = 5
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            event = request_event(ROWS[i], i)
            await producer.send_and_wait(
                topics["requests"],
                schemas.encode(event),
                key=event.request_id.encode(),
                headers=[("traceparent", TRACEPARENT)],
            )
        feedback = schemas.Feedback(
            schema_version=1,
            request_id="req-000001",
            tenant="acme",
            name="correct",
            value=True,
            source="task",
            created_at=datetime.now(UTC),
        )
        await producer.send_and_wait(topics["feedback"], schemas.encode(feedback))
    finally:
        await producer.stop()

    app = build(config, tracing=tracing)
    stop = asyncio.Event()
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= n)
        dlq_producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await dlq_producer.start()
        try:
            assert tracing.config.langfuse is not None
            async with LangfuseScores(tracing.config.langfuse, environ={}) as scores:
                recorded = asyncio.create_task(
                    run_feedback(config.kafka, config.topics, scores, dlq_producer, stop)
                )
                await asyncio.to_thread(receiver.wait_for, lambda r: len(r.scores) >= 1, 30)
                stop.set()
                assert (await recorded).accepted == 1
        finally:
            await dlq_producer.stop()
        tracing.force_flush(10)
        await asyncio.to_thread(
            receiver.wait_for, lambda r: len({s.trace_id for s in r.spans}) >= n, 30
        )
    finally:
        await app.close()

    for i in range(n):
        trace_id = trace_id_hex(request_key("acme", f"req-{i:06d}"))
        spans = {s.name: s for s in receiver.spans if s.trace_id == trace_id}
        root = spans[f"process {topics['requests']}"]
        assert root.kind == 5  # CONSUMER
        assert (PRODUCER_TRACE, "b7ad6b7169203331") in root.links
        assert root.attributes["messaging.destination.name"] == topics["requests"]
        route = spans["route"]
        assert route.parent_span_id == root.span_id
        chosen = route.attributes["llm_router.model"]
        chat = spans[f"chat {chosen}"]
        assert chat.kind == 3  # CLIENT
        assert chat.attributes["gen_ai.request.model"] == chosen
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["langfuse.observation.type"] == "generation"
        assert root.attributes["langfuse.trace.metadata.tenant"] == "acme"  # plain
        assert "langfuse.trace.input" in root.attributes  # the routed prompt
    [score] = receiver.scores
    assert score["traceId"] == trace_id_hex(request_key("acme", "req-000001"))
    assert score["name"] == "correct"


# ---------------------------------------------------------------- feedback is never lost

FAST = FeedbackRetry(initial_s=0.01, max_s=0.05)


def _feedback(i: int) -> schemas.Feedback:
    return schemas.Feedback(
        schema_version=1,
        request_id=f"fb-{i}",
        name="correct",
        value=i % 2 == 0,
        source="task",
        created_at=datetime(2026, 12, 1, 0, 0, i, tzinfo=UTC),
    )


async def _feedback_topics(new_topic: TopicFactory) -> dict[str, str]:
    topics = await _topics(new_topic, partitions=1)
    topics["feedback_dlq"] = f"{topics['requests']}.feedback-dlq"
    return topics


async def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def _feed(
    config: Any, receiver: LangfuseReceiver, until: Any, stats: FeedbackStats
) -> FeedbackStats:
    stop = asyncio.Event()
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers)
    await producer.start()
    try:
        async with LangfuseScores(langfuse_config(receiver.url), environ={}) as scores:
            task = asyncio.create_task(
                run_feedback(
                    config.kafka, config.topics, scores, producer, stop, retry=FAST, stats=stats
                )
            )
            await asyncio.to_thread(receiver.wait_for, until, 30)
            stop.set()
            return await task
    finally:
        await producer.stop()


async def test_retriable_refusals_are_retried_and_the_offset_waits_for_the_score(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, receiver: LangfuseReceiver
) -> None:
    topics = await _feedback_topics(new_topic)
    config = worker_config(kafka_bootstrap, topics, artifact, "http://127.0.0.1:9")
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topics["feedback"], schemas.encode(_feedback(i)))
    finally:
        await producer.stop()
    group = f"{config.kafka.group_id}.feedback"

    # Langfuse is down (503) for the first event: the worker stops while still retrying
    receiver.score_answers = [503] * 1000
    stats = await _feed(config, receiver, lambda r: len(r.refused) >= 3, FeedbackStats())
    assert stats.accepted == 0 and stats.retries >= 3 and stats.answers[503] >= 3
    assert await _committed(kafka_bootstrap, group, topics["feedback"]) is None  # not lost

    # back, after a 429 and a 502: every event becomes exactly one accepted score
    receiver.score_answers = [429, 502]
    stats = await _feed(config, receiver, lambda r: len(r.scores) >= 3, FeedbackStats())
    assert stats.accepted == 3 and stats.retries == 2 and stats.rejected == 0
    assert [s["traceId"] for s in receiver.scores] == [trace_id_hex(f"fb-{i}") for i in range(3)]
    assert await _committed(kafka_bootstrap, group, topics["feedback"]) == 3


async def test_a_refused_score_goes_to_the_feedback_dead_letter_topic_with_the_answer(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, receiver: LangfuseReceiver
) -> None:
    topics = await _feedback_topics(new_topic)
    config = worker_config(kafka_bootstrap, topics, artifact, "http://127.0.0.1:9")
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(2):
            await producer.send_and_wait(
                topics["feedback"], schemas.encode(_feedback(i)), key=f"k{i}".encode()
            )
    finally:
        await producer.stop()

    receiver.score_answers = [400]  # the first is refused, the second accepted
    stats = await _feed(config, receiver, lambda r: len(r.scores) >= 1, FeedbackStats())
    assert stats.rejected == 1 and stats.accepted == 1 and stats.retries == 0
    [record] = await read_all(kafka_bootstrap, topics["feedback_dlq"], expect=1)
    letter = schemas.decode(record.value, schemas.DeadLetter)
    assert letter.error_type == "ScoreRejected"
    assert "Langfuse answered 400" in letter.reason and "scripted answer 400" in letter.reason
    assert letter.source.topic == topics["feedback"] and letter.source.offset == 0
    assert record.key == b"k0"
    headers = dict(record.headers)
    assert headers["traceparent"].decode().split("-")[1] == trace_id_hex("fb-0")
    group = f"{config.kafka.group_id}.feedback"
    assert await _committed(kafka_bootstrap, group, topics["feedback"]) == 2


# ---------------------------------------------------------------- trace context on records


async def test_responses_and_dead_letters_carry_traceparent_even_with_tracing_off(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, sim: Simulator
) -> None:
    topics = await _topics(new_topic, partitions=1)
    config = worker_config(kafka_bootstrap, topics, artifact, sim.base_url)
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(2):
            event = request_event(ROWS[i], i)
            await producer.send_and_wait(
                topics["requests"], schemas.encode(event), key=event.request_id.encode()
            )
        await producer.send_and_wait(topics["requests"], b"{not json", key=b"bad")
    finally:
        await producer.stop()
    app = build(config, tracing=Tracing(TelemetryConfig()))  # nothing exported or recorded
    try:
        await _run_until(app.worker, lambda: app.worker.stats["published"] >= 2)
        await _run_until(app.worker, lambda: app.worker.stats["dead_letters"] >= 1)
    finally:
        await app.close()
    for record in await read_all(kafka_bootstrap, topics["responses"], 2):
        response = schemas.decode(record.value, schemas.RouteResponse)
        version, trace_id, span_id, flags = dict(record.headers)["traceparent"].decode().split("-")
        assert (version, flags) == ("00", "00")  # not sampled: nothing recorded it
        assert (
            trace_id
            == response.trace_id
            == trace_id_hex(request_key(response.tenant, response.request_id))
        )
        assert len(span_id) == 16 and int(span_id, 16) != 0
    [letter] = await read_all(kafka_bootstrap, topics["dlq"], 1)
    assert "traceparent" in dict(letter.headers)


async def test_an_outage_longer_than_max_poll_interval_keeps_the_member_and_sends_each_once(
    kafka_bootstrap: str, new_topic: TopicFactory, artifact: Path, receiver: LangfuseReceiver
) -> None:
    topics = await _feedback_topics(new_topic)
    config = worker_config(
        kafka_bootstrap,
        topics,
        artifact,
        "http://127.0.0.1:9",
        kafka={
            "max_poll_interval_ms": 1500,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
    )
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topics["feedback"], schemas.encode(_feedback(i)))
    finally:
        await producer.stop()
    # Langfuse down for ~4 s (longer than max.poll.interval.ms) at the first event
    receiver.score_answers = [503] * 9
    slow = FeedbackRetry(initial_s=0.5, max_s=0.5)
    stop = asyncio.Event()
    dlq = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await dlq.start()
    try:
        async with LangfuseScores(langfuse_config(receiver.url), environ={}) as scores:
            stats = FeedbackStats()
            task = asyncio.create_task(
                run_feedback(
                    config.kafka, config.topics, scores, dlq, stop, retry=slow, stats=stats
                )
            )
            await asyncio.to_thread(receiver.wait_for, lambda r: len(r.scores) >= 3, 60)
            await asyncio.sleep(2.0)  # time for a redelivery, if the member had been dropped
            stop.set()
            await task
    finally:
        await dlq.stop()
    assert stats.retries == 9
    assert len(receiver.scores) == 3  # each event posted (and accepted) once
    group = f"{config.kafka.group_id}.feedback"
    assert await _committed(kafka_bootstrap, group, topics["feedback"]) == 3


async def test_a_dead_lettered_score_is_replayed_with_llmroute_dlq_replay_once_fixed(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    artifact: Path,
    receiver: LangfuseReceiver,
    tmp_path: Path,
) -> None:
    from worker.__main__ import main

    topics = await _feedback_topics(new_topic)
    config = worker_config(kafka_bootstrap, topics, artifact, "http://127.0.0.1:9")
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics["feedback"], schemas.encode(_feedback(0)))
        await producer.send_and_wait(topics["feedback"], schemas.encode(_feedback(1)))
    finally:
        await producer.stop()
    receiver.score_answers = [401]  # e.g. a wrong key: not retriable, dead-lettered
    stats = await _feed(config, receiver, lambda r: len(r.scores) >= 1, FeedbackStats())
    assert stats.rejected == 1 and [s["traceId"] for s in receiver.scores] == [trace_id_hex("fb-1")]
    ops = tmp_path / "ops.toml"
    ops.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\ngroup_id = "ops"\n'
        f'[topics]\nfeedback = "{topics["feedback"]}"\n'
    )
    argv = ["dlq", "replay", "--config", str(ops), "--from-topic", topics["feedback_dlq"]]
    assert await asyncio.to_thread(main, [*argv, "--quiet"]) == 0
    # fixed: the replayed event becomes its score; nothing was lost
    stats = await _feed(config, receiver, lambda r: len(r.scores) >= 2, FeedbackStats())
    assert stats.accepted == 1
    assert sorted(s["traceId"] for s in receiver.scores) == sorted(
        trace_id_hex(f"fb-{i}") for i in range(2)
    )
