"""Detached jobs on a real sshd board: output streamed, exit code returned, and a kill leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from operators import board_jobs
from operators.board_hook import BoardHook
from operators.board_settings import BoardSettings
from tests.farm import farm_fixture
from tests.processes import commands_under

farm = farm_fixture(1, scope="module")


@pytest.fixture
def board(farm):
    b = farm.boards[0]
    boot_id = b.work_dir / "boot_id"  # the board's boot id, as the tests see it: a reboot changes it
    boot_id.parent.mkdir(parents=True, exist_ok=True)
    boot_id.write_text(f"{uuid.uuid4()}\n")
    hook = BoardHook(settings=BoardSettings(name=b.name, host=b.host, key_file=str(b.key_file),
                                            host_key=b.host_public_key, work_dir=str(b.work_dir),
                                            boot_id_file=str(boot_id)))
    yield hook, b
    hook.close()


def running(marker: str) -> list[str]:
    result = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return result.stdout.split()


def test_a_job_streams_its_output_and_returns_its_exit_code(board):
    hook, b = board
    job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
    board_jobs.start(hook, job, "for i in 1 2 3; do echo line $i; sleep 0.2; done; exit 7", env={"X": "it's"})
    lines: list[str] = []
    assert board_jobs.wait(hook, job, lines.append, poll_s=0.1, timeout_s=30) == 7
    assert lines == ["line 1", "line 2", "line 3"]


def test_environment_values_are_quoted(board):
    hook, b = board
    job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
    board_jobs.start(hook, job, 'echo "$X"', env={"X": "it's $(not run) ; `nor this`"})
    lines: list[str] = []
    assert board_jobs.wait(hook, job, lines.append, poll_s=0.1, timeout_s=30) == 0
    assert lines == ["it's $(not run) ; `nor this`"]


def test_kill_stops_the_job_and_everything_it_started(board):
    hook, b = board
    marker = f"rfjob{uuid.uuid4().hex[:10]}"
    job = f"{b.work_dir}/jobs/{marker}"
    # a job with a child and a grandchild, each recognisable by the marker in its command line
    board_jobs.start(hook, job, f"sh -c 'sleep 300; : {marker}' & sh -c 'sh -c \"sleep 301; : {marker}\"'")
    deadline = time.monotonic() + 10
    while len(running(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(running(marker)) >= 2
    board_jobs.kill(hook, job, grace_s=2)
    deadline = time.monotonic() + 5
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(marker) == []


def test_a_job_that_outlives_its_timeout_is_reported(board):
    hook, b = board
    job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
    board_jobs.start(hook, job, "sleep 5")
    with pytest.raises(TimeoutError, match="still running after"):
        board_jobs.wait(hook, job, lambda line: None, poll_s=0.1, timeout_s=0.5)
    board_jobs.kill(hook, job, grace_s=1)


def test_a_killed_job_releases_whoever_waits_for_it(board):
    hook, b = board
    job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
    board_jobs.start(hook, job, "sleep 300")
    time.sleep(0.3)
    board_jobs.kill(hook, job, grace_s=1)
    assert board_jobs.wait(hook, job, lambda line: None, poll_s=0.1, timeout_s=10) == 143


def test_kill_spares_a_process_group_that_is_no_longer_the_jobs(board, tmp_path):
    """A job that ended long ago leaves its pid file; the system may have given that number to another process
    group since. Killing the job must not stop that group."""
    hook, b = board
    job = b.work_dir / "jobs" / uuid.uuid4().hex
    board_jobs.start(hook, str(job), "true")
    assert board_jobs.wait(hook, str(job), lambda line: None, poll_s=0.1, timeout_s=10) == 0
    stranger = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True)  # leads its own group
    try:
        (job / "pid").write_text(f"{stranger.pid}\n")  # as if its number had been reused
        (job / "exit_code").unlink()
        board_jobs.kill(hook, str(job), grace_s=1)
        assert stranger.poll() is None, "a process group that is not the job's was killed"
        assert (job / "exit_code").read_text().strip() == "143"  # whoever waits is still released
    finally:
        stranger.kill()
        stranger.wait()


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def signalled_job(board, sig: signal.Signals):
    """A job that would run for 5 minutes, its whole process group sent ``sig`` once it runs: (marker, folder)."""
    hook, b = board
    marker = f"rfjob{uuid.uuid4().hex[:10]}"
    job = b.work_dir / "jobs" / marker
    board_jobs.start(hook, str(job), f"sh -c 'sleep 300; : {marker}'")
    wait_for(lambda: bool(running(marker)))
    os.killpg(int((job / "pid").read_text()), sig)
    return marker, job


class TestALostJob:
    """A job is alive only while its process group is: a lost one ends ``wait`` with the reason (issue #22)."""

    def test_a_killed_supervisor_is_noticed_once_its_command_ends(self, board):
        hook, b = board
        job = b.work_dir / "jobs" / uuid.uuid4().hex
        board_jobs.start(hook, str(job), "echo started; while [ ! -f go ]; do sleep 0.05; done; "
                                         "printf '{}' > result.json; echo finished")
        lines: list[str] = []
        wait_for(lambda: (job / "pid").exists() and (job / "child_pid").exists())
        os.kill(int((job / "pid").read_text()), signal.SIGKILL)  # the supervising shell, as `kill -9` does
        (job / "go").touch()  # the command goes on and ends; nobody writes its exit code
        with pytest.raises(board_jobs.JobLost, match="supervising shell was killed"):
            board_jobs.wait(hook, str(job), lines.append, poll_s=0.1, timeout_s=30)
        assert lines == ["started", "finished"]
        assert not (job / "exit_code").exists()
        assert board_jobs.fetch_document(hook, str(job)) == ({}, "")

    def test_a_rebooted_board_is_named(self, board):
        hook, b = board
        # a reboot: the job's processes die with the board, which comes back with another boot id
        marker, job = signalled_job(board, signal.SIGKILL)
        wait_for(lambda: not running(marker))
        (b.work_dir / "boot_id").write_text("after-the-reboot\n")
        with pytest.raises(board_jobs.JobLost, match=r"the board rebooted \(boot id after-the-reboot now\)"):
            board_jobs.wait(hook, str(job), lambda line: None, poll_s=0.1, timeout_s=30)

    def test_a_job_being_killed_is_not_lost_but_killed(self, board):
        hook, b = board
        marker, job = signalled_job(board, signal.SIGKILL)
        wait_for(lambda: not running(marker))
        (job / "killed").touch()  # what `kill` leaves before it signals the group and, later, writes exit_code
        assert board_jobs.wait(hook, str(job), lambda line: None, poll_s=0.1, timeout_s=30) == 143

    def test_a_job_that_ends_normally_is_not_lost(self, board):
        hook, b = board
        job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
        for _ in range(5):  # the group ends just after the exit code is written: never taken for a lost job
            board_jobs.start(hook, job, "exit 3")
            assert board_jobs.wait(hook, job, lambda line: None, poll_s=0.1, timeout_s=30) == 3


class TestADeadline:
    def test_a_stopped_job_is_killed_at_its_deadline(self, board):
        hook, b = board
        marker, job = signalled_job(board, signal.SIGSTOP)  # a runner that stopped making progress
        started = time.monotonic()
        with pytest.raises(board_jobs.JobTimedOut, match="^timed out after 2 s"):
            board_jobs.wait(hook, str(job), lambda line: None, poll_s=0.1, timeout_s=60, deadline_s=2,
                            heartbeat_s=0.5)
        assert time.monotonic() - started < 30  # the deadline, not the outer timeout, ended it
        assert running(marker) == []

    def test_a_job_that_keeps_printing_outlives_its_deadline(self, board):
        hook, b = board
        job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
        # prints a progress line every 0.1 s for as long as the job runs past its 0.5 s deadline
        board_jobs.start(hook, job, "i=0; while [ $i -lt 30 ]; do echo progress $i; sleep 0.1; i=$((i+1)); done")
        lines: list[str] = []
        assert board_jobs.wait(hook, job, lines.append, poll_s=0.1, timeout_s=60, deadline_s=0.5,
                               heartbeat_s=2) == 0
        assert lines[-1] == "progress 29"


class TestTheJobsDocument:
    def test_a_document_the_job_wrote_is_read_back(self, board):
        hook, b = board
        job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
        board_jobs.start(hook, job, """printf '{"status": "ok", "n": [1, 2]}' > result.json""")
        assert board_jobs.wait(hook, job, lambda line: None, poll_s=0.1, timeout_s=30) == 0
        assert board_jobs.fetch_document(hook, job) == ({"status": "ok", "n": [1, 2]}, "")

    def test_a_missing_document_says_where_it_was_looked_for(self, board):
        hook, b = board
        job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
        board_jobs.start(hook, job, "echo loading; echo 'Killed' >&2; exit 137")
        lines: list[str] = []
        code = board_jobs.wait(hook, job, lines.append, poll_s=0.1, timeout_s=30)
        document, why = board_jobs.fetch_document(hook, job)
        # SFTP's words ("No such file"); a local board's are the OS's ("No such file or directory")
        assert document is None and why.startswith(f"{job}/result.json: No such file"), why
        assert board_jobs.no_document("rfb1", code, why, lines) == (
            f"board rfb1: the runner exited 137 without a result ({why}); its last output: loading | Killed")

    def test_a_damaged_document_is_named_not_raised(self, board):
        hook, b = board
        job = f"{b.work_dir}/jobs/{uuid.uuid4().hex}"
        board_jobs.start(hook, job, """printf '{"status": "o' > result.json""")
        assert board_jobs.wait(hook, job, lambda line: None, poll_s=0.1, timeout_s=30) == 0
        document, why = board_jobs.fetch_document(hook, job)
        assert document is None and why.startswith(f"{job}/result.json is not a JSON document: "), why
        assert board_jobs.no_document("rfb1", 0, why, []).endswith("; it printed nothing")


class TestRunPointOperatorOnKill:
    def test_on_kill_leaves_no_runner_process_on_the_board(self, tmp_path, monkeypatch):
        import threading

        from operators.run_point import RunPointOperator
        from requestflow.results import embedded

        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path))
        operator = RunPointOperator(task_id="run", board_conn_id="local", sweep_id="kill-test",
                                    point={"model": "mobilenet-v1-0.25-128", "backend": "tflite",
                                           "mode": "performance", "repetitions": 10_000_000, "warmup": 0})
        outcome: dict = {}

        def execute():
            try:
                operator.execute({})
            except Exception as exc:  # noqa: BLE001 - the killed run's error is asserted below
                outcome["error"] = exc

        try:
            thread = threading.Thread(target=execute)
            thread.start()
            marker = str(tmp_path / "board" / "runs")
            deadline = time.monotonic() + 60
            def started() -> bool:
                return any("requestflow.cli" in line for line in commands_under(marker))

            while not started() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert started(), "the runner never started"
            operator.on_kill()
            thread.join(timeout=30)
            assert not thread.is_alive()
            error = str(outcome.get("error"))
            assert "without a result" in error and "result.json: No such file or directory" in error, error
            assert commands_under(marker) == []
        finally:  # the resume check opened the results store: with none configured, the embedded one in this
            embedded.stop()  # test's state folder, which would outlive the test (the session's leftover check)
