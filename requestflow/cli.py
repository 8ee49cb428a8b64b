"""The ``requestflow`` command. Each subcommand imports only its own world (board, results or controller).

Bad input gives one line ``requestflow: error: ...`` on stderr, exit status 2, no traceback and no output file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from requestflow.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        raise UserError(f"{self.prog}: {message}")


def _add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model id, e.g. mobilenet-v1-0.25-128 (see `requestflow models`)")
    parser.add_argument("--backend", default="tflite", help="tf, tflite or armcl (default: tflite)")
    parser.add_argument("--weights", nargs="+", metavar="PATH",
                        help="a .tflite (or the two 1.0_224 pieces), an .h5, a checkpoint prefix, a canonical "
                             "weights folder, or 'random'; default: the registry's weights for the model")
    parser.add_argument("--precision", help="fp32, uint8 or int8: which registry weights to run")
    parser.add_argument("--release", help="weights release in the registry (see `requestflow models`)")
    parser.add_argument("--offline", action="store_true", help="never download weights")


def _add_regressions_parser(sub, db_help: str) -> None:
    """``regressions`` lists; ``regressions detect`` and ``regressions ack`` act. The actions' --db and --format
    default to SUPPRESS so that one given before the action (``regressions --db URL detect ...``) is kept."""
    regressions = sub.add_parser("regressions", help="results slower (or less accurate) than their point's history: "
                                                     "list them (unacknowledged ones by default), detect, acknowledge")
    regressions.add_argument("--sweep", metavar="RUN_ID", help="only the regressions of this sweep")
    regressions.add_argument("--all", action="store_true", help="acknowledged ones too")
    regressions.add_argument("--format", choices=("table", "csv", "json"), default="table")
    regressions.add_argument("--db", help=db_help)
    actions = regressions.add_subparsers(dest="regressions_action", metavar="ACTION", parser_class=_Parser,
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


DB_HELP = ("PostgreSQL URL (default: $REQUESTFLOW_DATABASE_URL, the Airflow Connection requestflow_results, else the "
           "embedded PostgreSQL)")
COMMAND_GROUP = "requestflow.commands"  # entry points: commands that other packages add (the controller's)


@dataclass(frozen=True)
class Command:
    """A command another package adds to this CLI through the entry-point group ``requestflow.commands``:
    its help line, a function adding its arguments to its parser, and the function running it (exit status)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[str]], int]


def added_commands() -> dict[str, Command]:
    """The commands of the entry-point group ``requestflow.commands`` whose module imports here. In a checkout, the
    controller's (``operators.commands``: sweep, replay, board-gc, airflow-env); on a board, installed from the
    wheel without the checkout, none: an entry whose own top-level package is absent is left out, any other error
    is raised."""
    from importlib.metadata import entry_points

    commands = {}
    for entry in entry_points(group=COMMAND_GROUP):
        try:
            command = entry.load()
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == entry.module.split(".")[0]:
                continue
            raise
        if not all(callable(getattr(command, name, None)) for name in ("arguments", "run")):  # a Command (duck-
            # typed: run as ``python -m requestflow.cli``, this module is __main__ and its class another object)
            raise TypeError(f"entry point {entry.name} = {entry.value}: not a requestflow.cli.Command")
        commands[entry.name] = command
    return dict(sorted(commands.items()))


def build_parser(added: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="requestflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"requestflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="benchmark one point on this machine and write its result JSON")
    _add_weights_arguments(run)
    run.add_argument("--mode", default="performance", help="performance or accuracy")
    run.add_argument("--images", help="folder of ILSVRC2012_val_*.JPEG (default for accuracy: the shared data)")
    run.add_argument("--val-txt", help="ground truth FILE CLASS (default: val.txt beside the image folder)")
    run.add_argument("--synset-words", help="class names (default: synset_words.txt beside val.txt)")
    run.add_argument("--limit", type=int, help="use the first N images (default: all)")
    run.add_argument("--repetitions", type=int, default=20, help="timed runs (default: 20)")
    run.add_argument("--warmup", type=int, default=3, help="untimed runs before them (default: 3)")
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--threads", type=int, help="default: the number of CPUs in the affinity set")
    run.add_argument("--cpus", help="CPU affinity, e.g. 4-7 for the big cluster of a HiKey960")
    run.add_argument("--cluster", choices=("all", "big", "LITTLE"),
                     help="run on one CPU cluster of a big.LITTLE board (instead of --cpus)")
    run.add_argument("--variant", metavar="SPEC",
                     help="armcl: key=value pairs (or a JSON object): target CL|NEON, layout NHWC|NCHW, conv_method "
                          "DEFAULT|GEMM|DIRECT|WINOGRAD, tuner NONE|RAPID|NORMAL|EXHAUSTIVE, conv_methods_file "
                          "FILE; e.g. layout=NCHW,tuner=RAPID")
    run.add_argument("--armcl-build", metavar="DIR",
                     help="armcl: the ArmCL build folder (default: the one OpenCL build in the machine's cache)")
    run.add_argument("--out", help="result JSON file (required unless --identify)")
    run.add_argument("--identify", action="store_true",
                     help="print the point's context as JSON (backend loaded, nothing measured) and exit: what "
                          "resuming a sweep hashes to find points already stored")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    classify = sub.add_parser("classify", help="top-5 classes of images, with class names")
    classify.add_argument("images", nargs="*", metavar="IMAGE",
                          help="default: the sample images (the shared data's, else one that matplotlib ships)")
    _add_weights_arguments(classify)
    classify.add_argument("--synset-words", help="class names (default: the shared data's synset_words.txt)")

    dataset = sub.add_parser("dataset", help="ImageNet validation images for accuracy: import them into "
                                             "requestflow's data folder, check them, say where they are")
    dataset_actions = dataset.add_subparsers(dest="dataset_action", metavar="ACTION", required=True,
                                             parser_class=_Parser)
    dataset_import = dataset_actions.add_parser(
        "import", help="ILSVRC2012_img_val.tar (or a folder of its JPEGs) and its ground truth, checked, into the "
                       "data folder in one step")
    dataset_import.add_argument("source", metavar="SOURCE", help="ILSVRC2012_img_val.tar or a folder of its JPEGs")
    dataset_import.add_argument("--val-txt", help="ground truth: FILE CLASS per line, CLASS 0-based (caffe_ilsvrc12)")
    dataset_import.add_argument("--synset-words", help="class names, line i = class i (caffe_ilsvrc12)")
    dataset_import.add_argument("--labels", metavar="ARCHIVE",
                                help="caffe_ilsvrc12.tar.gz, holding val.txt and synset_words.txt")
    dataset_import.add_argument("--data", help="the data folder (default: $REQUESTFLOW_DATA, else requestflow's "
                                               "own: $XDG_DATA_HOME/requestflow or ~/.local/share/requestflow)")
    dataset_import.add_argument("--partial", action="store_true",
                                help="accept fewer than the 50,000 validation images (a subset)")
    dataset_import.add_argument("--replace", action="store_true", help="replace images imported before")
    for name, text in (("check", "recompute the sha256 of every imported file against its SHA256SUMS"),
                       ("where", "the data folder accuracy points use, and what it holds")):
        action = dataset_actions.add_parser(name, help=text)
        action.add_argument("--data", help="the data folder (default: as for import)")

    imp = sub.add_parser("import-weights", help="convert real weights into the canonical per-layer format")
    imp.add_argument("sources", nargs="+", metavar="SOURCE")
    imp.add_argument("--model", required=True)
    imp.add_argument("--out", required=True, help="output folder")

    models = sub.add_parser("models", help="the catalogue, and which weights are available here")
    models.add_argument("--format", choices=("table", "json"), default="table")

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
    sql.add_argument("--db", help=db_help)

    export = sub.add_parser("export", help="write the selected points (result documents with their samples and "
                                           "predictions, boards, sweeps, library builds, point failures) to a zip "
                                           "archive with checksums, for `requestflow import` elsewhere")
    export.add_argument("file", metavar="FILE.zip")
    for option, what in (("board", "boards"), ("model", "model ids"), ("backend", "backends"),
                         ("variant", "backend variants (JSON text)"), ("width", "width multipliers"),
                         ("resolution", "resolutions"), ("precision", "precisions"),
                         ("mode", "modes (performance, accuracy)"), ("sweep", "sweeps (run ids)"),
                         ("images", "dataset sizes (images)")):
        export.add_argument(f"--{option}", nargs="+", metavar="VALUE", help=f"only these {what}")
    export.add_argument("--since", metavar="TIME", help="only results started at or after this date or time (ISO; "
                                                        "UTC unless it says otherwise)")
    export.add_argument("--until", metavar="TIME", help="only results started before this date or time")
    export.add_argument("--db", help=db_help)

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

    _add_regressions_parser(sub, db_help)

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

    root_help = "the sysfs/procfs root to read (default: /; a fake tree in tests)"
    platform_cmd = sub.add_parser("platform", help="this board as one JSON document: CPUs and clusters, GPU clocks, "
                                                   "OpenCL, compilers, known board id")
    platform_cmd.add_argument("--root", type=_folder, default="/", help=root_help)

    clocks_cmd = sub.add_parser("clocks", help="pin the CPU and GPU clocks at their maximum, restore them, or show "
                                               "them (one JSON document)")
    clocks_cmd.add_argument("action", choices=("pin", "restore", "status"))
    clocks_cmd.add_argument("--state", required=True, metavar="FILE",
                            help="the state file: original settings and holders, kept from pin to restore")
    clocks_cmd.add_argument("--holder", default="default", metavar="ID",
                            help="who pins, e.g. a sweep's run id: restore unpins only when no holder is left")
    clocks_cmd.add_argument("--force", action="store_true",
                            help="restore the originals even while other holders remain")
    clocks_cmd.add_argument("--root", type=_folder, default="/", help=root_help)

    cooldown_cmd = sub.add_parser("cooldown", help="wait until the hottest thermal zone is below a temperature "
                                                   "(one JSON document)")
    cooldown_cmd.add_argument("--below", type=float, required=True, metavar="CELSIUS")
    cooldown_cmd.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                              help="give up after this long (default: 300)")
    cooldown_cmd.add_argument("--root", type=_folder, default="/", help=root_help)
    for name, command in (added if added is not None else added_commands()).items():
        command.arguments(sub.add_parser(name, help=command.help))
    return parser


def _version() -> str:
    from requestflow import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    """The CLI. ``argv`` None: this process is the command (console script, ``python -m requestflow.cli``)."""
    process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        added = added_commands()
        args = build_parser(added).parse_args(argv)
        if args.command in ("run", "classify"):
            _quiet_tensorflow()
        code = (COMMANDS[args.command] if args.command in COMMANDS else added[args.command].run)(args, argv)
    except UserError as exc:
        print(f"requestflow: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("requestflow: interrupted", file=sys.stderr)
        code = 130
    if process and "tensorflow" in sys.modules:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown. TensorFlow's takes 1-2 s after the result is written
    (measured here: 1.8 s from a tf run's last line to its exit, 0.1 s for tflite): outside the runner's clock,
    but on every point of a sweep, which waits for the process to end. Everything of ours is done by then (the
    document written atomically, the output printed): only the streams and the log handlers need flushing."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def cmd_run(args, argv) -> int:
    from requestflow.board.files import atomic_write_text
    from requestflow.board.runner import RunConfig, Runner, parse_cpus

    if args.out is None and not args.identify:
        raise UserError("--out FILE is required (or --identify)")
    out = os.path.abspath(args.out or ".")
    if args.out and not os.path.isdir(os.path.dirname(out)):
        raise UserError(f"--out {args.out}: folder {os.path.dirname(out)} does not exist")
    if args.cpus and args.cluster:
        raise UserError("give --cpus or --cluster, not both")
    cpus = parse_cpus(args.cpus) if args.cpus else None
    if args.cluster and args.cluster != "all":
        from requestflow.board.machine import cluster_cpus
        cpus = cluster_cpus("/", args.cluster)
    config = RunConfig(
        model=args.model, backend=args.backend, mode=args.mode, weights=args.weights, precision=args.precision,
        release=args.release, images=args.images, val_txt=args.val_txt, synset_words=args.synset_words,
        limit=args.limit, repetitions=args.repetitions, warmup=args.warmup, batch_size=args.batch_size,
        threads=args.threads, cpus=cpus, variant=args.variant, armcl_build=args.armcl_build,
        allow_download=not args.offline, progress=not args.quiet,
        command=["requestflow", *argv])
    runner = Runner(config)
    runner.prepare()
    if args.identify:
        print(json.dumps({"context": runner.identify()}, sort_keys=True))
        return 0
    document = runner.run()
    atomic_write_text(out, json.dumps(document, indent=1) + "\n")
    print(summary(document))
    print(f"result: {out}")
    return 0 if document["status"] == "ok" else 1


def summary(document: dict) -> str:
    context = document["context"]
    weights = context["weights"]
    head = (f"{context['model']['id']} {context['backend']['name']} {context['precision']} "
            f"{'RANDOM weights ' if weights['random'] else ''}{context['mode']}")
    if document["status"] != "ok":
        return f"{head}: FAILED: {document['error']['type']}: {document['error']['message']}"
    if "performance" in document:
        p = document["performance"]
        quality = p.get("quality") or {}
        verdict = (f"; {quality['verdict']}" + (f": {'; '.join(quality['reasons'])}" if quality.get("reasons") else "")
                   if quality else "")
        return (f"{head}: median {p['median'] * 1e3:.3f} ms, min {p['min'] * 1e3:.3f} ms, p90 {p['p90'] * 1e3:.3f} ms "
                f"over {p['n']} runs (batch {p['batch_size']}, {context['threads']} threads), "
                f"{p['throughput_ips']:.1f} images/s{verdict}")
    a = document["accuracy"]
    return (f"{head}: top-1 {a['top1']:.3f}, top-5 {a['top5']:.3f} on {a['n']} images"
            + (f" ({a['failed_count']} unreadable)" if a["failed_count"] else ""))


def cmd_classify(args, argv) -> int:
    import numpy as np

    from requestflow.board import catalogue, resolve
    from requestflow.board.backends import create_backend
    from requestflow.board.dataset import preprocess_image, read_class_names
    from requestflow.board.files import shared_data_dir
    from requestflow.board.runner import top_k

    model = catalogue.get_model(args.model)
    if not args.images:
        args.images = [str(p) for p in sample_images()]
        if not args.images:
            raise UserError("no images given, and no sample images here (the shared data's, or matplotlib's)")
    for image in args.images:
        if not os.path.isfile(image):
            raise UserError(f"image {image} does not exist")
    names = None
    data = shared_data_dir()
    words = Path(args.synset_words) if args.synset_words else (data / "imagenet/synset_words.txt" if data else None)
    if words and words.is_file():
        names = read_class_names(words)
    weights = (resolve.from_paths(args.weights, model) if args.weights else
               resolve.resolve(model, args.backend, args.precision, args.release, allow_download=not args.offline))
    if weights.random:
        raise UserError("classify needs real weights")
    backend = create_backend(args.backend, model, weights, 1, len(os.sched_getaffinity(0)))
    backend.load()
    for image in args.images:
        try:
            pixels = preprocess_image(image, model.resolution)
        except Exception as exc:
            print(f"{image}: unreadable ({exc})")
            continue
        backend.set_input(pixels[np.newaxis])
        backend.invoke()
        scores = backend.scores()
        print(image)
        for c in top_k(scores)[0]:
            label = names[c].split(",")[0] if names else f"class {c}"
            print(f"  {scores[0, c]:.4f} - \"{label}\" ({c})")
    return 0


def _dataset_folder(args) -> Path:
    from requestflow.board.files import user_data_dir

    return Path(args.data or os.environ.get("REQUESTFLOW_DATA") or user_data_dir())


def cmd_dataset(args, argv) -> int:
    from requestflow.board import imagenet_import

    data = _dataset_folder(args)
    if args.dataset_action == "import":
        imported = imagenet_import.import_validation_set(
            args.source, data, val_txt=args.val_txt, synset_words=args.synset_words, labels=args.labels,
            partial=args.partial, replace=args.replace, log=lambda line: print(line, flush=True))
        print(f"imported {imported.describe()}; accuracy points use them"
              + ("" if args.data is None and not os.environ.get("REQUESTFLOW_DATA") else
                 f" when $REQUESTFLOW_DATA={data}"))
        return 0
    if args.dataset_action == "check":
        bad = imagenet_import.check_imported(data)
        if bad:
            print(f"{len(bad)} file(s) of {data / 'imagenet'} differ from SHA256SUMS or are missing: "
                  + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
            return 1
        print(f"{data / 'imagenet'}: every file matches SHA256SUMS")
        return 0
    from requestflow.board.files import shared_data_dir

    used = Path(args.data) if args.data else shared_data_dir()
    images = used / "imagenet" / "val" if used else None
    if images is None or not images.is_dir():
        print(f"no ImageNet validation images (data folder: {used or 'none'}); add them with `requestflow dataset "
              f"import ILSVRC2012_img_val.tar --labels caffe_ilsvrc12.tar.gz` (into {_dataset_folder(args)})")
        return 1
    count = sum(1 for _ in images.glob("ILSVRC2012_val_*.JPEG"))
    print(f"{used}: {count:,} validation image(s) in {images}")
    return 0


def sample_images() -> list[Path]:
    """Images to classify when none are named: the shared data's samples, else the photograph matplotlib ships
    (Grace Hopper in uniform, a US Navy photograph in the public domain; ImageNet class 652, military uniform)."""
    from requestflow.board.files import shared_data_dir

    data = shared_data_dir()
    if data and (data / "samples").is_dir():
        found = sorted(p for p in (data / "samples").iterdir() if p.suffix.lower() in (".bmp", ".jpg", ".jpeg"))
        if found:
            return found
    try:
        from matplotlib import cbook
    except ImportError:
        return []
    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return [path] if path.is_file() else []


def cmd_import_weights(args, argv) -> int:
    from requestflow.board import catalogue
    from requestflow.board.importers import import_weights

    model = catalogue.get_model(args.model)
    weights = import_weights(args.sources, model)
    folder = weights.save(args.out)
    print(f"{model.id}: {weights.classes} classes, {weights.source.get('precision')} source, "
          f"sha256 {weights.sha256}\nwritten: {folder}")
    return 0


def cmd_models(args, argv) -> int:
    from requestflow.board import catalogue, resolve
    from requestflow.board.download import cached_download_path

    rows = []
    for config in catalogue.CONFIGS:
        available = {}
        for release in resolve.releases():
            if resolve.local_files(config, release):
                available[release] = "local"
            elif cached_download_path(resolve.release_url(release, config)).is_file():
                available[release] = "cached"
        rows.append({**config.as_dict(), "weights": available,
                     "urls": {r: resolve.release_url(r, config) for r in resolve.releases()}})
    if args.format == "json":
        print(json.dumps({"releases": resolve.releases(), "models": rows}, indent=1))
        return 0
    print(f"{'model':24} {'MMACs':>7} {'Mparams':>8} {'top-1*':>6}  weights here")
    for row in rows:
        here = ", ".join(f"{r} ({how})" for r, how in row["weights"].items()) or "-  (none here: downloaded on use)"
        print(f"{row['id']:24} {row['macs'] / 1e6:7.1f} {row['params'] / 1e6:8.3f} "
              f"{row['published']['top1']:6.3f}  {here}")
    print("\n* TF-slim's published top-1 (2018_02_22 float, 50,000 images). Releases: "
          + ", ".join(f"{r} ({s['precision']})" for r, s in resolve.releases().items()))
    return 0


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


def open_store(args):
    """(engine, url) of the results store, its schema brought up to date."""
    from requestflow.results.database import engine_for, resolve_url, upgrade

    url, _ = resolve_url(args.db)
    try:
        upgrade(url)
    except Exception as exc:  # connection refused, authentication, ...: one line naming the database
        from sqlalchemy.engine import make_url
        raise UserError(f"cannot use the results database {make_url(url).render_as_string(hide_password=True)}: "
                        f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}") from None
    return engine_for(url), url


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
        print(f"{shown}  ({origin})")
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

    engine, _ = open_store(args)
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

    engine, _ = open_store(args)
    print(render(*read_only(engine, args.query), args.format))
    return 0


def cmd_export(args, argv) -> int:
    from requestflow.results.archive import FILTERS, export

    out = Path(args.file)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{args.file}: the archive's name must end in .zip")
    if not out.parent.resolve().is_dir():
        raise UserError(f"{args.file}: folder {out.parent} does not exist")
    filters = {key: [v for value in getattr(args, key) or [] for v in
                     (value.split(",") if key not in ("variant", "sweep") else [value]) if v]
               for key in FILTERS if key not in ("since", "until")}
    filters.update(since=[args.since] if args.since else [], until=[args.until] if args.until else [])
    engine, _ = open_store(args)
    report = export(engine, out, filters)
    c = report.counts
    print(f"{report.path}: {c['results']} result document(s) ({c['samples']} samples, {c['predictions']} "
          f"predictions), {c['boards']} board(s), {c['sweeps']} sweep(s), {c['builds']} library build(s), "
          f"{c['failures']} point failure(s)")
    return 0


def cmd_import_archive(args, argv) -> int:
    from requestflow.results.archive import import_archive

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

    engine, _ = open_store(args)
    print(render(mispredictions(engine, args.a, args.b), args.format))
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

    engine, _ = open_store(args)
    print(render(*regressions.list_regressions(engine, args.sweep, include_acknowledged=args.all), args.format))
    return 0


def cmd_plot(args, argv) -> int:
    from requestflow.board.files import atomic_write_bytes
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
    engine, _ = open_store(args)
    rows, drawing = draw(engine, selection, fmt)
    atomic_write_bytes(out, drawing.data)
    print(f"{out}: {len(drawing.drawn)} point(s) drawn ({selection.describe()})"
          + (f", {drawing.missing} without both figures left out" if drawing.missing else "")
          + f"; {len(drawing.frontier)} on the Pareto frontier:")
    for row in rows:
        if row["point_id"] in drawing.frontier:
            print(f"  {row['board']}  {row['model']}  {row['backend']}  {row['precision']}  "
                  f"{selection.x}={row[selection.x]:.6g}  {selection.y}={row[selection.y]:.6g}")
    return 0


def _folder(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return text


def _print_json_report(produce) -> int:
    """Print what ``produce()`` returns as the only thing on stdout, one JSON document: the controller parses it over
    SSH, so whatever is written meanwhile, by Python or by a native library (an OpenCL driver's banner), goes to
    stderr."""
    import contextlib
    import ctypes

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            report = produce()
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers, before file descriptor 1 is stdout again
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(report, indent=1))
    return 0


def cmd_platform(args, argv) -> int:
    from requestflow.board.machine import platform_snapshot

    return _print_json_report(lambda: platform_snapshot(args.root))


def cmd_clocks(args, argv) -> int:
    from requestflow.board import clocks

    if args.force and args.action != "restore":
        raise UserError("--force goes with clocks restore only")
    actions = {"pin": lambda: clocks.pin(args.root, args.state, args.holder),
               "restore": lambda: clocks.restore(args.root, args.state, args.holder, force=args.force),
               "status": lambda: clocks.status(args.root, args.state)}
    return _print_json_report(actions[args.action])


def cmd_cooldown(args, argv) -> int:
    from requestflow.board.clocks import cool_down

    return _print_json_report(lambda: cool_down(args.root, args.below, args.timeout))



COMMANDS = {
    "run": cmd_run, "classify": cmd_classify, "dataset": cmd_dataset, "import-weights": cmd_import_weights,
    "models": cmd_models,
    "validate": cmd_validate, "db": cmd_db, "load": cmd_load, "scoreboard": cmd_scoreboard, "sql": cmd_sql,
    "board": cmd_board, "plot": cmd_plot, "import-reference": cmd_import_reference, "diff": cmd_diff,
    "regressions": cmd_regressions,
    "export": cmd_export, "import": cmd_import_archive,
    "platform": cmd_platform, "clocks": cmd_clocks, "cooldown": cmd_cooldown,
}

if __name__ == "__main__":
    sys.exit(main())
