"""Pairwise agreement and Kendall's tau-b on hand-worked rankings (ranks[i] = place of response i, 0 = best)."""

import itertools
import math
import random

import pytest

from prefer.labeling.app.agreement import (
    kendall_tau_b,
    pair_counts,
    pairwise_agreement,
    pooled_agreement,
    pooled_binary_agreement,
)


def test_one_swap_of_four():
    # A>B>C>D vs B>A>C>D: of the 6 pairs only (A, B) flips: agreement 5/6; tau-b = (5 - 1) / sqrt(6 * 6) = 2/3.
    first, second = (0, 1, 2, 3), (1, 0, 2, 3)
    assert pair_counts(first, second).concordant == 5 and pair_counts(first, second).discordant == 1
    assert pairwise_agreement(first, second) == pytest.approx(5 / 6)
    assert kendall_tau_b(first, second) == pytest.approx(2 / 3)


def test_ties_are_left_out_of_agreement_and_corrected_in_tau_b():
    # A > B=C > D vs A > B > C=D: pairs AB AC AD BD concordant; BC tied by the first, CD by the second.
    # agreement 4/4 = 1; tau-b = (4 - 0) / sqrt((6 - 1)(6 - 1)) = 0.8.
    first, second = (0, 1, 1, 2), (0, 1, 2, 2)
    counts = pair_counts(first, second)
    assert (counts.concordant, counts.discordant, counts.tied_first, counts.tied_second, counts.tied_both) == (
        4,
        0,
        1,
        1,
        0,
    )
    assert pairwise_agreement(first, second) == 1.0
    assert kendall_tau_b(first, second) == pytest.approx(0.8)


def test_reversed_and_undefined():
    assert pairwise_agreement((0, 1, 2), (2, 1, 0)) == 0.0
    assert kendall_tau_b((0, 1, 2), (2, 1, 0)) == pytest.approx(-1.0)
    assert kendall_tau_b((0, 1, 2), (0, 1, 2)) == pytest.approx(1.0)
    # One labeler ties both responses: no strictly ordered pair, tau-b's denominator is 0.
    assert pairwise_agreement((0, 0), (0, 1)) is None and kendall_tau_b((0, 0), (0, 1)) is None
    with pytest.raises(ValueError):
        pair_counts((0, 1), (0, 1, 2))


def test_pooled_over_tasks_and_labeler_pairs():
    # Task 1: 2 labelers (one swap of four): 6 pairs compared, 5 agreed, tau 2/3.
    # Task 2: 3 labelers (a = b, c reversed): pairs (a,b) 3/3 tau 1, (a,c) 0/3 tau -1, (b,c) 0/3 tau -1.
    # Pooled agreement (5 + 3) / (6 + 9) = 8/15; mean tau (2/3 + 1 - 1 - 1) / 4 = -1/12.
    result = pooled_agreement([[(0, 1, 2, 3), (1, 0, 2, 3)], [(0, 1, 2), (0, 1, 2), (2, 1, 0)]])
    assert (result.comparisons, result.pairs_compared, result.pairs_agreed, result.pairs_tied) == (4, 15, 8, 0)
    assert result.pairwise_agreement == pytest.approx(8 / 15)
    assert result.kendall_tau_mean == pytest.approx(-1 / 12) and result.kendall_tau_count == 4
    empty = pooled_agreement([[(0, 1)]])  # one labeler: nothing to compare
    assert empty.comparisons == 0 and empty.pairwise_agreement is None and empty.kendall_tau_mean is None


def test_tau_b_matches_its_definition_on_random_rankings_with_ties():
    """Against tau-b written from scratch: sum of sign products / sqrt of the non-tied pair counts."""
    rng = random.Random(0)
    for _ in range(200):
        k = rng.randint(2, 9)
        first = [rng.randint(0, 3) for _ in range(k)]
        second = [rng.randint(0, 3) for _ in range(k)]
        pairs = list(itertools.combinations(range(k), 2))
        sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
        numerator = sum(sign(first[i] - first[j]) * sign(second[i] - second[j]) for i, j in pairs)
        n1 = sum(first[i] != first[j] for i, j in pairs)
        n2 = sum(second[i] != second[j] for i, j in pairs)
        expected = numerator / math.sqrt(n1 * n2) if n1 and n2 else None
        assert kendall_tau_b(first, second) == (pytest.approx(expected) if expected is not None else None)
        # Symmetric, and invariant to relabelling places monotonically.
        assert kendall_tau_b(second, first) == kendall_tau_b(first, second)
        assert kendall_tau_b([10 * r + 5 for r in first], second) == kendall_tau_b(first, second)


def test_tau_b_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is an optional cross-check")
    rng = random.Random(1)
    for _ in range(100):
        k = rng.randint(3, 9)
        first, second = [rng.randint(0, 4) for _ in range(k)], [rng.randint(0, 4) for _ in range(k)]
        ours = kendall_tau_b(first, second)
        theirs = stats.kendalltau(first, second).statistic  # variant "b" is scipy's default
        assert (ours is None and math.isnan(theirs)) or ours == pytest.approx(theirs)


def test_binary_agreement_is_the_share_of_labeler_pairs_with_the_same_verdict():
    # good, good, bad: of the 3 labeler pairs only the two "good"s agree; a second task's 2 labelers agree.
    pooled = pooled_binary_agreement([[True, True, False], [False, False], [True]])
    assert (pooled.comparisons, pooled.agreed) == (4, 2) and pooled.pairwise_agreement == 0.5
    assert pooled_binary_agreement([[True]]).pairwise_agreement is None  # no pair to compare
