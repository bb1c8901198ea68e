"""The pure join of outcomes into routing-dataset rows, and training on partial labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import schemas
from routers.dataset import record_from_obj
from routers.outcomes import (
    Answered,
    Label,
    ScoreRules,
    build_dataset,
    label_scores,
    merge_answered,
    normalise,
)
from routers.training import TrainOptions, label_matrix, train
from schemas.trace import request_key, request_trace_id
from tests.routers.synth import EASY, HARD, STRONG, WEAK, records

RULES = ScoreRules(scales={"stars": (1.0, 5.0)})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("thumb", True, 1.0),
        ("thumb", False, 0.0),
        ("accuracy", 0.25, 0.25),
        ("accuracy", 1, 1.0),
        ("stars", 5, 1.0),
        ("stars", 2, 0.25),
        ("stars", 9, 1.0),  # clipped to the scale
        ("rating", 7, None),  # outside [0, 1] and no scale: not a score
        ("accuracy", math.nan, None),
        ("verdict", "Good", 1.0),
        ("verdict", "thumbs-down", 0.0),
        ("pairwise", "tie", 0.5),
        ("verdict", "meh", None),
    ],
)
def test_normalise_table(name, value, expected):
    got = normalise(Label(name=name, value=value, source="user"), RULES)
    assert got == expected


def test_trace_id_matches_the_workers_rule():
    from langfuse import Langfuse

    from tests.worker.support import ROWS, request_event
    from worker.pipeline.routing import trace_id_for as worker_rule

    request = request_event(ROWS[0], 1, tenant="acme")
    assert request_trace_id("req-000001", "acme") == worker_rule(request)
    assert worker_rule(request) == Langfuse.create_trace_id(seed='["acme","req-000001"]')
    # two tenants' same id: two traces
    assert request_trace_id("req-000001", "acme") != request_trace_id("req-000001", "globex")


def test_merge_takes_prompt_from_decision_and_model_from_response():
    parts = [
        Answered("r1", prompt="2+2?", routed_model="weak", router_version="v1", arm="a"),
        Answered("r1", answer_model="strong", cost_usd=0.01, latency_ms=12.0),  # fell back
        Answered("r2", routed_model="weak"),
        Answered("r2", failed=True, cost_usd=0.0),
        Answered("r1", answer_model="other", cost_usd=9.0),  # a redelivery changes nothing set
    ]
    merged = merge_answered(parts)
    assert merged["r1"].model == "strong"
    assert merged["r1"].prompt == "2+2?"
    assert merged["r1"].cost_usd == 0.01
    assert merged["r1"].arm == "a"
    assert merged["r2"].failed and merged["r2"].model is None


def _answered():
    return merge_answered(
        [
            Answered(
                "r1",
                prompt="hard q",
                routed_model=STRONG,
                answer_model=STRONG,
                cost_usd=0.02,
                tenant="acme",
                router_version="v1",
            ),
            Answered("r2", prompt="easy q", routed_model=WEAK, answer_model=WEAK, cost_usd=0.001),
            Answered("r3", prompt=None, prompt_masked=True, routed_model=WEAK, answer_model=WEAK),
            Answered("r4", prompt="fails", routed_model=WEAK, failed=True),
            Answered("r5", prompt="no feedback", routed_model=WEAK, answer_model=WEAK),
        ]
    )


def test_build_joins_by_request_and_trace_id_and_counts_every_skip():
    labels = [
        Label("thumb", True, "user", 1.0, request_id="r1"),
        Label("stars", 2, "user", 2.0, trace_id=request_trace_id("r2")),
        Label("judge", 0.9, "judge", 3.0, request_id="r2", model=STRONG),  # a shadow answer
        Label("thumb", False, "user", 1.0, request_id="r3"),  # masked prompt
        Label("thumb", True, "user", 1.0, request_id="r4"),  # no answer reached the user
        Label("thumb", True, "user", 1.0, request_id="nope"),
        Label("rating", 7, "user", 1.0, request_id="r1"),  # no scale: unusable
    ]
    rows, stats = build_dataset(_answered(), labels, RULES)
    assert [r["id"] for r in rows] == ["r1", "r2"]
    r1, r2 = rows
    assert r1["scores"] == {STRONG: 1.0}
    assert r1["costs"] == {STRONG: 0.02}
    assert r1["tags"]["tenant"] == "acme" and r1["tags"]["routed_model"] == STRONG
    assert r2["scores"] == {STRONG: 0.9, WEAK: 0.25}
    assert r2["costs"] == {WEAK: 0.001}  # only the answer the request paid for
    assert stats.records == 2 and stats.one_model == 1 and stats.multi_model == 1
    assert stats.skipped_masked == 1
    assert stats.labels_unmatched == 1
    assert stats.labels_unusable == 1
    assert stats.labels_no_model == 1
    assert stats.labels == len(labels)
    for row in rows:  # every row keeps the dataset contract
        schemas.decode(json.dumps(row), schemas.DatasetRecord)


def test_mean_latest_filters_and_source_priority():
    answered = _answered()
    labels = [
        Label("thumb", True, "judge", 5.0, request_id="r1"),
        Label("thumb", False, "user", 1.0, request_id="r1"),
        Label("thumb", True, "user", 3.0, request_id="r1"),
        Label("task_success", 0.0, "task", 4.0, request_id="r1"),
    ]
    r1 = request_key("acme", "r1")  # results are keyed as `answered` is: by tenant and id
    mean, _ = label_scores(answered, labels, ScoreRules())
    assert mean[r1][STRONG] == pytest.approx(0.5)
    latest, _ = label_scores(answered, labels, ScoreRules(aggregate="latest"))
    assert latest[r1][STRONG] == 1.0  # the judge's, at t=5
    prefer, _ = label_scores(answered, labels, ScoreRules(source_priority=("user", "task")))
    assert prefer[r1][STRONG] == pytest.approx(0.5)  # only the two user labels
    tasks, stats = label_scores(answered, labels, ScoreRules(sources=frozenset({"task"})))
    assert tasks[r1][STRONG] == 0.0 and stats.labels_filtered == 3
    named, _ = label_scores(answered, labels, ScoreRules(names=frozenset({"nothing"})))
    assert named == {}


def test_rules_reject_bad_settings():
    with pytest.raises(ValueError, match="scale"):
        ScoreRules(scales={"x": (1.0, 1.0)})
    with pytest.raises(ValueError, match="source"):
        ScoreRules(source_priority=("boss",))


def test_training_uses_rows_with_one_model_scored():
    """Outcome rows mostly score only the routed model. Each model's head learns from the rows
    that score it: here the weak model is scored only on half the rows and the strong only on
    the other half, and the weak head still learns that hard prompts defeat it."""
    rows = records(600, seed=3)
    partial = []
    for i, r in enumerate(rows):
        keep = STRONG if i % 2 else WEAK
        partial.append({**r, "scores": {keep: r["scores"][keep]}})
    recs = [record_from_obj(r) for r in partial]
    assert np.isnan(label_matrix(recs, (STRONG, WEAK))).sum() == len(recs)
    router = train(recs, TrainOptions(router="classifier", strong=STRONG, weak=WEAK))
    hard = [t.format(n=7) for t in HARD]
    easy = [t.format(n=7) for t in EASY]
    w = router.models.index(WEAK)
    p_hard = router.predict(hard)[:, w].mean()
    p_easy = router.predict(easy)[:, w].mean()
    assert p_easy - p_hard > 0.3, (p_easy, p_hard)


def test_rows_carry_the_answer_the_user_got_and_retrain_the_cascade_scorer():
    from routers.answer_scorer import train_answer_scorer
    from tests.routers.synth import CHEAP, answered_records

    parts, labels = [], []
    for i, row in enumerate(answered_records(120, seed=9)):
        rid = f"q{i}"
        cheap = i % 2 == 0  # half answered by the cheap model, half by the strong one
        model = CHEAP if cheap else STRONG
        parts.append(Answered(rid, prompt=row["prompt"], routed_model=model))
        parts.append(Answered(rid, answer_model=model, answer_text=row["answers"][model]))
        labels.append(Label("correct", bool(row["scores"][model]), "task", 1.0, request_id=rid))
    rows, _ = build_dataset(merge_answered(parts), labels)
    assert all(
        r["answers"] == {next(iter(r["scores"])): r["answers"][next(iter(r["scores"]))]}
        for r in rows
    )
    recs = [record_from_obj(r) for r in rows]
    scorer = train_answer_scorer(recs, strong=STRONG, weak=CHEAP)
    assert scorer.weak == CHEAP
    # no answer text (masked or never seen): no `answers` field
    bare, _ = build_dataset(
        merge_answered([Answered("x", prompt="p", routed_model=CHEAP, answer_model=CHEAP)]),
        [Label("correct", True, "task", 1.0, request_id="x")],
    )
    assert "answers" not in bare[0]


def test_two_tenants_with_the_same_request_id_are_two_rows():
    parts = [
        Answered("r1", prompt="alpha's question", routed_model="weak", tenant="alpha"),
        Answered("r1", prompt="beta's question", routed_model="strong", tenant="beta"),
        Answered("r1", answer_model="weak", tenant="alpha"),
        Answered("r1", answer_model="strong", tenant="beta"),
    ]
    answered = merge_answered(parts)
    assert len(answered) == 2
    labels = [
        Label("correct", True, "user", request_id="r1", tenant="alpha"),
        Label("correct", False, "user", request_id="r1", tenant="beta"),
        Label("correct", True, "judge", trace_id=request_trace_id("r1", "beta"), model="weak"),
        Label("correct", True, "user", request_id="r1"),  # which tenant's? not guessed
    ]
    rows, stats = build_dataset(answered, labels)
    by_prompt = {r["prompt"]: r["scores"] for r in rows}
    assert by_prompt == {
        "alpha's question": {"weak": 1.0},
        "beta's question": {"strong": 0.0, "weak": 1.0},
    }
    assert stats.labels_unmatched == 1
    assert {r["tags"]["tenant"] for r in rows} == {"alpha", "beta"}


def test_parts_without_a_tenant_join_the_only_request_with_that_id():
    parts = [
        Answered("r7", prompt="q", routed_model="weak", tenant="acme"),
        Answered("r7", answer_model="strong", cost_usd=0.5),  # from a source without tenants
    ]
    answered = merge_answered(parts)
    assert len(answered) == 1
    (only,) = answered.values()
    assert (only.tenant, only.model, only.cost_usd) == ("acme", "strong", 0.5)
    rows, _ = build_dataset(answered, [Label("correct", 1.0, "user", request_id="r7")])
    assert rows[0]["id"] == "r7" and rows[0]["scores"] == {"strong": 1.0}
