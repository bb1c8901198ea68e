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
from tests.conftest import TopicFactory
from tests.telemetry.conftest import langfuse_config
from tests.telemetry.receiver import LangfuseReceiver
from tests.worker.support import (
    ROWS,
    request_event,
    worker_config,
)
from tests.worker.test_worker_kafka import _run_until, _topics
from worker.app import build
from worker.feedback import run_feedback
from worker.sim import Simulator
from worker.telemetry import TelemetryConfig, Tracing, derive_trace_id_hex
from worker.topics import ensure_topics

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
                topics["requests"], schemas.encode(event), key=event.request_id.encode(),
                headers=[("traceparent", TRACEPARENT)],
            )  # fmt: skip
        feedback = schemas.Feedback(
            schema_version=1, request_id="req-000001", name="correct", value=True,
            source="task", created_at=datetime.now(UTC),
        )  # fmt: skip
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
            recorded = asyncio.create_task(
                run_feedback(config.kafka, config.topics, tracing, dlq_producer, stop)
            )
            await asyncio.to_thread(receiver.wait_for, lambda r: len(r.scores) >= 1, 30)
            stop.set()
            assert await recorded == 1
        finally:
            await dlq_producer.stop()
        tracing.force_flush(10)
        await asyncio.to_thread(
            receiver.wait_for, lambda r: len({s.trace_id for s in r.spans}) >= n, 30
        )
    finally:
        await app.close()

    for i in range(n):
        trace_id = derive_trace_id_hex(f"req-{i:06d}")
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
    [score] = receiver.scores
    assert score["traceId"] == derive_trace_id_hex("req-000001")
    assert score["name"] == "correct"
