"""requestflow's local Airflow (operators/local/) and ``requestflow sweep``: the environment it builds (a
home in the state folder, this checkout's DAGs, PostgreSQL metadata, never SQLite), and sweeps run end to end
through Airflow on the local board, against the test PostgreSQL (a throwaway database for Airflow's metadata and
one for the results, dropped afterwards; migrated once for the module)."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from operators.local import airflow_home
from requestflow.errors import UserError
from requestflow.results.database import sqlalchemy_url
from requestflow.results.query import read_only

ROOT = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
RF = str(Path(sys.executable).with_name("requestflow"))
MODEL = "mobilenet-v1-0.25-128"


class TestTheEnvironment:
    def test_home_in_the_state_folder_this_checkouts_dags_and_postgresql_metadata(self, tmp_path):
        env = airflow_home.environment("postgres://rf:secret@db.example:5433/airflow",
                                        "postgresql+psycopg://rf@db.example/results", state=tmp_path)
        assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
        assert env["REQUESTFLOW_STATE"] == str(tmp_path)
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://rf:secret@db.example:5433/airflow"
        assert env["AIRFLOW_CONN_REQUESTFLOW_RESULTS"] == "postgresql://rf@db.example/results"
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)  # operators/ importable by the tasks
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert int(env["AIRFLOW__CORE__PARALLELISM"]) <= max(2, os.cpu_count() or 2)
        assert "sqlite" not in json.dumps(env).lower()

    @pytest.mark.parametrize("url", ["sqlite:////tmp/airflow.db", "sqlite://", "mysql://u@h/airflow"])
    def test_anything_but_postgresql_is_refused_for_the_metadata(self, url):
        with pytest.raises(UserError, match="PostgreSQL only"):
            airflow_home.airflow_url(url)

    def test_by_default_the_metadata_is_the_database_airflow_of_the_embedded_server(self, monkeypatch):
        monkeypatch.delenv(airflow_home.METADATA_ENV, raising=False)
        monkeypatch.setattr("requestflow.results.embedded.embedded_url",
                            lambda: "postgresql://postgres:@/postgres?host=/state/postgres")
        url, origin = airflow_home.metadata_url()
        assert url == "postgresql+psycopg2://postgres@/airflow?host=%2Fstate%2Fpostgres"
        assert "embedded" in origin
        monkeypatch.setenv(airflow_home.METADATA_ENV, "postgresql://a@b/meta")
        assert airflow_home.metadata_url() == ("postgresql+psycopg2://a@b/meta", airflow_home.METADATA_ENV)
        assert airflow_home.metadata_url("postgresql://c@d/x")[0] == "postgresql+psycopg2://c@d/x"

    def test_the_config_file_holds_the_same_settings_and_keeps_its_secrets(self, tmp_path):
        env = airflow_home.environment("postgresql://postgres:@/airflow?host=/state/postgres", state=tmp_path)
        path = airflow_home.write_config(env)
        assert path == tmp_path / "airflow" / "airflow.cfg" and oct(path.stat().st_mode & 0o777) == "0o600"
        parsed = configparser.ConfigParser()  # Airflow's interpolation: the URL's %2F written as %%2F
        parsed.read(path)
        assert parsed.get("database", "sql_alchemy_conn") == env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert parsed.get("core", "dags_folder") == str(ROOT / "dags")
        secrets = {k: parsed.get(s, k) for s, k in (("api_auth", "jwt_secret"), ("core", "fernet_key"))}
        airflow_home.write_config(env)
        parsed.read(path)
        assert {k: parsed.get(s, k) for s, k in (("api_auth", "jwt_secret"), ("core", "fernet_key"))} == secrets
        assert "sqlite" not in path.read_text()

    def test_the_exports_survive_a_shell(self, tmp_path):
        env = airflow_home.environment("postgresql://u:p$x@h/airflow", state=tmp_path / "with space")
        shell = subprocess.run(["bash", "-c", f'{airflow_home.exports(env)}\n'
                                              'printf "%s\\n" "$AIRFLOW_HOME" "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"'],
                               capture_output=True, text=True, check=True)
        assert shell.stdout.splitlines() == [env["AIRFLOW_HOME"], env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]]


class TestBadArgumentsAreRefused:
    @pytest.mark.parametrize("argv, message", [
        (["--models", "mobilenet-v1-0.25-129"], r"unknown model id 'mobilenet-v1-0.25-129'; did you mean"),
        (["--models", MODEL, "--backends", "onnx"], r"unknown backend 'onnx'; known: tf, tflite"),
        (["--models", MODEL, "--modes", "speed"], r"unknown mode 'speed'"),
        (["--models", MODEL, "--repetitions", "0"], r"--repetitions must be at least 1"),
        (["--models", MODEL, "--image-limit", "0"], r"--image-limit must be at least 1"),
        (["--models", MODEL, "--repetitions", "many"], r"invalid int value: 'many'"),
        (["--models", MODEL, "--board", "hikey"], r"board 'hikey' is not in the inventory"),
        (["--models", MODEL, "--weights", "random"], r"--weights random measures performance only \(accuracy "
                                                     r"needs real weights\): add --modes performance"),
        (["--models", MODEL, "--weights", "random", "--modes", "performance", "accuracy"],
         r"--weights random measures performance only"),
        (["--models", MODEL, "--weights", "fake"], r"argument --weights: invalid choice: 'fake'"),
        ([], r"required: --models"),
    ])
    def test_one_line_and_exit_2_before_anything_starts(self, run_cli, argv, message):
        code, out, err = run_cli("sweep", *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and out == "", err
        assert lines[0].startswith("requestflow: error: ") and re.search(message, lines[0]), lines[0]

    def test_airflow_env_refuses_a_sqlite_metadata_url(self, run_cli, tmp_path, monkeypatch):
        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path))
        code, out, err = run_cli("airflow-env", "--db", f"{SERVER}/postgres", "--airflow-db", "sqlite:////tmp/a.db")
        assert code == 2 and out == "" and err.strip().splitlines() == [
            "requestflow: error: Airflow's metadata is PostgreSQL only here (never SQLite); got a 'sqlite' URL"]


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """A throwaway metadata database (created by the command itself) and results database; the state folder."""
    names = {k: f"rf_test_{k}_{uuid.uuid4().hex[:8]}" for k in ("airflow", "results")}
    admin = create_engine(sqlalchemy_url(f"{SERVER}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{names["results"]}"'))
    state = tmp_path_factory.mktemp("state")
    urls = {k: f"{SERVER}/{name}" for k, name in names.items()}
    yield urls, state
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def requestflow(databases, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    urls, state = databases
    env = {**os.environ, "REQUESTFLOW_STATE": str(state), "REQUESTFLOW_RETRY_DELAY_S": "1"}
    return subprocess.run([RF, *argv, "--db", urls["results"], "--airflow-db", urls["airflow"]], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(ROOT))


@pytest.fixture(scope="module")
def sweep(databases, data_dir):
    """One tiny sweep through Airflow: the first command also creates and migrates the metadata database."""
    return requestflow(databases, "sweep", "--models", MODEL, "--backends", "tflite", "--modes", "performance",
                       "--repetitions", "2")


class TestASweepThroughAirflow:
    def test_it_succeeds_and_prints_this_runs_scoreboard_row(self, sweep):
        assert sweep.returncode == 0, sweep.stdout[-4000:] + sweep.stderr[-4000:]
        assert "airflow db migrate" in sweep.stderr  # a fresh metadata database
        # board, model, backend, variant (the readable label: XNNPACK), precision, threads, median in ms
        assert re.search(rf"^local\s+{MODEL}\s+tflite\s+XNNPACK\s+uint8\s+\d+\s+\d+\.\d+", sweep.stdout, re.M), \
            sweep.stdout
        assert "http://127.0.0.1:8080/dags/mobilenets_sweep/runs/" in sweep.stdout

    def test_the_row_is_in_the_results_store_under_the_airflow_run_id(self, sweep, databases):
        run_id = re.search(r"^sweep (\S+) on board local, from the results store:", sweep.stdout, re.M).group(1)
        assert run_id.startswith("manual__")
        store = create_engine(sqlalchemy_url(databases[0]["results"]))
        try:
            columns, rows = read_only(store, "SELECT s.board, s.model, s.backend, s.precision, p.n, "
                                             "(SELECT count(*) FROM samples x WHERE x.result_id = p.result_id) "
                                             "FROM scoreboard s JOIN performance p ON p.result_id = "
                                             "s.performance_result_id WHERE s.sweep = %(s)s", {"s": run_id})
        finally:
            store.dispose()
        assert rows == [("local", MODEL, "tflite", "uint8", 2, 2)]

    def test_airflows_metadata_is_postgresql_with_the_boards_pool_and_no_sqlite_anywhere(self, sweep, databases):
        urls, state = databases
        metadata = create_engine(sqlalchemy_url(urls["airflow"]))
        try:
            with metadata.connect() as connection:
                pools = dict(connection.execute(text("SELECT pool, slots FROM slot_pool")).fetchall())
                runs = connection.execute(text("SELECT count(*) FROM dag_run WHERE dag_id = 'mobilenets_sweep'"))
                assert runs.scalar() == 1
        finally:
            metadata.dispose()
        assert pools["board_local"] == 1
        home = state / "airflow"
        assert "postgresql+psycopg2://" in (home / "airflow.cfg").read_text()
        assert not list(home.glob("*.db")) and "sqlite" not in (home / "airflow.cfg").read_text()

    def test_airflow_env_migrates_no_more_and_prints_exports_for_a_shell(self, sweep, databases):
        result = requestflow(databases, "airflow-env", timeout=120)
        assert result.returncode == 0, result.stderr
        assert "migrate" not in result.stderr
        exports = dict(re.findall(r"^export (\w+)=(.*)$", result.stdout, re.M))
        assert exports["AIRFLOW_HOME"] == str(databases[1] / "airflow")
        assert exports["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")

    def test_an_unknown_dag_is_one_line_and_exit_2(self, sweep, databases):
        result = requestflow(databases, "sweep", "--models", MODEL, "--dag", "no_such_dag", timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith("requestflow: error: no DAG 'no_such_dag'")
        assert "Traceback" not in result.stderr

    def test_it_refuses_to_run_beside_a_live_scheduler_that_would_run_the_same_test_run(self, sweep, databases):
        metadata = create_engine(sqlalchemy_url(databases[0]["airflow"]))
        with metadata.begin() as connection:  # a scheduler's heartbeat, and the DAG unpaused
            job = connection.execute(text(
                "INSERT INTO job (job_type, state, start_date, latest_heartbeat, hostname) "
                "VALUES ('SchedulerJob', 'running', now(), now(), 'elsewhere') RETURNING id")).scalar()
            connection.execute(text("UPDATE dag SET is_paused = false WHERE dag_id = 'mobilenets_sweep'"))
        try:
            result = requestflow(databases, "sweep", "--models", MODEL, "--modes", "performance", timeout=120)
        finally:
            with metadata.begin() as connection:
                connection.execute(text("DELETE FROM job WHERE id = :id"), {"id": job})
                connection.execute(text("UPDATE dag SET is_paused = true WHERE dag_id = 'mobilenets_sweep'"))
            metadata.dispose()
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith(
            "requestflow: error: an Airflow scheduler is running on this metadata database and mobilenets_sweep is "
            "unpaused")
        assert "running mobilenets_sweep" not in result.stdout

    def test_weights_random_sweeps_a_config_without_real_weights(self, sweep, databases):
        # no real weights for 0.5-128 in the shared data: on random weights, explicitly, its performance runs
        result = requestflow(databases, "sweep", "--models", "mobilenet-v1-0.5-128", "--backends", "tflite",
                             "--modes", "performance", "--weights", "random", "--repetitions", "2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert '"weights": "random"' in result.stdout  # the run's conf, as the command prints it
        assert re.search(r"^local\s+mobilenet-v1-0\.5-128\s+tflite\s+XNNPACK\s+fp32\s+\d+\s+\d+\.\d+", result.stdout,
                         re.M), result.stdout[-3000:]

    def test_a_failed_point_makes_the_command_fail_with_a_clear_line(self, sweep, databases):
        # no weights for 0.5-128 in the shared data and no network: the accuracy point is refused on the board
        result = requestflow(databases, "sweep", "--models", "mobilenet-v1-0.5-128", "--backends", "tflite",
                             "--modes", "accuracy", "--image-limit", "1")
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert re.match(r"requestflow: sweep manual__\S+ FAILED \(failed\): .*failed", last), last
