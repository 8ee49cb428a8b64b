"""The controller's commands of the requestflow CLI: ``sweep``, ``replay``, ``board-gc`` and ``airflow-env``.

They drive Airflow and the boards, so they need the checkout (``operators/``, ``dags/``) and Airflow: they are not
part of the library's CLI. ``pyproject.toml`` declares them in the entry-point group ``requestflow.commands``, and
``requestflow.cli`` adds every command of that group whose module imports (ADR 0007): from a checkout,
``requestflow sweep`` works as before; a board's CLI, installed from the wheel without the checkout, lists none of
them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from operators.local import stopping
from requestflow.cli import Command
from requestflow.errors import UserError
from requestflow.results.store_access import DB_HELP, open_store

AIRFLOW_DB_HELP = ("PostgreSQL URL of Airflow's metadata (default: $REQUESTFLOW_AIRFLOW_DATABASE_URL, else the "
                   "database airflow of the embedded PostgreSQL)")


def names_option(values: list[str] | None, known, what: str) -> list[str] | None:
    """Space- or comma-separated names, each one checked; None when the option was not given."""
    if values is None:
        return None
    names = list(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))
    if not names:
        raise UserError(f"no {what} given")
    for name in names:
        if known is not None and name not in known:
            raise UserError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return names


def runtime_specs(args, backends: list[str] | None) -> dict[str, list[str]]:
    """The form's runtime fields from --litert-specs / --tf-specs (space- or comma-separated), each spec checked
    (``operators.runtime_spec``), their backend among --backends."""
    from operators.runtime_spec import parse_all
    from operators.sweep import RUNTIME_FIELDS

    conf = {}
    for field, (backend, _title, _example) in RUNTIME_FIELDS.items():
        option = f"--{field.replace('_', '-')}"
        values = names_option(getattr(args, field), None, f"{option} runtime spec")
        if values is None:
            continue
        if backends is not None and backend not in backends:  # (without --backends the DAG's plan decides)
            raise UserError(f"{option} chooses the runtimes of {backend} points: add {backend} to --backends")
        conf[field] = [spec.text for spec in parse_all(values, backend)]
    return conf


@stopping.signals_end_the_command  # SIGTERM before the run started: its subprocess stopped too
def cmd_sweep(args, argv) -> int:
    from urllib.parse import quote

    from requestflow.board import catalogue
    from requestflow.results.query import read_only, render

    models = names_option(args.models, None, "model")
    for model in models:
        catalogue.get_model(model)  # an unknown id: the nearest ones suggested
    conf = {"models": models, "backends": names_option(args.backends, catalogue.BACKENDS, "backend"),
            "modes": names_option(args.modes, catalogue.MODES, "mode"), "repetitions": args.repetitions,
            "warmup": args.warmup, "image_limit": args.image_limit, "weights": args.weights, "profile": args.profile,
            "isolation": args.isolation}
    if args.weights == "random" and conf["modes"] != ["performance"]:  # else the DAG's plan refuses it, later
        raise UserError("--weights random measures performance only (accuracy needs real weights): add --modes "
                        "performance")
    for key, choices in catalogue.ARMCL_VARIANT.items():
        values = getattr(args, f"armcl_{key}s")
        conf[f"armcl_{key}s"] = names_option([v.upper() for v in values] if values else None, choices,
                                             f"ArmCL {key.replace('_', ' ')}")
    if args.armcl_build:  # one point per build (issue #17), each a build of config/armcl.json
        from operators.armcl_spec import checked_builds

        conf["armcl_build"] = names_option(args.armcl_build, list(checked_builds()), "ArmCL build")
    if any(conf[f"armcl_{key}s"] for key in catalogue.ARMCL_VARIANT) and "armcl" not in (conf["backends"] or []):
        raise UserError("--armcl-* options choose armcl variants: add armcl to --backends")
    conf["tf_compilers"] = names_option([v.lower() for v in args.tf_compilers] if args.tf_compilers else None,
                                        catalogue.TF_COMPILERS, "TensorFlow compiler")
    if conf["tf_compilers"] and "tf" not in (conf["backends"] or []):
        raise UserError("--tf-compilers chooses tf variants: add tf to --backends")
    conf.update(runtime_specs(args, conf["backends"]))
    for option, key, minimum in (("--repetitions", "repetitions", 1), ("--warmup", "warmup", 0),
                                 ("--image-limit", "image_limit", 1)):
        if conf[key] is not None and conf[key] < minimum:
            raise UserError(f"{option} must be at least {minimum}, got {conf[key]}")
    from operators import scheduled_sweep
    from operators.config import inventory
    from operators.local import airflow_home, dag_run

    try:
        boards = inventory()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    chosen = names_option(args.board, None, "board") or ["local"]  # --board given several times, or a,b
    for board in chosen:
        if board not in boards:
            raise UserError(f"board {board!r} is not in the inventory (config/boards.json or $REQUESTFLOW_BOARDS): "
                            f"{', '.join(boards)}")
    conf = {"boards": chosen, **{k: v for k, v in conf.items() if v is not None}}  # only what was chosen
    if args.airflow_db:
        airflow_home.airflow_url(args.airflow_db)  # PostgreSQL only, checked before anything starts

    engine, results_url = open_store(args)
    where = f"board{'s' if len(chosen) > 1 else ''} {', '.join(chosen)}"
    try:
        base = scheduled_sweep.detected(args.airflow)  # a running scheduler's api-server: the run goes there
        if base is None:
            env = airflow_home.prepare(args.airflow_db, results_url, boards)
            conflict = dag_run.scheduler_conflict(env, args.dag)
            if conflict:  # that scheduler runs the sweep, when its api-server answers
                base = scheduled_sweep.local_api(env)
                if scheduled_sweep.scheduler_status(base) != "healthy":
                    raise UserError(f"{conflict}; or give --airflow URL, its api-server (none answers at {base})")
        print(f"requestflow: running {args.dag} through "
              f"{f'the scheduler at {base}' if base else 'Airflow (dag.test())'} on {where}: {json.dumps(conf)}",
              flush=True)
        outcome = scheduled_sweep.run_sweep(base, args.dag, conf) if base else dag_run.run_dag(env, conf, args.dag)
    except RuntimeError as exc:  # airflow db migrate, pools import or the run itself failed: their own words
        print(f"requestflow: error: {exc}", file=sys.stderr)
        return 1
    run_id = outcome["run_id"]
    columns, rows = read_only(
        engine, "SELECT board, model, backend, variant_label AS variant, precision, threads, "
                "round((latency_median_s * 1000)::numeric, 3) AS median_ms, round(throughput_ips::numeric, 1) AS "
                "images_per_s, top1, top5, image_count, accuracy_check, random_weights, library_version "
                "FROM scoreboard WHERE sweep = %(run)s "  # (the version last: a runtime spec's rows differ by it)
                "ORDER BY board, model, backend, variant_label, precision, threads, library_version", {"run": run_id})
    print(f"\nsweep {run_id} on {where}, from the results store:")
    print(render(columns, rows, "table"))
    rf = Path(sys.executable).with_name("requestflow")
    if base:
        print(f"\nthe run in the Airflow UI: {scheduled_sweep.run_page(base, args.dag, run_id)}")
    else:
        print(f"\nthe Airflow UI (docs/orchestration.md: Running Airflow locally):\n  eval \"$({rf} airflow-env)\"\n"
              "  setsid sh -c 'echo $$ > \"$AIRFLOW_HOME/standalone.pgid\"; exec airflow standalone' "
              "> \"$AIRFLOW_HOME/standalone.log\" 2>&1 < /dev/null &\n"
              f"  then http://127.0.0.1:8080/dags/{args.dag}/runs/{quote(run_id, safe='')}")
    failed = [t for t in outcome["failed"] if t["state"] == "failed"] or outcome["failed"]
    if outcome["state"] != "success" or failed:
        names = "; ".join(f"{t['task_id']}{' [' + t['label'] + ']' if t.get('label') else ''} {t['state']}"
                          for t in failed[:6])
        print(f"requestflow: sweep {run_id} FAILED ({outcome['state']}): {names or 'see the log above'}"
              f"{f' and {len(failed) - 6} more' if len(failed) > 6 else ''}", file=sys.stderr)
        return 1
    return 0


def cmd_board_gc(args, argv) -> int:
    if args.keep_runners is not None and args.keep_runners < 1:
        raise UserError(f"--keep-runners must be at least 1 (the current runner), got {args.keep_runners}")
    if args.keep_days is not None and not args.keep_days >= 0:
        raise UserError(f"--keep-days must be >= 0, got {args.keep_days}")
    from operators.board_gc import collect_garbage
    from operators.board_hook import board_for

    board = board_for(args.name)
    try:
        s = board.settings
        garbage = collect_garbage(board, args.keep_runners or s.gc_keep_runners,
                                  s.gc_keep_days if args.keep_days is None else args.keep_days, dry_run=args.dry_run)
    finally:
        board.close()
    if args.dry_run:
        for kind in ("job", "blob"):
            for path, _ in garbage.removed[kind]:
                print(f"  {path}")
    return 0


def cmd_replay(args, argv) -> int:
    """Exit 0 when the replay reproduced the stored result, 1 when something changed or the replay failed."""
    from requestflow.results.replay import compare, render, stored

    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.min_effect < 0:
        raise UserError(f"--min-effect must be >= 0 (0.05 for 5%), got {args.min_effect}")
    engine, _ = open_store(args)
    try:
        point = stored(engine, args.point)
        from operators.replay_board import run_on_board

        print(f"requestflow: replaying result {point.result_id} (point {point.point_id[:16]}) on board {point.board}",
              flush=True)
        document = run_on_board(point.board, point.document, log=lambda line: print(line, flush=True))
        report = compare(point, document, alpha=args.alpha, min_effect=args.min_effect)
        print(render(report))
        if args.store:
            import datetime as dt

            from requestflow.results.load import load_documents

            sweep = f"replay/{point.point_id[:16]}/{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
            load_documents(engine, [("replay", document)], board=point.board, sweep=sweep, dag_id="replay")
            print(f"stored as sweep {sweep}")
    finally:
        engine.dispose()
    return 0 if report.same else 1


def cmd_airflow_env(args, argv) -> int:
    from operators.local import airflow_home

    if args.airflow_db:
        airflow_home.airflow_url(args.airflow_db)  # PostgreSQL only, checked before anything starts
    _, results_url = open_store(args)
    try:
        env = airflow_home.prepare(args.airflow_db, results_url)
    except RuntimeError as exc:
        print(f"requestflow: error: {exc}", file=sys.stderr)
        return 1
    print(airflow_home.exports(env))
    return 0


def _sweep_arguments(parser) -> None:
    parser.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                        help="model ids, space- or comma-separated (see `requestflow models`)")
    parser.add_argument("--backends", nargs="+", metavar="BACKEND", help="tf, tflite (default: the DAG's)")
    parser.add_argument("--modes", nargs="+", metavar="MODE", help="performance, accuracy (default: the DAG's)")
    parser.add_argument("--repetitions", type=int, help="timed runs of each performance point (default: the DAG's)")
    parser.add_argument("--warmup", type=int, help="untimed runs before them (default: the DAG's)")
    parser.add_argument("--profile", choices=("quick", "valid"),
                        help="performance points: quick (the repetitions and warm-up as given, the DAG's default) or "
                             "valid (at least 64 timed runs, 3 warm-up, 60 s of timed region; recorded in each "
                             "result)")
    parser.add_argument("--image-limit", type=int, help="images of each accuracy point (default: the DAG's)")
    parser.add_argument("--weights", choices=("registry", "random"),
                        help="registry: real weights (the data folder's, else downloaded; a performance point "
                             "without any runs on random ones), the DAG's default; random: randomly initialised "
                             "weights for every point, performance only (with --modes performance); both labelled "
                             "random_weights on the scoreboard")
    parser.add_argument("--isolation", choices=("fresh", "fork"),
                        help="how each point's runner process starts (docs/adr/0009): fresh, a process started for "
                             "it; fork, a child of the board's point server (no interpreter start or imports per "
                             "point); default: each board's (its extra isolation, else $REQUESTFLOW_ISOLATION, else "
                             "fresh). Recorded in each result")
    parser.add_argument("--armcl-build", nargs="+", metavar="NAME",
                        help="armcl points: one per build of config/armcl.json (e.g. armcl_20_08_cl_fp32 "
                             "armcl_24_11_cl_fp32)")
    from requestflow.board.catalogue import ARMCL_VARIANT  # the choices only: a light module

    for key, choices in ARMCL_VARIANT.items():
        parser.add_argument(f"--armcl-{key.replace('_', '-')}s", nargs="+", metavar=key.upper(),
                            help=f"armcl points: one per value ({', '.join(choices)}; default {choices[0]})")
    parser.add_argument("--tf-compilers", nargs="+", metavar="COMPILER",
                        help="tf points: one per compiler (graph, xla: jit_compile; default graph)")
    parser.add_argument("--litert-specs", nargs="+", metavar="SPEC",
                        help="tflite points: one per LiteRT runtime, each a runner venv of its own on the board "
                             "(e.g. ai-edge-litert==1.4.0 ai-edge-litert==2.3.0; default: the board's runner)")
    parser.add_argument("--tf-specs", nargs="+", metavar="SPEC",
                        help="tf points: one per TensorFlow runtime (tensorflow-cpu==X, tensorflow==X on aarch64)")
    parser.add_argument("--board", action="append", metavar="BOARD",
                        help="a board of the inventory, the option repeated (or a,b) for several (default: local, "
                             "this machine)")
    parser.add_argument("--dag", default="mobilenets_sweep", help="the DAG to run (default: mobilenets_sweep)")
    parser.add_argument("--airflow", metavar="URL",
                        help="trigger the sweep through the running scheduler whose api-server is at URL and follow "
                             "it (default: $AIRFLOW__API__BASE_URL's when its scheduler is healthy, else the local "
                             "Airflow's when its scheduler has the DAG unpaused, else a run here with dag.test())")
    parser.add_argument("--db", help=DB_HELP)
    parser.add_argument("--airflow-db", metavar="URL", help=AIRFLOW_DB_HELP)


def _replay_arguments(parser) -> None:
    parser.add_argument("point", help="a point id (or a unique prefix of it, as the scoreboard shows it): its latest "
                                      "successful result; or result:N")
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="significance level of the latency test (default: 0.01)")
    parser.add_argument("--min-effect", type=float, default=0.05, metavar="FRACTION",
                        help="the smallest change of median latency that counts (default: 0.05, i.e. 5%%)")
    parser.add_argument("--store", action="store_true",
                        help="also load the replay's result into the store (sweep replay/<time>)")
    parser.add_argument("--db", help=DB_HELP)


def _board_gc_arguments(parser) -> None:
    parser.add_argument("name", help="the board: local, or the name of its Airflow Connection")
    parser.add_argument("--keep-runners", type=int, metavar="N",
                        help="runners kept, the current one included (default: the board's extra gc_keep_runners, 2)")
    parser.add_argument("--keep-days", type=float, metavar="DAYS",
                        help="finished job folders younger than this stay (default: extra gc_keep_days, 30)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")


def _airflow_env_arguments(parser) -> None:
    parser.add_argument("--db", help=DB_HELP)
    parser.add_argument("--airflow-db", metavar="URL", help=AIRFLOW_DB_HELP)


sweep = Command(
    help="run one sweep (the DAG mobilenets_sweep, once) through a running scheduler when one is up, else through "
         "a local Airflow, and print its scoreboard rows",
    arguments=_sweep_arguments, run=cmd_sweep)
replay = Command(help="rerun a stored point on its board and compare it with the stored result",
                 arguments=_replay_arguments, run=cmd_replay)
board_gc = Command(help="remove what a board's work dir no longer needs: old runners, job folders finished long ago, "
                    "blobs nothing links to (provisioning does it too)",
                   arguments=_board_gc_arguments, run=cmd_board_gc)
airflow_env = Command(help="set up the local Airflow and print its environment as export lines: "
                       "eval \"$(requestflow airflow-env)\"; airflow standalone",
                  arguments=_airflow_env_arguments, run=cmd_airflow_env)
