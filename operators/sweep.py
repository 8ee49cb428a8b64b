"""Building the sweep DAGs: Params (the trigger form), the plan of points, and one task group per board.

Airflow cannot map ``pool``, so exclusivity per board is built at parse time: one task group per board of the
inventory (``config/boards.json``), whose mapped run task sits in that board's pool ``board_<name>`` (1 slot:
create them with ``requestflow airflow-pools`` or ``airflow pools set``). Points of one board never overlap; boards
run in parallel.
"""

from __future__ import annotations

import json
import os
import re
from itertools import product
from pathlib import Path

from requestflow.board.catalogue import BACKENDS, CONFIGS, MODES, PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
BOARD_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
MODEL_IDS = [c.id for c in CONFIGS]
RESULTS_ASSET = "requestflow://results/scoreboard"  # updated by every sweep; regression detection follows it


def inventory() -> list[str]:
    env = os.environ.get("REQUESTFLOW_BOARDS")
    names = [b.strip() for b in env.split(",") if b.strip()] if env else \
        json.loads((ROOT / "config" / "boards.json").read_text())["boards"]
    for name in names:
        if not re.match(BOARD_NAME, name):
            raise ValueError(f"board name {name!r} in the inventory is not a valid name ({BOARD_NAME})")
    return names


def pool_name(board: str) -> str:
    return f"board_{board}"


def params(defaults: dict | None = None) -> dict:
    """The trigger form: every field validated by JSON Schema before anything runs."""
    from airflow.sdk import Param

    d = {"boards": ["local"], "models": MODEL_IDS, "backends": ["tflite"], "modes": ["performance", "accuracy"],
         "precision": None, "release": None, "repetitions": 20, "warmup": 3, "batch_size": 1, "threads": None,
         "cpus": None, "image_limit": 500, "dry_run": False}
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
        "repetitions": Param(d["repetitions"], type="integer", minimum=1, maximum=100000, title="Repetitions"),
        "warmup": Param(d["warmup"], type="integer", minimum=0, maximum=10000, title="Warm-up runs"),
        "batch_size": Param(d["batch_size"], type="integer", minimum=1, maximum=256, title="Batch size"),
        "threads": Param(d["threads"], type=["null", "integer"], minimum=1, maximum=256, title="Threads"),
        "cpus": Param(d["cpus"], type=["null", "string"], pattern=r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$",
                      title="CPU affinity", description="e.g. 4-7 (the big cluster of a HiKey960)"),
        "image_limit": Param(d["image_limit"], type="integer", minimum=1, maximum=50000,
                             title="Images (accuracy)"),
        "dry_run": Param(d["dry_run"], type="boolean", title="Dry run", description="list the points only"),
    }


def plan(board: str, p: dict) -> list[dict]:
    """The points of ``board`` for the sweep's params (none when the board was not chosen)."""
    if board not in p["boards"]:
        return []
    points = []
    for model, backend, mode in product(p["models"], p["backends"], p["modes"]):
        point = {"model": model, "backend": backend, "mode": mode, "precision": p.get("precision"),
                 "release": p.get("release"), "batch_size": p["batch_size"], "threads": p.get("threads"),
                 "cpus": p.get("cpus")}
        if mode == "performance":
            point.update(repetitions=p["repetitions"], warmup=p["warmup"])
        else:
            point["limit"] = p["image_limit"]
        points.append({k: v for k, v in point.items() if v is not None})
    return points


def build(dag_id: str, schedule, defaults: dict | None, doc: str, tags: list[str]):
    import pendulum
    from airflow.sdk import DAG, Asset, TaskGroup, task

    from operators.run_point import RunPointOperator

    with DAG(dag_id=dag_id, schedule=schedule, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             params=params(defaults), tags=tags, doc_md=doc, max_active_runs=4,
             default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)}) as dag:
        results = []
        for board in inventory():
            with TaskGroup(group_id=f"board_{board}"):
                @task(task_id="plan")
                def plan_points(board: str = board, **context) -> list[dict]:
                    points = plan(board, context["params"])
                    print(f"{len(points)} point(s) on board {board}: " + "; ".join(
                        f"{p['model']} {p['backend']} {p['mode']}" for p in points))
                    return [] if context["params"]["dry_run"] else points

                runs = RunPointOperator.partial(
                    task_id="run", board_conn_id=board, pool=pool_name(board),
                    map_index_template="{{ task.point['model'] }} {{ task.point['backend'] }} "
                                       "{{ task.point['mode'] }}",
                ).expand(point=plan_points())
                results.append(runs)

        @task(task_id="summary", trigger_rule="all_done", outlets=[Asset(RESULTS_ASSET)])
        def summary(**context) -> None:
            from operators.results_hook import ResultsHook
            from requestflow.results.query import read_only, render

            engine = ResultsHook().get_conn()
            try:
                print(render(*read_only(engine, "SELECT board, model, backend, precision, latency_median_s, top1 "
                                                "FROM scoreboard WHERE sweep = %(run)s ORDER BY board, model",
                                        {"run": context["run_id"]}), "table"))
            finally:
                engine.dispose()

        results >> summary()
    return dag
