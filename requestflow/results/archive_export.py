"""``requestflow export``: the selected points into an archive (``requestflow.results.archive_format``)."""


from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from requestflow.errors import UserError
from requestflow.results.archive_format import (
    FAILURE_FILTERS,
    FILTERS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    RESULT_FILTERS,
    RESULTS_FROM,
    TABLES,
    TIME_FILTERS,
    ExportReport,
    json_bytes,
    plain,
    requestflow_version,
)
from requestflow.results.document_rebuild import rebuild
from requestflow.results.identity import sha256_of

# -------------------------------------------------------------------------------------------------------------
# Export


def export(engine: Engine, path: str | os.PathLike, filters: Mapping[str, Iterable[str]] | None = None
           ) -> ExportReport:
    """Write the results selected by ``filters`` (selector -> accepted values; none: everything the database holds)
    and everything they use into the archive ``path``. The file appears whole or not at all."""
    path = Path(path)
    chosen = chosen_filters(filters)
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


def chosen_filters(filters: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    """The filters as lists of text (empty ones dropped; times as ISO instants, UTC unless they say otherwise);
    UserError for an unknown filter or a time that is not one (``requestflow rm`` reads its filters with it too)."""
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


def where_clause(chosen: dict[str, list[str]], columns: dict[str, str], time_column: str) -> tuple[str, dict]:
    """``WHERE ...`` (or nothing) and its parameters for the chosen filters: ``columns`` names each filter's column,
    ``time_column`` the one ``since`` and ``until`` bound."""
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
    where, parameters = where_clause(chosen, RESULT_FILTERS, "r.started_at")
    results = [dict(row._mapping) for row in connection.execute(text(f"""
        SELECT r.id, r.document_sha256, b.name AS board, sw.run_id AS sweep, r.sweep_id, r.snapshot_id,
               p.board_id, p.library_build_id, p.model_id, p.weights_sha256, p.dataset_id,
               r.document->'context'->'backend'->'build'->>'key' AS build_key
        {RESULTS_FROM}
        {where}
        ORDER BY r.id"""), parameters)]

    # failures: those matching every filter a failure can be judged on; when a filter needs a result (variant,
    # width...), only in the sweeps of the exported results
    judged = {k: v for k, v in chosen.items() if k in FAILURE_FILTERS or k in TIME_FILTERS}
    where, parameters = where_clause(judged, FAILURE_FILTERS, "pf.failed_at")
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
        return [{k: plain(v) for k, v in row._mapping.items()}
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
    tables["failures"] = [{k: plain(v) for k, v in f.items() if k not in ("sweep_id", "board_id")}
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
                add(f"documents/{result['document_sha256']}.json", json_bytes(document))
        for name in TABLES:
            add(f"{name}.json", json_bytes(tables[name], indent=1))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "requestflow_version": requestflow_version(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "source": _source(connection),
            "filters": chosen, "counts": counts, "members": members}
        archive.writestr(MANIFEST, json_bytes(manifest, indent=1))
    return counts


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


