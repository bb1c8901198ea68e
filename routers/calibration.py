"""Choose the two-model threshold on a calibration set (threshold semantics: strong iff
score >= threshold, so tied scores always move together)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from routers.base import FloatArray
from routers.metrics import pgr_curve

__all__ = ["threshold_for_quality", "threshold_for_strong_fraction"]


def threshold_for_strong_fraction(scores: Sequence[float] | FloatArray, fraction: float) -> float:
    """The threshold sending at most `fraction` of the calibration prompts to the strong model,
    as close to it as ties allow (RouteLLM's `calibrate_threshold`, without splitting ties).
    fraction 0 -> +inf (never strong); fraction 1 -> the lowest score (always strong)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise ValueError("no calibration scores")
    k = math.floor(fraction * len(s) + 1e-9)
    if k == 0:
        return math.inf
    t = float(s[k - 1])
    if k < len(s) and s[k] == t:
        # s[k] ties with the k-th score: taking t would exceed the fraction; use the next
        # strictly higher distinct score (fewer strong calls).
        higher = s[: k - 1][s[: k - 1] > t]
        return float(higher.min()) if len(higher) else math.inf
    return t


def threshold_for_quality(
    scores: Sequence[float] | FloatArray,
    strong_quality: Sequence[float] | FloatArray,
    weak_quality: Sequence[float] | FloatArray,
    target_ratio: float = 0.95,
) -> float:
    """The highest threshold (fewest strong calls) whose realised quality on the calibration set
    reaches `target_ratio` x always-strong quality."""
    points = pgr_curve(scores, strong_quality, weak_quality)
    goal = target_ratio * points[-1].quality
    for p in points:  # ordered from the highest threshold down
        if p.quality >= goal - 1e-12:
            return p.threshold
    return points[-1].threshold


def score_quantiles(scores: Sequence[float] | FloatArray, points: int = 101) -> list[float]:
    """The score distribution of a calibration set, as `points` evenly spaced quantiles; stored
    in the artifact so any strong fraction maps to a threshold at serving time."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no calibration scores")
    return [float(v) for v in np.quantile(values, np.linspace(0.0, 1.0, points))]


def threshold_from_quantiles(quantiles: Sequence[float], fraction: float) -> float:
    """The threshold sending about `fraction` of the calibration prompts to the strong model
    (strong iff score >= threshold), interpolated between the stored quantiles."""
    if not quantiles:
        raise ValueError("no stored quantiles")
    q = [float(v) for v in quantiles]
    pos = (1.0 - min(max(fraction, 0.0), 1.0)) * (len(q) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(q) - 1)
    return q[lo] + (q[hi] - q[lo]) * (pos - lo)
