"""Rank and order statistics of one run's samples (board side, numpy only), distribution-free: Spearman's rank
correlation with its p-value, and the confidence interval of the median between two order statistics. The quality
verdict (``requestflow.board.quality``) uses them for its trend and repetitions checks and its calibration check.
"""

from __future__ import annotations

import math

import numpy as np


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """Spearman's rank correlation (average ranks for ties) and its two-sided p-value by the normal approximation
    z = rho sqrt(n - 1). (None, None) when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(np.sum(rx ** 2)) * float(np.sum(ry ** 2)))
    if denominator == 0:
        return None, None
    rho = max(-1.0, min(1.0, float(np.sum(rx * ry)) / denominator))
    return rho, math.erfc(abs(rho) * math.sqrt(x.size - 1) / math.sqrt(2))


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2  # the mean of ranks start+1 .. end
    return ranks


def median_ci(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float] | None:
    """[x_(r), x_(n+1-r)], the ``confidence`` interval of the median (``median_ci_rank``); None for too few samples."""
    rank = median_ci_rank(samples.size, confidence)
    if rank is None:
        return None
    order = np.sort(samples)
    return float(order[rank - 1]), float(order[samples.size - rank])


def median_ci_rank(n: int, confidence: float = 0.95) -> int | None:
    """The largest rank r (1-based) such that [x_(r), x_(n+1-r)] covers the median with probability at least
    ``confidence`` for any continuous distribution: P(r <= B <= n - r) >= confidence, B ~ Binomial(n, 1/2). None
    when even [min, max] does not."""
    if n < 1:
        return None
    ks = np.arange(n + 1)
    log_pmf = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in ks]) - n * math.log(2)
    cdf = np.cumsum(np.exp(log_pmf))  # cdf[k] = P(B <= k)
    tail = (1 - confidence) / 2
    best = None
    for r in range(1, n // 2 + 1):  # coverage 1 - 2 P(B <= r - 1) falls as r grows
        if cdf[r - 1] <= tail + 1e-12:
            best = r
        else:
            break
    return best


def smallest_n_for_ci(confidence: float = 0.95) -> int:
    """The fewest samples whose [min, max] covers the median with probability ``confidence`` (6 for 95%)."""
    n = 1
    while 2.0 ** (1 - n) > 1 - confidence:
        n += 1
    return n

