"""Scaling out by consumer-group members, and a rolling restart with static membership.

    .venv/bin/python bench/scale_bench.py [--requests 6000] [--members 1,2,4]
                                          [--restart-requests 15000] [--restart-rate 250]

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). One
provider simulator process answers every call after a fixed 500 ms; each member is its own
`llmroute run` process; the request topic has 12 partitions.

1. Scaling: for each member count, a fresh group and topic set; the members start and report
   ready (/readyz), then the whole batch of requests is produced at once. req/s is counted from
   the first response to the last (the responses' record timestamps).
   efficiency_k = req_per_s[k] / (k * req_per_s[1]).
2. Rolling restart: 4 members with static membership (`group_instance_id` member-0..3) under a
   steady stream; each member in turn gets SIGTERM (drain, commit, exit 0), is restarted with
   the same `group_instance_id` and must report ready before the next one goes.
   rolling_restart_lost: requests without a response (must be 0);
   rolling_restart_repeated_calls: simulator calls minus requests (model calls made twice);
   rolling_restart_repeated_responses: responses published more than once for one request.

Prints one JSON object (SCALE_BENCH_LOG_LEVEL=INFO with --workdir DIR keeps the members' logs).
Everything (broker, simulator, members, this process) shares the machine:
on 2 cores the members compete for the same CPU, so scaling efficiency measures the machine as
much as the design (`machine.cpus` says how many there were).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from worker.config.kafka import TopicSettings
from worker.kafka.topics import ensure_topics
from worker.sim.harness import (
    SIM_KEYS,
    Follower,
    Member,
    all_ready,
    create_topics,
    dataset_rows,
    local_broker,
    produce,
    request_values,
    sim_calls,
    start_sim,
    topic_names,
    train_artifact,
    worker_config_data,
)

PARTITIONS = 12
LATENCY = "fixed:500"
LOG_LEVEL = os.environ.get("SCALE_BENCH_LOG_LEVEL", "WARNING")  # the members' log level


async def _topics(bootstrap: str, tag: str) -> dict[str, str]:
    names = topic_names(f"scale-{tag}-{int(time.time())}")
    await create_topics(bootstrap, [names["requests"]], PARTITIONS)
    # every other topic before anyone subscribes (a subscription must not auto-create one)
    await ensure_topics({"bootstrap_servers": bootstrap}, TopicSettings(**names), 1)
    return names


def _config(
    bootstrap: str, topics: dict[str, str], artifact: Path, base_url: str, **kafka: Any
) -> dict[str, Any]:
    return worker_config_data(
        bootstrap,
        topics,
        artifact,
        base_url,
        kafka={"group_id": f"g-{topics['requests']}", **kafka},
        loop={"max_in_flight": 2000, "resume_below": 1500, "drain_timeout_s": 30.0},
        providers={"max_connections": 2000},
    )


async def _scaling_run(
    bootstrap: str,
    artifact: Path,
    base_url: str,
    k: int,
    n: int,
    workdir: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    topics = await _topics(bootstrap, f"m{k}")
    data = _config(bootstrap, topics, artifact, base_url)
    members = [Member(workdir, f"scale{k}-{i}", data, LOG_LEVEL) for i in range(k)]
    try:
        for m in members:
            m.start()
        await all_ready(members)
        await asyncio.sleep(3.0)  # joins settle: no rebalance left pending
        await all_ready(members)
        async with Follower(bootstrap, topics["responses"], poll_ms=300) as responses:
            cpu0 = sum(m.cpu_s() for m in members)
            await produce(bootstrap, topics["requests"], request_values(rows, 0, n), linger_ms=20)
            await responses.wait_for_count(n, timeout_s=300)
            cpu_ms = (sum(m.cpu_s() for m in members) - cpu0) * 1000 / max(1, n)
        rcs = await asyncio.gather(*(m.stop() for m in members))
    finally:
        for m in members:
            m.kill()
    return {
        "rate": responses.rate,
        "lost": n - len(responses.counts),
        "exit_codes": rcs,
        "cpu_ms": cpu_ms,
    }


async def _rolling_restart(
    bootstrap: str,
    artifact: Path,
    base_url: str,
    n: int,
    rate: float,
    workdir: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    topics = await _topics(bootstrap, "rolling")
    members = [
        Member(
            workdir,
            f"roll-{i}",
            _config(
                bootstrap,
                topics,
                artifact,
                base_url,
                group_instance_id=f"member-{i}",
                session_timeout_ms=30_000,
            ),
            LOG_LEVEL,
        )
        for i in range(4)
    ]
    calls_before = sim_calls(base_url)
    restart_s: list[tuple[float, float]] = []  # (SIGTERM to exit, start to ready)
    exit_codes: list[int] = []
    try:
        for m in members:
            m.start()
        await all_ready(members)
        async with Follower(bootstrap, topics["responses"], poll_ms=300) as responses:
            feed = asyncio.create_task(
                produce(
                    bootstrap,
                    topics["requests"],
                    request_values(rows, 0, n),
                    rate=rate,
                    linger_ms=20,
                )
            )
            await responses.wait_for_count(
                n // 10, timeout_s=120
            )  # under load before the first stop
            at_first_stop = len(responses.counts)
            for m in members:
                t0 = time.monotonic()
                exit_codes.append(await m.stop())
                t1 = time.monotonic()
                m.start()  # the same group_instance_id: no rebalance, the same partitions
                await all_ready([m])
                restart_s.append((t1 - t0, time.monotonic() - t1))
            at_last_rejoin = len(responses.counts)
            await feed
            await responses.wait_for_count(n, timeout_s=300)
            await asyncio.sleep(2.0)  # late duplicates, if any, show up too
        exit_codes += await asyncio.gather(*(m.stop() for m in members))
    finally:
        for m in members:
            m.kill()
    calls = sim_calls(base_url) - calls_before
    return {
        "lost": n - len(responses.counts),
        "repeated_calls": calls - n,
        "repeated_responses": sum(c - 1 for c in responses.counts.values()),
        "stop_s": [round(a, 1) for a, _ in restart_s],
        "rejoin_s": [round(b, 1) for _, b in restart_s],
        "answered_at_first_stop": at_first_stop,
        "answered_at_last_rejoin": at_last_rejoin,
        "exit_codes": exit_codes,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000, help="per member count")
    parser.add_argument("--members", default="1,2,4")
    parser.add_argument("--restart-requests", type=int, default=15000)
    parser.add_argument("--restart-rate", type=float, default=250.0, help="requests/s fed")
    parser.add_argument("--workdir", help="keep configs and member logs here (default: temporary)")
    args = parser.parse_args()
    counts = [int(x) for x in args.members.split(",")]
    os.environ.update(SIM_KEYS)
    async with local_broker("scale-bench") as bootstrap:
        sim, base_url = start_sim(LATENCY)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(args.workdir or tmp)
                await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
                rows = dataset_rows(2000)
                artifact = train_artifact(workdir / "router", rows)
                scaling = {}
                for k in counts:
                    scaling[k] = await _scaling_run(
                        bootstrap, artifact, base_url, k, args.requests, workdir, rows
                    )
                rolling = await _rolling_restart(
                    bootstrap,
                    artifact,
                    base_url,
                    args.restart_requests,
                    args.restart_rate,
                    workdir,
                    rows,
                )
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    rates = {str(k): round(v["rate"], 1) for k, v in scaling.items()}
    base = scaling[counts[0]]["rate"] / counts[0] if counts and scaling[counts[0]]["rate"] else 0
    efficiency = {
        f"efficiency_{k}": round(v["rate"] / (k * base), 3) if base else None
        for k, v in scaling.items()
    }
    out = {
        "req_per_s": rates,
        **efficiency,
        "scaling_lost": sum(v["lost"] for v in scaling.values()),
        "rolling_restart_lost": rolling["lost"],
        "rolling_restart_repeated_calls": rolling["repeated_calls"],
        "rolling_restart_repeated_responses": rolling["repeated_responses"],
        "cpu_ms_per_req": {str(k): round(v["cpu_ms"], 3) for k, v in scaling.items()},
        "rolling_restart_stop_s": rolling["stop_s"],
        "rolling_restart_rejoin_s": rolling["rejoin_s"],
        # how far the stream had got: restarts ran between these two counts of answered requests
        "rolling_restart_answered_at_first_stop": rolling["answered_at_first_stop"],
        "rolling_restart_answered_at_last_rejoin": rolling["answered_at_last_rejoin"],
        "member_exit_codes": sorted(
            {rc for v in scaling.values() for rc in v["exit_codes"]} | set(rolling["exit_codes"])
        ),
        "partitions": PARTITIONS,
        "simulator_latency": LATENCY,
        "requests": {
            "scaling_per_run": args.requests,
            "rolling_restart": args.restart_requests,
            "rolling_restart_rate_per_s": args.restart_rate,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
