"""Run one DAG with ``dag.test()`` in a fresh process (Airflow reads its configuration at import time, so each
run gets the environment the test gives it). Prints the run's final state as the last line, as JSON.

    python tests/airflow_run.py DAG_ID '{"models": [...]}'

Imported by the tests for the pieces around it: a throwaway Airflow home with its metadata and the results in
fresh PostgreSQL databases (``airflow_databases``), ``run_dag``, and Airflow Connections for farm boards.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
RETRIES_ENV = "REQUESTFLOW_TEST_RETRIES"  # run_dag's ``retries``, for main


@contextlib.contextmanager
def airflow_databases(home: Path, boards=("local", "rfb1", "rfb2")):
    """(environment, results engine): an Airflow home whose metadata is a fresh PostgreSQL database, migrated (a
    copy of the session's template: tests/databases.py), with one-slot pools for ``boards``, and a fresh results
    database with its schema; both dropped afterwards."""
    from sqlalchemy import create_engine

    from requestflow.results.database import sqlalchemy_url
    from tests.databases import airflow_url, create_database, drop_database, template

    names = {k: f"rf_test_{k}_{uuid.uuid4().hex[:8]}" for k in ("airflow", "results")}
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_url(names["airflow"]),
           "AIRFLOW_CONN_REQUESTFLOW_RESULTS": f"{SERVER}/{names['results']}",
           "REQUESTFLOW_STATE": str(home / "state"), "PYTHONPATH": str(ROOT), "REQUESTFLOW_RETRY_DELAY_S": "1"}
    results = None
    try:
        for kind, name in names.items():
            create_database(name, template(kind))
        results = create_engine(sqlalchemy_url(env["AIRFLOW_CONN_REQUESTFLOW_RESULTS"]))
        set_pools(env, {f"board_{board}": f"one task at a time on {board}" for board in boards})
        yield env, results
    finally:
        if results is not None:
            results.dispose()
        for name in names.values():
            drop_database(name)


def set_pools(env: dict, pools: dict[str, str]) -> None:
    """One-slot pools ``{name: description}`` in the metadata database of ``env``: one ``airflow pools import``
    (an Airflow command costs seconds of imports: one for all the pools, not one each)."""
    if not pools:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="rf-pools-") as file:
        json.dump({name: {"slots": 1, "description": text} for name, text in pools.items()}, file)
        file.flush()
        result = subprocess.run([str(Path(sys.executable).with_name("airflow")), "pools", "import", file.name],
                                env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"airflow pools import failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")


def run_dag(env: dict, conf: dict, dag_id: str = "mobilenets_sweep", expect: str | None = "success",
            retries: int | None = None, timeout_s: float = 1500) -> dict:
    """Run ``dag_id`` once with ``conf`` through ``dag.test()``: {"state", "run_id", "output"}. ``retries``: every
    task's retries instead of the DAG's (0: a failed attempt is its task's last); ``timeout_s``: the whole run's."""
    if retries is not None:
        env = {**env, RETRIES_ENV: str(retries)}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "airflow_run.py"), dag_id, json.dumps(conf)],
                            env=env, capture_output=True, text=True, timeout=timeout_s)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    output = result.stdout + result.stderr
    assert result.returncode == 0 and last.startswith("{"), output[-6000:]
    run = json.loads(last)
    assert expect is None or run["state"] == expect, output[-6000:]
    return {**run, "output": output}


def farm_connections(farm, work_root: Path, **extra) -> dict[str, str]:
    """``AIRFLOW_CONN_<BOARD>`` variables for the farm's boards: the throwaway key, the pinned host key, a work dir
    per board under ``work_root`` (kept across farms, so the deployed runner is reused), and ``extra``; a value of
    ``extra`` that is a dict maps board names to per-board values."""
    env = {}
    for board in farm.boards:
        extras = {"key_file": str(board.key_file), "host_key": board.host_public_key,
                  "work_dir": str(work_root / board.name), "python": os.path.realpath(sys.executable)}
        for key, value in extra.items():
            value = value.get(board.name) if isinstance(value, dict) else value
            if value is not None:
                extras[key] = value
        env[f"AIRFLOW_CONN_{board.name.upper()}"] = json.dumps({
            "conn_type": "ssh", "host": board.host, "login": "root", "extra": extras})
    return env


def main() -> int:
    from airflow.dag_processing.dagbag import DagBag

    dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
    bag = DagBag()
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 1
    dag = bag.dags[dag_id]
    if os.environ.get(RETRIES_ENV):
        for task in dag.tasks:
            task.retries = int(os.environ[RETRIES_ENV])
    run = dag.test(run_conf=conf)
    print(json.dumps({"state": str(run.state), "run_id": run.run_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
