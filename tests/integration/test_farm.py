"""The simulated board farm (tests/farm.py): boards come up, Fabric reaches each one with strict host key checking,
boards are isolated, a board's sshd can be killed and restarted, and nothing of a farm survives it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.farm import PREFIX, Board, Farm, FarmError, farm_fixture

AVAILABLE, REASON = Farm.available()
needs_farm = pytest.mark.skipif(not AVAILABLE, reason=f"board farm unavailable: {REASON}")

farm = farm_fixture(2)

# Prints what a TCP connection to argv[1]:22 from inside a namespace comes to: "connected", "timeout" or the errno.
CONNECT = """\
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], 22), timeout=2).close()
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as error:
    print(errno.errorcode.get(error.errno, str(error)))
"""


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if f": {PREFIX}" in line]


def _sshd_pids(config: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def _connect_from(board: Board, address: str) -> str:
    return board.exec_in_netns([sys.executable, "-c", CONNECT, address], check=True).stdout.strip()


def test_two_boards_come_up(farm: Farm) -> None:
    assert [board.name for board in farm] == ["rfb1", "rfb2"]
    assert [board.host for board in farm] == ["10.231.1.2", "10.231.2.2"]
    assert len({board.work_dir for board in farm}) == len({board.fingerprint for board in farm}) == 2
    for board in farm:
        assert (board.port, board.user) == (22, "root")
        assert board.work_dir.is_dir() and board.work_dir.is_relative_to(farm.dir)
        assert board.key_file.is_file() and board.fingerprint.startswith("SHA256:")
        assert board.known_hosts.read_text() == f"{board.host} {board.host_public_key}\n"
        assert board.sshd_running
        assert board.pid_file.read_text().strip() == str(board.sshd_pid)
    assert farm.known_hosts.read_text().splitlines() == [board.known_hosts_line for board in farm]


def test_fabric_runs_commands_on_each_board(farm: Farm) -> None:
    for board in farm:
        with board.connection() as conn:
            assert isinstance(conn.client._policy, paramiko.RejectPolicy)
            hostname, *addresses, pwd = conn.run("hostname; ip -o addr; pwd", hide=True).stdout.splitlines()
            assert hostname == board.name  # a UTS namespace of its own
            assert [line.split()[1:4] for line in addresses] == [
                ["lo", "inet", "127.0.0.1/8"],
                ["eth0", "inet", f"{board.host}/30"],
            ]
            assert pwd == "/root"  # root's home, shared by all boards: tasks cd into their work dir
            with conn.cd(str(board.work_dir)):
                assert conn.run("pwd; echo hello > note.txt", hide=True).stdout.strip() == str(board.work_dir)
        assert (board.work_dir / "note.txt").read_text() == "hello\n"


def _connect_from_host(address: str) -> str:
    result = subprocess.run([sys.executable, "-c", CONNECT, address], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_board_reaches_its_own_link_only(farm: Farm) -> None:
    a, b = farm
    for board, other in ((a, b), (b, a)):
        # The host's end of the board's own link answers (nothing listens on its port 22: refused).
        assert _connect_from(board, board.host_side_ip) in ("ECONNREFUSED", "connected")
        # One /30 per namespace and no other route: the other board, and the host's end of its link, are
        # unreachable from this board, whether the host forwards packets or not.
        assert _connect_from(board, other.host) == "ENETUNREACH"
        assert _connect_from(board, other.host_side_ip) == "ENETUNREACH"
        # The host reaches every board.
        assert _connect_from_host(board.host) == "connected"


def test_namespace_has_no_default_route(farm: Farm) -> None:
    for board in farm:
        assert board.exec_in_netns("ip route show default", check=True).stdout == ""
        routes = board.exec_in_netns("ip -4 -o route show", check=True).stdout.splitlines()
        assert [route.split()[:3] for route in routes] == [[f"{board.host.rsplit('.', 1)[0]}.0/30", "dev", "eth0"]]
        # `ip route get` only asks the routing table: no packet leaves for this documentation address.
        lookup = board.exec_in_netns("ip route get 192.0.2.1")
        assert lookup.returncode != 0 and "unreachable" in lookup.stderr
        assert board.exec_in_netns("ip -6 -o addr show").stdout == ""


def test_wrong_host_key_is_refused(farm: Farm, tmp_path: Path) -> None:
    a, b = farm
    swapped = tmp_path / "known_hosts_swapped"
    swapped.write_text(f"{a.host} {b.host_public_key}\n{b.host} {a.host_public_key}\n")
    for board in farm:
        with pytest.raises(paramiko.BadHostKeyException):
            board.connection(known_hosts=swapped).open()
    unknown = tmp_path / "known_hosts_empty"
    unknown.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        a.connection(known_hosts=unknown).open()
    with a.connection(known_hosts=farm.known_hosts) as conn:  # the farm's file, with every board, is right
        assert conn.run("hostname", hide=True).stdout.strip() == a.name


def test_kill_sshd_then_start_sshd(farm: Farm) -> None:
    a, b = farm
    session = a.connection()
    session.run("true", hide=True)
    old_pid = a.sshd_pid

    a.kill_sshd()
    assert not a.sshd_running and a.sshd_pid is None
    assert not a.pid_file.exists() and not _sshd_pids(a.sshd_config)
    started = time.monotonic()
    with pytest.raises(OSError):  # paramiko's NoValidConnectionsError: connection refused
        a.connection(connect_timeout=2).open()
    assert time.monotonic() - started < 2
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        session.run("true", hide=True)  # the open session died with the board's sshd
    session.close()
    with b.connection() as conn:  # the other board is untouched
        assert conn.run("hostname", hide=True).stdout.strip() == b.name

    a.start_sshd()
    assert a.sshd_running and a.sshd_pid != old_pid and a.pid_file.read_text().strip() == str(a.sshd_pid)
    with a.connection() as conn:  # same host key as before: strict checking still passes
        assert conn.run("hostname", hide=True).stdout.strip() == a.name


@needs_farm
def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    with Farm(2, tmp_path) as local:
        configs = [board.sshd_config for board in local]
        assert sorted(_namespaces()) == ["rfb1", "rfb2"]
        assert sorted(_links()) == ["rfb1h", "rfb2h"]
        assert all(_sshd_pids(config) for config in configs)
    assert _namespaces() == [] and _links() == []
    assert not any(_sshd_pids(config) for config in configs)
    local.close()  # idempotent


@needs_farm
def test_setup_failing_midway_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start_sshd = Board.start_sshd

    def fail_on_second_board(board: Board, timeout: float = 10.0) -> None:
        if board.index == 2:
            raise FarmError("simulated failure")
        start_sshd(board, timeout)

    monkeypatch.setattr(Board, "start_sshd", fail_on_second_board)
    local = Farm(2, tmp_path)
    with pytest.raises(FarmError, match="simulated failure"):
        local.start()  # board 1 was up, board 2 had its namespace and link
    assert not local.running
    assert _namespaces() == [] and _links() == [] and not _sshd_pids(local[0].sshd_config)


@needs_farm
def test_sshd_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FarmError, match=r"sshd of rfb1 exited \(1\)"):
        Farm(1, tmp_path, sshd=Path("/bin/false")).start()
    assert _namespaces() == [] and _links() == []


@needs_farm
def test_leftovers_of_a_crashed_run_are_cleaned_up(tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    script = (
        "import sys, time; from farm import Farm; Farm(2, sys.argv[1]).start(); print('up', flush=True); "
        "time.sleep(600)"
    )
    crashing = subprocess.Popen(
        [sys.executable, "-c", script, str(crashed)], cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, text=True
    )
    try:
        assert crashing.stdout is not None and crashing.stdout.readline() == "up\n"
    finally:
        crashing.kill()  # SIGKILL: no teardown, its boards stay behind
        crashing.wait()
    stale_configs = [crashed / name / "sshd_config" for name in ("rfb1", "rfb2")]
    assert sorted(_namespaces()) == ["rfb1", "rfb2"] and all(_sshd_pids(config) for config in stale_configs)

    with Farm(1, tmp_path / "next") as local:  # another farm, of one board: the crashed run's two are removed
        assert _namespaces() == ["rfb1"] and _links() == ["rfb1h"]
        assert not any(_sshd_pids(config) for config in stale_configs)
        with local[0].connection() as conn:
            assert conn.run("hostname", hide=True).stdout.strip() == "rfb1"
    assert _namespaces() == [] and _links() == []


def test_one_farm_at_a_time(farm: Farm, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REQUESTFLOW_FARM_WAIT_S", "2")  # a second farm waits for the first, then gives up
    started = time.monotonic()
    with pytest.raises(FarmError, match="another board farm is running"):
        Farm(1, tmp_path).start()
    assert time.monotonic() - started >= 2
    with farm[0].connection() as conn:  # the running farm is untouched
        assert conn.run("hostname", hide=True).stdout.strip() == "rfb1"


def test_available_says_why_not(tmp_path: Path) -> None:
    ok, reason = Farm.available(sshd=tmp_path / "no-sshd")
    assert not ok and reason  # "needs root", or "... no-sshd not found (run: bash tests/farm-setup.sh)"
