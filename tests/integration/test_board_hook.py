"""BoardHook against real sshd boards of the simulated farm: commands run, wrong host keys are refused, a dead
board is reported as unreachable, and secrets never reach a log line or an error."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from operators.board_hook import BoardConnectionLost, BoardHook, BoardUnreachable, HostKeyMismatch
from operators.board_settings import BoardSettings
from tests.farm import farm_fixture

farm = farm_fixture(2, scope="module")
PASSPHRASE = "correct horse battery staple"


def settings_for(board, **overrides) -> BoardSettings:
    values = {"name": board.name, "host": board.host, "user": "root", "key_file": str(board.key_file),
              "host_key": board.host_public_key, "work_dir": str(board.work_dir), "connect_timeout": 3}
    values.update(overrides)
    return BoardSettings(**values)


@pytest.fixture(scope="module")
def protected_key(farm, tmp_path_factory):
    """A passphrase-protected key, authorised on every board of the farm."""
    path = tmp_path_factory.mktemp("keys") / "id_protected"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-C", "protected", "-f", str(path)],
                   check=True)
    with open(farm.authorized_keys, "a") as handle:
        handle.write(path.with_suffix(".pub").read_text())
    return path


class TestRunningOnABoard:
    def test_runs_commands_on_each_board(self, farm):
        for board in farm.boards:
            hook = BoardHook(settings=settings_for(board))
            try:
                assert hook.run("hostname").stdout.strip() == board.name
                assert hook.run(f"cd {board.work_dir} && pwd").stdout.strip() == str(board.work_dir)
            finally:
                hook.close()

    @pytest.mark.parametrize("warn", [False, True])
    def test_a_command_without_an_exit_status_says_so_and_the_next_one_reconnects(self, farm, warn):
        """The shell killed by a signal: sshd sends no exit status, as when the connection drops mid-command. Not
        invoke's "bad command exit code ... Exit code: -1", and not a result with return code -1 under warn."""
        board = farm.boards[0]
        hook = BoardHook(settings=settings_for(board))
        try:
            with pytest.raises(BoardConnectionLost, match=f"board {board.name} .*: a command ended without an exit "
                                                          r"status: the connection was lost, .* \(kill -KILL \$\$\)"):
                hook.run("kill -KILL $$", warn=warn)
            assert hook.run("hostname").stdout.strip() == board.name
        finally:
            hook.close()

    def test_reads_the_board_from_an_airflow_connection(self, farm, monkeypatch):
        board = farm.boards[0]
        monkeypatch.setenv("AIRFLOW_CONN_RFB_TEST", json.dumps({
            "conn_type": "ssh", "host": board.host, "login": "root",
            "extra": {"key_file": str(board.key_file), "host_key": board.host_public_key,
                      "work_dir": str(board.work_dir), "peak_power_w": "9.5"}}))
        hook = BoardHook(board_conn_id="rfb_test")
        try:
            assert hook.settings.peak_power_w == 9.5
            assert hook.run("hostname").stdout.strip() == board.name
        finally:
            hook.close()

    def test_a_failing_command_reports_its_exit_status(self, farm):
        hook = BoardHook(settings=settings_for(farm.boards[0]))
        try:
            assert hook.run("exit 3", warn=True).return_code == 3
        finally:
            hook.close()


class TestHostKeys:
    def test_another_boards_host_key_is_refused(self, farm):
        a, b = farm.boards
        hook = BoardHook(settings=settings_for(a, host_key=b.host_public_key), connect_attempts=1)
        with pytest.raises(HostKeyMismatch, match=f"board {a.name} .* does not match"):
            hook.run("true")

    def test_an_unknown_host_key_is_refused(self, farm, tmp_path):
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        hook = BoardHook(settings=settings_for(farm.boards[0], host_key=None, known_hosts=str(empty)),
                         connect_attempts=1)
        with pytest.raises(HostKeyMismatch, match="unknown host key, refused"):
            hook.run("true")

    def test_a_known_hosts_file_is_accepted(self, farm):
        board = farm.boards[1]
        hook = BoardHook(settings=settings_for(board, host_key=None, known_hosts=str(board.known_hosts)))
        try:
            assert hook.run("hostname").stdout.strip() == board.name
        finally:
            hook.close()


class TestADeadBoard:
    def test_is_unreachable_after_the_retries_and_fine_once_back(self, farm):
        board = farm.boards[1]
        board.kill_sshd()
        try:
            hook = BoardHook(settings=settings_for(board), connect_attempts=2, retry_delay_s=0.1)
            with pytest.raises(BoardUnreachable, match=f"board {board.name} .* unreachable after 2 attempts"):
                hook.run("true")
        finally:
            board.start_sshd()
        hook = BoardHook(settings=settings_for(board))
        try:
            assert hook.run("hostname").stdout.strip() == board.name
        finally:
            hook.close()


class TestSecrets:
    def test_a_passphrase_protected_key_file_works_and_its_passphrase_is_never_logged(self, farm, protected_key,
                                                                                       caplog):
        caplog.set_level(logging.DEBUG)
        board = farm.boards[0]
        hook = BoardHook(settings=settings_for(board, key_file=str(protected_key), password=PASSPHRASE))
        try:
            assert hook.run("hostname").stdout.strip() == board.name
        finally:
            hook.close()
        assert PASSPHRASE not in caplog.text

    def test_a_protected_key_given_inline_works_too(self, farm, protected_key):
        board = farm.boards[0]
        hook = BoardHook(settings=settings_for(board, key_file=None, private_key=protected_key.read_text(),
                                               password=PASSPHRASE))
        try:
            assert hook.run("hostname").stdout.strip() == board.name
        finally:
            hook.close()

    def test_a_wrong_passphrase_fails_without_showing_it(self, farm, protected_key, caplog):
        board = farm.boards[0]
        hook = BoardHook(settings=settings_for(board, key_file=str(protected_key), password="wrong-secret-42"),
                         connect_attempts=1)
        with pytest.raises(Exception) as info:
            hook.run("true")
        assert "wrong-secret-42" not in str(info.value) and "wrong-secret-42" not in caplog.text
