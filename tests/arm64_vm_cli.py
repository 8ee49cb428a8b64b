"""``./dev.sh farm up arm64-vm`` (issue #15, item 5): the arm64 VM (``tests.arm64_vm``) made once and booted as the
board ``arm64_vm`` (its Connection is ``AIRFLOW_CONN_ARM64_VM``: an environment variable's name cannot hold a
``-``), its export lines printed; ``./dev.sh farm down`` stops it with the farm (``tests.farm_cli``).

    python -m tests.arm64_vm_cli up       make or reuse (checked) the image, boot it, print the export lines
    python -m tests.arm64_vm_cli down     stop it
    python -m tests.arm64_vm_cli serve IMAGE_FOLDER    the keeper (started by ``up``): the VM until SIGTERM

The keeper's folder is ``<farm folder>/arm64-vm`` (``tests.farm_cli.farm_dir``): ``serve.pid``, ``ready.json`` (the
connection and the boot's timings), ``failed.txt``, the VM's ``console.log`` and its work disk ``work.img`` (kept
across ``up``s: the deployed runner and data are reused). Needs root, Linux 6.7+, qemu-system-arm,
qemu-user-static, mmdebstrap and arch-test (``./dev.sh farm`` installs them).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from tests.keeper import hold, launch, stop
from tests.keeper import running as keeper_running

BOARD = "arm64_vm"
WHAT = "arm64 VM board"


def vm_dir() -> Path:
    from tests.farm_cli import farm_dir

    return farm_dir() / "arm64-vm"


def export_lines(ready: dict) -> list[str]:
    connection = json.dumps({"conn_type": "ssh", "host": ready["host"], "port": ready["port"], "login": "root",
                             "extra": ready["extra"]}, sort_keys=True)
    return [f"export AIRFLOW_CONN_{BOARD.upper()}={shlex.quote(connection)}",
            f"export REQUESTFLOW_BOARDS=local,{BOARD}"]


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def up(timeout_s: float = 1800) -> int:
    from operators.arm64_toolchain import ToolchainError
    from tests.arm64_vm import available, vm_image

    folder = vm_dir()
    running = keeper_running(folder)
    if running is not None:
        say(f"# the {WHAT} is already up (pid {running[0]}); ./dev.sh farm down stops it")
        print("\n".join(export_lines(running[1])))
        return 0
    problem = available()
    if problem is not None:
        say(f"error: the arm64 VM cannot run here: {problem}")
        return 2
    started = time.monotonic()
    try:
        image = vm_image(log=say)
    except ToolchainError as exc:
        say(f"error: the arm64 VM image could not be made: {exc}")
        return 1
    say(f"# arm64 VM image {image.key} {'checked and reused' if image.reused else 'made'} "
        f"({time.monotonic() - started:.0f} s)")
    ready, why = launch(folder, [sys.executable, "-m", "tests.arm64_vm_cli", "serve", str(image.folder)], timeout_s)
    if ready is None:
        say(f"error: the {WHAT} did not start: {why} (see {folder / 'console.log'})")
        return 1
    say(f"# {WHAT} up: ssh root@127.0.0.1 -p {ready['port']} (booted in {ready['timings']['ssh']:.0f} s; "
        f"console {folder / 'console.log'}); ./dev.sh farm down stops it")
    print("\n".join(export_lines(ready)))
    return 0


def serve(image_folder: str) -> int:
    """The keeper: the VM until SIGTERM (or SIGINT), then the VM stopped."""
    from tests.arm64_vm import VM, Image

    folder = vm_dir()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    record = json.loads((Path(image_folder) / "image.json").read_text())
    vm = VM(Image(record["key"], Path(image_folder), record, True), folder)
    try:
        vm.start(log=say)
    except Exception as exc:  # noqa: BLE001 - said to the waiting `up`
        (folder / "failed.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        vm.stop()
        return 1
    ready = {"name": BOARD, "host": "127.0.0.1", "port": vm.port, "pid": os.getpid(), "extra": vm.extra(),
             "timings": vm.timings, "image": record["key"]}

    def ended() -> str | None:
        code = vm.process.poll() if vm.process is not None else None
        return None if code is None else f"the VM's qemu exited ({code})"

    hold(folder, ready, done, vm.stop, ended)
    return 0


def down() -> int:
    return stop(vm_dir(), WHAT, timeout_s=90)


def main(argv: list[str]) -> int:
    if argv == ["up"]:
        return up()
    if argv == ["down"]:
        return down()
    if argv[:1] == ["serve"] and len(argv) == 2:
        return serve(argv[1])
    say("usage: python -m tests.arm64_vm_cli up | down | serve IMAGE_FOLDER")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
