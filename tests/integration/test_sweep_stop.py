"""A SIGTERM to `requestflow sweep` (what `timeout` or a job scheduler sends) stops its run: the command ends 143,
and no requestflow, Airflow or runner process is left (issue #22)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.controller.test_local_airflow import RF, ROOT, databases  # noqa: F401 - databases is a fixture
from tests.processes import commands_under

MODEL = "mobilenet-v1-0.25-128"


def in_session(sid: int, folder: Path | None = None) -> list[int]:
    """The live (not zombie) processes of session ``sid``, and those working under ``folder``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if fields[0] != "Z" and (int(fields[3]) == sid or (folder and cwd.startswith(str(folder)))):
            pids.append(int(pid))  # fields: state ppid pgrp session
    return pids


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
        deadline = time.monotonic() + 10
        while (in_session(command.pid) or commands_under(board)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert in_session(command.pid) == [], "a process of the command (its Airflow run) was left running"
        assert commands_under(board) == [], "the point's runner was left running"
    finally:
        for pid in in_session(command.pid, board):  # what a failed test left
            os.kill(pid, signal.SIGKILL)
        if command.poll() is None:
            command.kill()
            command.wait()
