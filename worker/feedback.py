"""Feedback events (`llm.feedback`) become Langfuse scores on the request's trace.

A small consumer of its own (group `<group>.feedback`): decode, hand to `Tracing.record_feedback`
(which only enqueues; the Langfuse SDK posts from its own thread), commit. An invalid event goes
to the dead-letter topic like an invalid request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import schemas
from worker.deadletter import dead_letter
from worker.kafka_config import KafkaSettings, TopicSettings
from worker.loop import close_quietly
from worker.telemetry import Tracing

log = logging.getLogger(__name__)


async def run_feedback(
    kafka: KafkaSettings,
    topics: TopicSettings,
    tracing: Tracing,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
) -> int:
    """Consume feedback until `stop` is set; returns how many scores were recorded."""
    consumer = AIOKafkaConsumer(
        topics.feedback,
        group_id=f"{kafka.group_id}.feedback",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka.common_kwargs(),
    )
    await consumer.start()
    recorded = 0
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    try:
                        event = schemas.decode(record.value or b"", schemas.Feedback)
                    except schemas.InvalidEvent as exc:
                        await _dead_letter(producer, topics.dlq, record, str(exc))
                        continue
                    tracing.record_feedback(event)
                    recorded += 1
            if batch:
                await consumer.commit()
    finally:
        await close_quietly("the feedback consumer", consumer.stop)
    return recorded


async def _dead_letter(producer: AIOKafkaProducer, dlq: str, record: Any, reason: str) -> None:
    letter = dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=[(k, bytes(v)) for k, v in (record.headers or ())],
        timestamp_ms=record.timestamp,
        error_type="InvalidEvent",
        reason=reason,
    )
    await producer.send_and_wait(dlq, schemas.encode(letter), key=record.key)
    log.warning("invalid feedback event dead-lettered: %s", reason)
