"""``requestflow import``: an archive (``requestflow.results.archive_format``) checked whole, then written in one
transaction."""


from __future__ import annotations

import collections
import contextlib
import datetime as dt
import decimal
import hashlib
import json
import os
import re
import zipfile
import zlib
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
    DOCUMENT,
    FORMAT,
    FORMAT_VERSION,
    LOAD_BATCH_BYTES,
    MANIFEST,
    ROW_FIELDS,
    SHA256,
    TABLES,
    ImportReport,
    plain,
    requestflow_version,
)
from requestflow.results.document import check_document
from requestflow.results.identity import sha256_of
from requestflow.results.load import load_documents, refresh_scoreboard

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
                              f"requestflow {requestflow_version()} (it reads version {FORMAT_VERSION}, written by "
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
                check_document(document, name)  # upgraded to check it; the store keeps and hashes it as written
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
