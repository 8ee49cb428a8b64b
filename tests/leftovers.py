"""The test session leaves nothing running (issue #22): a pytest plugin (``tests/conftest.py`` imports its hooks)
that fails the run when a process the session started outlives it.

At the session's start every live process is recorded (``snapshot``); at its end, after every fixture's teardown,
a process is the session's leftover when it was not running at the start and either descends from the pytest
process or works or was started in one of the session's folders (pytest's base temp folder, ``$AIRFLOW_HOME``
the conftest made): an embedded PostgreSQL whose data dir is under a test's ``tmp_path``, a farm board's sshd, an
Airflow process, a runner. Processes of other sessions on the machine, started meanwhile elsewhere, are not the
session's. Leftovers get ``GRACE_S`` to end (a process being stopped as the session ends), then they are listed
and the run fails; they are left running, to be looked at.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

# Python's own helper processes of the session's process, which end with it (after this check)
PYTHON_HELPERS = ("from multiprocessing.resource_tracker import", "from multiprocessing.forkserver import")
GRACE_S = float(os.environ.get("REQUESTFLOW_LEFTOVER_GRACE_S", "15"))


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    session: int
    started: int  # clock ticks after boot: with the pid, one process (a pid may be reused)
    cwd: str
    command: str


def snapshot() -> dict[int, Process]:
    """The live (not zombie) processes, by pid."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
            try:
                cwd = os.readlink(f"/proc/{name}/cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if fields[0] in ("Z", "X"):  # fields: state ppid pgrp session ... starttime (the 20th)
            continue
        found[int(name)] = Process(int(name), int(fields[1]), int(fields[3]), int(fields[19]), cwd, command)
    return found


def leftovers(baseline: dict[int, Process], session_pid: int, folders: list[str],
              now: dict[int, Process] | None = None) -> list[Process]:
    """The processes of ``now`` that the session (``session_pid``, working in ``folders``) started and left."""
    now = snapshot() if now is None else now
    folders = [str(Path(f)) for f in folders if f]

    def ours(process: Process) -> bool:
        seen, pid = set(), process.ppid
        while pid in now and pid not in seen:  # an ancestor is the session's process
            if pid == session_pid:
                return True
            seen.add(pid)
            pid = now[pid].ppid
        return any(process.cwd == f or process.cwd.startswith(f"{f}/") or re.search(re.escape(f) + r"(/|\s|$)",
                                                                                          process.command)
                   for f in folders)

    return [p for pid, p in sorted(now.items())
            if pid != session_pid and (pid not in baseline or baseline[pid].started != p.started)
            and not any(helper in p.command for helper in PYTHON_HELPERS) and ours(p)]


def describe(processes: list[Process]) -> str:
    return "\n".join(f"  pid {p.pid} (parent {p.ppid}, in {p.cwd or '?'}): {p.command[:300]}" for p in processes)


# --- the plugin's hooks ---------------------------------------------------------------------------------------


def pytest_sessionstart(session) -> None:
    session.config.stash[_BASELINE] = snapshot()


def pytest_sessionfinish(session, exitstatus) -> None:
    baseline = session.config.stash.get(_BASELINE, None)
    if baseline is None or os.environ.get("REQUESTFLOW_ALLOW_LEFTOVERS"):
        return
    folders = [os.environ.get("AIRFLOW_HOME", "")]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None and getattr(factory, "_basetemp", None) is not None:
        folders.append(str(factory.getbasetemp()))
    deadline = time.monotonic() + GRACE_S
    left = leftovers(baseline, os.getpid(), folders)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers(baseline, os.getpid(), folders)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"the test session left {len(left)} process(es) running (started by it, still alive "
                   f"{GRACE_S:.0f} s after its end):\n{describe(left)}")
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        else:
            print(message)
        session.exitstatus = 1


def _stash_key():
    import pytest

    return pytest.StashKey[dict]()


_BASELINE = _stash_key()
