"""On the local three-node cluster, RF 3 + min.insync.replicas=2 + acks=all keeps accepting
writes after one broker (the partition leader) is stopped, and loses none of them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.kafka_support import create_topics, localkafka, start_cluster, unique_topic

# the cluster's start and warm-up (up to two clusters) count towards the test's timeout
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, object]]:
    name = f"pytest-cluster-{os.getpid()}"
    inst = start_cluster(name)
    try:
        yield inst.bootstrap, inst
    finally:
        localkafka().stop(name)


async def _leader(bootstrap: str, topic: str) -> int:
    """The partition leader, once the topic's metadata has reached the broker asked."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for _ in range(100):
            [desc] = await admin.describe_topics([topic])
            partitions = desc["partitions"]
            if partitions and partitions[0]["leader"] >= 0:
                return int(partitions[0]["leader"])
            await asyncio.sleep(0.2)
        raise AssertionError(f"no leader for {topic}: {desc}")
    finally:
        await admin.close()


async def test_acks_all_survives_losing_the_leader(cluster: tuple[str, object]) -> None:
    bootstrap, inst = cluster
    lk = localkafka()
    topic = unique_topic("replicated")
    await create_topics(
        bootstrap, [topic], partitions=1, replication=3, configs={"min.insync.replicas": "2"}
    )
    leader = await _leader(bootstrap, topic)

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=30000
    )
    await producer.start()
    try:
        for i in range(100):
            await producer.send_and_wait(topic, f"before-{i}".encode())
        node = next(n for n in inst.nodes if n.node_id == leader)  # type: ignore[attr-defined]
        lk.stop_node(inst, node)
        for i in range(100):
            await producer.send_and_wait(topic, f"after-{i}".encode())
    finally:
        await producer.stop()

    survivors = ",".join(
        f"127.0.0.1:{n.port}"
        for n in inst.nodes  # type: ignore[attr-defined]
        if n.node_id != leader
    )
    assert await _leader(survivors, topic) != leader
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=survivors, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while len(values) < 200:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                break
            for records in batch.values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    expected = [f"before-{i}".encode() for i in range(100)] + [
        f"after-{i}".encode() for i in range(100)
    ]
    assert values == expected
