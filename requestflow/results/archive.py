"""Export / import archives: everything about selected points, carried from one installation to another.

An archive is a zip of JSON members, each listed with its sha256 in ``manifest.json``:

- ``manifest.json``: ``format`` (``requestflow-archive``), ``format_version``, ``requestflow_version``,
  ``created_at``, ``source`` (a fingerprint of the source database and its schema revision), ``filters``,
  ``counts`` and ``members`` (name -> ``{"sha256", "bytes"}``; every other member is listed there).
- ``documents/<document_sha256>.json``: each result's runner document exactly as the runner wrote it, rebuilt from
  ``results.document`` (the document minus its bulky arrays), ``samples`` and ``predictions``; its name is the
  ``document_sha256`` the loader gives it (board name + document), checked at export and again at import.
- ``results.json``: which board and sweep each document was loaded for, in the source's load order.
- ``boards.json``, ``snapshots.json``, ``builds.json``, ``models.json``, ``weights.json``, ``datasets.json``,
  ``sweeps.json``, ``failures.json``: the rows those results use (boards with their price, service life, peak power,
  read-only flag and info; platform snapshots; library builds with their provenance; sweeps with their info) and
  the ``point_failures`` of the exported sweeps. Row ids never travel: rows are matched by their natural keys.

Import checks the whole archive before it writes anything (zip, manifest, every member's sha256, no member missing
or unlisted or outside the archive, every document valid and named by its own hash), then writes in ONE transaction:
dimension rows first, then the documents through the one loader (``load_documents``: validated again, deduplicated
by document hash), then the point failures. Importing twice changes nothing. Decisions:

- A board that exists in the target with other figures (kind, price, price date, service life, peak power,
  read-only) is refused, naming the differences, unless ``update_boards``: the archive's figures then replace the
  target's. A figure the target does not have (NULL) is filled from the archive without asking. ``info`` keys the
  target lacks are added; a key both have with different values keeps the target's (a warning), or takes the
  archive's with ``update_boards``.
- Models, weights, datasets, platform snapshots and library builds already in the target keep the target's row, as
  the loader does (first record wins; their keys say the two are the same thing).
- Sweeps are matched by run id; a missing ``dag_id`` or ``info`` key is filled, a conflicting one keeps the
  target's (a warning).
- Results of read-only (reference) boards travel: the import is how reference data moves; the board is read-only
  before and after. A board read-only in the target and writable in the archive is a conflict like any other, and
  so is any ``info`` difference of a read-only board (its ``info`` names the source of its results).
- A filtered archive carries the selected points only: scoreboard columns computed from other points (scoreboard
  v2's tf reference top-1 of the same weights on any board) are computed in the target from what it holds.
- The checksums detect damage, not forgery: whoever can write an archive can write a consistent one.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import decimal
import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine

from requestflow.board.files import canonical_json
from requestflow.errors import UserError
from requestflow.results import models as m
from requestflow.results.document import check_document
from requestflow.results.identity import sha256_of
from requestflow.results.load import load_documents, refresh_scoreboard

FORMAT = "requestflow-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("results", "boards", "snapshots", "builds", "models", "weights", "datasets", "sweeps", "failures")
DOCUMENT = re.compile(r"^documents/([0-9a-f]{64})\.json$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# selector -> SQL over the results being exported (results r, points p, boards b, models mo, datasets d, sweeps sw),
# compared as PostgreSQL's text form of the value, like the scoreboard's selectors (scoreboard_data.FILTERS)
RESULT_FILTERS = {"board": "b.name", "model": "p.model_id", "backend": "p.backend", "variant": "p.variant::text",
                  "width": "mo.width::text", "resolution": "mo.resolution::text", "precision": "p.precision",
                  "mode": "p.mode", "sweep": "sw.run_id", "images": "d.image_count::text"}
# the selectors a point failure can be judged on (what it records); the others need a result
FAILURE_FILTERS = {"board": "b.name", "model": "pf.point->>'model'", "backend": "pf.point->>'backend'",
                   "mode": "pf.point->>'mode'", "sweep": "sw.run_id"}
TIME_FILTERS = ("since", "until")
FILTERS = (*RESULT_FILTERS, *TIME_FILTERS)
LOAD_BATCH_BYTES = 256 * 2**20  # documents handed to one load_documents call, at most (JSON bytes)

# each table member: field -> accepted JSON types (None: null allowed)
ROW_FIELDS = {
    "results": {"document_sha256": (str,), "board": (str,), "sweep": (str, None)},
    "boards": {"name": (str,), "kind": (str,), "price_usd": (str, None), "price_date": (str, None),
               "service_life_years": (int, float), "peak_power_w": (int, float, None), "read_only": (bool,),
               "info": (dict,)},
    "snapshots": {"sha256": (str,), "board": (str,), "cpu_model": (str, None), "arch": (str, None),
                  "os": (str, None), "machine": (dict,), "created_at": (str,)},
    "builds": {"sha256": (str,), "backend": (str,), "library": (str, None), "version": (str, None), "info": (dict,)},
    "models": {"id": (str,), "width": (int, float), "resolution": (int,), "macs": (int,), "params": (int,)},
    "weights": {"sha256": (str,), "format": (str,), "random": (bool,), "release": (str, None),
                "source_precision": (str, None), "url": (str, None), "info": (dict,)},
    "datasets": {"sha256": (str,), "synthetic": (bool,), "image_count": (int, None), "path": (str, None),
                 "val_txt_sha256": (str, None)},
    "sweeps": {"run_id": (str,), "dag_id": (str, None), "created_at": (str,), "info": (dict,)},
    "failures": {"sweep": (str,), "board": (str,), "point": (dict,), "error_type": (str,), "message": (str,),
                 "attempts": (int,), "failed_at": (str,)},
}
BOARD_FIGURES = ("kind", "price_usd", "price_date", "service_life_years", "peak_power_w", "read_only")


@dataclass
class ExportReport:
    path: Path
    counts: dict[str, int]


@dataclass
class ImportReport:
    loaded: int = 0  # documents new to this database
    unchanged: int = 0  # documents it already held
    boards_added: list[str] = field(default_factory=list)
    boards_updated: list[str] = field(default_factory=list)
    sweeps_added: list[str] = field(default_factory=list)
    failures_added: int = 0
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        def names(values: list[str]) -> str:
            return f" ({', '.join(values)})" if values else ""

        return (f"{self.loaded} new result(s), {self.unchanged} already stored; {len(self.boards_added)} board(s) "
                f"added{names(self.boards_added)}, {len(self.boards_updated)} updated{names(self.boards_updated)}; "
                f"{len(self.sweeps_added)} sweep(s) added; {self.failures_added} point failure(s) added")


# -------------------------------------------------------------------------------------------------------------
# Export


def export(engine: Engine, path: str | os.PathLike, filters: Mapping[str, Iterable[str]] | None = None
           ) -> ExportReport:
    """Write the results selected by ``filters`` (selector -> accepted values; none: everything the database holds)
    and everything they use into the archive ``path``. The file appears whole or not at all."""
    path = Path(path)
    chosen = _filters(filters)
    if not path.parent.resolve().is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")  # one consistent snapshot, nothing written
            counts = _write_archive(connection, Path(tmp), chosen)
            connection.rollback()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return ExportReport(path, counts)


def _filters(filters: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    chosen = {}
    for key, values in (filters or {}).items():
        if key not in FILTERS:
            raise UserError(f"unknown export filter {key!r}; known: {', '.join(FILTERS)}")
        values = [str(v) for v in ([values] if isinstance(values, str) else values or []) if str(v) != ""]
        if not values:
            continue
        if key in TIME_FILTERS:
            if len(values) != 1:
                raise UserError(f"--{key} takes one date or time, got {len(values)}")
            values = [_instant(values[0], key).isoformat()]
        chosen[key] = values
    return chosen


def _instant(value: str, what: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--{what} {value!r}: expected a date or time like 2026-11-28 or 2026-11-28T10:00+01:00"
                        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # no zone given: UTC


def _where(chosen: dict[str, list[str]], columns: dict[str, str], time_column: str) -> tuple[str, dict]:
    clauses, parameters = [], {}
    for key, values in chosen.items():
        if key in columns:
            clauses.append(f"{columns[key]} = ANY(:{key})")
            parameters[key] = values
        elif key == "since":
            clauses.append(f"{time_column} >= CAST(:since AS timestamptz)")
            parameters[key] = values[0]
        elif key == "until":
            clauses.append(f"{time_column} < CAST(:until AS timestamptz)")
            parameters[key] = values[0]
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), parameters


def _write_archive(connection: Connection, path: Path, chosen: dict[str, list[str]]) -> dict[str, int]:
    everything = not chosen
    where, parameters = _where(chosen, RESULT_FILTERS, "r.started_at")
    results = [dict(row._mapping) for row in connection.execute(text(f"""
        SELECT r.id, r.document_sha256, b.name AS board, sw.run_id AS sweep, r.sweep_id, r.snapshot_id,
               p.board_id, p.library_build_id, p.model_id, p.weights_sha256, p.dataset_id,
               r.document->'context'->'backend'->'build'->>'key' AS build_key
        FROM results r
        JOIN points p ON p.id = r.point_id
        JOIN boards b ON b.id = p.board_id
        JOIN models mo ON mo.id = p.model_id
        JOIN datasets d ON d.id = p.dataset_id
        LEFT JOIN sweeps sw ON sw.id = r.sweep_id
        {where}
        ORDER BY r.id"""), parameters)]

    # failures: those matching every filter a failure can be judged on; when a filter needs a result (variant,
    # width...), only in the sweeps of the exported results
    judged = {k: v for k, v in chosen.items() if k in FAILURE_FILTERS or k in TIME_FILTERS}
    where, parameters = _where(judged, FAILURE_FILTERS, "pf.failed_at")
    if set(chosen) - set(judged):
        where += (" AND " if where else "WHERE ") + "pf.sweep_id = ANY(:result_sweeps)"
        parameters["result_sweeps"] = sorted({r["sweep_id"] for r in results if r["sweep_id"] is not None})
    failures = [dict(row._mapping) for row in connection.execute(text(f"""
        SELECT pf.sweep_id, pf.board_id, sw.run_id AS sweep, b.name AS board, pf.point, pf.error_type, pf.message,
               pf.attempts, pf.failed_at
        FROM point_failures pf JOIN sweeps sw ON sw.id = pf.sweep_id JOIN boards b ON b.id = pf.board_id
        {where}
        ORDER BY pf.id"""), parameters)]
    if not results and not failures:
        raise UserError("nothing to export: " + (f"no result or point failure matches the filters "
                                                 f"({_describe(chosen)})" if chosen else "the results store is empty"))

    def ids(key: str, extra: Iterable = ()) -> list:
        return sorted({r[key] for r in results if r[key] is not None} | set(extra))

    def rows(sql: str, key: str | None = None, values: list | None = None) -> list[dict]:
        condition = "" if everything or key is None else f" WHERE {key} = ANY(:values)"
        return [{k: _plain(v) for k, v in row._mapping.items()}
                for row in connection.execute(text(sql.replace("{where}", condition)), {"values": values})]

    tables = {
        "boards": rows("SELECT name, kind, price_usd, price_date, service_life_years, peak_power_w, read_only, info "
                       "FROM boards{where} ORDER BY name", "id",
                       ids("board_id", (f["board_id"] for f in failures))),
        "snapshots": rows("SELECT s.sha256, b.name AS board, s.cpu_model, s.arch, s.os, s.machine, s.created_at "
                          "FROM platform_snapshots s JOIN boards b ON b.id = s.board_id{where} ORDER BY s.id",
                          "s.id", ids("snapshot_id")),
        "builds": rows("SELECT sha256, backend, library, version, info FROM library_builds{where} ORDER BY id",
                       "id", ids("library_build_id")),
        "models": rows("SELECT id, width, resolution, macs, params FROM models{where} ORDER BY id", "id",
                       ids("model_id")),
        "weights": rows("SELECT sha256, format, random, release, source_precision, url, info FROM weights{where} "
                        "ORDER BY sha256", "sha256", ids("weights_sha256")),
        "datasets": rows("SELECT sha256, synthetic, image_count, path, val_txt_sha256 FROM datasets{where} "
                         "ORDER BY id", "id", ids("dataset_id")),
        "sweeps": rows("SELECT run_id, dag_id, created_at, info FROM sweeps{where} ORDER BY id", "id",
                       ids("sweep_id", (f["sweep_id"] for f in failures))),
    }
    if not everything:  # the provenance of the library builds the documents name (ArmCL: builds.record_build)
        keys = sorted({r["build_key"] for r in results if r["build_key"]})
        have = {b["sha256"] for b in tables["builds"]}
        tables["builds"] += [b for b in rows("SELECT sha256, backend, library, version, info FROM library_builds"
                                             "{where} ORDER BY id", "sha256", keys) if b["sha256"] not in have]
    tables["failures"] = [{k: _plain(v) for k, v in f.items() if k not in ("sweep_id", "board_id")}
                          for f in failures]
    tables["results"] = [{"document_sha256": r["document_sha256"], "board": r["board"], "sweep": r["sweep"]}
                         for r in results]

    members: dict[str, dict] = {}
    counts = {name: len(rows_) for name, rows_ in tables.items()} | {"samples": 0, "predictions": 0}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        def add(name: str, data: bytes) -> None:
            members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            archive.writestr(name, data)

        cursor = connection.connection.driver_connection.cursor()
        for start in range(0, len(results), 200):
            batch = results[start:start + 200]
            stored = dict(connection.execute(text("SELECT id, document FROM results WHERE id = ANY(:ids)"),
                                             {"ids": [r["id"] for r in batch]}).all())
            for result in batch:
                document = rebuild(cursor, result["id"], stored[result["id"]], result["board"],
                                   result["document_sha256"])
                counts["samples"] += len(document.get("performance", {}).get("samples", []))
                counts["predictions"] += len(document.get("predictions", []))
                add(f"documents/{result['document_sha256']}.json", _json_bytes(document))
        for name in TABLES:
            add(f"{name}.json", _json_bytes(tables[name], indent=1))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "requestflow_version": _version(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "source": _source(connection),
            "filters": chosen, "counts": counts, "members": members}
        archive.writestr(MANIFEST, _json_bytes(manifest, indent=1))
    return counts


def rebuild(cursor, result_id: int, stored: dict, board: str, document_sha256: str) -> dict:
    """The runner document of result ``result_id``: ``stored`` (``results.document``) with its raw samples and
    per-image predictions put back, as the runner wrote them. Raises UserError unless its hash is
    ``document_sha256``.

    Two things the tables do not keep are recovered: the order of the predictions (the runner writes them in the
    dataset's order, its sorted file names; the rows' physical order, the order they were loaded in, is tried
    next) and the exact scores (the runner rounds them to 6 decimals, ``predictions.scores`` keeps float32: rounding
    the float32 to 6 decimals gives the runner's value back for any score below 8; the float32 itself is tried
    next, for documents written otherwise)."""
    from psycopg import sql

    document = dict(stored)
    if "performance" in stored:
        with cursor.copy(sql.SQL("COPY (SELECT seconds FROM samples WHERE result_id = {} ORDER BY i) TO STDOUT "
                                 "(FORMAT BINARY)").format(sql.Literal(result_id))) as copy:
            copy.set_types(["float8"])
            document["performance"] = {**stored["performance"], "samples": [s for (s,) in copy.rows()]}
    with cursor.copy(sql.SQL("COPY (SELECT image, label, top5, scores FROM predictions WHERE result_id = {} "
                             "ORDER BY ctid) TO STDOUT (FORMAT BINARY)").format(sql.Literal(result_id))) as copy:
        copy.set_types(["text", "int2", "int2[]", "float4[]"])
        loaded_order = list(copy.rows())

    def candidates() -> Iterator[dict]:
        if not loaded_order:
            yield document
            if stored.get("context", {}).get("mode") == "accuracy":
                yield {**document, "predictions": []}
            return
        by_name = sorted(loaded_order, key=lambda row: row[0])
        for order in (by_name, loaded_order) if by_name != loaded_order else (by_name,):
            for score in (lambda s: round(s, 6), float):
                yield {**document, "predictions": [
                    {"file": image, "label": label, "top5": [[c, score(s)] for c, s in zip(top5, scores,
                                                                                         strict=True)]}
                    for image, label, top5, scores in order]}

    for candidate in candidates():
        if sha256_of({"board": board, "document": candidate}) == document_sha256:
            return candidate
    raise UserError(f"result {result_id} (board {board}, started {stored.get('started_at')}, document "
                    f"{document_sha256[:12]}): its runner document cannot be rebuilt exactly from the store (the "
                    f"rebuilt document hashes differently), so it cannot be exported; nothing was written. Leave it "
                    f"out with filters (e.g. --until {stored.get('started_at')})")


def _source(connection: Connection) -> dict:
    """Which database the archive comes from: a fingerprint of the server's system identifier and the database's
    name (not secret, stable), and its schema revision."""
    row = connection.execute(text(
        "SELECT current_database() AS database, (SELECT version_num FROM alembic_version) AS schema_revision, "
        "has_function_privilege('pg_control_system()', 'EXECUTE') AS may_read_control")).one()
    system = connection.execute(text("SELECT system_identifier::text FROM pg_control_system()")
                                ).scalar() if row.may_read_control else None
    return {"database_fingerprint": sha256_of({"database": row.database, "system": system}),
            "schema_revision": row.schema_revision}


def _describe(chosen: dict[str, list[str]]) -> str:
    return "; ".join(f"{key} {', '.join(values)}" for key, values in chosen.items())


def _plain(value):
    """JSON-friendly and exact: prices (Decimal) as text, dates and times as ISO text."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _json_bytes(value, indent: int | None = None) -> bytes:
    separators = None if indent else (",", ":")
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators).encode()


def _version() -> str:
    from requestflow import __version__
    return __version__


# -------------------------------------------------------------------------------------------------------------
# Import


def import_archive(engine: Engine, path: str | os.PathLike, update_boards: bool = False) -> ImportReport:
    """Import the archive ``path``: everything is checked first, then written in one transaction; an archive
    already imported changes nothing."""
    with _Archive(Path(path)) as archive:
        archive.check()  # everything, before anything is written
        report = ImportReport()
        with engine.begin() as connection:
            # one import at a time: point failures have no natural key, and are deduplicated by content
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('requestflow archive import'))"))
            boards_changed = _boards(connection, archive, update_boards, report)
            board_ids = dict(connection.execute(select(m.Board.name, m.Board.id)).all())
            _dimensions(connection, archive, board_ids)
            sweep_ids = _sweeps(connection, archive, report)
            _results(connection, archive, report)
            _failures(connection, archive, board_ids, sweep_ids, report)
            if boards_changed and not report.loaded:
                refresh_scoreboard(connection)  # their cost and energy columns
    return report


class _Archive:
    """An archive being read: every check of :meth:`check`, then its tables and documents."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.manifest: dict = {}
        self.tables: dict[str, list[dict]] = {}

    def __enter__(self) -> _Archive:
        try:
            self.zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise UserError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{self.path} is a folder, not an archive") from None
        except OSError as exc:
            raise UserError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except (zipfile.BadZipFile, ValueError, EOFError):
            raise UserError(f"{self.path} is not a zip archive, or it is truncated: refused, nothing imported"
                            ) from None
        return self

    def __exit__(self, *exc) -> None:
        if self.zip is not None:
            self.zip.close()

    def refuse(self, why: str) -> UserError:
        return UserError(f"{self.path}: {why}: refused, nothing imported")

    def check(self) -> None:
        names = [info.filename for info in self.zip.infolist()]
        for name in names:  # never extracted to disk, but a name that points outside is a sign of a crafted file
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or "\0" in name or re.match(
                    r"^[A-Za-z]:", name):
                raise self.refuse(f"member {name!r} points outside the archive (zip slip)")
        repeated = [name for name, count in collections.Counter(names).items() if count > 1]
        if repeated:
            raise self.refuse(f"member {repeated[0]} appears {names.count(repeated[0])} times")
        if MANIFEST not in names:
            raise self.refuse("not a requestflow archive (no manifest.json)")
        manifest = self._json(MANIFEST, None)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise self.refuse(f"not a requestflow archive (format {found!r}, expected {FORMAT!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise self.refuse(f"archive format version {manifest.get('format_version')!r} is unknown to this "
                              f"requestflow {_version()} (it reads version {FORMAT_VERSION}, written by "
                              f"requestflow {manifest.get('requestflow_version')!r})")
        members, counts = manifest.get("members"), manifest.get("counts")
        if not isinstance(members, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) and SHA256.match(v["sha256"])
                and type(v.get("bytes")) is int for v in members.values()):
            raise self.refuse("manifest.json: 'members' is not a list of {name: {sha256, bytes}}")
        if not isinstance(counts, dict):
            raise self.refuse("manifest.json: no 'counts'")
        for name in members:
            if name not in {f"{t}.json" for t in TABLES} and not DOCUMENT.match(name):
                raise self.refuse(f"the manifest lists {name!r}, which has no place in an archive")
        unlisted = sorted(set(names) - set(members) - {MANIFEST})
        if unlisted:
            raise self.refuse(f"member {unlisted[0]} is not listed in the manifest")
        missing = sorted(set(members) - set(names)) or sorted(f"{t}.json" for t in TABLES
                                                              if f"{t}.json" not in members)
        if missing:
            raise self.refuse(f"member {missing[0]} is missing")
        self.manifest = manifest
        self.tables = {table: self._table(table) for table in TABLES}

        # every document listed once in results.json, and every result's document present
        documents = {DOCUMENT.match(name).group(1) for name in members if DOCUMENT.match(name)}
        listed = collections.Counter(r["document_sha256"] for r in self.tables["results"])
        for sha, count in listed.items():
            if count > 1:
                raise self.refuse(f"results.json lists document {sha} {count} times")
            if sha not in documents:
                raise self.refuse(f"results.json lists document {sha}, which the archive does not hold")
        if documents - set(listed):
            raise self.refuse(f"document {sorted(documents - set(listed))[0]} is in no entry of results.json")
        boards = {b["name"] for b in self.tables["boards"]}
        sweeps = {s["run_id"] for s in self.tables["sweeps"]}
        for table, key in (("boards", "name"), ("sweeps", "run_id"), ("snapshots", "sha256"), ("builds", "sha256"),
                           ("models", "id"), ("weights", "sha256"), ("datasets", "sha256")):
            seen = collections.Counter(row[key] for row in self.tables[table])
            twice = [k for k, n in seen.items() if n > 1]
            if twice:
                raise self.refuse(f"{table}.json holds {key} {twice[0]!r} twice")
        for table in ("results", "snapshots", "failures"):
            for row in self.tables[table]:
                if row["board"] not in boards:
                    raise self.refuse(f"{table}.json names board {row['board']!r}, which boards.json lacks")
        for table in ("results", "failures"):
            for row in self.tables[table]:
                if row["sweep"] is not None and row["sweep"] not in sweeps:
                    raise self.refuse(f"{table}.json names sweep {row['sweep']!r}, which sweeps.json lacks")
        for board in self.tables["boards"]:
            _board_values(board, self)  # prices and dates readable
        for table in ("snapshots", "sweeps", "failures"):
            for row in self.tables[table]:
                self._time(row, "failed_at" if table == "failures" else "created_at", table)

        found = {table: len(rows) for table, rows in self.tables.items()} | {"samples": 0, "predictions": 0}
        for _entry, document in self.documents():
            found["samples"] += len(document.get("performance", {}).get("samples", []))
            found["predictions"] += len(document.get("predictions", []))
        if found != counts:
            differ = sorted(k for k in set(found) | set(counts) if found.get(k) != counts.get(k))
            raise self.refuse("the manifest's counts do not match the contents: " + ", ".join(
                f"{k} {counts.get(k)!r} listed, {found.get(k)} found" for k in differ))

    def documents(self, entries: list[dict] | None = None, checked: bool = False) -> Iterator[tuple[dict, dict]]:
        """(results.json entry, document) of each entry: validated and its hash checked, unless ``checked`` (its
        bytes, whose sha256 is checked on every read, were: :meth:`check` read them)."""
        for entry in self.tables["results"] if entries is None else entries:
            sha = entry["document_sha256"]
            name = f"documents/{sha}.json"
            document = self._json(name, self.manifest["members"][name])
            if checked:
                yield entry, document
                continue
            try:
                document = check_document(document, name)
            except UserError as exc:
                raise self.refuse(str(exc)) from None
            if sha256_of({"board": entry["board"], "document": document}) != sha:
                raise self.refuse(f"{name}: the document's own hash (board {entry['board']} + document) is not "
                                  f"its name: it was changed")
            yield entry, document

    def _read(self, name: str, listed: dict | None) -> bytes:
        info = self.zip.getinfo(name)
        if listed is not None and info.file_size != listed["bytes"]:
            raise self.refuse(f"member {name} is damaged or was changed ({info.file_size} bytes, the manifest says "
                              f"{listed['bytes']})")
        if listed is None and info.file_size > 512 * 2**20:
            raise self.refuse(f"{name} is {info.file_size} bytes: not a manifest")
        try:
            data = self.zip.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
            raise self.refuse(f"member {name} cannot be read ({exc})") from None
        if listed is not None and hashlib.sha256(data).hexdigest() != listed["sha256"]:
            raise self.refuse(f"member {name} is damaged or was changed (its sha256 is "
                              f"{hashlib.sha256(data).hexdigest()[:16]}..., the manifest says "
                              f"{listed['sha256'][:16]}...)")
        return data

    def _json(self, name: str, listed: dict | None):
        data = self._read(name, listed)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise self.refuse(f"{name} is not valid JSON ({exc})") from None

    def _table(self, table: str) -> list[dict]:
        name = f"{table}.json"
        rows = self._json(name, self.manifest["members"][name])
        fields = ROW_FIELDS[table]
        if not isinstance(rows, list):
            raise self.refuse(f"{name} is not a list")
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise self.refuse(f"{name} entry {index} is not an object")
            for key, kinds in fields.items():
                value = row.get(key)
                ok = (value is None and None in kinds) or any(
                    k is not None and isinstance(value, k) and not (k is int and isinstance(value, bool))
                    for k in kinds)
                if not ok:
                    raise self.refuse(f"{name} entry {index}: {key} {value!r} is not "
                                      f"{' or '.join('null' if k is None else k.__name__ for k in kinds)}")
            for key in ("sha256", "document_sha256"):  # names of files and keys of rows (builds: a cache key)
                if key in fields and table in ("results", "snapshots", "weights") and not SHA256.match(row[key]):
                    raise self.refuse(f"{name} entry {index}: {key} {row[key]!r} is not a sha256")
        return rows

    def _time(self, row: dict, key: str, table: str) -> dt.datetime:
        try:
            moment = dt.datetime.fromisoformat(row[key])
        except ValueError:
            raise self.refuse(f"{table}.json: {key} {row[key]!r} is not an ISO time") from None
        if moment.tzinfo is None:
            raise self.refuse(f"{table}.json: {key} {row[key]!r} has no time zone")
        return moment


def _board_values(board: dict, archive: _Archive) -> dict:
    """A board of boards.json as column values (exact prices, dates)."""
    values = {key: board[key] for key in BOARD_FIGURES}
    try:
        if board["price_usd"] is not None:
            values["price_usd"] = decimal.Decimal(board["price_usd"])
            if not values["price_usd"].is_finite():
                raise decimal.InvalidOperation
        if board["price_date"] is not None:
            values["price_date"] = dt.date.fromisoformat(board["price_date"])
    except (decimal.InvalidOperation, ValueError):
        raise archive.refuse(f"boards.json: board {board['name']!r} has a bad price or price date") from None
    return values


def _boards(connection: Connection, archive: _Archive, update_boards: bool, report: ImportReport) -> bool:
    """Insert the boards the database lacks; settle those it has (see the module's decisions). Whether any
    board's row changed."""
    existing = {row.name: row for row in connection.execute(select(
        m.Board.name, m.Board.info, *(getattr(m.Board, f) for f in BOARD_FIGURES)).with_for_update())}
    conflicts, changes = [], {}
    for board in archive.tables["boards"]:
        name, values = board["name"], _board_values(board, archive)
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
                conflicts.append(f"board {name}: {key} {_plain(ours)} here, {_plain(theirs)} in the archive")
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


def _dimensions(connection: Connection, archive: _Archive, board_ids: dict[str, int]) -> None:
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


def _sweeps(connection: Connection, archive: _Archive, report: ImportReport) -> dict[str, int]:
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


def _results(connection: Connection, archive: _Archive, report: ImportReport) -> None:
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


def _failures(connection: Connection, archive: _Archive, board_ids: dict[str, int], sweep_ids: dict[str, int],
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
