"""From a fetched record to what the member works on: the request, or why it goes to the
dead-letter topic (error type, reason), and where it came from (`RecordInfo`).

A record never stops the poll loop: whatever its bytes, `decode` returns one or the other.
"""

from __future__ import annotations

import re
from typing import Any

import schemas
from worker.config.kafka import LoopSettings, TopicSettings
from worker.errors import InvalidRecord, OversizedRecord, UnreadableRecord
from worker.kafka.records import RecordInfo

Decoded = schemas.RouteRequest | tuple[schemas.ErrorCode, str]  # the request, or (code, reason)

# Kafka's topic-name grammar (`Topic.validate`): 1-249 of [a-zA-Z0-9._-], not "." or ".."
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def record_info(record: Any) -> RecordInfo:
    """Where a consumer record (aiokafka's, or one read raw: `worker.kafka.raw`) came from."""
    return RecordInfo(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        headers=[(k, b"" if v is None else bytes(v)) for k, v in record.headers]
        if record.headers
        else [],
        timestamp_ms=record.timestamp,
    )


def decode(record: Any, settings: LoopSettings, topics: TopicSettings) -> Decoded:
    """The request, or the dead-letter reason (error type, message)."""
    problem = getattr(record, "problem", None)  # set on records read raw (worker.kafka.raw)
    if problem is not None:
        return (UnreadableRecord.code, problem)
    value: bytes = record.value if record.value is not None else b""
    if len(value) > settings.max_request_bytes:
        return (
            OversizedRecord.code,
            f"record of {len(value)} bytes exceeds max_request_bytes {settings.max_request_bytes}",
        )
    try:
        request = schemas.decode(value, schemas.RouteRequest)
    except schemas.InvalidEvent as exc:
        return (InvalidRecord.code, str(exc))
    except Exception as exc:  # never let one record stop the poll loop
        return (InvalidRecord.code, f"{type(exc).__name__} while decoding: {exc}")
    if request.reply_topic is not None:
        refused = refused_reply_topic(request.reply_topic, settings, topics)
        if refused is not None:
            return (InvalidRecord.code, f"$.reply_topic: {refused}")
    return request


def refused_reply_topic(topic: str, settings: LoopSettings, topics: TopicSettings) -> str | None:
    """Why responses cannot go to `topic` (None: they can): Kafka's topic-name grammar,
    no internal (`__`) topics, none of the worker's own topics but the responses topic, and
    the configured pattern."""
    if topic in (".", "..") or not _TOPIC_NAME.fullmatch(topic):
        return f"{topic!r} is not a valid Kafka topic name"
    if topic.startswith("__"):
        return f"{topic!r} is an internal topic"
    t = topics
    own = {
        t.requests,
        t.decisions,
        t.feedback,
        t.dlq,
        t.batch_jobs,
        t.control,
        t.shadow,
        t.cache,
        t.done,
    }
    if topic in own:
        return f"{topic!r} is one of the worker's own topics"
    pattern = settings.reply_topic_pattern
    if pattern is not None and not re.fullmatch(pattern, topic):
        return f"{topic!r} does not match the allowed reply topics {pattern!r}"
    return None
