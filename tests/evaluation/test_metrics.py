from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from prefer.errors import PreferError
from prefer.evaluation.metrics import (
    bootstrap_ci,
    distinct_n,
    expected_max,
    fraction_above,
    pooled_score,
    ratio_ci,
)


def test_expected_max_by_hand():
    # pairs of [1, 2, 3, 4]: (1,2)->2 (1,3)->3 (1,4)->4 (2,3)->3 (2,4)->4 (3,4)->4 = 20 / 6
    assert expected_max([1, 2, 3, 4], k=2) == pytest.approx(20 / 6)
    assert expected_max([4, 1, 3, 2], k=2) == pytest.approx(20 / 6)  # order does not matter
    # k = n: the maximum; k = 1: the mean
    assert expected_max([1, 2, 3, 4], k=4) == pytest.approx(4.0)
    assert expected_max([1, 2, 3, 4], k=1) == pytest.approx(2.5)


def test_expected_max_matches_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.random(12)
    scores[3] = scores[7]  # a tie
    for k in (1, 3, 5, 12):
        brute = np.mean([max(c) for c in itertools.combinations(scores, k)])
        assert expected_max(scores, k=k) == pytest.approx(brute, rel=1e-12)


def test_expected_max_large_n_is_finite_and_sane():
    rng = np.random.default_rng(1)
    scores = rng.random(4096)
    value = expected_max(scores, k=25)
    assert math.isfinite(value)
    # max of 25 uniforms has expectation 25/26
    assert value == pytest.approx(25 / 26, abs=0.01)
    assert expected_max(scores, k=1) == pytest.approx(scores.mean(), rel=1e-9)


def test_expected_max_errors():
    with pytest.raises(PreferError):
        expected_max([1.0, 2.0], k=3)
    with pytest.raises(PreferError):
        expected_max([1.0, 2.0], k=0)
    with pytest.raises(PreferError):
        expected_max([1.0, float("nan")], k=1)


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 7 total, {a, b, c} = 3 distinct
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    # bigrams: (a b)(b a)(a b) + (a b)(b c) -> 5 total, {ab, ba, bc} = 3 distinct (no cross-text "b a")
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["x  y\nz"], 3) == 1.0  # any whitespace splits
    assert distinct_n(["a", ""], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, size=50)
    large = rng.normal(1.0, 1.0, size=2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~ sqrt(2000/50) = 6.3x narrower
    # ~ 2 * 1.96 / sqrt(2000) = 0.088 wide
    assert 0.07 < hi_l - lo_l < 0.11
    assert bootstrap_ci(small) == (lo_s, hi_s)  # seeded
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)


def test_bootstrap_ci_statistic_without_axis_and_median():
    values = np.arange(101, dtype=float)
    lo, hi = bootstrap_ci(values, lambda x: float(np.max(x) - np.min(x)), resamples=200)
    assert lo <= hi <= 100
    lo_m, hi_m = bootstrap_ci(values, np.median, resamples=500)
    assert lo_m < 50 < hi_m


def test_ratio_ci_known_data():
    a = np.array([2.0, 4.0, 6.0] * 20)  # mean 4
    b = np.array([1.0, 2.0, 3.0] * 20)  # mean 2
    ratio, lo, hi = ratio_ci(a, b)
    assert ratio == pytest.approx(2.0)
    assert lo < 2.0 < hi
    assert 1.5 < lo and hi < 2.6
    # constant samples: no spread at all
    assert ratio_ci([6.0] * 10, [3.0] * 10) == (2.0, 2.0, 2.0)


def test_ratio_ci_zero_denominator_resamples_are_inf():
    a = np.ones(20)
    b = np.zeros(20)
    b[0] = 1.0  # mean 0.05; P(resample has no 1) = (19/20)^20 = 0.36
    ratio, lo, hi = ratio_ci(a, b, resamples=1000)
    assert ratio == pytest.approx(20.0)
    assert math.isfinite(lo) and lo > 5
    assert hi == math.inf
    ratio0, lo0, hi0 = ratio_ci(a, np.zeros(5))
    assert (ratio0, lo0, hi0) == (math.inf, math.inf, math.inf)


def test_pooled_score_and_fraction_above():
    # (0.1*10 + 0.0*30 + 0.5*60) / 100 = (1 + 0 + 30) / 100 = 0.31 (mean of scores would be 0.2)
    assert pooled_score([0.1, 0.0, 0.5], [10, 30, 60]) == pytest.approx(0.31)
    with pytest.raises(PreferError):
        pooled_score([0.1], [1, 2])
    with pytest.raises(PreferError):
        pooled_score([0.1], [0])
    assert fraction_above([0.1, 0.5, 0.6, 0.9], 0.5) == 0.5  # strictly greater: 0.5 not counted
    assert fraction_above([0.0], 0.0) == 0.0
    with pytest.raises(PreferError):
        fraction_above([], 0.5)
