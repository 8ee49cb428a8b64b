#!/usr/bin/env python3
"""Orchestration overhead per point: the CeleryExecutor (a worker on a host of its own) against the LocalExecutor.

The same 16-point sweep (every MobileNets-v1 config, ``tflite``, performance, random weights, few repetitions) runs
on the local board under a real scheduler, api-server and dag-processor (``tests/airflow_services.py``), twice:
with the LocalExecutor, and with the CeleryExecutor (``tests/celery_stack.py``: Redis, one Celery worker in a
network namespace of its own serving the default queue; the local board is then the worker's host). A warm-up
sweep first fills the board's cache (the random weights' ``.tflite`` files) for both.

Per-point orchestration overhead = (span of the 16 point tasks, first start -> last end - the sum of the runner's
own time, ``results.finished_at - started_at``) / 16: everything a point costs besides measuring it (scheduling,
the executor's hand-over, the task process, the board job's bookkeeping, loading the result). The board's pool
runs one point at a time in both. Printed: both figures and their ratio, Celery / Local.

    python bench/bench_celery.py [--json FILE]            (root: the Celery worker's network namespace)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

DAG_ID = "mobilenets_sweep"


def conf(threads: int) -> dict:
    from requestflow.board.catalogue import CONFIGS

    return {"boards": ["local"], "models": [c.id for c in CONFIGS], "backends": ["tflite"], "modes": ["performance"],
            "weights": "random", "repetitions": 5, "warmup": 1, "threads": threads}


def sweep(services, tag: str, threads: int, timeout: float = 3600) -> dict:
    run_id = f"bench_{tag}_{int(time.time())}"
    services.cli("dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf(threads)))
    states = services.wait_for_runs(DAG_ID, [run_id], timeout=timeout)
    if states[run_id] != "success":
        raise RuntimeError(f"sweep {run_id}: {states[run_id]}\n{services.log_tail('scheduler')}")
    with services.metadata.connect() as connection:
        spans = connection.execute(text(
            "SELECT min(start_date), max(end_date), count(*) FROM task_instance WHERE dag_id = :d AND run_id = :r "
            "AND task_id = 'board_local.run'"), {"d": DAG_ID, "r": run_id}).one()
    with services.results.connect() as connection:
        runner = connection.execute(text(
            "SELECT sum(extract(epoch FROM r.finished_at - r.started_at)), count(*) FROM results r "
            "JOIN sweeps s ON s.id = r.sweep_id WHERE s.run_id = :r AND r.status = 'ok'"), {"r": run_id}).one()
    span = (spans[1] - spans[0]).total_seconds()
    points = int(spans[2])
    if points != 16 or int(runner[1]) != 16:
        raise RuntimeError(f"sweep {run_id}: {points} point tasks, {runner[1]} results stored (16 expected)")
    return {"run_id": run_id, "points": points, "span_s": span, "runner_s": float(runner[0]),
            "overhead_per_point_s": (span - float(runner[0])) / points,
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}  # the machine may be shared


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import tempfile

    from tests.airflow_services import AirflowServices
    from tests.celery_stack import CeleryStack, available

    ok, reason = available()
    if not ok:
        print(f"bench_celery: cannot run here: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    env = {"REQUESTFLOW_BOARDS": "local", "REQUESTFLOW_RETRY_DELAY_S": "1", "REQUESTFLOW_OFFLINE": "1",
           "REQUESTFLOW_CACHE": str(work / "cache"), "AIRFLOW__CORE__PARALLELISM": "4",
           "REQUESTFLOW_STATE": str(work / "state")}  # one local board work dir (and its cache) for both
    figures = {}
    with AirflowServices(work / "local", env, pools=("board_local",)) as services:
        services.wait_for_dag(DAG_ID, timeout=300)
        services.cli("dags", "unpause", DAG_ID)
        sweep(services, "warmup", threads=1)
        figures["local"] = sweep(services, "local", threads=2)
        print(f"LocalExecutor:  {figures['local']}", flush=True)

    class NoBoards:
        boards: list = []

    with CeleryStack(work / "celery", NoBoards(), {"default": []}, env, pools=("board_local",)) as stack:
        stack.services.wait_for_dag(DAG_ID, timeout=300)
        stack.services.cli("dags", "unpause", DAG_ID)
        figures["celery"] = sweep(stack.services, "celery", threads=3)
        print(f"CeleryExecutor: {figures['celery']}", flush=True)

    ratio = figures["celery"]["overhead_per_point_s"] / figures["local"]["overhead_per_point_s"]
    figures["ratio"] = ratio
    print(f"per-point orchestration overhead: CeleryExecutor {figures['celery']['overhead_per_point_s']:.2f} s, "
          f"LocalExecutor {figures['local']['overhead_per_point_s']:.2f} s: ratio {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
