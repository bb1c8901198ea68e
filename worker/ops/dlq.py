"""`llmroute dlq replay`: re-drive dead letters after a fix.

Reads the dead-letter topic from its first retained offset up to its end offsets *as of the
start* (so letters that a replay produces again are never re-read), and sends each selected
letter's original bytes, key and headers back to its source topic (or `--to-topic`), with one
added header `llmroute-replay-of: <dlq topic>:<partition>:<offset>`. Selection: `--error-type`
(repeatable), `--partition` and `--offsets A:B` on the dead-letter topic, `--source-partition`
and `--source-offsets A:B` on the original topic, `--only-valid` (skip letters whose bytes
still fail this version's RouteRequest decoder), `--limit`.

`--dry-run` sends nothing and prints every letter with what would happen: `replay` (with a
note when today's decoder would still refuse it) or `skip` and why. The last line printed is a
JSON summary either way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from aiokafka import AIOKafkaProducer

import schemas
from worker.ops.common import Connection, parse_range, read_to_end

REPLAY_HEADER = "llmroute-replay-of"


@dataclass(frozen=True, kw_only=True)
class Selection:
    error_types: frozenset[str] = frozenset()
    dlq_offsets: tuple[int, int | None] | None = None
    source_partitions: frozenset[int] = frozenset()
    source_offsets: tuple[int, int | None] | None = None
    only_valid: bool = False


def _in(offset: int, span: tuple[int, int | None] | None) -> bool:
    return span is None or (span[0] <= offset and (span[1] is None or offset < span[1]))


@dataclass(frozen=True)
class Planned:
    """One dead letter and what a replay does with it."""

    dlq_partition: int
    dlq_offset: int
    action: Literal["replay", "skip"]
    why: str  # skip: the reason; replay: "" or a warning
    error_type: str | None = None
    source: str | None = None  # topic:partition@offset
    target: str | None = None
    key: bytes | None = None
    value: bytes = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dlq": f"{self.dlq_partition}@{self.dlq_offset}",
            "action": self.action,
            "why": self.why,
            "error_type": self.error_type,
            "source": self.source,
            "target": self.target,
        }

    def line(self) -> str:
        where = f"dlq {self.dlq_partition}@{self.dlq_offset}"
        if self.action == "skip":
            return f"skip    {where}  {self.error_type or '-'}  {self.source or '-'}: {self.why}"
        note = f"  ({self.why})" if self.why else ""
        return f"replay  {where}  {self.error_type}  {self.source} -> {self.target}{note}"


def plan(
    dlq_topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    selection: Selection,
    to_topic: str | None = None,
) -> Planned:
    """What to do with the dead letter at `partition`@`offset` (pure)."""
    if not _in(offset, selection.dlq_offsets):
        return Planned(partition, offset, "skip", "outside --offsets")
    if value is None:
        return Planned(partition, offset, "skip", "tombstone")
    try:
        letter = schemas.decode(value, schemas.DeadLetter)
        original = base64.b64decode(letter.original_value_b64, validate=True)
        key = (
            base64.b64decode(letter.original_key_b64, validate=True)
            if letter.original_key_b64 is not None
            else None
        )
        headers = [
            (h.key, base64.b64decode(h.value_b64, validate=True))
            for h in letter.original_headers or []
        ]
    except (schemas.InvalidEvent, binascii.Error, ValueError) as exc:
        return Planned(partition, offset, "skip", f"not a dead letter: {exc}")
    src = letter.source
    common: dict[str, Any] = {
        "error_type": letter.error_type,
        "source": f"{src.topic}:{src.partition}@{src.offset}",
    }
    if selection.error_types and letter.error_type not in selection.error_types:
        return Planned(partition, offset, "skip", "error type not selected", **common)
    if selection.source_partitions and src.partition not in selection.source_partitions:
        return Planned(partition, offset, "skip", "source partition not selected", **common)
    if not _in(src.offset, selection.source_offsets):
        return Planned(partition, offset, "skip", "outside --source-offsets", **common)
    why = ""
    try:
        schemas.decode(original, schemas.RouteRequest)
    except schemas.InvalidEvent as exc:
        if selection.only_valid:
            return Planned(partition, offset, "skip", f"still invalid: {exc}", **common)
        why = f"still invalid today: {exc}"
    replay_of = f"{dlq_topic}:{partition}:{offset}".encode()
    return Planned(
        partition,
        offset,
        "replay",
        why,
        target=to_topic or src.topic,
        key=key,
        value=original,
        headers=[*headers, (REPLAY_HEADER, replay_of)],
        **common,
    )


async def replay(
    conn: Connection,
    *,
    selection: Selection = Selection(),
    from_topic: str | None = None,
    to_topic: str | None = None,
    partitions: list[int] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    out: IO[str] | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    """Plan (and unless `dry_run`, send) every dead letter; returns the summary."""
    dlq = from_topic or conn.topics.dlq
    kw = conn.client_kwargs()
    counts: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    targets: Counter[str] = Counter()
    producer: AIOKafkaProducer | None = None
    if not dry_run:
        producer = AIOKafkaProducer(acks="all", enable_idempotence=True, linger_ms=5, **kw)
        await producer.start()
    acks: list[Awaitable[Any]] = []
    try:
        async with contextlib.aclosing(read_to_end(kw, dlq, partitions=partitions)) as records:
            async for record in records:
                item = plan(dlq, record.partition, record.offset, record.value, selection, to_topic)
                if item.action == "replay" and limit is not None and counts["replay"] >= limit:
                    item = Planned(
                        item.dlq_partition,
                        item.dlq_offset,
                        "skip",
                        "over --limit",
                        error_type=item.error_type,
                        source=item.source,
                    )
                counts[item.action] += 1
                if item.action == "replay":
                    by_type[item.error_type or "-"] += 1
                    targets[item.target or "-"] += 1
                    if producer is not None:
                        assert item.target is not None
                        acks.append(
                            await producer.send(
                                item.target, item.value, key=item.key, headers=item.headers
                            )
                        )
                if out is not None:
                    out.write((json.dumps(item.to_json()) if as_json else item.line()) + "\n")
        if acks:
            await asyncio.gather(*acks)
    finally:
        if producer is not None:
            await producer.stop()
    verb = "would_replay" if dry_run else "replayed"
    return {
        "dead_letter_topic": dlq,
        "dry_run": dry_run,
        verb: counts["replay"],
        "skipped": counts["skip"],
        "by_error_type": dict(by_type),
        "targets": dict(targets),
    }


def register(sub: Any, add_connection: Any) -> argparse.ArgumentParser:
    """Add the subcommand; returns its (leaf) parser."""
    dlq = sub.add_parser("dlq", help="dead-letter tools (replay)")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p: argparse.ArgumentParser = dsub.add_parser(
        "replay",
        help="re-drive dead letters' original bytes to their source topic (--dry-run first)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection(p)
    p.add_argument("--dry-run", action="store_true", help="send nothing; say what would happen")
    p.add_argument("--from-topic", help="dead-letter topic (default: [topics].dlq)")
    p.add_argument("--to-topic", help="send here instead of each letter's source topic")
    p.add_argument(
        "--error-type",
        action="append",
        default=[],
        help="only letters of this error type, e.g. InvalidEvent (repeatable)",
    )
    p.add_argument("--partition", type=int, action="append", help="dead-letter topic partition")
    p.add_argument("--offsets", type=parse_range, help="dead-letter topic offsets START:END")
    p.add_argument("--source-partition", type=int, action="append", default=[])
    p.add_argument("--source-offsets", type=parse_range, help="original topic offsets START:END")
    p.add_argument(
        "--only-valid",
        action="store_true",
        help="skip letters that this version's decoder still refuses",
    )
    p.add_argument("--limit", type=int, help="replay at most this many")
    p.add_argument("--json", action="store_true", help="one JSON object per letter")
    p.add_argument("--quiet", action="store_true", help="only the summary")

    return p


def run(args: argparse.Namespace, conn: Connection) -> int:
    out = sys.stdout
    selection = Selection(
        error_types=frozenset(args.error_type),
        dlq_offsets=args.offsets,
        source_partitions=frozenset(args.source_partition),
        source_offsets=args.source_offsets,
        only_valid=args.only_valid,
    )
    summary = asyncio.run(
        replay(
            conn,
            selection=selection,
            from_topic=args.from_topic,
            to_topic=args.to_topic,
            partitions=args.partition,
            limit=args.limit,
            dry_run=args.dry_run,
            out=None if args.quiet else out,
            as_json=args.json,
        )
    )
    out.write(json.dumps(summary) + "\n")
    return 0
