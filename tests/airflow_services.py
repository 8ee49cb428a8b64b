"""A real Airflow for tests: an Airflow home with its metadata in a fresh PostgreSQL database (a copy of the
session's migrated template, tests/databases.py), a fresh results database, and the api-server (whose execution API
the tasks talk to through the Task SDK), the scheduler (LocalExecutor) and the dag-processor, each started in a
process group of its own so that stopping it stops everything it started.

    with AirflowServices(tmp_path, extra_env) as airflow:
        airflow.cli("dags", "trigger", ...)
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from requestflow.results.database import sqlalchemy_url
from tests.airflow_run import set_pools
from tests.databases import copy_database, template

ROOT = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SERVICES = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowServices:
    def __init__(self, home: Path, extra_env: dict[str, str] | None = None, pools: tuple[str, ...] = (),
                 services: tuple[str, ...] = SERVICES) -> None:
        self.home = home
        self.names = {k: f"rf_test_{k}_{uuid.uuid4().hex[:8]}" for k in ("airflow", "results")}
        self.port = free_port()
        self.pools = pools
        self.services = services
        self.processes: dict[str, subprocess.Popen] = {}
        self.admin = create_engine(sqlalchemy_url(f"{SERVER}/postgres"), isolation_level="AUTOCOMMIT")
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{SERVER.replace('postgresql://', 'postgresql+psycopg2://')}"
                                                   f"/{self.names['airflow']}",
            "AIRFLOW_CONN_REQUESTFLOW_RESULTS": f"{SERVER}/{self.names['results']}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "REQUESTFLOW_STATE": str(home / "state"), "PYTHONPATH": str(ROOT),
            **(extra_env or {}),  # a test's own settings win (auth users, plugins folder, ...)
        }
        self.metadata = create_engine(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        self.results = create_engine(sqlalchemy_url(self.env["AIRFLOW_CONN_REQUESTFLOW_RESULTS"]))

    # -- set-up and teardown --------------------------------------------------------------------------------------
    def __enter__(self) -> AirflowServices:
        try:
            with self.admin.connect() as connection:  # the metadata: a copy of the session's migrated template
                copy_database(connection, template("airflow"), self.names["airflow"])
                connection.execute(text(f'CREATE DATABASE "{self.names["results"]}"'))
            set_pools(self.env, {pool: f"one point at a time ({pool})" for pool in self.pools})
            for service in self.services:
                self._start(service, self.env)
            self.wait_for_api(timeout=120)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, service: str, env: dict[str, str], mode: str = "wb") -> None:
        args = [service] + (["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
                            if service == "api-server" else [])
        log = open(self.home / f"{service}.log", mode)  # noqa: SIM115 - the child process keeps it
        self.processes[service] = subprocess.Popen([AIRFLOW, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def restart(self, service: str, **settings: str) -> None:
        """Stop ``service`` (SIGTERM to its group, then SIGKILL) and start it again with ``settings`` on top of
        the services' environment (e.g. a scheduler setting for one test); its log goes on in the same file."""
        process = self.processes.pop(service)
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self._start(service, {**self.env, **settings}, mode="ab")

    def close(self) -> None:
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)  # and whatever the group leader left behind
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.processes.clear()
        self.metadata.dispose()
        self.results.dispose()
        with self.admin.connect() as connection:
            for name in self.names.values():
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()

    # -- helpers --------------------------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call the REST API as an admin (the simple auth manager's token: every user is an admin here)."""
        import json

        base = f"http://127.0.0.1:{self.port}"
        with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as response:  # GET: no credentials needed
            token = json.loads(response.read())["access_token"]
        request = urllib.request.Request(f"{base}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")

    def check_alive(self) -> None:
        for service, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {service} exited ({process.returncode}):\n{self.log_tail(service)}")

    def log_tail(self, service: str, chars: int = 4000) -> str:
        path = self.home / f"{service}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the api-server did not answer in {timeout:.0f} s:\n"
                                       f"{self.log_tail('api-server')}") from None
                time.sleep(1)

    def wait_for_dag(self, dag_id: str, timeout: float) -> None:
        """Until the dag-processor has serialized ``dag_id`` (triggering needs it) without import errors."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with self.metadata.connect() as connection:
                found = connection.execute(text("SELECT count(*) FROM serialized_dag WHERE dag_id = :d"),
                                           {"d": dag_id}).scalar()
                errors = connection.execute(text("SELECT filename, stacktrace FROM import_error")).fetchall()
            if errors:
                raise RuntimeError(f"DAG import errors: {errors}")
            if found:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG {dag_id} not serialized in {timeout:.0f} s:\n"
                                   f"{self.log_tail('dag-processor')}")
            time.sleep(2)

    def wait_for_runs(self, dag_id: str, run_ids: list[str], timeout: float) -> dict[str, str]:
        """Until every run has ended; their states."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with self.metadata.connect() as connection:
                states = dict(connection.execute(
                    text("SELECT run_id, state FROM dag_run WHERE dag_id = :d AND run_id = ANY(:r)"),
                    {"d": dag_id, "r": run_ids}).fetchall())
            if len(states) == len(run_ids) and all(s in ("success", "failed") for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs not finished in {timeout:.0f} s: {states}\n"
                                   f"{self.log_tail('scheduler')}")
            time.sleep(3)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # each service leads its own session, hence its own process group
    except (ProcessLookupError, PermissionError):
        pass
