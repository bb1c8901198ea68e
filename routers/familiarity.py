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

Training prompts from several sources (`tags.benchmark`; rows without one are a source too):
each source with at least `min_source_rows` prompts gets a model of its own, calibrated on its
own held-out prompts, and `unfamiliar` is the smallest of a prompt's calibrated distances. One
Gaussian over two styles of prompt (MMLU questions and GSM8K word problems) is wide where they
differ and narrow nowhere: it put a quarter of new GSM8K prompts over 1.0 after 313 of them were
added to MMLU, and 15% of a set of chat prompts under 1.02; one model per source puts 4% and
2.5% there. Subject groups of one benchmark are one source, so a held-out MMLU subject is judged
against MMLU.

Pure numpy; one matrix-vector product of (dim x k) per prompt and source on top of the
router's features.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from routers.base import FloatArray

__all__ = [
    "UNFAMILIAR_THRESHOLD",
    "Familiarity",
    "FamiliarityParams",
    "SourceModel",
    "source_groups",
]

F32 = npt.NDArray[np.float32]

UNFAMILIAR_THRESHOLD = 1.0  # unfamiliar > 1.0: beyond the training prompts' calibrated quantile
SOURCE_NAME_CHARS = 120  # a source's name as the artifact keeps it (tags are the user's data)


@dataclass(frozen=True, slots=True)
class FamiliarityParams:
    components: int = 32
    quantile: float = 0.99
    max_rows: int = 6000  # rows used for the PCA (a seeded sample of larger training sets)
    calibration_fraction: float = 0.2  # training prompts held out of the PCA to set the scale
    # a source with at least this many training prompts gets a distance model of its own
    min_source_rows: int = 200
    # at most this many (the largest) have their own; the others share one. Each costs a
    # (features x components) product per decision: ~0.05 ms for a 500-token prompt here
    max_sources: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ValueError("components must be at least 1")
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError("quantile must be in [0.5, 1)")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError("calibration_fraction must be in (0, 1)")
        if self.min_source_rows < 2 or self.max_sources < 1:
            raise ValueError("min_source_rows must be at least 2 and max_sources at least 1")


@dataclass(frozen=True, slots=True)
class SourceModel:
    """The distance model of one source's training prompts (a PPCA in the standardised space)."""

    source: str  # "" for the whole training set, or the prompts of the small sources together
    rows: int
    shift: F32  # (dim,): center * scale + the source's mean
    components: F32  # (dim, k), orthonormal columns
    inv_var: FloatArray  # (k,)
    inv_noise: float
    calibration: float  # the raw distance at `quantile` of the source's held-out prompts

    def raw(self, u: F32) -> FloatArray:
        """Mahalanobis distances of scaled rows `u` (= x * scale)."""
        v = u - self.shift
        z = (v @ self.components).astype(np.float64)
        total = np.einsum("ij,ij->i", v, v).astype(np.float64)
        zz = z * z
        residual = np.maximum(total - zz.sum(axis=1), 0.0)
        out: FloatArray = np.sqrt(zz @ self.inv_var + residual * self.inv_noise)
        return out


class Familiarity:
    """The fitted distance model; `distance(x)` takes raw feature rows of the router's
    featurizer (the standardisation is folded in). With training prompts from several sources
    (`tags.benchmark`), each large source has its own model and a prompt's `unfamiliar` is the
    smallest of its calibrated distances: one Gaussian over two styles of prompt calls the
    smaller one's new prompts unfamiliar and a third style closer than it is."""

    def __init__(self, *, scale: F32, sources: Sequence[SourceModel], quantile: float) -> None:
        if not sources:
            raise ValueError("a familiarity model needs at least one source")
        self.scale = scale.astype(np.float32)  # (dim,): standardiser scale
        self.sources = tuple(sources)
        self.quantile = float(quantile)

    def distance(self, x: F32) -> FloatArray:
        """`unfamiliar` of each feature row: 1.0 at the training prompts' calibrated quantile
        (of the nearest source)."""
        u = np.atleast_2d(x) * self.scale
        out: FloatArray = np.min([s.raw(u) / s.calibration for s in self.sources], axis=0)
        return out

    @staticmethod
    def fit(
        x: F32,
        center: F32,
        scale: F32,
        params: FamiliarityParams | None = None,
        sources: Sequence[str] | None = None,
    ) -> Familiarity:
        """Fit on the training prompts' raw feature rows `x`, standardised by (center, scale)
        as the router standardises them; `sources` names each row's source (none: one)."""
        p = params or FamiliarityParams()
        if len(x) < 2:
            raise ValueError("familiarity needs at least two training prompts")
        if sources is not None and len(sources) != len(x):
            raise ValueError("sources must name one source per training prompt")
        rng = np.random.default_rng(p.seed)
        models = [
            _fit_source(x[rows], center, scale, p, rng, name)
            for name, rows in source_groups(len(x), sources, p)
        ]
        return Familiarity(scale=scale, sources=models, quantile=p.quantile)

    def meta(self) -> dict[str, Any]:
        first = self.sources[0]
        return {
            "kind": "ppca",
            "components": int(first.components.shape[1]),
            "quantile": self.quantile,
            "calibration": first.calibration,
            "inv_noise": first.inv_noise,
            "sources": [
                {
                    "source": s.source,
                    "rows": s.rows,
                    "calibration": s.calibration,
                    "inv_noise": s.inv_noise,
                }
                for s in self.sources
            ],
        }

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {"scale": self.scale}
        for i, s in enumerate(self.sources):
            prefix = "" if i == 0 else f"s{i}_"  # the first source as before sources
            out[prefix + "shift"] = s.shift
            out[prefix + "components"] = s.components
            out[prefix + "inv_var"] = s.inv_var
        return out

    @staticmethod
    def from_saved(meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> Familiarity:
        if meta.get("kind") != "ppca":
            raise ValueError(f"unknown familiarity kind {meta.get('kind')!r}")
        # artifacts from before sources: one, described at the top level
        only = {"calibration": meta["calibration"], "inv_noise": meta["inv_noise"]}
        described = meta.get("sources") or [{"source": "", "rows": 0, **only}]
        models = []
        for i, s in enumerate(described):
            prefix = "" if i == 0 else f"s{i}_"
            models.append(
                SourceModel(
                    source=str(s["source"]),
                    rows=int(s["rows"]),
                    shift=arrays[prefix + "shift"].astype(np.float32),
                    components=arrays[prefix + "components"].astype(np.float32),
                    inv_var=arrays[prefix + "inv_var"].astype(np.float64),
                    inv_noise=float(s["inv_noise"]),
                    calibration=float(s["calibration"]),
                )
            )
        return Familiarity(scale=arrays["scale"], sources=models, quantile=float(meta["quantile"]))


def source_groups(
    n: int, sources: Sequence[str] | None, params: FamiliarityParams
) -> list[tuple[str, npt.NDArray[np.intp]]]:
    """(source, row indices) of each distance model: every source with at least
    `min_source_rows` prompts (the `max_sources` largest), and the rest together as "" when
    they number at least `min_source_rows` too; else the rest join the largest. Fewer than two
    such sources: one model of every row, named ""."""
    if sources is None:
        return [("", np.arange(n))]
    names = np.asarray([str(s) for s in sources])
    counts = Counter(names.tolist())
    large = [s for s, count in counts.most_common() if count >= params.min_source_rows]
    large = large[: params.max_sources]
    if len(large) < 2:
        return [("", np.arange(n))]
    rest = np.flatnonzero(~np.isin(names, large))
    groups = [(s, np.flatnonzero(names == s)) for s in large]
    if len(rest) >= params.min_source_rows:
        return [*groups, ("", rest)]
    first, rows = groups[0]
    return [(first, np.sort(np.concatenate([rows, rest]))), *groups[1:]]


def _fit_source(
    x: F32,
    center: F32,
    scale: F32,
    p: FamiliarityParams,
    rng: np.random.Generator,
    name: str,
) -> SourceModel:
    """A PPCA of one source's raw feature rows `x`, calibrated on a seeded share of them held
    out of the PCA (in-sample distances are optimistic); tiny sets use every row."""
    n, dim = x.shape
    order = rng.permutation(n)
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
    var = sing[:k] ** 2 / (len(sample) - 1)
    total_var = float((centred * centred).sum()) / (len(sample) - 1)
    rest = max(total_var - float(var.sum()), 1e-12) / max(dim - k, 1)
    model = SourceModel(
        source=name if len(name) <= SOURCE_NAME_CHARS else name[: SOURCE_NAME_CHARS - 3] + "...",
        rows=n,
        shift=(center * scale + mean).astype(np.float32),
        components=vt[:k].T.astype(np.float32),
        inv_var=(1.0 / np.maximum(var, rest)).astype(np.float64),
        inv_noise=1.0 / rest,
        calibration=1.0,
    )
    raw = model.raw(x[cal_rows] * scale.astype(np.float32))
    return replace(model, calibration=max(float(np.quantile(raw, p.quantile)), 1e-12))
