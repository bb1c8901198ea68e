"""Poison records and member crashes at once: does every request still end exactly once?

    .venv/bin/python bench/chaos_bench.py [--requests 10000] [--poison 0.01] [--rate 150]
                                          [--kill-every 20] [--workdir DIR]

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). One
provider simulator process (fixed 500 ms); two `llmroute run` members of one group on a
12-partition request topic. The requests are fed at `--rate` per second, with `--poison` of them
replaced by poison records of every kind the worker must survive: invalid JSON, an oversized
dead letter (the DLQ topic takes 60 KB), reply topics `..`, `__consumer_offsets` and the
worker's own dedupe topic, a null header value (lz4-compressed), a header key that is not UTF-8
(in a snappy batch amid valid requests). Valid requests are compressed with none, gzip, snappy,
lz4 and zstd in turn. While the feed runs, member A is SIGKILLed and restarted every
`--kill-every` seconds from the start (3 kills in the default 67 s feed); once, a second after
A's first restart, member B is SIGTERMed (and restarted once it has exited; the kills do not
wait for it).

By default the members run as they should be deployed for this: static membership
(`group_instance_id`, `--membership static`; a restart within `--session-timeout-ms` gets its
partitions back without a rebalance) and `kafka.transactions` (`--transactions`; responses,
dedupe markers and offsets commit together). The response reader reads `read_committed`.
`--membership dynamic --no-transactions` is the member as configured before.

Prints one JSON object:
  requests, poison            what was fed
  lost                        valid requests without a response + poison without an end (goal 0)
  duplicate_responses         responses beyond one per valid request (goal 0)
  repeated_model_calls        simulator calls beyond one per valid request (report; goal < 1%)
  max_stall_s                 longest gap between responses while some were still owed (< 30)
  nonzero_exits               SIGTERMed members that exited non-zero (goal 0)
  peak_rss_mb                 the largest peak RSS of any member process
  in_flight_at_kills          A's in-flight requests just before each SIGKILL (what it loses)
  calling_at_kills            ... of them in the pipeline (model calls in progress)
  answered_at_kills           ... of them answered, their responses not yet committed
  journal_replays             requests each member process answered from the answer journal
                              (read before it was killed or stopped; null: no answer)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

import schemas
from worker.config.kafka import TopicSettings
from worker.kafka.topics import ensure_topics
from worker.sim.harness import (
    SIM_KEYS,
    Follower,
    Member,
    NotUtf8,
    all_ready,
    create_topics,
    dataset_rows,
    local_broker,
    request_event,
    send_raw_batch,
    sim_calls,
    start_sim,
    topic_names,
    train_artifact,
    worker_config_data,
)

PARTITIONS = 12
CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


async def _topics(bootstrap: str) -> dict[str, str]:
    names = topic_names(f"chaos-{int(time.time())}")
    await create_topics(bootstrap, [names["requests"]], PARTITIONS)
    await create_topics(
        bootstrap, [names["dlq"]], PARTITIONS, {names["dlq"]: {"max.message.bytes": "60000"}}
    )
    await ensure_topics({"bootstrap_servers": bootstrap}, TopicSettings(**names), 1)
    return names


def _poison(i: int, rows: list[dict[str, Any]], done_topic: str) -> tuple[bytes, bytes, str]:
    """The i-th poison record: (key, value, kind)."""
    kinds = ["json", "big", "reply-dots", "reply-internal", "reply-ours"]
    kind = kinds[i % len(kinds)]
    key = f"poison-{i:05d}".encode()
    if kind == "json":
        return key, b"{not json", kind
    if kind == "big":
        return key, b"\x00" * 70_000, kind
    reply = {"reply-dots": "..", "reply-internal": "__consumer_offsets", "reply-ours": done_topic}
    event = request_event(rows[i % len(rows)], i, request_id=key.decode(), reply_topic=reply[kind])
    return key, schemas.encode(event), kind


async def _feed(
    bootstrap: str,
    topics: dict[str, str],
    rows: list[dict[str, Any]],
    n: int,
    poison_every: int,
    rate: float,
) -> tuple[set[bytes], set[bytes]]:
    """Produce the requests at `rate`; returns (valid keys, poison keys)."""
    producers = {
        c: AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=20, compression_type=c
        )
        for c in CODECS
    }
    for p in producers.values():
        await p.start()
    valid: set[bytes] = set()
    poison: set[bytes] = set()
    try:
        started = time.monotonic()
        acks = []
        for i in range(n):
            ahead_s = started + i / rate - time.monotonic()
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
            if poison_every and i % poison_every == poison_every - 1:
                j = i // poison_every
                if j % 7 == 5:  # a header key that is not UTF-8, amid valid requests
                    key = f"poison-{j:05d}".encode()
                    ok = [(f"req-{i:06d}-{k}".encode(), k) for k in range(2)]
                    batch = [
                        (
                            k,
                            schemas.encode(
                                request_event(rows[i % len(rows)], i, request_id=k.decode())
                            ),
                            [],
                        )
                        for k, _ in ok
                    ]
                    batch.insert(1, (key, b"{}", [(NotUtf8("x"), b"1")]))
                    await send_raw_batch(bootstrap, topics["requests"], batch, codec=2)
                    valid.update(k for k, _ in ok)
                    poison.add(key)
                    continue
                if j % 7 == 6:  # a null header value: an ordinary request, lz4
                    key = f"req-{i:06d}".encode()
                    event = request_event(rows[i % len(rows)], i, request_id=key.decode())
                    acks.append(
                        await producers["lz4"].send(
                            topics["requests"],
                            schemas.encode(event),
                            key=key,
                            headers=[("trace", None)],
                        )
                    )
                    valid.add(key)
                    continue
                key, value, _kind = _poison(j, rows, topics["done"])
                acks.append(await producers[None].send(topics["requests"], value, key=key))
                poison.add(key)
                continue
            key = f"req-{i:06d}".encode()
            event = request_event(rows[i % len(rows)], i, request_id=key.decode())
            producer = producers[CODECS[i % len(CODECS)]]
            acks.append(await producer.send(topics["requests"], schemas.encode(event), key=key))
            valid.add(key)
        await asyncio.gather(*acks)
    finally:
        for p in producers.values():
            await p.stop()
    return valid, poison


def _gauges(member: Member) -> dict[str, float] | None:
    """The member's gauges from /metrics, by series (None when it does not answer)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{member.port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("llmroute_in_flight_requests", "llmroute_journal_replays_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _at_kill(gauges: dict[str, float] | None, series: str) -> int | None:
    value = None if gauges is None else gauges.get(series)
    return None if value is None else int(value)


async def _sigterm_and_restart(b: Member, replays: list[int | None], exits: list[int]) -> None:
    """A second after A's restart: B's replay count, then SIGTERM (its exit code), restart."""
    await asyncio.sleep(1.0)
    last = await asyncio.to_thread(_gauges, b)
    replays.append(_at_kill(last, "llmroute_journal_replays_total"))
    exits.append(await b.stop())
    b.start()


def _peak_rss_mb(member: Member) -> float:
    if member.proc is None or member.proc.poll() is not None:
        return 0.0
    try:
        for line in Path(f"/proc/{member.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    sim, base_url = start_sim("fixed:500")
    members: list[Member] = []
    kills = 0
    try:
        rows = dataset_rows(2000)
        artifact = train_artifact(workdir / "router", rows)
        topics = await _topics(bootstrap)
        kafka: dict[str, Any] = {
            "group_id": f"g-{topics['requests']}",
            "transactions": args.transactions,
        }
        if args.membership == "static":  # a restarted member rejoins as itself: no rebalance
            kafka["session_timeout_ms"] = args.session_timeout_ms

        def config(name: str) -> dict[str, Any]:
            instance = {"group_instance_id": f"chaos-{name}"} if args.membership == "static" else {}
            return worker_config_data(
                bootstrap,
                topics,
                artifact,
                base_url,
                kafka={**kafka, **instance},
                loop={
                    "max_in_flight": args.max_in_flight,
                    "resume_below": args.max_in_flight * 3 // 4,
                    "drain_timeout_s": 20.0,
                    "answer_journal": args.answer_journal,
                    "max_model_calls": args.max_model_calls,
                },
                providers={"max_connections": 2000},
            )

        a, b = Member(workdir, "a", config("a")), Member(workdir, "b", config("b"))
        members = [a, b]
        a.start()
        b.start()
        await all_ready([a, b])
        calls_before = sim_calls(base_url)
        poison_every = round(1 / args.poison) if args.poison > 0 else 0
        peak = 0.0
        exits: list[int] = []
        async with (
            # what a reader of the responses sees: nothing of an aborted transaction
            Follower(bootstrap, topics["responses"], committed_only=True) as responses,
            Follower(bootstrap, topics["dlq"]) as letters,
        ):
            feed = asyncio.create_task(
                _feed(bootstrap, topics, rows, args.requests, poison_every, args.rate)
            )
            started = time.monotonic()
            next_kill = started + args.kill_every
            sigterm: asyncio.Task[None] | None = None
            events: list[float] = []
            in_flight_at_kills: list[int | None] = []
            calling_at_kills: list[int | None] = []
            answered_at_kills: list[int | None] = []
            replays: list[int | None] = []  # each member process's, before it ends
            while not feed.done() or time.monotonic() - started < 30:
                await asyncio.sleep(0.5)
                peak = max(peak, _peak_rss_mb(a), _peak_rss_mb(b))
                if time.monotonic() >= next_kill:
                    # requests A holds (model calls in progress among them): what a SIGKILL
                    # makes the next owner redo
                    held = await asyncio.to_thread(_gauges, a)
                    in_flight_at_kills.append(_at_kill(held, "llmroute_in_flight_requests"))
                    stage = 'llmroute_in_flight_requests_by_stage{{stage="{}"}}'
                    calling_at_kills.append(_at_kill(held, stage.format("calling")))
                    answered_at_kills.append(_at_kill(held, stage.format("answered")))
                    replays.append(_at_kill(held, "llmroute_journal_replays_total"))
                    a.kill()  # SIGKILL
                    events.append(time.monotonic())
                    kills += 1
                    a.restarts += 1
                    a.start()
                    if sigterm is None:  # B stops while the group rebalances for A's return
                        sigterm = asyncio.create_task(_sigterm_and_restart(b, replays, exits))
                    # every `kill_every` from the start, whatever B's stop takes meanwhile
                    next_kill += args.kill_every
            if sigterm is not None:
                await sigterm
            valid, poison = feed.result()
            deadline = time.monotonic() + args.settle_s
            while time.monotonic() < deadline:
                peak = max(peak, _peak_rss_mb(a), _peak_rss_mb(b))
                if valid <= set(responses.counts) and poison <= (
                    set(letters.counts) | set(responses.counts)
                ):
                    break
                await asyncio.sleep(0.5)
            peak = max(peak, _peak_rss_mb(a), _peak_rss_mb(b))
            for m in (a, b):
                last = await asyncio.to_thread(_gauges, m)
                replays.append(_at_kill(last, "llmroute_journal_replays_total"))
            exits.append(await a.stop())
            exits.append(await b.stop())
            await asyncio.sleep(1.0)
        calls = sim_calls(base_url) - calls_before
        answered = set(responses.counts)
        ended = set(letters.counts) | answered
        gaps = [t2 - t1 for t1, t2 in zip(responses.arrivals, responses.arrivals[1:], strict=False)]
        worst = max(range(len(gaps)), key=gaps.__getitem__, default=None)
        details = {
            "lost_keys": sorted(k.decode() for k in (valid - answered) | (poison - ended)),
            "duplicated_keys": sorted(k.decode() for k, c in responses.counts.items() if c > 1),
            "worst_stall_starts_s": None
            if worst is None
            else round(responses.arrivals[worst] - started, 1),
            "events_s": [round(t - started, 1) for t in events],
        }
        (workdir / "chaos_details.json").write_text(json.dumps(details, indent=1))
        return {
            "requests": args.requests,
            "valid_requests": len(valid),
            "poison": len(poison),
            "lost": len(valid - answered) + len(poison - ended),
            "duplicate_responses": sum(c - 1 for k, c in responses.counts.items() if k in valid),
            "repeated_model_calls": calls - len(valid),
            "max_stall_s": round(max(gaps, default=0.0), 1),
            "nonzero_exits": sum(1 for rc in exits if rc != 0),
            "exit_codes": exits,
            "peak_rss_mb": round(peak, 1),
            "sigkills": kills,
            "in_flight_at_kills": in_flight_at_kills,
            "calling_at_kills": calling_at_kills,
            "answered_at_kills": answered_at_kills,
            "journal_replays": replays,
            "rate_per_s": args.rate,
            "membership": args.membership,
            "transactions": args.transactions,
            "max_in_flight": args.max_in_flight,
            "answer_journal": args.answer_journal,
            "max_model_calls": args.max_model_calls,
        }
    finally:
        for m in members:
            m.kill()
        sim.terminate()
        sim.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--poison", type=float, default=0.01, help="share of poison records")
    parser.add_argument("--rate", type=float, default=150.0, help="records fed per second")
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=180.0, help="wait for the rest")
    parser.add_argument("--workdir", help="keep configs and member logs here")
    parser.add_argument(
        "--membership",
        choices=["static", "dynamic"],
        default="static",
        help="static: each member has a group_instance_id (a restart within the session "
        "timeout gets its partitions back without a rebalance); dynamic: none",
    )
    parser.add_argument("--session-timeout-ms", type=int, default=30_000)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="loop.max_in_flight of each member: the most requests a SIGKILL can catch mid-way",
    )
    parser.add_argument(
        "--answer-journal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="loop.answer_journal: paid answers journalled as they arrive (the default)",
    )
    parser.add_argument(
        "--max-model-calls",
        type=int,
        default=None,
        help="loop.max_model_calls of each member (default: none, as the worker's default)",
    )
    parser.add_argument(
        "--transactions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kafka.transactions: responses, markers and offsets commit together",
    )
    args = parser.parse_args()
    os.environ.update(SIM_KEYS)
    async with local_broker("chaos-bench") as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(args.workdir or tmp)
            await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
            result = await _run(args, bootstrap, workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
