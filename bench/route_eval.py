"""Held-out evaluation of the default router next to the TF-IDF + LR baseline.

The split is by item (a hash of the record id, salt "heldout", 20% held out), the same for both.
`--folds K` adds K-fold cross-validation by the same id hash, to show the spread a single split
hides. Prints one JSON object.

    .venv/bin/python bench/route_eval.py [--data F.jsonl] [--folds 5] [--router NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tfidf_baseline import STRONG, WEAK, baseline_scores, load_records

from routers.base import strong_need
from routers.dataset import Record, split_by_id
from routers.metrics import two_model_report
from routers.training import DEFAULT_ROUTER, TrainOptions, train

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO / ".." / "shared" / "data" / "routing" / "mmlu_dev.jsonl"
KEYS = ("apgr", "cpt50", "cpt80", "strong_fraction_for_95pct")


def _report(scores: Any, test: list[Record]) -> dict[str, float]:
    rep = two_model_report(
        scores, [r.scores[STRONG] for r in test], [r.scores[WEAK] for r in test]
    ).summary()
    return {k: round(float(v), 4) for k, v in rep.items()}


def _router_scores(train_recs: list[Record], test: list[Record], name: str) -> tuple[Any, float]:
    started = time.perf_counter()
    router = train(train_recs, TrainOptions(router=name, strong=STRONG, weak=WEAK))
    seconds = time.perf_counter() - started
    return strong_need(router, router.predict([r.text for r in test])), seconds


def _fold(rid: str, k: int) -> int:
    return int.from_bytes(hashlib.sha256(("fold" + rid).encode()).digest()[:4], "big") % k


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--router", default=DEFAULT_ROUTER)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--folds", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    records = [r for r in load_records(args.data) if STRONG in r.scores and WEAK in r.scores]
    held = split_by_id([r.id for r in records], args.test_fraction, "heldout")
    train_recs = [r for r, h in zip(records, held, strict=True) if not h]
    test = [r for r, h in zip(records, held, strict=True) if h]
    scores, seconds = _router_scores(train_recs, test, args.router)
    out: dict[str, Any] = {
        "data": str(args.data.name),
        "split": f"by item id hash, salt 'heldout', {args.test_fraction:.0%} held out",
        "n_train": len(train_recs),
        "n_test": len(test),
        "router": args.router,
        "router_heldout": _report(scores, test),
        "train_seconds": round(seconds, 1),
    }
    if not args.no_baseline:
        out["tfidf_lr_heldout"] = _report(baseline_scores(train_recs, test, 1e-4, "gain"), test)
    oracle = np.array([r.scores[STRONG] - r.scores[WEAK] for r in test])
    out["oracle_heldout"] = _report(oracle, test)
    if args.folds > 1:
        per_fold: dict[str, list[dict[str, float]]] = {"router": [], "tfidf_lr": []}
        for k in range(args.folds):
            tr = [r for r in records if _fold(r.id, args.folds) != k]
            te = [r for r in records if _fold(r.id, args.folds) == k]
            per_fold["router"].append(_report(_router_scores(tr, te, args.router)[0], te))
            if not args.no_baseline:
                per_fold["tfidf_lr"].append(_report(baseline_scores(tr, te, 1e-4, "gain"), te))
        out["cv"] = {
            name: {
                key: {
                    "mean": round(float(np.mean([f[key] for f in folds])), 4),
                    "min": round(float(np.min([f[key] for f in folds])), 4),
                    "max": round(float(np.max([f[key] for f in folds])), 4),
                }
                for key in KEYS
            }
            for name, folds in per_fold.items()
            if folds
        }
        out["cv_folds"] = args.folds
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
