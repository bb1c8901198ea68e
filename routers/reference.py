"""Reference lines for evaluation: `random` (seeded, per-text deterministic) and `oracle`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from routers.base import FloatArray, HasIdentity, Identity

__all__ = ["OracleRouter", "RandomRouter", "text_key"]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class _Named(HasIdentity):
    name = "reference"

    def __init__(self, identity: Identity) -> None:
        self.identity = identity


class RandomRouter(_Named):
    """Uniform 'quality' per (seed, model, text): a replay of the same text gives the same value."""

    name = "random"

    def __init__(self, identity: Identity, seed: int = 0) -> None:
        super().__init__(identity)
        self.seed = seed

    def predict(self, texts: Sequence[str]) -> FloatArray:
        out = np.empty((len(texts), len(self.models)))
        for i, text in enumerate(texts):
            for j, model in enumerate(self.models):
                h = hashlib.sha256(f"{self.seed}\x00{model}\x00{text}".encode()).digest()
                out[i, j] = int.from_bytes(h[:8], "big") / 2.0**64
        return out

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def arrays(self) -> Mapping[str, npt.NDArray[Any]]:
        return {}


class OracleRouter(_Named):
    """Knows the true quality of the prompts it was given; others get each model's mean."""

    name = "oracle"

    def __init__(self, identity: Identity, table: Mapping[str, Sequence[float]]) -> None:
        super().__init__(identity)
        self.table = {k: np.asarray(v, dtype=np.float64) for k, v in table.items()}
        values = np.array(list(self.table.values())) if self.table else np.empty((0, 0))
        known = values.size > 0
        self.mean = np.nanmean(values, axis=0) if known else np.full(len(identity.models), 0.5)

    def predict(self, texts: Sequence[str]) -> FloatArray:
        out = np.empty((len(texts), len(self.models)))
        for i, text in enumerate(texts):
            row = self.table.get(text_key(text))
            out[i] = self.mean if row is None else np.where(np.isnan(row), self.mean, row)
        return out

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> Mapping[str, npt.NDArray[Any]]:
        keys = sorted(self.table)
        values = np.array([self.table[k] for k in keys]).reshape(len(keys), len(self.models))
        return {"keys": np.array(keys, dtype="U32"), "values": values}
