"""Test support for a real Kafka: start the project's local broker, make per-test topics."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.sim.harness import localkafka

ROOT = Path(__file__).resolve().parents[1]


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topics(
    bootstrap: str,
    names: list[str],
    *,
    partitions: int = 1,
    replication: int = 1,
    configs: dict[str, str] | None = None,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.create_topics(
            [NewTopic(n, partitions, replication, topic_configs=configs or {}) for n in names]
        )
    finally:
        await admin.close()


def java_produce(
    bootstrap: str,
    topic: str,
    values: list[tuple[str, bytes, bytes]],
    *,
    null_header: bool = False,
) -> None:
    """Send (codec, key, value) records with Kafka's own Java producer (`tests/java/Produce.java`,
    run in source-file mode on the broker's jars); a record is compressed with its codec (none,
    gzip, snappy, lz4, zstd). Keys and values must be one-line UTF-8."""
    jars = localkafka().ensure_jars()
    lines = b"".join(c.encode() + b"\t" + k + b"\t" + v + b"\n" for c, k, v in values)
    args = [
        "java",
        "-cp",
        f"{jars}/*",
        str(ROOT / "tests" / "java" / "Produce.java"),
        bootstrap,
        topic,
    ]
    if null_header:
        args.append("null-header")
    proc = subprocess.run(args, input=lines, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the Java producer failed:\n{proc.stderr.decode()[-3000:]}")


async def group_round_trip(bootstrap: str, replication: int, timeout_s: float) -> None:
    """A record produced with acks=all and read back by a consumer group: the cluster has its
    group coordinators (the offsets topic) and elected leaders. Raises TimeoutError when it
    cannot within `timeout_s`."""
    topic = unique_topic("warm-up")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topic, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    async with asyncio.timeout(timeout_s):
        try:
            await create_topics(bootstrap, [topic], replication=replication)
            await producer.start()
            await producer.send_and_wait(topic, b"warm-up")
            await consumer.start()
            consumer.subscribe([topic])
            await consumer.getone()
            await consumer.commit()
        finally:
            await producer.stop()
            await consumer.stop()


def start_cluster(name: str, heap_mb: int = 768, warm_up_s: float = 120.0) -> Any:
    """The local three-node cluster, started and shown able to serve a consumer group (see
    `group_round_trip`). A fresh cluster on a loaded machine sometimes is not (its group
    coordinator never answers a member): that cluster is replaced once by a new one."""
    lk = localkafka()
    for attempt in (1, 2):
        inst = lk.start(name, 3, 0, heap_mb=heap_mb)
        try:
            asyncio.run(group_round_trip(inst.bootstrap, 3, warm_up_s))
        except (TimeoutError, OSError) as exc:
            lk.stop(name)
            if attempt == 2:
                raise RuntimeError(f"cluster {name} could not serve a consumer group") from exc
            continue
        return inst
    raise AssertionError("unreachable")
