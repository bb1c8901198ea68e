"""Speed and memory of the default router: one decision (features + predict + policy) for a
500-token prompt on one core, batched decisions per second, resident memory once loaded.

    .venv/bin/python bench/route_bench.py [--data F.jsonl] [--router ARTIFACT_DIR]

Without --router it trains the default router on --data first (into a temporary folder).
The measurement runs in a fresh process pinned to one core with one BLAS thread, so its RSS is
that of a worker that loaded the artifact, not of the training. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "routing" / "mmlu_dev.jsonl"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _train(data: Path, out: Path) -> float:
    started = time.perf_counter()
    cmd = [
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
        STRONG,
        "--weak",
        WEAK,
    ]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _measure(args: argparse.Namespace) -> dict[str, object]:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import numpy as np

    from routers import ModelPrice, PolicyOptions, load, route, route_batch

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    router = load(args.router)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prompts = [json.loads(line)["prompt"] for line in args.data.open()][:4096]
    long_text = ""
    i = 0
    while len(long_text) < 2000:  # about 500 tokens at 4 characters a token
        long_text += prompts[i] + "\n\n"
        i += 1
    long_text = long_text[:2000]
    prices = {
        STRONG: ModelPrice(10.0, 30.0),
        WEAK: ModelPrice(0.6, 0.6),
    }
    options = PolicyOptions(threshold=0.1)
    messages = [{"role": "user", "content": long_text}]
    for _ in range(200):
        route(router, messages, prices, options)
    times = []
    for _ in range(args.single_runs):
        t0 = time.perf_counter()
        route(router, messages, prices, options)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    batch = [[{"role": "user", "content": p}] for p in prompts[: args.batch]]
    route_batch(router, batch, prices, options)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < args.batched_seconds:
        for lo in range(0, len(prompts), args.batch):
            chunk = [[{"role": "user", "content": p}] for p in prompts[lo : lo + args.batch]]
            n += len(route_batch(router, chunk, prices, options))
    elapsed = time.perf_counter() - t0
    return {
        "router": router.name,
        "router_version": router.version,
        "prompt_chars": len(long_text),
        "single_p50_ms_500_tokens": round(float(np.percentile(ms, 50)), 4),
        "single_p99_ms_500_tokens": round(float(np.percentile(ms, 99)), 4),
        "single_runs": args.single_runs,
        "batched_decisions_per_s": round(n / elapsed, 1),
        "batch_size": args.batch,
        "mean_prompt_chars_batched": round(float(np.mean([len(p) for p in prompts])), 1),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mb_before_load": round(rss_before, 1),
        "rss_mb_after_load": round(rss_loaded, 1),
        "cores": 1,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--router", type=Path, help="artifact folder (default: train one)")
    ap.add_argument("--single-runs", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batched-seconds", type=float, default=5.0)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(_measure(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        router_dir = args.router
        train_s = None
        if router_dir is None:
            router_dir = Path(tmp) / "router"
            train_s = _train(args.data, router_dir)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            "--router",
            str(router_dir),
            "--data",
            str(args.data),
            "--single-runs",
            str(args.single_runs),
            "--batch",
            str(args.batch),
            "--batched-seconds",
            str(args.batched_seconds),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        result = json.loads(out.stdout)
        if train_s is not None:
            result["train_seconds_default_router_full_data"] = round(train_s, 1)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
