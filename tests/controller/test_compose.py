"""docker-compose.yml is valid (checked by a compose binary without any engine: none runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(COMPOSE is None and not os.environ.get("CI"),
                                reason="docker-compose not installed (dev.sh test installs it)")


def compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "AIRFLOW_JWT_SECRET"}
    environment.update(env)
    return subprocess.run([COMPOSE or "docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
                          capture_output=True, text=True, env=environment, cwd=ROOT)


def test_the_file_is_valid_with_its_secret_set():
    result = compose("config", AIRFLOW_JWT_SECRET="test-secret")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker"} <= set(services)
    assert services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_without_its_secret_it_refuses_to_start_and_says_which():
    result = compose("config", "-q")
    assert result.returncode != 0 and "AIRFLOW_JWT_SECRET" in result.stderr
