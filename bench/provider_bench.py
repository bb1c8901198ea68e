"""Provider transport benchmark: prints one JSON object.

1. Overhead: calls through RouterClient -> OpenAITransport -> httpx against the simulator at
   0 ms latency (simulator in a separate process), fixed concurrency; calls/s and p50/p99.
2. Capacity: the simulator at 1 s latency; waves of N concurrent calls from one process; the
   largest N whose calls all succeed is ``max_in_flight`` (the simulator's own peak count of
   concurrent requests is reported too).

    .venv/bin/python bench/provider_bench.py [--calls 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time

import httpx

from worker.providers import ClientSettings, CompletionRequest, HttpSettings, RouterClient
from worker.providers.catalogue import WEAK_MODEL, simulator_catalogue

ENV = {"SIM_OPENAI_API_KEY": "sk-bench", "SIM_ANTHROPIC_API_KEY": "sk-ant-bench"}


def start_sim(latency: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "sim-provider", "--port", "0", "--latency", latency],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, str(ready["base_url"])


def stop_sim(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def overhead(base_url: str, calls: int, concurrency: int) -> dict[str, float]:
    settings = ClientSettings(http=HttpSettings(max_connections=concurrency * 2))
    latencies: list[float] = []
    errors = 0
    async with RouterClient(simulator_catalogue(base_url), settings, env=ENV) as client:
        queue = list(range(calls))

        async def worker() -> None:
            nonlocal errors
            while queue:
                i = queue.pop()
                t = time.perf_counter()
                try:
                    await client.complete(CompletionRequest.from_prompt(f"bench {i}"), [WEAK_MODEL])
                except Exception:
                    errors += 1
                latencies.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(worker() for _ in range(min(50, concurrency))))  # warm-up pool
        latencies.clear()
        queue = list(range(calls))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "calls_per_s": round(calls / wall, 1),
        "p50_ms": round(pct(latencies, 0.5), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        "errors": errors,
    }


async def capacity(base_url: str, waves: list[int]) -> dict[str, object]:
    settings = ClientSettings(
        http=HttpSettings(max_connections=max(waves) + 100, max_keepalive_connections=max(waves)),
        default_deadline_s=60.0,
    )
    results: list[dict[str, float | int]] = []
    best = 0
    errors_total = 0
    async with (
        RouterClient(simulator_catalogue(base_url), settings, env=ENV) as client,
        httpx.AsyncClient() as http,
    ):
        for n in waves:
            await http.get(f"{base_url}/sim/stats?reset=1")
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(
                    client.complete(CompletionRequest.from_prompt(f"c{i}"), [WEAK_MODEL])
                    for i in range(n)
                ),
                return_exceptions=True,
            )
            wall = time.perf_counter() - started
            errors = sum(isinstance(o, BaseException) for o in outcomes)
            errors_total += errors
            peak = (await http.get(f"{base_url}/sim/stats?reset=1")).json()["max_in_flight"] - 1
            results.append(
                {"concurrent": n, "wall_s": round(wall, 2), "errors": errors, "server_peak": peak}
            )
            if errors:
                break
            # held in flight: all succeeded and the simulator saw them concurrently
            best = max(best, min(n, peak))
    return {
        "max_in_flight": best,
        "server_peak_in_flight": max(int(r["server_peak"]) for r in results),
        "waves": results,
        "errors": errors_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--waves", default="1000,2500,5000")
    args = parser.parse_args()
    proc, base = start_sim("fixed:0")
    try:
        first = asyncio.run(overhead(base, args.calls, args.concurrency))
    finally:
        stop_sim(proc)
    proc, base = start_sim("fixed:1000")
    try:
        second = asyncio.run(capacity(base, [int(w) for w in args.waves.split(",")]))
    finally:
        stop_sim(proc)
    print(
        json.dumps(
            {
                "calls_per_s": first["calls_per_s"],
                "p50_ms": first["p50_ms"],
                "p99_ms": first["p99_ms"],
                "overhead_concurrency": args.concurrency,
                "max_in_flight": second["max_in_flight"],
                "server_peak_in_flight": second["server_peak_in_flight"],
                "capacity_waves": second["waves"],
                "errors": int(first["errors"]) + int(second["errors"]),  # type: ignore[call-overload]
                "targets": {"calls_per_s": 2000, "max_in_flight": 5000},
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            }
        )
    )


if __name__ == "__main__":
    main()
