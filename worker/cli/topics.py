"""`llmroute topics create`: create the worker's topics ahead of the first member.

Uses the config's `[kafka]` and `[topics]` (names, `partitions`, `replication_factor`); the
flags override the counts. Existing topics are never altered: each is listed with its partition
count, and a request topic with fewer partitions than asked for is pointed out (Kafka can add
partitions, `kafka-topics.sh --alter`, but that moves keys to other partitions).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from worker.cli import Subparsers, UserError, next_hint
from worker.cli.kafka_args import Connection, add_kafka_args, connection_from_args, reach
from worker.cli.ops.common import partition_counts
from worker.kafka.topics import ensure_topics


def register(subparsers: Subparsers) -> None:
    topics = subparsers.add_parser(
        "topics", help="create the worker's topics (partitions, replication)"
    )
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    p: argparse.ArgumentParser = tsub.add_parser(
        "create",
        help="create every missing topic of the config's [topics]",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add_kafka_args(p)
    p.add_argument("--partitions", type=int, help="default: [topics].partitions (6)")
    p.add_argument("--replication-factor", type=int, help="default: [topics].replication_factor")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    conn = connection_from_args(args)
    changes: dict[str, int] = {}
    if args.partitions is not None:
        changes["partitions"] = args.partitions
    if args.replication_factor is not None:
        changes["replication_factor"] = args.replication_factor
    if any(v < 1 for v in changes.values()):
        raise UserError("--partitions and --replication-factor must be >= 1")
    topics = msgspec.structs.replace(conn.topics, **changes)
    conn = Connection(conn.kafka, topics)
    asyncio.run(reach(conn.kafka))
    before = asyncio.run(_existing(conn))
    counts = asyncio.run(ensure_topics(conn.client_kwargs(), topics))
    out = sys.stdout
    for role, name in topics.names().items():
        state = "exists " if name in before else "created"
        out.write(f"{state} {name:<32} {counts.get(name, 0):>3} partitions  ({role})\n")
    have = counts.get(topics.requests, 0)
    if topics.requests in before and have < topics.partitions:
        out.write(
            f"note: {topics.requests} already has {have} partitions (< {topics.partitions}); "
            "at most that many members do work\n"
        )
    next_hint(f"llmroute run --config FILE   (one member; up to {have} in a group do work)")
    return 0


async def _existing(conn: Connection) -> set[str]:
    return set(await partition_counts(conn.client_kwargs(), list(conn.topics.names().values())))
