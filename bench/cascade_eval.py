"""Cross-validated quality of the learned cascade scorer on a file with the cheap model's answers,
next to a bag-of-words answer model and a prompt-only model (same folds, same metric).

Folds are by a hash of the record id (`--repeats` different salts x `--folds` folds); each
record is scored once per repeat by a scorer that never saw it. APGR is computed on the pooled
out-of-fold scores (random = 0.5). Prints one JSON object.

    .venv/bin/python bench/cascade_eval.py [--data F.jsonl] [--strong S --weak W]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from routers.answer_scorer import AnswerScorerParams, fit_answer_scorer
from routers.features import HashingFeaturizer, HashingParams
from routers.learned import ClassifierParams, ClassifierRouter, Standardizer
from routers.metrics import two_model_report

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO / ".." / "shared" / "data" / "routing" / "gsm8k_feedback.jsonl"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _folds(ids: list[str], k: int, salt: int) -> np.ndarray[Any, Any]:
    return np.array(
        [int(hashlib.sha256(f"{salt}:{i}".encode()).hexdigest()[:8], 16) % k for i in ids]
    )


def _bag_of_words(x: Any, y: Any, tr: Any, te: Any, dense_from: int) -> Any:
    std = Standardizer.fit(x[tr], dense_from)
    w, b = ClassifierRouter.fit_head(std.apply(x[tr]), y[tr, None], ClassifierParams())
    return -(std.apply(x[te]) @ w.astype(np.float32) + b)[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--strong", default=STRONG)
    ap.add_argument("--weak", default=WEAK)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with args.data.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rows = [r for r in rows if args.weak in r.get("answers", {}) and args.strong in r["scores"]]
    ids = [r["id"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    answers = [r["answers"][args.weak] for r in rows]
    qs = np.array([r["scores"][args.strong] for r in rows])
    qw = np.array([r["scores"][args.weak] for r in rows])
    bow = HashingFeaturizer(HashingParams(char_dim=2, structural=False)).transform(answers)
    prompt_x = HashingFeaturizer().transform(prompts)
    prompt_dense = prompt_x.shape[1] - 10
    results: dict[str, list[float]] = {
        "learned_answer_scorer": [],
        "bag_of_words_answer": [],
        "prompt_only": [],
    }
    per_fold: list[float] = []
    for rep in range(args.repeats):
        fold = _folds(ids, args.folds, rep)
        scores = {name: np.zeros(len(rows)) for name in results}
        for k in range(args.folds):
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            scorer = fit_answer_scorer(
                [prompts[i] for i in tr],
                [answers[i] for i in tr],
                qw[tr],
                strong=args.strong,
                weak=args.weak,
                version="cv",
                params=AnswerScorerParams(),
            )
            s = scorer.escalate_score([prompts[i] for i in te], [answers[i] for i in te])
            scores["learned_answer_scorer"][te] = s
            per_fold.append(two_model_report(s, qs[te], qw[te]).apgr)
            scores["bag_of_words_answer"][te] = _bag_of_words(bow, qw, tr, te, bow.shape[1])
            scores["prompt_only"][te] = _bag_of_words(prompt_x, qw, tr, te, prompt_dense)
        for name, s in scores.items():
            results[name].append(two_model_report(s, qs, qw).apgr)
    out = {
        "data": args.data.name,
        "n": len(rows),
        "weak_quality": float(qw.mean()),
        "strong_quality": float(qs.mean()),
        "cv": f"{args.repeats}x{args.folds}-fold by id hash, pooled out-of-fold scores",
        "apgr": {
            name: {
                "mean": round(float(np.mean(v)), 4),
                "min": round(float(np.min(v)), 4),
                "max": round(float(np.max(v)), 4),
            }
            for name, v in results.items()
        },
        "learned_per_fold_apgr": {
            "mean": round(float(np.mean(per_fold)), 4),
            "min": round(float(np.min(per_fold)), 4),
            "max": round(float(np.max(per_fold)), 4),
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
