"""Feedback events (`llm.feedback`) become Langfuse scores on the request's trace; none is lost.

A small consumer of its own (group `<group>.feedback`) takes each record in turn:

    invalid event                 -> the request dead-letter topic (like an invalid request)
    score accepted                -> done
    ScoreUnavailable (network,    -> retried with exponential backoff (`FeedbackRetry`, honouring
      429, 5xx)                      Retry-After) until accepted or the worker stops; the record's
                                     offset is not committed meanwhile, so a restart sends it again
    ScoreRejected (other 4xx)     -> the feedback dead-letter topic (`topics.feedback_dlq`), whose
                                     record carries the server's answer as its reason

Offsets are committed per partition up to the last record that is done, after each fetched batch.
A redelivered event upserts the same score (the score id is derived from the event), so sending
twice is harmless. With Langfuse not configured, events are read and counted as skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

import schemas
from worker.config.kafka import KafkaSettings, TopicSettings
from worker.errors import InvalidRecord
from worker.kafka.deadletter import dead_letter
from worker.kafka.member import close_quietly
from worker.telemetry.propagation import context_headers
from worker.telemetry.scores import LangfuseScores, ScoreRejected, ScoreUnavailable, score_trace_id

log = logging.getLogger(__name__)

__all__ = ["FeedbackRetry", "FeedbackStats", "run_feedback"]


@dataclass(frozen=True, kw_only=True)
class FeedbackRetry:
    """Backoff between attempts at a score the server could not take (doubling, capped)."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The wait before attempt `attempt + 1` (attempt counts from 1)."""
        backoff: float = min(self.initial_s * 2.0 ** (attempt - 1), self.max_s)
        if retry_after_s is not None:
            return float(min(max(backoff, retry_after_s), self.max_s))
        return backoff


@dataclass
class FeedbackStats:
    accepted: int = 0
    retries: int = 0
    rejected: int = 0  # refused by the server: on the feedback dead-letter topic
    invalid: int = 0  # not a feedback event: on the request dead-letter topic
    skipped: int = 0  # Langfuse not configured
    answers: dict[int, int] = field(default_factory=dict)  # HTTP status -> count, refusals only


async def run_feedback(
    kafka: KafkaSettings,
    topics: TopicSettings,
    scores: LangfuseScores | None,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
    *,
    retry: FeedbackRetry | None = None,
    stats: FeedbackStats | None = None,
) -> FeedbackStats:
    """Consume feedback until `stop` is set; returns what became of the events."""
    retry = retry or FeedbackRetry()
    stats = stats if stats is not None else FeedbackStats()
    consumer = AIOKafkaConsumer(
        topics.feedback,
        group_id=f"{kafka.group_id}.feedback",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        **kafka.common_kwargs(),
    )
    try:
        await consumer.start()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            done: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    if not await _handle(record, topics, scores, producer, stop, retry, stats):
                        break  # stopping with this record not done: its offset stays
                    done[tp] = record.offset
                if stop.is_set():
                    break
            if done:
                await _commit(consumer, done)
    finally:
        await close_quietly("the feedback consumer", consumer.stop)
    return stats


async def _handle(
    record: Any,
    topics: TopicSettings,
    scores: LangfuseScores | None,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
    retry: FeedbackRetry,
    stats: FeedbackStats,
) -> bool:
    """Deliver one record; False if the worker stops before it is done."""
    try:
        event = schemas.decode(record.value or b"", schemas.Feedback)
    except schemas.InvalidEvent as exc:
        await _dead_letter(producer, topics.dlq, record, InvalidRecord.code, str(exc), None)
        stats.invalid += 1
        return True
    if scores is None:
        stats.skipped += 1
        return True
    attempt = 0
    while True:
        attempt += 1
        try:
            await scores.post(event)
        except ScoreUnavailable as exc:
            if exc.status is not None:
                stats.answers[exc.status] = stats.answers.get(exc.status, 0) + 1
            delay = retry.delay_s(attempt, exc.retry_after_s)
            log.warning("score not taken (attempt %d), retrying in %.1fs: %s", attempt, delay, exc)
            stats.retries += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return False
            continue
        except ScoreRejected as exc:
            if exc.status is not None:
                stats.answers[exc.status] = stats.answers.get(exc.status, 0) + 1
            await _dead_letter(
                producer,
                topics.feedback_dlq,
                record,
                exc.code,
                str(exc),
                score_trace_id(event),
            )
            stats.rejected += 1
            return True
        stats.accepted += 1
        return True


async def _commit(consumer: AIOKafkaConsumer, done: dict[TopicPartition, int]) -> None:
    offsets = {tp: OffsetAndMetadata(offset + 1, "") for tp, offset in done.items()}
    try:
        await consumer.commit(offsets)
    except CommitFailedError as exc:
        # the group moved on (e.g. a long Langfuse outage outlasted max.poll.interval.ms): the
        # records come again to whoever owns them now, and their scores upsert
        log.warning("feedback commit failed, records will be redelivered: %s", exc)


async def _dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    record: Any,
    error_type: schemas.ErrorCode,
    reason: str,
    trace_id: str | None,
) -> None:
    headers = [(k, bytes(v)) for k, v in (record.headers or ())]
    letter = dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=headers,
        timestamp_ms=record.timestamp,
        error_type=error_type,
        reason=reason,
    )
    await producer.send_and_wait(
        topic,
        schemas.encode(letter),
        key=record.key,
        headers=context_headers(trace_id),
    )
    log.warning("feedback event dead-lettered to %s (%s): %s", topic, error_type, reason)
