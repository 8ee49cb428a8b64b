"""``./dev.sh stack up`` and ``./dev.sh stack down`` as a user runs them (issue #18; docs/scale-out.md): ``up`` prints
the export lines of a shell talking to the scaled-out stack and which boards belong to which site; a shell that
evals them reaches the stack with Airflow's own commands (the boards' pools, both sites' Celery workers under their
hosts' names and queues) and ``requestflow queued``; a second ``up`` finds it running; ``down`` stops every process
it started and removes its network namespaces and databases."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.celery_stack import PREFIX, available
from tests.leftovers import snapshot

ROOT = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
BIN = Path(sys.executable).parent  # the venv's airflow and requestflow


def dev(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "dev.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), stdin=subprocess.DEVNULL)


def in_the_shell(exports: str, command: str, env: dict) -> subprocess.CompletedProcess:
    """``command`` in a bash that did ``eval "$(./dev.sh stack up)"`` (``exports``: what up printed)."""
    return subprocess.run(["bash", "-c", f"eval {shlex.quote(exports)}; {command}"], env=env, capture_output=True,
                          text=True, timeout=180, cwd="/", stdin=subprocess.DEVNULL)


def test_stack_up_gives_a_shell_the_stack_and_stack_down_removes_all_of_it(tmp_path):
    ok, reason = available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"the Celery stack cannot run in CI: {reason}")
        pytest.skip(f"the Celery stack cannot run here: {reason}")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REQUESTFLOW_BOARDS"))}
    env["REQUESTFLOW_STATE"] = str(state)
    up = dev(env, "stack", "up", timeout=1200)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in up.stdout.splitlines())
        assert {"AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "REQUESTFLOW_BOARDS",
                "AIRFLOW_CONN_REQUESTFLOW_RESULTS"} | {f"AIRFLOW_CONN_RFB{n}" for n in range(1, 5)} <= set(exported)
        assert "site a: rfb1, rfb2 (worker worker-a" in up.stderr and "site b: rfb3, rfb4 (worker worker-b" in \
            up.stderr and "UI http://127.0.0.1:" in up.stderr, up.stderr

        pools = in_the_shell(up.stdout, f"{BIN}/airflow pools list -o json", env)
        assert pools.returncode == 0, pools.stderr[-3000:]
        assert {p["pool"] for p in json.loads(pools.stdout)} >= {f"board_rfb{n}" for n in range(1, 5)}
        workers = in_the_shell(up.stdout, f"{BIN}/airflow celery list-workers -o json", env)
        assert workers.returncode == 0, workers.stderr[-3000:]
        assert sorted((w["worker_name"], sorted(w["queues"])) for w in json.loads(workers.stdout)) == [
            ("worker-a@worker-a", ["a", "default"]), ("worker-b@worker-b", ["b", "default"])]
        queued = in_the_shell(up.stdout, f"{BIN}/requestflow queued", env)
        assert (queued.returncode, queued.stdout) == (0, "no task is queued\n"), queued.stderr[-3000:]

        again = dev(env, "stack", "up", timeout=120)  # running already: the same lines, nothing started
        assert (again.returncode, again.stdout) == (0, up.stdout), again.stderr[-3000:]
    finally:
        down = dev(env, "stack", "down", timeout=300)
    assert down.returncode == 0 and "stack stopped" in down.stderr, down.stderr[-3000:]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not re.findall(rf"^{PREFIX}\d+\b", netns, flags=re.MULTILINE), f"a worker host's namespace was left: {netns}"
    assert [p.command for p in snapshot().values() if str(state) in p.command or p.cwd.startswith(str(state))] == []
    database = exported["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    admin = create_engine(f"{SERVER.replace('postgresql://', 'postgresql+psycopg2://')}/postgres")
    try:
        with admin.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM pg_database WHERE datname = :d"),
                                      {"d": database}).scalar() == 0
    finally:
        admin.dispose()
