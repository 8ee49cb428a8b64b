"""The results store's commands of the ``requestflow`` CLI: ``validate``, ``db``, ``load``, ``scoreboard``,
``board``, ``sql``, ``export``, ``import``, ``import-reference``, ``diff``, ``version-report``, ``regressions``,
``plot`` and ``rm``.
``requestflow.cli`` builds the parser from ``add_parsers`` and runs ``COMMANDS``; ``open_store`` and ``DB_HELP``
serve the controller's commands too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from requestflow.errors import OneLineParser, UserError

DB_HELP = ("PostgreSQL URL (default: $REQUESTFLOW_DATABASE_URL, the Airflow Connection requestflow_results, else the "
           "embedded PostgreSQL)")
DB_READER_HELP = ("PostgreSQL URL of a login that is a member of requestflow_reader, for reads when the --db login "
                  "cannot switch to it (default: $REQUESTFLOW_READER_DATABASE_URL, the Airflow Connection "
                  "requestflow_results_reader; docs/security.md)")


def _reader_options(parser) -> None:
    parser.add_argument("--db-reader", metavar="URL", help=DB_READER_HELP)


def add_parsers(sub) -> None:
    """The results store's subcommands, on ``sub`` (the CLI's subparsers)."""
    validate = sub.add_parser("validate", help="check result JSON files: what the results store would refuse "
                                               "(schema, version, numbers and text it cannot hold), no database")
    validate.add_argument("files", nargs="+")

    db_help = DB_HELP
    db = sub.add_parser("db", help="the results database: upgrade its schema, check it, stop the embedded server")
    db.add_argument("action", choices=("upgrade", "check", "url", "stop"))
    db.add_argument("--db", help=db_help)

    load = sub.add_parser("load", help="load result JSON files into the results store (idempotent)")
    load.add_argument("files", nargs="+")
    load.add_argument("--board", default="local", help="the board the results were measured on (default: local)")
    load.add_argument("--sweep", help="the sweep (Airflow run id) they belong to")
    load.add_argument("--db", help=db_help)

    board = sub.add_parser("scoreboard", help="one row per point: latency, throughput, accuracy, energy, cost")
    board.add_argument("--board", help="only this board")
    board.add_argument("--format", choices=("table", "csv", "json"), default="table")
    board.add_argument("--db", help=db_help)
    _reader_options(board)

    board_cmd = sub.add_parser("board", help="show or set a board's price, service life and peak power "
                                             "(for the scoreboard's cost and energy columns)")
    board_cmd.add_argument("name")
    board_cmd.add_argument("--price-usd", type=float)
    board_cmd.add_argument("--price-date", help="YYYY-MM-DD: when that price was seen")
    board_cmd.add_argument("--service-life-years", type=float)
    board_cmd.add_argument("--peak-power-w", type=float)
    board_cmd.add_argument("--db", help=db_help)

    sql = sub.add_parser("sql", help="run read-only SQL on the results store (views: scoreboard, pareto_frontier)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="cancel the query after this long (default: $REQUESTFLOW_SQL_TIMEOUT, else 30; 0: no limit)")
    sql.add_argument("--db", help=db_help)
    _reader_options(sql)

    export = sub.add_parser("export", help="write the selected points (result documents with their samples and "
                                           "predictions, boards, sweeps, library builds, point failures) to a zip "
                                           "archive with checksums, for `requestflow import` elsewhere")
    export.add_argument("file", metavar="FILE.zip")
    _add_result_filters(export)
    export.add_argument("--since", metavar="TIME", help="only results started at or after this date or time (ISO; "
                                                        "UTC unless it says otherwise)")
    export.add_argument("--until", metavar="TIME", help="only results started before this date or time")
    export.add_argument("--db", help=db_help)
    _reader_options(export)

    archive_import = sub.add_parser("import", help="import an archive of `requestflow export`: checked whole "
                                                   "before anything is written, one transaction, idempotent")
    archive_import.add_argument("file", metavar="FILE.zip")
    archive_import.add_argument("--update-boards", action="store_true",
                                help="boards whose figures (price, service life, peak power...) differ here take "
                                     "the archive's (default: refuse the archive, naming the differences)")
    archive_import.add_argument("--db", help=db_help)

    reference = sub.add_parser("import-reference", help="import the published ReQuEST-ASPLOS'18 HiKey960 results "
                                                         "as a read-only reference board (idempotent)")
    reference.add_argument("csv", nargs="?", metavar="CSV",
                           help="default: $REQUESTFLOW_DATA/request-asplos18/hikey960-mobilenets.csv")
    reference.add_argument("--board", default="hikey960-request-asplos18",
                           help="the reference board's name (default: hikey960-request-asplos18)")
    reference.add_argument("--db", help=db_help)

    diff = sub.add_parser("diff", help="the images whose top-1 differs between two accuracy results of one model")
    diff.add_argument("a", metavar="A", help="an accuracy point id (or a unique prefix) or a result id (result:N)")
    diff.add_argument("b", metavar="B", help="the same, for the other side")
    diff.add_argument("--format", choices=("table", "csv", "json"), default="table")
    diff.add_argument("--db", help=db_help)
    _reader_options(diff)

    versions = sub.add_parser("version-report", help="one board, two library versions: every configuration stored "
                                                     "with both, latency ratio with its significance, top-1 delta, "
                                                     "images whose top-1 changed")
    versions.add_argument("a", metavar="VERSION_A", help="a library version as stored (e.g. 2.20.0), the baseline")
    versions.add_argument("b", metavar="VERSION_B", help="the other version")
    versions.add_argument("--board", default="local", help="the board (default: local)")
    versions.add_argument("--backend", help="only this backend's points")
    versions.add_argument("--alpha", type=float, default=0.01, help="significance of the latency test (default 0.01)")
    versions.add_argument("--min-effect", type=float, default=0.05, metavar="FRACTION",
                          help="smallest change of median latency that counts, 0.05 = 5%% (default: 0.05)")
    versions.add_argument("--format", choices=("table", "csv", "json"), default="table")
    versions.add_argument("--db", help=db_help)
    _reader_options(versions)

    _add_regressions_parser(sub, db_help)
    _add_rm_parser(sub, db_help)

    plot = sub.add_parser("plot", help="the scoreboard as a figure, any metric against any other, with the Pareto "
                                       "frontier: the plot of the scoreboard page, as an SVG or PNG file")
    metrics_help = ("latency_median_s (median), latency_min_s (min), latency_p90_s (p90), throughput_ips "
                    "(throughput), top1, top5, model_size_bytes (size), macs, energy_est_j (energy), "
                    "cost_per_million_images_usd (cost)")
    plot.add_argument("--x", default="latency_median_s", metavar="METRIC", help=f"default median; {metrics_help}")
    plot.add_argument("--y", default="top1", metavar="METRIC", help="default top1")
    for option, what in (("board", "boards"), ("backend", "backends"), ("variant", "backend variants (JSON text)"),
                         ("width", "width multipliers"), ("resolution", "resolutions"), ("precision", "precisions"),
                         ("sweep", "sweeps (run ids)"), ("images", "dataset sizes (images of the accuracy run)")):
        plot.add_argument(f"--{option}", nargs="+", metavar="VALUE", help=f"only these {what}")
    plot.add_argument("--log-x", action="store_true", help="logarithmic X axis")
    plot.add_argument("--log-y", action="store_true", help="logarithmic Y axis")
    plot.add_argument("--out", required=True, metavar="FILE", help="FILE.svg or FILE.png")
    plot.add_argument("--db", help=db_help)
    _reader_options(plot)


def _add_regressions_parser(sub, db_help: str) -> None:
    """``regressions`` lists; ``regressions detect`` and ``regressions ack`` act. The actions' --db and --format
    default to SUPPRESS so that one given before the action (``regressions --db URL detect ...``) is kept."""
    regressions = sub.add_parser("regressions", help="results slower (or less accurate) than their point's history: "
                                                     "list them (unacknowledged ones by default), detect, acknowledge")
    regressions.add_argument("--sweep", metavar="RUN_ID", help="only the regressions of this sweep")
    regressions.add_argument("--all", action="store_true", help="acknowledged ones too")
    regressions.add_argument("--format", choices=("table", "csv", "json"), default="table")
    regressions.add_argument("--db", help=db_help)
    _reader_options(regressions)
    actions = regressions.add_subparsers(dest="regressions_action", metavar="ACTION", parser_class=OneLineParser,
                                          help="none: list them")
    detect = actions.add_parser("detect", help="compare every result of a sweep with its point's history and store "
                                               "the regressions (idempotent); exit status 1 when some are "
                                               "unacknowledged")
    detect.add_argument("--sweep", metavar="RUN_ID", required=True, help="the sweep (Airflow run id) to check")
    detect.add_argument("--window", type=int, default=5,
                        help="the latest N earlier results of each point are its baseline (default: 5)")
    detect.add_argument("--alpha", type=float, default=0.01,
                        help="significance of the Mann-Whitney U test on latency samples (default: 0.01)")
    detect.add_argument("--min-effect", type=float, default=0.05, metavar="FRACTION",
                        help="smallest change of median latency that counts, 0.05 = 5%% (default: 0.05)")
    detect.add_argument("--faster", action="store_true", help="record significant speed-ups too")
    detect.add_argument("--format", choices=("text", "json"), default=argparse.SUPPRESS,
                        help="the report as text (default) or JSON")
    detect.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    ack = actions.add_parser("ack", help="acknowledge a regression as a known step change: its result becomes the "
                                         "point's baseline for that metric, and it stops alerting")
    ack.add_argument("id", type=int, metavar="ID", help="the regression's id (first column of the list)")
    ack.add_argument("--reason", required=True, help="why the change is expected (kept with the acknowledgement)")
    ack.add_argument("--by", help="who acknowledges (default: the login name)")
    ack.add_argument("--db", default=argparse.SUPPRESS, help=db_help)


def _add_result_filters(parser) -> None:
    """The filters on stored results that ``export`` and ``rm`` take (``archive_format.RESULT_FILTERS``)."""
    for option, what in (("board", "boards"), ("model", "model ids"), ("backend", "backends"),
                         ("variant", "backend variants (JSON text)"), ("width", "width multipliers"),
                         ("resolution", "resolutions"), ("precision", "precisions"),
                         ("mode", "modes (performance, accuracy)"), ("sweep", "sweeps (run ids)"),
                         ("images", "dataset sizes (images)")):
        parser.add_argument(f"--{option}", nargs="+", metavar="VALUE", help=f"only these {what}")


def _add_rm_parser(sub, db_help: str) -> None:
    rm = sub.add_parser("rm", help="remove the results matching every filter (with their samples, predictions and "
                                   "errors) and the matching point failures, in one transaction; asks first")
    _add_result_filters(rm)
    rm.add_argument("--since", metavar="TIME", help="only results started at or after this date or time (ISO; UTC "
                                                    "unless it says otherwise)")
    rm.add_argument("--before", metavar="TIME", help="only results started before this date or time")
    rm.add_argument("--dry-run", action="store_true", help="print what would be removed (rows per table), remove "
                                                           "nothing")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    rm.add_argument("--db", help=db_help)


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


def open_store(args, role: str = "writer", timeout_s: float | None = None):
    """(engine, url) of the results store: its schema brought up to date with the ``--db`` login (the owner's,
    ``url``), then an engine whose every transaction acts as requestflow_writer, or with ``role="reader"`` as
    requestflow_reader (read-only, through ``--db-reader`` when given; each statement cut after ``timeout_s``
    seconds, default ``--timeout`` or $REQUESTFLOW_SQL_TIMEOUT or 30 s; 0: no limit). See requestflow.results.roles."""
    from requestflow.results import roles
    from requestflow.results.database import resolve_url, upgrade

    url, _ = resolve_url(args.db)
    try:
        upgrade(url)
        if role != "reader":
            return roles.writer_engine(url), url
        reader = roles.reader_url(getattr(args, "db_reader", None))
        if timeout_s is None:
            timeout_s = getattr(args, "timeout", None)
            if timeout_s is None:
                timeout_s = roles.timeout_from_env(roles.SQL_TIMEOUT_ENV, roles.SQL_TIMEOUT_S)
            elif timeout_s < 0:
                raise UserError(f"--timeout must be a number of seconds, 0 for no limit; got {timeout_s:g}")
        return roles.reader_engine(url, reader, timeout_s), url
    except UserError:
        raise
    except Exception as exc:  # connection refused, authentication, ...: one line naming the database
        from sqlalchemy.engine import make_url
        raise UserError(f"cannot use the results database {make_url(url).render_as_string(hide_password=True)}: "
                        f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}") from None


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
    columns, rows = scoreboard(engine, args.board)
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


def cmd_export(args, argv) -> int:
    from requestflow.results.archive_export import export
    from requestflow.results.archive_format import FILTERS

    out = Path(args.file)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{args.file}: the archive's name must end in .zip")
    if not out.parent.resolve().is_dir():
        raise UserError(f"{args.file}: folder {out.parent} does not exist")
    filters = {key: [v for value in getattr(args, key) or [] for v in
                     (value.split(",") if key not in ("variant", "sweep") else [value]) if v]
               for key in FILTERS if key not in ("since", "until")}
    filters.update(since=[args.since] if args.since else [], until=[args.until] if args.until else [])
    engine, _ = open_store(args, "reader", timeout_s=0)  # a whole store may take longer than a query
    report = export(engine, out, filters)
    c = report.counts
    print(f"{report.path}: {c['results']} result document(s) ({c['samples']} samples, {c['predictions']} "
          f"predictions), {c['boards']} board(s), {c['sweeps']} sweep(s), {c['builds']} library build(s), "
          f"{c['failures']} point failure(s)")
    return 0


def cmd_import_archive(args, argv) -> int:
    from requestflow.results.archive_import import import_archive

    if not os.path.isfile(args.file):
        raise UserError(f"{args.file}: no such file")
    engine, _ = open_store(args)
    report = import_archive(engine, args.file, update_boards=args.update_boards)
    for warning in report.warnings:
        print(f"requestflow: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: {report.describe()}")
    return 0


def cmd_import_reference(args, argv) -> int:
    from requestflow.results.reference import import_reference

    engine, _ = open_store(args)
    print(import_reference(engine, args.csv, args.board).describe())
    return 0


def cmd_diff(args, argv) -> int:
    from requestflow.results.diff import mispredictions, render

    engine, _ = open_store(args, "reader")
    print(render(mispredictions(engine, args.a, args.b), args.format))
    return 0


def cmd_version_report(args, argv) -> int:
    from requestflow.results.version_report import version_report

    engine, _ = open_store(args, "reader")
    print(version_report(engine, args.board, args.a, args.b, args.backend, args.alpha, args.min_effect
                         ).render(args.format))
    return 0


def cmd_regressions(args, argv) -> int:
    from requestflow.results import regressions

    if args.regressions_action == "detect":
        settings = regressions.Settings(window=args.window, alpha=args.alpha, min_effect=args.min_effect,
                                        report_faster=args.faster)  # bad values: one line, before any connection
        engine, _ = open_store(args)
        report = regressions.detect(engine, args.sweep, settings.window, settings.alpha, settings.min_effect,
                                    settings.report_faster)
        print(json.dumps(report.as_dict(), indent=1, default=str) if args.format == "json" else report.summary())
        return 1 if report.unacknowledged else 0
    if args.regressions_action == "ack":
        engine, _ = open_store(args)
        print(regressions.acknowledge(engine, args.id, args.reason, args.by).summary())
        return 0
    from requestflow.results.query import render

    engine, _ = open_store(args, "reader")
    columns, rows = regressions.list_regressions(engine, args.sweep, include_acknowledged=args.all)
    at = columns.index("variant")  # its label, as the scoreboard and the page show it (the view keeps the JSON)
    print(render(columns, [(*row[:at], regressions.variant_text(row[at]), *row[at + 1:]) for row in rows],
                 args.format))
    return 0


def cmd_rm(args, argv) -> int:
    from requestflow.results import remove

    filters = {key: [v for value in getattr(args, key) or [] for v in
                     (value.split(",") if key not in ("variant", "sweep") else [value]) if v]
               for key in remove.FILTERS if key not in remove.TIME_FILTERS}
    filters.update(since=[args.since] if args.since else [], before=[args.before] if args.before else [])
    remove.parse_filters(filters)  # no filter, a bad time: refused before any connection
    if not (args.yes or args.dry_run or sys.stdin.isatty()):
        raise UserError("requestflow rm asks for confirmation and stdin is not a terminal: give --yes to remove "
                        "without asking (or --dry-run to see what would go)")
    engine, _ = open_store(args)
    planned = remove.plan(engine, filters)
    if planned.empty:
        print("nothing to remove: no result or point failure matches"
              + (f" (kept {sum(planned.kept_read_only.values())} result(s) of read-only reference boards)"
                 if planned.kept_read_only else ""))
        return 0
    print(("would remove:" if args.dry_run else "to remove:") + "\n" + planned.describe())
    if args.dry_run:
        return 0
    if not args.yes:
        answer = input(f"remove {planned.counts['results']} result(s) and {planned.counts['point_failures']} "
                       "point failure(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    counts = remove.remove(engine, planned)
    print(f"removed {counts['results']} result(s) ({counts['samples']} samples, {counts['predictions']} "
          f"predictions) and {counts['point_failures']} point failure(s); scoreboard refreshed")
    return 0


def cmd_plot(args, argv) -> int:
    from requestflow.board.files import atomic_write_bytes
    from requestflow.results.plot import mark_id
    from requestflow.results.scoreboard_data import FILTERS, Selection, draw

    out = Path(args.out)
    fmt = out.suffix.lower().removeprefix(".")
    if fmt not in ("svg", "png"):
        raise UserError(f"--out {args.out}: the file name must end in .svg or .png")
    if not out.parent.resolve().is_dir():
        raise UserError(f"--out {args.out}: folder {out.parent} does not exist")
    query = {key: [v for value in getattr(args, key) or [] for v in
                   (value.split(",") if key not in ("variant", "sweep") else [value]) if v] for key in FILTERS}
    query.update(x=[args.x], y=[args.y], log_x=["1"] if args.log_x else [], log_y=["1"] if args.log_y else [])
    selection = Selection.from_query(query)  # an unknown metric: one line naming the known ones
    engine, _ = open_store(args, "reader")
    rows, drawing = draw(engine, selection, fmt)
    atomic_write_bytes(out, drawing.data)
    print(f"{out}: {len(drawing.drawn)} point(s) drawn ({selection.describe()})"
          + (f", {drawing.missing} without both figures left out" if drawing.missing else "")
          + f"; {len(drawing.frontier)} on the Pareto frontier:")
    for row in rows:
        if mark_id(row) in drawing.frontier:  # a point shown on two image sets is two rows, each on its own frontier
            images = f"  {row['image_count']} images" if "images" in selection.filters and row["image_count"] else ""
            print(f"  {row['board']}  {row['model']}  {row['backend']}  {row['precision']}  "
                  f"{selection.x}={row[selection.x]:.6g}  {selection.y}={row[selection.y]:.6g}{images}")
    return 0


COMMANDS = {
    "validate": cmd_validate, "db": cmd_db, "load": cmd_load, "scoreboard": cmd_scoreboard, "board": cmd_board,
    "sql": cmd_sql, "export": cmd_export, "import": cmd_import_archive, "import-reference": cmd_import_reference,
    "diff": cmd_diff, "regressions": cmd_regressions, "plot": cmd_plot, "rm": cmd_rm,
    "version-report": cmd_version_report,
}
