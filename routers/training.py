"""Train a router from in-memory records (the CLI reads the files)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from routers.base import FloatArray, Identity, Router
from routers.dataset import Record, data_sha256, source_of
from routers.errors import TrainingDataError
from routers.familiarity import Familiarity, FamiliarityParams
from routers.features import HashingFeaturizer, HashingParams
from routers.learned import (
    ClassifierParams,
    ClassifierRouter,
    FeatureBase,
    FeatureRouter,
    MFParams,
    MFRouter,
    Standardizer,
    SWParams,
    SWRankingRouter,
)
from routers.multi import PooledParams, PooledRouter
from routers.reference import OracleRouter, RandomRouter, text_key
from routers.semantic import Category, SemanticConfig, SemanticRouter

__all__ = [
    "DEFAULT_N_MODEL_ROUTER",
    "DEFAULT_ROUTER",
    "FEATURE_ROUTERS",
    "ROUTER_NAMES",
    "TrainOptions",
    "cheapest_model",
    "cost_matrix",
    "default_features",
    "default_router",
    "label_matrix",
    "train",
    "trained_features",
]

ROUTER_NAMES: tuple[str, ...] = (
    "classifier",
    "mf",
    "sw_ranking",
    "pooled",
    "semantic",
    "random",
    "oracle",
)
DEFAULT_ROUTER = "classifier"
DEFAULT_N_MODEL_ROUTER = "pooled"  # three or more models: shrinkage and pooled residuals
# the static word embedding the kernel of `pooled` compares prompts in, next to the hashed
# n-grams (routers.embedding): a topic in other words is still the same topic
POOLED_EMBEDDING = "wordllama-l2-256"
# the routers learned on hashing features, by name (training and the artifact loader)
FEATURE_ROUTERS: Mapping[str, type[FeatureRouter]] = {
    r.name: r for r in (ClassifierRouter, MFRouter, SWRankingRouter, PooledRouter)
}
STRONG_ALIAS = "$strong"
WEAK_ALIAS = "$weak"


@dataclass(frozen=True, slots=True)
class TrainOptions:
    router: str = DEFAULT_ROUTER
    strong: str | None = None  # default: the model with the best mean score
    weak: str | None = None  # default: the cheapest model (record costs), else the worst mean
    # None: the router's own default (`default_features`)
    features: HashingParams | None = None
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    mf: MFParams = field(default_factory=MFParams)
    sw: SWParams = field(default_factory=SWParams)
    pooled: PooledParams = field(default_factory=PooledParams)
    semantic: SemanticConfig | None = None
    # the `unfamiliar` distance model of the training prompts (None: none)
    familiarity: FamiliarityParams | None = field(default_factory=FamiliarityParams)
    seed: int = 0


def label_matrix(records: Sequence[Record], models: Sequence[str]) -> FloatArray:
    """(n, n_models) scores; NaN where a record has no score for a model."""
    return _per_model(records, models, lambda r: r.scores)


def cost_matrix(records: Sequence[Record], models: Sequence[str]) -> FloatArray:
    """(n, n_models) costs in USD; NaN where a record has no cost for a model."""
    return _per_model(records, models, lambda r: r.costs)


def _per_model(
    records: Sequence[Record],
    models: Sequence[str],
    field: Callable[[Record], Mapping[str, float]],
) -> FloatArray:
    out = np.full((len(records), len(models)), np.nan)
    for i, r in enumerate(records):
        values = field(r)
        for j, m in enumerate(models):
            v = values.get(m)
            if v is not None:
                out[i, j] = v
    return out


def default_features(router: str) -> HashingParams:
    """The features a router is trained on unless told otherwise: the hashing features, and
    for `pooled` also the static embedding `POOLED_EMBEDDING`."""
    if router == "pooled":
        return HashingParams(static_embedding=POOLED_EMBEDDING)
    return HashingParams()


def trained_features(router: Router) -> HashingParams | None:
    """The features `router` was trained on (its static embedding, hash sizes), to train its
    successor or a transfer fold the same way; None for a router without hashing features."""
    featurizer = getattr(router, "featurizer", None)
    return featurizer.params if isinstance(featurizer, HashingFeaturizer) else None


def default_router(records: Sequence[Record]) -> str:
    """The recommended router for these records: `DEFAULT_ROUTER` for two models,
    `DEFAULT_N_MODEL_ROUTER` for three or more."""
    models = {m for r in records for m in r.scores}
    return DEFAULT_N_MODEL_ROUTER if len(models) >= 3 else DEFAULT_ROUTER


def cheapest_model(records: Sequence[Record], models: Sequence[str]) -> str | None:
    """The model with the lowest mean cost over the records that give costs for it (every model
    needs at least one), or None when the records carry no costs for some model."""
    means: dict[str, float] = {}
    for m in models:
        costs = [r.costs[m] for r in records if m in r.costs]
        if not costs:
            return None
        means[m] = float(np.mean(costs))
    return min(models, key=lambda m: (means[m], m)) if means else None


def _identity(records: Sequence[Record], options: TrainOptions, name: str) -> Identity:
    models = tuple(sorted({m for r in records for m in r.scores}))
    for role, chosen in (("strong", options.strong), ("weak", options.weak)):
        if chosen is not None and chosen not in models:
            raise TrainingDataError(f"{role} model {chosen!r} has no scores in the data")
    if len(models) < 2 and name != "semantic":
        raise TrainingDataError(f"need scores for at least two models, found {models}")
    y = label_matrix(records, models)
    means = np.nanmean(y, axis=0) if len(records) else np.zeros(len(models))
    strong = options.strong or models[int(np.argmax(means))]
    cheapest = cheapest_model(records, [m for m in models if m != strong])
    weak = options.weak or cheapest or models[int(np.argmin(means))]
    if strong == weak:
        raise TrainingDataError("strong and weak must be different models")
    version = f"{name}-{data_sha256(records)[:12]}"
    return Identity(version=version, models=models, strong=strong, weak=weak)


def _hyper(options: TrainOptions, name: str) -> object:
    by_name: dict[str, object] = {
        "classifier": options.classifier,
        "mf": options.mf,
        "sw_ranking": options.sw,
        "pooled": options.pooled,
    }
    return by_name[name]


def _resolve_aliases(prefs: Mapping[str, float], strong: str, weak: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in prefs.items():
        out[strong if k == STRONG_ALIAS else weak if k == WEAK_ALIAS else k] = v
    return out


def train(records: Sequence[Record], options: TrainOptions) -> Router:
    """Fit the router `options.router` on `records` (deterministic for fixed options)."""
    name = options.router
    if name not in ROUTER_NAMES:
        raise TrainingDataError(f"unknown router {name!r}; choose from {ROUTER_NAMES}")
    if not records and name != "semantic":
        raise TrainingDataError("no training records")
    if name == "semantic":
        return _train_semantic(records, options)
    identity = _identity(records, options, name)
    y = label_matrix(records, identity.models)
    if name == "random":
        return RandomRouter(identity, seed=options.seed)
    if name == "oracle":
        return OracleRouter(identity, {text_key(r.text): y[i] for i, r in enumerate(records)})
    featurizer = HashingFeaturizer(options.features or default_features(name))
    x = featurizer.transform([r.text for r in records])
    standardizer = Standardizer.fit(x, featurizer.sparse_dim)
    xs = standardizer.apply(x)
    familiarity = (
        Familiarity.fit(
            x,
            standardizer.center,
            standardizer.scale,
            options.familiarity,
            sources=[source_of(r) for r in records],
        )
        if options.familiarity is not None and len(records) >= 2
        else None
    )
    base = FeatureBase(identity, featurizer, standardizer, familiarity)
    costs = cost_matrix(records, identity.models)
    return FEATURE_ROUTERS[name].fit(base, xs, y, _hyper(options, name), costs)


def _train_semantic(records: Sequence[Record], options: TrainOptions) -> Router:
    config = options.semantic
    if config is None:
        raise TrainingDataError("the semantic router needs a category config")
    strong = options.strong or STRONG_ALIAS
    weak = options.weak or WEAK_ALIAS
    cats = tuple(
        Category(c.name, _resolve_aliases(c.preferences, strong, weak), c.keywords, c.examples)
        for c in config.categories
    )
    default = _resolve_aliases(config.default, strong, weak)
    resolved = SemanticConfig(cats, default, config.keyword_weight, config.min_match)
    models = sorted({m for c in cats for m in c.preferences} | set(default))
    if strong not in models or weak not in models:
        raise TrainingDataError("the semantic config must give preferences for strong and weak")
    identity = Identity(f"semantic-{data_sha256(records)[:12]}", tuple(models), strong, weak)
    featurizer = HashingFeaturizer(options.features or default_features("semantic"))
    return SemanticRouter(identity, resolved, featurizer)
