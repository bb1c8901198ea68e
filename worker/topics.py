"""Create the worker's output topics when they are missing (never alters existing ones)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.kafka_config import TopicSettings

log = logging.getLogger(__name__)


async def ensure_topics(
    client_kwargs: dict[str, Any], topics: TopicSettings, replication_factor: int
) -> dict[str, int]:
    """Make sure every output topic exists; returns each topic's partition count.

    New topics get as many partitions as the request topic (at least 1); the dedupe log, the
    batch-job topic and the semantic-cache topic are compacted.
    """
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        existing = await _partitions(admin)
        partitions = max(1, existing.get(topics.requests, 0))
        compacted = {topics.done, topics.batch_jobs, topics.cache}
        wanted = [
            topics.requests,
            topics.responses,
            topics.decisions,
            topics.feedback,
            topics.dlq,
            topics.feedback_dlq,
            topics.done,
            topics.batch_jobs,
            topics.control,
            topics.cache,
            topics.shadow,
        ]
        missing = [t for t in dict.fromkeys(wanted) if t not in existing]
        if missing:
            new = [
                NewTopic(
                    t,
                    partitions if t != topics.control else 1,
                    replication_factor,
                    topic_configs={"cleanup.policy": "compact"} if t in compacted else {},
                )
                for t in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another member won the race
                await admin.create_topics(new)
            log.info("created topics %s with %d partitions", missing, partitions)
            existing = await _partitions(admin)
        return existing
    finally:
        await admin.close()


async def _partitions(admin: AIOKafkaAdminClient) -> dict[str, int]:
    names = await admin.list_topics()
    if not names:
        return {}
    described = await admin.describe_topics(list(names))
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def partition_counts(client_kwargs: dict[str, Any], names: list[str]) -> dict[str, int]:
    """Partition count of each named topic that exists."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
