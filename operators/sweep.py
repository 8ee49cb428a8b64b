"""Building the sweep DAGs: Params (the trigger form), the plan of points, and one task group per board.

Airflow cannot map ``pool``, so exclusivity per board is built at parse time: one task group per board of the
inventory (``config/boards.json``), whose tasks that touch the board all sit in that board's pool ``board_<name>``
(1 slot; ``requestflow sweep`` creates them, or ``airflow pools set board_<name> 1 ...``). Tasks of one board never
overlap, whichever sweep they belong to; boards run in parallel.

Per board: ``plan`` (the board's points; skipped when the board is not chosen or on a dry run) >> ``provision``
(runner, platform, data) >> ``armcl_<build>`` (one per build of ``config/armcl.json``: built or reused on the board,
with requestflow's MobileNet program compiled against it; skipped when no armcl point names it) >> ``pin_clocks``
(a setup task) >> ``run`` (mapped: one task per point, named
"<model> <backend> <mode>" in the UI) >> ``restore_clocks`` (its teardown: Airflow runs it even when points fail
or the run is marked failed). armcl points are one per variant (the form's ArmCL targets x layouts x conv
methods x tuners). ``summary`` accounts for every planned point (stored ok, stored failed, stored
without a result, skipped because already stored) and updates the results Asset; ``verdict`` fails the run when a
point did not succeed, or when the plan refused the params (what the form cannot express: armcl points without a
build; weights = random with accuracy points, a precision other than fp32 or a release).
"""

from __future__ import annotations

import math
from itertools import product

from operators.config import RESULTS_ASSET, inventory, pool_name, retry_delay_s
from requestflow.board.catalogue import ARMCL_VARIANT, BACKENDS, CONFIGS, MODES, PRECISIONS, point_label

MODEL_IDS = [c.id for c in CONFIGS]
# the sweep's weights: the registry's real weights (each point needs them in the controller's data folder), or
# randomly initialised weights for every point (``requestflow run --weights random``: performance only)
WEIGHTS = ("registry", "random")


def params(defaults: dict | None = None) -> dict:
    """The trigger form: every field validated by JSON Schema before anything runs."""
    from airflow.sdk import Param

    from operators.armcl import checked_builds

    armcl_builds = list(checked_builds())
    d = {"boards": ["local"], "models": MODEL_IDS, "backends": ["tflite"], "modes": ["performance", "accuracy"],
         "precision": None, "release": None, "weights": "registry", "repetitions": 20, "warmup": 3, "batch_size": 1,
         "threads": None, "cpus": None, "cluster": "all", "image_limit": 500, "cooldown_c": None, "resume": False,
         "dry_run": False,
         "armcl_build": armcl_builds[0] if armcl_builds else None,
         **{f"armcl_{key}s": [choices[0]] for key, choices in ARMCL_VARIANT.items()}}
    d.update(defaults or {})
    boards = inventory()
    # boards of the defaults that the inventory lacks are dropped (a schedule needs valid defaults)
    d["boards"] = [b for b in d["boards"] if b in boards] or boards[:1]
    return {
        "boards": Param(d["boards"], type="array", items={"type": "string", "enum": boards}, minItems=1,
                        uniqueItems=True, title="Boards", description=f"from the inventory: {', '.join(boards)}"),
        "models": Param(d["models"], type="array", items={"type": "string", "enum": MODEL_IDS}, minItems=1,
                        uniqueItems=True, title="Models", description="MobileNets-v1 configs (default: all 16)"),
        "backends": Param(d["backends"], type="array", items={"type": "string", "enum": list(BACKENDS)},
                          minItems=1, uniqueItems=True, title="Backends"),
        "modes": Param(d["modes"], type="array", items={"type": "string", "enum": list(MODES)}, minItems=1,
                       uniqueItems=True, title="Modes"),
        "precision": Param(d["precision"], type=["null", "string"], enum=[None, *PRECISIONS], title="Precision",
                           description="which registry weights (empty: what each backend finds first)"),
        "release": Param(d["release"], type=["null", "string"], title="Weights release",
                         enum=[None, "2018_02_22", "keras", "2017_06_14", "2018_08_02_quant"]),
        "weights": Param(d["weights"], type="string", enum=list(WEIGHTS), title="Weights",
                         description="registry: real weights (every point needs them in the data folder); random: "
                         "He-initialised fp32 weights for every point, performance only (latency does not depend "
                         "on weight values; labelled random_weights on the scoreboard)"),
        "repetitions": Param(d["repetitions"], type="integer", minimum=1, maximum=100000, title="Repetitions"),
        "warmup": Param(d["warmup"], type="integer", minimum=0, maximum=10000, title="Warm-up runs"),
        "batch_size": Param(d["batch_size"], type="integer", minimum=1, maximum=256, title="Batch size"),
        "threads": Param(d["threads"], type=["null", "integer"], minimum=1, maximum=256, title="Threads"),
        "cpus": Param(d["cpus"], type=["null", "string"], pattern=r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$",
                      title="CPU affinity", description="e.g. 4-7 (the big cluster of a HiKey960)"),
        "cluster": Param(d["cluster"], type="string", enum=["all", "big", "LITTLE"], title="CPU cluster",
                         description="big.LITTLE boards: run on one cluster (instead of CPU affinity)"),
        "image_limit": Param(d["image_limit"], type="integer", minimum=1, maximum=50000,
                             title="Images (accuracy)"),
        "cooldown_c": Param(d["cooldown_c"], type=["null", "number"], minimum=20, maximum=110,
                            title="Cool-down below (C)",
                            description="before each point, wait until the board is below this temperature"),
        "resume": Param(d["resume"], type="boolean", title="Resume",
                        description="skip points already stored with the same identity"),
        "dry_run": Param(d["dry_run"], type="boolean", title="Dry run", description="list the points only"),
        "armcl_build": Param(d["armcl_build"], type=["null", "string"], enum=[None, *armcl_builds],
                             title="ArmCL build", description="armcl points: a build of config/armcl.json, made "
                             "(or reused) on each board before its points"),
        **{f"armcl_{key}s": Param(d[f"armcl_{key}s"], type="array", items={"type": "string", "enum": list(choices)},
                                  minItems=1, uniqueItems=True, title=f"ArmCL {key.replace('_', ' ')}s",
                                  description=f"armcl points: one per combination ({', '.join(choices)})")
           for key, choices in ARMCL_VARIANT.items()},
    }


def plan(board: str, p: dict) -> list[dict]:
    """The points of ``board`` for the sweep's params (none when the board was not chosen)."""
    if board not in p["boards"]:
        return []
    keys = list(ARMCL_VARIANT)
    armcl_variants = [dict(zip(keys, values, strict=True)) for values in
                      product(*(p.get(f"armcl_{key}s") or [ARMCL_VARIANT[key][0]] for key in keys))]
    if "armcl" in p["backends"] and not p.get("armcl_build"):
        raise ValueError("armcl points need an ArmCL build: choose one (config/armcl.json)")
    if p.get("cooldown_c") is not None and not math.isfinite(p["cooldown_c"]):  # NaN passes minimum and maximum
        raise ValueError(f"cooldown_c must be a finite temperature, not {p['cooldown_c']}")
    random = p.get("weights", "registry") == "random"
    if random and p.get("precision") not in (None, "fp32"):
        raise ValueError(f"weights = random runs fp32 weights, not precision {p['precision']}: leave precision "
                         "empty (or choose fp32), or choose weights = registry")
    if random and p.get("release"):
        raise ValueError(f"weights = random uses no release ({p['release']} names registry weights): leave the "
                         "release empty, or choose weights = registry")
    # JSON Schema's "integer" admits 3.0 (a trigger's conf from the REST API or the CLI): the runner wants 3
    p = {**p, **{key: int(p[key]) for key in ("repetitions", "warmup", "batch_size", "threads", "image_limit")
                 if isinstance(p.get(key), float)}}
    points = []
    for model, backend, mode in product(p["models"], p["backends"], p["modes"]):
        for variant in armcl_variants if backend == "armcl" else [None]:
            point = {"model": model, "backend": backend, "mode": mode, "precision": p.get("precision"),
                     "release": p.get("release"), "batch_size": p["batch_size"], "threads": p.get("threads"),
                     "cpus": p.get("cpus"), "cluster": None if p.get("cluster") in (None, "all") else p["cluster"],
                     "variant": variant, "armcl_build": p["armcl_build"] if variant else None,
                     "weights": "random" if random else None}
            if mode == "performance":
                point.update(repetitions=p["repetitions"], warmup=p["warmup"])
            else:
                point["limit"] = p["image_limit"]
            points.append({k: v for k, v in point.items() if v is not None})
    if random:
        _refuse_accuracy_on_random_weights(points)
    return points


def _refuse_accuracy_on_random_weights(points: list[dict]) -> None:
    """weights = random with accuracy points: refused before any board is touched, naming them. Random weights have
    no accuracy (the runner refuses them), and dropping the points silently would leave the sweep with fewer points
    than the form asked for (the default modes include accuracy): the user chooses, explicitly."""
    labels = [point_label(p) for p in points if p["mode"] == "accuracy"]
    if labels:
        shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        raise ValueError(f"weights = random measures performance only, and accuracy needs real weights: "
                         f"{len(labels)} accuracy point(s) cannot run ({shown}): choose modes = performance only, "
                         "or weights = registry")


def prepare_points(board: str, points: list[dict], context) -> list[dict]:
    """The plan task's second half: each point's weights and images resolved on the controller
    (``operators.point_data.prepare``); points that cannot run are stored as refused failures of the sweep (the
    summary reports them and the verdict fails the run), the others returned. None left: the task fails at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from operators import point_data
    from operators.results_hook import ResultsHook, user_errors_are_final

    with user_errors_are_final():  # e.g. a data folder's file whose sha256 is not the registry's
        prepared = point_data.prepare(points, point_data.controller_data_dir())
    for note in prepared.notes:
        print(f"WARNING: {note}")
    if prepared.refused:
        dag = context.get("dag")
        with ResultsHook().engine() as engine:
            point_data.record_refused(engine, context["run_id"], dag.dag_id if dag else None, board,
                                      prepared.refused)
    if not prepared.points:
        raise AirflowFailException(f"board {board}: every point was refused: {prepared.refused[0][1]}")
    return prepared.points


def build(dag_id: str, schedule, defaults: dict | None, doc: str, tags: list[str]):
    import pendulum
    from airflow.sdk import DAG, Asset, TaskGroup, task
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from operators.armcl import ArmclBuildOperator, checked_builds
    from operators.provision import ClocksOperator, ProvisionBoardOperator
    from operators.run_point import RunPointOperator

    with DAG(dag_id=dag_id, schedule=schedule, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             params=params(defaults), tags=tags, doc_md=doc, max_active_runs=4,
             default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=retry_delay_s())}) as dag:
        ends = []
        for board in inventory():
            with TaskGroup(group_id=f"board_{board}"):
                @task(task_id="plan")
                def plan_points(board: str = board, **context) -> list[dict]:
                    try:
                        points = plan(board, context["params"])
                    except ValueError:  # what the form cannot express: no retry can change the answer
                        raise AirflowFailException(refusal(context["params"])) from None
                    print(f"{len(points)} point(s) on board {board}" + "".join(
                        f"\n  {point_label(p)}" for p in points))
                    if not points:
                        raise AirflowSkipException(f"board {board} is not part of this sweep")
                    if context["params"]["dry_run"]:
                        raise AirflowSkipException(f"dry run: {len(points)} point(s) listed, none run")
                    return prepare_points(board, points, context)

                points = plan_points()
                provision = ProvisionBoardOperator(task_id="provision", board_conn_id=board, points=points,
                                                   pool=pool_name(board))
                # the ArmCL builds the board's armcl points name (each skips itself when none does); the clocks
                # are pinned once they are all done or skipped
                builds = {name: ArmclBuildOperator(task_id=f"armcl_{name}", board_conn_id=board, spec=spec,
                                                   points=points, build_name=name, pool=pool_name(board))
                          for name, spec in checked_builds().items()}
                pin = ClocksOperator(task_id="pin_clocks", board_conn_id=board, action="pin", pool=pool_name(board),
                                     trigger_rule="none_failed_min_one_success")
                restore = ClocksOperator(task_id="restore_clocks", board_conn_id=board, action="restore",
                                         pool=pool_name(board))
                runs = RunPointOperator.partial(
                    task_id="run", board_conn_id=board, pool=pool_name(board),
                    resume="{{ params.resume }}", cooldown_c="{{ params.cooldown_c or '' }}",
                    armcl_build_tasks={name: build.task_id for name, build in builds.items()},
                    map_index_template="{{ task.point['model'] }} {{ task.point['backend'] }} "
                                       "{{ task.point['mode'] }}{% if task.point.get('variant') %} "
                                       "{{ task.point['variant'].values() | join('/') }}{% endif %}",
                ).expand(point=points)
                provision >> pin >> runs >> restore.as_teardown(setups=pin)
                provision >> list(builds.values()) >> pin
                ends += [runs, restore]

        # summary stores what never ran and always updates the results Asset (regression_check follows it, also
        # after a sweep with failed points); verdict then fails the run when a point did not succeed
        @task(task_id="summary", trigger_rule="all_done", outlets=[Asset(RESULTS_ASSET)])
        def summary(**context) -> dict:
            return summarize(context)

        @task(task_id="verdict", retries=0)
        def verdict(counts: dict) -> None:
            if counts.get("refused"):
                raise AirflowFailException(counts["refused"])
            failed = counts.get("failed_points") or []
            if failed:
                raise AirflowFailException(f"{len(failed)} point(s) failed: {'; '.join(failed[:10])}"
                                           + (" ..." if len(failed) > 10 else ""))

        # summary after every board's points (``ends >> verdict(summary())`` would make only verdict wait for them:
        # summary ran first, stored every point as NotRun and verdict failed the sweep)
        summarized = summary()
        ends >> summarized
        verdict(summarized)
    return dag


def refusal(p: dict) -> str | None:
    """What the plan tasks refused in the sweep's params (``plan`` is a function of the params alone, so summary
    asks it again), or None."""
    for board in p["boards"]:
        try:
            plan(board, p)
        except ValueError as exc:
            return f"the sweep's params are refused: {exc}"
    return None


def summarize(context) -> dict:
    """Account for every planned point of the sweep and print the sweep's scoreboard: ``{"boards": per-board counts,
    "failed_points": ["<board>: <point label>", ...]}`` (the ``verdict`` task fails the run when that is not empty),
    plus ``"refused"`` (why) when the plan tasks refused the params: then there are no points, and the run fails.

    A planned point with neither a result nor a stored failure (its board's provisioning failed, or the task was
    killed before it could store anything) is stored now as ``NotRun``: every point of a sweep ends in the store.
    """
    from operators.results_hook import ResultsHook
    from requestflow.results.query import read_only, render
    from requestflow.results.sweeps import record_failure, sweep_tally

    ti, run_id, p = context["ti"], context["run_id"], context["params"]
    dag_id = context["dag"].dag_id
    refused = refusal(p)
    if refused:  # the plan tasks failed with it and left no points: without this the run would end "success"
        print(refused)
        return {"boards": {}, "failed_points": [], "refused": refused}
    if p["dry_run"]:
        print("dry run: the points are listed in each board's plan task; nothing ran")
        return {"boards": {}, "failed_points": []}
    with ResultsHook().engine() as engine:
        tally = sweep_tally(engine, run_id)
        counts, bad = {}, []
        for board in inventory():
            planned = ti.xcom_pull(task_ids=f"board_{board}.plan") or []
            if not planned and board not in tally:  # not part of the sweep (a board whose every point was
                continue                            # refused has them stored: they are counted below)
            runs = ti.xcom_pull(task_ids=f"board_{board}.run") or []
            runs = [runs] if isinstance(runs, dict) else list(runs)
            already = {r["point"] for r in runs if r and r.get("status") == "already stored"}
            t = tally.get(board, {"ok": [], "failed": [], "no_result": []})
            seen = {e["point"] for kind in t.values() for e in kind} | already
            for point in planned:
                if point_label(point) not in seen:
                    message = (f"board {board}: the point never ran (an earlier task of the board failed or the "
                               f"task was stopped; see the task logs of board_{board})")
                    record_failure(engine, run_id, dag_id, board, point, "NotRun", message, attempts=0)
                    t["no_result"].append({"point": point_label(point), "error": f"NotRun: {message}"})
            counts[board] = {"planned": len(planned), "ok": len(t["ok"]), "already_stored": len(already),
                             "failed": len(t["failed"]), "no_result": len(t["no_result"])}
            print(f"board {board}: {len(planned)} point(s): {len(t['ok'])} ok, {len(already)} already stored, "
                  f"{len(t['failed'])} failed, {len(t['no_result'])} without a result")
            for entry in t["failed"] + t["no_result"]:
                print(f"  FAILED {entry['point']}: {entry['error']}")
                bad.append(f"{board}: {entry['point']}")
        print(render(*read_only(engine, "SELECT board, model, backend, variant, precision, latency_median_s, "
                                        "top1 FROM scoreboard WHERE sweep = %(run)s "
                                        "ORDER BY board, model, backend, variant",
                                {"run": run_id}), "table"))
        _, flagged = read_only(engine, "SELECT board, model, backend, variant_label, top1, reference_top1 FROM "
                                       "scoreboard WHERE sweep = %(run)s AND accuracy_check = 'FLAGGED'",
                               {"run": run_id})
        for board, model, backend, variant, top1, reference in flagged:
            print(f"ACCURACY FLAGGED: {board} {model} {backend} {variant}: top-1 {top1:.4f}, {reference - top1:.2%} "
                  f"below tf's {reference:.4f} on the same weights and images: a broken build or variant?")
        print_flagged_latencies(engine, run_id)
    return {"boards": counts, "failed_points": bad}


def print_flagged_latencies(engine, run_id: str) -> list[str]:
    """Print (and return) one line per performance point of sweep ``run_id`` whose measurement the runner FLAGGED
    (``requestflow.board.quality``), with its reasons. Like accuracy flags, these do not fail the sweep: the points
    are stored and ranked; the reader is told what to weigh."""
    from requestflow.results.query import read_only

    _, flagged = read_only(engine, "SELECT board, model, backend, variant_label, precision, threads, latency_median_s, "
                                   "quality_reasons FROM scoreboard WHERE sweep = %(run)s AND quality = 'FLAGGED' "
                                   "ORDER BY board, model, backend, variant_label, precision, threads",
                           {"run": run_id})
    lines = []
    for board, model, backend, variant, precision, threads, median, reasons in flagged:
        label = " ".join(part for part in (board, model, backend, variant, precision) if part)
        lines.append(f"LATENCY FLAGGED: {label}, {threads} thread(s): median {median * 1e3:.3f} ms: "
                     + "; ".join(reasons or []))
    for line in lines:
        print(line)
    return lines
