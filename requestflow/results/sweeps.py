"""What a sweep (one Airflow run) leaves in the results store besides result documents: the failures of points that
produced no document, each board's clock-pinning report, and the per-board tally its summary prints. Also the
resume check: is a point of this identity already stored with a successful result?"""

from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from requestflow.board.catalogue import point_label
from requestflow.results import models as m
from requestflow.results.load import upsert_board, upsert_sweep


def stored_ok(engine: Engine, point_id: str) -> int | None:
    """The id of the latest successful result of the point ``point_id``, or None."""
    with engine.connect() as connection:
        return connection.execute(
            select(m.Result.id).join(m.Point, m.Point.id == m.Result.point_id)
            .where(m.Point.point_id == point_id, m.Result.status == "ok")
            .order_by(m.Result.started_at.desc()).limit(1)).scalar()


def record_failure(engine: Engine, sweep: str, dag_id: str | None, board: str, point: dict, error_type: str,
                   message: str, attempts: int) -> None:
    with engine.begin() as connection:
        connection.execute(insert(m.PointFailure).values(
            sweep_id=upsert_sweep(connection, sweep, dag_id), board_id=upsert_board(connection, board), point=point,
            error_type=error_type, message=message, attempts=attempts))


def record_sweep_info(engine: Engine, sweep: str, dag_id: str | None, board: str, key: str, value) -> None:
    """Set ``info -> boards -> <board> -> <key>`` of the sweep (e.g. the clocks report of a board)."""
    with engine.begin() as connection:
        sweep_id = upsert_sweep(connection, sweep, dag_id)
        connection.execute(update(m.Sweep).where(m.Sweep.id == sweep_id).values(info=text(
            "jsonb_set(jsonb_set(info, '{boards}', COALESCE(info->'boards', '{}'::jsonb)), "
            "ARRAY['boards', :board], COALESCE(info->'boards'->:board, '{}'::jsonb) || "
            "jsonb_build_object(:key, CAST(:value AS jsonb)))"
        ).bindparams(board=board, key=key, value=_json(value))))


def build_label(point: dict, build: str | None = None) -> str:
    """``point_label``, followed by the name of the ArmCL build the point ran on when ``build`` is given (a sweep of
    several builds: their points' labels are otherwise the same)."""
    label = point_label(point)
    return f"{label} {build}" if build else label


def sweep_tally(engine: Engine, sweep: str, build_names: dict[str, str] | None = None) -> dict[str, dict]:
    """Per board: the points with a result ``ok``, with a ``failed`` result and with ``no_result`` (stored failures
    without a document); each a list of ``{"point": label, "error": ...}``, the label ``point_label``'s. With
    ``build_names`` (ArmCL build key -> the build's name in the sweep; a sweep of several builds), an armcl point's
    label ends with its build's name (``build_label``): a result's found by the build key it recorded, a stored
    failure's by its planned point's ``armcl_build``."""
    tally: dict[str, dict] = {}
    named = build_names is not None

    def board(name: str) -> dict:
        return tally.setdefault(name, {"ok": [], "failed": [], "no_result": []})

    with engine.connect() as connection:
        rows = connection.execute(
            select(m.Board.name, m.Point.model_id, m.Point.backend, m.Point.mode, m.Point.variant, m.Result.status,
                   m.Error.type, m.Error.message, m.Point.identity["library_build"]["runtime"].astext,
                   m.Point.identity["library_build"]["build"]["key"].astext)
            .select_from(m.Result).join(m.Sweep, m.Sweep.id == m.Result.sweep_id)
            .join(m.Point, m.Point.id == m.Result.point_id).join(m.Board, m.Board.id == m.Point.board_id)
            .outerjoin(m.Error, m.Error.result_id == m.Result.id)
            .where(m.Sweep.run_id == sweep).order_by(m.Board.name, m.Point.model_id, m.Point.backend, m.Point.mode))
        for name, model, backend, mode, variant, status, error_type, message, runtime, build_key in rows:
            label = build_label({"model": model, "backend": backend, "mode": mode, "variant": variant,
                                 "runtime": runtime},  # a point's runtime spec (issue #17) is part of its name
                                (build_names or {}).get(build_key))
            board(name)["ok" if status == "ok" else "failed"].append(
                {"point": label, "error": None if status == "ok" else f"{error_type}: {message}"})
        rows = connection.execute(
            select(m.Board.name, m.PointFailure.point, m.PointFailure.error_type, m.PointFailure.message)
            .join(m.Sweep, m.Sweep.id == m.PointFailure.sweep_id).join(m.Board, m.Board.id == m.PointFailure.board_id)
            .where(m.Sweep.run_id == sweep).order_by(m.Board.name, m.PointFailure.id))
        for name, point, error_type, message in rows:
            label = build_label(point, point.get("armcl_build") if named else None)
            board(name)["no_result"].append({"point": label, "error": f"{error_type}: {message}"})
    return tally


def result_build_keys(engine: Engine, result_ids: list[int]) -> dict[int, str | None]:
    """The ArmCL build key each result's point recorded (None for other backends), by result id."""
    if not result_ids:
        return {}
    with engine.connect() as connection:
        return dict(connection.execute(
            select(m.Result.id, m.Point.identity["library_build"]["build"]["key"].astext)
            .join(m.Point, m.Point.id == m.Result.point_id).where(m.Result.id.in_(result_ids))).all())


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)
