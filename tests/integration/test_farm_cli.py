"""``./dev.sh farm up arm64`` starts the test farm's arm64 board for a user and prints the lines that make it a
board of requestflow; ``./dev.sh farm down`` stops it (tests/farm_cli.py). Over the Connection it prints, as a
controller would use it: the board answers as aarch64 with its pinned host key. Needs root, the farm's tools and
Linux 6.7+; the userland is the machine's cache."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.farm import require_arm64_board

ROOT = Path(__file__).resolve().parents[2]


def dev_sh(*args: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "dev.sh"), "farm", *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "REQUESTFLOW_STATE": str(state)}, stdin=subprocess.DEVNULL)


def exports(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = shlex.split(value)[0]
    return out


@pytest.fixture
def state(tmp_path):
    require_arm64_board()
    yield tmp_path
    dev_sh("down", state=tmp_path)  # whatever the test did, nothing is left running


def test_farm_up_prints_a_working_arm64_connection_and_farm_down_stops_it(state, monkeypatch):
    from operators.board_hook import BoardHook

    started = dev_sh("up", "arm64", state=state)
    assert started.returncode == 0, started.stderr[-3000:]
    lines = exports(started.stdout)
    assert set(lines) == {"AIRFLOW_CONN_ARM64", "REQUESTFLOW_BOARDS"}
    assert lines["REQUESTFLOW_BOARDS"] == "local,arm64"
    connection = json.loads(lines["AIRFLOW_CONN_ARM64"])
    assert connection["extra"]["emulator"] == "qemu-user" and connection["extra"]["python"] == "/usr/bin/python3.11"
    assert connection["extra"]["work_dir"] == str(state / "farm" / "work" / "arm64")

    monkeypatch.setenv("AIRFLOW_CONN_ARM64", lines["AIRFLOW_CONN_ARM64"])
    board = BoardHook("arm64")  # as the operators reach a board: strict host key from the Connection
    try:
        assert board.run("uname -m").stdout.strip() == "aarch64"
        assert board.run("python3.11 -c 'import platform; print(platform.machine())'").stdout.strip() == "aarch64"
    finally:
        board.close()

    again = dev_sh("up", "arm64", state=state)  # already up: the same lines, no second farm
    assert again.returncode == 0 and exports(again.stdout) == lines and "already up" in again.stderr
    pid = int((state / "farm" / "serve.pid").read_text())

    stopped = dev_sh("down", state=state)
    assert stopped.returncode == 0 and "farm board stopped" in stopped.stderr, stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "rfb1" not in namespaces
    assert "no farm board is up" in dev_sh("down", state=state).stderr
