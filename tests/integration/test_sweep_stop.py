"""A SIGTERM to `requestflow sweep` (what `timeout` or a job scheduler sends) stops its run: the command ends 143,
and no requestflow, Airflow or runner process is left (issue #22)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.controller.test_local_airflow import RF, ROOT, databases  # noqa: F401 - databases is a fixture
from tests.leftovers import describe, snapshot
from tests.processes import commands_under

MODEL = "mobilenet-v1-0.25-128"
GRACE_S = 30  # for processes that are ending to be gone (10 s were too few once, on two busy test workers)


def in_session(sid: int, folder: Path | None = None) -> list[int]:
    """The live (not zombie) processes of session ``sid``, and those working under ``folder``."""
    return [p.pid for p in snapshot().values() if p.session == sid or (folder and p.cwd.startswith(str(folder)))]


def test_a_sigterm_stops_the_run_and_leaves_nothing_running(databases):  # noqa: F811 - the fixture
    urls, state = databases
    env = {**os.environ, "REQUESTFLOW_STATE": str(state), "REQUESTFLOW_RETRY_DELAY_S": "1"}
    command = subprocess.Popen(
        [RF, "sweep", "--models", MODEL, "--backends", "tflite", "--modes", "performance", "--weights", "random",
         "--repetitions", "100000", "--warmup", "0", "--db", urls["results"], "--airflow-db", urls["airflow"]],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=str(ROOT), start_new_session=True)
    board = state / "board"
    try:
        deadline = time.monotonic() + 600
        while (not any("requestflow.cli" in line for line in commands_under(board))
               and command.poll() is None and time.monotonic() < deadline):
            time.sleep(0.5)
        if command.poll() is not None:
            raise AssertionError(f"the command ended ({command.returncode}): {command.stdout.read()[-4000:]}")
        assert any("requestflow.cli" in line for line in commands_under(board)), "the point's runner never started"
        command.send_signal(signal.SIGTERM)  # to the command alone, as `timeout` does
        output, _ = command.communicate(timeout=300)
        assert command.returncode == 143, output[-4000:]
        assert "SIGTERM: stopping the run" in output
        assert "board local: the runner exited 143 without a result" in output  # its job killed by on_kill
        for task in ("board_local.restore_clocks", "summary"):  # the teardown and the summary still ran
            assert f"[DAG TEST] end task task_id={task} " in output, output[-4000:]
        deadline = time.monotonic() + GRACE_S
        while (in_session(command.pid) or commands_under(board)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = in_session(command.pid)
        assert left == [], "a process of the command (its Airflow run) was left running:\n" + described(left)
        assert commands_under(board) == [], "the point's runner was left running"
    finally:
        for pid in in_session(command.pid, board):  # what a failed test left
            os.kill(pid, signal.SIGKILL)
        if command.poll() is None:
            command.kill()
            command.wait()


def test_timeout_20_on_a_long_point_leaves_no_process(databases):  # noqa: F811 - the fixture
    """`timeout 20 requestflow sweep ...`: whatever the run was doing at 20 s, nothing of it is left afterwards."""
    urls, state = databases
    env = {**os.environ, "REQUESTFLOW_STATE": str(state), "REQUESTFLOW_RETRY_DELAY_S": "1"}
    command = subprocess.Popen(
        ["timeout", "20", RF, "sweep", "--models", MODEL, "--backends", "tflite", "--modes", "performance",
         "--weights", "random", "--repetitions", "100000", "--warmup", "0", "--db", urls["results"],
         "--airflow-db", urls["airflow"]],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=str(ROOT), start_new_session=True)
    board = state / "board"
    try:
        output, _ = command.communicate(timeout=400)
        assert command.returncode == 124, output[-4000:]  # timeout's own code: it had to stop the command
        deadline = time.monotonic() + GRACE_S
        while (in_session(command.pid, board) or mentioning(state)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = in_session(command.pid, board)
        assert left == [], "a process of the command or its runner was left running:\n" + described(left)
        assert mentioning(state) == [], "a process working for the run was left running"
    finally:
        for pid in in_session(command.pid, board) + mentioning(state):  # what a failed test left
            os.kill(pid, signal.SIGKILL)
        if command.poll() is None:
            command.kill()
            command.wait()


def described(pids: list[int]) -> str:
    processes = snapshot()
    return describe([processes[pid] for pid in pids if pid in processes])


def mentioning(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (an Airflow process, a database server of the run)."""
    return [p.pid for p in snapshot().values() if str(folder) in p.command and p.pid != os.getpid()]
