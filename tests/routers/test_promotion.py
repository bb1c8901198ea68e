"""The promotion rule and version names."""

from __future__ import annotations

import numpy as np
import pytest

from routers.promotion import CostTarget, TargetResult, decide, evaluate_at_target, next_version

RNG = np.random.default_rng(5)
N = 400
STRONG_Q = (RNG.random(N) < 0.9).astype(float)
WEAK_Q = np.where(RNG.random(N) < 0.5, STRONG_Q * (RNG.random(N) < 0.8), 0.0)
GOOD = STRONG_Q - WEAK_Q + RNG.normal(0, 0.3, N)  # informative
BAD = -GOOD  # anti-informative


@pytest.mark.parametrize(
    "target", [CostTarget("strong_fraction", 0.3), CostTarget("quality_ratio", 0.95)]
)
def test_an_informative_router_beats_its_reverse_at_the_target(target):
    good = evaluate_at_target(GOOD, STRONG_Q, WEAK_Q, target)
    bad = evaluate_at_target(BAD, STRONG_Q, WEAK_Q, target)
    assert good.n == bad.n == N
    assert good.apgr > 0.6 > 0.4 > bad.apgr
    assert decide(good, bad, target, min_records=10).promote
    verdict = decide(bad, good, target, min_records=10)
    assert not verdict.promote and "keep the current router" in verdict.reason
    if target.kind == "strong_fraction":
        assert good.strong_fraction == bad.strong_fraction == 0.3
        assert good.quality > bad.quality
    else:
        assert good.cost_ratio < bad.cost_ratio
        assert good.quality >= 0.95 * STRONG_Q.mean() - 1e-9


def test_costs_per_prompt_set_the_cost_ratio():
    target = CostTarget("strong_fraction", 0.5)
    r = evaluate_at_target(GOOD, STRONG_Q, WEAK_Q, target, np.full(N, 0.01), np.full(N, 0.001))
    assert r.cost_ratio == pytest.approx((0.5 * 0.01 + 0.5 * 0.001) / 0.01, abs=0.01)


def _result(quality, cost, n=100):
    return TargetResult(n=n, apgr=0.6, strong_fraction=cost, quality=quality, cost_ratio=cost)


def test_decide_ties_tolerance_evidence_and_first_version():
    q = CostTarget("strong_fraction", 0.3)
    assert decide(_result(0.8, 0.3), _result(0.8, 0.3), q).promote  # at least as good
    assert not decide(_result(0.79, 0.3), _result(0.8, 0.3), q).promote
    assert decide(_result(0.79, 0.3), _result(0.8, 0.3), q, tolerance=0.02).promote
    few = decide(_result(0.9, 0.3, n=10), _result(0.8, 0.3), q, min_records=50)
    assert not few.promote and "need 50" in few.reason
    first = decide(_result(0.5, 0.3), None, q)
    assert first.promote and first.current is None
    c = CostTarget("quality_ratio", 0.95)
    assert decide(_result(0.8, 0.40), _result(0.8, 0.45), c).promote
    assert not decide(_result(0.8, 0.50), _result(0.8, 0.45), c).promote
    assert decide(_result(0.8, 0.50), _result(0.8, 0.45), c).to_dict()["target"] == {
        "kind": "quality_ratio",
        "value": 0.95,
    }


def test_targets_are_validated():
    with pytest.raises(ValueError):
        CostTarget("strong_fraction", 1.5)
    with pytest.raises(ValueError):
        CostTarget("budget", 0.5)  # type: ignore[arg-type]


def test_next_version_is_unique_and_sorted():
    assert next_version([], "classifier-abc") == "v0001-classifier-abc"
    existing = ["v0001-classifier-abc", "v0007-mf-x", "CURRENT", ".tmp-1", "v12-bad"]
    assert next_version(existing, "classifier-abc") == "v0008-classifier-abc"
    assert next_version(existing, "a/b c") == "v0008-a_b_c"
