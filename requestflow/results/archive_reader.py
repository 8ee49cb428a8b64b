"""Reading an archive of ``requestflow export`` (``requestflow.results.archive_format``) for ``requestflow import``:
``Archive.check`` checks everything (the zip, the manifest's sizes and hashes, every table's fields, every
document against its hash and the schema) before ``requestflow.results.archive_import`` writes anything; then the
tables and documents are read from it."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import hashlib
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from requestflow.errors import UserError
from requestflow.results.archive_format import (
    BOARD_FIGURES,
    DOCUMENT,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ROW_FIELDS,
    SHA256,
    TABLES,
    requestflow_version,
)
from requestflow.results.document import check_document
from requestflow.results.identity import sha256_of


class Archive:
    """An archive being read: every check of :meth:`check`, then its tables and documents."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.manifest: dict = {}
        self.tables: dict[str, list[dict]] = {}

    def __enter__(self) -> Archive:
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
            self.board_values(board)  # prices and dates readable
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

    def board_values(self, board: dict) -> dict:
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
            raise self.refuse(f"boards.json: board {board['name']!r} has a bad price or price date") from None
        return values
