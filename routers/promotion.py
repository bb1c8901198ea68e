"""When a retrained router may replace the current one, and how versions are named. Pure.

Both routers score the same held-out records (each with both the strong and the weak model
scored); each is judged at the configured cost target:

- `strong_fraction` f: route the f highest-scored prompts to the strong model (each router at its
  own threshold for f, as `threshold_for_strong_fraction` would set it on this slice) and measure
  the mean realised quality. Equal cost by construction; the better quality wins.
- `quality_ratio` r: the smallest strong-call fraction (and cost ratio, when per-prompt costs are
  known) whose realised quality reaches r x always-strong quality. Equal quality; the cheaper wins.

`decide` promotes the candidate only when it is at least as good at the target as the current
router (within `tolerance`) on at least `min_records` records, and says why in one line.
APGR is reported alongside but does not decide: the target is what the operator runs at.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from routers.base import FloatArray
from routers.metrics import CurvePoint, apgr, pgr_curve, strong_fraction_for_quality

__all__ = [
    "CostTarget",
    "PromotionVerdict",
    "TargetResult",
    "decide",
    "evaluate_at_target",
    "next_version",
]

_VERSION = re.compile(r"^v(\d{4,})-")


@dataclass(frozen=True, slots=True)
class CostTarget:
    kind: Literal["strong_fraction", "quality_ratio"]
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("strong_fraction", "quality_ratio"):
            raise ValueError("target kind must be 'strong_fraction' or 'quality_ratio'")
        if not 0.0 <= self.value <= 1.0:
            raise ValueError("the target value must be in [0, 1]")

    def describe(self) -> str:
        if self.kind == "strong_fraction":
            return f"{self.value:.0%} strong calls"
        return f"{self.value:.0%} of always-strong quality"


@dataclass(frozen=True, slots=True)
class TargetResult:
    """One router on the evaluation slice."""

    n: int
    apgr: float
    strong_fraction: float  # at the target
    quality: float  # mean realised quality at the target
    cost_ratio: (
        float  # routed cost / always-strong cost at the target (strong fraction if no costs)
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interp(points: list[CurvePoint], fraction: float, attr: str) -> float:
    xs = np.array([p.strong_fraction for p in points])
    ys = np.array([getattr(p, attr) for p in points])
    return float(np.interp(fraction, xs, ys))


def evaluate_at_target(
    scores: FloatArray,
    strong_quality: FloatArray,
    weak_quality: FloatArray,
    target: CostTarget,
    strong_cost: FloatArray | None = None,
    weak_cost: FloatArray | None = None,
) -> TargetResult:
    """A router's strong-need scores on the slice -> its figures at `target`."""
    points = pgr_curve(scores, strong_quality, weak_quality, strong_cost, weak_cost)
    area = apgr(points) if not math.isnan(points[-1].pgr) else math.nan
    if target.kind == "strong_fraction":
        fraction = target.value
    else:
        fraction = strong_fraction_for_quality(points, target.value * points[-1].quality)
    quality = _interp(points, fraction, "quality")
    ratio = (
        _interp(points, fraction, "cost_ratio")
        if not math.isnan(points[-1].cost_ratio)
        else fraction
    )
    return TargetResult(int(np.asarray(scores).size), area, fraction, quality, ratio)


@dataclass(frozen=True, slots=True)
class PromotionVerdict:
    promote: bool
    reason: str
    target: CostTarget
    candidate: TargetResult | None
    current: TargetResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "target": {"kind": self.target.kind, "value": self.target.value},
            "candidate": None if self.candidate is None else self.candidate.to_dict(),
            "current": None if self.current is None else self.current.to_dict(),
        }


def decide(
    candidate: TargetResult,
    current: TargetResult | None,
    target: CostTarget,
    *,
    tolerance: float = 0.0,
    min_records: int = 50,
) -> PromotionVerdict:
    """Promote iff the candidate is at least as good as `current` at `target` (within
    `tolerance`), judged on at least `min_records` records. No current router: promote when
    there is enough evidence to evaluate the candidate at all."""
    if candidate.n < min_records:
        return PromotionVerdict(
            False,
            f"only {candidate.n} held-out records with both models scored (need {min_records})",
            target,
            candidate,
            current,
        )
    if current is None:
        return PromotionVerdict(
            True, "no current router: the first version", target, candidate, None
        )
    if target.kind == "strong_fraction":
        ok = candidate.quality >= current.quality - tolerance
        what = (
            f"quality at {target.describe()}: candidate {candidate.quality:.4f} vs current "
            f"{current.quality:.4f}"
        )
    else:
        ok = candidate.cost_ratio <= current.cost_ratio + tolerance
        what = (
            f"cost ratio for {target.describe()}: candidate {candidate.cost_ratio:.4f} vs "
            f"current {current.cost_ratio:.4f}"
        )
    verdict = "promote" if ok else "keep the current router"
    extra = f" (APGR {candidate.apgr:.3f} vs {current.apgr:.3f}, n={candidate.n})"
    return PromotionVerdict(ok, f"{verdict}: {what}{extra}", target, candidate, current)


def next_version(existing: Iterable[str], base: str) -> str:
    """The next registry version: `v{N:04d}-{base}` with N one above the highest in use, so
    versions never repeat even when two trainings produce the same data hash."""
    top = 0
    for name in existing:
        m = _VERSION.match(name)
        if m:
            top = max(top, int(m.group(1)))
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base) or "router"
    return f"v{top + 1:04d}-{safe}"
