"""Small-data N-model routing, on a synthetic 14-model proxy built from mmlu_dev (read from
../shared or --data; nothing is copied into the repo).

A PROXY, not the real target: the prompts are real MMLU prompts, but the 14 models, their list
prices and their 1-10 judged scores are simulated. Each model has a base ability (loosely tied to
its price: some dear models are no better), a skill per MMLU subject (what a router can learn
from the prompt text) and a sensitivity to item difficulty (taken from whether the two real
models answered the item; text shows little of it), plus noise; scores are rounded to a 1-10
rating and mapped to [0, 1]. Costs per row: list price x (prompt tokens + a per-model answer
length). Each repeat trains on `--train` prompts (seeded sample) and scores the rest.

Figures (per repeat, then mean/min over repeats), on the held-out prompts, using only the
router's per-model predictions (as `llmroute score` writes them):
- `area`: the area under the upper hull of the (mean cost, mean quality) points the router
  reaches as lambda sweeps argmax(predicted - lambda x cost), over the cost range of the single
  models, divided by that range (flat beyond the router's dearest point); `singles_area`: the
  same for the single models (any mix of single models lies under their hull);
  `margin` = area - singles_area (the target is >= 0.02);
- `reaches_best`: some router point has quality >= the best single model's at no more cost;
  `reaches_best_mixing`: the same for the router's upper hull (mixing two of its points, as
  the single-model hull mixes single models) at the best model's cost;
- the same area for the quality-target policy (cheapest model predicted to reach q, q swept).

    .venv/bin/python bench/n_model_small.py [--data mmlu_dev.jsonl] [--train 150] [--repeats 5]
    .venv/bin/python bench/n_model_small.py --write-train F.jsonl   # repeat 0's training rows,
        # for `llmroute train --router default` and `bench/route_bench.py --router DIR`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from routers.dataset import Record
from routers.metrics import mean_hull_height, upper_hull
from routers.training import TrainOptions, default_router, train

REPO = Path(__file__).resolve().parents[1]

DATA_CANDIDATES = [
    REPO.parent / "shared" / "data" / "routing" / "mmlu_dev.jsonl",
    REPO.parents[1] / "shared" / "data" / "routing" / "mmlu_dev.jsonl",
]
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
# (name, input USD/Mtok, output USD/Mtok), list-price-like, cheapest first
MODELS: tuple[tuple[str, float, float], ...] = (
    ("m01-nano", 0.05, 0.10),
    ("m02-mini", 0.10, 0.30),
    ("m03-flash", 0.15, 0.60),
    ("m04-haiku", 0.25, 1.25),
    ("m05-small", 0.50, 1.50),
    ("m06-medium", 0.80, 4.00),
    ("m07-open70b", 1.00, 3.00),
    ("m08-pro", 2.00, 8.00),
    ("m09-4o", 2.50, 10.0),
    ("m10-sonnet", 3.00, 15.0),
    ("m11-large", 5.00, 15.0),
    ("m12-turbo", 10.0, 30.0),
    ("m13-opus", 15.0, 75.0),
    ("m14-legacy", 30.0, 60.0),
)


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def synthetic_world(rows: list[dict[str, Any]], seed: int = 0) -> tuple[list[Record], list[str]]:
    """Records with 14 simulated models' scores and costs for every MMLU row given."""
    rng = np.random.default_rng(seed)
    names = [m for m, _, _ in MODELS]
    n_models = len(MODELS)
    log_price = np.log([i + 4 * o for _, i, o in MODELS])
    ability = 0.35 * (log_price - log_price.mean()) + rng.normal(0, 0.35, n_models)
    ability[-1] -= 0.9  # the dear legacy model is dominated
    subjects = sorted({r["tags"]["subject"] for r in rows})
    skill = rng.normal(0, 0.55, (n_models, len(subjects)))  # per model x subject
    sensitivity = rng.uniform(0.6, 1.6, n_models)  # how much item difficulty hurts
    verbosity = rng.uniform(150, 600, n_models)  # output tokens per answer
    sidx = {s: i for i, s in enumerate(subjects)}
    out: list[Record] = []
    for r in rows:
        s, w = r["scores"][STRONG], r["scores"][WEAK]
        difficulty = 1.2 * (1 - s) + 0.8 * (1 - w) - 0.6
        row_rng = np.random.default_rng(_seed(seed, r["id"]))
        z = (
            0.8
            + ability
            + skill[:, sidx[r["tags"]["subject"]]]
            - sensitivity * difficulty
            + row_rng.normal(0, 0.6, n_models)
        )
        rating = np.clip(np.round(1 + 9 / (1 + np.exp(-z))), 1, 10)
        n_in = math.ceil(len(r["prompt"]) / 4)
        costs = {m: (n_in * i + verbosity[j] * o) / 1e6 for j, (m, i, o) in enumerate(MODELS)}
        scores = {m: float((rating[j] - 1) / 9) for j, m in enumerate(names)}
        out.append(Record(r["id"], r["prompt"], scores, costs, {"subject": r["tags"]["subject"]}))
    return out, names


def repeat_split(
    rows: list[dict[str, Any]], rep: int, n_train: int, n_test: int
) -> tuple[list[Record], list[Record], list[str]]:
    """Repeat `rep`'s world, its training rows and its test rows (a seeded split)."""
    world, names = synthetic_world(rows, seed=rep)
    order = sorted(range(len(world)), key=lambda i: _seed("split", rep, world[i].id))
    train_recs = [world[i] for i in order[:n_train]]
    test = [world[i] for i in order[n_train : n_train + n_test]]
    return train_recs, test, names


def area(points: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Mean height over [lo, hi] of the upper hull of `points` (flat after its last point;
    before its first point it is 0: a router with no point that cheap gets no credit)."""
    return mean_hull_height(points, lo, hi)


def lambda_points(pred: np.ndarray, q: np.ndarray, c: np.ndarray) -> list[tuple[float, float]]:
    rows = np.arange(len(pred))
    gap = float(np.ptp(pred)) or 1.0
    smallest = float(np.min(np.ptp(c, axis=1))) or 1e-9
    pts = []
    grid = np.geomspace(gap / c.max() * 1e-3, 100 * gap / smallest, 400)
    for lam in np.concatenate([[0.0], grid]):
        pick = np.argmax(pred - lam * c, axis=1)
        pts.append((float(c[rows, pick].mean()), float(q[rows, pick].mean())))
    return pts


def target_points(pred: np.ndarray, q: np.ndarray, c: np.ndarray) -> list[tuple[float, float]]:
    rows = np.arange(len(pred))
    order = np.argsort(c, axis=1)  # cheapest first, per row
    pts = []
    for t in np.unique(np.quantile(pred, np.linspace(0, 1, 300))):
        reach = np.take_along_axis(pred, order, axis=1) >= t
        first = np.where(reach.any(axis=1), reach.argmax(axis=1), -1)
        best = np.argmax(pred, axis=1)
        pick = np.where(first >= 0, order[rows, np.maximum(first, 0)], best)
        pts.append((float(c[rows, pick].mean()), float(q[rows, pick].mean())))
    return pts


def evaluate(pred: np.ndarray, q: np.ndarray, c: np.ndarray) -> dict[str, Any]:
    singles = [(float(c[:, j].mean()), float(q[:, j].mean())) for j in range(q.shape[1])]
    lo = min(p[0] for p in singles)
    hi = max(p[0] for p in singles)
    lam = lambda_points(pred, q, c)
    tgt = target_points(pred, q, c)
    best_c, best_q = max(singles, key=lambda p: (p[1], -p[0]))
    singles_area = area(singles, lo, hi)
    hull = upper_hull(lam)
    hull_c = np.array([p[0] for p in hull])
    hull_q = np.array([p[1] for p in hull])
    at_best = float(np.interp(best_c, hull_c, hull_q)) if best_c >= hull_c[0] else -math.inf
    return {
        "area": area(lam, lo, hi),
        "singles_area": singles_area,
        "margin": area(lam, lo, hi) - singles_area,
        "quality_target_margin": area(tgt, lo, hi) - singles_area,
        "reaches_best": any(qq >= best_q - 1e-12 and cc <= best_c + 1e-15 for cc, qq in lam),
        "reaches_best_mixing": at_best >= best_q - 1e-12,
        "best_single_quality": best_q,
        "router_top_quality": max(qq for _, qq in lam),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    found = next((p for p in DATA_CANDIDATES if p.exists()), None)
    ap.add_argument("--data", type=Path, default=found)
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--router", action="append", help="router names (default: a set)")
    ap.add_argument("--write-train", type=Path, help="write repeat 0's training rows and stop")
    args = ap.parse_args()
    if args.data is None or not args.data.exists():
        raise SystemExit("mmlu_dev.jsonl not found: pass --data")
    with args.data.open(encoding="utf-8") as fh:
        rows = [json.loads(x) for x in fh if x.strip()]
    if args.write_train is not None:
        train_recs, _, _ = repeat_split(rows, 0, args.train, 0)
        with args.write_train.open("w", encoding="utf-8") as fh:
            for r in train_recs:
                row = {"id": r.id, "prompt": r.text, "scores": r.scores, "costs": r.costs}
                fh.write(json.dumps(row) + "\n")
        return
    routers = args.router or ["default", "classifier", "sw_ranking"]
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in routers}
    for rep in range(args.repeats):
        train_recs, test, names = repeat_split(rows, rep, args.train, args.test)
        q = np.array([[r.scores[m] for m in names] for r in test])
        c = np.array([[r.costs[m] for m in names] for r in test])
        for name in routers:
            chosen = default_router(train_recs) if name == "default" else name
            options = TrainOptions(router=chosen)
            started = time.perf_counter()
            router = train(train_recs, options)
            seconds = time.perf_counter() - started
            pred = router.predict([r.text for r in test])
            cols = [router.models.index(m) for m in names]
            res = evaluate(pred[:, cols], q, c)
            res["train_seconds"] = seconds
            results[name].append(res)
    summary = {
        "proxy": "synthetic 14-model scores on real MMLU prompts (see docstring)",
        "train": args.train,
        "test": args.test,
        "repeats": args.repeats,
        "routers": {
            name: {
                "margin_mean": round(float(np.mean([r["margin"] for r in rs])), 4),
                "margin_min": round(float(np.min([r["margin"] for r in rs])), 4),
                "quality_target_margin_mean": round(
                    float(np.mean([r["quality_target_margin"] for r in rs])), 4
                ),
                "area_mean": round(float(np.mean([r["area"] for r in rs])), 4),
                "singles_area_mean": round(float(np.mean([r["singles_area"] for r in rs])), 4),
                "reaches_best": f"{sum(r['reaches_best'] for r in rs)}/{len(rs)}",
                "reaches_best_mixing": f"{sum(r['reaches_best_mixing'] for r in rs)}/{len(rs)}",
                "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in rs])), 3),
            }
            for name, rs in results.items()
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
