"""`semantic`: categories defined in configuration, each with model preferences; no labels.

A category matches a prompt by keywords (whole-word, case-insensitive) and by cosine similarity
between the prompt's features and the mean features of the category's example prompts
(vLLM Semantic Router style). The best-matching category above `min_match` gives each model's
quality; otherwise the `default` preferences apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from routers.base import FloatArray, HasIdentity, Identity
from routers.features import HashingFeaturizer

__all__ = ["Category", "SemanticConfig", "SemanticRouter", "semantic_config_from_obj"]


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    preferences: Mapping[str, float]  # model -> quality in [0, 1]
    keywords: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SemanticConfig:
    categories: tuple[Category, ...]
    default: Mapping[str, float]
    keyword_weight: float = 0.25  # added to the match per keyword hit, at most 3 hits
    min_match: float = 0.25


def _prefs(obj: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in obj.items()}


def semantic_config_from_obj(obj: Mapping[str, Any]) -> SemanticConfig:
    """Parse the JSON form (see routers/data/semantic_default.json); ValueError when `obj` is
    not of that shape."""
    try:
        cats = tuple(
            Category(
                name=str(c["name"]),
                preferences=_prefs(c["preferences"]),
                keywords=tuple(str(k) for k in c.get("keywords", ())),
                examples=tuple(str(e) for e in c.get("examples", ())),
            )
            for c in obj["categories"]
        )
        return SemanticConfig(
            categories=cats,
            default=_prefs(obj["default"]),
            keyword_weight=float(obj.get("keyword_weight", 0.25)),
            min_match=float(obj.get("min_match", 0.25)),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a semantic config: {exc!r}") from None


class SemanticRouter(HasIdentity):
    name = "semantic"

    def __init__(
        self, identity: Identity, config: SemanticConfig, featurizer: HashingFeaturizer
    ) -> None:
        self.identity = identity
        self.config = config
        self.featurizer = featurizer
        word = featurizer.params.word_dim + featurizer.params.char_dim
        self._text_dims = word
        centroids = []
        for cat in config.categories:
            if cat.examples:
                c = featurizer.transform(list(cat.examples))[:, :word].mean(axis=0)
                c /= max(float(np.linalg.norm(c)), 1e-12)
            else:
                c = np.zeros(word, dtype=np.float32)
            centroids.append(c)
        self.centroids = np.array(centroids, dtype=np.float32).reshape(len(centroids), word)
        self._keyword_res = [
            re.compile(r"\b(?:" + "|".join(re.escape(k.lower()) for k in cat.keywords) + r")\b")
            if cat.keywords
            else None
            for cat in config.categories
        ]
        self._table = np.array(
            [
                [cat.preferences.get(m, config.default.get(m, 0.5)) for m in identity.models]
                for cat in config.categories
            ]
            + [[config.default.get(m, 0.5) for m in identity.models]]
        )

    def match(self, texts: Sequence[str]) -> FloatArray:
        """Match strength of each text with each category, shape (n, n_categories)."""
        x = self.featurizer.transform(texts)[:, : self._text_dims]
        # Each block of the text features is unit-length, so divide by sqrt(2) for a cosine.
        sims: FloatArray = (x @ self.centroids.T).astype(np.float64) / np.sqrt(2.0)
        for j, pattern in enumerate(self._keyword_res):
            if pattern is None:
                continue
            for i, text in enumerate(texts):
                hits = min(len(pattern.findall(text.lower())), 3)
                sims[i, j] += self.config.keyword_weight * hits
        return sims

    def categories_of(self, texts: Sequence[str]) -> list[str | None]:
        sims = self.match(texts)
        out: list[str | None] = []
        for row in sims:
            j = int(np.argmax(row)) if len(row) else -1
            ok = j >= 0 and row[j] >= self.config.min_match
            out.append(self.config.categories[j].name if ok else None)
        return out

    def predict(self, texts: Sequence[str]) -> FloatArray:
        if not self.config.categories:
            return np.tile(self._table[-1], (len(texts), 1))
        sims = self.match(texts)
        best = np.argmax(sims, axis=1)
        best_sim = sims[np.arange(len(texts)), best]
        rows = np.where(best_sim >= self.config.min_match, best, len(self.config.categories))
        out: FloatArray = self._table[rows]
        return out

    def params(self) -> dict[str, Any]:
        return {
            "keyword_weight": self.config.keyword_weight,
            "min_match": self.config.min_match,
            "default": dict(self.config.default),
            "categories": [
                {
                    "name": c.name,
                    "preferences": dict(c.preferences),
                    "keywords": list(c.keywords),
                    "examples": list(c.examples),
                }
                for c in self.config.categories
            ],
        }

    def arrays(self) -> Mapping[str, npt.NDArray[Any]]:
        return {}
