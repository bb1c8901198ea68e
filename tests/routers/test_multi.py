"""N models: the pooled router (shrinkage to per-model means, kernel ridge residuals with a
leave-one-out penalty), `default` choosing it for three or more models, and budgets / quality
targets mapped to the lambda policy."""

import itertools
import json
import random

import numpy as np
import pytest

from routers import artifact
from routers.base import strong_need
from routers.dataset import Record, record_from_obj
from routers.features import HashingParams
from routers.metrics import two_model_report
from routers.multi import (
    LambdaPoint,
    PooledParams,
    choose_residual_scale,
    hull_area,
    lambda_curve,
    lambda_for_budget,
    lambda_for_quality,
)
from routers.training import TrainOptions, cost_matrix, default_router, label_matrix, train
from worker.__main__ import main

from . import synth

SMALL = HashingParams(word_dim=512, char_dim=512)


def _records(n, seed):
    return [record_from_obj(r) for r in synth.records(n, seed=seed, with_mid=True)]


def test_default_is_pooled_for_three_or_more_models():
    assert default_router(_records(10, 0)) == "pooled"
    two = [
        Record(r.id, r.text, {m: r.scores[m] for m in (synth.STRONG, synth.WEAK)})
        for r in _records(10, 0)
    ]
    assert default_router(two) == "classifier"


def test_pooled_learns_prompt_signal_from_little_data_and_round_trips(tmp_path):
    fit, test = _records(150, 1), _records(300, 2)
    router = train(fit, TrainOptions(router="pooled", features=SMALL))
    assert router.weak == synth.WEAK  # the cheapest (row costs)
    pred = router.predict([r.text for r in test])
    assert pred.shape == (300, 3) and (pred >= 0).all() and (pred <= 1).all()
    y = label_matrix(test, router.models)
    s, w = router.models.index(synth.STRONG), router.models.index(synth.WEAK)
    assert two_model_report(strong_need(router, pred), y[:, s], y[:, w]).apgr > 0.75
    artifact.save(router, tmp_path / "p")
    loaded = artifact.load(tmp_path / "p")
    np.testing.assert_allclose(loaded.predict([r.text for r in test]), pred)


def test_without_signal_predictions_shrink_to_each_models_mean():
    rng = random.Random(3)
    recs = [
        Record(
            f"r{i}",
            f"prompt number {rng.random()}",
            {
                "a": float(rng.random() < 0.8),
                "b": float(rng.random() < 0.5),
                "c": float(rng.random() < 0.3),
            },
        )
        for i in range(150)
    ]
    router = train(recs, TrainOptions(router="pooled", features=SMALL))
    pred = router.predict([f"another prompt {i}" for i in range(50)])
    means = np.nanmean(label_matrix(recs, router.models), axis=0)
    assert np.abs(pred - means).max() < 0.1  # labels are noise: no prompt-level trust
    assert router.params()["chosen_penalty"] >= 10.0


def test_lambda_policies_by_hand():
    predicted = np.array([[0.9, 0.5], [0.9, 0.85]])
    cost = np.array([[1.0, 0.1], [1.0, 0.1]])
    curve = lambda_curve(predicted, cost, points=50)
    assert curve[0] == LambdaPoint(0.0, 1.0, 0.9)  # lambda 0: best predicted everywhere
    assert curve[-1].mean_cost_usd == pytest.approx(0.1)
    # a budget of 0.55 per request affords the dear model on one prompt of two: the one where
    # it gains most (0.4 > 0.05 per 0.9 USD)
    lam = lambda_for_budget(curve, 0.55)
    pick = np.argmax(predicted - lam * cost, axis=1)
    assert pick.tolist() == [0, 1]
    assert lambda_for_budget(curve, 0.01) == max(p.cost_weight_per_usd for p in curve)
    lam_q = lambda_for_quality(curve, 0.87)
    assert np.argmax(predicted - lam_q * cost, axis=1).tolist() == [0, 1]
    assert lambda_for_quality(curve, 0.99) == 0.0


def test_cli_train_default_score_and_budget_calibration(tmp_path, capsys):
    train_f = synth.write_jsonl(tmp_path / "t.jsonl", synth.records(150, seed=4, with_mid=True))
    test_f = synth.write_jsonl(tmp_path / "s.jsonl", synth.records(40, seed=5, with_mid=True))
    out = tmp_path / "r"
    assert main(["train", "--data", str(train_f), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["router"] == "pooled" and summary["weak"] == synth.WEAK
    scores = tmp_path / "scores.jsonl"
    assert main(["score", "--router", str(out), "--data", str(test_f), "--out", str(scores)]) == 0
    lines = [json.loads(x) for x in scores.read_text().splitlines()]
    assert all(set(x["predicted"]) == {synth.STRONG, synth.MID, synth.WEAK} for x in lines)
    capsys.readouterr()
    rc = main(
        [
            "calibrate",
            "--router",
            str(out),
            "--data",
            str(test_f),
            "--budget-usd",
            "0.004",
            "--budget-fraction",
            "0.5",
            "--quality-target",
            "0.8",
        ]
    )
    assert rc == 0
    got = json.loads(capsys.readouterr().out)["thresholds"]
    assert set(got) == {
        "lambda_budget_usd_0.004",
        "lambda_budget_fraction_0.50",
        "lambda_quality_0.800",
    }
    meta = json.loads((out / "meta.json").read_text())
    assert meta["calibration"]["lambda_budget_usd_0.004"] == got["lambda_budget_usd_0.004"]
    assert len(meta["lambda_curve"]) > 10
    # costs decrease as lambda grows, and the budget's lambda keeps within it
    curve = meta["lambda_curve"]
    assert all(a[1] >= b[1] - 1e-12 for a, b in itertools.pairwise(curve))
    at = next(c for c in curve if c[0] == got["lambda_budget_usd_0.004"])
    assert at[1] <= 0.004


def test_hull_area_by_hand():
    # two models, two prompts: model 0 costs 1 and is right on both, model 1 costs 0 and is
    # right on the first only. Singles: (0, 0.5) and (1, 1). A router that knows sends the
    # first prompt to model 1 and the second to model 0: (0.5, 1.0) is reachable.
    q = np.array([[1.0, 1.0], [1.0, 0.0]])
    c = np.array([[1.0, 0.0], [1.0, 0.0]])
    knowing = hull_area(q, q, c)
    blind = hull_area(np.array([[0.9, 0.5], [0.9, 0.5]]), q, c)
    # knowing: 0.5 -> 1.0 over [0, 0.5], then 1.0: area 0.375 + 0.5; blind: the singles' line
    assert knowing == pytest.approx(0.875, abs=1e-3)
    assert blind == pytest.approx(0.75, abs=1e-3)


def test_residual_scale_is_the_one_whose_decisions_reach_the_largest_area():
    # three models, costs per prompt (as prompt lengths make them), noisy residual predictions
    rng = np.random.default_rng(0)
    n = 120
    means = np.array([0.8, 0.65, 0.5])
    y = np.clip(means + rng.normal(0, 0.2, (n, 3)), 0, 1)
    loo = 0.6 * (y - means) + rng.normal(0, 0.15, (n, 3))
    costs = np.outer(rng.uniform(0.5, 3.0, n), [1.0, 0.3, 0.05])
    scales = (0.25, 0.5, 0.75, 1.0)
    areas = {s: hull_area(np.clip(means + s * loo, 0, 1), y, costs) for s in scales}
    best = max(scales, key=lambda s: (areas[s], s))
    assert choose_residual_scale(means, loo, y, costs, scales)[0] == best
    assert len({round(a, 9) for a in areas.values()}) > 1  # the scale changes the decisions
    # rows with a missing label or cost are left out of the decision check
    y_gap, c_gap = y.copy(), costs.copy()
    y_gap[0, 1] = np.nan
    c_gap[1, 2] = np.nan
    keep = np.arange(2, n)
    areas_kept = {
        s: hull_area(np.clip(means + s * loo[keep], 0, 1), y[keep], costs[keep]) for s in scales
    }
    assert choose_residual_scale(means, loo, y_gap, c_gap, scales)[0] == max(
        scales, key=lambda s: (areas_kept[s], s)
    )


def test_residual_scale_without_costs_or_rows_falls_back_to_squared_error():
    means = np.array([0.5, 0.5])
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    loo = y - means  # perfectly calibrated
    assert choose_residual_scale(means, loo, y, None, (0.5, 0.75, 1.0))[0] == 1.0
    nan_costs = np.full((4, 2), np.nan)
    assert choose_residual_scale(means, loo, y, nan_costs, (0.5, 0.75, 1.0))[0] == 1.0
    # ties go to the larger scale (the fitted residuals as they are)
    assert choose_residual_scale(means, 0.0 * loo, y, None, (0.5, 1.0))[0] == 1.0


def test_pooled_records_its_residual_scale_and_scales_the_residuals(tmp_path):
    fit, test = _records(150, 1), _records(60, 2)
    texts = [r.text for r in test]
    full = train(
        fit,
        TrainOptions(router="pooled", features=SMALL, pooled=PooledParams(residual_scales=(1.0,))),
    )
    half = train(
        fit,
        TrainOptions(router="pooled", features=SMALL, pooled=PooledParams(residual_scales=(0.5,))),
    )
    assert full.params()["chosen_scale"] == 1.0 and half.params()["chosen_scale"] == 0.5
    means = full.means
    np.testing.assert_allclose(
        np.clip(means + 0.5 * (full.predict(texts) - means), 0, 1),
        half.predict(texts),
        atol=1e-9,
    )  # (the synthetic residuals stay inside [0, 1] after clipping at full size here)
    default = train(fit, TrainOptions(router="pooled", features=SMALL))
    assert default.params()["chosen_scale"] in PooledParams().residual_scales
    assert default.params()["scale_chosen_by"] == "hull_area"  # the records carry costs
    no_costs = [Record(r.id, r.text, r.scores) for r in fit]
    blind = train(no_costs, TrainOptions(router="pooled", features=SMALL))
    assert blind.params()["scale_chosen_by"] == "squared_error"
    artifact.save(default, tmp_path / "p")
    loaded = artifact.load(tmp_path / "p")
    assert loaded.params()["chosen_scale"] == default.params()["chosen_scale"]
    np.testing.assert_allclose(loaded.predict(texts), default.predict(texts))


def test_cost_matrix_marks_missing_costs():
    recs = [
        Record("a", "x", {"m": 1.0, "n": 0.0}, {"m": 0.5}),
        Record("b", "y", {"m": 1.0, "n": 0.0}, {"m": 0.1, "n": 0.2}),
    ]
    got = cost_matrix(recs, ("m", "n"))
    assert got[0, 0] == 0.5 and np.isnan(got[0, 1]) and got[1].tolist() == [0.1, 0.2]


# Two topics, each a specialist's strength, in words the other split never uses: the fit
# prompts talk about baking and arithmetic, the new ones about stews and linear algebra.
COOK_FIT = ["bake", "oven", "flour", "dough", "butter", "sugar", "cake", "bread", "pastry", "yeast"]
COOK_NEW = ["simmer", "saucepan", "garlic", "onions", "broth", "stew", "skillet", "spices", "roast"]
MATH_FIT = ["integral", "derivative", "equation", "prime", "calculus", "algebra", "fraction"]
MATH_NEW = ["theorem", "polynomial", "matrix", "eigenvalue", "logarithm", "geometry", "vector"]


def _topic_prompts(words, n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, 4)) for _ in range(n)]


def _specialist_records():
    rng = random.Random(0)
    out = []
    for topic, words in (("cook", COOK_FIT), ("math", MATH_FIT)):
        for i, text in enumerate(_topic_prompts(words, 40, len(topic) + ord(topic[0]))):
            good, bad = 0.9 + 0.1 * rng.random(), 0.2 + 0.1 * rng.random()
            chef, prover = (good, bad) if topic == "cook" else (bad, good)
            out.append(
                Record(
                    f"{topic}{i}",
                    text,
                    {"chef": chef, "prover": prover, "budget": 0.5},
                    {"chef": 2e-3, "prover": 2e-3, "budget": 1e-4},
                )
            )
    return out


def test_default_pooled_carries_a_topic_to_prompts_in_other_words(tmp_path):
    """The default N-model router compares prompts by meaning as well as by their n-grams: a
    specialist's strength learned on one set of words carries to the same topic in others.
    (On hashed n-grams alone, the router before the embedding, 17% of the new cooking prompts
    went to the maths specialist.)"""
    router = train(_specialist_records(), TrainOptions(router="pooled"))
    chef, prover = router.models.index("chef"), router.models.index("prover")
    cook = router.predict(_topic_prompts(COOK_NEW, 60, 7))
    maths = router.predict(_topic_prompts(MATH_NEW, 60, 107))
    assert (cook[:, chef] > cook[:, prover]).mean() >= 0.95
    assert (maths[:, prover] > maths[:, chef]).mean() >= 0.95
    assert router.params()["chosen_embedding_weight"] > 0
    artifact.save(router, tmp_path / "p")
    loaded = artifact.load(tmp_path / "p")
    assert loaded.params()["chosen_embedding_weight"] == router.params()["chosen_embedding_weight"]
    np.testing.assert_allclose(loaded.predict(_topic_prompts(COOK_NEW, 60, 7)), cook)


def test_pooled_weighs_the_embedding_by_leave_one_out_and_can_leave_it_out():
    recs = _specialist_records()
    hashing_only = train(
        recs, TrainOptions(router="pooled", pooled=PooledParams(embedding_weights=(0.0,)))
    )
    assert hashing_only.params()["chosen_embedding_weight"] == 0.0
    no_block = train(recs, TrainOptions(router="pooled", features=SMALL))
    assert no_block.featurizer.embedding_columns == slice(1024, 1024)
    assert no_block.params()["chosen_embedding_weight"] == 0.0  # nothing to weigh
    assert no_block.keys.shape[1] == PooledParams().proj_dim
