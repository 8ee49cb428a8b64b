"""The arm64 farm board's work dir, kept for the session (issue #15), and the order of the two modules that share it.

Installing the aarch64 runner on the arm64 farm board (``pip --no-index`` of TensorFlow and the rest, then its
check, all under qemu-user) takes minutes. ``test_arm64_provision.py`` proves that ``board_provision`` does it on a
board that has no runner; ``test_arm64_neon_sweep.py`` needs a provisioned board and proves nothing about the
install. Each module starts a farm of its own (one farm at a time on a machine: a session-wide farm would hold the
lock against every other module), but both give their board this same work dir, so the runner provisioned by the
first is reused by the second, as on a real board (tests/conftest.py's ``board_work_root`` does the same for the x86
boards). The provision module runs first (``pytest_collection_modifyitems`` below), so its ``board_provision`` still
meets a board without a runner; either module alone, or in another order, provisions the board itself.

The work dir is at one place on the machine (under the arm64 cache), emptied when a session starts: the ArmCL build's
shipment is cached by the build's folder on the board (``operators.arm64_debian.board_shipment`` compiles the
program for that path, minutes here), so with a fixed path it is the machine's cache, as the other arm64 caches
are, instead of being compiled again by every session. A session running meanwhile (the place is locked) gets a
throwaway work dir instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

PROVISION, NEON_SWEEP = "test_arm64_provision.py", "test_arm64_neon_sweep.py"
ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")


@pytest.fixture(scope="session")
def arm64_work_dir(tmp_path_factory):
    """The arm64 farm board's work dir for the session, empty at its start (the farms bind it into the board's
    chroot): ``<arm64 cache>/farm-board/work`` while this session holds its lock, else a throwaway folder."""
    root = ARM64_CACHE / "farm-board"
    root.mkdir(parents=True, exist_ok=True)
    lock = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        yield tmp_path_factory.mktemp("arm64-board")
        return
    try:
        work = root / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(exist_ok=True)
        yield work
    finally:
        os.close(lock)


def pytest_collection_modifyitems(config, items) -> None:
    """The provision module's tests just before the NEON sweep's, whose board then has the runner it installed."""
    provision = [item for item in items if item.path.name == PROVISION]
    neon = next((i for i, item in enumerate(items) if item.path.name == NEON_SWEEP), None)
    if not provision or neon is None or items.index(provision[0]) < neon:
        return
    rest = [item for item in items if item.path.name != PROVISION]
    at = rest.index(items[neon])
    items[:] = rest[:at] + provision + rest[at:]
