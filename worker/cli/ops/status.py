"""`llmroute status`: how the consumer group is doing.

- lag per partition of the request topic: end offset minus the group's committed offset (a
  partition with no commit yet counts from its first retained offset);
- the group's state and members, with the partitions each one holds (a static member's id
  starts with its `group_instance_id`);
- in-flight requests, scraped from each `--metrics-url` (`llmroute_in_flight_requests`);
- batch jobs: the latest value per key of the compacted batch-job topic, tombstones removed,
  counted by status;
- dead letters: records retained in the dead-letter topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from prometheus_client.parser import text_string_to_metric_families

import schemas
from worker.cli import Subparsers, UserError
from worker.cli.kafka_args import Connection
from worker.cli.ops.common import add_broker_command, partition_counts, read_to_end, snapshot

IN_FLIGHT_METRIC = "llmroute_in_flight_requests"


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed this partition
    end: int
    lag: int


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    client_host: str
    partitions: list[str]  # "topic:partition"


@dataclass
class Status:
    group: str
    topic: str
    state: str = "Unknown"
    partitions: list[PartitionLag] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    in_flight: dict[str, float | str] = field(default_factory=dict)  # url -> value or error
    batch_jobs: dict[str, int] | None = None  # status -> count; None: no batch-job topic
    dead_letters: int | None = None  # None: no dead-letter topic

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def idle_members(self) -> int:
        """Members holding no partition of the request topic (once the group is Stable)."""
        if self.state != "Stable":
            return 0
        return sum(
            1 for m in self.members if not any(p.startswith(f"{self.topic}:") for p in m.partitions)
        )

    def warnings(self) -> list[str]:
        out = []
        if len(self.members) > len(self.partitions):
            out.append(
                f"{len(self.members)} members for {len(self.partitions)} partitions of "
                f"{self.topic}: {len(self.members) - len(self.partitions)} idle (raise "
                "[topics].partitions for new topics, or run fewer members)"
            )
        elif self.idle_members:
            out.append(f"{self.idle_members} members hold no partition of {self.topic}")
        return out

    @property
    def open_batch_jobs(self) -> int | None:
        return None if self.batch_jobs is None else sum(self.batch_jobs.values())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_lag"] = self.total_lag
        out["open_batch_jobs"] = self.open_batch_jobs
        out["idle_members"] = self.idle_members
        out["warnings"] = self.warnings()
        return out


def lag_of(beginning: int, end: int, committed: int | None) -> int:
    start = committed if committed is not None and committed >= 0 else beginning
    return max(0, end - max(start, beginning))


def in_flight_from_text(text: str) -> float:
    """Sum of the in-flight gauge in a Prometheus text exposition."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == IN_FLIGHT_METRIC:
                total += sample.value
                found = True
    if not found:
        raise ValueError(f"no {IN_FLIGHT_METRIC} in the scrape")
    return total


def batch_job_counts(latest: dict[bytes, bytes | None]) -> dict[str, int]:
    """Non-tombstoned jobs by status ('undecodable' for values that are not a BatchJob)."""
    counts: Counter[str] = Counter()
    for value in latest.values():
        if value is None:
            continue
        try:
            counts[schemas.decode(value, schemas.BatchJob).status] += 1
        except schemas.InvalidEvent:
            counts["undecodable"] += 1
    return dict(sorted(counts.items()))


async def collect(
    conn: Connection, *, group: str | None = None, metrics_urls: list[str] | None = None
) -> Status:
    kw = conn.client_kwargs()
    topics = conn.topics
    group_id = group or conn.kafka.group_id
    status = Status(group=group_id, topic=topics.requests)
    counts = await partition_counts(kw, [topics.requests, topics.dlq, topics.batch_jobs])
    if topics.requests not in counts:
        raise UserError(f"topic {topics.requests!r} does not exist")
    admin = AIOKafkaAdminClient(**kw)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kw)
    try:
        await admin.start()
        await consumer.start()
        committed = await admin.list_consumer_group_offsets(group_id)
        snap = await snapshot(consumer, topics.requests, counts[topics.requests])
        for p in sorted(snap.end):
            meta = committed.get(TopicPartition(topics.requests, p))
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            status.partitions.append(
                PartitionLag(p, offset, snap.end[p], lag_of(snap.beginning[p], snap.end[p], offset))
            )
        status.state, status.members = await _members(admin, group_id)
        if topics.dlq in counts:
            status.dead_letters = (
                await snapshot(consumer, topics.dlq, counts[topics.dlq])
            ).retained
    finally:
        await consumer.stop()
        await admin.close()
    if topics.batch_jobs in counts:
        latest: dict[bytes, bytes | None] = {}
        async with contextlib.aclosing(read_to_end(kw, topics.batch_jobs)) as records:
            async for record in records:
                latest[record.key or b""] = record.value
        status.batch_jobs = batch_job_counts(latest)
    if metrics_urls:
        status.in_flight = await _scrape(metrics_urls)
    return status


async def _members(admin: AIOKafkaAdminClient, group_id: str) -> tuple[str, list[Member]]:
    responses = await admin.describe_consumer_groups([group_id])
    for response in responses:
        for g in response.to_object()["groups"]:
            if g["group"] != group_id:
                continue
            members = []
            for m in g["members"]:
                parts: list[str] = []
                if m["member_assignment"]:
                    assignment = ConsumerProtocolMemberAssignment.decode(m["member_assignment"])
                    parts = [f"{tp.topic}:{tp.partition}" for tp in assignment.partitions()]
                members.append(
                    Member(
                        m["member_id"],
                        m["client_id"],
                        m["client_host"],
                        sorted(parts, key=_partition_order),
                    )
                )
            return g["state"] or "Unknown", sorted(members, key=lambda m: m.member_id)
    return "Unknown", []


def _partition_order(name: str) -> tuple[str, int]:
    topic, _, p = name.rpartition(":")
    return topic, int(p)


async def _scrape(urls: list[str]) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for url in urls:
            target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
            try:
                response = await client.get(target)
                response.raise_for_status()
                out[url] = in_flight_from_text(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                out[url] = f"error: {type(exc).__name__}: {exc}"
    return out


def render(status: Status) -> str:
    lines = [
        f"group {status.group} ({status.state}), topic {status.topic}: "
        f"{len(status.partitions)} partitions, total lag {status.total_lag}",
        f"  {'partition':>9} {'committed':>12} {'end':>12} {'lag':>10}",
    ]
    for p in status.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        lines.append(f"  {p.partition:>9} {committed:>12} {p.end:>12} {p.lag:>10}")
    lines.append(f"members ({len(status.members)}):")
    for m in status.members:
        held = ",".join(x.rpartition(":")[2] for x in m.partitions) or "none"
        lines.append(f"  {m.member_id}  {m.client_host}  partitions {held}")
    if status.in_flight:
        lines.append("in flight:")
        for url, value in status.in_flight.items():
            shown = f"{value:.0f}" if isinstance(value, float) else value
            lines.append(f"  {url}: {shown}")
    if status.batch_jobs is None:
        lines.append("batch jobs: no batch-job topic")
    else:
        detail = ", ".join(f"{k} {v}" for k, v in status.batch_jobs.items())
        lines.append(
            f"batch jobs open: {status.open_batch_jobs}" + (f" ({detail})" if detail else "")
        )
    dead = "no dead-letter topic" if status.dead_letters is None else str(status.dead_letters)
    lines.append(f"dead letters: {dead}")
    lines.extend(f"warning: {w}" for w in status.warnings())
    return "\n".join(lines)


def register(subparsers: Subparsers) -> None:
    p = add_broker_command(
        subparsers,
        "status",
        run,
        help="group lag per partition, members, in-flight, open batch jobs, dead letters",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--group", help="consumer group (default: [kafka].group_id)")
    p.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="a worker's metrics endpoint, e.g. http://pod:9464 (repeatable)",
    )
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, conn: Connection) -> int:
    out = sys.stdout
    status = asyncio.run(collect(conn, group=args.group, metrics_urls=args.metrics_url))
    out.write((json.dumps(status.to_json()) if args.json else render(status)) + "\n")
    return 0
