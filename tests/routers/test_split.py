from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routers.split import bucket, choose, sampled


@given(st.text(min_size=1), st.text())
def test_bucket_is_stable_and_in_range(key: str, salt: str) -> None:
    assert 0.0 <= bucket(key, salt) < 1.0
    assert bucket(key, salt) == bucket(key, salt)


@given(st.text(min_size=1), st.floats(0, 1), st.floats(0, 1))
def test_sample_is_monotone_in_the_fraction(key: str, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert not sampled(key, lo) or sampled(key, hi)


def test_arms_get_their_share_and_salts_decorrelate() -> None:
    keys = [f"req-{i}" for i in range(8_000)]
    counts = Counter(choose(k, [1, 3], salt="exp-a") for k in keys)
    assert counts[1] / len(keys) == pytest.approx(0.75, abs=0.03)
    same = sum(choose(k, [1, 1], "exp-a") == choose(k, [1, 1], "exp-b") for k in keys)
    assert same / len(keys) == pytest.approx(0.5, abs=0.03)  # independent experiments
    assert sum(sampled(k, 0.1, "shadow") for k in keys) / len(keys) == pytest.approx(0.1, abs=0.01)


def test_weights_are_checked() -> None:
    with pytest.raises(ValueError):
        choose("k", [0, 0])
    with pytest.raises(ValueError):
        choose("k", [1, -1])
    assert choose("k", [0, 1]) == 1
