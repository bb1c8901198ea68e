"""A/B statistics: quantiles, intervals and their coverage, and the per-arm report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routers.ab import (
    arm_samples,
    bootstrap_quantile_ci,
    compare_arms,
    mean_ci,
    t_quantile,
    welch_diff,
    wilson_ci,
)
from routers.outcomes import Answered


@pytest.mark.parametrize(
    ("df", "expected"),  # two-sided 95% critical values from a t table
    [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042), (math.inf, 1.960)],
)
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=2e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=2e-3)


def test_wilson_known_values():
    none = wilson_ci(0, 10)
    assert (none.low, none.high) == pytest.approx((0.0, 0.2775), abs=1e-4)
    half = wilson_ci(5, 10)
    assert (half.low, half.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert math.isnan(wilson_ci(0, 0).estimate)


def test_mean_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(11)
    hits = 0
    trials = 600
    for _ in range(trials):
        ci = mean_ci(rng.normal(3.0, 2.0, size=8).tolist())
        hits += ci.low <= 3.0 <= ci.high
    assert 0.92 <= hits / trials <= 0.98, hits / trials


def test_welch_difference():
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 1.0, 200).tolist()
    b = rng.normal(0.0, 3.0, 50).tolist()
    d = welch_diff(a, b)
    e = welch_diff(b, a)
    assert d.estimate == pytest.approx(-e.estimate)
    assert d.high - d.low == pytest.approx(e.high - e.low)
    same = welch_diff(a, a)
    assert same.low < 0 < same.high
    assert math.isnan(welch_diff([1.0], [2.0, 3.0]).low)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    x = np.random.default_rng(4).lognormal(5, 0.5, 500).tolist()
    one = bootstrap_quantile_ci(x, 0.99, seed=1)
    assert one == bootstrap_quantile_ci(x, 0.99, seed=1)
    assert one.low <= one.estimate <= one.high


def _answered():
    parts = {}
    for i in range(60):
        arm = "control" if i % 3 else "candidate"  # 40 control, 20 candidate
        model = "strong" if i % 2 else "weak"
        parts[f"r{i}"] = Answered(
            f"r{i}",
            answer_model=model,
            cost_usd=0.01 if model == "strong" else 0.001,
            latency_ms=100.0 + i,
            arm=arm,
            router_version=f"v-{arm}",
            failed=i == 3,
        )
    parts["pending"] = Answered("pending", routed_model="weak", arm="control")  # no response
    parts["noarm"] = Answered("noarm", answer_model="weak", cost_usd=0.001)
    return parts


def test_arm_samples_and_report():
    answered = _answered()
    scores = {f"r{i}": {"strong": 1.0, "weak": 0.0} for i in range(0, 60, 2)}
    scores["r1"] = {"weak": 1.0}  # about another model than the one that answered: not quality
    samples, unassigned = arm_samples(answered, scores)
    assert unassigned == 1
    assert samples["control"].n == 40 and samples["candidate"].n == 20
    assert samples["candidate"].errors == 1  # r3
    report = compare_arms(samples, seed=0)
    assert report["baseline"] == "control"  # the largest arm
    cand = report["arms"]["candidate"]
    assert cand["n"] == 20 and cand["error_rate"]["estimate"] == pytest.approx(0.05)
    # quality: even requests answered by weak, scored 0 (the strong score is not theirs)
    assert cand["quality"]["estimate"] == 0.0
    assert set(report["vs_baseline"]) == {"candidate"}
    by_version, _ = arm_samples(answered, scores, by="router_version")
    assert set(by_version) == {"v-control", "v-candidate"}
    with pytest.raises(ValueError, match="baseline"):
        compare_arms(samples, baseline="nobody")
