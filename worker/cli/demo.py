"""`llmroute demo`: the main job on local defaults, end to end, with a summary a user can check.

Needs a broker (`KAFKA_BOOTSTRAP`; `make demo` starts one). Then:
1. splits the labelled data by id hash: the router is trained on one part and never sees the
   prompts it will route (mmlu_dev from ../shared when present, else a built-in prompt set);
2. starts the provider simulator replaying the labels, so a model answers right exactly when the
   data says it did (answers carry an HMAC marker that only the grader's key reads);
3. starts two `llmroute run` processes in one consumer group, produces the requests (plus two
   invalid records, to show the dead-letter path) and shows progress while responses flow;
4. prints the summary: model mix, cost versus always-strong, accuracy versus always-strong
   (graded from the answers themselves), latency, dead letters; then stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import schemas
from worker import config as config_mod
from worker.cli import COUNT, Subparsers, UserError, next_hint
from worker.config.models import STRONG_MODEL, WEAK_MODEL, simulator_catalogue
from worker.jsonl import JsonlError, read_jsonl
from worker.kafka.topics import ensure_topics
from worker.sim import Dataset, Latency, SimConfig, Simulator, grade

ROOT = Path(__file__).resolve().parents[2]  # the checkout (worker/cli/demo.py)
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu_dev.jsonl"
WORK = ROOT / ".demo"
STABLE_ROUTER_NAME = ".demo/router"  # always the latest demo router (deploy/config/local.toml)
SIM_KEYS = {"SIM_OPENAI_API_KEY": "sk-demo-openai", "SIM_ANTHROPIC_API_KEY": "sk-ant-demo"}


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline locally on simulated providers and summarise it"
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled routing JSONL")
    p.add_argument("--requests", type=COUNT, default=3000)
    p.add_argument("--workers", type=COUNT, default=2)
    p.add_argument("--latency", default="lognormal:300:0.5", help="simulated model latency")
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    p.add_argument(
        "--train-only",
        action="store_true",
        help=f"only train (or reuse) the demo router and point {STABLE_ROUTER_NAME} at it",
    )
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    if args.train_only:
        rows, source = _load_rows(args.data)
        print(f"data: {len(rows)} labelled prompts from {source}")
        _train(rows)
        next_hint("llmroute run --config deploy/config/local.toml   (see README: run a member)")
        return 0
    return asyncio.run(run_demo(args))


# ---------------------------------------------------------------- data


def _builtin_rows(n: int = 4000, seed: int = 11) -> list[dict[str, Any]]:
    """A labelled prompt set written here: harder-looking prompts trip the weak model more."""
    rng = random.Random(seed)
    easy = [
        "What is the capital of",
        "Translate to French:",
        "Give a synonym for",
        "Summarise in one line:",
        "Spell check:",
        "What colour is",
    ]
    hard = [
        "Prove that",
        "Derive the closed form of",
        "Find all integer solutions of",
        "Explain the asymptotic complexity of",
        "Write a lock-free queue for",
        "Compute the eigenvalues of",
    ]
    topics = [
        "a prime sequence",
        "the Riemann zeta function",
        "Paris",
        "binary search",
        "a 3x3 matrix",
        "photosynthesis",
        "the French revolution",
        "TCP congestion",
        "an apple",
        "quicksort",
        "Fermat's little theorem",
        "a haiku",
    ]
    rows = []
    for i in range(n):
        is_hard = rng.random() < 0.4
        prompt = f"{rng.choice(hard if is_hard else easy)} {rng.choice(topics)} (#{i})"
        strong = 1.0 if rng.random() < (0.85 if is_hard else 0.95) else 0.0
        weak = 1.0 if rng.random() < (0.45 if is_hard else 0.9) else 0.0
        rows.append(
            {
                "id": f"builtin-{i}",
                "prompt": prompt,
                "scores": {STRONG_MODEL: strong, WEAK_MODEL: weak},
            }
        )
    return rows


def _load_rows(path: Path) -> tuple[list[dict[str, Any]], str]:
    if path.exists():
        try:
            return [row for _, row in read_jsonl(path)], str(path)
        except JsonlError as exc:
            raise UserError(f"bad --data {path}: {exc}") from None
    return _builtin_rows(), "built-in prompt set (no labelled data file found)"


def _held_out(row_id: str) -> bool:
    return int(hashlib.sha256(f"demo:{row_id}".encode()).hexdigest()[:8], 16) % 10 < 3


# ---------------------------------------------------------------- steps


def _train(rows: list[dict[str, Any]]) -> Path:
    train = [r for r in rows if not _held_out(r["id"])]
    recipe = json.dumps({"ids": [r["id"] for r in train], "router": "default", "holdout": 0.2})
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    out = WORK / f"router-{digest}"
    if (out / "meta.json").exists():
        print(f"router: reusing {out.relative_to(ROOT)} (trained on {len(train)} prompts)")
        return _point_stable_path(out)
    WORK.mkdir(exist_ok=True)
    data = WORK / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    print(f"router: training the default router on {len(train)} prompts ...", flush=True)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "train",
            "--data",
            str(data),
            "--router",
            "default",
            "--out",
            str(out),
            "--strong",
            STRONG_MODEL,
            "--weak",
            WEAK_MODEL,
            "--holdout",
            "0.2",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "LLMROUTE_NO_HINTS": "1"},
    )
    print(f"router: trained in {time.perf_counter() - started:.0f}s -> {out.relative_to(ROOT)}")
    return _point_stable_path(out)


def _point_stable_path(out: Path) -> Path:
    """`.demo/router` -> this router (a relative symlink, replaced atomically), so configs
    (deploy/config/local.toml) name one stable path whatever data the demo trained on."""
    link = ROOT / STABLE_ROUTER_NAME
    tmp = link.with_name(f".router-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name, target_is_directory=True)
    os.replace(tmp, link)
    print(f"router: {STABLE_ROUTER_NAME} -> {out.name}")
    return out


def _config(bootstrap: str, artifact: Path, sim_url: str, run_id: str) -> dict[str, Any]:
    catalogue = simulator_catalogue(sim_url)
    models = {
        name: {
            "provider": s.provider,
            "base_url": s.base_url,
            "api_key_env": s.api_key_env,
            "provider_model": s.provider_model,
            "input_usd_per_mtok": s.prices.input_usd_per_mtok,
            "output_usd_per_mtok": s.prices.output_usd_per_mtok,
            "context_window_tokens": s.context_window_tokens,
            "logprobs": s.supports_logprobs,
        }
        for name, s in catalogue.models.items()
        if name in (STRONG_MODEL, WEAK_MODEL)
    }
    t = f"demo-{run_id}"
    return {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"llmroute-{t}"},
        "topics": {
            "requests": f"{t}.requests",
            "responses": f"{t}.responses",
            "decisions": f"{t}.decisions",
            "feedback": f"{t}.feedback",
            "dlq": f"{t}.requests.dlq",
            "done": f"{t}.requests.done",
            "journal": f"{t}.requests.journal",
            "batch_jobs": f"{t}.batch-jobs",
            "control": f"{t}.control",
        },
        "loop": {"max_in_flight": 1000, "resume_below": 800},
        "router": {"artifact": str(artifact)},
        "policies": {"default": {"kind": "threshold"}},  # the artifact's 95%-quality threshold
        "models": models,
        "metrics": {"enabled": False},
    }


async def _create_requests_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, rows: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    try:
        await producer.start()
        sends = []
        for i, row in enumerate(rows):
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            request_id = f"demo-{i:06d}"
            event: dict[str, Any] = {
                "schema_version": 1,
                "request_id": request_id,
                "tenant": "demo",
                "messages": messages,
                "params": {"max_tokens": 256},
                "created_at": datetime.now(UTC).isoformat(),
                "metadata": {"item_id": row["id"]},
            }
            sends.append(
                await producer.send(topic, json.dumps(event).encode(), key=request_id.encode())
            )
        for bad in (b"{not json", b'{"schema_version": 1, "request_id": "x"}'):
            sends.append(await producer.send(topic, bad, key=b"demo-invalid"))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _follow(
    bootstrap: str, topics: list[str], expect: int, timeout_s: float
) -> dict[str, list[bytes]]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    got: dict[str, list[bytes]] = {t: [] for t in topics}
    seen: set[bytes] = set()
    started = time.monotonic()
    try:
        await consumer.start()
        while len(seen) < expect and time.monotonic() - started < timeout_s:
            batch = await consumer.getmany(timeout_ms=250)
            for tp, records in batch.items():
                for r in records:
                    got[tp.topic].append(r.value)
                    seen.add((r.key or b"") + b"|" + tp.topic.encode())
            elapsed = time.monotonic() - started
            rate = len(seen) / elapsed if elapsed else 0.0
            bar = "#" * int(40 * len(seen) / max(expect, 1))
            print(f"\r  [{bar:<40}] {len(seen)}/{expect}  {rate:6.0f}/s", end="", flush=True)
        print()
    finally:
        await consumer.stop()
    return got


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(
    responses: list[schemas.RouteResponse],
    dead: int,
    rows: list[dict[str, Any]],
    wall_s: float,
) -> dict[str, Any]:
    catalogue_prices = simulator_catalogue("http://127.0.0.1")
    strong = catalogue_prices[STRONG_MODEL]
    by_item = {f"demo-{i:06d}": row for i, row in enumerate(rows)}
    ok = [r for r in responses if r.status == "ok"]
    mix = Counter(r.model for r in ok)
    cost = sum(r.cost_usd for r in responses)
    from worker.providers.types import Usage

    strong_cost = sum(
        strong.cost_usd(Usage(r.usage.input_tokens, r.usage.output_tokens)) for r in ok
    )
    graded = []
    for r in ok:
        row = by_item[r.request_id]
        prompt = row.get("prompt") or row["messages"][-1]["content"]
        verdict = grade(r.message.content if r.message else "", prompt)
        if verdict is not None:
            graded.append(verdict)
    strong_acc = sum(row["scores"].get(STRONG_MODEL, 0.0) >= 0.5 for row in rows) / len(rows)
    latencies = [r.latency_ms for r in responses]
    accuracy = sum(graded) / len(graded) if graded else 0.0
    return {
        "requests": len(rows),
        "responses": len(responses),
        "errors": len(responses) - len(ok),
        "dead_letters": dead,
        "model_mix": {m: round(c / max(len(ok), 1), 3) for m, c in mix.most_common()},
        "cost_usd": round(cost, 4),
        "always_strong_cost_usd": round(strong_cost, 4),
        "cost_ratio_vs_always_strong": round(cost / strong_cost, 3) if strong_cost else None,
        "accuracy": round(accuracy, 4),
        "always_strong_accuracy": round(strong_acc, 4),
        "accuracy_ratio_vs_always_strong": round(accuracy / strong_acc, 3) if strong_acc else None,
        "latency_p50_ms": round(_percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99), 1),
        "wall_s": round(wall_s, 1),
        "throughput_per_s": round(len(responses) / wall_s, 1) if wall_s else None,
    }


async def run_demo(args: argparse.Namespace) -> int:
    # the demo's own clients read topics created a moment ago: aiokafka logs each retry while
    # a new partition has no leader yet ("Failed fetch offsets ... NotLeaderForPartitionError"),
    # which is noise here; the workers log to their own files
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    rows, source = _load_rows(args.data)
    print(f"data: {len(rows)} labelled prompts from {source}")
    artifact = _train(rows)
    replay = [r for r in rows if _held_out(r["id"])][: args.requests]
    print(f"replaying {len(replay)} held-out prompts the router never saw")
    os.environ.update(SIM_KEYS)
    dataset = Dataset(Dataset.row_from_json(r) for r in rows)
    run_id = hashlib.sha256(f"{time.time()}".encode()).hexdigest()[:8]
    sim_config = SimConfig(seed=1, latency=Latency.parse(args.latency))
    async with Simulator(sim_config, dataset) as sim:
        print(f"simulator: {sim.base_url} (latency {args.latency})")
        config = _config(args.bootstrap, artifact, sim.base_url, run_id)
        WORK.mkdir(exist_ok=True)
        config_path = WORK / f"worker-{run_id}.json"
        config_path.write_text(json.dumps(config, indent=2))
        topics = config["topics"]
        await _create_requests_topic(args.bootstrap, topics["requests"], 6)
        worker_config = config_mod.parse(config)
        await ensure_topics(worker_config.kafka.common_kwargs(), worker_config.topics, 1)
        procs = []
        for i in range(args.workers):
            with (WORK / f"worker-{run_id}-{i}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "worker",
                        "run",
                        "--config",
                        str(config_path),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        print(f"workers: {args.workers} members of group {config['kafka']['group_id']}")
        try:
            started = time.monotonic()
            await _produce(args.bootstrap, topics["requests"], replay)
            print(f"produced {len(replay)} requests + 2 invalid records; answers:")
            got = await _follow(
                args.bootstrap, [topics["responses"], topics["dlq"]], len(replay) + 1, timeout_s=600
            )
            wall = time.monotonic() - started
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), timeout=60) for p in procs]
    responses = {}
    for value in got[topics["responses"]]:
        r = schemas.decode(value, schemas.RouteResponse)
        responses[r.request_id] = r  # dedupe by request_id
    summary = _summary(list(responses.values()), len(got[topics["dlq"]]), replay, wall)
    summary["worker_exit_codes"] = codes
    print(json.dumps(summary, indent=2))
    print(
        f"\n{summary['responses']}/{summary['requests']} answered; "
        f"{summary['model_mix'].get(STRONG_MODEL, 0):.0%} sent to the strong model; cost "
        f"{summary['cost_ratio_vs_always_strong']}x of always-strong for "
        f"{summary['accuracy_ratio_vs_always_strong']}x its accuracy; "
        f"p50 {summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms; "
        f"{summary['dead_letters']} dead letters."
    )
    next_hint("run a member yourself: README.md, `deploy/config/local.toml`")
    missing = summary["requests"] - summary["responses"]
    return 0 if missing == 0 and all(c == 0 for c in codes) else 1
