"""Loading runner documents into the results store: validated whole, then one idempotent bulk upsert.

- Every document is validated (JSON Schema, after upgrading older ``schema_version``s) before anything is
  written; one bad document refuses the whole load, naming the file and the field.
- Everything is written in one transaction: a failure leaves the database as it was.
- Dimensions are upserted (``INSERT ... ON CONFLICT DO NOTHING`` then read back), so concurrent loads of
  overlapping documents converge on the same rows; a result is keyed by its document's hash, so loading a
  document again changes nothing.
- Raw samples and per-image predictions go in with ``COPY`` (``bench/bench_store.py`` measures a 50,000-prediction
  document).
- The scoreboard is a table (migration 0013): a load computes again, in its transaction, the rows of the
  configurations it stored a result of (and of those whose tf reference that changed), never the whole table, so
  storing a point costs the same whatever the store holds (``bench/bench_store.py``'s part 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from psycopg import DataError as PsycopgDataError
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError

from requestflow.errors import UserError
from requestflow.results import models as m
from requestflow.results.document import check_document, parse_time
from requestflow.results.identity import accuracy_key, identity, library_build, sha256_of
from requestflow.results.role_sql import SCOREBOARD_LOCK


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # sources whose result was new
    unchanged: list[str] = field(default_factory=list)  # sources already in the store
    result_ids: list[int] = field(default_factory=list)


def load_documents(engine: Engine, documents: list[tuple[str, dict]], board: str, sweep: str | None = None,
                   dag_id: str | None = None, reference: dict | None = None) -> LoadReport:
    """Load ``(source name, document)`` pairs for ``board``, optionally as part of ``sweep`` (an Airflow run id).

    A read-only board refuses every load, except with ``reference``: the row of a read-only reference board
    (``kind``, ``read_only``, figures, ``info`` with its source's ``sha256``; see ``requestflow.results.reference``),
    created with its results in this transaction, or already holding results of that same source."""
    if not board or not board.strip():
        raise UserError("a board name is needed to load results")
    if reference is not None and not (reference.get("read_only") and (reference.get("info") or {}).get("sha256")):
        raise ValueError("a reference board is read_only and its info names its source's sha256")
    # (source, the document as written, the document upgraded to the current schema version)
    checked = [(source, document, check_document(document, source)) for source, document in documents]
    report = LoadReport()
    with engine.begin() as connection:
        board_id = upsert_board(connection, board, reference)
        sweep_id = upsert_sweep(connection, sweep, dag_id) if sweep else None
        for source, written, document in checked:
            try:
                result_id = load_one(connection, document, board, board_id, sweep_id, written)
            except (DataError, PsycopgDataError, OverflowError) as exc:  # a value out of a column's range
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                raise UserError(f"{source}: cannot be stored: {reason}") from None
            if result_id is None:
                report.unchanged.append(source)
            else:
                report.loaded.append(source)
                report.result_ids.append(result_id)
        if report.loaded:
            update_scoreboard(connection, keys_of_results(connection, report.result_ids))
    return report


def keys_of_results(connection: Connection, result_ids: Iterable[int]) -> list[str]:
    """The configurations (``points.accuracy_key``) of these results: the scoreboard rows they are on."""
    return list(connection.execute(text(
        "SELECT DISTINCT p.accuracy_key FROM results r JOIN points p ON p.id = r.point_id WHERE r.id = ANY(:ids)"),
        {"ids": list(result_ids)}).scalars())


def keys_of_boards(connection: Connection, boards: Iterable[str]) -> list[str]:
    """The configurations measured on these boards (by name)."""
    return list(connection.execute(text(
        "SELECT DISTINCT p.accuracy_key FROM points p JOIN boards b ON b.id = p.board_id WHERE b.name = ANY(:names)"),
        {"names": list(boards)}).scalars())


def update_scoreboard(connection: Connection, keys: Iterable[str]) -> int:
    """Compute again, inside the caller's transaction, the scoreboard rows of the configurations ``keys`` (and of
    those whose tf reference top-1 that changes): ``scoreboard_update`` (sql/migrations/scoreboard_table.py). Readers
    see the new rows exactly when the caller commits. How many configurations were computed again.

    The function takes the scoreboard's advisory lock in a statement of its own before it reads: concurrent
    maintenances run one after the other, each seeing the rows of those that committed before it (a load waiting
    for another must not publish rows computed without the other's results)."""
    chosen = sorted(set(keys))
    if not chosen:
        return 0
    if connection.execute(text("SELECT to_regprocedure('scoreboard_update(text[])') IS NULL")).scalar_one():
        # a store not upgraded to 0013 yet: its materialized scoreboard, refreshed whole (as before 0013)
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCOREBOARD_LOCK})")
        connection.exec_driver_sql("REFRESH MATERIALIZED VIEW scoreboard")
        return len(chosen)
    return connection.execute(text("SELECT scoreboard_update(CAST(:keys AS text[]))"), {"keys": chosen}).scalar_one()


def refresh_scoreboard(connection: Connection) -> None:
    """Rebuild the whole scoreboard from ``scoreboard_live`` inside the caller's transaction (``refresh_scoreboard()``,
    under the same lock as :func:`update_scoreboard`): after rows were written behind requestflow's back."""
    connection.exec_driver_sql("SELECT refresh_scoreboard()")


def _upsert(connection: Connection, table, values: dict, key: str):
    """Insert unless a row with the same ``key`` exists; the row's primary key either way."""
    connection.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=[key]))
    primary = table.__table__.primary_key.columns.values()[0]
    return connection.execute(select(primary).where(getattr(table, key) == values[key])).scalar_one()


def upsert_board(connection: Connection, name: str, reference: dict | None = None) -> int:
    board_id = _upsert(connection, m.Board, {**(reference or {}), "name": name}, "name")
    read_only, info = connection.execute(select(m.Board.read_only, m.Board.info).where(m.Board.id == board_id)).one()
    if reference is None and read_only:
        raise UserError(f"board {name!r} is a read-only reference board: nothing can be loaded into it")
    if reference is not None and not (read_only and (info or {}).get("sha256") == reference["info"]["sha256"]):
        raise UserError(f"board {name!r} already exists and is not the reference board of "
                        f"{reference['info'].get('source_name', 'this source')} (sha256 "
                        f"{reference['info']['sha256'][:16]}): import it under another board name")
    return board_id


def upsert_sweep(connection: Connection, run_id: str, dag_id: str | None) -> int:
    return _upsert(connection, m.Sweep, {"run_id": run_id, "dag_id": dag_id}, "run_id")


def load_one(connection: Connection, document: dict, board: str, board_id: int, sweep_id: int | None,
              written: dict | None = None) -> int | None:
    """``document`` upgraded (what the tables are filled from); ``written``, the document as the runner wrote it, is
    what ``results.document`` keeps and ``document_sha256`` hashes: loading it again, exporting and importing it, and
    rebuilding it (``document_rebuild``) give the same result whatever schema version reads it."""
    written = document if written is None else written
    context, machine = document["context"], document["machine"]
    if context.get("precision") is None:  # failed before its backend loaded: identity from what was asked
        context = {**context, "precision": "unknown"}
    static_machine = {k: v for k, v in machine.items() if k not in ("cpus", "temperatures")}
    snapshot_id = _upsert(connection, m.PlatformSnapshot, {
        "board_id": board_id, "sha256": sha256_of({"board": board, "machine": static_machine}),
        "cpu_model": machine.get("cpu_model"), "arch": machine.get("arch"), "os": machine.get("os"),
        "machine": machine}, "sha256")
    build = library_build(context["backend"])
    build_id = _upsert(connection, m.LibraryBuild, {
        "sha256": sha256_of(build), "backend": build["name"], "library": build.get("library"),
        "version": build.get("version"), "info": build}, "sha256")
    model = context["model"]
    _upsert(connection, m.Model, {"id": model["id"], "width": model["width"], "resolution": model["resolution"],
                                  "macs": model["macs"], "params": model["params"]}, "id")
    weights = context["weights"]
    _upsert(connection, m.Weights, {
        "sha256": weights["sha256"], "format": weights["format"], "random": weights["random"],
        "release": weights.get("release"), "source_precision": weights.get("source_precision"),
        "url": weights.get("url"), "info": weights}, "sha256")
    dataset = context["dataset"]
    synthetic = bool(dataset.get("synthetic"))
    dataset_id = _upsert(connection, m.Dataset, {
        "sha256": "synthetic" if synthetic else dataset["file_list_sha256"], "synthetic": synthetic,
        "image_count": None if synthetic else dataset["image_count"], "path": dataset.get("path"),
        "val_txt_sha256": dataset.get("val_txt_sha256")}, "sha256")
    fields = identity(board, context)
    point_row = _upsert(connection, m.Point, {
        "point_id": sha256_of(fields), "accuracy_key": accuracy_key(board, context), "board_id": board_id,
        "library_build_id": build_id, "model_id": model["id"], "weights_sha256": weights["sha256"],
        "dataset_id": dataset_id, "backend": fields["backend"], "variant": fields["variant"],
        "precision": fields["precision"], "mode": fields["mode"], "batch_size": fields["batch_size"],
        "threads": fields["threads"], "cpu_affinity": fields["cpu_affinity"],
        "preprocessing": fields["preprocessing"], "identity": fields}, "point_id")

    # the document as stored: without its bulky arrays, which have tables of their own (no copy of them is made)
    stored = {key: value for key, value in written.items() if key != "predictions"}
    if "performance" in stored:
        stored["performance"] = {k: v for k, v in stored["performance"].items() if k != "samples"}
    inserted = connection.execute(insert(m.Result).values(
        document_sha256=sha256_of({"board": board, "document": written}), point_id=point_row, sweep_id=sweep_id,
        snapshot_id=snapshot_id, status=document["status"], started_at=parse_time(document["started_at"]),
        finished_at=parse_time(document["finished_at"]), schema_version=written["schema_version"],
        requestflow_version=document["requestflow_version"], repetitions=context.get("repetitions"),
        warmup=context.get("warmup"), document=stored,
    ).on_conflict_do_nothing(index_elements=["document_sha256"]).returning(m.Result.id)).scalar_one_or_none()
    if inserted is None:
        return None
    if "performance" in document:
        p = document["performance"]
        connection.execute(insert(m.Performance).values(
            result_id=inserted, n=p["n"], min_s=p["min"], median_s=p["median"], mean_s=p["mean"], p90_s=p["p90"],
            p99_s=p["p99"], max_s=p.get("max"), stdev_s=p["stdev"], throughput_ips=p.get("throughput_ips")))
        _copy(connection, "samples (result_id, i, seconds)",
              (f"{inserted}\t{i}\t{s}\n" for i, s in enumerate(p["samples"])))
    if "accuracy" in document:
        a = document["accuracy"]
        connection.execute(insert(m.Accuracy).values(result_id=inserted, n=a["n"], top1=a["top1"], top5=a["top5"],
                                                     failed_count=a["failed_count"]))
        _copy(connection, "predictions (result_id, image, label, top5, scores)",
              _prediction_lines(inserted, document.get("predictions", [])))
    if document["status"] == "failed":
        e = document["error"]
        connection.execute(insert(m.Error).values(result_id=inserted, type=e["type"], message=e["message"],
                                                  traceback=e.get("traceback")))
    return inserted


# COPY's text format: a backslash, tab, newline or carriage return in a value is written escaped
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _prediction_lines(result_id: int, predictions: list[dict]):
    """COPY lines of ``predictions`` (the values' ``str``: the shortest text of the same float, or the int). The
    file names are escaped in one pass (joined by NUL, which no stored text holds: ``check_document``), the usual
    five classes unpacked without a join: 0.1 s for 50,000 where a join per array took 0.3 s."""
    names = "\0".join(p["file"] for p in predictions).translate(COPY_ESCAPES).split("\0") if predictions else []
    for p, name in zip(predictions, names, strict=True):
        top5 = p["top5"]
        if len(top5) == 5:
            (c0, s0), (c1, s1), (c2, s2), (c3, s3), (c4, s4) = top5
            yield f"{result_id}\t{name}\t{p['label']}\t{{{c0},{c1},{c2},{c3},{c4}}}\t{{{s0},{s1},{s2},{s3},{s4}}}\n"
        else:
            classes, scores = zip(*top5, strict=True) if top5 else ((), ())
            yield (f"{result_id}\t{name}\t{p['label']}\t{{{','.join(map(str, classes))}}}\t"
                   f"{{{','.join(map(str, scores))}}}\n")


def _copy(connection: Connection, target: str, lines: Iterable[str], batch: int = 10_000) -> None:
    """COPY ``target`` FROM STDIN, ``lines`` in COPY's text format (values checked before: integers, finite floats,
    text without NUL), ``batch`` lines a write. Formatted here rather than by ``write_row``: psycopg's array dumper,
    a Python loop, took most of a 50,000-prediction load (bench/bench_store.py)."""
    cursor = connection.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {target} FROM STDIN") as copy:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == batch:
                copy.write("".join(chunk))
                chunk.clear()
        if chunk:
            copy.write("".join(chunk))
