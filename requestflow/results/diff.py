"""Misprediction diff: for two accuracy results of the same model, the images whose top-1 differs, with both
predictions -- what the ReQuEST-ASPLOS'18 paper did by hand for ArmCL 18.03 against TensorFlow 1.7 (its Table 3).

A side is an accuracy point (``points.point_id``, any unique prefix of at least 4 hex digits; its latest successful
result) or a result id (``result:N``, or a bare number that is not also a point prefix). Top-1 is the first of
each image's stored top-5 (``predictions.top5[1]``, ties already broken by the lower class by the runner); the
ground truth is the prediction's ``label`` (``val.txt``). Only the images both results classified are compared.
Every read goes through :func:`requestflow.results.query.read_only`.

Refused, with one clear line: a side that is not an accuracy point or result (a performance point names its
accuracy point), a failed result, results without per-image predictions (the published reference results),
different models, and results with no image in common.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.query import read_only

MIN_PREFIX = 4
HEX = re.compile(r"^[0-9a-f]+$")

SIDE_SQL = """
SELECT r.id AS result_id, r.status, p.point_id, p.mode, b.name AS board, p.backend, p.variant, lb.library,
       lb.version, p.precision, p.model_id AS model, p.weights_sha256,
       (SELECT count(*) FROM predictions pr WHERE pr.result_id = r.id) AS images,
       EXISTS (SELECT 1 FROM accuracy a WHERE a.result_id = r.id) AS has_accuracy
FROM results r
JOIN points p ON p.id = r.point_id
JOIN boards b ON b.id = p.board_id
JOIN library_builds lb ON lb.id = p.library_build_id
WHERE r.id = %(r)s
"""
SUMMARY_SQL = """
SELECT count(*) AS common,
       count(*) FILTER (WHERE a.top5[1] <> b.top5[1]) AS differing,
       count(*) FILTER (WHERE a.top5[1] = a.label) AS a_correct,
       count(*) FILTER (WHERE b.top5[1] = b.label) AS b_correct,
       count(*) FILTER (WHERE a.label <> b.label) AS truth_disagreements
FROM predictions a JOIN predictions b ON b.image = a.image
WHERE a.result_id = %(a)s AND b.result_id = %(b)s
"""
DIFFERING_SQL = """
SELECT a.image, a.label AS truth, b.label AS b_truth, a.top5[1] AS a_top1, a.scores[1] AS a_score,
       b.top5[1] AS b_top1, b.scores[1] AS b_score, a.top5 AS a_top5, b.top5 AS b_top5
FROM predictions a JOIN predictions b ON b.image = a.image
WHERE a.result_id = %(a)s AND b.result_id = %(b)s AND a.top5[1] <> b.top5[1]
ORDER BY a.image
"""


@dataclass
class Side:
    result_id: int
    point_id: str
    board: str
    backend: str
    variant: dict
    library: str | None
    version: str | None
    precision: str
    model: str
    weights_sha256: str
    images: int  # images with a prediction in this result
    top1_common: float | None = None  # top-1 over the images both sides classified

    def describe(self) -> str:
        variant = ",".join(f"{k}={v}" for k, v in sorted(self.variant.items()) if v is not None)
        return (f"{self.board} {self.backend} ({self.library or '?'} {self.version or '?'}"
                f"{', ' + variant if variant else ''}) {self.precision} {self.model}, weights "
                f"{self.weights_sha256[:12]}")


@dataclass
class Difference:
    image: str
    truth: int
    truth_name: str | None
    a_top1: int
    a_name: str | None
    a_score: float
    b_top1: int
    b_name: str | None
    b_score: float
    a_top5: list[int]
    b_top5: list[int]
    b_truth: int | None = None  # only when b's ground truth for this image differs from a's


@dataclass
class Diff:
    a: Side
    b: Side
    common: int
    differences: list[Difference] = field(default_factory=list)
    truth_disagreements: int = 0

    @property
    def agreement(self) -> float:
        return (self.common - len(self.differences)) / self.common

    def summary(self) -> str:
        lines = [f"a: result {self.a.result_id}, point {self.a.point_id[:12]}: {self.a.describe()}",
                 f"b: result {self.b.result_id}, point {self.b.point_id[:12]}: {self.b.describe()}",
                 f"{self.common} images in common (a only: {self.a.images - self.common}, b only: "
                 f"{self.b.images - self.common}); top-1 differs on {len(self.differences)}, agreement "
                 f"{self.agreement * 100:.2f}%; top-1 over them: a {self.a.top1_common:.4f}, "
                 f"b {self.b.top1_common:.4f}"]
        if self.truth_disagreements:
            lines.append(f"WARNING: the two results' ground truth differs on {self.truth_disagreements} images "
                         "(different val.txt?)")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"a": asdict(self.a), "b": asdict(self.b), "common": self.common,
                "differing": len(self.differences), "agreement": self.agreement,
                "truth_disagreements": self.truth_disagreements,
                "differences": [asdict(d) for d in self.differences]}


def mispredictions(engine: Engine, a: str | int, b: str | int) -> Diff:
    """The images both sides classified whose top-1 differs, with both predictions."""
    side_a, side_b = _side(engine, a, "A"), _side(engine, b, "B")
    if side_a.model != side_b.model:
        raise UserError(f"A and B are different models ({side_a.model} and {side_b.model}): their predictions are "
                        "not comparable image by image")
    parameters = {"a": side_a.result_id, "b": side_b.result_id}
    columns, rows = read_only(engine, SUMMARY_SQL, parameters)
    summary = dict(zip(columns, rows[0], strict=True))
    if not summary["common"]:
        raise UserError(f"A (result {side_a.result_id}, {side_a.images} images) and B (result {side_b.result_id}, "
                        f"{side_b.images} images) have no image in common")
    side_a.top1_common = summary["a_correct"] / summary["common"]
    side_b.top1_common = summary["b_correct"] / summary["common"]
    names = class_names()
    columns, rows = read_only(engine, DIFFERING_SQL, parameters)
    differences = []
    for values in rows:
        r = dict(zip(columns, values, strict=True))
        differences.append(Difference(
            image=r["image"], truth=r["truth"], truth_name=_name(names, r["truth"]), a_top1=r["a_top1"],
            a_name=_name(names, r["a_top1"]), a_score=float(r["a_score"]), b_top1=r["b_top1"],
            b_name=_name(names, r["b_top1"]), b_score=float(r["b_score"]), a_top5=list(r["a_top5"]),
            b_top5=list(r["b_top5"]), b_truth=r["b_truth"] if r["b_truth"] != r["truth"] else None))
    return Diff(a=side_a, b=side_b, common=summary["common"], differences=differences,
                truth_disagreements=summary["truth_disagreements"])


def _side(engine: Engine, given: str | int, which: str) -> Side:
    result_id = _result_id(engine, given, which)
    columns, rows = read_only(engine, SIDE_SQL, {"r": result_id})
    if not rows:
        raise UserError(f"{which}: no result {result_id}")
    r = dict(zip(columns, rows[0], strict=True))
    if r["mode"] != "accuracy" or not r["has_accuracy"]:
        raise UserError(f"{which}: result {result_id} is a {r['mode']} result ({r['status']}), not an accuracy one")
    if r["status"] != "ok":
        raise UserError(f"{which}: result {result_id} failed: it has no predictions")
    if not r["images"]:
        raise UserError(f"{which}: result {result_id} (board {r['board']}) has no per-image predictions (the "
                        "published reference results have none): it cannot be compared image by image")
    return Side(result_id=r["result_id"], point_id=r["point_id"], board=r["board"], backend=r["backend"],
                variant=r["variant"] or {}, library=r["library"], version=r["version"], precision=r["precision"],
                model=r["model"], weights_sha256=r["weights_sha256"], images=r["images"])


def _result_id(engine: Engine, given: str | int, which: str) -> int:
    """The result a side names: ``result:N``, a point id or prefix (its latest successful accuracy result), or a
    bare result number."""
    if isinstance(given, int):
        return given
    text = str(given).strip().lower()
    if text.startswith("result:"):
        number = text.removeprefix("result:")
        if not number.isdigit():
            raise UserError(f"{which}: {given!r}: expected result:N with N a result id")
        return int(number)
    points = _points(engine, text) if HEX.match(text) and len(text) >= MIN_PREFIX else []
    if text.isdigit():
        _, found = read_only(engine, "SELECT 1 FROM results WHERE id = %(r)s", {"r": int(text)})
        if found and points:
            raise UserError(f"{which}: {given!r} is both result {text} and the start of point {points[0][0][:16]}: "
                            f"write result:{text}, or more of the point id")
        if found:
            return int(text)
        if not points:
            raise UserError(f"{which}: no result {text}"
                            + (f", and no point id starts with {text!r}" if len(text) >= MIN_PREFIX else ""))
    if not HEX.match(text) or len(text) < MIN_PREFIX:
        raise UserError(f"{which}: {given!r} is neither a point id (at least {MIN_PREFIX} hex digits of "
                        "points.point_id) nor a result id (result:N)")
    if not points:
        raise UserError(f"{which}: no point id starts with {text!r}")
    if len(points) > 1:
        raise UserError(f"{which}: {text!r} is the start of {len(points)} point ids "
                        f"({', '.join(p[0][:16] for p in points[:3])}...): give more of it")
    point_id, mode, key, row_id = points[0]
    if mode != "accuracy":
        _, accuracy = read_only(engine, "SELECT point_id FROM points WHERE accuracy_key = %(k)s AND mode = "
                                        "'accuracy' ORDER BY point_id", {"k": key})
        hint = (f"; the accuracy point of the same configuration is {accuracy[0][0]}" if accuracy else
                "; its configuration has no accuracy point")
        raise UserError(f"{which}: point {point_id[:16]} is a {mode} point, not an accuracy point{hint}")
    _, latest = read_only(engine, "SELECT r.id FROM results r JOIN accuracy a ON a.result_id = r.id "
                                  "WHERE r.point_id = %(p)s AND r.status = 'ok' "
                                  "ORDER BY r.started_at DESC, r.id DESC LIMIT 1", {"p": row_id})
    if not latest:
        raise UserError(f"{which}: accuracy point {point_id[:16]} has no successful result")
    return latest[0][0]


def _points(engine: Engine, prefix: str) -> list[tuple]:
    _, rows = read_only(engine, "SELECT point_id, mode, accuracy_key, id FROM points "
                                "WHERE left(point_id, %(n)s) = %(p)s ORDER BY point_id LIMIT 3",
                        {"n": len(prefix), "p": prefix})
    return rows


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...] | None:
    """ImageNet class names (``synset_words.txt`` of the shared data folder), or None when it is not here."""
    from requestflow.board.dataset import read_class_names
    from requestflow.board.files import shared_data_dir

    data = shared_data_dir()
    path = data / "imagenet" / "synset_words.txt" if data else None
    if path is None or not path.is_file():
        return None
    try:
        return read_class_names(path)
    except UserError:
        return None


def _name(names: tuple[str, ...] | None, label: int) -> str | None:
    return names[label] if names and 0 <= label < len(names) else None


def _cell(label: int, name: str | None, score: float | None = None) -> str:
    text = f"{label} {name}" if name else str(label)
    return f"{text} ({score:.4f})" if score is not None else text


ROW_COLUMNS = ("image", "truth", "truth_name", "a_top1", "a_name", "a_score", "b_top1", "b_name", "b_score")


def render(diff: Diff, fmt: str) -> str:
    """The diff as ``table`` (summary, then one line per differing image), ``csv`` (the differing images) or
    ``json`` (everything)."""
    if fmt == "json":
        return json.dumps(diff.as_dict(), indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(ROW_COLUMNS)
        for d in diff.differences:
            writer.writerow([getattr(d, c) for c in ROW_COLUMNS])
        return out.getvalue().rstrip("\n")
    from requestflow.results.query import render as render_table

    rows = [(d.image, _cell(d.truth, d.truth_name) + (f" (b: {d.b_truth})" if d.b_truth is not None else ""),
             ("= " if d.a_top1 == d.truth else "  ") + _cell(d.a_top1, d.a_name, d.a_score),
             ("= " if d.b_top1 == d.truth else "  ") + _cell(d.b_top1, d.b_name, d.b_score))
            for d in diff.differences]
    table = render_table(["image", "truth", "a top-1 (score)", "b top-1 (score)"], rows, "table")
    return f"{diff.summary()}\n('=' marks a correct top-1)\n{table}"


def compare_choices(engine: Engine, accuracy_point_id: str) -> dict:
    """For the point page: whether this accuracy point's latest result has predictions, and the other accuracy
    points of the same model whose latest successful result has some (each with the scoreboard row it belongs to)."""
    _, own = read_only(engine, """
        SELECT EXISTS (SELECT 1 FROM predictions pr WHERE pr.result_id = (
            SELECT r.id FROM results r JOIN accuracy a ON a.result_id = r.id
            WHERE r.point_id = p.id AND r.status = 'ok' ORDER BY r.started_at DESC, r.id DESC LIMIT 1)), p.model_id
        FROM points p WHERE p.point_id = %(p)s AND p.mode = 'accuracy'""", {"p": accuracy_point_id})
    if not own:
        return {"has_predictions": False, "candidates": []}
    has_predictions, model = own[0]
    columns, rows = read_only(engine, """
        WITH latest AS (
            SELECT DISTINCT ON (r.point_id) r.id, r.point_id
            FROM results r JOIN points p ON p.id = r.point_id JOIN accuracy a ON a.result_id = r.id
            WHERE r.status = 'ok' AND p.mode = 'accuracy' AND p.model_id = %(m)s
            ORDER BY r.point_id, r.started_at DESC, r.id DESC)
        SELECT p.point_id, b.name AS board, p.backend, p.variant::text AS variant, lb.library, lb.version,
               p.precision, a.top1, a.n AS images, s.point_id AS scoreboard_point_id, s.variant_label
        FROM latest l
        JOIN points p ON p.id = l.point_id
        JOIN accuracy a ON a.result_id = l.id
        JOIN boards b ON b.id = p.board_id
        JOIN library_builds lb ON lb.id = p.library_build_id
        LEFT JOIN scoreboard s ON s.accuracy_point_id = p.point_id
        WHERE p.point_id <> %(p)s AND EXISTS (SELECT 1 FROM predictions pr WHERE pr.result_id = l.id)
        ORDER BY b.name, p.backend, lb.version, p.variant::text, p.precision, p.point_id""",
                              {"m": model, "p": accuracy_point_id})
    return {"has_predictions": bool(has_predictions),
            "candidates": [dict(zip(columns, row, strict=True)) for row in rows]}


def accuracy_point_of(engine: Engine, scoreboard_point_id: str) -> str | None | bool:
    """The accuracy point of a scoreboard row: its id, None when the row has no accuracy, False when no such row."""
    _, rows = read_only(engine, "SELECT accuracy_point_id FROM scoreboard WHERE point_id = %(p)s "
                                "ORDER BY largest_image_set DESC", {"p": scoreboard_point_id})
    return rows[0][0] if rows else False


def scoreboard_point_of(engine: Engine, accuracy_point_id: str) -> str | None:
    """The scoreboard row (its point id) that shows this accuracy point, if any."""
    _, rows = read_only(engine, "SELECT point_id FROM scoreboard WHERE accuracy_point_id = %(p)s",
                        {"p": accuracy_point_id})
    return rows[0][0] if rows else None
