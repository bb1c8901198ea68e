"""Durable batch-job state on the compacted `batch_jobs` topic, and reading requests back.

A job's state is written as one record per source partition (and chunk of at most
`ITEMS_PER_RECORD` items), key ``<source topic>:<partition>:<job_id>:<chunk>``, on the
batch-jobs partition of the same number (modulo its partition count). Whoever owns source
partition p reads back the jobs of p on assignment, so jobs move with their partitions. A null
value (tombstone) ends a record; compaction then forgets it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

import schemas
from worker.kafka.table import latest, read_to_end, scan

log = logging.getLogger(__name__)

ITEMS_PER_RECORD = 2_000  # ~0.25 MB of JSON: well under the broker's default 1 MB record limit


def record_key(topic: str, partition: int, job_id: str, chunk: int) -> bytes:
    return f"{topic}:{partition}:{job_id}:{chunk}".encode()


def chunks(items: Sequence[schemas.BatchItem]) -> list[list[schemas.BatchItem]]:
    return [list(items[i : i + ITEMS_PER_RECORD]) for i in range(0, len(items), ITEMS_PER_RECORD)]


class JobStore:
    """Writes job records (acknowledged by the broker before returning) and reads them back."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        client_kwargs: dict[str, Any],
        topic: str,
        partitions: int,
    ) -> None:
        self.producer = producer
        self.client_kwargs = client_kwargs
        self.topic = topic
        self.partitions = max(1, partitions)

    def _partition(self, source_partition: int) -> int:
        return source_partition % self.partitions

    async def put(self, records: Iterable[tuple[bytes, int, schemas.BatchJob | None]]) -> None:
        """Write (key, source partition, state or None for a tombstone); wait for every ack."""
        acks = [
            await self.producer.send(
                self.topic,
                schemas.encode(state) if state is not None else None,
                key=key,
                partition=self._partition(source_partition),
            )
            for key, source_partition, state in records
        ]
        await asyncio.gather(*acks)

    async def load(
        self, source_topic: str, source_partitions: Iterable[int], timeout_s: float = 120.0
    ) -> dict[bytes, schemas.BatchJob]:
        """The live records (latest value per key, tombstones dropped) of these partitions."""
        wanted = set(source_partitions)
        prefixes = tuple(f"{source_topic}:{p}:".encode() for p in wanted)
        if not wanted:
            return {}
        records = await read_to_end(
            self.client_kwargs,
            self.topic,
            partitions={self._partition(p) for p in wanted},
            timeout_s=timeout_s,
            consumer_options={"max_partition_fetch_bytes": 8 * 1024 * 1024},
        )
        live = latest(records, keep=lambda key: key.startswith(prefixes))
        out: dict[bytes, schemas.BatchJob] = {}
        for key, value in live.items():
            try:
                out[key] = schemas.decode(value, schemas.BatchJob)
            except schemas.InvalidEvent as exc:
                log.error("ignoring an unreadable batch-job record %r: %s", key, exc)
        return out


async def read_source(
    client_kwargs: dict[str, Any],
    topic: str,
    partition: int,
    offsets: Iterable[int],
    timeout_s: float = 60.0,
) -> dict[int, bytes | None]:
    """The values of the records at `offsets` of one partition (those still retained)."""
    wanted = set(offsets)
    found: dict[int, bytes | None] = {}
    if not wanted:
        return found
    reads = scan(  # the range between the offsets can be long: keep only what is wanted
        client_kwargs,
        topic,
        partitions=[partition],
        window=lambda b: (min(wanted), max(wanted) + 1),
        timeout_s=timeout_s,
        consumer_options={"max_poll_records": 5000},
    )
    async for records in reads:
        found.update((r.offset, r.value) for r in records if r.offset in wanted)
    return found
