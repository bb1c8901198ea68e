"""TF-IDF + logistic regression router: the bar the default router must beat.

Word 1-2-gram TF-IDF (scikit-learn's defaults: tokens of 2+ word characters, lower-cased,
smooth idf, sublinear tf, L2 rows, min_df=2) and L2-regularised logistic regression, both in
numpy on a CSR matrix. Two heads, "strong correct" and "weak correct"; score = p_strong - p_weak
(`--label weak` scores 1 - p_weak instead). Evaluated with the same metrics and the same
held-out split as bench/route_eval.py.

    .venv/bin/python bench/tfidf_baseline.py [--data F.jsonl] [--test-fraction 0.2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routers.dataset import Record, record_from_obj, split_by_id
from routers.metrics import two_model_report

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO / ".." / "shared" / "data" / "routing" / "mmlu_dev.jsonl"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
SPLIT_SALT = "heldout"
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def _grams(text: str) -> list[str]:
    toks = _TOKEN.findall(text.lower())
    return toks + [a + " " + b for a, b in itertools.pairwise(toks)]


@dataclass
class Csr:
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    n_cols: int

    def dot(self, w: np.ndarray) -> np.ndarray:
        prod = self.data * w[self.indices]
        out = np.zeros(len(self.indptr) - 1)
        nz = np.diff(self.indptr) > 0
        out[nz] = np.add.reduceat(prod, self.indptr[:-1][nz])
        return out

    def tdot(self, g: np.ndarray) -> np.ndarray:
        rows = np.repeat(g, np.diff(self.indptr))
        return np.bincount(self.indices, weights=self.data * rows, minlength=self.n_cols)


class TfidfVectorizer:
    def __init__(self, min_df: int = 2) -> None:
        self.min_df = min_df
        self.vocab: dict[str, int] = {}
        self.idf = np.empty(0)

    def fit(self, texts: Sequence[str]) -> TfidfVectorizer:
        df: Counter[str] = Counter()
        for t in texts:
            df.update(set(_grams(t)))
        kept = sorted(g for g, c in df.items() if c >= self.min_df)
        self.vocab = {g: i for i, g in enumerate(kept)}
        n = len(texts)
        self.idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in kept])
        return self

    def transform(self, texts: Sequence[str]) -> Csr:
        data: list[float] = []
        indices: list[int] = []
        indptr = [0]
        for t in texts:
            counts = Counter(self.vocab[g] for g in _grams(t) if g in self.vocab)
            cols = np.array(sorted(counts), dtype=np.intp)
            vals = np.array([1.0 + math.log(counts[c]) for c in cols]) * self.idf[cols]
            norm = float(np.sqrt(vals @ vals)) if len(vals) else 1.0
            data.extend((vals / norm).tolist())
            indices.extend(cols.tolist())
            indptr.append(len(indices))
        return Csr(
            np.array(data), np.array(indices, dtype=np.intp), np.array(indptr), len(self.vocab)
        )


def fit_logistic(
    x: Csr, y: np.ndarray, l2: float, iters: int = 400, lr: float = 0.05
) -> np.ndarray:
    """Full-batch Adam on mean log-loss + l2/2 |w|^2; returns weights with the bias last."""
    w = np.zeros(x.n_cols)
    p0 = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
    b = math.log(p0 / (1 - p0))
    m = np.zeros(x.n_cols + 1)
    v = np.zeros(x.n_cols + 1)
    for t in range(1, iters + 1):
        p = 1.0 / (1.0 + np.exp(-(x.dot(w) + b)))
        r = (p - y) / len(y)
        g = np.append(x.tdot(r) + l2 * w, r.sum())
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step = lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        w -= step[:-1]
        b -= step[-1]
    return np.append(w, b)


def predict(x: Csr, wb: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x.dot(wb[:-1]) + wb[-1])))


def load_records(path: Path) -> list[Record]:
    with path.open() as fh:
        return [record_from_obj(json.loads(line)) for line in fh if line.strip()]


def baseline_scores(
    train: Sequence[Record], test: Sequence[Record], l2: float, label: str
) -> np.ndarray:
    vec = TfidfVectorizer().fit([r.text for r in train])
    xtr = vec.transform([r.text for r in train])
    xte = vec.transform([r.text for r in test])
    yw = np.array([r.scores[WEAK] for r in train])
    pw = predict(xte, fit_logistic(xtr, yw, l2))
    if label == "weak":
        return 1.0 - pw
    ys = np.array([r.scores[STRONG] for r in train])
    ps = predict(xte, fit_logistic(xtr, ys, l2))
    return ps - pw


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--salt", default=SPLIT_SALT)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--label", choices=("gain", "weak"), default="gain")
    args = ap.parse_args(argv)
    records = [r for r in load_records(args.data) if STRONG in r.scores and WEAK in r.scores]
    held = split_by_id([r.id for r in records], args.test_fraction, args.salt)
    train = [r for r, h in zip(records, held, strict=True) if not h]
    test = [r for r, h in zip(records, held, strict=True) if h]
    scores = baseline_scores(train, test, args.l2, args.label)
    rep = two_model_report(scores, [r.scores[STRONG] for r in test], [r.scores[WEAK] for r in test])
    out = {"router": f"tfidf_lr_{args.label}", "n_train": len(train), **rep.summary()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
