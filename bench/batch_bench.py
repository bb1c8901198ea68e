"""Batch-mode requests through one worker process and the providers' Batch APIs (simulated).

    .venv/bin/python bench/batch_bench.py [--requests 100000]

Uses KAFKA_BOOTSTRAP when set, else starts the project's local broker (and stops it). The
simulator runs in its own process (`llmroute sim-provider`), the worker in its own (`llmroute
run`). All requests are produced with `mode: "batch"` first; the clock starts when the worker is
started. Prints one JSON object:

- requests; wall_s: worker start until every request is held by a submitted job (routed,
  written into batch files and submitted); answered_s: until every response is published
- files / file_bytes: batch input files uploaded (OpenAI) and their size; batches: jobs created
- cost_ratio_vs_interactive: the cost of the answers as billed (batch prices) over the same
  usage at the interactive prices of the same models (the routing is the same either way)
- lost: requests without a response; resubmitted: items sent to the provider twice (must be 0)
- peak_rss_mb: the worker process's VmHWM; worker_cpu_ms_per_req: its CPU (user + system) per
  request over the whole run; simulator_cpu_s: the simulator's CPU (it parses the files and runs
  every item at completion, on the same 2 cores)
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

import httpx
from aiokafka import AIOKafkaConsumer

import schemas
from worker.config.models import simulator_catalogue
from worker.providers.types import Usage
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


async def _follow(
    bootstrap: str, topics: dict[str, str], n: int, t0: float, timeout_s: float
) -> dict[str, Any]:
    """Watch the job records (submitted coverage) and the responses until all n are answered."""
    consumer = AIOKafkaConsumer(
        topics["batch_jobs"],
        topics["responses"],
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    submitted: set[str] = set()
    responses: dict[str, schemas.RouteResponse] = {}
    wall_s = answered_s = None
    try:
        deadline = time.monotonic() + timeout_s
        while len(responses) < n and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    if tp.topic == topics["batch_jobs"]:
                        if r.value is not None:
                            job = schemas.decode(r.value, schemas.BatchJob)
                            if job.status == "submitted":
                                submitted.update(i.request_id for i in job.items)
                    else:
                        resp = schemas.decode(r.value, schemas.RouteResponse)
                        responses[resp.request_id] = resp
            if wall_s is None and len(submitted) >= n:
                wall_s = time.perf_counter() - t0
        if len(responses) >= n:
            answered_s = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {
        "wall_s": wall_s,
        "answered_s": answered_s,
        "responses": responses,
        "submitted": len(submitted),
    }


async def run(bootstrap: str, n: int, workdir: Path) -> dict[str, Any]:
    artifact = train_artifact(workdir / "router", dataset_rows(2000))
    sim, base_url = start_sim("fixed:0")
    req = f"batchbench-{int(time.time())}"
    topics = topic_names(req)
    await create_topics(bootstrap, [req], PARTITIONS)
    rows = dataset_rows(5000)
    batch = schemas.RoutingOptions(mode="batch")
    values: list[tuple[bytes | None, bytes]] = [
        (f"r-{i}".encode(), schemas.encode(request_event(rows[i % len(rows)], i, routing=batch)))
        for i in range(n)
    ]
    await produce(bootstrap, req, values, linger_ms=20)
    del values
    data = worker_config_data(
        bootstrap,
        topics,
        artifact,
        base_url,
        loop={"max_in_flight": 60_000, "resume_below": 45_000},
        batch={
            "flush_requests": 50_000,
            "flush_age_s": 10.0,
            "poll_initial_s": 1.0,
            "poll_max_s": 5.0,
        },
    )
    path = workdir / "worker.json"
    path.write_text(json.dumps(data))
    t0 = time.perf_counter()
    proc = spawn_member(path, workdir / "worker.log")
    try:
        seen = await _follow(bootstrap, topics, n, t0, timeout_s=900)
        rss = peak_rss_mb(proc.pid)
        worker_cpu_s, sim_cpu_s = cpu_s(proc.pid), cpu_s(sim.pid)
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{base_url}/sim/stats")).json()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        sim.terminate()
        sim.wait(timeout=30)
    catalogue = simulator_catalogue(base_url)
    billed = interactive = 0.0
    for r in seen["responses"].values():
        if r.status != "ok" or r.model is None:
            continue
        usage = Usage(input_tokens=r.usage.input_tokens, output_tokens=r.usage.output_tokens)
        billed += r.cost_usd
        interactive += catalogue[r.model].cost_usd(usage)
    ok = sum(1 for r in seen["responses"].values() if r.status == "ok")
    return {
        "requests": n,
        "wall_s": round(seen["wall_s"], 2) if seen["wall_s"] is not None else None,
        "answered_s": round(seen["answered_s"], 2) if seen["answered_s"] is not None else None,
        "peak_rss_mb": round(rss, 1),
        "worker_cpu_ms_per_req": round(worker_cpu_s * 1000 / n, 3),
        "simulator_cpu_s": round(sim_cpu_s, 1),
        "files": stats["batch_files"],
        "file_bytes": stats["batch_file_bytes"],
        "batches": stats["batches_created"],
        "cost_ratio_vs_interactive": round(billed / interactive, 4) if interactive else None,
        "cost_usd": round(billed, 4),
        "cost_usd_interactive": round(interactive, 4),
        "lost": n - len(seen["responses"]),
        "ok": ok,
        "resubmitted": stats["batch_items_resubmitted"],
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.update(SIM_KEYS)
    async with local_broker("batchbench") as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            out = await run(bootstrap, args.requests, Path(tmp))
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
