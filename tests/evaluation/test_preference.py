"""Win rate with ties, best-of-n selection and its analytic KL, sqrt-KL binning: hand-derived numbers."""

import math

import numpy as np
import pytest

from prefer.errors import PreferError
from prefer.evaluation.preference import (
    best_of_n_indices,
    best_of_n_kl,
    best_of_n_values,
    bin_by_sqrt_kl,
    labeler_agreement,
    noise_for_agreement,
    pairwise_accuracy,
    win_outcomes,
    win_rate,
)


def test_win_rate_counts_ties_half():
    # misalignment, lower wins: prompt 0 win, 1 tie, 2 loss, 3 win -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    policy, baseline = [0.1, 0.2, 0.5, 0.0], [0.3, 0.2, 0.1, 0.4]
    assert win_outcomes(policy, baseline).tolist() == [1.0, 0.5, 0.0, 1.0]
    result = win_rate(policy, baseline)
    assert result["win_rate"] == pytest.approx(0.625)
    assert (result["wins"], result["ties"], result["losses"]) == (0.5, 0.25, 0.25)
    assert 0.0 <= result["ci"][0] <= 0.625 <= result["ci"][1] <= 1.0


def test_win_rate_is_antisymmetric_and_one_half_against_itself():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 50).astype(float), rng.integers(0, 3, 50).astype(float)  # many ties
    assert win_rate(a, b)["win_rate"] + win_rate(b, a)["win_rate"] == pytest.approx(1.0)
    same = win_rate(a, a)
    assert same["win_rate"] == 0.5 and same["ci"] == [0.5, 0.5]


def test_win_rate_rejects_mismatched_inputs():
    with pytest.raises(PreferError, match="one score per prompt"):
        win_rate([0.1, 0.2], [0.1])
    with pytest.raises(PreferError, match="no prompts"):
        win_rate([], [])


def test_best_of_n_kl_is_log_n_minus_n_minus_one_over_n():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)  # 3.1752
    with pytest.raises(PreferError, match="positive integer"):
        best_of_n_kl(0)


def test_best_of_n_kl_matches_the_exact_kl_of_the_selection_on_a_discrete_pool():
    # Base policy: uniform over m distinct-reward responses. Best-of-n picks the i-th best (1 = worst) with
    # p_i = (i^n - (i-1)^n) / m^n; KL = sum p_i log(p_i * m) -> log n - (n-1)/n as m grows.
    m, n = 20000, 4
    i = np.arange(1, m + 1, dtype=float)
    p = (i**n - (i - 1) ** n) / m**n
    assert float(np.sum(p * np.log(p * m))) == pytest.approx(best_of_n_kl(n), abs=1e-3)


def test_best_of_n_picks_the_highest_proxy_reward_in_each_disjoint_group():
    proxy = np.array([[0.1, 0.9, 0.3, 0.2], [0.5, 0.5, 0.0, 0.7]])
    gold = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    # n = 2: groups (0, 1) and (2, 3); row 1's first group is a tie: the first sample wins
    assert best_of_n_indices(proxy, 2).tolist() == [[1, 2], [0, 3]]
    assert best_of_n_values(gold, proxy, 2).tolist() == [[2.0, 3.0], [5.0, 8.0]]
    assert best_of_n_indices(proxy, 4).tolist() == [[1], [3]]
    assert best_of_n_values(gold, proxy, 1).tolist() == gold.tolist()  # n = 1 keeps every sample
    assert best_of_n_indices(proxy[:, :3], 2).tolist() == [[1], [0]]  # a partial last group is left out
    with pytest.raises(PreferError, match="at least 8 samples"):
        best_of_n_indices(proxy, 8)


def test_bin_by_sqrt_kl_averages_points_per_bin_of_sqrt_kl():
    # d = sqrt(KL) = 0, 0, 0.5, 1, 1.5, 2 (KL -0.1 counts as 0); width 1 -> [0,1): 0, 0, 0.5; [1,2): 1, 1.5; [2,3): 2
    kl = [0.0, -0.1, 0.25, 1.0, 2.25, 4.0]
    values = [1.0, 3.0, 2.0, 4.0, 6.0, 10.0]
    bins = bin_by_sqrt_kl(kl, values, width=1.0)
    assert [b["count"] for b in bins] == [3, 2, 1]
    assert [b["d_center"] for b in bins] == [0.5, 1.5, 2.5]
    assert [b["value_mean"] for b in bins] == [2.0, 5.0, 10.0]
    assert bins[0]["d_mean"] == pytest.approx(0.5 / 3) and bins[1]["d_mean"] == pytest.approx(1.25)
    with pytest.raises(PreferError, match="width"):
        bin_by_sqrt_kl(kl, values, width=0)


def test_pairwise_accuracy_counts_only_pairs_with_different_ranks():
    # prompt 0: ranks [0, 1, 2], rewards [3, 1, 2]: pairs (0>1) yes, (0>2) yes, (1>2) no (1 < 2) -> 2 of 3
    # prompt 1: ranks [0, 0, 1] (a tie), rewards [1, 5, 5]: pairs (0>2) no, (1>2) equal reward = wrong -> 0 of 2
    accuracy, pairs = pairwise_accuracy([[3, 1, 2], [1, 5, 5]], [[0, 1, 2], [0, 0, 1]])
    assert (accuracy, pairs) == (pytest.approx(2 / 5), 5)


def test_labeler_agreement_and_the_noise_that_gives_a_target():
    # d = 1, sigma = 1/sqrt(2): each labeler is right with p = Phi(1) = 0.8413; agree p^2 + (1-p)^2 = 0.7330
    assert labeler_agreement([1.0], 1 / math.sqrt(2)) == pytest.approx(0.8413447**2 + 0.1586553**2)
    assert labeler_agreement([1.0, -1.0], 0.0) == 1.0
    sigma = noise_for_agreement([1.0, 0.0, -1.0], 0.8413447**2 + 0.1586553**2)  # the tie is left out
    assert sigma == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    with pytest.raises(PreferError, match="tied"):
        noise_for_agreement([0.0, 0.0], 0.7)
