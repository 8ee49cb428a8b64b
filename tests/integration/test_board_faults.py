"""Board faults that used to hang a sweep forever (issue #22), on a real sshd board: a point whose job supervisor is
killed, a board that reboots mid-point, a runner that stops making progress. Each ends the point's attempt, with its
finished document stored or a clear failure that a retry completes; none waits forever (every wait here has an
outer limit of its own, and a test that reaches it fails). A runner that keeps making progress is never cut short."""

from __future__ import annotations

import json
import os
import re
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

    def __init__(self, sweep: str, try_number: int = 1, point: dict | None = None, logged: list | None = None,
                 **options) -> None:
        self.operator = RunPointOperator(task_id="run", board_conn_id="rfb1", sweep_id=sweep,
                                         point={**POINT, **(point or {})}, **options)
        if logged is not None:  # its log lines (info), instead of the log
            self.operator.log.info = lambda message, *args: logged.append(message % args if args else message)
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


class TestAfterAReboot:
    def test_a_point_completed_before_the_reboot_is_stored_by_the_next_point_and_never_run_again(self, board):
        from operators import board_jobs, point_steps
        from operators.board_hook import board_for
        from requestflow.board.catalogue import point_label

        work, boot_id, engine = board
        sweep = f"rebooted-{uuid.uuid4().hex[:6]}"
        first, finished, after = ({**POINT, "repetitions": 5, "model": m} for m in (
            "mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160", "mobilenet-v1-0.25-192"))
        value, error = Attempt(sweep, point=first).result()
        assert error is None, error
        # `finished`'s runner completed its document, then the board went down before its task could store it
        hook = board_for("rfb1")
        try:
            folder = point_steps.job_dir(str(work), sweep, point_label(finished))
            board_jobs.start(hook, folder, point_steps.runner_command(sys.executable, finished))
            assert board_jobs.wait(hook, folder, lambda line: None, timeout_s=OUTER_LIMIT_S) == 0
        finally:
            hook.close()
        started = (Path(folder) / "pid").read_text()
        boot_id.write_text("the-next-boot\n")
        logged: list[str] = []
        value, error = Attempt(sweep, point=after, logged=logged).result()
        assert error is None, error
        assert any("rebooted since its last point" in line for line in logged), logged
        assert any("2 point(s) of the sweep had completed before the reboot: 1 stored now, 1 stored already"
                   in line for line in logged), logged
        assert len(results(engine, sweep)) == 3
        value, error = Attempt(sweep, try_number=2, point=finished).result()  # its task's retry
        assert error is None, error
        assert value["loaded"] is False  # stored already, by the point after the reboot
        assert (Path(folder) / "pid").read_text() == started, "the point was measured again"
        assert len(results(engine, sweep)) == 3


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
        value, error = Attempt(sweep, point={"model": "mobilenet-v1-0.25-160"}).result()  # the board's next point
        assert error is None, error
        assert value["loaded"] is True and len(results(engine, sweep)) == 1


def slowed(work: Path, tmp_path: Path, seconds: float) -> None:
    """The board's runner, every tflite ``invoke()`` ``seconds`` slower (a sitecustomize on its PYTHONPATH)."""
    folder = tmp_path / "slowed"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import time\nfrom requestflow.board.backends.tflite_backend import TFLiteBackend\n"
        "invoke = TFLiteBackend.invoke\n\n\n"
        f"def slowed(self):\n    time.sleep({seconds})\n    return invoke(self)\n\n\n"
        "TFLiteBackend.invoke = slowed\n")
    python = work / "runner" / "current" / "venv" / "bin" / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={folder} exec {sys.executable} \"$@\"\n")


class TestARunnerMakingProgress:
    def test_a_long_accuracy_run_that_keeps_reporting_progress_outlives_its_deadline(self, board, data_dir,
                                                                                          tmp_path):
        work, _, engine = board
        slowed(work, tmp_path, seconds=1.5)
        (work / "data").symlink_to(data_dir)  # the board's data: the real weights and images
        sweep = f"progress-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        attempt = Attempt(sweep, point={"mode": "accuracy", "limit": 10, "weights": None}, setup_s=6,
                          mode_caps_s={"accuracy": 2}, heartbeat_s=4)
        value, error = attempt.result()
        assert error is None, error
        assert time.monotonic() - started > attempt.operator.deadline_s(), "the run did not outlive its deadline"
        assert value["status"] == "ok" and value["loaded"] is True and value["top1"] > 0
        (job,) = (work / "runs").iterdir()
        progress = [json.loads(line) for line in (job / "progress.jsonl").read_text().splitlines()]
        assert [line["stage"] for line in progress][:2] == ["setup", "classify"]
        assert progress[-1]["done"] > 0 and progress[-1]["total"] == 10  # printed under --quiet

    def test_a_runner_stopped_after_its_warm_up_times_out_at_the_deadline_its_warm_up_implies(self, board):
        work, _, _ = board
        sweep = f"paced-{uuid.uuid4().hex[:6]}"
        attempt = Attempt(sweep, point={"repetitions": 5000, "warmup": 20}, setup_s=600, heartbeat_s=2)
        job = runner_running(work)
        deadline = time.monotonic() + 120
        while '"repetitions"' not in _read(job / "progress.jsonl") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(int((job / "pid").read_text()), signal.SIGSTOP)
        _, error = attempt.result()
        match = re.search(r"timed out after (\d+) s", str(error))
        assert match, error
        assert int(match.group(1)) < attempt.operator.deadline_s() / 10  # far below set-up + the mode's cap
        assert commands_under(job) == []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
