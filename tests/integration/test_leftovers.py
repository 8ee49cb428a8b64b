"""The session-end check of tests/leftovers.py: a process a test session starts and leaves running fails the run;
processes it stopped, and processes that ran before it, do not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.leftovers import leftovers, snapshot

ROOT = Path(__file__).resolve().parents[2]
LEAVES = '''
import subprocess


def test_starts_a_server_and_forgets_it(tmp_path):
    (tmp_path / "server").mkdir()
    subprocess.Popen(["sleep", "600"], cwd=tmp_path / "server", start_new_session=True)
'''
STOPS = '''
import subprocess


def test_starts_a_server_and_stops_it(tmp_path):
    server = subprocess.Popen(["sleep", "600"], cwd=tmp_path, start_new_session=True)
    server.kill()
    server.wait()
'''


def session(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    """A pytest session of its own over ``source``, with the check's plugin."""
    (tmp_path / "test_it.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REQUESTFLOW_LEFTOVER_GRACE_S": "1"}
    env.pop("REQUESTFLOW_ALLOW_LEFTOVERS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.leftovers", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "base"), "test_it.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def sleeping_in(folder: Path) -> list[int]:
    return [p.pid for p in snapshot().values() if p.cwd.startswith(str(folder)) and p.command.startswith("sleep")]


def test_a_session_that_leaves_a_process_running_fails_and_names_it(tmp_path):
    run = session(tmp_path, LEAVES)
    try:
        assert run.returncode == 1, run.stdout + run.stderr
        assert "1 passed" in run.stdout
        assert "the test session left 1 process(es) running" in run.stdout, run.stdout
        assert "sleep 600" in run.stdout and str(tmp_path / "base") in run.stdout
    finally:
        for pid in sleeping_in(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_a_session_that_stops_what_it_started_passes(tmp_path):
    run = session(tmp_path, STOPS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "left" not in run.stdout


def test_processes_running_before_the_session_and_elsewhere_are_not_its_own(tmp_path):
    before = subprocess.Popen(["sleep", "600"], cwd=tmp_path, start_new_session=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        baseline = snapshot()
        later = subprocess.Popen(["sleep", "601"], cwd=elsewhere, start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while later.pid not in snapshot() and time.monotonic() < deadline:
                time.sleep(0.05)
            # this process is "the session": its own child counts, whatever its folder
            assert [p.pid for p in leftovers(baseline, os.getpid(), [])] == [later.pid]
            # seen from another session (no ancestor of it), only the session's folders count
            assert [p.pid for p in leftovers(baseline, -1, [str(elsewhere)])] == [later.pid]
            assert leftovers(baseline, -1, [str(tmp_path / "other")]) == []
        finally:
            later.kill()
            later.wait()
        assert leftovers(baseline, os.getpid(), [str(tmp_path)]) == []  # `before` ran before the session
    finally:
        before.kill()
        before.wait()
