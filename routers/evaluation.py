"""Evaluate a router on labelled records: two-model curves and N-model cost-quality points."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from routers.base import FloatArray, Router, strong_need
from routers.dataset import Record
from routers.metrics import aiq, pareto_frontier, two_model_report
from routers.policy import ModelPrice, estimate_cost_usd, estimate_input_tokens
from routers.training import label_matrix

__all__ = ["EvalOptions", "cost_matrix", "evaluate", "n_model_points", "two_model_summary"]


@dataclass(frozen=True, slots=True)
class EvalOptions:
    strong: str | None = None  # default: the router's
    weak: str | None = None
    output_tokens: int = 256  # for costs estimated from prices
    curve_points: int = 101  # the curve in the JSON is sampled at this many strong fractions
    lambdas: int = 60  # trade-off values swept for the N-model points


def cost_matrix(
    records: Sequence[Record],
    models: Sequence[str],
    prices: Mapping[str, ModelPrice],
    output_tokens: int = 256,
) -> FloatArray:
    """(n, n_models) USD per prompt: the record's own cost, else price x estimated tokens,
    else NaN."""
    out = np.full((len(records), len(models)), np.nan)
    for i, r in enumerate(records):
        n_in = estimate_input_tokens(r.text)
        for j, m in enumerate(models):
            if m in r.costs:
                out[i, j] = r.costs[m]
            elif m in prices:
                out[i, j] = estimate_cost_usd(prices[m], n_in, output_tokens)
    return out


def _sampled_curve(report: Any, k: int) -> list[dict[str, float]]:
    pts = report.points
    fr = np.array([p.strong_fraction for p in pts])
    pgr = np.array([p.pgr for p in pts])
    qual = np.array([p.quality for p in pts])
    cost = np.array([p.cost_ratio for p in pts])
    grid = np.linspace(0.0, 1.0, k)
    return [
        {
            "strong_fraction": float(g),
            "pgr": float(np.interp(g, fr, pgr)),
            "quality": float(np.interp(g, fr, qual)),
            "cost_ratio": float(np.interp(g, fr, cost)),
        }
        for g in grid
    ]


def two_model_summary(
    scores: FloatArray,
    strong_q: FloatArray,
    weak_q: FloatArray,
    strong_cost: FloatArray | None,
    weak_cost: FloatArray | None,
    curve_points: int,
) -> dict[str, Any]:
    rep = two_model_report(scores, strong_q, weak_q, strong_cost, weak_cost)
    out: dict[str, Any] = dict(rep.summary())
    costs_known = strong_cost is not None and weak_cost is not None
    out["cost_ratio_at_cpt50"] = (
        next((p.cost_ratio for p in rep.points if p.strong_fraction >= rep.cpt50 - 1e-12), math.nan)
        if costs_known
        else None
    )
    out["curve"] = _sampled_curve(rep, curve_points)
    return out


def n_model_points(
    predicted: FloatArray, actual: FloatArray, cost: FloatArray, lambdas: int
) -> list[tuple[float, float]]:
    """(mean cost, mean actual quality) as lambda in argmax(predicted - lambda x cost) sweeps
    from 0 (best predicted quality) to a value where the cheapest model always wins."""
    spread_q = float(np.nanmax(predicted) - np.nanmin(predicted)) or 1.0
    cost_gap = np.nanmax(cost, axis=1) - np.nanmin(cost, axis=1)
    positive = cost_gap[cost_gap > 0]
    smallest = float(positive.min()) if len(positive) else 1.0
    top = 10 * spread_q / smallest
    grid = np.concatenate([[0.0], np.geomspace(top * 1e-6, top, lambdas - 1)])
    rows = np.arange(len(predicted))
    points = []
    for lam in grid:
        pick = np.argmax(predicted - lam * cost, axis=1)
        points.append((float(cost[rows, pick].mean()), float(actual[rows, pick].mean())))
    return points


def evaluate(
    router: Router,
    records: Sequence[Record],
    prices: Mapping[str, ModelPrice] | None = None,
    options: EvalOptions | None = None,
) -> dict[str, Any]:
    """Everything the `eval` command reports, as JSON-able data."""
    opts = options or EvalOptions()
    models = router.models
    strong = opts.strong or router.strong
    weak = opts.weak or router.weak
    y = label_matrix(records, models)
    predicted = router.predict([r.text for r in records])
    s, w = models.index(strong), models.index(weak)
    both = ~np.isnan(y[:, s]) & ~np.isnan(y[:, w])
    cost = cost_matrix(records, models, prices or {}, opts.output_tokens)
    costs_known = bool(both.any()) and not np.isnan(cost[both][:, [s, w]]).any()
    sc = cost[both, s] if costs_known else None
    wc = cost[both, w] if costs_known else None
    score = strong_need(router, predicted)[both]
    qs, qw = y[both, s], y[both, w]
    result: dict[str, Any] = {
        "router": router.name,
        "router_version": router.version,
        "models": list(models),
        "strong": strong,
        "weak": weak,
        "n": len(records),
        "n_two_model": int(both.sum()),
    }
    result["two_model"] = two_model_summary(score, qs, qw, sc, wc, opts.curve_points)
    result["oracle"] = two_model_summary(qs - qw, qs, qw, sc, wc, opts.curve_points)
    gap = float(qs.mean() - qw.mean())
    need = (0.95 * float(qs.mean()) - float(qw.mean())) / gap if gap > 0 else 0.0
    result["random"] = {
        "apgr": 0.5,
        "cpt50": 0.5,
        "cpt80": 0.8,
        "strong_fraction_for_95pct": min(max(need, 0.0), 1.0),
    }
    complete = ~np.isnan(y).any(axis=1) & ~np.isnan(cost).any(axis=1)
    if len(models) >= 2 and complete.any():
        pts = n_model_points(predicted[complete], y[complete], cost[complete], opts.lambdas)
        singles = {
            m: (float(cost[complete, j].mean()), float(y[complete, j].mean()))
            for j, m in enumerate(models)
        }
        best = y[complete].max(axis=1, keepdims=True)
        oracle_cost = np.where(y[complete] >= best, cost[complete], np.inf).min(axis=1)
        result["n_model"] = {
            "n": int(complete.sum()),
            "points": [list(p) for p in pts],
            "pareto": [list(p) for p in pareto_frontier(pts)],
            "aiq": aiq(pts),
            "single_models": {m: list(p) for m, p in singles.items()},
            "random_aiq": aiq(list(singles.values())),
            "oracle": [float(oracle_cost.mean()), float(best.mean())],
        }
    else:
        result["n_model"] = None
    return result
