"""Several deployments of one model, and latency budgets: prints one JSON object.

Three simulated deployments of one model answer in about 100, 300 and 900 ms (lognormal, sigma
``--sigma``), each a simulator on 127.0.0.1 (in this process). Three phases:

1. Failover: ``--calls`` calls at ``--concurrency`` through the client with
   ``latency-based-routing``, after ``--warmup`` calls one at a time that explore each
   deployment once (reported, not counted); half-way the fastest deployment goes down
   (``--outage``: "reset" refuses, "503" answers 503, "timeout" hangs). ``p50_ms`` / ``p99_ms``
   over both halves, and per half; the goal is each half's p99 within 20% of the fastest healthy
   deployment's own p99 (measured first by calling that deployment alone, same load).
   ``share_fastest``: calls answered by the fastest healthy deployment. ``failed_over``: calls
   that met the failed deployment and still ended on another within their deadline, against
   ``calls_on_failed``.
2. Rate limits: the deployments have rpm limits (the simulators answer 429 beyond them, with
   ``retry-after`` and ``x-ratelimit-*``) and the catalogue says so; two clients stand for two
   group members, each with half of every limit. ``rate_limit_429s`` counts the 429s the
   simulators sent (goal 0).
3. Deadlines: a second, better but slower model (about 1500 ms) joins; requests carry a
   ``max_latency_ms`` drawn from ``--budgets``; the policy (routers.policy.decide) excludes
   models expected to miss it, using the client's live per-deployment measurements, and the
   client orders deployments by the budget. ``deadline_misses`` counts answers slower than
   their budget where some model was expected to meet it (after a warm-up of
   ``--warmup`` calls per model, not counted).

    .venv/bin/python bench/deploy_bench.py [--calls 400] [--concurrency 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from routers.policy import PolicyOptions, decide
from worker.config.models import Catalogue
from worker.providers import ClientSettings, CompletionRequest, HttpSettings, ModelClient
from worker.providers.errors import ProviderError
from worker.sim import Latency, RateLimit, SimConfig, Simulator

KEY = {"BENCH_KEY": "sk-bench-0123456789"}
MODEL, BIG = "llama", "big"
PROFILE_MS = {"fast": 100.0, "mid": 300.0, "slow": 900.0}
DEADLINE_S = 10.0


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def catalogue(
    sims: dict[str, Simulator],
    strategy: str = "latency-based-routing",
    rpm: dict[str, int] | None = None,
    big: Simulator | None = None,
) -> Catalogue:
    deployments = []
    for name, sim in sims.items():
        entry: dict[str, Any] = {"name": name, "base_url": sim.openai_base_url}
        if rpm is not None:
            entry["rpm"] = rpm[name]
        deployments.append(entry)
    common = {
        "provider": "openai",
        "api_key_env": "BENCH_KEY",
        "provider_model": "sim-model",
        "input_usd_per_mtok": 0.6,
        "output_usd_per_mtok": 0.6,
        "context_window_tokens": 8192,
    }
    models: dict[str, Any] = {
        MODEL: {**common, "routing_strategy": strategy, "deployments": deployments}
    }
    if big is not None:
        models[BIG] = {
            **common,
            "base_url": big.openai_base_url,
            "input_usd_per_mtok": 10.0,
            "output_usd_per_mtok": 30.0,
        }
    return Catalogue.from_dict({"models": models})


def client_for(cat: Catalogue) -> ModelClient:
    return ModelClient(cat, ClientSettings(http=HttpSettings(total_timeout_s=30.0)), env=KEY)


def request(i: int) -> CompletionRequest:
    return CompletionRequest.from_prompt(f"Question {i}: what is {i} + {i}?", max_tokens=32)


async def run_calls(
    client: ModelClient, n: int, concurrency: int, models: Sequence[str] = (MODEL,)
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            try:
                routed = await client.complete(request(i), models, deadline_s=DEADLINE_S)
            except ProviderError as exc:
                out.append({"i": i, "ok": False, "error": type(exc).__name__, "attempts": []})
                continue
            out.append(
                {
                    "i": i,
                    "ok": True,
                    "ms": (time.perf_counter() - started) * 1000.0,
                    "deployment": routed.deployment,
                    "attempts": [(a.deployment, a.status) for a in routed.attempts],
                }
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(out, key=lambda r: r["i"])


async def own_p99(sim: Simulator, name: str, n: int, concurrency: int) -> float:
    """The deployment alone, same load: its own latency distribution through the client."""
    async with client_for(catalogue({name: sim})) as client:
        rows = await run_calls(client, n, concurrency)
    return pct([r["ms"] for r in rows if r["ok"]], 0.99)


async def failover_phase(args: argparse.Namespace) -> dict[str, Any]:
    configs = {
        name: SimConfig(latency=Latency("lognormal", ms, sigma=args.sigma), seed=i)
        for i, (name, ms) in enumerate(PROFILE_MS.items())
    }
    sims = {name: Simulator(config) for name, config in configs.items()}
    for sim in sims.values():
        await sim.start()
    try:
        half = args.calls // 2
        reference = {
            name: await own_p99(sims[name], name, half, args.concurrency)
            for name in ("fast", "mid")
        }
        async with client_for(catalogue(sims)) as client:
            # warm-up, not counted: one call at a time, so each untried deployment is explored
            warmup = await run_calls(client, args.warmup, 1)
            first = await run_calls(client, half, args.concurrency)
            sims["fast"].set_outage(args.outage)
            second = await run_calls(client, args.calls - half, args.concurrency)
    finally:
        for sim in sims.values():
            await sim.close()
    on_failed = [
        r for r in second if any(d == "fast" and s != "ok" for d, s in r["attempts"]) or not r["ok"]
    ]
    failed_over = [r for r in on_failed if r["ok"] and r["ms"] <= DEADLINE_S * 1000]
    halves = {}
    for label, rows, fastest in (("healthy", first, "fast"), ("fast_down", second, "mid")):
        ms = [r["ms"] for r in rows if r["ok"]]
        p99 = pct(ms, 0.99)
        halves[label] = {
            "calls": len(rows),
            "errors": sum(not r["ok"] for r in rows),
            "p50_ms": round(pct(ms, 0.5), 1),
            "p99_ms": round(p99, 1),
            "fastest_healthy": fastest,
            "fastest_own_p99_ms": round(reference[fastest], 1),
            "p99_over_fastest_own": round(p99 / reference[fastest], 3),
            "share_fastest": round(
                sum(r.get("deployment") == fastest for r in rows) / max(len(rows), 1), 4
            ),
            "by_deployment": dict(Counter(r.get("deployment") for r in rows if r["ok"])),
        }
    everything = [r["ms"] for r in first + second if r["ok"]]
    return {
        "p50_ms": round(pct(everything, 0.5), 1),
        "p99_ms": round(pct(everything, 0.99), 1),
        "share_fastest": round(
            sum(h["share_fastest"] * h["calls"] for h in halves.values()) / len(first + second),
            4,
        ),
        "failed_over": len(failed_over),
        "calls_on_failed": len(on_failed),
        "halves": halves,
        "warmup": {
            "calls": len(warmup),
            "deployments": [r.get("deployment") for r in warmup],
            "ms": [round(r["ms"], 1) for r in warmup if r["ok"]],
        },
    }


async def rate_limit_phase(args: argparse.Namespace) -> dict[str, Any]:
    rpm = {"fast": args.rpm, "mid": args.rpm, "slow": 4 * args.rpm}
    sims = {
        name: Simulator(
            SimConfig(
                latency=Latency("lognormal", ms, sigma=args.sigma),
                rate_limit=RateLimit(rpm=rpm[name]),
                seed=10 + i,
            )
        )
        for i, (name, ms) in enumerate(PROFILE_MS.items())
    }
    for sim in sims.values():
        await sim.start()
    try:
        members = [client_for(catalogue(sims, rpm=rpm)) for _ in range(2)]
        for member in members:
            member.set_share(0.5)  # two members of the group: half of every limit each
        started = time.perf_counter()
        per_member = args.rate_calls // 2
        results = await asyncio.gather(
            *(run_calls(m, per_member, args.concurrency // 2 or 1) for m in members)
        )
        elapsed = time.perf_counter() - started
        for member in members:
            await member.aclose()
    finally:
        for sim in sims.values():
            await sim.close()
    rows = [r for rs in results for r in rs]
    return {
        "rate_limit_429s": sum(s.stats.statuses.get(429, 0) for s in sims.values()),
        "calls": len(rows),
        "errors": sum(not r["ok"] for r in rows),
        "rpm_limits": rpm,
        "served_by": {name: s.stats.statuses.get(200, 0) for name, s in sims.items()},
        "seconds": round(elapsed, 1),
    }


async def deadline_phase(args: argparse.Namespace) -> dict[str, Any]:
    sims = {
        name: Simulator(SimConfig(latency=Latency("lognormal", ms, sigma=args.sigma), seed=20 + i))
        for i, (name, ms) in enumerate(PROFILE_MS.items())
    }
    big = Simulator(SimConfig(latency=Latency("lognormal", 1500.0, sigma=args.sigma), seed=30))
    for sim in (*sims.values(), big):
        await sim.start()
    budgets = [float(b) for b in args.budgets.split(",")]
    rng = random.Random(1)
    predicted = {MODEL: 0.7, BIG: 0.9}
    costs = {MODEL: 0.00002, BIG: 0.0005}
    rows: list[dict[str, Any]] = []
    try:
        async with client_for(catalogue(sims, big=big)) as client:
            for model in (MODEL, BIG):  # warm-up, one at a time: every deployment measured
                await run_calls(client, args.warmup, 1, [model])

            async def one(i: int) -> None:
                budget = rng.choice(budgets)
                est = client.expected_latency_ms([MODEL, BIG], 32)
                decision = decide(
                    predicted,
                    costs,
                    PolicyOptions(quality_target=0.8, max_latency_ms=budget),
                    est_latency_ms=est,
                )
                started = time.perf_counter()
                try:
                    routed = await client.complete(
                        request(i),
                        [decision.model],
                        deadline_s=DEADLINE_S,
                        within_ms=budget,
                        fastest=decision.policy == "latency_tight",
                    )
                    ok, deployment = True, routed.deployment
                except ProviderError:
                    ok, deployment = False, None
                ms = (time.perf_counter() - started) * 1000.0
                rows.append(
                    {
                        "budget": budget,
                        "ms": ms,
                        "ok": ok,
                        "model": decision.model,
                        "deployment": deployment,
                        "meetable": min(est.values(), default=0.0) <= budget,
                    }
                )

            sem = asyncio.Semaphore(args.concurrency)

            async def bounded(i: int) -> None:
                async with sem:
                    await one(i)

            await asyncio.gather(*(bounded(i) for i in range(args.deadline_calls)))
    finally:
        for sim in (*sims.values(), big):
            await sim.close()
    by_budget: dict[str, Any] = {}
    for budget in budgets:
        mine = [r for r in rows if r["budget"] == budget]
        by_budget[f"{budget:g}"] = {
            "calls": len(mine),
            "misses": sum(r["ms"] > budget for r in mine),
            "p99_ms": round(pct([r["ms"] for r in mine], 0.99), 1),
            "models": dict(Counter(r["model"] for r in mine)),
            "deployments": dict(Counter(r["deployment"] for r in mine)),
        }
    return {
        "deadline_misses": sum(
            r["meetable"] and (r["ms"] > r["budget"] or not r["ok"]) for r in rows
        ),
        "calls": len(rows),
        "unmeetable_calls": sum(not r["meetable"] for r in rows),
        "by_budget_ms": by_budget,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    failover = await failover_phase(args)
    limits = await rate_limit_phase(args)
    deadlines = await deadline_phase(args)
    return {
        "bench": "deploy_bench",
        "p50_ms": failover["p50_ms"],
        "p99_ms": failover["p99_ms"],
        "share_fastest": failover["share_fastest"],
        "failed_over": failover["failed_over"],
        "rate_limit_429s": limits["rate_limit_429s"],
        "deadline_misses": deadlines["deadline_misses"],
        "failover": failover,
        "rate_limits": limits,
        "deadlines": deadlines,
        "config": {
            "calls": args.calls,
            "concurrency": args.concurrency,
            "profile_ms": PROFILE_MS,
            "sigma": args.sigma,
            "outage": args.outage,
            "rpm": args.rpm,
            "rate_calls": args.rate_calls,
            "deadline_calls": args.deadline_calls,
            "budgets_ms": args.budgets,
            "python": platform.python_version(),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--outage", choices=("reset", "503", "timeout"), default="reset")
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--rate-calls", type=int, default=240)
    parser.add_argument("--deadline-calls", type=int, default=300)
    parser.add_argument("--budgets", default="80,250,500,1200,2500")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
