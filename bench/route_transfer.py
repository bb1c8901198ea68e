"""Transfer validation of the default router: leave-one-domain-out over the labelled files.

Domains: the four MMLU subject groups (STEM, humanities, social sciences, other), GSM8K
(`gsm8k_feedback.jsonl`) and every other file given with --data. For each, the default router
is trained on all the other domains and scored on it; the worst held-out domain is the figure
the default's settings are chosen by (`docs/routing.md`). Two in-domain figures for reference:
MMLU unseen items (trained on mmlu_dev with `--holdout 0.2`, as documented) and GSM8K after
adding 60% of gsm8k_feedback to the MMLU training data (scored on the other 40%).

Each fold's router is also scored other ways, for the trade-off (same fits): the gain its heads
predict without the unfamiliarity shrinkage, 1 - P(weak right) alone, and the shrinkage (strong
prediction = its training mean) above other thresholds of `unfamiliar`. Prints one JSON object.

    .venv/bin/python bench/route_transfer.py [--data F.jsonl ...] [--no-reference]
        [--hold-out DOMAIN ...] [--classifier-l2 L2] [--static-embedding NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import FloatArray, strong_need
from routers.dataset import Record, record_from_obj, split_by_id
from routers.features import HashingParams
from routers.learned import SHRINK_ABOVE, ClassifierParams, ClassifierRouter
from routers.metrics import two_model_report
from routers.training import TrainOptions, train
from routers.transfer import Scored, group_by_domain, leave_one_domain_out

REPO = Path(__file__).resolve().parents[1]

# ../shared next to the clone (or next to the folder of worktrees)
DATA = (
    next(
        (d for d in (REPO.parent / "shared", REPO.parent.parent / "shared") if d.exists()),
        REPO.parent / "shared",
    )
    / "data"
    / "routing"
)
DEFAULT_DATA = [DATA / "mmlu_dev.jsonl", DATA / "gsm8k_feedback.jsonl"]
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"

Scorer = Callable[[ClassifierRouter, Sequence[Record]], FloatArray]


def _default(router: ClassifierRouter, test: Sequence[Record]) -> FloatArray:
    return strong_need(router, router.predict([r.text for r in test]))


def _raw(router: ClassifierRouter, test: Sequence[Record]) -> FloatArray:
    return router.raw_predict_features(router.featurizer.transform([r.text for r in test]))


def _gain_unshrunk(router: ClassifierRouter, test: Sequence[Record]) -> FloatArray:
    p = _raw(router, test)
    s, w = router.models.index(router.strong), router.models.index(router.weak)
    out: FloatArray = p[:, s] - p[:, w]
    return out


def _weak_fail(router: ClassifierRouter, test: Sequence[Record]) -> FloatArray:
    p = _raw(router, test)
    out: FloatArray = 1.0 - p[:, router.models.index(router.weak)]
    return out


def _shrunk(above: float) -> Scorer:
    """The gain with the strong prediction replaced by its training mean where unfamiliar >
    `above`."""

    def score(router: ClassifierRouter, test: Sequence[Record]) -> FloatArray:
        x = router.featurizer.transform([r.text for r in test])
        p = router.raw_predict_features(x)
        assert router.familiarity is not None
        far = router.familiarity.distance(x)
        s, w = router.models.index(router.strong), router.models.index(router.weak)
        out: FloatArray = np.where(far > above, router.prior[s], p[:, s]) - p[:, w]
        return out

    return score


THRESHOLDS = (1.0, 1.02, 1.04, 1.06, 1.08)
SCORERS: dict[str, Scorer] = {
    "default": _default,
    "gain_unshrunk": _gain_unshrunk,
    "weak_fail_only": _weak_fail,
    **{f"shrink_above_{t:g}": _shrunk(t) for t in THRESHOLDS},
}


def _read(path: Path) -> list[Record]:
    with path.open(encoding="utf-8") as fh:
        return [record_from_obj(json.loads(line)) for line in fh if line.strip()]


def _report(scores: FloatArray, test: Sequence[Record]) -> dict[str, float]:
    rep = two_model_report(scores, [r.scores[STRONG] for r in test], [r.scores[WEAK] for r in test])
    return {
        "n": rep.n,
        "apgr": round(rep.apgr, 4),
        "cpt50": round(rep.cpt50, 4),
        "cps95": round(rep.strong_fraction_for_95pct, 4),
    }


def _unfamiliar(router: ClassifierRouter, test: Sequence[Record]) -> FloatArray | None:
    """Each test prompt's `unfamiliar` (None without a distance model); its quantiles on
    stderr."""
    fam = router.familiarity
    if fam is None:
        return None
    far = fam.distance(router.featurizer.transform([r.text for r in test]))
    quantiles = np.quantile(far, [0.1, 0.5, 0.9])
    print(json.dumps({"unfamiliar_q10_q50_q90": quantiles.round(3).tolist()}), file=sys.stderr)
    return far


def _unfamiliar_share(router: ClassifierRouter, test: Sequence[Record]) -> float:
    far = _unfamiliar(router, test)
    return round(float((far > 1.0).mean()), 4) if far is not None else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, action="append", help="labelled JSONL (repeatable)")
    ap.add_argument("--no-reference", action="store_true", help="skip the in-domain figures")
    ap.add_argument(
        "--hold-out", action="append", help="hold out only these domains (repeatable; default: all)"
    )
    ap.add_argument(
        "--no-mmlu-unseen", action="store_true", help="skip the MMLU unseen-items reference"
    )
    ap.add_argument(
        "--classifier-l2",
        type=float,
        default=ClassifierParams().l2,
        help="the classifier's l2 penalty (default: the router's default)",
    )
    ap.add_argument(
        "--static-embedding",
        default="",
        help="add this static word embedding to the classifier's features (routers.embedding)",
    )
    args = ap.parse_args()
    paths: list[Path] = args.data or DEFAULT_DATA
    sources = {p.stem: _read(p) for p in paths}
    domains = group_by_domain(sources)
    options = TrainOptions(
        strong=STRONG,
        weak=WEAK,
        classifier=ClassifierParams(l2=args.classifier_l2),
        features=HashingParams(static_embedding=args.static_embedding),
    )
    started = time.perf_counter()
    fitted: dict[str, ClassifierRouter] = {}

    def fit(records: Sequence[Record]) -> Callable[[Sequence[Record]], FloatArray | Scored]:
        router = train(records, options)
        assert isinstance(router, ClassifierRouter)

        def score(test: Sequence[Record]) -> FloatArray | Scored:
            fitted[test[0].id] = router
            progress = {name: _report(f(router, test), test) for name, f in SCORERS.items()}
            print(json.dumps({"held_out_first_id": test[0].id, **progress}), file=sys.stderr)
            return Scored(_default(router, test), _unfamiliar(router, test))

        return score

    report = leave_one_domain_out(domains, fit, STRONG, WEAK, held_out=args.hold_out)
    out: dict[str, Any] = {
        "data": [p.name for p in paths],
        "router": options.router,
        "default_shrink_above": SHRINK_ABOVE,
        "classifier_l2": args.classifier_l2,
        "static_embedding": args.static_embedding,
        "strong": STRONG,
        "weak": WEAK,
        "domains": {k: len(v) for k, v in domains.items()},
        "leave_one_domain_out": report.summary(),
    }
    variants: dict[str, Any] = {}
    for name, scorer in SCORERS.items():
        per = {}
        for dom, recs in domains.items():
            test = [r for r in recs if STRONG in r.scores and WEAK in r.scores]
            router = fitted.get(test[0].id) if test else None
            if router is not None:
                per[dom] = _report(scorer(router, test), test)["apgr"]
        variants[name] = {"apgr": per, "worst_apgr": min(per.values())}
    out["score_variants_same_fits"] = variants
    if not args.no_reference and "mmlu_dev" in sources:
        mmlu = sources["mmlu_dev"]
        if not args.no_mmlu_unseen:
            held = split_by_id([r.id for r in mmlu], 0.2, "heldout")
            fit_recs = [r for r, h in zip(mmlu, held, strict=True) if not h]
            test = [r for r, h in zip(mmlu, held, strict=True) if h]
            router = train(fit_recs, options)
            assert isinstance(router, ClassifierRouter)
            out["mmlu_unseen_items"] = {
                name: _report(scorer(router, test), test) for name, scorer in SCORERS.items()
            }
            out["mmlu_unseen_items"]["unfamiliar_share"] = _unfamiliar_share(router, test)
        if "gsm8k_feedback" in sources:
            gsm = sources["gsm8k_feedback"]
            g_held = split_by_id([r.id for r in gsm], 0.4, "gsm8k-test")
            g_fit = [r for r, h in zip(gsm, g_held, strict=True) if not h]
            g_test = [r for r, h in zip(gsm, g_held, strict=True) if h]
            router = train(mmlu + g_fit, options)
            assert isinstance(router, ClassifierRouter)
            out["gsm8k_after_feedback"] = {
                name: _report(scorer(router, g_test), g_test) for name, scorer in SCORERS.items()
            }
            out["gsm8k_after_feedback"]["unfamiliar_share"] = _unfamiliar_share(router, g_test)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
