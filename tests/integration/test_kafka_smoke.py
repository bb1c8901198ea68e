"""Smoke tests through the real broker: the foundation every worker test stands on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import schemas
from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka


def _request(i: int) -> schemas.RouteRequest:
    return schemas.RouteRequest(
        schema_version=1,
        request_id=f"req-{i:05d}",
        tenant="acme",
        messages=[schemas.Message(role="user", content=f"question {i}")],
        created_at=datetime.now(UTC),
    )


async def test_group_of_two_consumes_every_request_and_commits(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("requests", partitions=4)
    group = f"g-{topic}"
    total = 400
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sends = [
            await producer.send(
                topic,
                schemas.encode(_request(i)),
                key=f"req-{i:05d}".encode(),
                headers=[
                    ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                ],
            )
            for i in range(total)
        ]
        metas = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    end_offsets: dict[int, int] = {}
    for m in metas:
        end_offsets[m.partition] = max(end_offsets.get(m.partition, 0), m.offset + 1)

    seen: dict[str, int] = {}
    members_seen: list[set[int]] = [set(), set()]

    async def member(idx: int, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    for r in records:
                        req = schemas.decode(r.value, schemas.RouteRequest)
                        assert r.key == req.request_id.encode()
                        assert dict(r.headers)["traceparent"].startswith(b"00-")
                        seen[req.request_id] = seen.get(req.request_id, 0) + 1
                        members_seen[idx].add(tp.partition)
                    await consumer.commit({tp: records[-1].offset + 1})
                if len(seen) >= total:
                    stop.set()
        finally:
            await consumer.stop()

    stop = asyncio.Event()
    await asyncio.wait_for(asyncio.gather(member(0, stop), member(1, stop)), timeout=90)

    assert len(seen) == total
    # both members took part (the group spread the four partitions)
    assert members_seen[0] and members_seen[1]

    check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await check.start()
    try:
        for partition, end in end_offsets.items():
            assert await check.committed(TopicPartition(topic, partition)) == end
    finally:
        await check.stop()
