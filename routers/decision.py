"""The explainable result of routing one request."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Candidate", "Decision"]


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    predicted_quality: float
    est_cost_usd: float
    est_latency_ms: float | None = None  # expected time to answer (None: not measured)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model, why, and what else was considered. `reason` is one human-readable line."""

    model: str
    score: float  # two models: strong-need score; N models: the chosen model's objective
    threshold: float | None
    candidates: tuple[Candidate, ...]
    reason: str
    router: str
    router_version: str
    # "threshold", "quality_target", "cost_tradeoff", "only_candidate", "latency_tight" or
    # "unfamiliar"
    policy: str
    # distance from the router's training prompts; > 1.0 is beyond 99% of them (None: unknown)
    unfamiliar: float | None = None
    # the models the request may reach (routers.eligibility): the shell calls no other
    eligible: frozenset[str] = frozenset()
