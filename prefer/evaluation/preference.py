"""The numbers of an RLHF evaluation: win rate with ties, best-of-n selection and its KL, sqrt-KL binning.

Pure numpy. Scores are misalignment (lower is better) unless a name says reward.
- Win rate (Ouyang et al. 2022, the headline metric): the share of prompts on which the policy's response beats the
  baseline's on the same prompt, ties counted half.
- Best-of-n (Gao et al. 2022, the non-RL baseline): of n samples of the base policy, keep the one the proxy likes
  most; its KL to the base policy is log n - (n - 1) / n nats (Stiennon et al. 2020, App. G.3).
- Over-optimisation is read against d = sqrt(KL) (Gao et al. 2022); `bin_by_sqrt_kl` averages points per bin of d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prefer.errors import PreferError
from prefer.evaluation.metrics import bootstrap_ci

__all__ = [
    "best_of_n_indices",
    "best_of_n_kl",
    "best_of_n_values",
    "bin_by_sqrt_kl",
    "labeler_agreement",
    "noise_for_agreement",
    "pairwise_accuracy",
    "win_outcomes",
    "win_rate",
]


def win_outcomes(policy: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    """Per prompt: 1 where the policy's misalignment is lower than the baseline's, 0.5 on a tie, 0 where higher."""
    a, b = np.asarray(policy, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise PreferError(f"win rate: policy ({a.shape}) and baseline ({b.shape}) need one score per prompt each")
    if a.size == 0:
        raise PreferError("win rate: no prompts")
    return np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))


def win_rate(
    policy: Sequence[float],
    baseline: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Win rate of the policy against the baseline on the same prompts (ties = 1/2), with a bootstrap interval
    over prompts, and the shares of wins, ties and losses."""
    outcomes = win_outcomes(policy, baseline)
    low, high = bootstrap_ci(outcomes, confidence=confidence, resamples=resamples, seed=seed)
    return {
        "win_rate": float(outcomes.mean()),
        "ci": [low, high],
        "wins": float((outcomes == 1).mean()),
        "ties": float((outcomes == 0.5).mean()),
        "losses": float((outcomes == 0).mean()),
        "prompts": int(outcomes.size),
    }


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) in nats: log n - (n - 1) / n (exact when the proxy has no ties)."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise PreferError(f"best-of-n: n must be a positive integer, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_indices(proxy_rewards: np.ndarray, n: int) -> np.ndarray:
    """For [P, N] proxy rewards (higher is better) of N samples per prompt, split each row into N // n disjoint
    groups of n consecutive samples and return [P, N // n] indices (into the row) of each group's best sample;
    the first of equal rewards wins. Disjoint groups give independent best-of-n draws from one pool of samples."""
    rewards = np.asarray(proxy_rewards, dtype=float)
    if rewards.ndim != 2:
        raise PreferError(f"best-of-n: proxy rewards must be [prompts, samples], got shape {rewards.shape}")
    best_of_n_kl(n)  # validates n
    groups = rewards.shape[1] // n
    if groups < 1:
        raise PreferError(f"best-of-n: n = {n} needs at least {n} samples per prompt, got {rewards.shape[1]}")
    grouped = rewards[:, : groups * n].reshape(rewards.shape[0], groups, n)
    return grouped.argmax(axis=2) + np.arange(groups)[None, :] * n


def best_of_n_values(values: np.ndarray, proxy_rewards: np.ndarray, n: int) -> np.ndarray:
    """[P, N // n] `values` (e.g. gold misalignment) of the samples best-of-n keeps (`best_of_n_indices`)."""
    values = np.asarray(values, dtype=float)
    if values.shape != np.shape(proxy_rewards):
        raise PreferError(f"best-of-n: values {values.shape} and proxy rewards {np.shape(proxy_rewards)} differ")
    return np.take_along_axis(values, best_of_n_indices(proxy_rewards, n), axis=1)


def bin_by_sqrt_kl(kl: Sequence[float], values: Sequence[float], *, width: float) -> list[dict[str, float]]:
    """Points (KL, value) grouped into bins of d = sqrt(KL) of `width`, [0, w), [w, 2w), ...: per non-empty bin its
    centre in d, the mean of d, the mean value and the number of points, in increasing d."""
    kl_arr, val = np.asarray(kl, dtype=float), np.asarray(values, dtype=float)
    if kl_arr.shape != val.shape or kl_arr.ndim != 1:
        raise PreferError(f"sqrt-KL binning: kl ({kl_arr.shape}) and values ({val.shape}) must be 1-D alike")
    if not width > 0:
        raise PreferError(f"sqrt-KL binning: width must be > 0, got {width}")
    d = np.sqrt(np.clip(kl_arr, 0.0, None))  # a Monte-Carlo KL estimate can dip below 0: it is 0 there
    index = np.floor(d / width).astype(int)
    return [
        {
            "d_center": (b + 0.5) * width,
            "d_mean": float(d[index == b].mean()),
            "value_mean": float(val[index == b].mean()),
            "count": int((index == b).sum()),
        }
        for b in sorted(set(index.tolist()))
    ]


def pairwise_accuracy(rewards: Sequence[Sequence[float]], ranks: Sequence[Sequence[int]]) -> tuple[float, int]:
    """(accuracy, pairs) of a reward model against rankings: over every pair of one prompt's responses with
    different ranks (0 = best), the share where the better-ranked response gets the strictly higher reward."""
    correct = pairs = 0
    for reward, rank in zip(rewards, ranks, strict=True):
        r, k = np.asarray(reward, dtype=float), np.asarray(rank)
        better = k[:, None] < k[None, :]  # [i, j]: i ranked above j
        correct += int((better & (r[:, None] > r[None, :])).sum())
        pairs += int(better.sum())
    if pairs == 0:
        raise PreferError("pairwise accuracy: no pair with different ranks")
    return correct / pairs, pairs


_erf = np.vectorize(math.erf, otypes=[float])


def labeler_agreement(differences: Sequence[float], sigma: float) -> float:
    """Expected rate at which two labelers agree on a pair, each seeing the gold scores plus independent Gaussian
    noise of std `sigma` per response: for a gold difference d the noisy difference is d + N(0, 2 sigma^2), so each
    labeler orders the pair as the gold does with p = Phi(|d| / (sqrt(2) sigma)), and they agree with p^2 + (1-p)^2."""
    d = np.abs(np.asarray(differences, dtype=float))
    if sigma <= 0:
        return 1.0
    p = 0.5 * (1.0 + _erf(d / (2.0 * sigma)))  # Phi(d / (sqrt(2) sigma)) = (1 + erf(d / (2 sigma))) / 2
    return float(np.mean(p**2 + (1 - p) ** 2))


def noise_for_agreement(differences: Sequence[float], target: float) -> float:
    """The noise std at which `labeler_agreement` equals `target` (in (0.5, 1)), over the gold differences of the
    non-tied pairs, by bisection (agreement falls from 1 to 1/2 as sigma grows)."""
    d = np.abs(np.asarray(differences, dtype=float))
    d = d[d > 0]
    if d.size == 0:
        raise PreferError("label noise: every pair is tied; there is no agreement to calibrate")
    if not 0.5 < target < 1:
        raise PreferError(f"label noise: the agreement rate must be in (0.5, 1), got {target}")
    low, high = 0.0, float(d.max())
    while labeler_agreement(d, high) > target:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if labeler_agreement(d, middle) > target else (low, middle)
    return (low + high) / 2
