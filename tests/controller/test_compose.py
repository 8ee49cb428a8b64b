"""docker-compose.yml is valid (checked by a compose binary without any engine: none runs here) and describes the
stack the tests run natively (tests/celery_stack.py, tests/airflow_services.py): the same executor, broker, result
backend, queues, worker hostnames, pools, JWT secret, Connection names and services, read from the file parsed as
YAML."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from operators.config import pool_name
from operators.results_hook import ResultsHook
from tests.airflow_services import SERVICES, AirflowServices
from tests.celery_stack import SITES, celery_settings, result_backend, worker_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(COMPOSE is None and not os.environ.get("CI"),
                                   reason="docker-compose not installed (dev.sh test installs it)")


def compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "AIRFLOW_JWT_SECRET"}
    environment.update(env)
    return subprocess.run([COMPOSE or "docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
                          capture_output=True, text=True, env=environment, cwd=ROOT)


@needs_compose
def test_the_file_is_valid_with_its_secret_set():
    result = compose("config", AIRFLOW_JWT_SECRET="test-secret")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker-a", "airflow-worker-b"} <= set(services)
    assert services["airflow-worker-a"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@needs_compose
def test_without_its_secret_it_refuses_to_start_and_says_which():
    result = compose("config", "-q")
    assert result.returncode != 0 and "AIRFLOW_JWT_SECRET" in result.stderr


def interpolated(value):
    """Compose's ``${NAME:-default}`` as its default and ``${NAME:?message}`` (a value the user must give) as
    ``<NAME>``, recursively: the file as compose reads it with an empty environment but the mandatory values."""
    if isinstance(value, dict):
        return {k: interpolated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v) for v in value]
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", value)
        return re.sub(r"\$\{(\w+):\?[^}]*\}", r"<\1>", value)
    return value


@pytest.fixture(scope="module")
def services() -> dict:
    return interpolated(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> dict[str, str]:
    """The settings the native stack's Airflow processes run with (nothing started: the settings only)."""
    airflow = AirflowServices(tmp_path_factory.mktemp("home"), celery_settings("redis://127.0.0.1:6379/0"))
    try:
        env = dict(airflow.env)
    finally:
        airflow.metadata.dispose()
        airflow.results.dispose()
        airflow.admin.dispose()
    env["AIRFLOW__CELERY__RESULT_BACKEND"] = result_backend(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    return env


def test_every_airflow_service_runs_with_the_native_stacks_celery_settings(services, native):
    airflow = {name: s for name, s in services.items() if name.startswith("airflow-")}
    assert len(airflow) == 7  # init, api-server, scheduler, dag-processor, triggerer, two workers
    for name, service in airflow.items():
        env = service["environment"]
        for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__OPERATORS__DEFAULT_QUEUE", "AIRFLOW__CORE__HOSTNAME_CALLABLE"):
            assert env[key] == native[key], (name, key)
        broker, native_broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]), urlsplit(
            native["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.path) == (native_broker.scheme, native_broker.path) == ("redis", "/0"), name
        assert broker.hostname == "redis" and "redis" in services
        # the result backend is the metadata database, derived as the native stack derives it
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == result_backend(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).scheme == \
            urlsplit(native["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).scheme == "postgresql+psycopg2"
        assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).path == \
            urlsplit(native["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).path == "/execution/"
        # the same JWT secret for every service (a user-given value: compose refuses to start without it)
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "<AIRFLOW_JWT_SECRET>"
        assert native["AIRFLOW__API_AUTH__JWT_SECRET"]
        conn = f"AIRFLOW_CONN_{ResultsHook.default_conn_name.upper()}"
        assert urlsplit(env[conn]).path == "/requestflow" and conn in native, name


def test_one_worker_per_site_serves_its_sites_queue_under_its_own_hostname_as_natively(services):
    workers = {name: s for name, s in services.items() if "celery" in s.get("command", [])}
    assert sorted(workers) == [f"airflow-worker-{site}" for site in SITES]
    for site in SITES:
        worker = workers[f"airflow-worker-{site}"]
        assert worker["command"] == worker_command(site, worker["hostname"])
        assert worker["hostname"] == f"worker-{site}"  # tests/celery_stack.py's Site.hostname


def test_the_services_and_pools_are_the_native_stacks(services):
    commands = {name: s.get("command") for name, s in services.items()}
    # the native stack's services, each a service of its own (and the triggerer, which `./dev.sh stack up` runs)
    assert {commands["airflow-apiserver"], commands["airflow-scheduler"], commands["airflow-dag-processor"]} == \
        set(SERVICES)
    assert commands["airflow-triggerer"] == "triggerer"
    init = services["airflow-init"]["command"]
    script = init[-1] if isinstance(init, list) else init
    loop = next(line for line in script.splitlines() if "pools set" in line)
    words = shlex.split(loop.split(" do ", 1)[1])
    assert words[:4] == ["airflow", "pools", "set", pool_name("$${board}")] and words[4] == "1"


def test_the_image_installs_the_controller_at_the_pins_the_native_stack_runs():
    """The Dockerfile installs the controller extra (the celery provider is in it) under the x86_64 constraints, on
    the base image of the pinned Airflow; those pins are the versions this machine's venv (the tested stack) runs."""
    import tomllib
    from importlib.metadata import version

    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    install = shlex.split(next(line for line in dockerfile.splitlines() if line.startswith("RUN pip install ")))
    constraints = ROOT / "requirements" / "constraints-x86_64.txt"
    assert install[install.index("-c") + 1] == f"/opt/requestflow/requirements/{constraints.name}"
    assert "controller" in re.fullmatch(r".*\[(.*)\]", install[-1]).group(1).split(",")
    controller = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["controller"]
    assert "apache-airflow-providers-celery" in controller
    pins = dict(line.split("==", 1) for line in constraints.read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert base == f"apache/airflow:{pins['apache-airflow']}-python3.11"
    for package in ("apache-airflow", "apache-airflow-providers-celery", "celery", "kombu", "redis"):
        assert pins[package] == version(package), package
