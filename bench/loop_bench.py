"""Closing the loop, in process: does retraining from outcomes raise APGR on a new domain?

    .venv/bin/python bench/loop_bench.py [--rounds 4] [--feedback-rate 0.5] [--shadow-rate 0.2]

IN PROCESS, WITHOUT KAFKA OR THE WORKER: this bench runs the pure core and the retrain/promotion
functions the commands use (`routers.outcomes.build_dataset`, `worker.retrain_cli.retrain`), with
the routing decision made as the worker's threshold policy makes it and feedback simulated from
the labels. It measures whether the data path and the promotion rule improve routing, not the
worker's throughput; `cache_lookup_p99_ms_100k` (the semantic cache) is not measured here (null).

1. Domains: mmlu_dev split by subject. The first router (classifier) learns the non-STEM
   subjects (law, humanities, social sciences, ...), calibrated on a held-out slice of them.
2. Traffic: the STEM and medicine subjects, split by id hash into a fresh test set (never used
   for training) and a stream cut into `--rounds` rounds.
3. Each round: route the round's prompts with the CURRENT router at its threshold calibrated
   for `--strong-fraction` strong calls (the worker's strong_fraction policy). Feedback arrives
   for a deterministic `--feedback-rate` sample (hash of the id): the routed model's label, as a
   task success signal. A `--shadow-rate` sample also gets the other model's answer judged
   (source judge, flipped with probability 1 - `--judge-accuracy`, seeded), like shadow mode
   with the judge.
4. `build_dataset` turns all outcomes so far into rows (most with ONE model scored); `retrain`
   trains a candidate on them (`--with-base`: plus the first router's data), evaluates it
   against the current router on held-out outcome rows with both models scored, and promotes
   it if it is at least as good at the same strong-call fraction (`--min-eval` rows needed).
5. After each round, the CURRENT router is measured on the fresh test set: APGR, and the cost
   (USD, simulator catalogue prices, estimated tokens) and accuracy of routing it at its
   calibrated threshold.

Prints one JSON object with `rounds` (round 0 = the first router, before any outcome).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from routers.artifact import load_artifact  # noqa: E402
from routers.base import strong_need  # noqa: E402
from routers.calibration import (  # noqa: E402
    score_quantiles,
    threshold_for_quality,
    threshold_for_strong_fraction,
)
from routers.dataset import Record, data_sha256, record_from_obj, split_by_id  # noqa: E402
from routers.evaluation import evaluate  # noqa: E402
from routers.outcomes import Answered, Label, ScoreRules, build_dataset  # noqa: E402
from routers.policy import ModelPrice, estimate_cost_usd, estimate_input_tokens  # noqa: E402
from routers.promotion import CostTarget  # noqa: E402
from routers.training import TrainOptions, label_matrix, train  # noqa: E402
from worker.providers.catalogue import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from worker.retrain_cli import (  # noqa: E402
    RetrainOptions,
    current_artifact,
    retrain,
    save_version,
    set_current,
)

DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu_dev.jsonl"
# simulator catalogue list prices (worker.providers.catalogue.simulator_catalogue)
PRICES = {STRONG_MODEL: ModelPrice(10.0, 30.0), WEAK_MODEL: ModelPrice(0.6, 0.6)}
OUTPUT_TOKENS = 16  # the simulator's answers: a short rationale and a letter
TARGET_SUBJECTS = {
    "abstract_algebra", "anatomy", "astronomy", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
    "elementary_mathematics", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_mathematics", "high_school_physics",
    "high_school_statistics", "machine_learning", "medical_genetics", "nutrition",
    "professional_medicine", "virology", "econometrics",
}  # fmt: skip


def _unit(*parts: object) -> float:
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _route(artifact_path: Path, records: list[Record], fraction: float) -> tuple[np.ndarray, Any]:
    """True where the router, at its threshold calibrated for `fraction` strong calls, sends
    the prompt to the strong model (the worker's `strong_fraction` policy)."""
    art = load_artifact(artifact_path)
    need = strong_need(art.router, art.router.predict([r.text for r in records]))
    # a missing threshold: retrain left out an infinite one (no strong call at all)
    return need >= art.calibration.get(f"strong_fraction_{fraction:.2f}", math.inf), art


def _measure(artifact_path: Path, fresh: list[Record], fraction: float) -> dict[str, Any]:
    strong, art = _route(artifact_path, fresh, fraction)
    result = evaluate(art.router, fresh)
    y = label_matrix(fresh, (STRONG_MODEL, WEAK_MODEL))
    acc = np.where(strong, y[:, 0], y[:, 1])
    cost = 0.0
    strong_cost = 0.0
    for r, s in zip(fresh, strong, strict=True):
        n_in = estimate_input_tokens(r.text)
        strong_cost += estimate_cost_usd(PRICES[STRONG_MODEL], n_in, OUTPUT_TOKENS)
        cost += estimate_cost_usd(PRICES[STRONG_MODEL if s else WEAK_MODEL], n_in, OUTPUT_TOKENS)
    return {
        "router_version": art.router.version,
        "apgr": round(result["two_model"]["apgr"], 4),
        "cost_usd": round(cost, 6),
        "cost_ratio": round(cost / strong_cost, 4),
        "accuracy": round(float(acc.mean()), 4),
        "quality_ratio": round(float(acc.mean() / y[:, 0].mean()), 4),
        "strong_fraction": round(float(strong.mean()), 4),
    }


def _first_router(source: list[Record], registry: Path, fraction: float) -> None:
    held = split_by_id([r.id for r in source], 0.2, "first")
    fit = [r for r, h in zip(source, held, strict=True) if not h]
    cal = [r for r, h in zip(source, held, strict=True) if h]
    router = train(fit, TrainOptions(router="classifier", strong=STRONG_MODEL, weak=WEAK_MODEL))
    need = strong_need(router, router.predict([r.text for r in cal]))
    y = label_matrix(cal, (STRONG_MODEL, WEAK_MODEL))
    calibration = {
        f"strong_fraction_{fraction:.2f}": threshold_for_strong_fraction(need, fraction),
        "quality_95pct": threshold_for_quality(need, y[:, 0], y[:, 1], 0.95),
    }
    version, _ = save_version(
        router,
        registry,
        data_hash=data_sha256(fit),
        metrics={"n_train": len(fit)},
        calibration=calibration,
        quantiles=score_quantiles(need),
    )
    set_current(registry, version)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--fresh", type=float, default=0.3, help="target share kept as a fresh test")
    p.add_argument("--feedback-rate", type=float, default=0.5)
    p.add_argument("--shadow-rate", type=float, default=1.0)
    p.add_argument("--judge-accuracy", type=float, default=0.9)
    p.add_argument("--strong-fraction", type=float, default=0.5, help="the cost target")
    p.add_argument("--min-eval", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed shortfall at target")
    p.add_argument("--with-base", action="store_true", help="also train on the first data")
    args = p.parse_args(argv)
    started = time.perf_counter()
    with args.data.open(encoding="utf-8") as fh:  # not splitlines(): prompts hold U+2028
        records = [record_from_obj(json.loads(line)) for line in fh if line.strip()]
    is_target = [r.tags.get("subject") in TARGET_SUBJECTS for r in records]
    source = [r for r, t in zip(records, is_target, strict=True) if not t]
    target = [r for r, t in zip(records, is_target, strict=True) if t]
    fresh_flags = split_by_id([r.id for r in target], args.fresh, "fresh")
    fresh = [r for r, f in zip(target, fresh_flags, strict=True) if f]
    stream = [r for r, f in zip(target, fresh_flags, strict=True) if not f]
    stream.sort(key=lambda r: _unit("order", r.id))
    per_round = -(-len(stream) // args.rounds)
    options = RetrainOptions(
        target=CostTarget("strong_fraction", args.strong_fraction),
        min_eval=args.min_eval,
        tolerance=args.tolerance,
        strong=STRONG_MODEL,
        weak=WEAK_MODEL,
    )
    out_rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="loop-bench-") as tmp:
        registry = Path(tmp) / "registry"
        _first_router(source, registry, args.strong_fraction)
        first = current_artifact(registry)
        assert first is not None
        out_rounds.append(
            {"round": 0, **_measure(first, fresh, args.strong_fraction), "promoted": None}
        )
        parts: list[Answered] = []
        labels: list[Label] = []
        for k in range(args.rounds):
            batch = stream[k * per_round : (k + 1) * per_round]
            current = current_artifact(registry)
            assert current is not None
            strong, art = _route(current, batch, args.strong_fraction)
            for r, s in zip(batch, strong, strict=True):
                routed = STRONG_MODEL if s else WEAK_MODEL
                other = WEAK_MODEL if s else STRONG_MODEL
                parts.append(
                    Answered(
                        r.id, prompt=r.text, routed_model=routed, answer_model=routed,
                        router_version=art.router.version,
                    )
                )  # fmt: skip
                if _unit("feedback", r.id) < args.feedback_rate:
                    labels.append(Label("task_success", r.scores[routed] >= 0.5, "task",
                                        request_id=r.id))  # fmt: skip
                if _unit("shadow", r.id) < args.shadow_rate:
                    truth = r.scores[other] >= 0.5
                    right = _unit("judge", r.id) < args.judge_accuracy
                    labels.append(Label("judge", truth if right else not truth, "judge",
                                        request_id=r.id, model=other))  # fmt: skip
            dataset_rows, stats = build_dataset(
                {a.request_id: a for a in parts}, labels, ScoreRules()
            )
            outcome_records = [record_from_obj(row) for row in dataset_rows]
            t0 = time.perf_counter()
            report = retrain(
                outcome_records,
                registry,
                options,
                base_records=source if args.with_base else (),
            )
            now = current_artifact(registry)
            assert now is not None
            out_rounds.append(
                {
                    "round": k + 1,
                    **_measure(now, fresh, args.strong_fraction),
                    "promoted": report["promoted"],
                    "reason": report["verdict"]["reason"],
                    "outcome_rows": stats.records,
                    "rows_one_model": stats.one_model,
                    "rows_two_models": stats.multi_model,
                    "retrain_s": round(time.perf_counter() - t0, 2),
                }
            )
    result = {
        "bench": "loop",
        "skips_worker": True,
        "note": "in process: pure core + retrain/promotion functions, feedback simulated from "
        "labels; no Kafka, no worker, no provider calls",
        "source_records": len(source),
        "target_stream": len(stream),
        "fresh_test": len(fresh),
        "feedback_rate": args.feedback_rate,
        "shadow_rate": args.shadow_rate,
        "target": {"kind": "strong_fraction", "value": args.strong_fraction},
        "rounds": out_rounds,
        "apgr_gain": round(out_rounds[-1]["apgr"] - out_rounds[0]["apgr"], 4),
        "cache_lookup_p99_ms_100k": None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
