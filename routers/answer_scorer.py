"""A learned cascade scorer: (prompt, the cheap model's answer) -> should we escalate?

FrugalGPT trains its answer scorer; this one is a small L2-regularised logistic regression on
features of the answer's *structure* that carry over between tasks, not on its words:

- final-answer markers (`#### 42`, "the answer is", `\\boxed{}`, "final answer") and whether a
  final number can be read at all, is an integer, repeats a number of the prompt, or agrees with
  the last computed result;
- arithmetic consistency: calculator annotations `<<a*b=c>>` and plain `a op b = c` steps are
  re-evaluated (a tiny safe evaluator, no `eval`); the share that is wrong;
- hedging, refusals and self-corrections;
- length (log chars, answer/prompt ratio), steps (lines), number overlap between prompt and
  answer (prompt numbers used, answer numbers that come from nowhere), algebra with unknowns.

`escalate_score` = P(the cheap answer is not good enough), higher = escalate. Pure numpy; the
features are regexes over one answer, so scoring stays well under a millisecond.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from routers.cascade import HEDGES, REFUSALS, CascadeResult
from routers.dataset import Record, hash_bytes
from routers.errors import ArtifactError, TrainingDataError
from routers.training import cheapest_model

__all__ = [
    "ANSWER_FEATURE_NAMES",
    "CASCADE_KIND",
    "AnswerScorerParams",
    "LearnedAnswerScorer",
    "answer_features",
    "answered_rows",
    "cascade_data_sha256",
    "fit_answer_scorer",
    "is_answer_scorer",
    "load_answer_scorer",
    "save_answer_scorer",
    "train_answer_scorer",
]

CASCADE_KIND = "cascade"
MAX_READ_CHARS = 16_000  # longer answers (and prompts) are read in part
MAX_CHECKED_STEPS = 24  # arithmetic steps re-evaluated per answer (bounds the scoring time)
FORMAT_VERSION = 1

FloatArray = npt.NDArray[np.float64]

ANSWER_FEATURE_NAMES: tuple[str, ...] = (
    "log_answer_chars",
    "log_answer_prompt_ratio",
    "log_answer_lines",
    "has_final_marker",
    "has_final_number",
    "final_is_integer",
    "final_in_prompt",
    "final_matches_last_result",
    "final_negative",
    "log_final_magnitude",
    "log_checked_steps",
    "wrong_step_frac",
    "log_wrong_steps",
    "prompt_numbers_used_frac",
    "answer_numbers_novel_frac",
    "log_prompt_numbers",
    "log_prompt_chars",
    "hedges",
    "refusal",
    "self_corrections",
    "unknown_variables",
    "decimal_results_frac",
    "distinct_final_candidates",
    "ends_unfinished",
)

_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANNOT_RE = re.compile(r"<<([^<>=]{1,200})=([^<>]{1,60})>>")
# plain steps: "a op b = c" chains on one line, outside the annotations
_TIMES_RE = re.compile(r"(?<=[\d)%])\s*[xX\u00d7\u00b7]\s*(?=[\d($])")
_CHAIN_BREAK_RE = re.compile(r"[^\d.,$%()\s+\-*/÷^=]+|\n")
_OPERATOR_RE = re.compile(r"\d\s*[-+*/÷^]\s*[\d($(]")
_MARKERS: tuple[str, ...] = ("####", "\\boxed{", "final answer", "the answer is", "answer:")
_FIRST_NUM_RE = re.compile(r"[^0-9\n]{0,40}?(-?\$?\d[\d,]*(?:\.\d+)?)")
_CORRECTIONS: tuple[str, ...] = (
    "wait,",
    "actually",
    "mistake",
    "oops",
    "let me re",
    "correction",
    "i made an error",
    "recalculat",
    "that's not right",
    "this is incorrect",
)
_WORD_RE = re.compile(r"[a-z]+")
_NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "half": 0.5,
    "twice": 2,
    "double": 2,
    "triple": 3,
    "quarter": 0.25,
    "dozen": 12,
}


def _to_float(token: str) -> float | None:
    t = token.replace(",", "").replace("$", "").strip().rstrip(".")
    if not t or t in ("-", "."):
        return None
    try:
        return float(t)
    except ValueError:
        return None


_EXPR_CLEAN = re.compile(r"[$,\s]")
_BINARY_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([-+*/])\s*(\d+(?:\.\d+)?)\s*")
_TOKEN_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+|\*\*|[-+*/()%]")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "%": 2, "**": 3}


class _Parser:
    """Precedence climbing over number and operator tokens; raises ValueError on anything else."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0

    def atom(self, depth: int) -> float:
        if depth > 30 or self.i >= len(self.tokens):
            raise ValueError("bad expression")
        tok = self.tokens[self.i]
        self.i += 1
        if tok == "(":
            value = self.expr(0, depth + 1)
            if self.i >= len(self.tokens) or self.tokens[self.i] != ")":
                raise ValueError("unbalanced")
            self.i += 1
            return value
        if tok == "-":
            return -self.atom(depth + 1)
        if tok == "+":
            return self.atom(depth + 1)
        if tok[0].isdigit() or tok[0] == ".":
            return float(tok)
        raise ValueError("bad token")

    def expr(self, min_prec: int, depth: int = 0) -> float:
        left = self.atom(depth)
        while self.i < len(self.tokens):
            op = self.tokens[self.i]
            prec = _PREC.get(op)
            if prec is None or prec <= min_prec - (1 if op == "**" else 0):
                break
            self.i += 1
            right = self.expr(prec, depth + 1)
            left = _apply(op, left, right)
        return left


def _apply(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    if op == "%":
        return a % b
    if abs(b) > 12 or abs(a) > 1e6:
        raise ValueError("power too large")
    return float(a**b)


def safe_arith(expr: str) -> float | None:
    """The value of a plain arithmetic expression (numbers, + - * / x, the times and divide
    signs, % ^, parentheses), or None when it is anything else. Never calls `eval`."""
    simple = _BINARY_RE.fullmatch(expr)
    if simple is not None:  # the common case, "a op b"
        try:
            return _apply(simple.group(2), float(simple.group(1)), float(simple.group(3)))
        except ZeroDivisionError:
            return None
    e = _EXPR_CLEAN.sub("", expr)
    e = e.replace("\u00d7", "*").replace("x", "*").replace("X", "*").replace("\u00f7", "/")
    e = e.replace("\u00b7", "*").replace("^", "**")
    if not e or len(e) > 200:
        return None
    if "%" in e:
        e = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", e)
    tokens = _TOKEN_RE.findall(e)
    if sum(len(t) for t in tokens) != len(e):
        return None  # something that is not arithmetic
    parser = _Parser(tokens)
    try:
        value = parser.expr(0)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if parser.i != len(tokens) or not math.isfinite(value):
        return None
    return value


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(1e-6, 0.011 * max(abs(a), abs(b)) if abs(b) < 1 else 0.006 * abs(b))


def _shown_close(value: float, shown: str) -> bool:
    """Whether `shown` (as written: "0.17", "86,400") is `value` rounded as shown."""
    s = shown.replace(",", "").replace("$", "").strip().rstrip(".%")
    target = _to_float(s)
    if target is None:
        return False
    decimals = len(s.split(".", 1)[1]) if "." in s else 0
    tol = max(0.5 * 10.0**-decimals + 1e-9, 0.005 * abs(target))
    return abs(value - target) <= tol


def _plain_steps(text: str, results: list[float], limit: int) -> tuple[int, int]:
    """(checked, wrong) over "expr = value" links of arithmetic chains, at most `limit` links;
    appends each checked link's stated value to `results`."""
    checked = wrong = 0
    for line in _TIMES_RE.sub(" * ", text).splitlines():
        if "=" not in line or checked >= limit:
            continue
        for chain in _CHAIN_BREAK_RE.split(line):
            if "=" not in chain:
                continue
            parts = [p.strip().strip(",.") for p in chain.split("=")]
            for left, right in itertools.pairwise(parts):
                if not _OPERATOR_RE.search(left) or _OPERATOR_RE.search(right):
                    continue
                v = safe_arith(left)
                r = _to_float(right.rstrip("%"))
                if v is None or r is None:
                    continue
                checked += 1
                results.append(r)
                if not _shown_close(v, right):
                    wrong += 1
    return checked, wrong


def _final_numbers(low: str) -> list[tuple[int, float]]:
    """(position, value) of the number after each final-answer marker, in text order."""
    found: list[tuple[int, float]] = []
    for marker in _MARKERS:
        start = low.find(marker)
        while start >= 0:
            end = start + len(marker)
            m = _FIRST_NUM_RE.match(low, end)
            if m is not None:
                v = _to_float(m.group(1))
                if v is not None:
                    found.append((start, v))
            start = low.find(marker, end)
    found.sort()
    return found


_ONE_LETTER_EQ_RE = re.compile(r"=(?:(?<=[^a-z0-9][a-z] =)|(?<=[^a-z0-9][a-z]=))")


def _unknowns(low: str) -> int:
    """Signs of algebra with unknowns: "let x be", "let's call it b", "x = 5" (one letter)."""
    return low.count("let ") + low.count("let's ") + len(_ONE_LETTER_EQ_RE.findall(" " + low))


def _near(a: FloatArray, b: FloatArray) -> npt.NDArray[np.bool_]:
    """(len(a), len(b)): whether a[i] and b[j] are the same number up to rounding."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=bool)
    diff = np.abs(a[:, None] - b[None, :])
    scale = np.maximum(np.abs(a)[:, None], np.abs(b)[None, :])
    out: npt.NDArray[np.bool_] = diff <= np.maximum(1e-6, 0.006 * scale)
    return out


def _numbers(text: str) -> list[float]:
    out = []
    for tok in _NUM_RE.findall(text):
        try:
            out.append(float(tok.replace(",", "").replace("$", "")))
        except ValueError:
            continue
    return out


def answer_features(prompt: str, answer: str) -> list[float]:
    """The features of one (prompt, answer) pair, in the order of `ANSWER_FEATURE_NAMES`."""
    full = answer.strip()
    n_chars = len(full)
    # a very long answer is read as its head and its tail (where the final answer is): the
    # scoring time stays bounded whatever the input
    text = full if n_chars <= MAX_READ_CHARS else full[:12_000] + "\n" + full[-4_000:]
    n_prompt = len(prompt)
    prompt = prompt[:MAX_READ_CHARS]
    low = text.lower().replace("\u2019", "'")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    prompt_nums = set(_numbers(prompt))
    prompt_nums.update(
        float(_NUMBER_WORDS[w]) for w in _WORD_RE.findall(prompt.lower()) if w in _NUMBER_WORDS
    )
    answer_nums = _numbers(re.sub(r"<<[^<>]*>>", " ", text))

    # arithmetic: calculator annotations, then plain steps outside them
    annots = _ANNOT_RE.findall(text)
    results: list[float] = []
    annot_wrong = 0
    annot_checked = 0
    for expr, res in annots[:MAX_CHECKED_STEPS]:
        r = _to_float(res)
        v = safe_arith(expr)
        if r is None or v is None:
            continue
        annot_checked += 1
        results.append(r)
        if not _shown_close(v, res):
            annot_wrong += 1
    step_checked, step_wrong = _plain_steps(
        _ANNOT_RE.sub(" ", text), results, MAX_CHECKED_STEPS - annot_checked
    )
    checked, wrong = annot_checked + step_checked, annot_wrong + step_wrong
    decimal_results = sum(1 for r in results if abs(r - round(r)) > 1e-9)

    final_vals = _final_numbers(low)
    final: float | None = final_vals[-1][1] if final_vals else None
    if final is None and answer_nums:
        final = answer_nums[-1]  # the last number said
    has_marker = any(m in low for m in _MARKERS)
    known = np.array(sorted(prompt_nums | set(results)), dtype=np.float64)
    said = np.array(answer_nums, dtype=np.float64)
    novel = int((~_near(said, known).any(axis=1)).sum()) if len(said) else 0
    pn = np.array(sorted(prompt_nums), dtype=np.float64)
    used = int(_near(pn, np.concatenate([said, np.array(results)])).any(axis=1).sum())
    hedges = sum(low.count(m) for m in HEDGES)
    tail = text[-1:] if text else ""

    return [
        math.log1p(n_chars),
        math.log((n_chars + 10) / (n_prompt + 10)),
        math.log1p(len(lines)),
        float(has_marker),
        float(final is not None),
        float(final is not None and abs(final - round(final)) < 1e-9),
        float(final is not None and any(_close(final, p) for p in prompt_nums)),
        float(final is not None and bool(results) and _close(final, results[-1])),
        float(final is not None and final < 0),
        math.log10(1.0 + abs(final)) if final is not None else 0.0,
        math.log1p(checked),
        wrong / checked if checked else 0.0,
        math.log1p(wrong),
        used / len(prompt_nums) if prompt_nums else 1.0,
        novel / len(answer_nums) if answer_nums else 0.0,
        math.log1p(len(prompt_nums)),
        math.log1p(n_prompt),
        float(min(hedges, 3)),
        float(any(m in low for m in REFUSALS)),
        float(min(sum(low.count(m) for m in _CORRECTIONS), 3)),
        float(min(_unknowns(low), 5)),
        decimal_results / len(results) if results else 0.0,
        float(min(len({round(v, 4) for _, v in final_vals}), 3)),
        float(bool(text) and tail not in ".!?0123456789)]}*$%" and not has_marker),
    ]


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerScorerParams:
    l2: float = 10.0  # on standardised features; the penalty is l2 / n_rows
    iters: int = 50  # Newton steps (stops early when converged)


class LearnedAnswerScorer:
    """P(escalate) = sigmoid(-(w . standardise(features) + b)), where the logistic model
    predicts that the cheap answer is good enough."""

    name = CASCADE_KIND

    def __init__(
        self,
        *,
        version: str,
        strong: str,
        weak: str,
        weights: FloatArray,
        bias: float,
        center: FloatArray,
        scale: FloatArray,
        params: AnswerScorerParams,
        feature_names: Sequence[str] = ANSWER_FEATURE_NAMES,
    ) -> None:
        if tuple(feature_names) != ANSWER_FEATURE_NAMES:
            raise ArtifactError(
                "the answer scorer was trained on other features than this build computes: "
                "retrain with `llmroute train --router cascade`"
            )
        n = len(ANSWER_FEATURE_NAMES)
        if weights.shape != (n,) or center.shape != (n,) or scale.shape != (n,):
            raise ArtifactError(f"answer scorer arrays must have shape ({n},)")
        self.version = version
        self.strong = strong
        self.weak = weak
        self.models = (strong, weak)
        self.weights = weights.astype(np.float64)
        self.bias = float(bias)
        self.center = center.astype(np.float64)
        self.scale = scale.astype(np.float64)
        self.hyper = params
        self._w = self.weights * self.scale
        self._b = self.bias - float(self.center @ self._w)

    def good_probability(self, prompts: Sequence[str], answers: Sequence[str]) -> FloatArray:
        if len(prompts) != len(answers):
            raise ValueError("prompts and answers need the same length")
        x = np.array(
            [answer_features(p, a) for p, a in zip(prompts, answers, strict=True)],
            dtype=np.float64,
        ).reshape(len(prompts), len(ANSWER_FEATURE_NAMES))
        out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * (x @ self._w + self._b)))
        return out

    def escalate_score(self, prompts: Sequence[str], answers: Sequence[str]) -> FloatArray:
        """Higher = escalate: P(the cheap answer is not good enough)."""
        out: FloatArray = 1.0 - self.good_probability(prompts, answers)
        return out

    def verdict(self, prompt: str, answer: str, threshold: float) -> CascadeResult:
        """Accept iff P(good enough) >= threshold; the reasons name the features that pulled
        the score down most."""
        f = np.array(answer_features(prompt, answer), dtype=np.float64)
        contrib = (f - self.center) * self.weights * self.scale
        p = float(0.5 * (1.0 + math.tanh(0.5 * (float(f @ self._w) + self._b))))
        worst = np.argsort(contrib)[:3]
        reasons = tuple(
            f"{ANSWER_FEATURE_NAMES[i]}={f[i]:.3g} ({contrib[i]:+.2f})"
            for i in worst
            if contrib[i] < -0.25
        )
        return CascadeResult(p >= threshold, p, threshold, reasons)

    def params(self) -> dict[str, Any]:
        return asdict(self.hyper)


def fit_answer_scorer(
    prompts: Sequence[str],
    answers: Sequence[str],
    good: Sequence[float],
    *,
    strong: str,
    weak: str,
    version: str,
    params: AnswerScorerParams | None = None,
) -> LearnedAnswerScorer:
    """Fit the logistic model (Newton's method on the L2-penalised mean log-loss; labels in
    [0, 1] may be fractional). Deterministic."""
    hp = params or AnswerScorerParams()
    if len(prompts) == 0:
        raise TrainingDataError("no (prompt, cheap answer, score) rows to train the scorer on")
    y = np.asarray(good, dtype=np.float64)
    if len(y) != len(prompts) or len(answers) != len(prompts):
        raise TrainingDataError("prompts, answers and scores need the same length")
    if np.isnan(y).any() or (y < 0).any() or (y > 1).any():
        raise TrainingDataError("scores must be in [0, 1]")
    x = np.array([answer_features(p, a) for p, a in zip(prompts, answers, strict=True)])
    center = x.mean(axis=0)
    scale = 1.0 / (x.std(axis=0) + 1e-6)
    z = (x - center) * scale
    n, d = z.shape
    prior = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    w = np.zeros(d)
    b = math.log(prior / (1 - prior))
    lam = hp.l2 / n
    zb = np.hstack([z, np.ones((n, 1))])
    for _ in range(hp.iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (z @ w + b)))
        grad = zb.T @ (p - y) / n
        grad[:d] += lam * w
        h = (zb * (p * (1 - p))[:, None]).T @ zb / n
        h[np.arange(d), np.arange(d)] += lam
        h += 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, grad)
        w -= step[:d]
        b -= float(step[d])
        if float(np.abs(step).max()) < 1e-8:
            break
    return LearnedAnswerScorer(
        version=version,
        strong=strong,
        weak=weak,
        weights=w,
        bias=b,
        center=center,
        scale=scale,
        params=hp,
    )


def cascade_data_sha256(records: Sequence[Record], weak: str) -> str:
    """A hash of what the scorer learns from: ids, prompts, the cheap answers and their scores
    (independent of record order)."""
    digest = hashlib.sha256()
    lines = sorted(
        json.dumps([r.id, r.text, r.answers.get(weak), r.scores.get(weak)], ensure_ascii=False)
        for r in records
    )
    for line in lines:
        digest.update(hash_bytes(line) + b"\n")
    return digest.hexdigest()


def answered_rows(records: Sequence[Record], weak: str) -> list[Record]:
    """The records that carry both the cheap model's answer and its score."""
    return [r for r in records if weak in r.answers and weak in r.scores]


def train_answer_scorer(
    records: Sequence[Record],
    *,
    strong: str | None = None,
    weak: str | None = None,
    params: AnswerScorerParams | None = None,
) -> LearnedAnswerScorer:
    """Train on the records with the cheap (`weak`) model's answer and score. Defaults: weak =
    the cheapest model (record costs), else the worst mean score; strong = the best mean score
    among the others."""
    models = sorted({m for r in records for m in r.scores})
    for role, chosen in (("strong", strong), ("weak", weak)):
        if chosen is not None and chosen not in models:
            raise TrainingDataError(f"{role} model {chosen!r} has no scores in the data")
    if len(models) < 2:
        raise TrainingDataError(f"need scores for at least two models, found {models}")
    means = {m: float(np.mean([r.scores[m] for r in records if m in r.scores])) for m in models}
    if weak is None:
        weak = cheapest_model(records, models) or min(models, key=lambda m: (means[m], m))
    if strong is None:
        strong = max((m for m in models if m != weak), key=lambda m: (means[m], m))
    if strong == weak:
        raise TrainingDataError("strong and weak must be different models")
    rows = answered_rows(records, weak)
    if len(rows) < 10:
        raise TrainingDataError(
            f"only {len(rows)} records carry an answer and a score of the cheap model {weak!r}; "
            f"the cascade scorer needs `answers` in the dataset (at least 10 rows)"
        )
    version = f"cascade-{cascade_data_sha256(rows, weak)[:12]}"
    return fit_answer_scorer(
        [r.text for r in rows],
        [r.answers[weak] for r in rows],
        [r.scores[weak] for r in rows],
        strong=strong,
        weak=weak,
        version=version,
        params=params,
    )


# --- artifact -------------------------------------------------------------------------------


def save_answer_scorer(
    scorer: LearnedAnswerScorer,
    directory: str | Path,
    *,
    data_sha256: str = "",
    metrics: Mapping[str, Any] | None = None,
    calibration: Mapping[str, float] | None = None,
) -> Path:
    """An artifact folder like a router's (meta.json + arrays.npz) with `router: "cascade"`."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "router": CASCADE_KIND,
        "version": scorer.version,
        "models": list(scorer.models),
        "strong": scorer.strong,
        "weak": scorer.weak,
        "data_sha256": data_sha256,
        "features": {"kind": "answer", "names": list(ANSWER_FEATURE_NAMES)},
        "params": scorer.params(),
        "metrics": dict(metrics or {}),
        "calibration": {k: v for k, v in (calibration or {}).items() if math.isfinite(v)},
    }
    with (path / "arrays.npz").open("wb") as fh:
        np.savez(
            fh,
            weights=scorer.weights,
            bias=np.array([scorer.bias]),
            center=scorer.center,
            scale=scorer.scale,
        )
    (path / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def is_answer_scorer(directory: str | Path) -> bool:
    """Whether `directory` holds a cascade answer-scorer artifact (False when unreadable)."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("router") == CASCADE_KIND


def load_answer_scorer(directory: str | Path) -> tuple[LearnedAnswerScorer, dict[str, Any]]:
    """The scorer and its meta.json; `ArtifactError` when missing, damaged or of another kind."""
    path = Path(directory)
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("router") != CASCADE_KIND:
            raise ArtifactError(f"{path} is not a cascade answer-scorer artifact")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: answer scorer format {meta.get('format_version')!r}, this build reads "
                f"{FORMAT_VERSION}: retrain with `llmroute train --router cascade`"
            )
        with np.load(path / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        scorer = LearnedAnswerScorer(
            version=str(meta["version"]),
            strong=str(meta["strong"]),
            weak=str(meta["weak"]),
            weights=arrays["weights"],
            bias=float(arrays["bias"][0]),
            center=arrays["center"],
            scale=arrays["scale"],
            params=AnswerScorerParams(**meta["params"]),
            feature_names=tuple(meta["features"]["names"]),
        )
    except ArtifactError:
        raise
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is not an artifact: {exc.filename} missing") from exc
    except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"{path}: damaged answer-scorer artifact ({exc!r})") from exc
    return scorer, meta
