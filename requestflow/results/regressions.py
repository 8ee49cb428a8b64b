"""Regression detection: every successful result of a sweep against its point's own history.

The comparison itself (history, latency, accuracy) is ``requestflow.results.regression_compare``.

**Acknowledging** a detected change (:func:`acknowledge`) accepts the level of its result as the point's new normal
for that metric: later results are compared with results from that one on, every detection of the point and
metric up to that result is marked acknowledged, and detections of later results that stored before the
acknowledgement are compared again with the new baseline (those that are the same step - no longer a change - are
acknowledged with it; a further step stays open).

Detecting is idempotent (one row per result and metric: detecting again stores nothing new) and all-or-nothing
(one transaction). Detect sweeps in the order they ran (the ``regression_check`` DAG does, one run at a time):
the baseline of a result skips earlier results already found to be regressions.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine

from requestflow.errors import UserError
from requestflow.results import models as m
from requestflow.results.query import read_only
from requestflow.results.regression_compare import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_EFFECT,
    DEFAULT_WINDOW,
    Compared,
    Settings,
    StoredResult,
    compare,
    find_sweep,
    metrics,
    sweep_results,
    variant_text,
)

# the columns `requestflow regressions` lists (the view regressions has more: library, cpu_affinity, ids...)
LIST_COLUMNS = ("id", "board", "model", "backend", "variant", "precision", "mode", "threads", "metric", "change",
                "old_value", "new_value", "ratio", "p_value", "sweep", "detected_at", "acknowledged", "ack_reason")


@dataclass(frozen=True)
class Finding(Compared):
    """A stored regression of one of the sweep's results (a row of the view ``regressions``; the values compared
    are ``Compared``'s)."""

    id: int
    board: str
    model: str
    backend: str
    variant: str
    precision: str
    mode: str
    threads: int
    metric: str
    change: str
    sweep: str | None
    acknowledged: bool
    point_id: str
    result_id: int
    baseline_result_ids: list[int]
    new: bool = False  # stored by this detection (else by an earlier one)

    @property
    def point(self) -> str:
        variant = variant_text(self.variant)
        variant = f" [{variant}]" if variant else ""
        return (f"{self.board}: {self.model} {self.backend}{variant} {self.precision} {self.mode} "
                f"(threads {self.threads})")

    def describe(self) -> str:
        """One line: ``#3 local: mobilenet-v1-0.25-128 tflite uint8 performance (threads 1): latency slower,
        median 0.567 ms -> 0.680 ms (x1.200, p = 3.2e-40, 800 vs 200 samples)``."""
        if self.metric == "latency":
            change = (f"median {self.old_value * 1e3:.4g} ms -> {self.new_value * 1e3:.4g} ms "
                      f"(x{self.ratio:.3f}, p = {self.p_value:.2g}, {self.n_old} vs {self.n_new} samples)")
        else:
            change = f"{self.old_value:.4f} -> {self.new_value:.4f} on {self.n_new} images"
        return f"#{self.id} {self.point}: {self.metric} {self.change}, {change}"

    def as_dict(self) -> dict:
        return {**{column: getattr(self, column) for column in FINDING_COLUMNS}, "new": self.new,
                "description": self.describe()}


@dataclass
class DetectionReport:
    sweep: str
    settings: Settings
    checked: int = 0  # (result, metric) pairs compared with a history
    unchanged: int = 0
    no_history: list[str] = field(default_factory=list)  # "point: metric" without an earlier result to compare
    stored: int = 0  # regressions stored by this detection
    findings: list[Finding] = field(default_factory=list)  # every regression of its results, stored now or before
    calibrated: list[str] = field(default_factory=list)  # "point: latency ... calibrated: ...": judged calibrated

    @property
    def unacknowledged(self) -> list[Finding]:
        return [f for f in self.findings if not f.acknowledged]

    def summary(self) -> str:
        open_ = self.unacknowledged
        head = (f"sweep {self.sweep}: {self.checked} metric(s) compared with their history, {self.unchanged} "
                f"unchanged, {len(self.no_history)} without history; {len(self.findings)} regression(s) "
                f"({self.stored} new), {len(open_)} unacknowledged")
        lines = [head] + [f"  {'' if f.acknowledged else 'OPEN '}{f.describe()}" for f in self.findings]
        if self.calibrated:
            lines.append(f"{len(self.calibrated)} latency comparison(s) judged on calibrated samples (the machine's "
                         "own speed moved):")
            lines += [f"  {note}" for note in self.calibrated]
        if open_:
            lines.append("acknowledge a known step change with: requestflow regressions ack ID --reason TEXT")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"sweep": self.sweep, "settings": self.settings.__dict__, "checked": self.checked,
                "unchanged": self.unchanged, "no_history": self.no_history, "stored": self.stored,
                "calibrated": self.calibrated,
                "findings": [f.as_dict() for f in self.findings]}


def detect(engine: Engine, sweep: str, window: int = DEFAULT_WINDOW, alpha: float = DEFAULT_ALPHA,
           min_effect: float = DEFAULT_MIN_EFFECT, report_faster: bool = False) -> DetectionReport:
    """Compare every successful result of the sweep ``sweep`` (its run id) with its point's history and store the
    changes found (regression_detections). Idempotent; one transaction. The report lists every regression of the
    sweep's results, including those stored by an earlier detection (and whether each is acknowledged)."""
    settings = Settings(window=window, alpha=alpha, min_effect=min_effect, report_faster=report_faster)
    report = DetectionReport(sweep=sweep, settings=settings)
    new_ids: set[int] = set()
    with engine.begin() as connection:
        sweep_pk = find_sweep(connection, sweep)
        results = sweep_results(connection, sweep_pk)
        for result in results:
            for metric in metrics(connection, result):
                change = compare(connection, result, metric, settings)
                if change is None:
                    report.no_history.append(f"{result.label}: {metric}")
                    continue
                report.checked += 1
                if change.judged == "calibrated":
                    report.calibrated.append(f"{result.label}: {change.note}")
                if change.change is None:
                    report.unchanged += 1
                    continue
                stored = connection.execute(insert(m.RegressionDetection).values(
                    point_id=result.point, result_id=result.id, metric=metric, change=change.change,
                    baseline_result_ids=change.baseline, old_value=change.old_value, new_value=change.new_value,
                    ratio=change.ratio, p_value=change.p_value, n_old=change.n_old, n_new=change.n_new,
                    alpha=settings.alpha if metric == "latency" else None, threshold=change.threshold,
                ).on_conflict_do_nothing(index_elements=["result_id", "metric"])
                    .returning(m.RegressionDetection.id)).scalar()
                if stored is not None:
                    new_ids.add(stored)
        report.stored = len(new_ids)
        report.findings = findings(connection, [r.id for r in results], new_ids)
    return report


FINDING_COLUMNS = ("id", "board", "model", "backend", "variant", "precision", "mode", "threads", "metric", "change",
                   "old_value", "new_value", "ratio", "p_value", "n_old", "n_new", "sweep", "acknowledged",
                   "point_id", "result_id", "baseline_result_ids")


def findings(connection: Connection, result_ids: list[int], new_ids: set[int]) -> list[Finding]:
    rows = connection.execute(text(f"SELECT {', '.join(FINDING_COLUMNS)} FROM regressions "
                                   "WHERE result_id = ANY(:ids) ORDER BY board, model, backend, mode, metric, id"),
                              {"ids": result_ids}).mappings()
    return [Finding(**row, new=row["id"] in new_ids) for row in rows]


@dataclass
class AckReport:
    ack_id: int
    regression_id: int
    metric: str
    point: str
    acknowledged: list[int]  # regressions of the point and metric up to the accepted result (the given one too)
    silenced: list[int]  # later regressions that are no change against the new baseline: the same step
    still_open: list[int]  # later regressions that still are a change: a further step

    def summary(self) -> str:
        lines = [f"regression #{self.regression_id} acknowledged (ack #{self.ack_id}): {self.point}: its result's "
                 f"{self.metric} is the new baseline from now on"]
        if len(self.acknowledged) > 1:
            lines.append("  earlier regressions of this point and metric acknowledged with it: "
                         + ", ".join(f"#{i}" for i in self.acknowledged if i != self.regression_id))
        if self.silenced:
            lines.append("  later regressions of the same step, acknowledged with it: "
                         + ", ".join(f"#{i}" for i in self.silenced))
        if self.still_open:
            lines.append("  later regressions still open (a further change against the new baseline): "
                         + ", ".join(f"#{i}" for i in self.still_open))
        return "\n".join(lines)


def acknowledge(engine: Engine, regression_id: int, reason: str, by: str | None = None,
                window: int = DEFAULT_WINDOW, alpha: float = DEFAULT_ALPHA,
                min_effect: float = DEFAULT_MIN_EFFECT) -> AckReport:
    """Acknowledge the regression ``regression_id`` as a known step change (``reason`` says why; ``by`` who,
    default the login name). See the module's doc for what it silences. One transaction."""
    settings = Settings(window=window, alpha=alpha, min_effect=min_effect)
    if isinstance(regression_id, bool) or not isinstance(regression_id, int):
        raise UserError(f"a regression id is a whole number, got {regression_id!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise UserError("a reason is needed to acknowledge a regression (what changed, e.g. 'new TFLite release: "
                        "XNNPACK off by default')")
    by = (by or "").strip() or _login()
    with engine.begin() as connection:
        D = m.RegressionDetection
        detection = connection.execute(
            select(D.id, D.point_id, D.metric, D.result_id, D.ack_id, m.Result.started_at)
            .join(m.Result, m.Result.id == D.result_id).where(D.id == regression_id).with_for_update(of=D)).first()
        if detection is None:
            raise UserError(f"no regression #{regression_id} (see `requestflow regressions --all`)")
        started_at = detection.started_at
        if detection.ack_id is not None:
            ack = connection.execute(select(m.RegressionAck.id, m.RegressionAck.acknowledged_by,
                                            m.RegressionAck.acknowledged_at, m.RegressionAck.reason)
                                     .where(m.RegressionAck.id == detection.ack_id)).one()
            raise UserError(f"regression #{regression_id} is already acknowledged (ack #{ack.id} by "
                            f"{ack.acknowledged_by} at {ack.acknowledged_at:%Y-%m-%d %H:%M}: {ack.reason})")
        ack_id = connection.execute(insert(m.RegressionAck).values(
            point_id=detection.point_id, metric=detection.metric, result_id=detection.result_id,
            reason=reason.strip(), acknowledged_by=by).returning(m.RegressionAck.id)).scalar_one()
        open_of_point = (select(m.RegressionDetection.id, m.Result.started_at, m.Result.id.label("result_id"),
                                m.Result.sweep_id, m.Point.mode)
                         .join(m.Result, m.Result.id == m.RegressionDetection.result_id)
                         .join(m.Point, m.Point.id == m.RegressionDetection.point_id)
                         .where(m.RegressionDetection.point_id == detection.point_id,
                                m.RegressionDetection.metric == detection.metric,
                                m.RegressionDetection.ack_id.is_(None)))
        up_to = [r.id for r in connection.execute(open_of_point.where(m.Result.started_at <= started_at)
                                                  .order_by(m.Result.started_at, m.RegressionDetection.id))]
        _set_ack(connection, up_to, ack_id)
        silenced, still_open = [], []
        for later in connection.execute(open_of_point.where(m.Result.started_at > started_at)
                                        .order_by(m.Result.started_at, m.RegressionDetection.id)).all():
            result = StoredResult(later.result_id, detection.point_id, later.sweep_id, later.started_at, later.mode, "")
            change = compare(connection, result, detection.metric, settings)
            if change is not None and change.change is not None:
                still_open.append(later.id)
            else:
                _set_ack(connection, [later.id], ack_id)
                silenced.append(later.id)
        point = findings(connection, [detection.result_id], set())[0].point
    return AckReport(ack_id=ack_id, regression_id=regression_id, metric=detection.metric, point=point,
                     acknowledged=up_to, silenced=silenced, still_open=still_open)


def _set_ack(connection: Connection, ids: list[int], ack_id: int) -> None:
    if ids:
        connection.execute(update(m.RegressionDetection).where(m.RegressionDetection.id.in_(ids))
                           .values(ack_id=ack_id))


def _login() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"


PAGE_COLUMNS = ("id", "board", "model", "backend", "variant", "precision", "mode", "threads", "metric", "change",
                "old_value", "new_value", "ratio", "p_value", "n_old", "n_new", "sweep", "detected_at", "point_id")


def open_regressions(engine: Engine, rows: list[dict]) -> list[dict]:
    """The unacknowledged regressions of the points of scoreboard ``rows`` (the scoreboard page's section), latest
    first, each with ``page_point_id``: the point id of its scoreboard row (whose page shows it) and ``text``: the
    change in words (``0.567 ms -> 0.680 ms (+19.7%, p = 3e-40)``)."""
    page = {row[key]: row["point_id"] for row in rows
            for key in ("performance_point_id", "accuracy_point_id", "point_id") if row.get(key)}
    if not page:
        return []
    columns, found = list_regressions(engine, point_ids=list(page), columns=PAGE_COLUMNS)
    out = []
    for values in found:
        row = dict(zip(columns, values, strict=True))
        if row["metric"] == "latency":
            row["text"] = (f"{row['old_value'] * 1e3:.4g} ms -> {row['new_value'] * 1e3:.4g} ms "
                           f"({(row['ratio'] - 1) * 100:+.1f}%, p = {row['p_value']:.2g})")
        else:
            row["text"] = f"{row['old_value']:.4f} -> {row['new_value']:.4f} ({row['n_new']} images)"
        row["variant_text"] = variant_text(row["variant"])
        row["page_point_id"] = page[row["point_id"]]
        out.append(row)
    return out


def list_regressions(engine: Engine, sweep: str | None = None, include_acknowledged: bool = False,
                     point_ids: list[str] | None = None,
                     columns: tuple[str, ...] = LIST_COLUMNS) -> tuple[list[str], list[tuple]]:
    """Rows of the view ``regressions``, latest first: unacknowledged ones only unless ``include_acknowledged``;
    only the sweep ``sweep`` (an unknown one is an error) or the points ``point_ids`` (hashes) when given."""
    clauses, parameters = [], {}
    if sweep is not None:
        with engine.connect() as connection:
            find_sweep(connection, sweep)
        clauses.append("sweep = %(sweep)s")
        parameters["sweep"] = sweep
    if not include_acknowledged:
        clauses.append("NOT acknowledged")
    if point_ids is not None:
        clauses.append("point_id = ANY(%(points)s)")
        parameters["points"] = list(point_ids)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return read_only(engine, f"SELECT {', '.join(columns)} FROM regressions {where} "
                             "ORDER BY detected_at DESC, id DESC", parameters)
