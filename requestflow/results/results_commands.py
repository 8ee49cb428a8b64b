"""The results store's commands of the ``requestflow`` CLI: ``validate``, ``db``, ``load``, ``scoreboard``,
``board`` and ``sql`` here; ``export``, ``import``, ``import-reference`` and ``rm`` in
``requestflow.results.archive_commands``; ``diff``, ``version-report``, ``regressions`` and ``plot`` in
``requestflow.results.analysis_commands``. ``requestflow.cli`` builds the parser from ``add_parsers`` and runs
``COMMANDS``; ``open_store`` and ``DB_HELP`` live in ``requestflow.results.store_access``, which the controller's
commands import too.
"""

from __future__ import annotations

import json
import sys

from requestflow.errors import UserError
from requestflow.results import analysis_commands, archive_commands
from requestflow.results.store_access import DB_HELP, add_reader_option, open_store


def add_parsers(sub) -> None:
    """The results store's subcommands, on ``sub`` (the CLI's subparsers), in the order ``requestflow --help`` lists
    them."""
    for add in (add_validate, add_db, add_load, add_scoreboard, add_board, add_sql, archive_commands.add_export,
                archive_commands.add_import, archive_commands.add_import_reference, analysis_commands.add_diff,
                analysis_commands.add_version_report, analysis_commands.add_regressions, archive_commands.add_rm,
                analysis_commands.add_plot):
        add(sub)


def add_validate(sub) -> None:
    validate = sub.add_parser("validate", help="check result JSON files: what the results store would refuse "
                                               "(schema, version, numbers and text it cannot hold), no database")
    validate.add_argument("files", nargs="+")


def add_db(sub) -> None:
    db = sub.add_parser("db", help="the results database: upgrade its schema, check it, stop the embedded server")
    db.add_argument("action", choices=("upgrade", "check", "url", "stop"))
    db.add_argument("--db", help=DB_HELP)


def add_load(sub) -> None:
    load = sub.add_parser("load", help="load result JSON files into the results store (idempotent)")
    load.add_argument("files", nargs="+")
    load.add_argument("--board", default="local", help="the board the results were measured on (default: local)")
    load.add_argument("--sweep", help="the sweep (Airflow run id) they belong to")
    load.add_argument("--db", help=DB_HELP)


def add_scoreboard(sub) -> None:
    board = sub.add_parser("scoreboard", help="one row per point: latency, throughput, accuracy, energy, cost")
    board.add_argument("--board", help="only this board")
    board.add_argument("--format", choices=("table", "csv", "json"), default="table")
    board.add_argument("--latency-stat", choices=("median", "p90"),
                       help="rank each board's rows by this latency statistic, fastest first (default: by model, "
                            "backend, precision, threads)")
    board.add_argument("--library-version", nargs="+", metavar="VERSION",
                       help="only these library versions (the library_version column, e.g. 20.08 24.11)")
    board.add_argument("--db", help=DB_HELP)
    add_reader_option(board)


def add_board(sub) -> None:
    board_cmd = sub.add_parser("board", help="show or set a board's price, service life and peak power "
                                             "(for the scoreboard's cost and energy columns)")
    board_cmd.add_argument("name")
    board_cmd.add_argument("--price-usd", type=float)
    board_cmd.add_argument("--price-date", help="YYYY-MM-DD: when that price was seen")
    board_cmd.add_argument("--service-life-years", type=float)
    board_cmd.add_argument("--peak-power-w", type=float)
    board_cmd.add_argument("--db", help=DB_HELP)


def add_sql(sub) -> None:
    sql = sub.add_parser("sql", help="run read-only SQL on the results store (views: scoreboard, pareto_frontier)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="cancel the query after this long (default: $REQUESTFLOW_SQL_TIMEOUT, else 30; 0: no limit)")
    sql.add_argument("--db", help=DB_HELP)
    add_reader_option(sql)


def cmd_validate(args, argv) -> int:
    from requestflow.results.document import check_document

    bad = 0
    for path in args.files:
        try:
            with open(path) as handle:
                check_document(json.load(handle), path)
            print(f"{path}: valid")
        except (OSError, ValueError, UserError) as exc:
            bad += 1
            message = str(exc)
            print(f"{path}: INVALID: {message.removeprefix(f'{path}: ')}")
    return 1 if bad else 0


def cmd_db(args, argv) -> int:
    from requestflow.results import database

    if args.action == "stop":
        from requestflow.results.embedded import stop
        print("embedded PostgreSQL stopped" if stop() else "embedded PostgreSQL was not running")
        return 0
    url, origin = database.resolve_url(args.db)
    from sqlalchemy.engine import make_url
    shown = make_url(url).render_as_string(hide_password=True)
    if args.action == "url":
        from requestflow.results import roles

        reader = roles.reader_url(None)
        print(f"{shown}  ({origin})")
        print(f"reads as {roles.READER}, writes as {roles.WRITER}"
              + (f"; reads through {make_url(reader[0]).render_as_string(hide_password=True)} ({reader[1]})"
                 if reader else ""))
        return 0
    open_store(args)
    if args.action == "check":
        database.check(url)
        print(f"{shown}: schema up to date, no drift between models and migrations")
    else:
        print(f"{shown}: schema upgraded to head ({origin})")
    return 0


def cmd_load(args, argv) -> int:
    from requestflow.results.load import load_documents

    documents = []
    for path in args.files:
        try:
            with open(path) as handle:
                documents.append((path, json.load(handle)))
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
    engine, _ = open_store(args)
    report = load_documents(engine, documents, args.board, args.sweep)
    print(f"loaded {len(report.loaded)} new result(s), {len(report.unchanged)} already stored, board {args.board}"
          + (f", sweep {args.sweep}" if args.sweep else ""))
    return 0


def cmd_scoreboard(args, argv) -> int:
    from requestflow.results.query import render, scoreboard
    from requestflow.results.reference import notes

    engine, _ = open_store(args, "reader")
    versions = [v for value in args.library_version or () for v in value.split(",") if v]
    columns, rows = scoreboard(engine, args.board, latency_stat=args.latency_stat, library_versions=versions)
    print(render(columns, rows, args.format))
    caveats = notes(engine, {row[columns.index("board")] for row in rows})
    if caveats:  # beside a table; on stderr when the output is CSV or JSON for programs
        print(caveats, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def cmd_board(args, argv) -> int:
    from requestflow.results.boards import set_board
    from requestflow.results.query import render

    engine, _ = open_store(args)
    row = set_board(engine, args.name, price_usd=args.price_usd, price_date=args.price_date,
                    service_life_years=args.service_life_years, peak_power_w=args.peak_power_w)
    print(render(list(row), [tuple(row.values())], "table"))
    if row["kind"] == "reference":
        from requestflow.results.reference import notes
        print(notes(engine, [args.name]))
    return 0


def cmd_sql(args, argv) -> int:
    from requestflow.results.query import read_only, render

    engine, _ = open_store(args, "reader")
    print(render(*read_only(engine, args.query), args.format))
    return 0


COMMANDS = {
    "validate": cmd_validate, "db": cmd_db, "load": cmd_load, "scoreboard": cmd_scoreboard, "board": cmd_board,
    "sql": cmd_sql, **archive_commands.COMMANDS, **analysis_commands.COMMANDS,
}
