"""`llmroute tail`: follow any of the worker's topics, filtered, pretty or as JSON lines.

`what` is a topic's role (responses, decisions, requests, feedback, dlq, feedback_dlq, shadow,
control, batch_jobs, cache, done, journal); `--topic NAME` reads another topic: one of the
config's topics is decoded as its role says, any other (a request's reply_topic) as responses
unless `what` says.

Starts at the end of the topic (only new records) unless `--from-beginning`; stops after
`--max N` matching records, after `--idle-timeout-s` without a record, or on Ctrl-C. Reads
without a consumer group, so it never takes partitions from the workers or commits offsets.
`--json` prints each matching record's value as it is on the wire, one per line (pipe to jq).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from aiokafka import AIOKafkaConsumer

import schemas
from worker.cli import COUNT, POSITIVE, Subparsers
from worker.cli.kafka_args import Connection
from worker.cli.ops.common import add_broker_command, topic_partitions

Event = schemas.RouteResponse | schemas.RoutingDecision
# a role of `TopicSettings` -> the event type on that topic (None: printed as it is)
KINDS: dict[str, type[Any] | None] = {
    "responses": schemas.RouteResponse,
    "decisions": schemas.RoutingDecision,
    "requests": schemas.RouteRequest,
    "feedback": schemas.Feedback,
    "dlq": schemas.DeadLetter,
    "feedback_dlq": schemas.DeadLetter,
    "shadow": schemas.RouteResponse,
    "control": schemas.Control,
    "batch_jobs": schemas.BatchJob,
    "cache": schemas.CacheEntry,
    "done": None,
    "spend": None,
    "journal": None,
}


def role_of(conn: Connection, what: str | None, topic: str | None) -> str:
    """The role whose event type decodes `topic`: `what` when given, else the config's role of
    that topic name, else responses (a request's reply_topic)."""
    if what is not None:
        return what
    if topic is not None:
        for role, name in conn.topics.names().items():
            if name == topic:
                return role
    return "responses"


@dataclass(frozen=True, kw_only=True)
class Filters:
    tenant: str | None = None
    model: str | None = None
    status: str | None = None  # responses only: ok | error
    request_id: str | None = None

    def match(self, event: Any) -> bool:
        if self.tenant is not None and getattr(event, "tenant", None) != self.tenant:
            return False
        if self.request_id is not None and getattr(event, "request_id", None) != self.request_id:
            return False
        if not isinstance(event, schemas.RouteResponse | schemas.RoutingDecision):
            return self.model is None and self.status is None
        if isinstance(event, schemas.RouteResponse):
            model = event.model
            if self.status is not None and event.status != self.status:
                return False
        else:
            model = event.decision.model
            if self.status is not None:
                return False  # decisions have no status: --status selects responses only
        return self.model is None or model == self.model


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_event(event: Any) -> str:
    """One readable line per event."""
    if isinstance(event, schemas.DeadLetter):
        src = event.source
        return (
            f"{event.first_seen_at.strftime('%H:%M:%S')} dead letter {event.error_type} from "
            f"{src.topic}:{src.partition}@{src.offset}: {_clip(event.reason, 80)}"
        )
    if not isinstance(event, schemas.RouteResponse | schemas.RoutingDecision):
        return _clip(schemas.encode(event).decode(), 200)
    at = event.created_at.strftime("%H:%M:%S")
    if isinstance(event, schemas.RouteResponse):
        head = (
            f"{at} {event.status:<5} {event.request_id} tenant={event.tenant} "
            f"model={event.model or '-'} cost=${event.cost_usd:.6f} {event.latency_ms:.0f}ms"
        )
        if event.error is not None:
            return f"{head} {event.error.type}: {_clip(event.error.message)}"
        text = event.message.content if event.message is not None else ""
        return f"{head} {_clip(text)!r}"
    d = event.decision
    threshold = "-" if d.threshold is None else f"{d.threshold:.3f}"
    return (
        f"{at} {event.request_id} tenant={event.tenant} model={d.model} policy={d.policy} "
        f"score={d.score:.3f} threshold={threshold} {_clip(d.reason, 80)}"
    )


async def tail(
    conn: Connection,
    kind: str | None,
    *,
    topic: str | None = None,
    filters: Filters = Filters(),
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    as_json: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Print matching records until a stop condition; returns how many were printed."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    kind = role_of(conn, kind, topic)
    event_type = KINDS[kind]
    name = topic or getattr(conn.topics, kind)
    await topic_partitions(conn.client_kwargs(), name)  # a clear error for a missing topic
    consumer = AIOKafkaConsumer(
        name,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        isolation_level="read_committed",  # never a record of an aborted transaction
        **conn.client_kwargs(),
    )
    shown = 0
    last = time.monotonic()
    try:
        await consumer.start()
        while max_records is None or shown < max_records:
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                last = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                break
            for records in batch.values():
                for record in records:
                    value: bytes = record.value or b""
                    if event_type is None:
                        key = (record.key or b"").decode("utf-8", "replace")
                        text = value.decode("utf-8", "replace") if record.value else "(null)"
                        if filters.match(object()):
                            out.write(f"{record.partition}@{record.offset} {key} {text}\n")
                            shown += 1
                        if max_records is not None and shown >= max_records:
                            break
                        continue
                    try:
                        event = schemas.decode(value, event_type)
                    except schemas.InvalidEvent as exc:
                        err.write(f"{record.partition}@{record.offset}: not a {kind}: {exc}\n")
                        continue
                    if not filters.match(event):
                        continue
                    out.write((value.decode() if as_json else format_event(event)) + "\n")
                    shown += 1
                    if max_records is not None and shown >= max_records:
                        break
                if max_records is not None and shown >= max_records:
                    break
            out.flush()
    finally:
        await consumer.stop()
    return shown


def register(subparsers: Subparsers) -> None:
    p = add_broker_command(
        subparsers,
        "tail",
        run,
        help="follow responses, decisions or any of the worker's topics, pretty or JSON",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "what",
        nargs="?",
        choices=sorted(KINDS),
        help="which of the worker's topics (default: responses, or the role of --topic)",
    )
    p.add_argument("--topic", help="read this topic instead (any of ours, or a reply_topic)")
    p.add_argument("--tenant")
    p.add_argument("--model", help="the chosen model")
    p.add_argument("--status", choices=["ok", "error"], help="responses only")
    p.add_argument("--request-id")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=COUNT, dest="max_records", help="stop after N matching records")
    p.add_argument(
        "--idle-timeout-s",
        type=POSITIVE,
        help="stop after this long without records",
    )
    p.add_argument("--json", action="store_true", help="the records' JSON, one per line")


def run(args: argparse.Namespace, conn: Connection) -> int:
    filters = Filters(
        tenant=args.tenant, model=args.model, status=args.status, request_id=args.request_id
    )
    try:
        asyncio.run(
            tail(
                conn,
                args.what,
                topic=args.topic,
                filters=filters,
                from_beginning=args.from_beginning,
                max_records=args.max_records,
                idle_timeout_s=args.idle_timeout_s,
                as_json=args.json,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0
