"""Replaying a stored point: which result to replay, and how the replay compares with it (issue #8).

``stored(engine, given)`` finds the point (a ``points.point_id`` or a unique prefix of it: its latest successful
result; or ``result:N``) and rebuilds that result's runner document exactly, raw samples and per-image predictions
included (``document_rebuild.rebuild``). The controller reruns the document's own command on the point's board
(``operators.replay_board``); ``compare(old, new)`` then says whether anything changed:

- the point's identity (``identity.identity``): a replay that ran something else (another library version, other
  weights) is said to be so, field by field, and its figures are shown but not judged;
- performance: the raw samples of both runs, by ``stats.compare_samples`` (Mann-Whitney U with a minimum effect);
  with a calibration on both sides (``requestflow.board.calibration``), judged calibrated where the machine's own
  speed moved significantly (``requestflow.results.calibrated``): the verdict says which;
- accuracy: top-1 and top-5 compared exactly, and every image's top-5 classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.identity import identity
from requestflow.results.query import read_only

HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 6


@dataclass
class StoredPoint:
    board: str
    point_id: str
    result_id: int
    document: dict
    board_kind: str


@dataclass
class ReplayReport:
    board: str
    point_id: str
    old: dict
    new: dict
    identity_changes: list[str] = field(default_factory=list)
    performance: object | None = None  # stats.Comparison: the one judged (calibrated or raw)
    calibration: object | None = None  # calibrated.Judged: raw, machine and calibrated comparisons
    accuracy: dict | None = None
    failed: str | None = None

    @property
    def same(self) -> bool:
        """True when the replay reproduced the stored result: the same point, no significant latency change, the
        same accuracy and predictions."""
        if self.failed or self.identity_changes:
            return False
        if self.performance is not None and self.performance.changed:
            return False
        return self.accuracy is None or self.accuracy["identical"]

    def verdict(self) -> str:
        if self.failed:
            return f"replay FAILED: {self.failed}"
        if self.identity_changes:
            return "not comparable: the replay ran another point (" + "; ".join(self.identity_changes) + ")"
        parts = []
        if self.calibration is not None and self.calibration.machine is not None:
            parts.append(self.calibration.summary())
        elif self.performance is not None:
            parts.append(f"latency {self.performance.verdict}")
        if self.accuracy is not None:
            parts.append("accuracy and predictions identical" if self.accuracy["identical"] else
                         f"accuracy CHANGED ({self.accuracy['changed_images']} image(s) with other predictions)")
        return "; ".join(parts)


def stored(engine: Engine, given: str) -> StoredPoint:
    """The result to replay: ``result:N``, or a point id (64 hex digits, or a unique prefix of at least
    ``MIN_PREFIX``) for its latest successful result."""
    from requestflow.results.document_rebuild import rebuild

    text = str(given).strip().lower()
    if text.startswith("result:"):
        number = text.removeprefix("result:")
        if not number.isdigit():
            raise UserError(f"{given!r}: expected result:N, N a result id")
        where, parameters = "r.id = %(r)s", {"r": int(number)}
    else:
        if not HEX.match(text) or len(text) < MIN_PREFIX:
            raise UserError(f"{given!r} is neither a point id (at least {MIN_PREFIX} hex digits of points.point_id, "
                            "as the scoreboard shows it) nor result:N")
        _, points = read_only(engine, "SELECT point_id FROM points WHERE left(point_id, %(n)s) = %(p)s "
                                      "ORDER BY point_id LIMIT 3", {"n": len(text), "p": text})
        if not points:
            raise UserError(f"no point id starts with {text!r}")
        if len(points) > 1:
            raise UserError(f"{text!r} is the start of several point ids ({', '.join(p[0][:16] for p in points)}"
                            "...): give more of it")
        where, parameters = ("r.id = (SELECT r2.id FROM results r2 JOIN points p2 ON p2.id = r2.point_id "
                             "WHERE p2.point_id = %(p)s AND r2.status = 'ok' ORDER BY r2.started_at DESC, r2.id DESC "
                             "LIMIT 1)"), {"p": points[0][0]}
    columns, rows = read_only(engine, "SELECT r.id, r.status, r.document, r.document_sha256, b.name, b.kind, "
                                      f"p.point_id FROM results r JOIN points p ON p.id = r.point_id JOIN boards b "
                                      f"ON b.id = p.board_id WHERE {where}", parameters)
    if not rows:
        raise UserError(f"{given}: no such result" if text.startswith("result:") else
                        f"point {text[:16]} has no successful result to replay")
    result_id, status, document, sha, board, kind, point_id = rows[0]
    if kind == "reference":
        raise UserError(f"point {point_id[:16]} is a published reference result (board {board}): nothing can "
                        "replay it")
    if status != "ok":
        raise UserError(f"result {result_id} failed: replay a successful result (its point's latest one)")
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        document = rebuild(cursor, result_id, document, board, sha)
    return StoredPoint(board=board, point_id=point_id, result_id=result_id, document=document, board_kind=kind)


def compare(point: StoredPoint, new: dict, alpha: float = 0.01, min_effect: float = 0.05) -> ReplayReport:
    old = point.document
    report = ReplayReport(board=point.board, point_id=point.point_id, old=old, new=new)
    if new.get("status") != "ok":
        error = new.get("error") or {}
        report.failed = f"{error.get('type')}: {error.get('message')}"
        return report
    before, after = identity(point.board, old["context"]), identity(point.board, new["context"])
    report.identity_changes = [f"{key}: {_short(before.get(key))} -> {_short(after.get(key))}"
                               for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    if "performance" in old and "performance" in new:
        from requestflow.results.calibrated import judge, of

        report.calibration = judge([of(old)], of(new), alpha=alpha, min_effect=min_effect)
        report.performance = report.calibration.comparison
    if "accuracy" in old and "accuracy" in new:
        theirs = {p["file"]: [c for c, _ in p["top5"]] for p in old.get("predictions", [])}
        ours = {p["file"]: [c for c, _ in p["top5"]] for p in new.get("predictions", [])}
        changed = sorted(f for f in theirs.keys() | ours.keys() if theirs.get(f) != ours.get(f))
        a, b = old["accuracy"], new["accuracy"]
        report.accuracy = {"top1": (a["top1"], b["top1"]), "top5": (a["top5"], b["top5"]), "n": (a["n"], b["n"]),
                           "changed_images": len(changed), "examples": changed[:10],
                           "identical": not changed and (a["top1"], a["top5"], a["n"]) == (b["top1"], b["top5"],
                                                                                           b["n"])}
    return report


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render(report: ReplayReport) -> str:
    """The stored result and the replay side by side, then the verdict."""
    from requestflow.results.query import render as table

    old, new = report.old, report.new
    rows = [("started", old.get("started_at"), new.get("started_at")),
            ("requestflow", old.get("requestflow_version"), new.get("requestflow_version")),
            ("status", old.get("status"), new.get("status"))]
    if "performance" in old:
        p, q = old["performance"], new.get("performance") or {}
        for key in ("n", "min", "median", "p90", "mean", "stdev"):
            scale = 1 if key == "n" else 1e3
            rows.append((key if key == "n" else f"{key} (ms)", _number(p.get(key), scale), _number(q.get(key), scale)))
    if "accuracy" in old:
        a, b = old["accuracy"], new.get("accuracy") or {}
        rows += [(key, a.get(key), b.get(key)) for key in ("n", "top1", "top5")]
    lines = [f"replay of point {report.point_id[:16]} on board {report.board}",
             table(["", "stored", "replay"], rows, "table")]
    if report.performance is not None:
        judged = report.calibration
        if judged is not None and judged.machine is not None:
            lines += [f"latency raw: {judged.raw.describe()}", f"calibration: {judged.machine.describe()}",
                      f"latency calibrated: {judged.calibrated.describe()}"]
        lines.append(f"latency{' (judged ' + judged.judged + ')' if judged is not None else ''}: "
                     f"{report.performance.describe()} (alpha {report.performance.alpha}, minimum effect "
                     f"{report.performance.min_effect:.0%})")
    if report.accuracy is not None and not report.accuracy["identical"]:
        lines.append(f"images whose top-5 changed: {report.accuracy['changed_images']}"
                     + (f" (e.g. {', '.join(report.accuracy['examples'][:5])})" if report.accuracy["examples"] else ""))
    lines.append(("SAME: " if report.same else "DIFFERENT: ") + report.verdict())
    return "\n".join(lines)


def _number(value, scale: float):
    return None if value is None else round(value * scale, 4) if scale != 1 else value
