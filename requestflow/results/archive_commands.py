"""The results store's commands that move results in and out of it: ``export`` (a checked zip archive), ``import``
(such an archive), ``import-reference`` (the published ReQuEST-ASPLOS'18 results) and ``rm``. Each ``add_*``
function adds one subcommand's parser (``requestflow.results.results_commands`` orders them); ``COMMANDS`` runs
them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from requestflow.errors import UserError
from requestflow.results.store_access import DB_HELP, add_reader_option, listed_values, open_store


def add_export(sub) -> None:
    export = sub.add_parser("export", help="write the selected points (result documents with their samples and "
                                           "predictions, boards, sweeps, library builds, point failures) to a zip "
                                           "archive with checksums, for `requestflow import` elsewhere")
    export.add_argument("file", metavar="FILE.zip")
    add_result_filters(export)
    export.add_argument("--since", metavar="TIME", help="only results started at or after this date or time (ISO; "
                                                        "UTC unless it says otherwise)")
    export.add_argument("--until", metavar="TIME", help="only results started before this date or time")
    export.add_argument("--db", help=DB_HELP)
    add_reader_option(export)


def add_import(sub) -> None:
    archive_import = sub.add_parser("import", help="import an archive of `requestflow export`: checked whole "
                                                   "before anything is written, one transaction, idempotent")
    archive_import.add_argument("file", metavar="FILE.zip")
    archive_import.add_argument("--update-boards", action="store_true",
                                help="boards whose figures (price, service life, peak power...) differ here take "
                                     "the archive's (default: refuse the archive, naming the differences)")
    archive_import.add_argument("--db", help=DB_HELP)


def add_import_reference(sub) -> None:
    reference = sub.add_parser("import-reference", help="import the published ReQuEST-ASPLOS'18 HiKey960 results "
                                                         "as a read-only reference board (idempotent)")
    reference.add_argument("csv", nargs="?", metavar="CSV",
                           help="default: $REQUESTFLOW_DATA/request-asplos18/hikey960-mobilenets.csv")
    reference.add_argument("--board", default="hikey960-request-asplos18",
                           help="the reference board's name (default: hikey960-request-asplos18)")
    reference.add_argument("--db", help=DB_HELP)


def add_rm(sub) -> None:
    rm = sub.add_parser("rm", help="remove the results matching every filter (with their samples, predictions and "
                                   "errors) and the matching point failures, in one transaction; asks first")
    add_result_filters(rm)
    rm.add_argument("--since", metavar="TIME", help="only results started at or after this date or time (ISO; UTC "
                                                    "unless it says otherwise)")
    rm.add_argument("--before", metavar="TIME", help="only results started before this date or time")
    rm.add_argument("--dry-run", action="store_true", help="print what would be removed (rows per table), remove "
                                                           "nothing")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    rm.add_argument("--db", help=DB_HELP)


def add_result_filters(parser) -> None:
    """The filters on stored results that ``export`` and ``rm`` take (``archive_format.RESULT_FILTERS``)."""
    for option, what in (("board", "boards"), ("model", "model ids"), ("backend", "backends"),
                         ("variant", "backend variants (JSON text)"), ("width", "width multipliers"),
                         ("resolution", "resolutions"), ("precision", "precisions"),
                         ("mode", "modes (performance, accuracy)"), ("sweep", "sweeps (run ids)"),
                         ("images", "dataset sizes (images)")):
        parser.add_argument(f"--{option}", nargs="+", metavar="VALUE", help=f"only these {what}")


def cmd_export(args, argv) -> int:
    from requestflow.results.archive_export import export
    from requestflow.results.archive_format import FILTERS

    out = Path(args.file)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{args.file}: the archive's name must end in .zip")
    if not out.parent.resolve().is_dir():
        raise UserError(f"{args.file}: folder {out.parent} does not exist")
    filters = listed_values(args, [key for key in FILTERS if key not in ("since", "until")])
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


def cmd_rm(args, argv) -> int:
    from requestflow.results import remove

    filters = listed_values(args, [key for key in remove.FILTERS if key not in remove.TIME_FILTERS])
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


COMMANDS = {"export": cmd_export, "import": cmd_import_archive, "import-reference": cmd_import_reference, "rm": cmd_rm}
