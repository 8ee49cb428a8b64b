"""A detached keeper process for ``./dev.sh`` commands that leave something running for a user (``farm up``,
``stack up``): it writes its pid to ``<folder>/serve.pid`` and, once what it holds is up, ``<folder>/ready.json``;
``stop`` sends it SIGTERM and waits until it is gone."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
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
