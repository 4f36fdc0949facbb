"""Summary statistics of sample scores: expected maximum, diversity, bootstrap intervals.

Pure numpy; no torch. Scores follow the paper's convention: misalignment, lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from prefer.errors import PreferError

__all__ = [
    "expected_max",
    "distinct_n",
    "bootstrap_ci",
    "ratio_ci",
    "pooled_score",
    "fraction_above",
]

Statistic = Callable[..., float]

# bootstrap resamples are evaluated in chunks of at most this many elements
_CHUNK_ELEMENTS = 4_000_000


def _as_1d(values: Iterable[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if arr.ndim != 1:
        raise PreferError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise PreferError(f"{name} contains NaN")
    return arr


def expected_max(scores: Sequence[float] | np.ndarray, k: int = 25) -> float:
    """Expected maximum score among k samples drawn without replacement from `scores`.

    Exact, by order statistics: with s_(1) <= ... <= s_(n) sorted ascending,
    P(max of a random k-subset = s_(i)) = C(i-1, k-1) / C(n, k) for i >= k, so
    E = sum_i s_(i) C(i-1, k-1) / C(n, k). The weights are computed in log space (lgamma),
    which stays finite for n in the thousands. k = 1 gives the mean; k = n the maximum.
    """
    arr = _as_1d(scores, "scores")
    n = arr.size
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise PreferError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if n < k:
        raise PreferError(f"expected_max needs at least k={k} scores, got {n}")
    if not np.isfinite(arr).all():
        raise PreferError("scores must be finite")
    s = np.sort(arr)
    i = np.arange(k, n + 1, dtype=float)  # 1-based ranks that can be the maximum
    log_binom_n_k = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    lg = np.vectorize(math.lgamma, otypes=[float])
    log_w = lg(i) - math.lgamma(k) - lg(i - k + 1) - log_binom_n_k  # log C(i-1, k-1) / C(n, k)
    w = np.exp(log_w)
    w /= w.sum()  # exactly 1 in real arithmetic; removes rounding drift
    return float(np.dot(w, s[k - 1 :]))


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / total n-grams over all texts (whitespace tokens); 0 if there are none.

    n-grams do not cross text boundaries.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise PreferError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = text.split()
        for start in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[start : start + n]))
            total += 1
    return len(seen) / total if total else 0.0


def _bootstrap_stats(values: np.ndarray, statistic: Statistic, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """statistic over `resamples` resamples with replacement of `values` (vectorised if the
    statistic takes `axis`, e.g. np.mean, np.median)."""
    n = values.size
    out = np.empty(resamples, dtype=float)
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < resamples:
        m = min(rows, resamples - done)
        sample = values[rng.integers(0, n, size=(m, n))]
        try:
            stats = np.asarray(statistic(sample, axis=1), dtype=float)
            if stats.shape != (m,):
                raise TypeError
        except TypeError:
            stats = np.array([float(statistic(row)) for row in sample], dtype=float)
        out[done : done + m] = stats
        done += m
    return out


def _percentile(sorted_values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (numpy's default) that tolerates +-inf: between a
    finite value and an infinite one the result is the infinite one."""
    pos = q / 100.0 * (sorted_values.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    frac = pos - lo
    if frac == 0.0 or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return b if math.isinf(b) else a
    return a + (b - a) * frac


def _interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    stats = np.sort(stats)
    alpha = (1.0 - confidence) / 2.0
    return _percentile(stats, 100.0 * alpha), _percentile(stats, 100.0 * (1.0 - alpha))


def _check_bootstrap_args(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise PreferError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise PreferError(f"resamples must be >= 1, got {resamples}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of statistic(values)."""
    arr = _as_1d(values, "values")
    if arr.size == 0:
        raise PreferError("bootstrap_ci needs at least one value")
    _check_bootstrap_args(confidence, resamples)
    rng = np.random.default_rng(seed)
    return _interval(_bootstrap_stats(arr, statistic, resamples, rng), confidence)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with +inf where den == 0 (-inf if num < 0)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / np.where(den == 0, 1.0, den)
    return np.where(den == 0, np.where(num < 0, -np.inf, np.inf), ratio)


def ratio_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(ratio, low, high) of statistic(a) / statistic(b), e.g. misalignment of MLE over that of
    conditional training. a and b are resampled independently (they are separate samples).
    A resample whose denominator is 0 gives a ratio of inf; the percentiles keep it (the upper
    bound becomes inf when more than (1 - confidence) / 2 of the resamples have it)."""
    arr_a = _as_1d(a, "a")
    arr_b = _as_1d(b, "b")
    if arr_a.size == 0 or arr_b.size == 0:
        raise PreferError("ratio_ci needs at least one value in each sample")
    _check_bootstrap_args(confidence, resamples)
    ratio = float(_safe_ratio(np.float64(statistic(arr_a)), np.float64(statistic(arr_b))))
    rng = np.random.default_rng(seed)
    stats_a = _bootstrap_stats(arr_a, statistic, resamples, rng)
    stats_b = _bootstrap_stats(arr_b, statistic, resamples, rng)
    ratios = _safe_ratio(stats_a, stats_b)
    ratios = np.where(np.isnan(ratios), np.inf, ratios)
    low, high = _interval(ratios, confidence)
    return ratio, low, high


def pooled_score(scores: Sequence[float] | np.ndarray, lengths: Sequence[float] | np.ndarray) -> float:
    """Per-character scores pooled over characters: sum(score_i * len_i) / sum(len_i).

    With per-character scores (e.g. PII matches per char) this is total matches / total chars,
    which does not over-weight short samples as the mean of per-sample scores does.
    """
    s = _as_1d(scores, "scores")
    lens = _as_1d(lengths, "lengths")
    if s.shape != lens.shape:
        raise PreferError(f"scores ({s.size}) and lengths ({lens.size}) differ in length")
    if (lens < 0).any():
        raise PreferError("lengths must be >= 0")
    total = lens.sum()
    if total <= 0:
        raise PreferError("pooled_score needs a positive total length")
    return float(np.dot(s, lens) / total)


def fraction_above(scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """Fraction of scores strictly greater than threshold."""
    s = _as_1d(scores, "scores")
    if s.size == 0:
        raise PreferError("fraction_above needs at least one score")
    return float(np.mean(s > threshold))
