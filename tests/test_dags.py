"""The DAGs: they import, follow the project's policies, validate their trigger form, and run sweeps end to end
(``dag.test()``, one task at a time: wiring, not parallelism) on the local board and on two sshd boards."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from requestflow.results.database import sqlalchemy_url
from requestflow.results.query import read_only
from tests.farm import farm_fixture

ROOT = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")

farm = farm_fixture(2, scope="module")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(ROOT / "dags"))


class TestTheDags:
    def test_import_with_no_errors(self, dagbag):
        assert dagbag.import_errors == {}
        assert set(dagbag.dags) == {"mobilenets_sweep", "mobilenets_nightly"}

    def test_every_dag_has_tags_a_doc_and_retries(self, dagbag):
        for dag in dagbag.dags.values():
            assert dag.tags and "requestflow" in dag.tags
            assert dag.doc_md and len(dag.doc_md) > 50
            assert all(task.retries >= 1 for task in dag.tasks), dag.dag_id

    def test_each_board_runs_in_its_own_one_slot_pool(self, dagbag):
        run = dagbag.dags["mobilenets_sweep"].get_task("board_local.run")
        assert run.pool == "board_local"

    def test_the_nightly_sweep_is_scheduled_from_the_versioned_config(self, dagbag):
        config = json.loads((ROOT / "config" / "nightly.json").read_text())
        nightly = dagbag.dags["mobilenets_nightly"]
        assert nightly.timetable.expression == config["schedule"]
        assert nightly.params["models"] == config["params"]["models"]


class TestTheTriggerForm:
    @pytest.mark.parametrize("field, value, message", [
        ("models", ["mobilenet-v1-0.3-128"], "is not one of"),
        ("boards", ["hikey"], "is not one of"),
        ("repetitions", 0, "less than the minimum of 1"),
        ("boards", ["x'; DROP TABLE boards; --"], "is not one of"),
        ("cpus", "0-3; rm -rf /", "does not match"),
        ("models", [], "non-empty"),
        ("backends", ["onnx"], "is not one of"),
        ("image_limit", 0, "less than the minimum of 1"),
    ])
    def test_bad_params_are_rejected_before_anything_runs(self, dagbag, field, value, message):
        from airflow.sdk.exceptions import ParamValidationError

        params = copy.deepcopy(dagbag.dags["mobilenets_sweep"].params)
        with pytest.raises(ParamValidationError, match=message):
            params[field] = value
            params.validate()

    def test_the_defaults_are_valid_and_cover_all_sixteen_models(self, dagbag):
        params = dagbag.dags["mobilenets_sweep"].params
        params.validate()
        assert len(params["models"]) == 16


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """An Airflow home with its metadata in a fresh PostgreSQL database, and a fresh results database."""
    names = {k: f"rf_test_{k}_{uuid.uuid4().hex[:8]}" for k in ("airflow", "results")}
    admin = create_engine(sqlalchemy_url(f"{SERVER}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{SERVER.replace('postgresql://', 'postgresql+psycopg2://')}"
                                                  f"/{names['airflow']}",
           "AIRFLOW_CONN_REQUESTFLOW_RESULTS": f"{SERVER}/{names['results']}",
           "REQUESTFLOW_STATE": str(home / "state"), "PYTHONPATH": str(ROOT)}
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    for board in ("local", "rfb1", "rfb2"):
        subprocess.run([airflow, "pools", "set", f"board_{board}", "1", f"one point at a time on {board}"],
                       env=env, check=True, capture_output=True)
    yield env, create_engine(sqlalchemy_url(env["AIRFLOW_CONN_REQUESTFLOW_RESULTS"]))
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run_dag(env: dict, conf: dict, dag_id: str = "mobilenets_sweep") -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "airflow_run.py"), dag_id, json.dumps(conf)],
                            env=env, capture_output=True, text=True, timeout=900)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and last.startswith("{"), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(last)


def result_documents(state_dir: Path, run_id: str) -> list[dict]:
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    return [json.loads(p.read_text()) for p in state_dir.glob(f"**/runs/{slug}_*/result.json")]


class TestSweeps:
    def test_a_sweep_on_the_local_board_lands_in_the_store_matching_the_runners_json(self, airflow_env):
        env, store = airflow_env
        run = run_dag(env, {"models": ["mobilenet-v1-0.25-128", "mobilenet-v1-0.5-160"], "backends": ["tflite"],
                            "repetitions": 5, "warmup": 1, "image_limit": 20})
        assert run["state"] == "success"
        columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s ORDER BY model",
                                  {"s": run["run_id"]})
        rows = [dict(zip(columns, row, strict=True)) for row in rows]
        documents = result_documents(Path(env["REQUESTFLOW_STATE"]), run["run_id"])
        assert len(rows) == 2 and len(documents) == 4
        for row in rows:
            perf = next(d for d in documents if d["context"]["model"]["id"] == row["model"] and "performance" in d)
            acc = next(d for d in documents if d["context"]["model"]["id"] == row["model"] and "accuracy" in d)
            assert row["board"] == "local"
            assert row["latency_median_s"] == perf["performance"]["median"]
            assert row["top1"] == acc["accuracy"]["top1"] and row["image_count"] == 20

    def test_a_dry_run_lists_the_points_and_runs_none(self, airflow_env):
        env, store = airflow_env
        run = run_dag(env, {"models": ["mobilenet-v1-0.25-160"], "dry_run": True})
        assert run["state"] == "success"
        _, rows = read_only(store, "SELECT count(*) FROM scoreboard WHERE sweep = %(s)s", {"s": run["run_id"]})
        assert rows == [(0,)]

    def test_a_sweep_across_two_sshd_boards(self, airflow_env, farm):
        env, store = airflow_env
        env = dict(env, REQUESTFLOW_BOARDS="rfb1,rfb2")
        for board in farm.boards:
            env[f"AIRFLOW_CONN_{board.name.upper()}"] = json.dumps({
                "conn_type": "ssh", "host": board.host, "login": "root",
                "extra": {"key_file": str(board.key_file), "host_key": board.host_public_key,
                          "work_dir": str(board.work_dir), "python": sys.executable}})
        run = run_dag(env, {"boards": ["rfb1", "rfb2"], "models": ["mobilenet-v1-0.25-128"],
                            "backends": ["tflite"], "modes": ["performance"], "repetitions": 3, "warmup": 1})
        assert run["state"] == "success"
        _, rows = read_only(store, "SELECT board, model FROM scoreboard WHERE sweep = %(s)s ORDER BY board",
                            {"s": run["run_id"]})
        assert rows == [("rfb1", "mobilenet-v1-0.25-128"), ("rfb2", "mobilenet-v1-0.25-128")]
        for board in farm.boards:  # the runner ran in the board's own work dir
            assert list(board.work_dir.glob("runs/*/result.json"))
