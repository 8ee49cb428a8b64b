"""Reading the results store: the scoreboard, and plain read-only SQL."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy.engine import Engine

from requestflow.errors import UserError

# quality: the performance measurement's verdict (VALID / FLAGGED); its reasons last, being long
SCOREBOARD_COLUMNS = ("board", "isa", "backend", "variant_label", "library_version", "model", "precision", "threads",
                      "latency_min_s", "latency_median_s", "latency_p90_s", "throughput_ips", "quality", "top1", "top5",
                      "image_count", "accuracy_check", "energy_est_j", "cost_per_million_images_usd", "random_weights",
                      "sweep", "quality_reasons")


def read_only(engine: Engine, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
    """Run one statement in a READ ONLY transaction: (column names, rows). Errors are one clear line.

    The statement is prepared on the server, which refuses several commands in one string: ``COMMIT; DELETE ...``
    cannot escape the read-only transaction. Only queries are run (``roles.check_statement``: no ``SET ROLE``,
    ``RESET``, ``COPY``, ``DO``...). Through an engine of ``roles.reader_engine`` the transaction also acts as
    requestflow_reader with its statement timeout. ``parameters`` use psycopg's ``%(name)s`` placeholders; without
    them, ``%`` in the SQL is just a character.
    """
    import psycopg

    from requestflow.results.roles import check_statement

    check_statement(sql)
    with engine.connect() as connection:
        connection.begin()  # a role engine's SET LOCAL ROLE and timeout, before the driver's own cursor runs
        driver = connection.connection.driver_connection
        driver.execute("SET TRANSACTION READ ONLY")
        cursor = driver.cursor()
        try:
            cursor.execute(sql, parameters, prepare=True)
            if cursor.description is None:
                return [], []
            return [column.name for column in cursor.description], cursor.fetchall()
        except psycopg.errors.QueryCanceled:
            timeout = getattr(engine, "_requestflow_timeout_s", None)
            raise UserError(f"SQL error: the query ran longer than the statement timeout"
                            f"{f' of {timeout:g} s' if timeout else ''} and was cancelled (requestflow sql --timeout, "
                            "$REQUESTFLOW_SQL_TIMEOUT)") from None
        except psycopg.Error as exc:
            raise UserError(f"SQL error: {str(exc).strip().splitlines()[0]}") from None
        finally:
            connection.rollback()  # nothing to keep, even from a read-only transaction


# the latency statistics a scoreboard can be ranked by (issue #19): name -> column
LATENCY_STATS = {"median": "latency_median_s", "p90": "latency_p90_s"}


def scoreboard(engine: Engine, board: str | None = None, columns=SCOREBOARD_COLUMNS,
               latency_stat: str | None = None, library_versions=()) -> tuple[list[str], list[tuple]]:
    """The scoreboard's rows (of ``board``; of the ``library_versions`` when given), by board, model, backend...;
    with ``latency_stat`` (``median``, ``p90``) each board's rows ranked by that statistic, fastest first (rows
    without a latency last)."""
    clauses = ["s.board = %(board)s"] * bool(board) + ["s.library_version = ANY(%(versions)s)"] * bool(library_versions)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    ranked = f"s.{LATENCY_STATS[latency_stat]} NULLS LAST, " if latency_stat else ""
    selected = ", ".join(ISA_SQL if column == "isa" else f"s.{column}" for column in columns)
    return read_only(engine, f"SELECT {selected} FROM scoreboard s {ISA_JOIN if 'isa' in columns else ''} {where} "
                             f"ORDER BY s.board, {ranked}s.model, s.backend, s.precision, s.threads",
                     {"board": board, "versions": list(library_versions)})


# the CPU's ISA extensions (issue #20), from the machine block of the row's result (performance, else accuracy):
# not a column of the scoreboard view, read beside it; empty for results recorded before machine.isa existed
ISA_SQL = "ps.machine -> 'isa' ->> 'summary' AS isa"
ISA_JOIN = ("LEFT JOIN results isa_r ON isa_r.id = coalesce(s.performance_result_id, s.accuracy_result_id) "
            "LEFT JOIN platform_snapshots ps ON ps.id = isa_r.snapshot_id")


def render(columns: list[str], rows: list[tuple], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], indent=1, default=str)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths, strict=True))
              for r in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # reasons, caveats (none: empty)
        return "; ".join(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _numeric(text_value: str) -> bool:
    try:
        float(text_value)
        return True
    except ValueError:
        return False


def json_value(value, exact: bool = False):
    """A database value made JSON-friendly: dates and times as ISO text; a Decimal (prices) as text when
    ``exact`` (archives keep every digit), else as a float (the page's charts and tables)."""
    import datetime as dt
    import decimal

    if isinstance(value, decimal.Decimal):
        return str(value) if exact else float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value
