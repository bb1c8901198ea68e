"""How much of the strong model's quality a router recovers, and at what cost.

Two models (RouteLLM's measures): a router gives each prompt a score; with threshold t every prompt
with score >= t goes to the strong model. Prompts whose scores tie therefore move together: the
curve has one point per distinct score (plus "nobody strong"), never a point that splits a tie.
Between points the curve is linear (what a random tie-break would give on average).

- quality(t): mean realised quality; PGR(t) = (quality - weak) / (strong - weak)
- APGR: area under PGR over the strong-call fraction in [0, 1] (trapezoids; random = 0.5)
- CPT(x): the smallest strong-call fraction whose PGR reaches x
- strong fraction for q% of always-strong quality

N models (RouterBench): the (mean cost, mean quality) points a router reaches as its trade-off
parameter sweeps; the Pareto frontier of those points; AIQ = the area under the non-decreasing
upper convex hull of the points, divided by the cost range they span.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "CurvePoint",
    "TwoModelReport",
    "aiq",
    "apgr",
    "cpt",
    "mean_hull_height",
    "pareto_frontier",
    "pgr_curve",
    "strong_fraction_for_quality",
    "two_model_report",
    "upper_hull",
]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One reachable operating point: route strong iff score >= threshold."""

    threshold: float  # +inf for "nobody strong"
    strong_fraction: float
    quality: float
    pgr: float  # nan when strong and weak have the same mean quality
    cost_ratio: float  # routed cost / always-strong cost (nan when costs are all zero)


def _as_array(values: Sequence[float] | Array) -> Array:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def pgr_curve(
    scores: Sequence[float] | Array,
    strong_quality: Sequence[float] | Array,
    weak_quality: Sequence[float] | Array,
    strong_cost: Sequence[float] | Array | None = None,
    weak_cost: Sequence[float] | Array | None = None,
) -> list[CurvePoint]:
    """Every threshold operating point, from nobody strong to everybody strong.

    Costs are per prompt (arrays) and default to 1 (strong) and 0 (weak), making the cost ratio
    equal to the strong-call fraction.
    """
    s = _as_array(scores)
    qs = _as_array(strong_quality)
    qw = _as_array(weak_quality)
    n = len(s)
    if n == 0 or len(qs) != n or len(qw) != n:
        raise ValueError("scores, strong_quality and weak_quality need the same non-zero length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    cs = np.ones(n) if strong_cost is None else _as_array(strong_cost)
    cw = np.zeros(n) if weak_cost is None else _as_array(weak_cost)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = np.cumsum(qs[order] - qw[order])
    extra_cost = np.cumsum(cs[order] - cw[order])
    # The last index of each group of tied scores.
    ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    base_q = float(qw.mean())
    top_q = float(qs.mean())
    span = top_q - base_q
    base_cost = float(cw.sum())
    all_strong_cost = float(cs.sum())

    def point(threshold: float, k: int, g: float, c: float) -> CurvePoint:
        quality = base_q + g / n
        pgr = (quality - base_q) / span if span != 0 else math.nan
        ratio = (base_cost + c) / all_strong_cost if all_strong_cost > 0 else math.nan
        return CurvePoint(threshold, k / n, quality, pgr, ratio)

    points = [point(math.inf, 0, 0.0, 0.0)]
    for e in ends:
        points.append(point(float(s_sorted[e]), int(e) + 1, float(gain[e]), float(extra_cost[e])))
    return points


def apgr(points: Sequence[CurvePoint]) -> float:
    """Area under the PGR curve over the strong-call fraction (trapezoids)."""
    x = np.array([p.strong_fraction for p in points])
    y = np.array([p.pgr for p in points])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def cpt(points: Sequence[CurvePoint], target_pgr: float) -> float:
    """Smallest strong-call fraction whose PGR reaches `target_pgr` (1.0 if none does)."""
    reached = [p.strong_fraction for p in points if p.pgr >= target_pgr - 1e-12]
    return min(reached) if reached else 1.0


def strong_fraction_for_quality(points: Sequence[CurvePoint], target_quality: float) -> float:
    """Smallest strong-call fraction whose quality reaches `target_quality` (1.0 if none)."""
    reached = [p.strong_fraction for p in points if p.quality >= target_quality - 1e-12]
    return min(reached) if reached else 1.0


@dataclass(frozen=True, slots=True)
class TwoModelReport:
    n: int
    weak_quality: float
    strong_quality: float
    apgr: float
    cpt50: float
    cpt80: float
    strong_fraction_for_95pct: float
    points: tuple[CurvePoint, ...]

    def summary(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "weak_quality": self.weak_quality,
            "strong_quality": self.strong_quality,
            "quality_gap": self.strong_quality - self.weak_quality,
            "apgr": self.apgr,
            "cpt50": self.cpt50,
            "cpt80": self.cpt80,
            "strong_fraction_for_95pct": self.strong_fraction_for_95pct,
        }


def two_model_report(
    scores: Sequence[float] | Array,
    strong_quality: Sequence[float] | Array,
    weak_quality: Sequence[float] | Array,
    strong_cost: Sequence[float] | Array | None = None,
    weak_cost: Sequence[float] | Array | None = None,
) -> TwoModelReport:
    points = pgr_curve(scores, strong_quality, weak_quality, strong_cost, weak_cost)
    top = points[-1].quality
    return TwoModelReport(
        n=len(_as_array(scores)),
        weak_quality=points[0].quality,
        strong_quality=top,
        apgr=apgr(points),
        cpt50=cpt(points, 0.5),
        cpt80=cpt(points, 0.8),
        strong_fraction_for_95pct=strong_fraction_for_quality(points, 0.95 * top),
        points=tuple(points),
    )


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, quality) points no other point beats on both (cheaper-or-equal and better)."""
    frontier: list[tuple[float, float]] = []
    best = -math.inf
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best:
            frontier.append((cost, quality))
            best = quality
    return frontier


def upper_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave hull of the (cost, quality) points' Pareto frontier, cheapest first:
    what mixing the points can reach."""
    hull: list[tuple[float, float]] = []
    for p in pareto_frontier(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def mean_hull_height(
    points: Sequence[tuple[float, float]], lo: float, hi: float, grid_points: int = 2001
) -> float:
    """The mean height over costs [lo, hi] (hi > lo) of the points' `upper_hull`: 0 before its
    cheapest point (no credit where there is no point that cheap), flat after its dearest."""
    hull = upper_hull(points)
    xs = np.array([p[0] for p in hull])
    ys = np.array([p[1] for p in hull])
    grid = np.linspace(lo, hi, grid_points)
    height = np.where(grid < xs[0] - 1e-15, 0.0, np.interp(grid, xs, ys, right=ys[-1]))
    return float(np.trapezoid(height, grid) / (hi - lo))


def aiq(points: Sequence[tuple[float, float]]) -> float:
    """RouterBench's average improvement in quality: the area under the non-decreasing upper
    convex hull of the (cost, quality) points, divided by the cost range they span. With a single
    cost value it is the best quality at that cost."""
    if not points:
        raise ValueError("aiq needs at least one point")
    hull = upper_hull(points)  # sorted by cost, quality increasing
    lo, hi = hull[0][0], hull[-1][0]
    top_at_lo = max(q for c, q in points if c == lo)
    if hi <= lo:
        return top_at_lo
    # The hull of the frontier starts at the cheapest point; before the first hull point (none)
    # and after the last, quality is flat; area by trapezoids.
    area = 0.0
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        area += (x2 - x1) * (y1 + y2) / 2.0
    total_lo = min(c for c, _ in points)
    total_hi = max(c for c, _ in points)
    area += (total_hi - hi) * hull[-1][1]
    return area / (total_hi - total_lo)
