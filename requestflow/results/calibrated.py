"""Latency comparisons that tell a slower machine from slower software (issue #19).

Every performance point since ``requestflow.board.calibration`` carries ``performance.calibration``: a fixed workload
timed on the same CPUs just before and just after its timed region. Comparing two runs (a replay, a result against
its history) then gives three comparisons (``stats.compare_samples``):

- **raw**: the point's samples, as before;
- **machine**: the calibration samples of the old side(s) against the new side's: did the machine change speed?
- **calibrated**: every run's samples divided by its own calibration median (times the new run's, to keep seconds),
  so that the calibrated ratio is the raw ratio divided by the machine's ratio.

The calibration is short (some 3 ms a side) and taken beside the timed region, not in it: how well it stands for
the machine's speed *during* the region is uncertain, and the run itself says by how much: the calibration's
``uncertainty`` is the largest move between its before and after sides among the runs compared (0.04: one run's
calibration was 4% slower after its timed region than before). The verdict is judged on the calibrated comparison
where the machine moved significantly (p < alpha) and by more than :data:`MACHINE_MIN_EFFECT` plus that
uncertainty, else on the raw one; the calibrated verdict's minimum effect is raised by the uncertainty too (a real
run next to a CPU hog: the point x11.3, its calibration x10.6 with sides 52% apart: calibrated x1.07, within
reach of the machine's noise, not a change). The verdict says which it was: ``machine 12% faster; calibrated: no
significant difference``. Without a calibration on every side (documents from before it), only the raw comparison
exists and the verdict says so.

Where every run compared also has samples taken *during* its timed region (``calibration.during``: one between two
runs every few runs), those are the machine's speed instead of the sides: they see the episodes the point's runs
see (a slowed CPU here: a dozen runs 15-30% slower at a time, which a side can sit in and the point's median
filters out), and the uncertainty is then the largest relative half-width of a compared run's 95% median interval
of its ``during`` samples (too few for one: its before/after move, as without them). The calibrated judgement
assumes the machine's drift scales the point and the workload alike; a drift that hits one more than the other
(memory bandwidth against compute) is not corrected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from requestflow.results.stats import Comparison, compare_samples, run_to_run_spread

MACHINE_MIN_EFFECT = 0.02  # a machine that moved less than 2% is not corrected for: the raw verdict stands
MACHINE_ALPHA = 0.01


@dataclass(frozen=True)
class Run:
    """One run's latency samples (s) and its calibration (``performance.calibration``; None: it has none)."""

    samples: Sequence[float]
    calibration: dict | None = None

    @property
    def calibration_samples(self) -> list[float]:
        return self.machine_samples()

    def machine_samples(self, during: bool = False) -> list[float]:
        """The calibration samples: both sides', or ``during``: those taken during the timed region."""
        from requestflow.board.calibration import samples

        return samples(self.calibration, during)

    @property
    def has_during(self) -> bool:
        return bool(self.machine_samples(during=True))

    def uncertainty(self, during: bool = False) -> float:
        """How uncertain this run's machine speed is: its :attr:`drift`, or ``during``: the relative half-width of
        its ``during`` samples' 95% median interval (the drift when too few samples for one)."""
        from requestflow.board.rank_stats import median_ci

        values = np.asarray(self.machine_samples(during), np.float64)
        interval = median_ci(values) if during else None
        if interval is None:
            return self.drift
        return (interval[1] - interval[0]) / 2 / float(np.median(values))

    @property
    def drift(self) -> float:
        """How far this run's calibration moved from before its timed region to after it (0.04: 4%, either way)."""
        before = float(np.median(self.calibration["before"]["samples"]))
        return abs(float(np.median(self.calibration["after"]["samples"])) / before - 1.0)

    @property
    def calibration_median(self) -> float | None:
        return self.machine_median()

    def machine_median(self, during: bool = False) -> float | None:
        values = self.machine_samples(during)
        return float(np.median(values)) if values else None


@dataclass(frozen=True)
class Judged:
    raw: Comparison
    machine: Comparison | None  # None: a side without calibration (or of another method)
    calibrated: Comparison | None
    threshold: float  # the minimum effect the judged verdict used
    uncertainty: float = 0.0  # the largest before/after move of a compared run's calibration

    @property
    def machine_moved(self) -> bool:
        m = self.machine
        return (m is not None and m.p_value < MACHINE_ALPHA
                and abs(m.ratio - 1.0) >= MACHINE_MIN_EFFECT + self.uncertainty)

    @property
    def judged(self) -> str:
        """``calibrated`` or ``raw``: which comparison the verdict is."""
        return "calibrated" if self.machine_moved and self.calibrated is not None else "raw"

    @property
    def comparison(self) -> Comparison:
        return self.calibrated if self.judged == "calibrated" else self.raw

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    @property
    def changed(self) -> bool:
        return self.comparison.changed

    @property
    def calibrated_ratio(self) -> float | None:
        return self.calibrated.ratio if self.calibrated is not None else None

    def machine_text(self) -> str:
        m = self.machine
        if m is None:
            return "machine not calibrated (a side has no calibration)"
        within = f", ±{self.uncertainty:.1%} within a run" if self.uncertainty else ""
        if not self.machine_moved:
            return f"machine steady (calibration x{m.ratio:.3f}{within})"
        return (f"machine {abs(m.ratio - 1):.0%} {'slower' if m.ratio > 1 else 'faster'} (calibration "
                f"x{m.ratio:.3f}{within})")

    def summary(self) -> str:
        """Judged calibrated: ``latency x0.880 raw (faster); machine 12% faster (calibration x0.880); calibrated: no
        significant difference (x1.000, p = 0.8)``; judged raw: ``latency slower (x1.200 raw; machine steady
        (calibration x1.004))``."""
        if self.judged == "calibrated":
            return (f"latency x{self.raw.ratio:.3f} raw ({self.raw.verdict}); {self.machine_text()}; calibrated: "
                    f"{self.calibrated.verdict} (x{self.calibrated.ratio:.3f}, p = {self.calibrated.p_value:.2g})")
        return f"latency {self.raw.verdict} (x{self.raw.ratio:.3f} raw; {self.machine_text()})"

    def as_dict(self) -> dict:
        return {"judged": self.judged, "verdict": self.verdict, "raw": self.raw.as_dict(),
                "machine": self.machine.as_dict() if self.machine else None,
                "calibrated": self.calibrated.as_dict() if self.calibrated else None,
                "machine_moved": self.machine_moved, "threshold": self.threshold, "uncertainty": self.uncertainty}


def judge(old: Sequence[Run], new: Run, alpha: float = 0.01, min_effect: float = 0.05) -> Judged:
    """``new`` against the pooled ``old`` runs (a replay: one; a history: several). The effect needed is raised to
    the old runs' own run-to-run spread when larger (``stats.run_to_run_spread``), raw and calibrated alike (each on
    its own samples: calibrated runs of unchanged code spread less)."""
    raw_threshold = max(min_effect, run_to_run_spread([r.samples for r in old]))
    raw = compare_samples([s for r in old for s in r.samples], new.samples, alpha, raw_threshold)
    methods = {(r.calibration or {}).get("method") for r in (*old, new)}
    if len(methods) != 1 or None in methods:
        return Judged(raw=raw, machine=None, calibrated=None, threshold=raw_threshold)
    during = all(r.has_during for r in (*old, new))  # samples during every timed region: those, else the sides
    machine = compare_samples([s for r in old for s in r.machine_samples(during)], new.machine_samples(during),
                              alpha, MACHINE_MIN_EFFECT)
    uncertainty = max(r.uncertainty(during) for r in (*old, new))
    reference = new.machine_median(during)
    scaled = [[s * reference / r.machine_median(during) for s in r.samples] for r in old]
    threshold = max(min_effect, run_to_run_spread(scaled)) + uncertainty
    calibrated = compare_samples([s for run in scaled for s in run], new.samples, alpha, threshold)
    judged = Judged(raw, machine, calibrated, threshold, uncertainty)
    return judged if judged.judged == "calibrated" else Judged(raw, machine, calibrated, raw_threshold, uncertainty)


def of(document: dict) -> Run:
    """A runner document's performance as a :class:`Run`."""
    performance = document["performance"]
    return Run(samples=performance["samples"], calibration=performance.get("calibration"))


