import math

import pytest

from routers.calibration import threshold_for_quality, threshold_for_strong_fraction


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, math.inf), (0.2, 0.9), (0.4, 0.8), (0.6, 0.8), (0.8, 0.5), (1.0, 0.1)],
)
def test_threshold_for_fraction_never_splits_ties(fraction, expected):
    scores = [0.9, 0.8, 0.5, 0.5, 0.1]  # 0.4 would need one of the two 0.5s
    t = threshold_for_strong_fraction(scores, fraction)
    assert t == expected
    assert sum(s >= t for s in scores) / len(scores) <= fraction + 1e-12


def test_threshold_for_fraction_errors():
    with pytest.raises(ValueError):
        threshold_for_strong_fraction([], 0.5)
    with pytest.raises(ValueError):
        threshold_for_strong_fraction([1.0], 1.5)


def test_threshold_for_quality_takes_the_fewest_strong_calls():
    scores = [0.9, 0.5, 0.5, 0.1]
    strong = [1.0, 1.0, 0.0, 1.0]
    weak = [0.0, 1.0, 0.0, 1.0]
    # quality 0.75 (= always strong) is reached by the first prompt alone
    assert threshold_for_quality(scores, strong, weak, 0.95) == 0.9
    assert threshold_for_quality(scores, strong, weak, 0.5) == math.inf
