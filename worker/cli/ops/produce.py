"""`llmroute produce`: feed RouteRequest records to the request topic from a JSONL file or stdin.

Each non-blank input line is one of:

- a RouteRequest event (a JSON object with `messages`): `schema_version`, `request_id`,
  `tenant` and `created_at` are filled in when missing, then the event is validated by the same
  decoder the worker uses;
- a routing-dataset row (a JSON object with `prompt`, as in `mmlu_dev.jsonl`) or a JSON string;
- any other text: the line itself is the prompt.

Records are keyed by `request_id` (the worker's contract), sent with `acks=all` and an
idempotent producer, paced by `--rate`; invalid lines are reported on stderr and skipped (exit
status 1 when there were any). A summary JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaProducer

import schemas
from routers.dataset import is_utf8
from schemas.events import Mode
from worker.cli import COUNT, POSITIVE, Subparsers, UserError
from worker.cli.kafka_args import Connection
from worker.cli.ops.common import Pacer, Progress, add_broker_command, partition_counts


@dataclass(frozen=True, kw_only=True)
class RequestDefaults:
    """What a plain prompt (or an event missing these fields) is given."""

    tenant: str = "default"
    id_prefix: str = "req-"
    policy: str | None = None
    max_tokens: int | None = None
    mode: Mode = "interactive"
    reply_topic: str | None = None


class InvalidLine(ValueError):
    pass


def request_from_line(
    line: str, index: int, defaults: RequestDefaults, now: datetime
) -> schemas.RouteRequest:
    """One input line -> a validated RouteRequest (`index` numbers generated request ids)."""
    text = line.strip()
    if not is_utf8(text):  # the reader hands undecodable bytes over as lone surrogates
        raise InvalidLine("not UTF-8 text")
    prompt: str | None = None
    obj: Any = None
    if text[:1] in ("{", '"'):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise InvalidLine(f"not JSON: {exc}") from None
        if not is_utf8(json.dumps(obj, ensure_ascii=False)):
            raise InvalidLine("a lone surrogate escape (\\ud800-\\udfff): not valid Unicode text")
    if obj is None:
        prompt = text
    elif isinstance(obj, str):
        prompt = obj
    elif isinstance(obj, dict) and "messages" in obj:
        event = dict(obj)
        event.setdefault("schema_version", schemas.SCHEMA_VERSION)
        event.setdefault("request_id", f"{defaults.id_prefix}{index:06d}")
        event.setdefault("tenant", defaults.tenant)
        event.setdefault("created_at", now.isoformat())
        try:
            return schemas.decode(json.dumps(event).encode(), schemas.RouteRequest)
        except schemas.InvalidEvent as exc:
            raise InvalidLine(str(exc)) from None
    elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
        prompt = obj["prompt"]
    else:
        raise InvalidLine("a JSON line must be a RouteRequest (with `messages`) or have `prompt`")
    if not prompt:
        raise InvalidLine("empty prompt")
    routing = schemas.RoutingOptions(policy=defaults.policy, mode=defaults.mode)
    return schemas.RouteRequest(
        schema_version=1,
        request_id=f"{defaults.id_prefix}{index:06d}",
        tenant=defaults.tenant,
        messages=[schemas.Message(role="user", content=prompt)],
        created_at=now,
        params=schemas.GenerationParams(max_tokens=defaults.max_tokens),
        routing=routing,
        reply_topic=defaults.reply_topic,
    )


@dataclass
class ProduceResult:
    topic: str
    produced: int = 0
    invalid: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        rate = self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return {
            "topic": self.topic,
            "produced": self.produced,
            "invalid": self.invalid,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(rate, 1),
        }


async def produce(
    conn: Connection,
    lines: Iterable[str],
    *,
    topic: str | None = None,
    defaults: RequestDefaults = RequestDefaults(),
    rate_per_s: float | None = None,
    limit: int | None = None,
    total: int | None = None,
    progress: bool = False,
    stderr: IO[str] | None = None,
    window: int = 2_000,
) -> ProduceResult:
    """Send each valid line as a RouteRequest; waits for every acknowledgement."""
    stderr = sys.stderr if stderr is None else stderr
    target = topic or conn.topics.requests
    result = ProduceResult(target)
    pacer = Pacer(rate_per_s)
    shown_total = min(total, limit) if total is not None and limit is not None else total or limit
    bar = Progress(stderr, label="produce", total=shown_total, enabled=progress)
    producer = AIOKafkaProducer(
        acks="all", enable_idempotence=True, linger_ms=5, **conn.client_kwargs()
    )
    started = time.monotonic()
    pending: list[Awaitable[Any]] = []
    try:
        await producer.start()
        for lineno, line in enumerate(lines, 1):
            if limit is not None and result.produced + len(pending) >= limit:
                break
            if not line.strip():
                continue
            try:
                event = request_from_line(
                    line, result.produced + len(pending), defaults, datetime.now(UTC)
                )
            except InvalidLine as exc:
                result.invalid += 1
                stderr.write(f"line {lineno}: skipped: {exc}\n")
                continue
            wait_s = pacer.delay()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            pending.append(
                await producer.send(target, schemas.encode(event), key=event.request_id.encode())
            )
            if len(pending) >= window or rate_per_s is not None:
                result.produced += await _settle(pending, block=len(pending) >= window)
            bar.update(result.produced + len(pending))
        result.produced += await _settle(pending, block=True)
    finally:
        await producer.stop()
        result.elapsed_s = time.monotonic() - started
        bar.close(result.produced)
    return result


async def _settle(pending: list[Awaitable[Any]], *, block: bool) -> int:
    """Await (block) or collect the finished acknowledgements; returns how many were acked."""
    if block:
        await asyncio.gather(*pending)
        n = len(pending)
        pending.clear()
        return n
    done = [f for f in pending if isinstance(f, asyncio.Future) and f.done()]
    for f in done:
        f.result()  # raises a send error
        pending.remove(f)
    return len(done)


def register(subparsers: Subparsers) -> None:
    p = add_broker_command(
        subparsers,
        "produce",
        run,
        help="send RouteRequest records from a JSONL file or stdin (rate control, progress)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", default="-", help="JSONL or text file; '-' is stdin")
    p.add_argument("--topic", help="target topic (default: [topics].requests)")
    p.add_argument(
        "--rate",
        type=POSITIVE,
        help="at most this many requests per second",
    )
    p.add_argument("--limit", type=COUNT, help="stop after this many requests")
    p.add_argument("--tenant", default="default", help="tenant of generated requests")
    p.add_argument("--id-prefix", help="request id prefix (default: a fresh 'cli-XXXXXXXX-')")
    p.add_argument("--policy", help="routing policy of generated requests")
    p.add_argument("--max-tokens", type=COUNT, help="max_tokens of generated requests")
    p.add_argument("--mode", choices=["interactive", "batch"], default="interactive")
    p.add_argument("--reply-topic", help="reply_topic of generated requests")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace, conn: Connection) -> int:
    defaults = RequestDefaults(
        tenant=args.tenant,
        id_prefix=args.id_prefix or f"cli-{uuid.uuid4().hex[:8]}-",
        policy=args.policy,
        max_tokens=args.max_tokens,
        mode=args.mode,
        reply_topic=args.reply_topic,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    target = args.topic or conn.topics.requests
    if target not in asyncio.run(partition_counts(conn.client_kwargs(), [target])):
        # a send would make the broker auto-create it with its default (1) partition
        raise UserError(
            f"topic {target!r} does not exist",
            "`llmroute topics create --config FILE` creates the worker's topics; or start a member",
        )
    # bytes that are not UTF-8 reach `request_from_line` as lone surrogates: that line is
    # skipped as invalid, the others are sent. A byte order mark at the start is not data.
    if args.input == "-":
        fh: IO[str] = sys.stdin
        if isinstance(fh, io.TextIOWrapper):
            fh.reconfigure(encoding="utf-8-sig", errors="surrogateescape")
        total = None
    else:
        path = Path(args.input)
        try:
            fh = path.open(encoding="utf-8-sig", errors="surrogateescape")
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        total = _count_lines(path) if progress else None
    try:
        result = asyncio.run(
            produce(
                conn,
                fh,
                topic=args.topic,
                defaults=defaults,
                rate_per_s=args.rate,
                limit=args.limit,
                total=total,
                progress=progress,
            )
        )
    finally:
        if fh is not sys.stdin:
            fh.close()
    print(json.dumps(result.summary()))
    return 1 if result.invalid else 0


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())
