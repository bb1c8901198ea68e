"""`PooledRouter` (`pooled`): N models from little data.

Every model's quality is its mean quality plus a residual that depends on the prompt:

    q(x, m) = mu_m + sum_i alpha_im k(x, x_i),   k(x, x') = exp(t (cos(z(x), z(x')) - 1))

- `mu_m`: the model's mean score, shrunk towards the mean over models (`prior_weight`
  pseudo-counts), so a model with few labels does not get an extreme mean;
- the residuals of all models share one kernel over the training prompts, and are fitted by
  kernel ridge regression with one penalty for all models. The prompts are compared in `z`:
  a seeded random projection of the standardised hashing features (unit length), joined by
  the featurizer's static word embedding (unit length) times a weight w, the whole scaled to
  unit length. Lexical and semantic: the embedding puts a topic in other words next to the
  same topic. The weight (0 = hashing only), the kernel width and the penalty are chosen by
  exact leave-one-out error over a grid (the data pick how far to trust prompt-level signal;
  with little or no signal, predictions fall back to the per-model means, i.e. picking by
  price);
- the fitted residuals are then scaled by a factor from `residual_scales` (at most 1: towards
  the per-model means) chosen by the decisions it makes on the training prompts themselves:
  the exact leave-one-out residual predictions, scaled, drive the lambda policy over the
  training rows with their own costs, and the scale whose (cost, quality) curve has the largest
  area wins (ties: the larger scale). Squared error judges magnitudes; the policy acts on
  differences between models against per-prompt costs, where an over-trusted residual moves a
  prompt off the best-value model. Without costs in the training rows it is chosen by
  leave-one-out squared error instead;
- optionally (`rank` > 0) the residual targets are first reduced to their top components
  across models, so models share how prompts move them (on the 14-model proxy of
  bench/n_model_small.py this lost more than it pooled, so it is off by default).

Predictions are on the scale of the scores themselves (means plus residuals, clipped to [0, 1]),
so one model's prediction can be compared with another's: the quality-target and lambda policies
see calibrated per-model qualities. Missing labels (NaN) are filled with the model's mean before
fitting (they add no residual). Training solves an (n x n) system: above `max_anchors` rows a
deterministic subset of anchors carries the kernel (subset of regressors).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from routers.base import FloatArray
from routers.learned import (
    F32,
    Arrays,
    FeatureBase,
    FeatureRouter,
    embed,
    label_means,
    random_projection,
)
from routers.metrics import mean_hull_height, upper_hull

__all__ = [
    "LambdaPoint",
    "PooledParams",
    "PooledRouter",
    "choose_residual_scale",
    "fit_pooled",
    "hull_area",
    "lambda_curve",
    "lambda_for_budget",
    "lambda_for_quality",
]


@dataclass(frozen=True, slots=True)
class PooledParams:
    proj_dim: int = 64  # the hashing features in z (the embedding carries most of the topic)
    temperatures: tuple[float, ...] = (1.0, 3.0, 10.0)  # kernel widths tried (by LOO error)
    # weights of the static embedding in `z` tried (by LOO error; only 0 without one)
    embedding_weights: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    penalties: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # ridge grid
    rank: int = 0  # > 0: keep only this many components of the residuals (0: all)
    prior_weight: float = 5.0  # pseudo-counts shrinking each model's mean to the overall mean
    # factors on the fitted residuals, one chosen by the training rows' own decisions (above)
    residual_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_anchors: int = 2000
    seed: int = 0


class PooledRouter(FeatureRouter):
    name = "pooled"
    params_type = PooledParams
    array_names = ("projection", "keys", "alpha", "means")

    def __init__(self, base: FeatureBase, hyper: PooledParams, arrays: Arrays) -> None:
        super().__init__(base, hyper, arrays)
        self.hyper: PooledParams = hyper
        self.projection = arrays["projection"].astype(np.float32)  # (dim, proj_dim)
        self.keys = arrays["keys"].astype(np.float32)  # (n_anchors, proj_dim), unit rows
        self.alpha = arrays["alpha"].astype(np.float64)  # (n_anchors, n_models)
        self.means = arrays["means"].astype(np.float64)  # (n_models,)
        self.temperature = float(arrays["temperature"])  # the chosen kernel width and penalty
        self.penalty = float(arrays["penalty"])
        # the chosen residual scale (already applied to `alpha`) and what chose it
        self.residual_scale = float(arrays.get("residual_scale", np.asarray(1.0)))
        self.scale_chosen_by = str(arrays.get("scale_chosen_by", np.asarray("none")))
        # the chosen weight of the static embedding (artifacts from before it: none)
        self.embedding_weight = float(arrays.get("embedding_weight", np.asarray(0.0)))
        self.embedding_columns = self.featurizer.embedding_columns

    @classmethod
    def fit(
        cls,
        base: FeatureBase,
        xs: F32,
        y: FloatArray,
        hyper: Any,
        costs: FloatArray | None = None,
    ) -> Self:
        embedding = base.featurizer.embedding_columns
        return cls(base, hyper, fit_pooled(xs, y, hyper, costs, embedding))

    @classmethod
    def from_saved(cls, base: FeatureBase, params: Mapping[str, Any], arrays: Arrays) -> Self:
        p = dict(params)
        chosen = {
            "temperature": np.asarray(p.pop("chosen_temperature")),
            "penalty": np.asarray(p.pop("chosen_penalty")),
            # artifacts from before the residual scale: their alpha is unscaled
            "residual_scale": np.asarray(p.pop("chosen_scale", 1.0)),
            "scale_chosen_by": np.asarray(p.pop("scale_chosen_by", "none")),
            "embedding_weight": np.asarray(p.pop("chosen_embedding_weight", 0.0)),
        }
        p["temperatures"] = tuple(p["temperatures"])
        p["penalties"] = tuple(p["penalties"])
        for grid in ("residual_scales", "embedding_weights"):
            if grid in p:
                p[grid] = tuple(p[grid])
        return cls(base, PooledParams(**p), {**arrays, **chosen})

    def predict_features(self, x: F32) -> FloatArray:
        z = _joint(
            embed(self.standardizer.apply(x), self.projection),
            x[:, self.embedding_columns],
            self.embedding_weight,
            self.keys.shape[1],
        )
        k = np.exp(self.temperature * ((z @ self.keys.T).astype(np.float64) - 1.0))
        out: FloatArray = np.clip(self.means + k @ self.alpha, 0.0, 1.0)
        return out

    def params(self) -> dict[str, Any]:
        out = asdict(self.hyper)
        out["temperatures"] = list(self.hyper.temperatures)
        out["penalties"] = list(self.hyper.penalties)
        out["residual_scales"] = list(self.hyper.residual_scales)
        out["embedding_weights"] = list(self.hyper.embedding_weights)
        out["chosen_embedding_weight"] = self.embedding_weight
        out["chosen_temperature"] = self.temperature
        out["chosen_penalty"] = self.penalty
        out["chosen_scale"] = self.residual_scale
        out["scale_chosen_by"] = self.scale_chosen_by
        return out


def _low_rank(r: FloatArray, rank: int) -> FloatArray:
    if rank <= 0 or rank >= min(r.shape):
        return r
    u, s, vt = np.linalg.svd(r, full_matrices=False)
    out: FloatArray = (u[:, :rank] * s[:rank]) @ vt[:rank]
    return out


def _joint(z: F32, e: F32, weight: float, width: int) -> F32:
    """Unit rows of [z, weight x e]: the projected hashing features `z` (unit rows) joined by
    the static embedding `e` (unit rows; none when `width` is z's own width)."""
    if width == z.shape[1]:
        return z
    joint = np.concatenate([z, np.float32(weight) * e], axis=1)
    norm = np.linalg.norm(joint, axis=1, keepdims=True)
    out: F32 = (joint / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    return out


def _loo_residuals(k: FloatArray, r: FloatArray, penalties: tuple[float, ...]) -> list[FloatArray]:
    """Exact leave-one-out errors of kernel ridge regression (all models), one array per
    penalty, from one eigendecomposition of `k`: row i is r_i minus the prediction for prompt
    i of the fit without it."""
    w, v = np.linalg.eigh(k)
    w = np.maximum(w, 0.0)
    vr = v.T @ r
    out: list[FloatArray] = []
    for penalty in penalties:
        shrink = w / (w + penalty)
        hat_diag = (v * v) @ shrink
        fitted = v @ (shrink[:, None] * vr)
        out.append((r - fitted) / np.maximum(1.0 - hat_diag, 1e-6)[:, None])
    return out


def _lambda_grid(predicted: FloatArray, cost: FloatArray, points: int) -> FloatArray:
    """Lambdas from 0 (best predicted quality) to where the cheapest model always wins."""
    spread = float(np.ptp(predicted)) or 1.0
    gaps = np.ptp(cost, axis=1)
    smallest = float(gaps[gaps > 0].min()) if (gaps > 0).any() else 1.0
    top = float(cost.max()) or 1.0
    grid: FloatArray = np.concatenate(
        [[0.0], np.geomspace(spread / top * 1e-3, 100 * spread / smallest, points - 1)]
    )
    return grid


def hull_area(
    predicted: FloatArray, quality: FloatArray, cost: FloatArray, points: int = 200
) -> float:
    """How well the lambda policy (argmax predicted - lambda x cost, per row) trades cost for
    the real `quality`: the mean height, over the single models' range of mean costs, of the
    upper concave hull of its (mean cost, mean quality) points as lambda sweeps (0 where it
    has no point that cheap, flat beyond its dearest point). Any mix of the single models lies
    under their own hull, so a router that knows something scores above it. Rows complete."""
    rows = np.arange(len(predicted))
    pts = []
    for lam in _lambda_grid(predicted, cost, points):
        pick = np.argmax(predicted - lam * cost, axis=1)
        pts.append((float(cost[rows, pick].mean()), float(quality[rows, pick].mean())))
    single_costs = cost.mean(axis=0)
    lo, hi = float(single_costs.min()), float(single_costs.max())
    if hi <= lo:
        return upper_hull(pts)[-1][1]
    return mean_hull_height(pts, lo, hi, grid_points=1001)


MIN_DECISION_ROWS = 20  # fewer complete training rows: the scale is chosen by squared error


def choose_residual_scale(
    means: FloatArray,
    loo: FloatArray,
    y: FloatArray,
    costs: FloatArray | None,
    scales: tuple[float, ...],
) -> tuple[float, str]:
    """The scale s for which means + s x `loo` (leave-one-out residual predictions of the
    training rows) makes the best decisions on those rows: the largest `hull_area` on the rows
    with every label and every cost known; ties go to the larger scale. Without costs (or with
    fewer than `MIN_DECISION_ROWS` complete rows), the s of least squared error on the known
    labels. Returns (s, "hull_area" or "squared_error")."""
    if not scales:
        return 1.0, "none"
    complete = ~np.isnan(y).any(axis=1)
    if costs is not None:
        complete &= ~np.isnan(costs).any(axis=1)
    if costs is not None and int(complete.sum()) >= MIN_DECISION_ROWS:
        q, c, r = y[complete], costs[complete], loo[complete]
        area = {s: hull_area(np.clip(means + s * r, 0.0, 1.0), q, c) for s in scales}
        return max(scales, key=lambda s: (area[s], s)), "hull_area"
    known = ~np.isnan(y)
    target = np.where(known, y - means, 0.0)
    err = {s: float(np.sum(np.where(known, target - s * loo, 0.0) ** 2)) for s in scales}
    return min(scales, key=lambda s: (err[s], -s)), "squared_error"


def fit_pooled(
    xs: F32,
    y: FloatArray,
    params: PooledParams,
    costs: FloatArray | None = None,
    embedding: slice = slice(0, 0),
) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a `PooledRouter` (projection, keys, alpha, means, and the chosen kernel
    temperature, penalty, embedding weight and residual scale as 0-d arrays), from
    standardised features whose columns `embedding` hold a static embedding (unit rows; an
    empty slice: none); `costs` (n, n_models), NaN where unknown, let the residual scale be
    chosen by decisions."""
    projection = random_projection(xs.shape[1], params.proj_dim, params.seed)
    projection[embedding] = 0.0  # the embedding joins z whole, not through the projection
    z_hash = embed(xs, projection)
    e = xs[:, embedding]
    weights = params.embedding_weights if e.shape[1] else (0.0,)
    width = z_hash.shape[1] + e.shape[1]
    means = label_means(y, params.prior_weight)
    filled = np.where(np.isnan(y), means, y)
    r = _low_rank(filled - means, params.rank)
    n = len(xs)
    rng = np.random.default_rng([params.seed, n])
    anchors = np.arange(n) if n <= params.max_anchors else rng.permutation(n)[: params.max_anchors]
    best: tuple[float, float, float, float] | None = None
    for w in weights:
        zw = _joint(z_hash[anchors], e[anchors], w, width)
        cos_w = (zw @ zw.T).astype(np.float64)
        for t in params.temperatures:
            residuals = _loo_residuals(np.exp(t * (cos_w - 1.0)), r[anchors], params.penalties)
            for lam, res in zip(params.penalties, residuals, strict=True):
                err = float(np.mean(res * res))
                if best is None or err < best[0] - 1e-12:
                    best = (err, w, t, lam)
    assert best is not None
    _, weight, t, lam = best
    z = _joint(z_hash, e, weight, width)
    za = z[anchors]
    cos_aa = (za @ za.T).astype(np.float64)
    k_aa = np.exp(t * (cos_aa - 1.0))
    loo = r[anchors] - _loo_residuals(k_aa, r[anchors], (lam,))[0]
    scale, chosen_by = choose_residual_scale(
        means,
        loo,
        y[anchors],
        costs[anchors] if costs is not None else None,
        params.residual_scales,
    )
    if n <= params.max_anchors:
        alpha: FloatArray = np.linalg.solve(k_aa + lam * np.eye(n), r).astype(np.float64)
    else:  # subset of regressors: min |K_na a - r|^2 + lam a' K_aa a
        k_na = np.exp(t * ((z @ za.T).astype(np.float64) - 1.0))
        lhs = k_na.T @ k_na + lam * k_aa + 1e-8 * np.eye(len(anchors))
        alpha = np.linalg.solve(lhs, k_na.T @ r).astype(np.float64)
    return {
        "projection": projection,
        "keys": za,
        "alpha": alpha * scale,
        "means": means,
        "temperature": np.asarray(t),
        "penalty": np.asarray(lam),
        "residual_scale": np.asarray(scale),
        "scale_chosen_by": np.asarray(chosen_by),
        "embedding_weight": np.asarray(weight),
    }


# --- budgets and quality targets -> lambda ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class LambdaPoint:
    """The lambda policy (argmax predicted - lambda x cost) on a calibration set."""

    cost_weight_per_usd: float
    mean_cost_usd: float
    mean_predicted_quality: float


def lambda_curve(predicted: FloatArray, cost: FloatArray, points: int = 200) -> list[LambdaPoint]:
    """Mean cost and mean predicted quality of the lambda policy as lambda sweeps from 0 (best
    predicted quality) to where the cheapest model always wins; cost decreasing along the list.
    Rows with an unknown cost (NaN) for some model are left out."""
    ok = ~np.isnan(cost).any(axis=1)
    p, c = predicted[ok], cost[ok]
    if len(p) == 0:
        raise ValueError("no calibration rows with every model's cost")
    rows = np.arange(len(p))
    out = []
    for lam in _lambda_grid(p, c, points):
        pick = np.argmax(p - lam * c, axis=1)
        out.append(
            LambdaPoint(float(lam), float(c[rows, pick].mean()), float(p[rows, pick].mean()))
        )
    return out


def lambda_for_budget(curve: list[LambdaPoint], budget_usd: float) -> float:
    """The smallest lambda (best predicted quality) whose mean cost per request on the
    calibration set is within `budget_usd`; the largest lambda when none is."""
    within = [pt for pt in curve if pt.mean_cost_usd <= budget_usd + 1e-15]
    if not within:
        return max(pt.cost_weight_per_usd for pt in curve)
    return min(pt.cost_weight_per_usd for pt in within)


def lambda_for_quality(curve: list[LambdaPoint], target: float) -> float:
    """The largest lambda (cheapest) whose mean predicted quality reaches `target`; 0 (best
    predicted quality) when none does."""
    reaching = [pt for pt in curve if pt.mean_predicted_quality >= target - 1e-12]
    if not reaching:
        return 0.0
    return max(pt.cost_weight_per_usd for pt in reaching)
