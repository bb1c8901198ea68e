"""Routing datasets from outcomes: routed requests + feedback -> dataset rows. Pure, no I/O.

The shell (`worker/cli/dataset.py`) reads `llm.decisions`, `llm.responses` and `llm.feedback`
(or Langfuse observations and scores) and hands this module plain values:

- `Answered` parts, one per decision or response event; `merge_answered` joins the parts of one
  request (a decision gives the prompt and the routed model, a response the model that really
  answered after fallbacks, its cost and latency; later parts fill what earlier ones left open).
- `Label`s, one per feedback event, keyed by `request_id` (with its `tenant`) or by trace id (the
  worker derives the trace id from the tenant and request id: `schemas.trace`, Langfuse's
  `create_trace_id(seed=...)` rule).

Request ids are each tenant's own: requests are keyed by `request_key(tenant, request_id)`. A part
or label without a tenant joins the one request with its id, and none when several tenants used
it (such a label counts as unmatched).

`build_dataset` turns them into rows of the routing dataset format (`schemas/dataset.schema.json`):
`{"id": request_id, "prompt", "scores": {model: 0..1}, "costs"?, "tags", "answers"?}`; `answers`
holds the text the user got when the response carried it, so `llmroute train --router cascade`
retrains the cascade's answer scorer from outcomes (only answers that reached the user: a cheap
answer the cascade escalated is not among them).

Which model a label scores: its own `model` when set (a shadow answer, a pairwise judge), else the
model whose answer reached the user (the response's model, else the decision's). A request with
feedback on only the routed model gives a row with ONE model scored; `routers.training` leaves
missing (prompt, model) pairs out of each model's loss, so such rows train that model's head
only (see docs/retraining.md for what this means for selection bias).

Feedback values become scores in [0, 1] (`normalise`): booleans as 1/0; numbers already in
[0, 1] as they are; other numbers through a per-name `(worst, best)` scale (e.g. a 1-5 star
rating), else rejected; categories through a table (`good`/`bad`, `pass`/`fail`, `win`/`tie`/
`loss`, ...). Several labels for one (request, model) -> their mean, or the latest one; with a
`source_priority`, only labels of the best-ranked source present count (e.g. a user's verdict
over a judge's).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal

from schemas.trace import request_key, request_trace_id

__all__ = [
    "DEFAULT_CATEGORIES",
    "Answered",
    "BuildStats",
    "Label",
    "LabelIndex",
    "ScoreRules",
    "build_dataset",
    "label_scores",
    "merge_answered",
    "normalise",
]

SOURCES: tuple[str, ...] = ("user", "task", "judge", "system")

DEFAULT_CATEGORIES: Mapping[str, float] = MappingProxyType(
    {
        "good": 1.0,
        "bad": 0.0,
        "correct": 1.0,
        "incorrect": 0.0,
        "wrong": 0.0,
        "pass": 1.0,
        "fail": 0.0,
        "success": 1.0,
        "failure": 0.0,
        "yes": 1.0,
        "no": 0.0,
        "true": 1.0,
        "false": 0.0,
        "thumbs_up": 1.0,
        "thumbs_down": 0.0,
        "up": 1.0,
        "down": 0.0,
        "win": 1.0,
        "tie": 0.5,
        "loss": 0.0,
        "accepted": 1.0,
        "rejected": 0.0,
    }
)


@dataclass(frozen=True, slots=True)
class Answered:
    """What is known about one routed request; any field may be unknown (None)."""

    request_id: str
    prompt: str | None = None  # the routed prompt text (None: masked or not seen)
    prompt_masked: bool = False  # the decision carried only the prompt's hash
    routed_model: str | None = None  # the decision's choice
    answer_model: str | None = None  # the model whose answer the response carried
    failed: bool = False  # the response was an error: no answer reached the user
    cost_usd: float | None = None
    latency_ms: float | None = None
    tenant: str | None = None
    router: str | None = None
    router_version: str | None = None
    policy: str | None = None
    arm: str | None = None
    cache_hit: bool | None = None
    shadow_model: str | None = None
    answer_text: str | None = None  # the text the user got (None: masked, failed or unseen)

    @property
    def model(self) -> str | None:
        """The model whose answer the user got (None when the request failed or is unknown)."""
        if self.failed:
            return None
        return self.answer_model or self.routed_model


@dataclass(frozen=True, slots=True)
class Label:
    """One feedback value on an answer, keyed by request id and/or trace id."""

    name: str
    value: float | bool | str
    source: str  # user | task | judge | system
    order: float = 0.0  # when it was given (POSIX seconds): "latest" takes the largest
    request_id: str | None = None
    trace_id: str | None = None
    model: str | None = None  # the judged model when not the one that answered the user
    tenant: str | None = None  # the tenant of `request_id`


@dataclass(frozen=True, slots=True)
class ScoreRules:
    """How feedback values become one score per (request, model)."""

    aggregate: Literal["mean", "latest"] = "mean"
    # feedback name -> (worst, best) for numeric values outside [0, 1], e.g. {"stars": (1, 5)}
    scales: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    categories: Mapping[str, float] = field(default_factory=lambda: DEFAULT_CATEGORIES)
    names: frozenset[str] | None = None  # only feedback with these names (None: every name)
    sources: frozenset[str] | None = None  # only these sources (None: every source)
    # when set: per (request, model) only the labels of the best-ranked source present count
    source_priority: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.aggregate not in ("mean", "latest"):
            raise ValueError("aggregate must be 'mean' or 'latest'")
        for name, (worst, best) in self.scales.items():
            if worst == best or not (math.isfinite(worst) and math.isfinite(best)):
                raise ValueError(f"scale of {name!r} needs two different finite ends")
        for source in (*self.source_priority, *(self.sources or ())):
            if source not in SOURCES:
                raise ValueError(f"unknown feedback source {source!r}; one of {SOURCES}")


def normalise(label: Label, rules: ScoreRules) -> float | None:
    """The label's value as a score in [0, 1], or None when it cannot be read as one."""
    value = label.value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        v = float(value)
        if not math.isfinite(v):
            return None
        scale = rules.scales.get(label.name)
        if scale is not None:
            worst, best = scale
            return min(max((v - worst) / (best - worst), 0.0), 1.0)
        return v if 0.0 <= v <= 1.0 else None
    key = value.strip().lower().replace(" ", "_").replace("-", "_")
    score = rules.categories.get(key)
    return None if score is None else float(score)


def merge_answered(parts: Iterable[Answered]) -> dict[str, Answered]:
    """Join the parts of each request, keyed by `request_key(tenant, request_id)`: a later part
    fills the fields an earlier one left unknown; `failed` and `prompt_masked` stick once set.
    Redelivered duplicates merge away. A part without a tenant joins the one request with its id
    (or, when several tenants used it, stands alone under the bare id)."""
    out: dict[str, Answered] = {}
    loose: list[Answered] = []
    for part in parts:
        if part.tenant is None:
            loose.append(part)
        else:
            _merge_into(out, request_key(part.tenant, part.request_id), part)
    if loose:
        keys = _keys_by_id(out)
        for part in loose:
            found = keys.get(part.request_id, [])
            _merge_into(out, found[0] if len(found) == 1 else part.request_id, part)
    return out


_FIELDS = [f.name for f in fields(Answered)]


def _merge_into(out: dict[str, Answered], key: str, part: Answered) -> None:
    have = out.get(key)
    if have is None:
        out[key] = part
        return
    changes: dict[str, Any] = {}
    for name in _FIELDS:
        old, new = getattr(have, name), getattr(part, name)
        if name in ("failed", "prompt_masked"):
            if new and not old:
                changes[name] = True
        elif old is None and new is not None:
            changes[name] = new
    if changes:
        out[key] = replace(have, **changes)


def _keys_by_id(answered: Mapping[str, Answered]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = defaultdict(list)
    for key, a in answered.items():
        keys[a.request_id].append(key)
    return keys


class LabelIndex:
    """Which request of `answered` (its key) a label is about, or None."""

    def __init__(self, answered: Mapping[str, Answered]) -> None:
        self._answered = answered
        self._ids = _keys_by_id(answered)
        self._traces: dict[str, str] = {}
        for key, a in answered.items():
            self._traces[request_trace_id(a.request_id, a.tenant)] = key
            if len(self._ids[a.request_id]) == 1:  # traces derived before ids were scoped
                self._traces.setdefault(request_trace_id(a.request_id), key)
                # a request known only by its trace id (Langfuse, without a request id)
                self._traces.setdefault(a.request_id, key)

    def key_for(self, label: Label) -> str | None:
        rid = label.request_id
        if rid is not None:
            if label.tenant is not None:
                key = request_key(label.tenant, rid)
                if key in self._answered:
                    return key
            else:
                found = self._ids.get(rid, [])
                if len(found) == 1:
                    return found[0]
        trace = label.trace_id
        if trace is not None:
            # requests known by request id, or (from Langfuse) by their trace id itself
            found_trace = self._traces.get(trace)
            if found_trace is not None:
                return found_trace
            if trace in self._answered:
                return trace
        return None


@dataclass
class BuildStats:
    """What `build_dataset` did with its input (every skip is counted, never silent)."""

    requests: int = 0
    records: int = 0
    one_model: int = 0  # records with exactly one model scored
    multi_model: int = 0  # records with two or more
    skipped_masked: int = 0  # scored, but the prompt was masked (only its hash is known)
    skipped_no_prompt: int = 0  # scored, but no decision event carried the prompt
    labels: int = 0
    labels_used: int = 0
    labels_filtered: int = 0  # name or source not wanted
    labels_unusable: int = 0  # value not readable as a score in [0, 1]
    labels_unmatched: int = 0  # no request with that id or trace id
    labels_no_model: int = 0  # no model named and the request has no answer model

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def label_scores(
    answered: Mapping[str, Answered], labels: Iterable[Label], rules: ScoreRules
) -> tuple[dict[str, dict[str, float]], BuildStats]:
    """{request_id: {model: score}} from the labels, aggregated as `rules` say."""
    stats = BuildStats(requests=len(answered))
    index = LabelIndex(answered)
    collected: dict[tuple[str, str], list[tuple[str, float, float]]] = defaultdict(list)
    for label in labels:
        stats.labels += 1
        if (rules.names is not None and label.name not in rules.names) or (
            rules.sources is not None and label.source not in rules.sources
        ):
            stats.labels_filtered += 1
            continue
        rid = index.key_for(label)
        if rid is None:
            stats.labels_unmatched += 1
            continue
        score = normalise(label, rules)
        if score is None:
            stats.labels_unusable += 1
            continue
        model = label.model or answered[rid].model
        if model is None:
            stats.labels_no_model += 1
            continue
        collected[(rid, model)].append((label.source, label.order, score))
        stats.labels_used += 1
    out: dict[str, dict[str, float]] = defaultdict(dict)
    rank = {s: i for i, s in enumerate(rules.source_priority)}
    for (rid, model), items in collected.items():
        if rank:
            best = min(rank.get(s, len(rank)) for s, _, _ in items)
            items = [it for it in items if rank.get(it[0], len(rank)) == best]
        if rules.aggregate == "latest":
            out[rid][model] = max(items, key=lambda it: it[1])[2]
        else:
            out[rid][model] = sum(it[2] for it in items) / len(items)
    return dict(out), stats


def build_dataset(
    answered: Mapping[str, Answered], labels: Iterable[Label], rules: ScoreRules | None = None
) -> tuple[list[dict[str, Any]], BuildStats]:
    """Dataset rows (sorted by id) for every request with at least one usable score."""
    scores, stats = label_scores(answered, labels, rules or ScoreRules())
    rows: list[dict[str, Any]] = []
    ids = _keys_by_id(answered)
    for rid in sorted(scores):
        a = answered[rid]
        if a.prompt is None:
            if a.prompt_masked:
                stats.skipped_masked += 1
            else:
                stats.skipped_no_prompt += 1
            continue
        row: dict[str, Any] = {
            # the request id; with its tenant when another tenant used the same id
            "id": a.request_id if len(ids[a.request_id]) == 1 else rid,
            "prompt": a.prompt,
            "scores": dict(sorted(scores[rid].items())),
        }
        model = a.model
        if model is not None and a.cost_usd is not None and model in scores[rid]:
            row["costs"] = {model: a.cost_usd}
        tags = {
            k: v
            for k, v in (
                ("tenant", a.tenant),
                ("router_version", a.router_version),
                ("routed_model", a.routed_model),
                ("arm", a.arm),
            )
            if v is not None
        }
        if tags:
            row["tags"] = tags
        if model is not None and a.answer_text is not None and model in scores[rid]:
            row["answers"] = {model: a.answer_text}  # cascade answer scorers train on these
        rows.append(row)
        if len(row["scores"]) == 1:
            stats.one_model += 1
        else:
            stats.multi_model += 1
    stats.records = len(rows)
    return rows, stats
