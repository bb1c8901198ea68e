"""End-to-end throughput of one worker process, against a bare aiokafka pass-through.

    .venv/bin/python bench/worker_bench.py [--requests 5000] [--requests-500ms 10000]
        [--profile DIR]   # py-spy (when installed) samples each worker: DIR/worker-<tag>.txt

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). The
provider simulator runs in its own process (`llmroute sim-provider`), the worker in its own
(`llmroute run`), so the three do not share an event loop. Prints one JSON object:

- passthrough_msgs_per_s: consume -> produce of the same request records with aiokafka alone
- req_per_s_0ms / req_per_s_500ms: first response to last, one worker, simulator latency 0 / 500 ms
- ratio_0ms: worker / pass-through at 0 ms (goal >= 0.5)
- route_overhead_p50_ms / _p99_ms: one routing decision (features + predict + policy), in process
- lost: requests without a response (must be 0); peak_rss_mb: the worker process's VmHWM
- cpu_ms_per_req_0ms / _500ms: the worker process's CPU (user + system, /proc) from its first
  response to its last, per response: unlike the rates, it barely moves when other processes
  load the machine
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import schemas
from routers.artifact import load_artifact
from worker import config as config_mod
from worker.pipeline.routing import RoutingCore
from worker.sim.harness import (
    SIM_KEYS,
    cpu_s,
    create_topics,
    dataset_rows,
    local_broker,
    peak_rss_mb,
    produce,
    request_event,
    spawn_member,
    start_sim,
    topic_names,
    train_artifact,
    worker_config_data,
)

PARTITIONS = 6


async def _passthrough(bootstrap: str, source: str, sink: str, n: int) -> float:
    """Consume n records and produce each to `sink`, awaiting acks, committing as it goes."""
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"pt-{source}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    done, started = 0, 0.0
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=500)
            if batch and not started:
                started = time.perf_counter()
            futures = []
            for records in batch.values():
                for r in records:
                    futures.append(await producer.send(sink, r.value, key=r.key))
            await asyncio.gather(*futures)
            done += len(futures)
            if batch:
                await consumer.commit()
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


async def _count_responses(
    bootstrap: str, topic: str, n: int, timeout_s: float, pid: int
) -> tuple[int, float, float]:
    """Responses seen, their rate, and the worker's CPU ms per response after the first."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: set[bytes] = set()
    first = last = 0.0
    cpu_start, seen_start = 0.0, 0
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    ts = r.timestamp / 1000
                    first = ts if not first else min(first, ts)
                    last = max(last, ts)
                    seen.add(r.key or b"")
            if seen and not seen_start:
                cpu_start, seen_start = cpu_s(pid), len(seen)
        cpu_ms = (cpu_s(pid) - cpu_start) * 1000 / max(1, len(seen) - seen_start)
    finally:
        await consumer.stop()
    return len(seen), (len(seen) / (last - first) if last > first else 0.0), cpu_ms


def _profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` until it exits, as collapsed stacks (one `frames count` a line,
    idle time left out): where the worker's CPU goes under the bench's load."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _worker_run(
    bootstrap: str,
    artifact: Path,
    latency: str,
    n: int,
    tag: str,
    workdir: Path,
    max_in_flight: int,
    profile: Path | None = None,
    answer_journal: bool = True,
) -> dict[str, Any]:
    sim, base_url = start_sim(latency)
    req = f"bench-{tag}-{int(time.time())}"
    topics = topic_names(req)
    await create_topics(bootstrap, [req], PARTITIONS)
    rows = dataset_rows(2000)
    values: list[tuple[bytes | None, bytes]] = [
        (f"r-{i}".encode(), schemas.encode(request_event(rows[i % len(rows)], i))) for i in range(n)
    ]
    await produce(bootstrap, req, values, linger_ms=20)
    data = worker_config_data(
        bootstrap,
        topics,
        artifact,
        base_url,
        loop={
            "max_in_flight": max_in_flight,
            "resume_below": max_in_flight * 3 // 4,
            "answer_journal": answer_journal,
        },
        providers={"max_connections": max_in_flight},
    )
    path = workdir / f"{tag}.json"
    path.write_text(json.dumps(data))
    proc = spawn_member(path, workdir / f"{tag}.log")
    spy = _profile(proc.pid, profile / f"worker-{tag}.txt") if profile is not None else None
    try:
        got, rate, cpu_ms = await _count_responses(
            bootstrap, topics["responses"], n, timeout_s=300, pid=proc.pid
        )
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if spy is not None:
            spy.wait(timeout=60)
        sim.terminate()
        sim.wait(timeout=30)
    pt_rate = 0.0
    if tag == "0ms":
        await create_topics(bootstrap, [f"{req}.pt"], PARTITIONS)
        pt_rate = await _passthrough(bootstrap, req, f"{req}.pt", n)
    return {"rate": rate, "lost": n - got, "rss": rss, "passthrough": pt_rate, "cpu_ms": cpu_ms}


def _route_overhead(artifact: Path) -> tuple[float, float]:
    """Per-request decision time with the worker's own RoutingCore, on 500-token-ish prompts."""
    rows = dataset_rows(400)
    topics = {"requests": "bench.requests"}
    config = config_mod.parse(worker_config_data("x:1", topics, artifact, "http://127.0.0.1:1"))
    core = RoutingCore(config, load_artifact(artifact), config.models)
    times = []
    for i in range(2000):
        event = request_event(rows[i % len(rows)], i)
        t0 = time.perf_counter()
        core.decide(event, core.resolve(event))
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--requests-500ms", type=int, default=10000)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output folder")
    parser.add_argument(
        "--answer-journal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="loop.answer_journal (the worker's default: on)",
    )
    args = parser.parse_args()
    os.environ.update(SIM_KEYS)
    async with local_broker("bench") as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            artifact = train_artifact(workdir / "router", dataset_rows(2000))
            p50, p99 = _route_overhead(artifact)
            zero = await _worker_run(
                bootstrap,
                artifact,
                "fixed:0",
                args.requests,
                "0ms",
                workdir,
                256,
                args.profile,
                args.answer_journal,
            )
            slow = await _worker_run(
                bootstrap,
                artifact,
                "fixed:500",
                args.requests_500ms,
                "500ms",
                workdir,
                2000,
                args.profile,
                args.answer_journal,
            )
    out = {
        "req_per_s_0ms": round(zero["rate"], 1),
        "req_per_s_500ms": round(slow["rate"], 1),
        "passthrough_msgs_per_s": round(zero["passthrough"], 1),
        "ratio_0ms": round(zero["rate"] / zero["passthrough"], 3) if zero["passthrough"] else None,
        "route_overhead_p50_ms": round(p50, 3),
        "route_overhead_p99_ms": round(p99, 3),
        "lost": zero["lost"] + slow["lost"],
        "peak_rss_mb": round(max(zero["rss"], slow["rss"]), 1),
        "cpu_ms_per_req_0ms": round(zero["cpu_ms"], 3),
        "cpu_ms_per_req_500ms": round(slow["cpu_ms"], 3),
        "requests": {"0ms": args.requests, "500ms": args.requests_500ms},
        "answer_journal": args.answer_journal,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
