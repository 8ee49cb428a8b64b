"""Board faults that used to hang a sweep forever (issue #22), on a real sshd board: a point whose job supervisor is
killed, a board that reboots mid-point, a runner that stops making progress. Each ends the point's attempt, with its
finished document stored or a clear failure that a retry completes; none waits forever (every wait here has an
outer limit of its own, and a test that reaches it fails)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from operators.run_point import RunPointOperator
from requestflow.results.database import sqlalchemy_url
from tests.airflow_run import farm_connections
from tests.databases import throwaway_database
from tests.farm import farm_fixture
from tests.processes import commands_under

farm = farm_fixture(1, scope="module")
POINT = {"model": "mobilenet-v1-0.25-128", "backend": "tflite", "mode": "performance", "repetitions": 3000,
         "warmup": 1, "threads": 1, "weights": "random"}
OUTER_LIMIT_S = 300


@dataclass
class FakeTI:
    try_number: int


@pytest.fixture
def board(farm, tmp_path, monkeypatch):
    """rfb1 with this checkout's Python as its deployed runner (the farm shares this machine's files), its boot id
    in a file the test can change, and a throwaway results store."""
    work_root = tmp_path / "boards"
    work = work_root / "rfb1"
    runner = work / "runner" / "current"
    (runner / "venv" / "bin").mkdir(parents=True)
    (runner / ".deployed").touch()
    python = runner / "venv" / "bin" / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    boot_id = tmp_path / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
    for name, value in farm_connections(farm, work_root, boot_id_file=str(boot_id)).items():
        monkeypatch.setenv(name, value)
    with throwaway_database() as url:
        monkeypatch.setenv("REQUESTFLOW_DATABASE_URL", url)
        engine = create_engine(sqlalchemy_url(url))
        yield work, boot_id, engine
        engine.dispose()
    assert commands_under(work) == [], "a process of the test was left running on the board"


class Attempt:
    """One attempt of the point in a thread, as a worker runs it; ``outcome`` is its return value or error."""

    def __init__(self, sweep: str, try_number: int = 1, point: dict | None = None, **options) -> None:
        self.operator = RunPointOperator(task_id="run", board_conn_id="rfb1", sweep_id=sweep,
                                         point={**POINT, **(point or {})}, **options)
        self.outcome: dict = {}
        self.thread = threading.Thread(target=self._run, args=(try_number,))
        self.thread.start()

    def _run(self, try_number: int) -> None:
        try:
            self.outcome["value"] = self.operator.execute({"ti": FakeTI(try_number)})
        except Exception as exc:  # noqa: BLE001 - asserted by the tests
            self.outcome["error"] = exc

    def result(self):
        self.thread.join(timeout=OUTER_LIMIT_S)
        assert not self.thread.is_alive(), f"the attempt still waits after {OUTER_LIMIT_S} s"
        return self.outcome.get("value"), self.outcome.get("error")


def runner_running(work: Path) -> Path:
    """The job folder of the point, once its runner measures (its Python has the job folder as working dir)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for folder in (work / "runs").glob("*"):
            if any("requestflow.cli" in line for line in commands_under(folder)) and (folder / "pid").exists():
                return folder
        time.sleep(0.1)
    raise AssertionError("the runner never started")


def results(engine, sweep: str) -> list[tuple]:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT r.status, p.median_s FROM results r JOIN sweeps s ON s.id = r.sweep_id "
            "JOIN performance p ON p.result_id = r.id WHERE s.run_id = :sweep"), {"sweep": sweep}).all()


def failures(engine, sweep: str) -> list[str]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text(
            "SELECT f.message FROM point_failures f JOIN sweeps s ON s.id = f.sweep_id WHERE s.run_id = :sweep"),
            {"sweep": sweep}).all()]


def lost_then_retried(board, then) -> str:
    """Attempt 1's whole job killed mid-point, then ``then()``; attempt 2 must store the point's one result.
    Attempt 1's error."""
    work, _, engine = board
    sweep = f"lost-{uuid.uuid4().hex[:6]}"
    attempt = Attempt(sweep, retries=1)
    job = runner_running(work)
    os.killpg(int((job / "pid").read_text()), signal.SIGKILL)
    then()
    _, error = attempt.result()
    value, retried = Attempt(sweep, try_number=2, retries=1).result()
    assert retried is None, retried
    assert value["loaded"] is True and len(results(engine, sweep)) == 1
    return str(error)


class TestAKilledSupervisor:
    def test_the_runner_s_finished_document_is_the_point_s_result(self, board):
        work, _, engine = board
        sweep = f"supervisor-{uuid.uuid4().hex[:6]}"
        attempt = Attempt(sweep)
        job = runner_running(work)
        os.kill(int((job / "pid").read_text()), signal.SIGKILL)  # `kill -9` of the supervising shell
        value, error = attempt.result()
        assert error is None, error
        assert value["status"] == "ok" and value["loaded"] is True
        assert not (job / "exit_code").exists()  # nobody wrote it: the loss was seen, not an exit
        [(status, _)] = results(engine, sweep)
        assert status == "ok"

    def test_a_runner_killed_with_it_fails_the_attempt_and_the_retry_completes_the_point(self, board):
        error = lost_then_retried(board, lambda: None)  # the supervisor and the runner killed
        assert "the runner's job was lost (its process group is gone without an exit code" in error, error
        assert "without a result" in error


class TestABoardReboot:
    def test_the_reboot_is_named_and_the_retry_completes_the_point(self, board):
        _, boot_id, _ = board
        # the board goes down with its processes and comes back
        error = lost_then_retried(board, lambda: boot_id.write_text("the-next-boot\n"))
        assert "the runner's job was lost (the board rebooted (boot id the-next-boot now))" in error, error


class TestAStoppedRunner:
    def test_times_out_at_its_deadline_with_its_processes_gone(self, board):
        work, _, engine = board
        sweep = f"stopped-{uuid.uuid4().hex[:6]}"
        attempt = Attempt(sweep, point={"repetitions": 10_000_000}, setup_s=5, mode_caps_s={"performance": 5},
                          heartbeat_s=2)
        assert attempt.operator.execution_timeout.total_seconds() > 10  # the outer guard, past the deadline
        job = runner_running(work)
        os.killpg(int((job / "pid").read_text()), signal.SIGSTOP)  # a runner that no longer makes progress
        _, error = attempt.result()
        assert "rfb1: mobilenet-v1-0.25-128 tflite performance: timed out after 10 s" in str(error), error
        assert commands_under(job) == []
        [failure] = failures(engine, sweep)
        assert "timed out after 10 s" in failure
