"""Comparing one stored result's metric with its point's own history: the engine of regression detection
(``requestflow.results.regressions`` stores and reports what it finds).

**History.** The results of the same point (``points.point_id``: the same identity, whatever the sweep) that
started before the new result, succeeded, belong to another sweep (or to none), and are not themselves
unacknowledged regressions of the metric (a slow night does not become the baseline of the next one: the
regression keeps alerting until it is fixed or acknowledged). The latest ``window`` of them are the baseline.

**Latency** (performance points): the raw samples of the baseline results, pooled, against the new result's raw
samples, by :func:`requestflow.results.stats.compare_samples`: a two-sided Mann-Whitney U test (p < ``alpha``)
**and** a ratio of medians at least ``min_effect`` away from 1. Timings of one run share that run's state, so runs
of unchanged code differ by more than their samples suggest: the effect needed is raised to the baseline's own
run-to-run spread (the largest distance of one baseline run's median from the pooled median) when that is larger.
A slower result is a regression; a faster one is recorded only with ``report_faster`` (a sudden speed-up can mean
a benchmark that stopped doing its work). Where the new result and every baseline result carry a calibration
(``performance.calibration``: the machine's own speed) and the machine moved significantly, the change is judged
on the calibrated samples (``requestflow.results.calibrated``): ``Change.judged`` says which, ``Change.note`` says
how far the machine moved, and the stored ratio and p-value are the judged comparison's (the medians stay raw).

**Accuracy** (accuracy points): top-1 and top-5 of the new result against the latest baseline result, exactly
(inference is deterministic: any change, up or down, is recorded).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from requestflow.errors import UserError
from requestflow.results import models as m
from requestflow.results.calibrated import Run, judge
from requestflow.results.stats import SLOWER

METRICS = ("latency", "top1", "top5")
DEFAULT_WINDOW = 5
DEFAULT_ALPHA = 0.01
DEFAULT_MIN_EFFECT = 0.05


@dataclass(frozen=True)
class Settings:
    """How a result is compared with its history: the ``window`` latest earlier results pooled as the baseline;
    a latency change needs p < ``alpha`` and a ratio of medians at least ``min_effect`` (0.05: 5%) from 1."""

    window: int = DEFAULT_WINDOW
    alpha: float = DEFAULT_ALPHA
    min_effect: float = DEFAULT_MIN_EFFECT
    report_faster: bool = False

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise UserError(f"window must be a whole number of results >= 1, got {self.window!r}")
        if not (0.0 < self.alpha < 1.0):
            raise UserError(f"alpha must be between 0 and 1 (exclusive), got {self.alpha!r}")
        if not (0.0 <= self.min_effect < 10.0):
            raise UserError(f"min_effect must be a fraction >= 0 (0.05 for 5%), got {self.min_effect!r}")


def variant_text(text_value: str | None) -> str:
    """A backend variant (JSON text) as the scoreboard labels it (its column ``variant_label``,
    ``sql/views/scoreboard.v5.sql``: what ``requestflow scoreboard`` and the page show): armcl's
    ``CL/NHWC/DEFAULT/NONE[/methods:<hash>]``, tf's ``graph`` or ``XLA``, tflite's delegate (``XNNPACK`` from ``default
    (XNNPACK)``); empty for the empty variant (the scoreboard's ``default``). A variant the scoreboard has no label
    for is ``key=value, ...``, as the page shows its JSON then."""
    try:
        variant = json.loads(text_value or "{}")
    except ValueError:
        return text_value or ""
    if not isinstance(variant, dict):
        return str(variant)

    def text_of(value) -> str:  # PostgreSQL's ->> of a JSON value
        return value if isinstance(value, str) else json.dumps(value)

    if "target" in variant:  # concat_ws skips what is missing
        methods = variant.get("conv_methods_sha256")
        parts = [variant.get(key) for key in ("target", "layout", "conv_method", "tuner")]
        return "/".join([text_of(v) for v in parts if v is not None]
                        + ([f"methods:{text_of(methods)[:8]}"] if methods is not None else []))
    if "jit_compile" in variant:
        return "XLA" if variant["jit_compile"] in (True, "true") else "graph"
    if "delegate" in variant and variant["delegate"] is not None:
        delegate = text_of(variant["delegate"])
        inside = re.search(r"\(([^)]*)\)", delegate)
        return inside.group(1) if inside else delegate
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, bool | None) else v}" for k, v in sorted(variant.items()))


@dataclass(frozen=True)
class StoredResult:
    id: int
    point: int  # points.id
    sweep_id: int | None
    started_at: dt.datetime
    mode: str
    label: str


@dataclass(frozen=True)
class Compared:
    """A metric of the history against the result's: latency medians with the test's ratio, p-value and sample
    counts; an accuracy with the images it is over (``ratio`` new / old, ``p_value`` None)."""

    old_value: float
    new_value: float
    ratio: float | None
    p_value: float | None
    n_old: int | None
    n_new: int | None


@dataclass(frozen=True)
class Change(Compared):
    """The outcome of comparing one result's metric with its history (``change`` None: no change)."""

    change: str | None
    baseline: list[int]
    threshold: float | None
    judged: str = "raw"  # latency: "calibrated" when judged on calibrated samples (the machine moved)
    note: str | None = None  # latency: raw, machine and calibrated ratios in words (calibrated.Judged.summary)


def find_sweep(connection: Connection, sweep: str) -> int:
    if not isinstance(sweep, str) or not sweep.strip():
        raise UserError("a sweep (its run id) is needed")
    found = connection.execute(select(m.Sweep.id).where(m.Sweep.run_id == sweep)).scalar()
    if found is None:
        latest = connection.execute(select(m.Sweep.run_id).order_by(m.Sweep.id.desc()).limit(5)).scalars().all()
        raise UserError(f"no sweep {sweep!r} in the results store" +
                        (f"; the latest: {', '.join(latest)}" if latest else " (it holds no sweep yet)"))
    return found


def sweep_results(connection: Connection, sweep_id: int) -> list[StoredResult]:
    rows = connection.execute(
        select(m.Result.id, m.Result.point_id, m.Result.sweep_id, m.Result.started_at, m.Point.mode, m.Board.name,
               m.Point.model_id, m.Point.backend, m.Point.precision, m.Point.threads)
        .join(m.Point, m.Point.id == m.Result.point_id).join(m.Board, m.Board.id == m.Point.board_id)
        .where(m.Result.sweep_id == sweep_id, m.Result.status == "ok")
        .order_by(m.Board.name, m.Point.model_id, m.Point.backend, m.Point.mode, m.Result.started_at, m.Result.id))
    return [StoredResult(r.id, r.point_id, r.sweep_id, r.started_at, r.mode,
                    f"{r.name}: {r.model_id} {r.backend} {r.precision} {r.mode} (threads {r.threads})")
            for r in rows]


HISTORY_SQL = text("""
SELECT r.id
FROM results r
WHERE r.point_id = :point AND r.status = 'ok' AND r.started_at < :started
  AND r.sweep_id IS DISTINCT FROM :sweep
  AND r.started_at >= COALESCE((
        SELECT ar.started_at FROM regression_acks a JOIN results ar ON ar.id = a.result_id
        WHERE a.point_id = :point AND a.metric = :metric AND ar.started_at <= :started AND a.result_id <> :result
        ORDER BY ar.started_at DESC LIMIT 1), '-infinity'::timestamptz)
  AND NOT EXISTS (SELECT 1 FROM regression_detections g
                  WHERE g.result_id = r.id AND g.metric = :metric AND g.ack_id IS NULL)
  AND EXISTS (SELECT 1 FROM performance f WHERE f.result_id = r.id AND :metric = 'latency'
              UNION ALL SELECT 1 FROM accuracy a WHERE a.result_id = r.id AND :metric <> 'latency')
ORDER BY r.started_at DESC, r.id DESC
LIMIT :window
""")


CALIBRATION_SQL = text("SELECT id, document->'performance'->'calibration' FROM results WHERE id = ANY(:ids) "
                       "AND document->'performance' ? 'calibration'")


def history(connection: Connection, result: StoredResult, metric: str, window: int) -> list[int]:
    """The baseline: ids of the latest ``window`` earlier results of the point (see the module's doc), latest first.
    An acknowledgement of this very result does not move its own baseline (detecting it again finds the same,
    acknowledged, change)."""
    return list(connection.execute(HISTORY_SQL, {"point": result.point, "result": result.id,
                                                 "started": result.started_at,
                                                 "sweep": result.sweep_id, "metric": metric,
                                                 "window": window}).scalars())


def metrics(connection: Connection, result: StoredResult) -> list[str]:
    if result.mode == "performance":
        has = connection.execute(select(m.Sample.i).where(m.Sample.result_id == result.id).limit(1)).first()
        return ["latency"] if has else []
    has = connection.execute(select(m.Accuracy.result_id).where(m.Accuracy.result_id == result.id)).first()
    return ["top1", "top5"] if has else []


def compare(connection: Connection, result: StoredResult, metric: str, settings: Settings) -> Change | None:
    """Compare one result's metric with its history; None when it has no history."""
    baseline = history(connection, result, metric, settings.window)
    if not baseline:
        return None
    if metric == "latency":
        runs: dict[int, list[float]] = {i: [] for i in baseline}
        for result_id, seconds in connection.execute(
                select(m.Sample.result_id, m.Sample.seconds).where(m.Sample.result_id.in_(baseline))
                .order_by(m.Sample.result_id, m.Sample.i)):
            runs[result_id].append(seconds)
        new = list(connection.execute(select(m.Sample.seconds).where(m.Sample.result_id == result.id)
                                      .order_by(m.Sample.i)).scalars())
        calibrations = dict(connection.execute(CALIBRATION_SQL, {"ids": [*baseline, result.id]}).all())
        judged = judge([Run(runs[i], calibrations.get(i)) for i in baseline], Run(new, calibrations.get(result.id)),
                       settings.alpha, settings.min_effect)
        verdict, raw = judged.comparison, judged.raw
        wanted = verdict.verdict == SLOWER or (verdict.changed and settings.report_faster)
        return Change(old_value=raw.median_old, new_value=raw.median_new, ratio=verdict.ratio,
                      p_value=verdict.p_value, n_old=verdict.n_old, n_new=verdict.n_new,
                      change=verdict.verdict if wanted else None, baseline=baseline, threshold=judged.threshold,
                      judged=judged.judged, note=judged.summary() if judged.machine is not None else None)
    column = getattr(m.Accuracy, metric)
    old, n_old = connection.execute(select(column, m.Accuracy.n).where(m.Accuracy.result_id == baseline[0])).one()
    new, n_new = connection.execute(select(column, m.Accuracy.n).where(m.Accuracy.result_id == result.id)).one()
    change = None if new == old else ("lower" if new < old else "higher")
    return Change(old_value=old, new_value=new, ratio=new / old if old else None, p_value=None, n_old=n_old,
                  n_new=n_new, change=change, baseline=baseline[:1], threshold=None)
