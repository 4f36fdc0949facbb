"""Inter-labeler agreement on K-way rankings, as pure functions of rank tuples (ranks[i] = place of response i,
0 = best, equal places tie; `prefer.data.formats.parse_ranking` gives them).

- Pairwise agreement (InstructGPT reports 72.6 +- 1.5% between training labelers): over the C(K, 2) response
  pairs of a task that BOTH labelers ordered strictly, the share they ordered the same way. Pairs that either
  labeler tied are counted apart (`tied`), not as agreement or disagreement.
- Kendall's tau-b between the two rankings: (concordant - discordant) / sqrt((n0 - t1)(n0 - t2)), n0 = C(K, 2),
  t = pairs tied within one ranking; in [-1, 1], ties handled as in Kendall (1945); undefined (None) when one
  ranking ties everything.

Binary feedback (one response judged good or bad) has one figure: over every pair of labelers who judged the same
response, the share that gave it the same verdict (`pooled_binary_agreement`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class PairCounts:
    concordant: int  # pairs both labelers ordered strictly, the same way
    discordant: int  # pairs both ordered strictly, opposite ways
    tied_first: int  # pairs tied by the first labeler only
    tied_second: int  # pairs tied by the second labeler only
    tied_both: int  # pairs both labelers tied

    @property
    def compared(self) -> int:
        return self.concordant + self.discordant

    @property
    def tied(self) -> int:
        return self.tied_first + self.tied_second + self.tied_both


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def pair_counts(first: Sequence[int], second: Sequence[int]) -> PairCounts:
    if len(first) != len(second):
        raise ValueError(f"rankings of {len(first)} and {len(second)} responses do not compare")
    concordant = discordant = tied_first = tied_second = tied_both = 0
    for i, j in combinations(range(len(first)), 2):
        a, b = _sign(first[i] - first[j]), _sign(second[i] - second[j])
        if a == 0 and b == 0:
            tied_both += 1
        elif a == 0:
            tied_first += 1
        elif b == 0:
            tied_second += 1
        elif a == b:
            concordant += 1
        else:
            discordant += 1
    return PairCounts(concordant, discordant, tied_first, tied_second, tied_both)


def pairwise_agreement(first: Sequence[int], second: Sequence[int]) -> float | None:
    """Share of the strictly ordered (by both) pairs ordered the same way; None if there is no such pair."""
    counts = pair_counts(first, second)
    return counts.concordant / counts.compared if counts.compared else None


def kendall_tau_b(first: Sequence[int], second: Sequence[int]) -> float | None:
    counts = pair_counts(first, second)
    n0 = math.comb(len(first), 2)
    t1 = counts.tied_first + counts.tied_both
    t2 = counts.tied_second + counts.tied_both
    denominator = math.sqrt((n0 - t1) * (n0 - t2))
    return (counts.concordant - counts.discordant) / denominator if denominator else None


@dataclass(frozen=True)
class Agreement:
    """Pooled over every (task, pair of labelers who both ranked it)."""

    comparisons: int  # (task, labeler pair) comparisons
    pairs_compared: int  # response pairs both labelers ordered strictly
    pairs_agreed: int
    pairs_tied: int  # response pairs at least one of the two tied
    pairwise_agreement: float | None  # pairs_agreed / pairs_compared
    kendall_tau_mean: float | None  # mean tau-b over the comparisons where it is defined
    kendall_tau_count: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def pooled_agreement(rankings_by_task: Iterable[Sequence[Sequence[int]]]) -> Agreement:
    """`rankings_by_task`: for each task, the rank tuples of the labelers who ranked it (one per labeler)."""
    comparisons = compared = agreed = tied = 0
    taus: list[float] = []
    for rankings in rankings_by_task:
        for first, second in combinations(rankings, 2):
            counts = pair_counts(first, second)
            comparisons += 1
            compared += counts.compared
            agreed += counts.concordant
            tied += counts.tied
            tau = kendall_tau_b(first, second)
            if tau is not None:
                taus.append(tau)
    return Agreement(
        comparisons=comparisons,
        pairs_compared=compared,
        pairs_agreed=agreed,
        pairs_tied=tied,
        pairwise_agreement=agreed / compared if compared else None,
        kendall_tau_mean=sum(taus) / len(taus) if taus else None,
        kendall_tau_count=len(taus),
    )


@dataclass(frozen=True)
class BinaryAgreement:
    """Pooled over every (task, pair of labelers who both judged its response)."""

    comparisons: int  # (task, labeler pair) comparisons
    agreed: int  # of them, the same verdict
    pairwise_agreement: float | None  # agreed / comparisons

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def pooled_binary_agreement(verdicts_by_task: Iterable[Sequence[bool]]) -> BinaryAgreement:
    """`verdicts_by_task`: for each task, the verdicts (True = good) of the labelers who judged it."""
    comparisons = agreed = 0
    for verdicts in verdicts_by_task:
        for first, second in combinations(verdicts, 2):
            comparisons += 1
            agreed += first == second
    return BinaryAgreement(comparisons, agreed, agreed / comparisons if comparisons else None)
