"""Test support for a real Kafka: start the project's local broker, make per-test topics."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

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
