"""Create the worker's topics when they are missing (never alters existing ones)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from worker.config.kafka import TopicSettings

log = logging.getLogger(__name__)


async def ensure_topics(
    client_kwargs: dict[str, Any], topics: TopicSettings, replication_factor: int | None = None
) -> dict[str, int]:
    """Make sure every topic exists; returns each topic's partition count.

    New topics get as many partitions as the request topic when it exists, else
    `topics.partitions`; the control topic gets one. Replication: `replication_factor`, else
    `topics.replication_factor`. The dedupe log, the batch-job topic and the semantic-cache topic
    are compacted; the answer journal is deleted after `topics.journal_retention_ms`.
    """
    rf = topics.replication_factor if replication_factor is None else replication_factor
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        existing = await _partitions(admin)
        partitions = existing.get(topics.requests) or topics.partitions
        compacted = {topics.done, topics.batch_jobs, topics.cache, topics.spend}
        configs: dict[str, dict[str, str]] = {t: {"cleanup.policy": "compact"} for t in compacted}
        configs.setdefault(
            topics.journal,
            {"cleanup.policy": "delete", "retention.ms": str(topics.journal_retention_ms)},
        )
        missing = [t for t in dict.fromkeys(topics.names().values()) if t not in existing]
        if missing:
            new = [
                NewTopic(
                    t,
                    partitions if t != topics.control else 1,
                    rf,
                    topic_configs=configs.get(t, {}),
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
    try:
        await admin.start()
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


async def max_message_bytes(client_kwargs: dict[str, Any], topics: list[str]) -> dict[str, int]:
    """Each topic's `max.message.bytes` (its largest record batch); the broker default for a
    topic whose limit cannot be read (no such topic yet, no permission)."""
    out = dict.fromkeys(topics, BROKER_DEFAULT_MAX_MESSAGE_BYTES)
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in dict.fromkeys(topics)]
        )
    except KafkaError as exc:
        log.warning("reading the size limits of %s failed: %s", topics, exc)
        return out
    finally:
        await admin.close()
    for response in responses:
        for error_code, _msg, _type, name, entries, *_ in response.resources:
            if error_code or name not in out:
                continue
            for key, value, *_ in entries:
                if key == "max.message.bytes" and value is not None:
                    out[name] = int(value)
    return out
