"""FrugalGPT-style cascade: accept the cheap model's answer or escalate, from the answer itself.

The score starts at 1 and loses weight for each sign of a weak answer: too short, a refusal
marker, hedging markers, a low mean token log-probability (when the provider returns
log-probs). Accept iff score >= threshold; the result lists every reason that cost points.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routers.decision import Decision
from routers.eligibility import Eligible

__all__ = [
    "AnswerScorer",
    "CascadeParams",
    "CascadeResult",
    "calibrate_cascade_threshold",
    "checks_answer",
    "escalates",
]

REFUSALS: tuple[str, ...] = (
    "i can't",
    "i cannot",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "as an ai",
    "i won't",
    "i will not",
    "sorry, but",
    "i apologize",
)
HEDGES: tuple[str, ...] = (
    "i'm not sure",
    "i am not sure",
    "not certain",
    "i think",
    "i believe",
    "possibly",
    "perhaps",
    "might be",
    "it depends",
    "unclear",
    "i don't know",
    "hard to say",
)


@dataclass(frozen=True, slots=True)
class CascadeParams:
    threshold: float = 0.5
    min_chars: int = 1
    short_penalty: float = 0.6
    refusal_markers: tuple[str, ...] = REFUSALS
    refusal_penalty: float = 0.6
    hedge_markers: tuple[str, ...] = HEDGES
    hedge_penalty: float = 0.15  # per marker found, at most three
    logprob_floor: float = -1.5  # mean log-prob at or below it costs the full logprob_weight
    logprob_weight: float = 0.5


@dataclass(frozen=True, slots=True)
class CascadeResult:
    accept: bool
    score: float
    threshold: float
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        verdict = "accept" if self.accept else "escalate"
        why = "; ".join(self.reasons) if self.reasons else "no weakness found"
        op = ">=" if self.accept else "<"
        return f"{verdict}: answer score {self.score:.3f} {op} {self.threshold:.3f} ({why})"


def _markers_re(markers: Sequence[str]) -> re.Pattern[str] | None:
    if not markers:
        return None
    return re.compile("|".join(re.escape(m) for m in markers))


class AnswerScorer:
    def __init__(self, params: CascadeParams | None = None) -> None:
        self.params = params or CascadeParams()
        self._refusal = _markers_re(self.params.refusal_markers)
        self._hedge = _markers_re(self.params.hedge_markers)

    def score(self, answer: str, token_logprobs: Sequence[float] | None = None) -> CascadeResult:
        p = self.params
        text = answer.strip().lower().replace("\u2019", "'")
        score = 1.0
        reasons: list[str] = []
        if len(text) < p.min_chars:
            score -= p.short_penalty
            reasons.append(f"answer shorter than {p.min_chars} chars")
        if self._refusal is not None and (m := self._refusal.search(text)):
            score -= p.refusal_penalty
            reasons.append(f"refusal marker {m.group(0)!r}")
        if self._hedge is not None:
            hedges = self._hedge.findall(text)
            if hedges:
                score -= p.hedge_penalty * min(len(hedges), 3)
                reasons.append(f"{len(hedges)} hedging marker(s)")
        if token_logprobs:
            mean_lp = float(np.mean(token_logprobs))
            if math.isfinite(mean_lp) and mean_lp < 0:
                loss = p.logprob_weight * min(mean_lp / p.logprob_floor, 1.0)
                score -= loss
                if loss > 0.05:
                    reasons.append(f"mean token log-prob {mean_lp:.2f}")
        return CascadeResult(score >= p.threshold, score, p.threshold, tuple(reasons))


def calibrate_cascade_threshold(
    answer_scores: Sequence[float], correct: Sequence[float], target_precision: float
) -> float:
    """The lowest threshold (most answers accepted) whose accepted answers are correct at least
    `target_precision` of the time on the calibration set; +inf if no threshold reaches it."""
    s = np.asarray(answer_scores, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    if len(s) != len(c) or len(s) == 0:
        raise ValueError("need equal, non-empty answer_scores and correct")
    best = math.inf
    for t in np.unique(s)[::-1]:
        accepted = s >= t
        if c[accepted].mean() >= target_precision - 1e-12:
            best = float(t)
    return best


def checks_answer(decision: Decision, cascade_policy: bool, on_unfamiliar: str, cheap: str) -> bool:
    """Whether the shell checks the answer of the decided model and may escalate: the cascade's
    `cheap` model (the policy's, else the router's weak one) was chosen by a cascade policy, or
    for an unfamiliar prompt with `on_unfamiliar="cascade"`."""
    by_policy = cascade_policy or (decision.policy == "unfamiliar" and on_unfamiliar == "cascade")
    return by_policy and decision.model == cheap


def escalates(
    verdict: CascadeResult, cheap: str, strong: str, allowed: Eligible, spent_usd: float
) -> bool:
    """Whether a rejected cheap answer goes to `strong`: it must be another model, eligible, and
    its cost bound must still fit the budget after `spent_usd` (escalating could overspend)."""
    if verdict.accept or strong == cheap or strong not in allowed:
        return False
    budget = allowed.budget_usd
    bound = allowed.cost_bound_usd.get(strong, math.inf)
    return budget is None or spent_usd + bound <= budget
