"""The results store's commands that compare and draw stored results: ``diff`` (images whose top-1 differs),
``version-report`` (one board, two library versions), ``regressions`` (list, detect, acknowledge) and ``plot``.
Each ``add_*`` function adds one subcommand's parser (``requestflow.results.results_commands`` orders them);
``COMMANDS`` runs them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from requestflow.errors import OneLineParser, UserError
from requestflow.results.store_access import DB_HELP, add_reader_option, listed_values, open_store


def add_diff(sub) -> None:
    diff = sub.add_parser("diff", help="the images whose top-1 differs between two accuracy results of one model")
    diff.add_argument("a", metavar="A", help="an accuracy point id (or a unique prefix) or a result id (result:N)")
    diff.add_argument("b", metavar="B", help="the same, for the other side")
    diff.add_argument("--format", choices=("table", "csv", "json"), default="table")
    diff.add_argument("--db", help=DB_HELP)
    add_reader_option(diff)


def add_version_report(sub) -> None:
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
    versions.add_argument("--db", help=DB_HELP)
    add_reader_option(versions)


def add_regressions(sub) -> None:
    """``regressions`` lists; ``regressions detect`` and ``regressions ack`` act. The actions' --db and --format
    default to SUPPRESS so that one given before the action (``regressions --db URL detect ...``) is kept."""
    regressions = sub.add_parser("regressions", help="results slower (or less accurate) than their point's history: "
                                                     "list them (unacknowledged ones by default), detect, acknowledge")
    regressions.add_argument("--sweep", metavar="RUN_ID", help="only the regressions of this sweep")
    regressions.add_argument("--all", action="store_true", help="acknowledged ones too")
    regressions.add_argument("--format", choices=("table", "csv", "json"), default="table")
    regressions.add_argument("--db", help=DB_HELP)
    add_reader_option(regressions)
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
    detect.add_argument("--db", default=argparse.SUPPRESS, help=DB_HELP)
    ack = actions.add_parser("ack", help="acknowledge a regression as a known step change: its result becomes the "
                                         "point's baseline for that metric, and it stops alerting")
    ack.add_argument("id", type=int, metavar="ID", help="the regression's id (first column of the list)")
    ack.add_argument("--reason", required=True, help="why the change is expected (kept with the acknowledgement)")
    ack.add_argument("--by", help="who acknowledges (default: the login name)")
    ack.add_argument("--db", default=argparse.SUPPRESS, help=DB_HELP)


def add_plot(sub) -> None:
    plot = sub.add_parser("plot", help="the scoreboard as a figure, any metric against any other, with the Pareto "
                                       "frontier: the plot of the scoreboard page, as an SVG or PNG file")
    metrics_help = ("latency_median_s (median), latency_min_s (min), latency_p90_s (p90), throughput_ips "
                    "(throughput), top1, top5, model_size_bytes (size), macs, energy_est_j (energy), "
                    "cost_per_million_images_usd (cost)")
    plot.add_argument("--x", default="latency_median_s", metavar="METRIC", help=f"default median; {metrics_help}")
    plot.add_argument("--y", default="top1", metavar="METRIC", help="default top1")
    for option, what in (("board", "boards"), ("backend", "backends"), ("variant", "backend variants (JSON text)"),
                         ("width", "width multipliers"), ("resolution", "resolutions"), ("precision", "precisions"),
                         ("sweep", "sweeps (run ids)"), ("images", "dataset sizes (images of the accuracy run)"),
                         ("library-version", "library versions (the scoreboard's library_version, e.g. 24.11)")):
        plot.add_argument(f"--{option}", nargs="+", metavar="VALUE", help=f"only these {what}")
    plot.add_argument("--log-x", action="store_true", help="logarithmic X axis")
    plot.add_argument("--log-y", action="store_true", help="logarithmic Y axis")
    plot.add_argument("--colour", "--color", default="backend", metavar="BY",
                      help="colour the points by backend (default) or library_version (alias version: one colour "
                           "per library and version, the legend naming them)")
    plot.add_argument("--out", required=True, metavar="FILE", help="FILE.svg or FILE.png")
    plot.add_argument("--db", help=DB_HELP)
    add_reader_option(plot)


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
    query = listed_values(args, FILTERS)
    query.update(x=[args.x], y=[args.y], log_x=["1"] if args.log_x else [], log_y=["1"] if args.log_y else [],
                 colour=[args.colour])
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
            version = f"  {row['library']} {row['library_version']}" if selection.colour == "library_version" else ""
            print(f"  {row['board']}  {row['model']}  {row['backend']}{version}  {row['precision']}  "
                  f"{selection.x}={row[selection.x]:.6g}  {selection.y}={row[selection.y]:.6g}{images}")
    return 0


COMMANDS = {"diff": cmd_diff, "version-report": cmd_version_report, "regressions": cmd_regressions, "plot": cmd_plot}
