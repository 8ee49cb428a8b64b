"""``requestflow import``: an archive (``requestflow.results.archive_format``) checked whole
(``requestflow.results.archive_reader``), then written in one transaction."""


from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine

from requestflow.board.files import canonical_json
from requestflow.errors import UserError
from requestflow.results import models as m
from requestflow.results.archive_format import (
    BOARD_FIGURES,
    LOAD_BATCH_BYTES,
    ImportReport,
    plain,
)
from requestflow.results.archive_reader import Archive
from requestflow.results.load import keys_of_boards, load_documents, update_scoreboard

# -------------------------------------------------------------------------------------------------------------
# Import


def import_archive(engine: Engine, path: str | os.PathLike, update_boards: bool = False) -> ImportReport:
    """Import the archive ``path``: everything is checked first, then written in one transaction; an archive
    already imported changes nothing."""
    with Archive(Path(path)) as archive:
        archive.check()  # everything, before anything is written
        report = ImportReport()
        with engine.begin() as connection:
            # one import at a time: point failures have no natural key, and are deduplicated by content
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('requestflow archive import'))"))
            _boards(connection, archive, update_boards, report)
            board_ids = dict(connection.execute(select(m.Board.name, m.Board.id)).all())
            _dimensions(connection, archive, board_ids)
            sweep_ids = _sweeps(connection, archive, report)
            _results(connection, archive, report)
            _failures(connection, archive, board_ids, sweep_ids, report)
            # the rows of the boards whose figures or caveats changed (a load updates the rows it stores)
            update_scoreboard(connection, keys_of_boards(connection, report.boards_updated))
    return report


def _boards(connection: Connection, archive: Archive, update_boards: bool, report: ImportReport) -> bool:
    """Insert the boards the database lacks; settle those it has (see the module's decisions). Whether any
    board's row changed."""
    existing = {row.name: row for row in connection.execute(select(
        m.Board.name, m.Board.info, *(getattr(m.Board, f) for f in BOARD_FIGURES)).with_for_update())}
    conflicts, changes = [], {}
    for board in archive.tables["boards"]:
        name, values = board["name"], archive.board_values(board)
        here = existing.get(name)
        if here is None:
            connection.execute(insert(m.Board).values(name=name, info=board["info"], **values))
            report.boards_added.append(name)
            continue
        change = {}
        for key in BOARD_FIGURES:
            ours, theirs = getattr(here, key), values[key]
            if theirs is None or ours == theirs:
                continue
            if ours is None or update_boards:
                change[key] = theirs
            else:
                conflicts.append(f"board {name}: {key} {plain(ours)} here, {plain(theirs)} in the archive")
        info = dict(here.info or {})
        for key, value in board["info"].items():
            if key not in info or (update_boards and info[key] != value):
                info[key] = value
            elif info[key] != value and (here.read_only or values["read_only"]):  # a reference board's source
                conflicts.append(f"board {name} (read-only): info.{key} differs here and in the archive")
            elif info[key] != value:
                report.warnings.append(f"board {name}: info.{key} differs from the archive's; this database's "
                                       f"is kept")
        if info != (here.info or {}):
            change["info"] = info
        if change:
            changes[name] = change
    if conflicts:
        raise UserError(f"{archive.path}: boards differ in this database: {'; '.join(conflicts)}. Refused, nothing "
                        f"imported: import with --update-boards to take the archive's figures, or set them with "
                        f"`requestflow board`")
    for name, change in changes.items():
        connection.execute(update(m.Board).where(m.Board.name == name).values(**change))
        report.boards_updated.append(name)
    return bool(report.boards_added or report.boards_updated)


def _dimensions(connection: Connection, archive: Archive, board_ids: dict[str, int]) -> None:
    """Rows the loader would otherwise make from the first document it sees (which may differ from the source's
    first: a snapshot's machine, a dataset's path, the weights' info): the source's rows, unless the database
    already has one with the same key (kept, as the loader keeps it)."""
    tables = archive.tables

    def put(model, rows: list[dict], key: str) -> None:
        held = set(connection.execute(text(f"SELECT {key} FROM {model.__tablename__} WHERE {key} = ANY(:keys)"),
                                      {"keys": [row[key] for row in rows]}).scalars()) if rows else set()
        # ON CONFLICT as well: a load running beside the import may add the same key meanwhile
        for chunk in _chunks([row for row in rows if row[key] not in held]):
            connection.execute(insert(model).values(chunk).on_conflict_do_nothing(index_elements=[key]))

    put(m.Model, tables["models"], "id")
    put(m.Weights, tables["weights"], "sha256")
    put(m.Dataset, tables["datasets"], "sha256")
    put(m.LibraryBuild, tables["builds"], "sha256")
    put(m.PlatformSnapshot, [{**{k: v for k, v in s.items() if k != "board"}, "board_id": board_ids[s["board"]],
                              "created_at": dt.datetime.fromisoformat(s["created_at"])}
                             for s in tables["snapshots"]], "sha256")


def _sweeps(connection: Connection, archive: Archive, report: ImportReport) -> dict[str, int]:
    existing = {row.run_id: row for row in connection.execute(select(m.Sweep.run_id, m.Sweep.dag_id, m.Sweep.info)
                                                              .with_for_update())}
    for sweep in archive.tables["sweeps"]:
        run_id, here = sweep["run_id"], existing.get(sweep["run_id"])
        if here is None:
            connection.execute(insert(m.Sweep).values(run_id=run_id, dag_id=sweep["dag_id"], info=sweep["info"],
                                                      created_at=dt.datetime.fromisoformat(sweep["created_at"])))
            report.sweeps_added.append(run_id)
            continue
        change = {}
        if here.dag_id is None and sweep["dag_id"] is not None:
            change["dag_id"] = sweep["dag_id"]
        elif sweep["dag_id"] not in (None, here.dag_id):
            report.warnings.append(f"sweep {run_id}: DAG {here.dag_id} here, {sweep['dag_id']} in the archive; "
                                   f"this database's is kept")
        info = _fill(here.info or {}, sweep["info"], f"sweep {run_id}: info", report.warnings)
        if info != (here.info or {}):
            change["info"] = info
        if change:
            connection.execute(update(m.Sweep).where(m.Sweep.run_id == run_id).values(**change))
    return dict(connection.execute(select(m.Sweep.run_id, m.Sweep.id)).all())


def _fill(ours: dict, theirs: dict, where: str, warnings: list[str]) -> dict:
    """``ours`` with the keys only ``theirs`` has added (recursively); a value both have and differ on stays ours."""
    out = dict(ours)
    for key, value in theirs.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _fill(out[key], value, f"{where}.{key}", warnings)
        elif out[key] != value:
            warnings.append(f"{where}.{key} differs from the archive's; this database's is kept")
    return out


class _InTransaction:
    """What ``load_documents`` needs of an Engine (``begin()``), inside the import's transaction: each load is a
    savepoint of it, so that the whole import commits, or rolls back, as one."""

    def __init__(self, connection: Connection):
        self.connection = connection

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.connection.begin_nested():
            yield self.connection


def _results(connection: Connection, archive: Archive, report: ImportReport) -> None:
    entries = archive.tables["results"]
    stored = set(connection.execute(text("SELECT document_sha256 FROM results WHERE document_sha256 = ANY(:s)"),
                                    {"s": [e["document_sha256"] for e in entries]}).scalars())
    new = [e for e in entries if e["document_sha256"] not in stored]
    report.unchanged = len(entries) - len(new)
    if not new:
        return
    # a read-only (reference) board takes the results its archive carries: unlocked for this transaction only
    locked = list(connection.execute(select(m.Board.name).where(
        m.Board.name.in_({e["board"] for e in new}), m.Board.read_only.is_(True))).scalars())
    if locked:
        connection.execute(update(m.Board).where(m.Board.name.in_(locked)).values(read_only=False))
    dag_ids = {s["run_id"]: s["dag_id"] for s in archive.tables["sweeps"]}
    target = _InTransaction(connection)
    # in the source's load order (the scoreboard breaks ties between results started at the same time by load
    # order), consecutive documents of the same board and sweep in one call
    batch, size = [], 0
    members = archive.manifest["members"]

    def flush() -> None:
        nonlocal batch, size
        if batch:
            board, sweep = batch[0][0]["board"], batch[0][0]["sweep"]
            loaded = load_documents(target, [(f"documents/{e['document_sha256']}.json", d) for e, d in batch],
                                    board, sweep, dag_ids.get(sweep))
            report.loaded += len(loaded.loaded)
            report.unchanged += len(loaded.unchanged)
        batch, size = [], 0

    for entry, document in archive.documents(new, checked=True):
        if batch and ((batch[0][0]["board"], batch[0][0]["sweep"]) != (entry["board"], entry["sweep"])
                      or size > LOAD_BATCH_BYTES):
            flush()
        batch.append((entry, document))
        size += members[f"documents/{entry['document_sha256']}.json"]["bytes"]
    flush()
    if locked:
        connection.execute(update(m.Board).where(m.Board.name.in_(locked)).values(read_only=True))
    missing = len(new) - connection.execute(text("SELECT count(*) FROM results WHERE document_sha256 = ANY(:s)"),
                                            {"s": [e["document_sha256"] for e in new]}).scalar_one()
    if missing:  # the loader hashes the document as the archive names it: anything else is a bug
        raise UserError(f"{archive.path}: {missing} document(s) were not stored under their archived hash; "
                        f"nothing imported")


def _failures(connection: Connection, archive: Archive, board_ids: dict[str, int], sweep_ids: dict[str, int],
              report: ImportReport) -> None:
    """Point failures have no natural key: the archive's are added unless the database holds as many identical
    ones (same sweep, board, point, error, attempts and time)."""
    failures = archive.tables["failures"]
    if not failures:
        return

    def key(sweep: str, board: str, point: dict, error_type: str, message: str, attempts: int, failed_at) -> tuple:
        return sweep, board, canonical_json(point), error_type, message, attempts, failed_at

    held = collections.Counter(key(*row) for row in connection.execute(text(
        "SELECT sw.run_id, b.name, pf.point, pf.error_type, pf.message, pf.attempts, pf.failed_at "
        "FROM point_failures pf JOIN sweeps sw ON sw.id = pf.sweep_id JOIN boards b ON b.id = pf.board_id "
        "WHERE sw.run_id = ANY(:sweeps)"), {"sweeps": sorted({f["sweep"] for f in failures})}))
    rows = []
    for f in failures:
        failed_at = dt.datetime.fromisoformat(f["failed_at"])
        k = key(f["sweep"], f["board"], f["point"], f["error_type"], f["message"], f["attempts"], failed_at)
        if held[k]:
            held[k] -= 1
            continue
        rows.append({"sweep_id": sweep_ids[f["sweep"]], "board_id": board_ids[f["board"]], "point": f["point"],
                     "error_type": f["error_type"], "message": f["message"], "attempts": f["attempts"],
                     "failed_at": failed_at})
    for chunk in _chunks(rows):
        connection.execute(insert(m.PointFailure).values(chunk))
    report.failures_added = len(rows)


def _chunks(rows: list[dict], size: int = 1000) -> Iterator[list[dict]]:
    """Multi-row INSERTs of at most ``size`` rows (a statement takes at most 65,535 parameters)."""
    for start in range(0, len(rows), size):
        yield rows[start:start + size]
