"""Provider transport benchmark: prints one JSON object.

1. Overhead: calls through ModelClient -> OpenAIAdapter -> httpx against the simulator at
   0 ms latency (simulator in a separate process), fixed concurrency; calls/s and p50/p99.
2. Capacity: the simulator at 1 s latency; waves of N concurrent calls from one process, each
   wave run twice on the same client: a cold pass (the pool opens its connections) and a warm
   pass (keep-alive connections in place, as in a long-running worker). ``max_in_flight`` is the
   largest N of a warm pass whose calls all succeeded and that the simulator saw in flight at
   once (its own peak count of concurrent requests); cold passes are reported alongside.

The client process raises its cyclic-GC gen-0 threshold (``--gc-gen0``, 0 keeps CPython's 700):
with thousands of calls in flight the default collector costs ~30% of the client's CPU. The
worker process would want the same setting.

    .venv/bin/python bench/provider_bench.py [--calls 3000] [--concurrency 16] [--waves 1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time

import httpx

from worker.config.models import WEAK_MODEL, simulator_catalogue
from worker.providers import ClientSettings, CompletionRequest, HttpSettings, ModelClient

ENV = {"SIM_OPENAI_API_KEY": "sk-bench", "SIM_ANTHROPIC_API_KEY": "sk-ant-bench"}


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return int(soft)


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
    async with ModelClient(simulator_catalogue(base_url), settings, env=ENV) as client:
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
        cpu = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {
        "calls_per_s": round(calls / wall, 1),
        "client_cpu_ms_per_call": round(cpu / calls * 1000, 3),
        "p50_ms": round(pct(latencies, 0.5), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        "errors": errors,
    }


async def capacity(base_url: str, waves: list[int]) -> dict[str, object]:
    settings = ClientSettings(
        http=HttpSettings(
            max_connections=max(waves) + 100,
            max_keepalive_connections=max(waves),
        ),
        default_deadline_s=60.0,
    )
    results: list[dict[str, object]] = []
    peaks: list[int] = []
    best = 0
    errors_total = 0
    async with (
        ModelClient(simulator_catalogue(base_url), settings, env=ENV) as client,
        httpx.AsyncClient() as http,
    ):
        for n, warm in [(n, warm) for n in waves for warm in (False, True)]:
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
            # the reset request itself is the only one in flight when the peak restarts, and it
            # is finished before the wave starts: the peak is the wave's own
            peak = int((await http.get(f"{base_url}/sim/stats?reset=1")).json()["max_in_flight"])
            peaks.append(peak)
            results.append(
                {
                    "concurrent": n,
                    "pool": "warm" if warm else "cold",
                    "wall_s": round(wall, 2),
                    "errors": errors,
                    "server_peak": peak,
                }
            )
            if errors:
                break
            if warm:  # held in flight: all succeeded and the simulator saw them concurrently
                best = max(best, min(n, peak))
    return {
        "max_in_flight": best,
        "server_peak_in_flight": max(peaks),
        "waves": results,
        "errors": errors_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--waves", default="1000,2500,5000")
    parser.add_argument("--gc-gen0", type=int, default=50_000)
    args = parser.parse_args()
    waves = [int(w) for w in args.waves.split(",")]
    fd_limit = raise_fd_limit(max(waves) + 1024)
    if args.gc_gen0 > 0:
        gc.set_threshold(args.gc_gen0, 50, 100)
    proc, base = start_sim("fixed:0")
    try:
        first = asyncio.run(overhead(base, args.calls, args.concurrency))
    finally:
        stop_sim(proc)
    proc, base = start_sim("fixed:1000")
    try:
        second = asyncio.run(capacity(base, waves))
    finally:
        stop_sim(proc)
    print(
        json.dumps(
            {
                "calls_per_s": first["calls_per_s"],
                "p50_ms": first["p50_ms"],
                "p99_ms": first["p99_ms"],
                "client_cpu_ms_per_call": first["client_cpu_ms_per_call"],
                "overhead_concurrency": args.concurrency,
                "max_in_flight": second["max_in_flight"],
                "server_peak_in_flight": second["server_peak_in_flight"],
                "capacity_waves": second["waves"],
                "errors": int(first["errors"]) + int(second["errors"]),  # type: ignore[call-overload]
                "targets": {"calls_per_s": 2000, "max_in_flight": 5000},
                "gc_threshold": list(gc.get_threshold()),
                "fd_limit": fd_limit,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
