"""The board's commands of the ``requestflow`` CLI: ``run``, ``classify``, ``dataset``, ``import-weights`` and
``models`` here, then the machine's (``power-meters``, ``platform``, ``clocks``, ``cooldown``:
``requestflow.board.machine_commands``). They need only the board side (numpy, Pillow, TensorFlow / LiteRT), as a
board provisioned from the wheel has it; ``requestflow.cli`` builds the parser from ``add_parsers`` and runs
``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from requestflow.board import machine_commands
from requestflow.errors import OneLineParser, UserError


def add_parsers(sub) -> None:
    """The board's subcommands, on ``sub`` (the CLI's subparsers)."""
    run = sub.add_parser("run", help="benchmark one point on this machine and write its result JSON")
    _add_weights_arguments(run)
    run.add_argument("--mode", default="performance", help="performance or accuracy")
    run.add_argument("--images", help="folder of ILSVRC2012_val_*.JPEG (default for accuracy: the shared data)")
    run.add_argument("--val-txt", help="ground truth FILE CLASS (default: val.txt beside the image folder)")
    run.add_argument("--synset-words", help="class names (default: synset_words.txt beside val.txt)")
    run.add_argument("--limit", type=int, help="use the first N images (default: all)")
    run.add_argument("--repetitions", "--min-repetitions", type=int, dest="repetitions",
                     help="timed runs, at least (default: the profile's; quick: 20)")
    run.add_argument("--warmup", type=int, help="untimed runs before them (default: the profile's: 3)")
    run.add_argument("--min-duration-s", type=float, metavar="SECONDS",
                     help="go on with timed runs until the timed region lasted this long, like LoadGen's "
                          "min_duration (default: the profile's; quick: 0)")
    run.add_argument("--profile", choices=("quick", "valid"),
                     help="quick: 20 timed runs (the default); valid: at least 64 timed runs (the p90 early-stopping "
                          "estimate) and 60 s; explicit options override, and the result records the settings")
    run.add_argument("--power-meter", metavar="SPEC", default="none",
                     help="measure energy: hwmon[:ROOT], rapl[:ROOT] (ROOT as for clocks, default /), command:CMD "
                          "(a program printing 'TIMESTAMP WATTS' lines), auto (the first one found) or none "
                          "(default); see `requestflow power-meters`")
    run.add_argument("--power-rate-hz", type=float, default=200.0, help="meter readings per second (default: 200)")
    run.add_argument("--idle-s", type=float, default=1.0,
                     help="with a power meter: seconds of idle baseline before the warm-up (default: 1)")
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--threads", type=int, help="default: the number of CPUs in the affinity set")
    run.add_argument("--cpus", help="CPU affinity, e.g. 4-7 for the big cluster of a HiKey960")
    run.add_argument("--cluster", choices=("all", "big", "LITTLE"),
                     help="run on one CPU cluster of a big.LITTLE board (instead of --cpus)")
    run.add_argument("--variant", metavar="SPEC",
                     help="armcl: key=value pairs (or a JSON object): target CL|NEON, layout NHWC|NCHW, conv_method "
                          "DEFAULT|GEMM|DIRECT|WINOGRAD, tuner NONE|RAPID|NORMAL|EXHAUSTIVE, conv_methods_file "
                          "FILE; e.g. layout=NCHW,tuner=RAPID. tf: compiler=graph|xla (XLA: jit_compile)")
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
                                             parser_class=OneLineParser)
    dataset_import = dataset_actions.add_parser(
        "import", help="ILSVRC2012_img_val.tar (or a folder of its JPEGs) and its ground truth, checked, into the "
                       "data folder in one step")
    dataset_import.add_argument("source", metavar="SOURCE", help="ILSVRC2012_img_val.tar or a folder of its JPEGs")
    dataset_import.add_argument("--val-txt", help="ground truth: FILE CLASS per line, CLASS 0-based (caffe_ilsvrc12)")
    dataset_import.add_argument("--synset-words", help="class names, line i = class i (caffe_ilsvrc12)")
    dataset_import.add_argument("--devkit", metavar="ARCHIVE",
                                help="ILSVRC2012_devkit_t12.tar.gz (or its folder): the official ground truth")
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

    machine_commands.add_parsers(sub)


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
    from requestflow.board.latency_stats import profile_settings

    settings = profile_settings(args.profile, args.repetitions, args.warmup, args.min_duration_s)
    config = RunConfig(
        model=args.model, backend=args.backend, mode=args.mode, weights=args.weights, precision=args.precision,
        release=args.release, images=args.images, val_txt=args.val_txt, synset_words=args.synset_words,
        limit=args.limit, repetitions=settings["min_repetitions"], warmup=settings["warmup"],
        batch_size=args.batch_size, threads=args.threads, cpus=cpus, variant=args.variant,
        armcl_build=args.armcl_build, allow_download=not args.offline, progress=not args.quiet,
        command=["requestflow", *argv], min_duration_s=settings["min_duration_s"], profile=args.profile,
        power_meter=args.power_meter, power_rate_hz=args.power_rate_hz, idle_s=args.idle_s)
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
        return (f"{head}: median {p['median'] * 1e3:.3f} ms, min {p['min'] * 1e3:.3f} ms, p90 {p['p90'] * 1e3:.3f} ms"
                f"{_early_stopping(p)} over {p['n']} runs (batch {p['batch_size']}, {context['threads']} threads), "
                f"{p['throughput_ips']:.1f} images/s{verdict}{_energy(document.get('energy'))}")
    a = document["accuracy"]
    return (f"{head}: top-1 {a['top1']:.3f}, top-5 {a['top5']:.3f} on {a['n']} images"
            + (f" ({a['failed_count']} unreadable)" if a["failed_count"] else ""))


def _early_stopping(performance: dict) -> str:
    early = ((performance.get("latency") or {}).get("early_stopping") or {}).get("p90") or {}
    if early.get("value") is not None:
        return f" (early-stopping p90 {early['value'] * 1e3:.3f} ms)"
    return f" (early-stopping p90: {early['min_queries']} runs needed)" if early.get("min_queries") else ""


def _energy(energy: dict | None) -> str:
    if not energy:
        return ""
    if not energy["valid"]:
        return f"\nenergy not measured ({energy['meter']['kind']}): {energy['reason']}"
    return (f"\nenergy ({energy['meter']['kind']}, {energy['samples']} readings at {energy['rate_hz']} Hz): "
            f"{energy['joules_per_inference'] * 1e3:.3f} mJ per inference, "
            f"{energy['joules_per_inference_above_idle'] * 1e3:.3f} mJ above idle ({energy['idle_w']:.2f} W idle, "
            f"{energy['active_w']:.2f} W running, p90 {energy['active_p90_w']:.2f} W)")


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
            devkit=args.devkit,
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
              f"import ILSVRC2012_img_val.tar --devkit ILSVRC2012_devkit_t12.tar.gz` (into {_dataset_folder(args)})")
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


COMMANDS = {
    "run": cmd_run, "classify": cmd_classify, "dataset": cmd_dataset, "import-weights": cmd_import_weights,
    "models": cmd_models, **machine_commands.COMMANDS,
}
