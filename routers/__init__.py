"""The routing core: prompt features + learned quality prediction + policy -> `Decision`.

Pure: imports the standard library and numpy only; no clock, no network, no environment.
The only I/O is `save`/`load` of an artifact folder the caller names.
"""

from routers.artifact import load, save
from routers.base import Identity, Router, strong_need
from routers.cascade import AnswerScorer, CascadeParams, CascadeResult
from routers.dataset import Record
from routers.decision import Candidate, Decision
from routers.eligibility import Eligible, Limits, eligible
from routers.errors import ArtifactError, NoEligibleModelError, RoutingError, TrainingDataError
from routers.features import HashingFeaturizer, HashingParams, prompt_text
from routers.policy import ModelPrice, PolicyOptions, decide, route, route_batch
from routers.semcache import CacheHit, CacheParams, PromptVectorizer, SemanticCache
from routers.training import DEFAULT_ROUTER, ROUTER_NAMES, TrainOptions, train

__all__ = [
    "DEFAULT_ROUTER",
    "ROUTER_NAMES",
    "AnswerScorer",
    "ArtifactError",
    "CacheHit",
    "CacheParams",
    "Candidate",
    "CascadeParams",
    "CascadeResult",
    "Decision",
    "Eligible",
    "HashingFeaturizer",
    "HashingParams",
    "Identity",
    "Limits",
    "ModelPrice",
    "NoEligibleModelError",
    "PolicyOptions",
    "PromptVectorizer",
    "Record",
    "Router",
    "RoutingError",
    "SemanticCache",
    "TrainOptions",
    "TrainingDataError",
    "decide",
    "eligible",
    "load",
    "prompt_text",
    "route",
    "route_batch",
    "save",
    "strong_need",
    "train",
]
