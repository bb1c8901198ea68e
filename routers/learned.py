"""Routers learned from labelled prompts, on top of a featurizer.

- `ClassifierRouter` (`classifier`): one L2-regularised logistic head per model on the features.
- `MFRouter` (`mf`): RouteLLM-style matrix factorisation: a learned projection of the prompt
  features meets a learned embedding per model; works for any number of models.
- `SWRankingRouter` (`sw_ranking`): similarity-weighted mean quality of the nearest labelled
  prompts (in a seeded random projection of the features), shrunk towards each model's mean;
  a lookup, no refit per request.

Each predicts every model's quality in [0, 1]. Labels may be missing for some (prompt, model)
pairs (NaN in the label matrix): those pairs are left out of the loss.

A feature router may carry a `Familiarity` of its training prompts: `assess` then gives each
prompt's `unfamiliar` from the same features. The classifier also uses it (`unfamiliar_shrink`):
on a prompt well beyond its training distribution (unfamiliar > `shrink_above`) it does not trust
its prediction for the strong model and predicts that model's training mean instead. What a
router learns about when the strong model fails is mostly cues of its training set (on MMLU: the
subjects and question styles both models get wrong); what makes the weak model fail (difficulty)
carries over better. So on familiar prompts the score is the learned gain P(strong right) -
P(weak right), on unfamiliar ones 1 - P(weak right) (plus a constant).

All or nothing, at a threshold chosen by leave-one-domain-out (bench/route_transfer.py,
docs/routing.md): a trust that falls smoothly with the distance (1 / (1 + decay x excess^2) for
several decays, and 1 / unfamiliar before) was measured and ranks a held-out domain worse than
either score: the strong head's error on a foreign domain is an offset shared by its prompts,
and a per-prompt mixture turns it into noise ranked by the distance. The threshold sits a little
above the 1% calibration quantile (1.0), so prompts of a domain partly taught by the user's
feedback, which sit around 1.0, keep the gain, while wholly foreign ones, further out, do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from routers.base import FloatArray, HasIdentity, Identity, Router
from routers.familiarity import Familiarity
from routers.features import Featurizer

__all__ = [
    "SHRINK_ABOVE",
    "Arrays",
    "ClassifierParams",
    "ClassifierRouter",
    "FeatureBase",
    "FeatureRouter",
    "MFParams",
    "MFRouter",
    "SWParams",
    "SWRankingRouter",
    "Standardizer",
    "assess",
    "embed",
    "label_means",
    "random_projection",
]

F32 = npt.NDArray[np.float32]
# The classifier's default `shrink_above`, chosen by leave-one-domain-out (docs/routing.md)
SHRINK_ABOVE = 1.02
AnyFloat = npt.NDArray[np.floating[Any]]


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


@dataclass(frozen=True, slots=True)
class Standardizer:
    """x -> (x - center) * scale; fitted only on the structural (dense) columns."""

    center: F32
    scale: F32

    @staticmethod
    def fit(x: F32, dense_from: int) -> Standardizer:
        center = np.zeros(x.shape[1], dtype=np.float32)
        scale = np.ones(x.shape[1], dtype=np.float32)
        if dense_from < x.shape[1]:
            block = x[:, dense_from:].astype(np.float64)
            center[dense_from:] = block.mean(axis=0)
            scale[dense_from:] = 1.0 / (block.std(axis=0) + 1e-6)
        return Standardizer(center, scale)

    def apply(self, x: F32) -> F32:
        out: F32 = (x - self.center) * self.scale
        return out

    def fold(self, matrix: AnyFloat) -> tuple[F32, FloatArray]:
        """(x - center) * scale @ M == x @ M' + offset: returns (M', offset), so that
        prediction needs no pass over the features to standardise them."""
        m = matrix.astype(np.float64)
        folded = (self.scale.astype(np.float64)[:, None] * m).astype(np.float32)
        offset: FloatArray = -(self.center.astype(np.float64) * self.scale) @ m
        return folded, offset


class _Adam:
    def __init__(self, shapes: Sequence[tuple[int, ...]], learning_rate: float) -> None:
        self.lr = learning_rate
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params: Sequence[AnyFloat], grads: Sequence[AnyFloat]) -> None:
        self.t += 1
        c1 = 1.0 - 0.9**self.t
        c2 = 1.0 - 0.999**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def _masked_labels(y: FloatArray) -> tuple[FloatArray, FloatArray]:
    mask = (~np.isnan(y)).astype(np.float64)
    return np.nan_to_num(y, nan=0.0), mask


@dataclass(frozen=True, slots=True)
class FeatureBase:
    """What every feature router is built on: who it is, its featurizer, the standardizer of the
    structural columns, and the familiarity model of its training prompts (None: none)."""

    identity: Identity
    featurizer: Featurizer
    standardizer: Standardizer
    familiarity: Familiarity | None = None


Arrays = Mapping[str, npt.NDArray[Any]]


class FeatureRouter(HasIdentity):
    """Shared plumbing of the feature routers: identity, featurizer, standardizer, familiarity,
    hyper-parameters and artifact arrays; subclasses map features to quality.

    A subclass names its hyper-parameter dataclass (`params_type`) and its own arrays
    (`array_names`: the attributes saved in the artifact). It is made from a `FeatureBase`, its
    hyper-parameters and its arrays by name, both when trained (`fit`) and when loaded
    (`from_saved`)."""

    name = "feature"
    params_type: ClassVar[type[Any]]
    array_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base: FeatureBase, hyper: Any, arrays: Arrays) -> None:
        self.base = base
        self.identity = base.identity
        self.featurizer = base.featurizer
        self.standardizer = base.standardizer
        self.familiarity = base.familiarity
        self.hyper = hyper

    @classmethod
    def fit(
        cls,
        base: FeatureBase,
        xs: F32,
        y: FloatArray,
        hyper: Any,
        costs: FloatArray | None = None,
    ) -> Self:
        """Train on standardised features `xs` and labels `y` (NaN = unknown); `costs` (same
        shape, NaN = unknown) for the routers that use the rows' costs in training."""
        raise NotImplementedError

    @classmethod
    def from_saved(cls, base: FeatureBase, params: Mapping[str, Any], arrays: Arrays) -> Self:
        return cls(base, cls.params_type(**params), arrays)

    def predict(self, texts: Sequence[str]) -> FloatArray:
        return self.predict_features(self.featurizer.transform(texts))

    def predict_features(self, x: F32) -> FloatArray:
        raise NotImplementedError

    def assess_features(self, x: F32) -> tuple[FloatArray, FloatArray | None]:
        """Predicted qualities and `unfamiliar` (None without a familiarity model)."""
        far = self.familiarity.distance(x) if self.familiarity is not None else None
        return self.predict_features(x), far

    def params(self) -> dict[str, Any]:
        return asdict(self.hyper)

    def arrays(self) -> Arrays:
        own = {k: getattr(self, k) for k in self.array_names}
        return {"center": self.standardizer.center, "scale": self.standardizer.scale, **own}


def label_means(y: FloatArray, prior_weight: float = 0.0) -> FloatArray:
    """Each model's mean label over its known labels, shrunk towards the mean of all known
    labels by `prior_weight` pseudo-counts (0: plain means; a model without labels gets the
    overall mean, 0.5 when nothing is known)."""
    known = ~np.isnan(y)
    overall = float(y[known].mean()) if known.any() else 0.5
    total = np.where(known, y, 0.0).sum(axis=0)
    count = known.sum(axis=0)
    out: FloatArray = (total + prior_weight * overall) / np.maximum(count + prior_weight, 1e-12)
    return np.where(count + prior_weight > 0, out, overall)


# --- classifier -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClassifierParams:
    l2: float = 1e-3
    iters: int = 300
    learning_rate: float = 0.05
    unfamiliar_shrink: bool = True  # see the module docstring
    shrink_above: float = SHRINK_ABOVE  # `unfamiliar` beyond which the strong head is not trusted


class ClassifierRouter(FeatureRouter):
    name = "classifier"
    params_type = ClassifierParams
    array_names = ("weights", "bias", "prior")

    def __init__(self, base: FeatureBase, hyper: ClassifierParams, arrays: Arrays) -> None:
        super().__init__(base, hyper, arrays)
        self.hyper: ClassifierParams = hyper
        self.weights = arrays["weights"].astype(np.float32)  # (dim, n_models)
        self.bias = arrays["bias"].astype(np.float64)  # (n_models,)
        # each model's mean quality in the training data (the shrinkage target)
        prior = arrays.get("prior")
        self.prior = (prior if prior is not None else _sigmoid(self.bias)).astype(np.float64)
        self._w, offset = self.standardizer.fold(self.weights)
        self._b = self.bias + offset
        self._strong = self.identity.models.index(self.identity.strong)

    @classmethod
    def fit(
        cls,
        base: FeatureBase,
        xs: F32,
        y: FloatArray,
        hyper: Any,
        costs: FloatArray | None = None,
    ) -> Self:
        w, b = cls.fit_head(xs, y, hyper)
        return cls(base, hyper, {"weights": w, "bias": b, "prior": label_means(y)})

    def raw_predict_features(self, x: F32) -> FloatArray:
        """The heads' predictions, without shrinkage."""
        return _sigmoid((x @ self._w).astype(np.float64) + self._b)

    def predict_features(self, x: F32) -> FloatArray:
        return self.assess_features(x)[0]

    def assess_features(self, x: F32) -> tuple[FloatArray, FloatArray | None]:
        p = self.raw_predict_features(x)
        if self.familiarity is None:
            return p, None
        far = self.familiarity.distance(x)
        if self.hyper.unfamiliar_shrink:
            s = self._strong
            p[:, s] = np.where(far > self.hyper.shrink_above, self.prior[s], p[:, s])
        return p, far

    @staticmethod
    def fit_head(x: F32, y: FloatArray, params: ClassifierParams) -> tuple[FloatArray, FloatArray]:
        """Full-batch Adam on the masked mean log-loss + l2/2 |W|^2; returns (W, b)."""
        labels, mask = _masked_labels(y)
        count = np.maximum(mask.sum(axis=0), 1.0)
        w = np.zeros((x.shape[1], y.shape[1]))
        prior = np.clip((labels * mask).sum(axis=0) / count, 1e-3, 1 - 1e-3)
        b = np.log(prior / (1 - prior))
        opt = _Adam([w.shape, b.shape], params.learning_rate)
        for _ in range(params.iters):
            p = _sigmoid((x @ w.astype(np.float32)).astype(np.float64) + b)
            r = (p - labels) * mask / count
            gw = (x.T @ r.astype(np.float32)).astype(np.float64) + params.l2 * w
            opt.step([w, b], [gw, r.sum(axis=0)])
        return w, b


# --- matrix factorisation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MFParams:
    dim: int = 32
    l2: float = 1e-3
    iters: int = 300
    learning_rate: float = 0.02
    seed: int = 0


class MFRouter(FeatureRouter):
    """quality(m, x) = sigmoid(u . (v_m * (P^T x)) + b_m)."""

    name = "mf"
    params_type = MFParams
    array_names = ("projection", "model_emb", "out", "bias")

    def __init__(self, base: FeatureBase, hyper: MFParams, arrays: Arrays) -> None:
        super().__init__(base, hyper, arrays)
        self.projection = arrays["projection"].astype(np.float32)  # (dim, k)
        self.model_emb = arrays["model_emb"].astype(np.float64)  # (n_models, k)
        self.out = arrays["out"].astype(np.float64)  # (k,)
        self.bias = arrays["bias"].astype(np.float64)  # (n_models,)
        self._proj, self._offset = self.standardizer.fold(self.projection)

    @classmethod
    def fit(
        cls,
        base: FeatureBase,
        xs: F32,
        y: FloatArray,
        hyper: Any,
        costs: FloatArray | None = None,
    ) -> Self:
        factors = cls.fit_factors(xs, y, hyper)
        return cls(base, hyper, dict(zip(cls.array_names, factors, strict=True)))

    def predict_features(self, x: F32) -> FloatArray:
        h = (x @ self._proj).astype(np.float64) + self._offset  # (n, k)
        return _sigmoid(h @ (self.model_emb * self.out).T + self.bias)

    @staticmethod
    def fit_factors(
        x: F32, y: FloatArray, params: MFParams
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        labels, mask = _masked_labels(y)
        count = max(float(mask.sum()), 1.0)
        rng = np.random.default_rng(params.seed)
        n_models = y.shape[1]
        proj = rng.normal(0.0, 0.01, (x.shape[1], params.dim))
        emb = rng.normal(0.0, 1.0, (n_models, params.dim))
        out = np.full(params.dim, 1.0 / params.dim)
        prior = np.clip((labels * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1), 1e-3, 0.999)
        bias = np.log(prior / (1 - prior))
        opt = _Adam([proj.shape, emb.shape, out.shape, bias.shape], params.learning_rate)
        for _ in range(params.iters):
            h = (x @ proj.astype(np.float32)).astype(np.float64)  # (n, k)
            ve = emb * out  # (m, k)
            p = _sigmoid(h @ ve.T + bias)
            r = (p - labels) * mask / count  # (n, m)
            gh = r @ ve  # (n, k)
            g_ve = r.T @ h  # (m, k)
            g_proj = (x.T @ gh.astype(np.float32)).astype(np.float64) + params.l2 * proj
            g_emb = g_ve * out + params.l2 * emb
            g_out = (g_ve * emb).sum(axis=0)
            opt.step([proj, emb, out, bias], [g_proj, g_emb, g_out, r.sum(axis=0)])
        return proj, emb, out, bias


# --- similarity-weighted ranking ------------------------------------------------------------


def random_projection(dim: int, proj_dim: int, seed: int) -> F32:
    """The seeded Gaussian projection of the features that the kernel routers compare in."""
    out: F32 = np.random.default_rng(seed).normal(0.0, 1.0, (dim, proj_dim)).astype(np.float32)
    return out


def embed(x: F32, projection: F32) -> F32:
    """Unit-length rows of `x @ projection` (zero rows stay zero): cosine by dot product."""
    z = x @ projection
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    out: F32 = (z / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    return out


@dataclass(frozen=True, slots=True)
class SWParams:
    proj_dim: int = 256
    neighbours: int = 64
    temperature: float = 10.0  # weight = exp(temperature * (cosine - 1))
    prior_weight: float = 2.0  # pseudo-count of each model's mean quality
    seed: int = 0


class SWRankingRouter(FeatureRouter):
    name = "sw_ranking"
    params_type = SWParams
    array_names = ("projection", "keys", "labels", "prior")

    def __init__(self, base: FeatureBase, hyper: SWParams, arrays: Arrays) -> None:
        super().__init__(base, hyper, arrays)
        self.hyper: SWParams = hyper
        self.projection = arrays["projection"].astype(np.float32)  # (dim, proj_dim)
        self.keys = arrays["keys"].astype(np.float32)  # (n_train, proj_dim), unit rows
        self.labels = arrays["labels"].astype(np.float32)  # (n_train, n_models), NaN = unknown
        self.prior = arrays["prior"].astype(np.float64)  # (n_models,)

    @classmethod
    def fit(
        cls,
        base: FeatureBase,
        xs: F32,
        y: FloatArray,
        hyper: Any,
        costs: FloatArray | None = None,
    ) -> Self:
        projection = random_projection(xs.shape[1], hyper.proj_dim, hyper.seed)
        keys = embed(xs, projection)
        return cls(
            base,
            hyper,
            {"projection": projection, "keys": keys, "labels": y, "prior": label_means(y)},
        )

    def predict_features(self, x: F32) -> FloatArray:
        q = embed(self.standardizer.apply(x), self.projection)
        sims = q @ self.keys.T  # (n, n_train)
        k = min(self.hyper.neighbours, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
        weight = np.exp(self.hyper.temperature * (top - 1.0))  # (n, k)
        labels = self.labels[idx].astype(np.float64)  # (n, k, m)
        known = ~np.isnan(labels)
        wk = weight[:, :, None] * known
        num = (wk * np.nan_to_num(labels)).sum(axis=1) + self.hyper.prior_weight * self.prior
        den = wk.sum(axis=1) + self.hyper.prior_weight
        out: FloatArray = num / den
        return out


def assess(router: Router, texts: Sequence[str]) -> tuple[FloatArray, FloatArray | None]:
    """Predicted qualities (as `router.predict`) and each text's `unfamiliar`, from one pass of
    the featurizer; `unfamiliar` is None for a router without a familiarity model."""
    if not isinstance(router, FeatureRouter):
        return router.predict(texts), None
    return router.assess_features(router.featurizer.transform(texts))
