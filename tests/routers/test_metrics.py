import math

import pytest

from routers.metrics import (
    aiq,
    apgr,
    cpt,
    pareto_frontier,
    pgr_curve,
    strong_fraction_for_quality,
    two_model_report,
)

# Four prompts. weak mean 0.5, strong mean 0.75.
SCORES = [0.9, 0.5, 0.5, 0.1]
STRONG = [1.0, 1.0, 0.0, 1.0]
WEAK = [0.0, 1.0, 0.0, 1.0]


def test_curve_points_by_hand_with_a_tie_moving_together():
    pts = pgr_curve(SCORES, STRONG, WEAK)
    assert [p.strong_fraction for p in pts] == [0.0, 0.25, 0.75, 1.0]
    assert [p.threshold for p in pts] == [math.inf, 0.9, 0.5, 0.1]
    assert [p.quality for p in pts] == [0.5, 0.75, 0.75, 0.75]
    assert [p.pgr for p in pts] == [0.0, 1.0, 1.0, 1.0]
    # default costs: strong 1, weak 0 -> cost ratio = strong fraction
    assert [p.cost_ratio for p in pts] == [0.0, 0.25, 0.75, 1.0]


def test_apgr_cpt_and_quality_fraction_by_hand():
    pts = pgr_curve(SCORES, STRONG, WEAK)
    # trapezoids: 0.25 * 0.5 + 0.5 * 1 + 0.25 * 1
    assert apgr(pts) == pytest.approx(0.875)
    assert cpt(pts, 0.5) == 0.25
    assert cpt(pts, 0.8) == 0.25
    assert strong_fraction_for_quality(pts, 0.95 * 0.75) == 0.25


def test_a_bad_ordering_scores_below_random():
    # The only prompt that needs the strong model is scored lowest; a prompt where the weak
    # model wins is scored highest.
    pts = pgr_curve([3.0, 2.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    # weak 2/3, strong 2/3 -> no gap: PGR undefined
    assert math.isnan(pts[1].pgr)
    pts = pgr_curve([3.0, 2.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0])
    assert [p.pgr for p in pts] == [0.0, 0.0, 0.0, 1.0]
    assert apgr(pts) == pytest.approx(1 / 6)
    assert cpt(pts, 0.5) == 1.0


def test_all_ties_is_the_straight_line():
    rep = two_model_report([0.3] * 4, STRONG, WEAK)
    assert rep.apgr == pytest.approx(0.5)
    assert rep.cpt50 == 1.0  # no threshold splits a tie
    assert len(rep.points) == 2


def test_costs_per_prompt():
    pts = pgr_curve([2.0, 1.0], [1.0, 1.0], [0.0, 1.0], [10.0, 30.0], [1.0, 2.0])
    # all weak: 3 of 40; first strong: 10 + 2 = 12 of 40
    assert [p.cost_ratio for p in pts] == pytest.approx([3 / 40, 12 / 40, 1.0])


def test_input_errors():
    with pytest.raises(ValueError):
        pgr_curve([], [], [])
    with pytest.raises(ValueError):
        pgr_curve([1.0], [1.0, 0.0], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        pgr_curve([math.nan], [1.0], [0.0])


def test_pareto_frontier_drops_dominated_points():
    pts = [(1.0, 0.55), (0.0, 0.5), (1.0, 0.7), (2.0, 0.65), (2.0, 0.8)]
    assert pareto_frontier(pts) == [(0.0, 0.5), (1.0, 0.7), (2.0, 0.8)]


def test_aiq_by_hand():
    # concave: every point on the hull; area 0.6 + 0.75 over a cost range of 2
    assert aiq([(0.0, 0.5), (1.0, 0.7), (2.0, 0.8)]) == pytest.approx(0.675)
    # the middle point lies under the chord: the hull skips it
    assert aiq([(0.0, 0.5), (1.0, 0.55), (2.0, 0.8)]) == pytest.approx(0.65)
    # a more expensive point that is worse does not lower the hull (non-decreasing)
    assert aiq([(0.0, 0.5), (1.0, 0.7), (2.0, 0.6)]) == pytest.approx((0.6 + 0.7) / 2)
    assert aiq([(1.0, 0.4), (1.0, 0.6)]) == pytest.approx(0.6)


def test_n_model_sweep_by_hand():
    import numpy as np

    from routers.evaluation import n_model_points

    # model 0 is cheap (cost 1) and right on prompt 0 only; model 1 costs 10 and is always right
    predicted = np.array([[0.9, 0.95], [0.1, 0.95]])
    actual = np.array([[1.0, 1.0], [0.0, 1.0]])
    cost = np.array([[1.0, 10.0], [1.0, 10.0]])
    pts = set(n_model_points(predicted, actual, cost, lambdas=200))
    assert (10.0, 1.0) in pts  # lambda 0: the best predicted quality everywhere
    assert (5.5, 1.0) in pts  # cheap where it is predicted good enough
    assert (1.0, 0.5) in pts  # a large lambda: always cheap
    assert aiq(sorted(pts)) == pytest.approx((0.5 + 1.0) / 2 * 4.5 / 9 + 1.0 * 4.5 / 9)
