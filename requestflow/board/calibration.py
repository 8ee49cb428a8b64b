"""The machine's own speed, measured with every performance point (issue #19, "telling a slower machine from slower
software"): a small fixed workload timed just before and just after the point's timed region, on the same CPUs.

On a shared VM (and on boards: thermal state, daemons, DVFS) the same point replayed minutes later can measure 12%
faster or slower with nothing changed in the software. A workload that does not depend on the software under test,
timed in the same process, on the same CPUs, around the same moment, measures that drift: a later comparison divides
the point's latency ratio by the calibration's (``requestflow.results.calibrated``).

The workload (:data:`WORKLOAD`): numpy float32 products of two fixed 96 x 96 matrices (seeded). 96 x 96 stays below
OpenBLAS's threading threshold (128 x 128 started threads here and was 60x slower at its 90th percentile on a busy
machine): one thread, on the CPUs the process is pinned to, some 20 us a product here. A timed sample is
``per_sample`` products in a row, as many as take about as much CPU time as one of the point's own runs
(``like_cpu_s``: the runner measures one more warm-up run's CPU time, ``time.thread_time``), between
:data:`MIN_PER_SAMPLE` products and :data:`MAX_SAMPLE_S`: other load that takes the CPU away in slices hits tasks
of different lengths differently (a real run beside a hog taking 1 ms of every 1.2 ms: the point x7.5, a workload
sample 4x shorter than its runs x11.4; matched by wall time, which the hog inflates unevenly, still x6-8 against
x10-11), so the workload's samples need as much CPU as the point's runs. Each sample is stored as seconds *per
product* (comparable between runs whatever their ``per_sample``). :data:`SAMPLES` samples before and as many after,
after :data:`WARMUP` untimed products. It is deliberately *not* a model on the point's backend: a calibration that
ran the backend's library would move with a regression of that library and cancel it.

The sides beside the timed region can miss what the region saw: on a slowed CPU that has episodes (a dozen
consecutive runs 15-30% slower), the point's median over its runs filters them out, but a 16-sample side can sit
inside one (sides 42 against 33 us a product, the point unmoved; docs/trust.md). So the runner also takes samples
*during* the timed region (:meth:`Calibration.between`): one sample between two of its runs every ``every`` runs
(:meth:`Calibration.every_for`: about :data:`DURING` samples over the repetitions, at least every :data:`MIN_EVERY`
runs; every :data:`EVERY_AFTER` runs in a duration-bound run's extra runs), never inside a run's own timing. They
see the same episodes as the point, and ``requestflow.results.calibrated`` compares with them where every run
compared has them; the sides are then :data:`SIDE_SAMPLES` samples each (their cost kept the whole within 3% of a
quick point's wall time). A backend that times itself (armcl) gets the sides only, :data:`SAMPLES` each.

``performance.calibration`` in the document: ``method``, ``workload``, ``unit``, ``per_sample``, ``before`` and
``after`` (each ``samples``, seconds per product, and ``median``), ``during`` (where the runner timed the region
itself: ``samples``, ``median`` and ``every``), ``drift`` (after / before - 1) and ``cost_s`` (the seconds all the
samples took, warm-up included). ``requestflow.board.quality`` flags a point whose calibration moved during the
run (the first and second halves of ``during`` where it has 16 samples or more, else before against after) by
more than its own noise; ``requestflow.results.calibrated`` compares runs with it.
"""

from __future__ import annotations

import time

import numpy as np

METHOD = "requestflow.board.calibration 1"  # bumped whenever the workload changes: calibrations of two methods
SIZE = 96  # do not compare
SAMPLES = 16
WARMUP = 8
MIN_PER_SAMPLE = 4
MAX_SAMPLE_S = 1e-3  # a sample lasts at most this long, however long the point's runs: the cost stays bounded
DURING = 32  # samples during the timed region, about: one every repetitions // DURING runs
MIN_EVERY = 2  # at most one sample every other run (a quick point's 20 runs: 10 samples)
SIDE_SAMPLES = 8  # a side's samples when the runner samples during the region too (the quality check uses those)
EVERY_AFTER = 64  # one sample every 64 of a duration-bound run's extra runs (a 60 s point: some 1.5% more CPU)
WORKLOAD = f"numpy float32 matmul {SIZE}x{SIZE}, seconds per product"


class Calibration:
    """The workload's inputs, made once (before the point's backend runs), and its two timed sides."""

    def __init__(self, samples: int = SAMPLES) -> None:
        rng = np.random.default_rng(19)
        self.a = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
        self.b = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
        self.out = np.empty((SIZE, SIZE), np.float32)
        self.samples = samples
        self.per_sample: int | None = None
        self.sides: dict[str, list[float]] = {}
        self.during: list[float] = []
        self.every: int | None = None
        self.cost_s = 0.0

    def every_for(self, repetitions: int) -> int:
        """Sets and returns ``every``: take one sample :meth:`between` runs every so many of ``repetitions``."""
        self.every = max(MIN_EVERY, repetitions // DURING)
        return self.every

    def between(self) -> None:
        """One sample now, between two timed runs (after :meth:`time` set ``per_sample``), after one untimed product:
        the point's run just before it took the caches (timed cold, the samples during a real run were 10% slower
        than the sides and moved more than the point on a slowed CPU)."""
        per_sample, a, b, out, clock = self.per_sample or MIN_PER_SAMPLE, self.a, self.b, self.out, time.perf_counter_ns
        begin = clock()
        np.matmul(a, b, out=out)
        start = clock()
        for _ in range(per_sample):
            np.matmul(a, b, out=out)
        took = clock() - start
        self.during.append(took / 1e9 / per_sample)
        self.cost_s += (clock() - begin) / 1e9

    def time(self, side: str, like_cpu_s: float | None = None) -> None:
        """Time the workload now as ``side`` (``before`` or ``after``). The first side sets ``per_sample``: products
        taking about ``like_cpu_s`` CPU seconds (one of the point's runs; None: the fewest)."""
        begin = time.perf_counter()
        a, b, out, clock = self.a, self.b, self.out, time.perf_counter_ns
        cpu = time.thread_time()
        for _ in range(WARMUP):
            np.matmul(a, b, out=out)
        if self.per_sample is None:
            self.per_sample = per_sample_for(like_cpu_s, (time.thread_time() - cpu) / WARMUP)
        per_sample = self.per_sample
        count = min(self.samples, SIDE_SAMPLES) if self.every else self.samples  # every_for called: samples during
        samples = [0] * count
        for i in range(count):
            start = clock()
            for _ in range(per_sample):
                np.matmul(a, b, out=out)
            samples[i] = clock() - start
        self.sides[side] = [s / 1e9 / per_sample for s in samples]
        self.cost_s += time.perf_counter() - begin

    def document(self) -> dict | None:
        """``performance.calibration``, or None unless both sides were timed."""
        if not {"before", "after"} <= self.sides.keys():
            return None
        out = {"method": METHOD, "workload": WORKLOAD, "unit": "s", "per_sample": self.per_sample}
        for side in ("before", "after"):
            out[side] = {"samples": self.sides[side], "median": float(np.median(self.sides[side]))}
        if self.during:
            out["during"] = {"samples": self.during, "median": float(np.median(self.during)), "every": self.every}
        out["drift"] = out["after"]["median"] / out["before"]["median"] - 1.0
        out["cost_s"] = self.cost_s
        return out


def per_sample_for(like_cpu_s: float | None, product_cpu_s: float) -> int:
    """Products per sample: as many as take ``like_cpu_s`` CPU seconds at ``product_cpu_s`` each, at most
    ``MAX_SAMPLE_S`` worth, at least ``MIN_PER_SAMPLE``."""
    wanted = min(like_cpu_s or 0.0, MAX_SAMPLE_S) / max(product_cpu_s, 1e-9)
    return max(MIN_PER_SAMPLE, round(wanted))


def samples(calibration: dict | None, during: bool = False) -> list[float]:
    """Both sides' samples of a document's ``performance.calibration`` (empty without one); ``during``: the samples
    taken during its timed region instead (empty without them)."""
    if not calibration:
        return []
    if during:
        return list(calibration.get("during", {}).get("samples", []))
    return [*calibration["before"]["samples"], *calibration["after"]["samples"]]
