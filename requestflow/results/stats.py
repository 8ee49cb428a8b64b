"""Comparing two sets of timing samples: is the new one slower, faster, or not different? Pure numpy (no scipy).

- :func:`mann_whitney_u`: the Mann-Whitney U (Wilcoxon rank-sum) test, two-sided or one-sided. Ties get their
  average rank and the variance of U is corrected for them; the p-value comes from the normal approximation
  (with the 1/2 continuity correction), or from U's exact distribution when there are no ties and the smaller
  sample has at most :data:`EXACT_MAX_N` values. It agrees with ``scipy.stats.mannwhitneyu`` and R's
  ``wilcox.test`` on their documented examples (``tests/results/test_stats.py``).
- :func:`hodges_lehmann`: the Hodges-Lehmann estimate of the shift between two samples (the median of all
  pairwise differences ``new - old``).
- :func:`compare_samples`: the verdict used by regression detection (and meant for any other feature that compares
  timings, such as replaying a point): a difference counts only when it is both **significant** (p < alpha) and
  **large enough** (the ratio of medians moves by at least ``min_effect``). With hundreds of samples a test finds
  differences of a fraction of a percent that nobody should be paged for; with a handful of samples a 30% jump
  can be luck. Both conditions are needed.

What it does not do: it assumes the samples of each side are independent draws. Timings of one run are not quite
(a run's state - caches, clocks, other load - is shared by all its samples), so differences *between runs* of the
same code look significant to the test. Callers that pool several runs as a baseline should also raise
``min_effect`` to at least the run-to-run spread they see (:func:`run_to_run_spread`), as
``requestflow.results.regressions`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from requestflow.errors import UserError

EXACT_MAX_N = 8  # exact p-values when the smaller sample has at most this many values (and there are no ties)
ALTERNATIVES = ("two-sided", "less", "greater")
METHODS = ("auto", "exact", "asymptotic")
MAX_PAIRS = 4_000_000  # pairwise differences kept in memory for the Hodges-Lehmann estimate
SLOWER, FASTER, SAME = "slower", "faster", "no significant difference"


@dataclass(frozen=True)
class MannWhitney:
    """The result of :func:`mann_whitney_u`.

    ``u`` is the U statistic of the first sample ``x``: the number of pairs ``(x_i, y_j)`` with ``x_i > y_j``,
    ties counting 1/2 (0 when every x is below every y, ``len(x) * len(y)`` when every x is above). ``z`` is the
    standardized statistic of the normal approximation (None for an exact p-value)."""

    u: float
    p_value: float
    z: float | None
    method: str  # "exact" or "asymptotic"
    alternative: str


def _sample(values: Iterable[float], name: str) -> np.ndarray:
    try:
        array = np.asarray(list(values), dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected numbers") from None
    if array.ndim != 1:
        raise UserError(f"{name}: expected a flat list of numbers, got an array of shape {array.shape}")
    if array.size == 0:
        raise UserError(f"{name}: no samples")
    bad = ~np.isfinite(array)
    if bad.any():
        raise UserError(f"{name}: {int(bad.sum())} of {array.size} values are not finite (e.g. {array[bad][0]})")
    return array


def rank_average(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of ``values``, tied values sharing the average of their ranks; and the size of each group of
    tied values (all 1 without ties)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, ordered.size])
    average = starts + (sizes + 1) / 2.0  # mean of the ranks start+1 .. start+size
    ranks = np.empty(values.size, dtype=float)
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes


def _exact_counts(n1: int, n2: int) -> list[int]:
    """How many of the C(n1+n2, n1) arrangements without ties give U = 0, 1, ..., n1*n2: the coefficients of the
    Gaussian binomial coefficient [n1+n2 choose n1](q) = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i), with m the
    smaller size (exact integers)."""
    m, n = min(n1, n2), max(n1, n2)
    degree = m * n
    counts = [0] * (degree + 1)
    counts[0] = 1
    for i in range(1, m + 1):
        step = n + i
        for k in range(degree, step - 1, -1):  # times (1 - q^(n+i))
            counts[k] -= counts[k - step]
        for k in range(i, degree + 1):  # divided by (1 - q^i): exact, the product is a polynomial
            counts[k] += counts[k - i]
    return counts


def mann_whitney_u(x: Iterable[float], y: Iterable[float], alternative: str = "two-sided", method: str = "auto",
                   continuity: bool = True) -> MannWhitney:
    """The Mann-Whitney U test of ``x`` against ``y``.

    ``alternative``: ``two-sided`` (the distributions differ), ``greater`` (x tends to be larger than y), ``less``
    (x tends to be smaller). ``method``: ``exact`` (U's exact distribution; refused with ties), ``asymptotic``
    (normal approximation with the variance corrected for ties, and the 1/2 continuity correction unless
    ``continuity=False``), or ``auto`` (exact when there are no ties and the smaller sample has at most
    :data:`EXACT_MAX_N` values)."""
    if alternative not in ALTERNATIVES:
        raise UserError(f"alternative {alternative!r}: expected one of {', '.join(ALTERNATIVES)}")
    if method not in METHODS:
        raise UserError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    a, b = _sample(x, "x"), _sample(y, "y")
    n1, n2 = a.size, b.size
    ranks, ties = rank_average(np.concatenate([a, b]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    has_ties = bool((ties > 1).any())
    if method == "exact" and has_ties:
        raise UserError("an exact p-value needs samples without ties (use method='asymptotic')")
    if method == "exact" or (method == "auto" and not has_ties and min(n1, n2) <= EXACT_MAX_N):
        counts = _exact_counts(n1, n2)
        total = sum(counts)
        k = round(u1)
        at_most = sum(counts[: k + 1]) / total  # P(U <= u1)
        at_least = sum(counts[k:]) / total  # P(U >= u1)
        p = {"greater": at_least, "less": at_most, "two-sided": min(1.0, 2.0 * min(at_most, at_least))}[alternative]
        return MannWhitney(u=u1, p_value=float(p), z=None, method="exact", alternative=alternative)

    n = n1 + n2
    mean = n1 * n2 / 2.0
    variance = n1 * n2 / 12.0 * ((n + 1) - float((ties ** 3 - ties).sum()) / (n * (n - 1)))
    if variance <= 0:  # every value equal: nothing tells the samples apart
        return MannWhitney(u=u1, p_value=1.0, z=0.0, method="asymptotic", alternative=alternative)
    sigma = math.sqrt(variance)
    correction = 0.5 if continuity else 0.0
    if alternative == "two-sided":
        z = (abs(u1 - mean) - correction) / sigma
        p = min(1.0, 2.0 * _normal_sf(max(z, 0.0)))
        z = math.copysign(max(z, 0.0), u1 - mean)
    elif alternative == "greater":
        z = (u1 - mean - correction) / sigma
        p = _normal_sf(z)
    else:
        z = (u1 - mean + correction) / sigma
        p = 1.0 - _normal_sf(z)
    return MannWhitney(u=u1, p_value=float(p), z=float(z), method="asymptotic", alternative=alternative)


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def hodges_lehmann(old: Iterable[float], new: Iterable[float]) -> float:
    """The Hodges-Lehmann estimate of how far ``new`` is shifted from ``old``: the median of every difference
    ``new_j - old_i``. Above :data:`MAX_PAIRS` pairs, each sample is first thinned to evenly spaced order
    statistics (an approximation, good to a fraction of the samples' own spread)."""
    a, b = np.sort(_sample(old, "old")), np.sort(_sample(new, "new"))
    if a.size * b.size > MAX_PAIRS:
        keep = int(math.sqrt(MAX_PAIRS))
        a = a[np.linspace(0, a.size - 1, min(a.size, keep)).round().astype(int)]
        b = b[np.linspace(0, b.size - 1, min(b.size, keep)).round().astype(int)]
    return float(np.median(np.subtract.outer(b, a)))


@dataclass(frozen=True)
class Comparison:
    """The verdict of :func:`compare_samples` on ``old`` (the baseline) and ``new``.

    ``verdict``: ``"slower"`` or ``"faster"`` when the difference is significant (``p_value < alpha``) and the
    ratio of medians moved by at least ``min_effect``; else ``"no significant difference"`` (``significant``
    then tells a real but small difference from none). ``ratio`` = median(new) / median(old); ``shift`` the
    Hodges-Lehmann estimate of new - old, in the samples' unit."""

    verdict: str
    p_value: float
    ratio: float
    n_old: int
    n_new: int
    median_old: float
    median_new: float
    shift: float
    u: float
    method: str
    alpha: float
    min_effect: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def changed(self) -> bool:
        return self.verdict != SAME

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self, unit: str = "ms", scale: float = 1e3) -> str:
        """One line, e.g. ``slower: median 0.567 -> 0.680 ms (x1.20), p = 3.1e-40, n = 800 vs 200``."""
        return (f"{self.verdict}: median {self.median_old * scale:.4g} -> {self.median_new * scale:.4g} {unit} "
                f"(x{self.ratio:.3f}), p = {self.p_value:.2g}, n = {self.n_old} vs {self.n_new}")


def compare_samples(old: Sequence[float], new: Sequence[float], alpha: float = 0.01,
                    min_effect: float = 0.05) -> Comparison:
    """Compare the timings ``new`` with the baseline ``old`` (durations: positive, larger is slower).

    Two-sided Mann-Whitney U test on the raw samples; the effect is the ratio of medians. The verdict is
    ``slower``/``faster`` only when ``p < alpha`` **and** ``|ratio - 1| >= min_effect`` (e.g. 0.05: 5%).
    Bad input (empty, not finite, not positive, alpha outside (0, 1), negative min_effect) is a
    :class:`~requestflow.errors.UserError` naming what is wrong."""
    if not (0.0 < alpha < 1.0):
        raise UserError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")
    if not (min_effect >= 0.0 and math.isfinite(min_effect)):
        raise UserError(f"min_effect must be a fraction >= 0 (0.05 for 5%), got {min_effect}")
    a, b = _sample(old, "old"), _sample(new, "new")
    for name, array in (("old", a), ("new", b)):
        if (array <= 0).any():
            raise UserError(f"{name}: timings must be positive; {int((array <= 0).sum())} are not "
                            f"(e.g. {array[array <= 0][0]})")
    test = mann_whitney_u(b, a)  # U of the new samples: large when new is slower
    median_old, median_new = float(np.median(a)), float(np.median(b))
    ratio = median_new / median_old
    verdict = SAME
    if test.p_value < alpha and abs(ratio - 1.0) >= min_effect:
        verdict = SLOWER if ratio > 1.0 else FASTER
    return Comparison(verdict=verdict, p_value=test.p_value, ratio=ratio, n_old=int(a.size), n_new=int(b.size),
                      median_old=median_old, median_new=median_new, shift=hodges_lehmann(a, b), u=test.u,
                      method=test.method, alpha=alpha, min_effect=min_effect)


def run_to_run_spread(runs: Sequence[Sequence[float]]) -> float:
    """How much runs of the same thing differ: the largest relative distance of one run's median from the median
    of all runs pooled (0.03: one run's median was 3% away). 0 with fewer than two runs (no spread seen yet)."""
    arrays = [_sample(run, f"run {i}") for i, run in enumerate(runs)]
    if len(arrays) < 2:
        return 0.0
    pooled = float(np.median(np.concatenate(arrays)))
    return max(abs(float(np.median(r)) / pooled - 1.0) for r in arrays)
