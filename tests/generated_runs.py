"""Performance documents with GENERATED latencies, for testing statistics and regression detection deterministically.

A generated document is a copy of one real runner document (its context, identity, environment: everything but its
timings), its samples drawn from a known, seeded distribution: ``latencies`` - lognormal noise of a chosen spread
around a chosen median ``level``, with a few runs 1.5-3x slower (an interrupt, a page fault), as real runs have.
Statistics and the quality verdict are recomputed as the runner computes them; the start time is a fixed night
(``BASE`` plus some hours), so the history's order never depends on when the test ran.

Why: two REAL runs of the same code minutes apart differ by the machine's drift, which on a shared or busy machine
reaches the detector's 5% minimum effect (CI of 5e27afd: 6.2%; a fresh-clone CI on a 2-core machine failed 12 tests
of test_regressions.py and test_regression_dag.py on one noisy history of real runs). "A 20% step is found" and
"the same level is silent" are statements about the detector; on generated samples they hold or fail the same way
on every machine. Real runs are kept for checks whose effects are far above any drift (tests/results/test_regressions.py
``TestRealRuns``).
"""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np

from requestflow.board.quality import assess
from requestflow.board.runner import statistics
from requestflow.results.load import load_documents

BASE = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)  # the first generated night
LEVEL = 0.5e-3  # s: the median latency of the generated history (about mobilenet-v1-0.25-128 on one x86 core)
NOISE = 0.03  # sigma of the lognormal noise of every run: a robust spread of about 3%
OUTLIERS = 0.02  # the fraction of runs 1.5-3x slower
# the history's 4 runs: each at its own level (runs of unchanged code differ a little: here their medians are at most
# 2.6% from the pooled median, below the detector's 5% minimum effect)
HISTORY_LEVELS = (1.00, 1.02, 0.98, 1.01)
CALIBRATION_LEVEL = 0.1e-3  # s: the calibration workload's median sample on the generated machine at speed 1
CALIBRATION_NOISE = 0.01


def latencies(n: int, level: float, seed: int, noise: float = NOISE, outliers: float = OUTLIERS) -> list[float]:
    """``n`` timings (s), median about ``level``: ``level * exp(N(0, noise))``, a fraction ``outliers`` of them 1.5-3x
    slower. The same arguments give the same samples."""
    rng = np.random.default_rng(seed)
    samples = level * np.exp(rng.normal(0.0, noise, n))
    slow = rng.random(n) < outliers
    samples[slow] *= rng.uniform(1.5, 3.0, int(slow.sum()))
    return samples.tolist()


def started(document: dict, start: dt.datetime) -> dict:
    """A copy of ``document`` started at ``start`` (its duration kept; a new document: a new hash)."""
    copied = copy.deepcopy(document)
    begin, end = (dt.datetime.fromisoformat(document[k]) for k in ("started_at", "finished_at"))
    copied["started_at"] = start.isoformat(timespec="milliseconds")
    copied["finished_at"] = (start + (end - begin)).isoformat(timespec="milliseconds")
    return copied


def at(document: dict, hours: float) -> dict:
    """A copy of ``document`` started ``hours`` after ``BASE``."""
    return started(document, BASE + dt.timedelta(hours=hours))


def with_samples(document: dict, samples: list[float]) -> dict:
    """A copy of the performance document ``document`` timed as ``samples``: statistics and (when the document has
    one) the quality verdict recomputed as the runner computes them."""
    copied = copy.deepcopy(document)
    p = copied["performance"]
    p.update(statistics([float(s) for s in samples], p["batch_size"]))
    if "quality" in p:
        environment = copied.get("environment") or {}
        p["quality"] = assess(p["samples"], environment.get("before"), environment.get("after"),
                              cpus=copied["context"].get("cpu_affinity"))
    return copied


def on_machine(document: dict, slowness: float, seed: int, drift: float = 0.0) -> dict:
    """A copy of the performance document ``document`` whose calibration (``performance.calibration``) says it ran
    on a machine ``slowness`` times as slow as the generated one at speed 1 (1.12: 12% slower; 0.88: 12% faster),
    and ``drift`` more after the timed region than before it (0.1: the machine got 10% slower during the run): the
    samples are left as they are, the quality verdict recomputed with the calibration."""
    from requestflow.board.calibration import METHOD, SAMPLES, WARMUP, WORKLOAD

    copied = copy.deepcopy(document)
    p = copied["performance"]
    level = CALIBRATION_LEVEL * slowness
    sides = {"before": latencies(SAMPLES, level, seed, CALIBRATION_NOISE, outliers=0.0),
             "after": latencies(SAMPLES, level * (1 + drift), seed + 1, CALIBRATION_NOISE, outliers=0.0)}
    p["calibration"] = {"method": METHOD, "workload": WORKLOAD, "unit": "s", "per_sample": 20,
                        **{side: {"samples": values, "median": float(np.median(values))}
                           for side, values in sides.items()}}
    p["calibration"]["drift"] = p["calibration"]["after"]["median"] / p["calibration"]["before"]["median"] - 1
    p["calibration"]["cost_s"] = 20 * (sum(sides["before"]) + sum(sides["after"])) + 2 * WARMUP * level
    if "quality" in p:
        environment = copied.get("environment") or {}
        p["quality"] = assess(p["samples"], environment.get("before"), environment.get("after"),
                              cpus=copied["context"].get("cpu_affinity"), calibration=p["calibration"])
    return copied


def generated(template: dict, level: float, seed: int, hours: float, noise: float = NOISE) -> dict:
    """``template`` (a real performance document) with as many generated samples as it has, around ``level``,
    started ``hours`` after ``BASE``."""
    n = len(template["performance"]["samples"])
    return at(with_samples(template, latencies(n, level, seed, noise)), hours)


def generated_history(template: dict, levels: tuple[float, ...] = HISTORY_LEVELS, level: float = LEVEL) -> list[dict]:
    """One generated run per entry of ``levels`` (times ``level``), an hour apart from ``BASE`` on: the history."""
    return [generated(template, level * factor, seed=1000 + i, hours=i) for i, factor in enumerate(levels)]


def samples_of(*documents: dict) -> list[float]:
    return [s for d in documents for s in d["performance"]["samples"]]


def load_sweep(engine, sweep: str, *documents: dict) -> list[int]:
    """Load ``documents`` as the sweep ``sweep`` of the board local: their result ids."""
    report = load_documents(engine, [(f"{sweep}-{i}", d) for i, d in enumerate(documents)], board="local",
                            sweep=sweep)
    assert len(report.loaded) == len(documents)
    return report.result_ids


def load_history(engine, runs: list[dict]) -> list[int]:
    """``runs`` as the sweeps history-1 .. history-N, one result each: their result ids."""
    return [load_sweep(engine, f"history-{i + 1}", run)[0] for i, run in enumerate(runs)]
