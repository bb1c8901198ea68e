"""Which models one request may reach: the one eligibility rule.

Every party with a say gives `Limits`: the tenant (its configuration), the request (it may only
narrow), a policy when it names models. A model is eligible iff it is routable and, for every
party, it is in the party's `allowed` set (when the party gives one), not in its `denied` set,
and its cost bound is within the party's `max_cost_usd` (when given). `allowed=None` means the
party does not restrict; an empty `allowed` set allows nothing.

A request may only narrow what its tenant allows (`narrow`): both parties' limits apply, the
lower latency budget holds, and of the settings it asks to override only those its tenant lists
in `allow_overrides` take effect; the others are ignored, and the reason says so.

Everything the shell calls for a request (the chosen model, fallbacks, cascade escalation,
shadow calls, batch submission) is drawn from the one `Eligible` set computed here; an empty set
is an error whose message (`Eligible.why_none`) names why each model was excluded.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Eligible", "Limits", "Narrowed", "eligible", "narrow"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one party permits. `source` names the party in reasons ("tenant", "request")."""

    source: str
    allowed: frozenset[str] | None = None  # None: no restriction; empty: nothing allowed
    denied: frozenset[str] = frozenset()
    max_cost_usd: float | None = None

    @classmethod
    def of(
        cls,
        source: str,
        allowed: Iterable[str] | None,
        denied: Iterable[str] | None,
        max_cost_usd: float | None,
    ) -> Limits:
        return cls(
            source,
            None if allowed is None else frozenset(allowed),
            frozenset(denied or ()),
            max_cost_usd,
        )


@dataclass(frozen=True, slots=True)
class Narrowed:
    """What applies to one request of a tenant."""

    limits: tuple[Limits, ...]  # the tenant's, then the request's: every one applies
    overrides: Mapping[str, object]  # the settings the request overrides, as it asked
    notes: tuple[str, ...]  # the overrides it asked for and may not make (ignored)
    max_latency_ms: float | None  # the lower of the two latency budgets


def narrow(
    tenant: Limits,
    request: Limits,
    *,
    asked: Sequence[tuple[str, object]],
    allow_overrides: Collection[str],
    max_latency_ms: tuple[float | None, float | None] = (None, None),
) -> Narrowed:
    """The request's limits on top of its tenant's (a request may always narrow, never widen),
    and of the settings it asks to override (`asked`: name and value in order; None: not
    asked), those the tenant allows; a note for each other one."""
    overrides: dict[str, object] = {}
    notes: list[str] = []
    for name, value in asked:
        if value is None:
            continue
        if name in allow_overrides:
            overrides[name] = value
        else:
            notes.append(f"override {name!r} not allowed for tenant; ignored")
    budgets = [b for b in max_latency_ms if b is not None]
    return Narrowed((tenant, request), overrides, tuple(notes), min(budgets) if budgets else None)


@dataclass(frozen=True, slots=True)
class Eligible:
    """The models a request may reach, and for every other routable model, why not."""

    models: frozenset[str]
    excluded: tuple[tuple[str, str], ...]  # (model, reason), sorted by model
    budget_usd: float | None  # the lowest budget of all parties (None: no budget)
    cost_bound_usd: Mapping[str, float]  # per model: the most the request may cost

    def __contains__(self, model: object) -> bool:
        return model in self.models

    def __bool__(self) -> bool:
        return bool(self.models)

    def why_none(self) -> str:
        """One line: why nothing is eligible (or why each excluded model is)."""
        if not self.excluded:
            return "no eligible model: no routable model"
        return "no eligible model: " + "; ".join(f"{m} {why}" for m, why in self.excluded)


def _fmt(usd: float) -> str:
    return f"${usd:.6f}" if math.isfinite(usd) else "unknown"


def eligible(
    routable: Iterable[str],
    parties: Sequence[Limits],
    cost_bound_usd: Mapping[str, float],
) -> Eligible:
    """The eligible set of `routable` models under every party's limits. A model missing from
    `cost_bound_usd` has an unknown cost: it is excluded whenever any party sets a budget."""
    budgets = [p.max_cost_usd for p in parties if p.max_cost_usd is not None]
    budget = min(budgets) if budgets else None
    ok: set[str] = set()
    excluded: list[tuple[str, str]] = []
    for model in sorted(set(routable)):
        why = _exclusion(model, parties, cost_bound_usd.get(model, math.inf))
        if why is None:
            ok.add(model)
        else:
            excluded.append((model, why))
    return Eligible(frozenset(ok), tuple(excluded), budget, dict(cost_bound_usd))


def _exclusion(model: str, parties: Sequence[Limits], cost: float) -> str | None:
    for party in parties:
        if party.allowed is not None and model not in party.allowed:
            return f"not allowed by the {party.source}"
        if model in party.denied:
            return f"denied by the {party.source}"
    for party in parties:
        limit = party.max_cost_usd
        if limit is not None and not cost <= limit:
            return f"may cost up to {_fmt(cost)} > the {party.source}'s budget {_fmt(limit)}"
    return None
