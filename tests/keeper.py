"""A detached keeper process for ``./dev.sh`` commands that leave something running for a user (``farm up``,
``stack up``): it writes its pid to ``<folder>/serve.pid`` and, once what it holds is up, ``<folder>/ready.json``;
``stop`` sends it SIGTERM and waits until it is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which only waits to be reaped, does not)."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, OSError):
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "")
    return "zombie" not in state.lower()


def running(folder: Path) -> tuple[int, dict] | None:
    """(the keeper's pid, its ready.json) when a keeper of ``folder`` runs and is ready, else None."""
    try:
        pid = int((folder / "serve.pid").read_text())
        ready = json.loads((folder / "ready.json").read_text())
    except (OSError, ValueError):
        return None
    return (pid, ready) if alive(pid) else None


def stop(folder: Path, what: str, timeout_s: float = 60) -> int:
    """SIGTERM to the keeper of ``folder`` and wait until it is gone; says what it did on stderr. 0, or 1 when the
    keeper outlives ``timeout_s``."""
    try:
        pid = int((folder / "serve.pid").read_text())
    except (OSError, ValueError):
        print(f"no {what} is up", file=sys.stderr)
        return 0
    if not alive(pid):
        for stale in ("serve.pid", "ready.json"):
            (folder / stale).unlink(missing_ok=True)
        print(f"no {what} is up (a stale pid file removed)", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            print(f"error: the {what}'s keeper {pid} did not stop in {timeout_s:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"{what} stopped", file=sys.stderr)
    return 0


def hold(folder: Path, ready: dict, done: threading.Event, close: Callable[[], None],
         ended: Callable[[], str | None] = lambda: None) -> None:
    """The keeper's life once what it holds is up: ``ready`` published as ``<folder>/ready.json``, then held until
    ``done`` is set (its SIGTERM) or ``ended()`` says why what it holds is gone; then ``close()`` and the keeper's
    files removed."""
    try:
        (folder / ".ready.json").write_text(json.dumps(ready, indent=1) + "\n")
        os.replace(folder / ".ready.json", folder / "ready.json")
        while not done.wait(1.0):
            why = ended()
            if why:
                print(why, file=sys.stderr, flush=True)
                break
    finally:
        (folder / "ready.json").unlink(missing_ok=True)
        close()
        (folder / "serve.pid").unlink(missing_ok=True)


def launch(folder: Path, argv: list[str], timeout_s: float) -> tuple[dict | None, str]:
    """Start the keeper ``argv`` (detached, its output in ``<folder>/serve.log``) and wait for it: (its
    ready.json, "") once it is up; (None, why) when it exits first (its ``failed.txt``) or is not up in
    ``timeout_s`` (then it gets SIGTERM)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("ready.json", "failed.txt", "serve.pid"):
        (folder / stale).unlink(missing_ok=True)
    with (folder / "serve.log").open("ab") as log:
        keeper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    (folder / "serve.pid").write_text(f"{keeper.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (folder / "ready.json").is_file():
            return json.loads((folder / "ready.json").read_text()), ""
        if keeper.poll() is not None:
            failed = folder / "failed.txt"
            return None, (failed.read_text().strip() if failed.is_file() else
                          f"exit {keeper.returncode}, see {folder / 'serve.log'}")
        time.sleep(0.5)
    os.kill(keeper.pid, signal.SIGTERM)
    return None, f"not up in {timeout_s:.0f} s"
