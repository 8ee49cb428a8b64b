"""Latency statistics of a performance point (board side, numpy only): percentiles with distribution-free
confidence intervals, MLPerf LoadGen's early-stopping percentile estimate, and the run profiles (*quick*, *valid*).

**Percentile confidence intervals.** For the q-quantile of any continuous distribution, the number B of samples
below it is Binomial(n, q); the interval between the order statistics x_(l) and x_(u) (1-based) covers the quantile
with probability P(l <= B <= u - 1). :func:`quantile_ci_ranks` takes the largest l with P(B <= l - 1) <= alpha/2 and
the smallest u with P(B >= u) <= alpha/2 (alpha = 1 - confidence): for the median that is the interval the quality
verdict already uses (``rank_stats.median_ci_rank``, checked equal in the tests). A side that no rank can bound at
that confidence (too few samples: the p99 of 20 runs has no upper bound) is null, never guessed.

**Early stopping** (MLPerf LoadGen ``early_stopping.cc`` / ``results.cc``, SingleStream): LoadGen reports as the
run's 90th percentile not the sample percentile but an order statistic high enough that the true percentile lies
below it with 99% confidence. ``min_passing(t, p)`` is the fewest queries h under the latency such that
P(Binomial(h + t, 1 - p) <= t) < 1 - c: seeing t or fewer over-latency queries among h + t would be unlikely if
more than 1 - p of all queries were over it. The estimate discards the t - 1 highest latencies, t the largest count
with ``min_passing(t, p) + t <= n``, and is the t-th highest sample; fewer than ``min_passing(1, p) + 1`` samples
(64 for p90, 662 for p99 at 99% confidence) give no estimate. LoadGen sums the binomial tail by a hypergeometric
series; here it is summed exactly in log space (the tests check LoadGen's documented counts: 64, 662, and 459 for
t = 0 at p99).

**Profiles** (``PROFILES``): *quick* is the runner's defaults (20 timed runs, 3 warm-up, no minimum duration); *valid*
is what MLPerf asks of a SingleStream run: at least 64 timed runs (the fewest with a p90 early-stopping estimate)
and at least 60 s of timed region (LoadGen's ``min_duration``); the run goes on until both hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHOD = "requestflow.board.latency_stats 1"
CONFIDENCE = 0.95  # of the percentiles' intervals (the quality verdict's, for the median)
EARLY_STOPPING_CONFIDENCE = 0.99  # LoadGen's
PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
PROFILES = {
    "quick": {"min_repetitions": 20, "warmup": 3, "min_duration_s": 0.0},
    "valid": {"min_repetitions": 64, "warmup": 3, "min_duration_s": 60.0},
}


def percentile(samples: np.ndarray, q: float) -> float:
    """The sample percentile as the runner has always reported it (numpy's linear interpolation)."""
    return float(np.percentile(samples, q * 100))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(B <= k), B ~ Binomial(n, p), summed exactly in log space (no SciPy on boards)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    ks = np.arange(k + 1, dtype=np.float64)
    # log C(n, j) by cumulative sums of log((n - j + 1) / j)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log((n - ks[1:] + 1) / ks[1:]))))
    terms = log_choose + ks * math.log(p) + (n - ks) * math.log1p(-p)
    top = float(terms.max())
    return min(1.0, math.exp(top) * float(np.sum(np.exp(terms - top))))


def quantile_ci_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int | None, int | None]:
    """1-based ranks (l, u) of the order statistics bounding the q-quantile with at least ``confidence`` (each
    side missing at most (1 - confidence) / 2); None for a side no rank bounds."""
    if n < 1:
        return None, None
    tail = (1 - confidence) / 2
    cdf = binomial_cdfs(n, q)  # cdf[k] = P(B <= k)
    # the largest l with P(B <= l - 1) <= tail; the smallest u with P(B >= u) = 1 - cdf[u - 1] <= tail
    lower = int(np.searchsorted(cdf[:n], tail + 1e-12, side="right"))
    upper = int(np.searchsorted(cdf[:n], 1 - tail - 1e-12, side="left")) + 1
    return (lower if lower >= 1 else None), (upper if upper <= n else None)


def binomial_cdfs(n: int, p: float) -> np.ndarray:
    """[P(B <= k) for k in 0..n], B ~ Binomial(n, p), 0 < p < 1."""
    ks = np.arange(n + 1, dtype=np.float64)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log((n - ks[1:] + 1) / ks[1:]))))
    terms = log_choose + ks * math.log(p) + (n - ks) * math.log1p(-p)
    pmf = np.exp(terms - terms.max())
    return np.minimum(np.cumsum(pmf) / pmf.sum(), 1.0)


def quantile_ci(samples: np.ndarray, q: float, confidence: float = CONFIDENCE) -> list[float | None]:
    order = np.sort(samples)
    lower, upper = quantile_ci_ranks(order.size, q, confidence)
    return [None if lower is None else float(order[lower - 1]), None if upper is None else float(order[upper - 1])]


def min_passing(t: int, p: float, tolerance: float = 0.0, confidence: float = EARLY_STOPPING_CONFIDENCE) -> int:
    """LoadGen's ``MinPassingQueriesFinder``: the fewest h with P(Binomial(h + t, 1 - p + d) <= t) < 1 - c."""
    q = 1 - p + tolerance

    def passes(h: int) -> bool:
        return binomial_cdf(t, h + t, q) < 1 - confidence

    low = max(0, math.ceil(math.log(1 - confidence) / math.log(p - tolerance)) - 1)  # h for t = 0, less one
    high = max(low + 1, 2 * low)
    while not passes(high):
        low, high = high, 2 * high
    while low < high:  # the first passing h in (low, high]
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle + 1
    return high


def early_stopping(samples: np.ndarray, p: float = 0.9, confidence: float = EARLY_STOPPING_CONFIDENCE) -> dict:
    """LoadGen's SingleStream early-stopping estimate of the p-th percentile of ``samples``: ``{"value",
    "min_queries", "discarded", "met", "detail"}`` (value null when there are too few samples)."""
    n = int(np.size(samples))
    needed = min_passing(1, p, confidence=confidence) + 1
    out = {"percentile": p, "confidence": confidence, "n": n, "min_queries": needed}
    if n < needed:
        return {**out, "value": None, "discarded": None, "met": False,
                "detail": f"{n} timed runs: the {p:.0%} early-stopping estimate needs at least {needed}"}
    low, high = 1, n  # the largest t with min_passing(t) + t <= n (it grows with t)
    while low < high:
        middle = (low + high + 1) // 2
        if min_passing(middle, p, confidence=confidence) + middle <= n:
            low = middle
        else:
            high = middle - 1
    t = low
    value = float(np.sort(samples)[n - t])
    return {**out, "value": value, "discarded": t - 1, "met": True,
            "detail": f"the {t}-th highest of {n} runs ({t - 1} highest discarded): the true {p:.0%} percentile is "
                      f"below it with {confidence:.0%} confidence"}


def latency_statistics(samples_s: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """``performance.latency`` of the result document (schema version 2): p50, p90, p99 with their confidence
    intervals, and the p90 (and p99) early-stopping estimates. JSON-able."""
    try:
        samples = np.asarray([float(s) for s in samples_s], np.float64)
    except (TypeError, ValueError):
        raise ValueError("latency statistics need a list of latencies (seconds)") from None
    if samples.ndim != 1 or samples.size == 0 or not np.all(np.isfinite(samples)):
        raise ValueError("latency statistics need at least one finite latency sample")
    out: dict = {"unit": "s", "n": int(samples.size), "confidence": confidence, "method": METHOD}
    for name, q in PERCENTILES.items():
        out[name] = {"value": percentile(samples, q), "ci_s": quantile_ci(samples, q, confidence)}
    out["early_stopping"] = {"p90": early_stopping(samples, 0.9), "p99": early_stopping(samples, 0.99)}
    return out


def profile_settings(name: str | None, repetitions: int | None, warmup: int | None,
                     min_duration_s: float | None) -> dict:
    """The run's settings from a profile and explicit options (explicit wins): ``{"name", "min_repetitions",
    "warmup", "min_duration_s"}``. The name recorded is the profile's only when the settings meet its minima
    (otherwise ``custom``); without a profile, ``quick`` when they are its values, else ``custom``."""
    from requestflow.errors import UserError

    if name is not None and name not in PROFILES:
        raise UserError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    base = PROFILES[name or "quick"]
    settings = {"min_repetitions": base["min_repetitions"] if repetitions is None else repetitions,
                "warmup": base["warmup"] if warmup is None else warmup,
                "min_duration_s": float(base["min_duration_s"] if min_duration_s is None else min_duration_s)}
    if not (isinstance(settings["min_duration_s"], float) and math.isfinite(settings["min_duration_s"])
            and settings["min_duration_s"] >= 0):
        raise UserError(f"--min-duration-s must be a number >= 0, got {min_duration_s}")
    meets = (settings["min_repetitions"] >= base["min_repetitions"]
             and settings["min_duration_s"] >= base["min_duration_s"])
    if name is None:
        meets = settings == {key: PROFILES["quick"][key] for key in settings}
    return {"name": (name or "quick") if meets else "custom", **settings}
