"""What every router offers: per-model predicted quality for texts, and a strong-need score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["FloatArray", "HasIdentity", "Identity", "Router", "strong_need"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a router is: its version string, its models and which two are strong and weak."""

    version: str
    models: tuple[str, ...]
    strong: str
    weak: str

    def __post_init__(self) -> None:
        if len(set(self.models)) != len(self.models) or not self.models:
            raise ValueError("models must be distinct and non-empty")
        for role, model in (("strong", self.strong), ("weak", self.weak)):
            if model not in self.models:
                raise ValueError(f"{role} model {model!r} is not one of {self.models}")


class HasIdentity:
    """The identity half of the `Router` protocol, read from `self.identity`."""

    identity: Identity

    @property
    def version(self) -> str:
        return self.identity.version

    @property
    def models(self) -> tuple[str, ...]:
        return self.identity.models

    @property
    def strong(self) -> str:
        return self.identity.strong

    @property
    def weak(self) -> str:
        return self.identity.weak


@runtime_checkable
class Router(Protocol):
    """A loaded router. `predict` is pure: no I/O, no clock, same input -> same output."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def strong(self) -> str: ...

    @property
    def weak(self) -> str: ...

    def predict(self, texts: Sequence[str]) -> FloatArray:
        """Predicted quality in [0, 1], shape (len(texts), len(models))."""
        ...

    def params(self) -> dict[str, Any]:
        """JSON-able parameters saved in the artifact's meta.json."""
        ...

    def arrays(self) -> Mapping[str, npt.NDArray[Any]]:
        """Named numpy arrays saved in the artifact."""
        ...


def strong_need(router: Router, predicted: FloatArray) -> FloatArray:
    """Higher = the strong model is needed more: predicted quality(strong) - quality(weak)."""
    s = router.models.index(router.strong)
    w = router.models.index(router.weak)
    out: FloatArray = predicted[:, s] - predicted[:, w]
    return out
