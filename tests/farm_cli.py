"""The test farm's arm64 board for a user (issue #15): ``./dev.sh farm up arm64`` starts it and prints the lines
that make it a board of requestflow; ``./dev.sh farm down`` stops it.

    python -m tests.farm_cli up arm64     start (or find running) the board ``arm64``; print its export lines
    python -m tests.farm_cli up arm64-vm  the arm64 VM board ``arm64_vm`` (a full arm64 VM: ``tests.arm64_vm_cli``)
    python -m tests.farm_cli down         stop it (and everything it runs), and the VM board

``up`` makes (or reuses, checked) bookworm's arm64 userland (``operators.arm64_runner.python_userland``), then
starts a detached keeper process (``serve``) that holds the ``tests.farm.Farm`` (the machine's farm lock, the
board's network namespace and sshd) until ``down`` sends it SIGTERM; it writes ``ready.json`` (the connection) or
``failed.txt`` (why) into the farm folder. The farm folder is ``$REQUESTFLOW_STATE/farm`` (default
``~/.local/state/requestflow/farm``); the board's work dir is ``<farm folder>/work/arm64``, kept across ``up``s
(the deployed runner and data are reused), and its key pair is the farm's throwaway key, made anew on each ``up``.
Needs root, the farm's tools (``bash tests/farm-setup.sh``), qemu-user-static, mmdebstrap and Linux 6.7+.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.keeper import alive, stop
from tests.keeper import running as keeper_running

BOARDS = ("arm64", "arm64-vm")
BOARD_PYTHON = "/usr/bin/python3.11"  # bookworm's arm64 CPython in the board's userland


def farm_dir() -> Path:
    state = os.environ.get("REQUESTFLOW_STATE") or os.path.expanduser("~/.local/state/requestflow")
    return Path(state) / "farm"


def export_lines(ready: dict) -> list[str]:
    """The shell lines that make the running board a board of requestflow (``requestflow sweep --board arm64``,
    Airflow's Connection ``arm64``)."""
    connection = json.dumps({"conn_type": "ssh", "host": ready["host"], "login": "root", "extra": ready["extra"]},
                            sort_keys=True)
    return [f"export AIRFLOW_CONN_{ready['name'].upper()}={shlex.quote(connection)}",
            f"export REQUESTFLOW_BOARDS=local,{ready['name']}"]


# tests/stack_cli.py imports it by this name (until it imports tests.keeper.alive)
_alive = alive


def up(name: str, timeout_s: float = 900) -> int:
    from operators.arm64_runner import python_userland
    from tests.farm import Farm

    folder = farm_dir()
    running = keeper_running(folder)
    if running is not None:
        print(f"# the farm board {running[1]['name']} is already up (pid {running[0]}); ./dev.sh farm down stops it",
              file=sys.stderr)
        print("\n".join(export_lines(running[1])))
        return 0
    ok, reason = Farm.available()
    if not ok:
        print(f"error: the board farm cannot run here: {reason}", file=sys.stderr)
        return 2
    release = os.uname().release.split("-")[0].split(".")
    if (int(release[0]), int(release[1])) < (6, 7):
        print(f"error: Linux {os.uname().release}: the arm64 board needs binfmt_misc per user namespace (6.7)",
              file=sys.stderr)
        return 2
    userland = python_userland(log=lambda line: print(line, file=sys.stderr))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("ready.json", "failed.txt", "serve.pid"):
        (folder / stale).unlink(missing_ok=True)
    with (folder / "serve.log").open("ab") as log:
        keeper = subprocess.Popen([sys.executable, "-m", "tests.farm_cli", "serve", name, str(userland.path)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    (folder / "serve.pid").write_text(f"{keeper.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (folder / "ready.json").is_file():
            ready = json.loads((folder / "ready.json").read_text())
            print(f"# farm board {name} up: {ready['host']} (its userland: {userland.path}); "
                  f"./dev.sh farm down stops it", file=sys.stderr)
            print("\n".join(export_lines(ready)))
            return 0
        if keeper.poll() is not None:
            why = (folder / "failed.txt").read_text().strip() if (folder / "failed.txt").is_file() else \
                f"exit {keeper.returncode}, see {folder / 'serve.log'}"
            print(f"error: the farm board {name} did not start: {why}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    os.kill(keeper.pid, signal.SIGTERM)
    print(f"error: the farm board {name} did not start in {timeout_s:.0f} s (another farm running?)", file=sys.stderr)
    return 1


def serve(name: str, rootfs: str) -> int:
    """The keeper: the farm until SIGTERM (or SIGINT), then every part of it removed."""
    from tests.farm import Farm

    folder = farm_dir()
    work = folder / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        farm = Farm(1, folder, arm64=[1], arm64_rootfs=Path(rootfs))
        farm.start()
    except Exception as exc:  # noqa: BLE001 - said to the waiting `up`
        (folder / "failed.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        return 1
    try:
        board = farm.boards[0]
        ready = {"name": name, "host": board.host, "pid": os.getpid(),
                 "extra": {"key_file": str(board.key_file), "host_key": board.host_public_key,
                           "work_dir": str(work), "python": BOARD_PYTHON, "emulator": "qemu-user"}}
        (folder / ".ready.json").write_text(json.dumps(ready, indent=1) + "\n")
        os.replace(folder / ".ready.json", folder / "ready.json")
        while not stop.wait(1.0):
            pass
    finally:
        (folder / "ready.json").unlink(missing_ok=True)
        farm.close()
        (folder / "serve.pid").unlink(missing_ok=True)
    return 0


def down() -> int:
    from tests import arm64_vm_cli

    return max(stop(farm_dir(), "farm board"), arm64_vm_cli.down())


def main(argv: list[str]) -> int:
    usage = "usage: ./dev.sh farm up arm64 | ./dev.sh farm up arm64-vm | ./dev.sh farm down"
    if argv == ["up", "arm64-vm"]:
        from tests import arm64_vm_cli

        return arm64_vm_cli.up()
    if argv[:1] == ["up"] and len(argv) == 2 and argv[1] in BOARDS:
        return up(argv[1])
    if argv == ["down"]:
        return down()
    if argv[:1] == ["serve"] and len(argv) == 3:
        return serve(argv[1], argv[2])
    print(usage if not argv[:1] == ["up"] else f"{usage} (boards: {', '.join(BOARDS)})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
