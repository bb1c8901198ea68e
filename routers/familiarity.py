"""How far a prompt is from the router's training distribution (`unfamiliar`).

A probabilistic PCA (Tipping & Bishop) of the training prompts' features: the top `k` principal
directions keep their own variances, every other direction shares the mean leftover variance.
The distance of a feature row is its Mahalanobis distance under that model,

    d^2 = sum_i z_i^2 / var_i + (|v|^2 - |z|^2) / noise_var,   v = standardised x - mean, z = P^T v

divided by the same distance at the `quantile` (0.99) of training prompts. So `unfamiliar` is
1.0 at the training prompts' 99th percentile: about 1% of training prompts exceed 1.0, and a
prompt above it is further from the training data than 99% of what the router learned from.
The quantile is taken on a seeded fifth of the training prompts left out of the PCA: distances
of the rows a PCA was fitted on are optimistic (in high dimension, by enough to put a fifth of
new in-distribution prompts over an in-sample quantile), so this keeps the 1% true for new
prompts like the training ones, and leaves at most about 1% of all training prompts over it.

Pure numpy; one matrix-vector product of (dim x k) per prompt on top of the router's features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from routers.base import FloatArray

__all__ = ["UNFAMILIAR_THRESHOLD", "Familiarity", "FamiliarityParams"]

F32 = npt.NDArray[np.float32]

UNFAMILIAR_THRESHOLD = 1.0  # unfamiliar > 1.0: beyond the training prompts' calibrated quantile


@dataclass(frozen=True, slots=True)
class FamiliarityParams:
    components: int = 32
    quantile: float = 0.99
    max_rows: int = 6000  # rows used for the PCA (a seeded sample of larger training sets)
    calibration_fraction: float = 0.2  # training prompts held out of the PCA to set the scale
    seed: int = 0

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ValueError("components must be at least 1")
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError("quantile must be in [0.5, 1)")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError("calibration_fraction must be in (0, 1)")


class Familiarity:
    """The fitted distance model; `distance(x)` takes raw feature rows of the router's
    featurizer (the standardisation is folded in)."""

    def __init__(
        self,
        *,
        scale: F32,
        shift: F32,
        components: F32,
        inv_var: FloatArray,
        inv_noise: float,
        calibration: float,
        quantile: float,
    ) -> None:
        self.scale = scale.astype(np.float32)  # (dim,): standardiser scale
        self.shift = shift.astype(np.float32)  # (dim,): center * scale + mean
        self.components = components.astype(np.float32)  # (dim, k), orthonormal columns
        self.inv_var = inv_var.astype(np.float64)  # (k,)
        self.inv_noise = float(inv_noise)
        self.calibration = float(calibration)  # the raw distance at `quantile` of training
        self.quantile = float(quantile)

    def _raw(self, x: F32) -> FloatArray:
        v = x * self.scale - self.shift
        z = (v @ self.components).astype(np.float64)
        total = np.einsum("ij,ij->i", v, v).astype(np.float64)
        zz = z * z
        residual = np.maximum(total - zz.sum(axis=1), 0.0)
        d2 = zz @ self.inv_var + residual * self.inv_noise
        out: FloatArray = np.sqrt(d2)
        return out

    def distance(self, x: F32) -> FloatArray:
        """`unfamiliar` of each feature row: 1.0 at the training prompts' calibrated quantile."""
        out: FloatArray = self._raw(np.atleast_2d(x)) / self.calibration
        return out

    @staticmethod
    def fit(
        x: F32,
        center: F32,
        scale: F32,
        params: FamiliarityParams | None = None,
    ) -> Familiarity:
        """Fit on the training prompts' raw feature rows `x`, standardised by (center, scale)
        as the router standardises them."""
        p = params or FamiliarityParams()
        n, dim = x.shape
        if n < 2:
            raise ValueError("familiarity needs at least two training prompts")
        rng = np.random.default_rng(p.seed)
        order = rng.permutation(n)
        # Calibrate on prompts the PCA did not see, so the quantile holds for new prompts like
        # the training ones (in-sample distances are optimistic); tiny sets use every row.
        n_cal = max(1, round(n * p.calibration_fraction)) if n >= 20 else 0
        fit_rows = np.sort(order[n_cal:][: p.max_rows])
        cal_rows = np.sort(order[:n_cal]) if n_cal else fit_rows
        sample = x[fit_rows]
        xs = ((sample - center) * scale).astype(np.float64)
        mean = xs.mean(axis=0)
        centred = xs - mean
        k = min(p.components, len(sample) - 1, dim)
        # Randomised range finder + two power iterations: the top-k right singular vectors.
        omega = rng.normal(size=(dim, k + 10))
        y = centred @ omega
        for _ in range(2):
            y, _r = np.linalg.qr(y)
            y = centred @ (centred.T @ y)
        q, _r = np.linalg.qr(y)
        _u, sing, vt = np.linalg.svd(q.T @ centred, full_matrices=False)
        comps = vt[:k].T  # (dim, k)
        var = sing[:k] ** 2 / (len(sample) - 1)
        total_var = float((centred * centred).sum()) / (len(sample) - 1)
        rest = max(total_var - float(var.sum()), 1e-12) / max(dim - k, 1)
        fam = Familiarity(
            scale=scale,
            shift=(center * scale + mean).astype(np.float32),
            components=comps.astype(np.float32),
            inv_var=1.0 / np.maximum(var, rest),
            inv_noise=1.0 / rest,
            calibration=1.0,
            quantile=p.quantile,
        )
        raw = fam._raw(x[cal_rows])
        fam.calibration = max(float(np.quantile(raw, p.quantile)), 1e-12)
        return fam

    def meta(self) -> dict[str, Any]:
        return {
            "kind": "ppca",
            "components": int(self.components.shape[1]),
            "quantile": self.quantile,
            "calibration": self.calibration,
            "inv_noise": self.inv_noise,
        }

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "scale": self.scale,
            "shift": self.shift,
            "components": self.components,
            "inv_var": self.inv_var,
        }

    @staticmethod
    def from_saved(meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> Familiarity:
        if meta.get("kind") != "ppca":
            raise ValueError(f"unknown familiarity kind {meta.get('kind')!r}")
        return Familiarity(
            scale=arrays["scale"],
            shift=arrays["shift"],
            components=arrays["components"],
            inv_var=arrays["inv_var"],
            inv_noise=float(meta["inv_noise"]),
            calibration=float(meta["calibration"]),
            quantile=float(meta["quantile"]),
        )
