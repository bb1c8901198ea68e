"""`llmroute dlq list | show | purge | replay`: look at dead letters, drop them, re-drive them.

`list` prints one line per letter (dead-letter partition@offset, error type, source, reason);
`show P@O` prints one letter in full, the original bytes decoded as text; `purge` deletes every
letter up to the end offsets taken at its start (Kafka DeleteRecords: the log start moves;
nothing is rewritten), and asks for `--yes` first.

`replay` re-drives dead letters after a fix.

Reads the dead-letter topic from its first retained offset up to its end offsets *as of the
start* (so letters that a replay produces again are never re-read), and sends each selected
letter's original bytes, key and headers back to its source topic (or `--to-topic`), with one
added header `llmroute-replay-of: <dlq topic>:<partition>:<offset>`. Selection: `--error-type`
(repeatable), `--partition` and `--offsets A:B` on the dead-letter topic, `--source-partition`
and `--source-offsets A:B` on the original topic, `--limit`. Letters whose bytes this version's
decoder still refuses (RouteRequest for the request topic, Feedback for the feedback topic) are
skipped (a replay would only dead-letter them again)
unless `--include-invalid`.

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
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

import schemas
from worker.cli import COUNT, Subparsers, UserError, next_hint
from worker.cli.kafka_args import Connection
from worker.cli.ops.common import (
    add_broker_command,
    parse_range,
    read_to_end,
    snapshot,
    topic_partitions,
)

REPLAY_HEADER = "llmroute-replay-of"


@dataclass(frozen=True, kw_only=True)
class Selection:
    error_types: frozenset[str] = frozenset()
    dlq_offsets: tuple[int, int | None] | None = None
    source_partitions: frozenset[int] = frozenset()
    source_offsets: tuple[int, int | None] | None = None
    only_valid: bool = True  # skip letters today's decoder still refuses (--include-invalid)


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


def event_type(source_topic: str, events: Mapping[str, type[Any]] | None) -> type[Any]:
    """The event a letter's source topic carries (`events`: topic -> type; the defaults are the
    request and feedback topics' default names); other topics: RouteRequest."""
    known = (
        events
        if events is not None
        else {
            schemas.TOPICS["requests"]: schemas.RouteRequest,
            schemas.TOPICS["feedback"]: schemas.Feedback,
        }
    )
    return known.get(source_topic, schemas.RouteRequest)


def topic_events(conn: Connection) -> dict[str, type[Any]]:
    return {conn.topics.requests: schemas.RouteRequest, conn.topics.feedback: schemas.Feedback}


def plan(
    dlq_topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    selection: Selection,
    to_topic: str | None = None,
    events: Mapping[str, type[Any]] | None = None,
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
        schemas.decode(original, event_type(src.topic, events))
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
                item = plan(
                    dlq,
                    record.partition,
                    record.offset,
                    record.value,
                    selection,
                    to_topic,
                    topic_events(conn),
                )
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


# ---------------------------------------------------------------- list, show, purge


@dataclass(frozen=True)
class Letter:
    """A dead letter as `list` and `show` print it (`letter` None: not a dead letter)."""

    partition: int
    offset: int
    letter: schemas.DeadLetter | None
    problem: str = ""

    @property
    def where(self) -> str:
        return f"{self.partition}@{self.offset}"

    def line(self) -> str:
        d = self.letter
        if d is None:
            return f"{self.where:<10} -  {self.problem}"
        src = d.source
        seen = d.first_seen_at.strftime("%Y-%m-%d %H:%M:%S")
        reason = " ".join(d.reason.split())
        reason = reason if len(reason) <= 70 else reason[:67] + "..."
        return (
            f"{self.where:<10} {seen}  {d.error_type:<16} "
            f"{src.topic}:{src.partition}@{src.offset}  {reason}"
        )

    def to_json(self) -> dict[str, Any]:
        if self.letter is None:
            return {"dlq": self.where, "problem": self.problem}
        return {"dlq": self.where, **json.loads(schemas.encode(self.letter))}

    def details(self, events: Mapping[str, type[Any]] | None = None) -> str:
        d = self.letter
        if d is None:
            return f"dlq {self.where}: {self.problem}"
        original = base64.b64decode(d.original_value_b64)
        key = base64.b64decode(d.original_key_b64) if d.original_key_b64 is not None else None
        lines = [
            f"dlq          {self.where}",
            f"error_type   {d.error_type}",
            f"reason       {d.reason}",
            f"source       {d.source.topic}:{d.source.partition}@{d.source.offset}",
            f"first_seen   {d.first_seen_at.isoformat()}",
            f"worker       {d.worker_id or '-'}",
            f"key          {key.decode('utf-8', 'replace') if key is not None else '-'}",
        ]
        for h in d.original_headers or []:
            value = base64.b64decode(h.value_b64).decode("utf-8", "replace")
            lines.append(f"header       {h.key}: {value}")
        try:
            schemas.decode(original, event_type(d.source.topic, events))
            verdict = "valid today (a replay would be processed)"
        except schemas.InvalidEvent as exc:
            verdict = f"still invalid today: {exc}"
        lines.append(f"replay       {verdict}")
        lines.append(f"original     {len(original)} bytes:")
        lines.append(original.decode("utf-8", "replace"))
        return "\n".join(lines)


def read_letter(partition: int, offset: int, value: bytes | None) -> Letter:
    if value is None:
        return Letter(partition, offset, None, "tombstone")
    try:
        return Letter(partition, offset, schemas.decode(value, schemas.DeadLetter))
    except schemas.InvalidEvent as exc:
        return Letter(partition, offset, None, f"not a dead letter: {exc}")


async def letters(conn: Connection, topic: str | None = None) -> list[Letter]:
    dlq = topic or conn.topics.dlq
    out = []
    async with contextlib.aclosing(read_to_end(conn.client_kwargs(), dlq)) as records:
        async for record in records:
            out.append(read_letter(record.partition, record.offset, record.value))
    return out


async def purge(conn: Connection, topic: str | None = None, *, dry_run: bool) -> dict[str, Any]:
    """Delete every record of the dead-letter topic below its end offsets as of now."""
    dlq = topic or conn.topics.dlq
    kw = conn.client_kwargs()
    count = await topic_partitions(kw, dlq)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kw)
    try:
        await consumer.start()
        snap = await snapshot(consumer, dlq, count)
    finally:
        await consumer.stop()
    summary: dict[str, Any] = {"dead_letter_topic": dlq, "dry_run": dry_run}
    summary["would_delete" if dry_run else "deleted"] = snap.retained
    if dry_run or not snap.retained:
        return summary
    admin = AIOKafkaAdminClient(**kw)
    try:
        await admin.start()
        await admin.delete_records(
            {
                TopicPartition(dlq, p): RecordsToDelete(before_offset=end)
                for p, end in snap.end.items()
                if end > snap.beginning[p]
            }
        )
    finally:
        await admin.close()
    return summary


def _where(text: str) -> tuple[int, int]:
    part, sep, off = text.partition("@")
    try:
        if not sep:
            raise ValueError
        return int(part), int(off)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad letter {text!r}: use PARTITION@OFFSET as `dlq list` prints it"
        ) from None


def run_list(args: argparse.Namespace, conn: Connection) -> int:
    found = asyncio.run(letters(conn, args.from_topic))
    shown = found[: args.limit] if args.limit is not None else found
    out = sys.stdout
    for item in shown:
        out.write((json.dumps(item.to_json()) if args.json else item.line()) + "\n")
    if not args.json:
        by_type = Counter(i.letter.error_type for i in found if i.letter is not None)
        detail = ", ".join(f"{k} {v}" for k, v in by_type.most_common())
        out.write(f"{len(found)} dead letters" + (f" ({detail})" if detail else "") + "\n")
        if found:
            next_hint(f"llmroute dlq show {found[0].where}   or   llmroute dlq replay --dry-run")
    return 0


def run_show(args: argparse.Namespace, conn: Connection) -> int:
    partition, offset = args.letter
    found = asyncio.run(letters(conn, args.from_topic))
    match = [i for i in found if (i.partition, i.offset) == (partition, offset)]
    if not match:
        raise UserError(
            f"no dead letter at {partition}@{offset} ({len(found)} retained)",
            "`llmroute dlq list` prints where each one is",
        )
    item = match[0]
    sys.stdout.write(
        (json.dumps(item.to_json()) if args.json else item.details(topic_events(conn))) + "\n"
    )
    return 0


def run_purge(args: argparse.Namespace, conn: Connection) -> int:
    summary = asyncio.run(purge(conn, args.from_topic, dry_run=not args.yes))
    sys.stdout.write(json.dumps(summary) + "\n")
    if not args.yes and summary["would_delete"]:
        next_hint("llmroute dlq purge --yes   (deletes them; replay first what you need)")
    return 0


# ---------------------------------------------------------------- CLI


def register(subparsers: Subparsers) -> None:
    """Add `dlq list | show | purge | replay`."""
    dlq = subparsers.add_parser("dlq", help="dead letters: list, show, purge, replay")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    lst = add_broker_command(
        dsub,
        "list",
        run_list,
        "dlq list",
        help="one line per dead letter, then a count by error type",
    )
    lst.add_argument("--from-topic", help="dead-letter topic (default: [topics].dlq)")
    lst.add_argument("--limit", type=COUNT, help="print at most this many")
    lst.add_argument("--json", action="store_true", help="one JSON object per letter")
    show = add_broker_command(
        dsub,
        "show",
        run_show,
        "dlq show",
        help="one dead letter in full, its original bytes as text",
    )
    show.add_argument("letter", type=_where, help="PARTITION@OFFSET, as `dlq list` prints it")
    show.add_argument("--from-topic", help="dead-letter topic (default: [topics].dlq)")
    show.add_argument("--json", action="store_true")
    prg = add_broker_command(
        dsub, "purge", run_purge, "dlq purge", help="delete every dead letter (asks for --yes)"
    )
    prg.add_argument("--from-topic", help="dead-letter topic (default: [topics].dlq)")
    prg.add_argument("--yes", action="store_true", help="really delete (without: say how many)")
    p = add_broker_command(
        dsub,
        "replay",
        run,
        "dlq replay",
        help="re-drive dead letters' original bytes to their source topic (--dry-run first)",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    )
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
        "--include-invalid",
        action="store_true",
        help="also re-send letters this version's decoder still refuses (they come back)",
    )
    p.add_argument("--only-valid", action="store_true", help=argparse.SUPPRESS)  # the default
    p.add_argument("--limit", type=COUNT, help="replay at most this many")
    p.add_argument("--json", action="store_true", help="one JSON object per letter")
    p.add_argument("--quiet", action="store_true", help="only the summary")


def run(args: argparse.Namespace, conn: Connection) -> int:
    out = sys.stdout
    selection = Selection(
        error_types=frozenset(args.error_type),
        dlq_offsets=args.offsets,
        source_partitions=frozenset(args.source_partition),
        source_offsets=args.source_offsets,
        only_valid=not args.include_invalid,
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
