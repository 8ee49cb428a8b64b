"""The quality verdict of a performance measurement: VALID, or FLAGGED with its reasons (board side, numpy only).

MLPerf's LoadGen ends every run with ``Result is : VALID`` or ``INVALID`` and the conditions behind it (minimum
duration, minimum query count, early stopping: a binomial bound on the reported percentile). We do the same for each
performance point, on its raw samples and the runner's before/after snapshots of clocks and temperatures:
:func:`assess` gives ``{"verdict", "reasons", "checks", "method"}``, which the runner stores as
``performance.quality``. A verdict is a warning to the reader, not a refusal: a FLAGGED point is stored, ranked and
drawn like any other (unlike MLPerf, where INVALID results are not published) - some reasons (an unpinned governor,
a board that heats up) are facts about the board that a reader must weigh, not mistakes that rerunning longer
cures. Each check is ``{"value", "limit", "ok", "detail", ...}``; a check that cannot be computed from what the
board gives (no cpufreq, no thermal zones) has value null and is ``ok``: unknown is not a flag.

The checks and their limits (:class:`Limits`), chosen for what the scoreboard does with a point:

- **variation**: the robust coefficient of variation, 1.4826 x MAD / median (the standard deviation's estimate for
  normal data, insensitive to a few delays), at most **5%**. 5% is the smallest latency change the project claims to
  see (``requestflow.results.regressions`` and ``requestflow replay`` use a 5% minimum effect): a point whose
  ordinary run-to-run spread is wider cannot support comparisons at that level. stdev / mean is recorded beside it
  (``stdev_over_mean``) but does not flag: timing noise is one-sided and heavy-tailed (interrupts, page faults,
  other processes), so one 20x delay among 20 runs makes stdev / mean exceed 100% while the median the scoreboard
  shows is unharmed (Chen & Revels, "Robust benchmarking in noisy environments", 2016); the tail is in p90/p99/max.
- **bimodality**: the seed's HiKey960 runs alternated between 60-80 ms and 240-270 ms (a thread moving between
  the big and LITTLE clusters): their median is a coin toss between two regimes. On the sorted log-samples, the
  widest gap that leaves at least **10%** of the samples (and at least 5) on each side splits them in two clusters;
  the point is bimodal when the clusters' medians are at least **1.5x** apart *and* the empty gap covers at least
  **60%** of the distance between them (two separated clumps, not one spread-out hill). A unimodal spread, however
  wide, has no such empty stretch in its middle; a few outliers are less than 10% of the samples. 1.5x is larger
  than the spread of any single regime we have seen, and smaller than the big/LITTLE or contended/uncontended
  ratios (1.8-4x). Simulated (400 draws each): lognormal noise of sigma 0.2-0.5, gamma, exponential and Pareto
  tails, uniform 1-3x: flagged in at most 0.3% of 20-sample runs and never from 50 samples on (5% of runs 5x slower:
  only the draws where 10% or more of them happened to be slow); the seed's 60-80 / 240-270 ms regimes: strictly
  alternating, always; each run picking one at random, 99% at 20 samples and always from 50; 30% of runs 1.8x
  slower: 77% at 20 samples, 98-100% from 50.
  Sarle's bimodality coefficient (``sarle``; above 5/9 suggests bimodality) is recorded but does not flag: a skewed
  unimodal sample with a long tail also exceeds 5/9.
- **trend** (warm-up adequacy, drift): the median of the last third of the samples against the first third's, and
  Spearman's rank correlation of latency with the run index. Flagged when the medians differ by at least **5%** (the
  same effect floor as above) *and* the correlation is significant (p < **0.01**, normal approximation): a latency
  that still falls after the warm-up runs means too few of them; one that rises means throttling or interference.
  Needs 10 samples (fewer: unknown).
- **clocks**: the CPU frequencies of the run's CPUs before and after it (``environment.before``/``after``). A
  change of more than **1%** on any of them flags: boards switch between discrete operating points at least 5%
  apart, so 1% only absorbs reading jitter; a governor that moved the clock means it was not pinned
  (``requestflow clocks pin``). Two snapshots cannot see a change that came and went: this is evidence, not proof.
- **temperature**: the largest rise of any thermal zone from before to after the run, at most **5 °C**. Sensors
  read in steps of up to 1 °C and an idle board wanders by 1-2 °C; a larger rise within one point's run means the
  SoC is heating under this load and has not reached its steady state, so its clocks may throttle before the run
  ends (a passively cooled HiKey960 does within minutes).
- **repetitions**: the distribution-free 95% confidence interval of the median, between the order statistics that
  a Binomial(n, 1/2) count puts on either side with probability 95% (the same idea as MLPerf's early-stopping
  bound), must have a half-width of at most **2.5%** of the median: two points whose medians differ by the 5%
  minimum effect then have disjoint intervals. Fewer than 6 samples cannot give a 95% interval at all (the widest,
  min to max, covers the median with probability 1 - 2^(1-n) < 0.95): flagged as too few. The detail says about how
  many repetitions would do (the half-width shrinks as 1/sqrt(n)).

- **calibration** (issue #19; only for a point whose runner timed ``requestflow.board.calibration``'s workload
  before and after its timed region): the workload's median after against before. Flagged when they moved apart by
  more than the point's own noise (its robust CV, at least **2%**) *and* the two sides' 95% median intervals are
  disjoint: the machine's speed changed during the run (other load, clocks, heat), so its latency mixes two machines.
  Where the runner also sampled the workload during the timed region (``calibration.during``, at least 16 samples),
  the first half of those samples against the second half instead: the same question, asked inside the region.

- **emulated** (issue #15): a run under an emulator (``machine.emulated`` or the backend's ``emulated``: qemu-user
  running arm64 code on an x86 host) gets the verdict **EMULATED** whatever its samples look like, its first reason
  naming the emulator: its timings are the emulator's, not those of any CPU, and no check on them makes them a
  measurement. The other checks are still computed and their failures listed after it.

What it does not do: it cannot see the untimed warm-up runs, it treats the samples of one run as independent draws
(they share the run's state), and it judges one run alone (the run-to-run spread across sweeps is the regression
check's business).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from requestflow.board.rank_stats import median_ci, smallest_n_for_ci, spearman

METHOD = "requestflow.board.quality 2"  # bumped whenever a check or a limit changes meaning
VALID, FLAGGED, EMULATED = "VALID", "FLAGGED", "EMULATED"
CHECKS = ("variation", "bimodality", "trend", "clocks", "temperature", "repetitions",
          "calibration")  # in the order they are given; calibration only for a point that has one
MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data


@dataclass(frozen=True)
class Limits:
    """The thresholds of :func:`assess` (why each: the module's docstring)."""

    robust_cv: float = 0.05
    bimodal_min_fraction: float = 0.10
    bimodal_min_count: int = 5
    bimodal_ratio: float = 1.5
    bimodal_gap_share: float = 0.6
    trend_effect: float = 0.05
    trend_alpha: float = 0.01
    trend_min_samples: int = 10
    clock_change: float = 0.01
    temperature_rise_c: float = 5.0
    calibration_floor: float = 0.02
    confidence: float = 0.95
    median_ci_half_width: float = 0.025


DEFAULT_LIMITS = Limits()


def assess(samples_s: Sequence[float], environment_before: dict | None = None, environment_after: dict | None = None,
           cpus: Sequence[int] | None = None, limits: Limits = DEFAULT_LIMITS, emulated: dict | None = None,
           calibration: dict | None = None) -> dict:
    """The verdict on one performance run: ``samples_s`` its raw latencies (seconds, in the order they were timed),
    ``environment_before``/``environment_after`` the runner's snapshots (``{"cur_khz": {cpu: kHz},
    "temperatures": {zone: °C}}``, see ``machine.snapshot_frequencies_and_temperatures``), ``cpus`` the CPUs the run
    used (their clocks are compared; None: all), ``emulated`` the run's emulation record (``machine.emulated``):
    then the verdict is EMULATED; ``calibration`` the run's ``performance.calibration`` (``board.calibration``;
    its check is given only with one). JSON-able: no NaN or infinity anywhere."""
    samples = np.asarray([float(s) for s in samples_s], np.float64)
    if samples.ndim != 1 or samples.size == 0 or not np.all(np.isfinite(samples)):
        raise ValueError("assess needs at least one finite latency sample")
    checks = {
        "variation": variation(samples, limits),
        "bimodality": bimodality(samples, limits),
        "trend": trend(samples, limits),
        "clocks": clocks(environment_before, environment_after, cpus, limits),
        "temperature": temperature(environment_before, environment_after, limits),
    }
    # the interval shrinks as 1/sqrt(n) for one regime; with two, more runs only estimate the mixture better
    checks["repetitions"] = repetitions(samples, limits, suggest=checks["bimodality"]["ok"])
    if calibration:
        checks["calibration"] = machine_change(calibration, checks["variation"]["value"], limits)
    reasons = [check["detail"] for check in checks.values() if not check["ok"]]
    out = {"verdict": FLAGGED if reasons else VALID, "reasons": reasons, "checks": checks, "method": METHOD,
           "limits": asdict(limits)}
    if emulated:
        emulator = emulated.get("version") or emulated.get("emulator") or "an emulator"
        out["verdict"] = EMULATED
        out["reasons"] = [f"emulated ({emulator}): these timings are the emulator's, not a measurement of any CPU",
                          *reasons]
        out["emulated"] = {key: emulated.get(key) for key in ("emulator", "version")}
    return out


# -- the checks ------------------------------------------------------------------------------------------------------
def variation(samples: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> dict:
    median = float(np.median(samples))
    robust = _finite(MAD_TO_SIGMA * float(np.median(np.abs(samples - median))) / median) if median > 0 else None
    mean = float(samples.mean())
    classic = _finite(float(samples.std(ddof=1)) / mean) if samples.size > 1 and mean > 0 else None
    if robust is None:
        return _check(None, limits.robust_cv, True, "unknown: the median latency is not positive",
                      stdev_over_mean=classic)
    ok = robust <= limits.robust_cv
    detail = (f"latency spread {'within' if ok else 'too wide'}: robust CV {robust:.1%} "
              f"{'<=' if ok else '>'} {limits.robust_cv:.0%} (1.4826 x MAD / median"
              + (f"; stdev/mean {classic:.1%}" if classic is not None else "") + ")")
    return _check(robust, limits.robust_cv, ok, detail, stdev_over_mean=classic)


def bimodality(samples: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> dict:
    n = samples.size
    sarle = sarle_coefficient(samples)
    smallest = max(limits.bimodal_min_count, math.ceil(limits.bimodal_min_fraction * n))
    if n < 2 * smallest:
        return _check(None, limits.bimodal_ratio, True,
                      f"unknown: too few samples to look for two modes ({n}; {2 * smallest} needed)", sarle=sarle)
    order = np.sort(np.log(np.maximum(samples, 1e-12)))
    gaps = np.diff(order)  # gaps[k - 1] lies between order[k - 1] and order[k]
    splits = np.arange(smallest, n - smallest + 1)  # the lower cluster is order[:k]
    k = int(splits[np.argmax(gaps[splits - 1])])
    low, high = order[:k], order[k:]
    centre_low, centre_high = float(np.median(low)), float(np.median(high))
    distance = centre_high - centre_low
    ratio = math.exp(distance)
    share = float(gaps[k - 1]) / distance if distance > 0 else 0.0
    ok = not (ratio >= limits.bimodal_ratio and share >= limits.bimodal_gap_share)
    fraction_low = k / n
    if ok:
        detail = (f"one mode: no split into two clusters of >= {limits.bimodal_min_fraction:.0%} each, "
                  f">= {limits.bimodal_ratio:g}x apart with an empty gap between them (best split: "
                  f"{ratio:.2f}x apart, gap {share:.0%} of the distance)")
    else:
        detail = (f"bimodal latency: {fraction_low:.0%} of the runs around {_ms(math.exp(centre_low))} and "
                  f"{1 - fraction_low:.0%} around {_ms(math.exp(centre_high))} ({ratio:.1f}x apart, none between "
                  f"{_ms(math.exp(order[k - 1]))} and {_ms(math.exp(order[k]))}): the median depends on which "
                  "regime the runs fell in")
    return _check(_finite(ratio), limits.bimodal_ratio, ok, detail, gap_share=_finite(share),
                  low_fraction=fraction_low, low_centre_s=math.exp(centre_low), high_centre_s=math.exp(centre_high),
                  sarle=sarle)


def sarle_coefficient(samples: np.ndarray) -> float | None:
    """Sarle's bimodality coefficient (g^2 + 1) / (k + 3 (n-1)^2 / ((n-2)(n-3))), g and k the sample skewness and
    excess kurtosis (bias-corrected, as SAS computes them); above 5/9 suggests bimodality (or a long tail). None for
    fewer than 4 samples or no spread."""
    n = samples.size
    if n < 4:
        return None
    deviations = samples - samples.mean()
    m2 = float(np.mean(deviations ** 2))
    if not m2 > 0:
        return None
    m3, m4 = float(np.mean(deviations ** 3)), float(np.mean(deviations ** 4))
    g1, g2 = m3 / m2 ** 1.5, m4 / m2 ** 2 - 3.0
    skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    kurtosis = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    return _finite((skew ** 2 + 1) / (kurtosis + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def trend(samples: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> dict:
    n = samples.size
    if n < limits.trend_min_samples:
        return _check(None, limits.trend_effect, True,
                      f"unknown: too few samples to test for a trend ({n}; {limits.trend_min_samples} needed)")
    third = n // 3
    first, last = float(np.median(samples[:third])), float(np.median(samples[-third:]))
    median = float(np.median(samples))
    change = (last - first) / median if median > 0 else 0.0
    rho, p = spearman(np.arange(n, dtype=np.float64), samples)
    significant = p is not None and p < limits.trend_alpha
    ok = not (abs(change) >= limits.trend_effect and significant)
    test = f"Spearman rho {rho:+.2f}, p {p:.2g}" if p is not None else "no rank correlation: constant samples"
    if ok:
        detail = (f"no trend: last third's median {change:+.1%} from the first third's ({test}; flagged at "
                  f">= {limits.trend_effect:.0%} with p < {limits.trend_alpha:g})")
    elif change < 0:
        detail = (f"latency still falling after the warm-up: the last third's median is {-change:.1%} below the "
                  f"first third's ({test}): too few warm-up runs?")
    else:
        detail = (f"latency rising during the run: the last third's median is {change:.1%} above the first "
                  f"third's ({test}): throttling or interference?")
    return _check(_finite(change), limits.trend_effect, ok, detail, spearman_rho=_finite(rho), p_value=_finite(p),
                  alpha=limits.trend_alpha)


def clocks(before: dict | None, after: dict | None, cpus: Sequence[int] | None = None,
           limits: Limits = DEFAULT_LIMITS) -> dict:
    wanted = {str(c) for c in cpus} if cpus else None
    old, new = (before or {}).get("cur_khz") or {}, (after or {}).get("cur_khz") or {}
    pairs = {cpu: (old[cpu], new[cpu]) for cpu in old
             if (wanted is None or cpu in wanted) and _positive(old[cpu]) and _positive(new.get(cpu))}
    if not pairs:
        return _check(None, limits.clock_change, True,
                      "unknown: the board reports no CPU frequencies for the run's CPUs")
    changes = {cpu: abs(b - a) / a for cpu, (a, b) in pairs.items()}
    largest = max(changes.values())
    ok = largest <= limits.clock_change
    moved = sorted((cpu for cpu, change in changes.items() if change > limits.clock_change), key=_cpu_order)
    if ok:
        detail = f"CPU clocks unchanged during the run ({len(pairs)} CPU(s) read before and after)"
    else:
        listed = ", ".join(f"cpu{cpu} {pairs[cpu][0] / 1000:g} -> {pairs[cpu][1] / 1000:g} MHz" for cpu in moved[:4])
        more = f" and {len(moved) - 4} more" if len(moved) > 4 else ""
        detail = f"CPU clocks changed during the run ({listed}{more}): not pinned? (requestflow clocks pin)"
    return _check(largest, limits.clock_change, ok, detail, changed_cpus=[int(c) if c.isdigit() else c for c in moved])


def temperature(before: dict | None, after: dict | None, limits: Limits = DEFAULT_LIMITS) -> dict:
    old, new = (before or {}).get("temperatures") or {}, (after or {}).get("temperatures") or {}
    rises = {zone: new[zone] - old[zone] for zone in old
             if _number(old[zone]) and _number(new.get(zone))}
    if not rises:
        return _check(None, limits.temperature_rise_c, True, "unknown: the board reports no temperatures")
    zone = max(rises, key=lambda z: rises[z])
    rise = float(rises[zone])
    ok = rise <= limits.temperature_rise_c
    where = f"{zone} {old[zone]:g} -> {new[zone]:g} °C"
    detail = (f"temperature steady: at most {max(rise, 0.0):g} °C warmer after the run ({where})" if ok else
              f"temperature rose {rise:g} °C during the run ({where}; limit {limits.temperature_rise_c:g} °C): "
              "the board was heating up and may have throttled")
    return _check(rise, limits.temperature_rise_c, ok, detail, zone=zone)


def repetitions(samples: np.ndarray, limits: Limits = DEFAULT_LIMITS, suggest: bool = True) -> dict:
    n = samples.size
    interval = median_ci(samples, limits.confidence)
    if interval is None:
        return _check(None, limits.median_ci_half_width, False,
                      f"too few repetitions: {n} sample(s) cannot give a {limits.confidence:.0%} confidence interval "
                      f"of the median (at least {smallest_n_for_ci(limits.confidence)} needed)", n=n,
                      confidence=limits.confidence)
    low, high = interval
    median = float(np.median(samples))
    half = (high - low) / 2 / median if median > 0 else math.inf
    ok = half <= limits.median_ci_half_width
    if ok:
        detail = (f"enough repetitions: the {limits.confidence:.0%} confidence interval of the median is "
                  f"±{half:.1%} (<= ±{limits.median_ci_half_width:.1%}) over {n} samples")
    else:
        more = (math.ceil(n * (half / limits.median_ci_half_width) ** 2)
                if suggest and math.isfinite(half) else None)
        detail = (f"too few repetitions for the median: its {limits.confidence:.0%} confidence interval is "
                  f"±{half:.1%} of it (> ±{limits.median_ci_half_width:.1%}) over {n} samples"
                  + (f"; about {more} would do at this spread" if more else ""))
    return _check(_finite(half), limits.median_ci_half_width, ok, detail, n=n, confidence=limits.confidence,
                  ci_s=[low, high])


def machine_change(calibration: dict, noise: float | None, limits: Limits = DEFAULT_LIMITS) -> dict:
    """The calibration workload's median after the timed region against before it (where it has 16 samples or more
    during the region: their second half against their first): flagged when they moved apart by
    more than the point's own noise (its robust CV ``noise``, at least ``calibration_floor``) *and* their 95%
    median confidence intervals are disjoint (the move is not the calibration's own noise)."""
    during = (calibration.get("during") or {}).get("samples") or []
    halves = len(during) >= 16  # each half's 95% median interval narrower than its min..max
    before = np.asarray(during[: len(during) // 2] if halves else calibration["before"]["samples"], np.float64)
    after = np.asarray(during[len(during) // 2:] if halves else calibration["after"]["samples"], np.float64)
    old, new = float(np.median(before)), float(np.median(after))
    if not (old > 0 and new > 0):
        return _check(None, limits.calibration_floor, True, "unknown: the calibration's median is not positive")
    drift = new / old - 1.0
    limit = max(limits.calibration_floor, noise or 0.0)
    intervals = [median_ci(side, limits.confidence) for side in (before, after)]
    apart = None not in intervals and (intervals[0][1] < intervals[1][0] or intervals[1][1] < intervals[0][0])
    ok = not (abs(drift) > limit and apart)
    sides = ("in the region's first half", "in its second half") if halves else ("before", "after")
    where = (f"{_ms(old)} {sides[0]}, {_ms(new)} {sides[1]} ({drift:+.1%}; limit ±{limit:.1%}, the point's own "
             "noise)")
    detail = (f"the machine's speed held during the run: calibration {where}" if ok else
              f"the machine changed during the run: the calibration workload took {where}: other load, clocks "
              "or heat moved during the timed region")
    return _check(_finite(drift), limit, ok, detail, before_s=old, after_s=new,
                  compared="halves during" if halves else "sides")


# -- helpers ---------------------------------------------------------------------------------------------------------
def _check(value, limit, ok: bool, detail: str, **extra) -> dict:
    return {"value": value, "limit": limit, "ok": bool(ok), "detail": detail, **extra}


def _finite(value):
    return float(value) if value is not None and math.isfinite(value) else None


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _number(value) and value > 0


def _cpu_order(cpu: str):
    return (0, int(cpu), cpu) if cpu.isdigit() else (1, 0, cpu)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"
