"""BoardHook: a board as an Airflow Connection, driven with Fabric.

Like Airflow's SSH hook, the hook owns the connection: it reads the Connection's fields and named extras
(``board_settings.py``), builds one Fabric ``Connection`` with strict host-key checking, and retries the connect.
Operators call ``run``, ``put`` and ``get`` and never see credentials.
"""

from __future__ import annotations

import time
from functools import cached_property, lru_cache

from airflow.sdk import BaseHook

from operators.board_settings import BoardSettings
from requestflow.errors import UserError


class BoardUnreachable(Exception):
    """The board did not answer (after retries): a transient failure, worth retrying the task."""


class BoardConnectionLost(ConnectionError):
    """A command on the board ended without an exit status: the connection dropped (sshd killed or restarted, the
    link down, the board rebooting), or the command was killed by a signal. Transient: worth retrying the task."""


class HostKeyMismatch(Exception):
    """The board's host key is not the one configured: never retried, never accepted."""


class BoardHook(BaseHook):
    conn_name_attr = "board_conn_id"
    default_conn_name = "board_default"
    conn_type = "ssh"
    hook_name = "requestflow board"

    def __init__(self, board_conn_id: str = default_conn_name, connect_attempts: int = 3,
                 retry_delay_s: float = 2.0, settings: BoardSettings | None = None) -> None:
        super().__init__()
        self.board_conn_id = board_conn_id
        self.connect_attempts = connect_attempts
        self.retry_delay_s = retry_delay_s
        self._settings = settings
        self._connection = None

    @cached_property
    def settings(self) -> BoardSettings:
        if self._settings is not None:
            return self._settings
        return BoardSettings.from_connection(self.board_conn_id, self.get_connection(self.board_conn_id))

    def get_conn(self):
        """An open Fabric Connection to the board (opened once, retried on network errors)."""
        if self._connection is not None and self._connection.is_connected:
            return self._connection
        import paramiko
        from fabric import Config, Connection

        s = self.settings
        connection = Connection(s.host, user=s.user, port=s.port, connect_timeout=s.connect_timeout,
                                connect_kwargs=s.connect_kwargs(),
                                config=Config(overrides={"load_ssh_configs": False}))
        client = connection.client
        client.set_missing_host_key_policy(paramiko.WarningPolicy() if s.no_host_key_check else
                                           paramiko.RejectPolicy())
        if s.known_hosts:
            client.load_host_keys(s.known_hosts)
        if s.host_key:
            _add_host_key(client, s)
        last = None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                connection.open()
                self._connection = connection
                return connection
            except paramiko.BadHostKeyException as exc:
                raise HostKeyMismatch(f"board {s.name} ({s.host}): host key {exc.key.get_name()} "
                                      f"{exc.key.get_base64()[:16]}... does not match the configured one") from None
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):  # RejectPolicy: a host key we do not know
                    raise HostKeyMismatch(f"board {s.name} ({s.host}): unknown host key, refused ({exc})") from None
                if isinstance(exc, paramiko.AuthenticationException):
                    raise UserError(f"board {s.name} ({s.host}): authentication failed for {s.user}") from None
                last = exc
            except OSError as exc:
                last = exc
            self.log.warning("board %s (%s): connect attempt %d/%d failed: %s", s.name, s.host, attempt,
                             self.connect_attempts, last)
            if attempt < self.connect_attempts:
                time.sleep(self.retry_delay_s)
        raise BoardUnreachable(f"board {s.name} ({s.host}:{s.port}) unreachable after {self.connect_attempts} "
                               f"attempts: {last}")

    def run(self, command: str, *, timeout: float | None = None, warn: bool = False, hide: bool = True):
        """Run a shell command on the board; a fabric Result (``.stdout``, ``.return_code``). A command that ends
        without an exit status (paramiko's -1, whether ``warn`` or not) raises ``BoardConnectionLost``."""
        from invoke.exceptions import UnexpectedExit

        try:
            result = self.get_conn().run(command, timeout=timeout, warn=warn, hide=hide, in_stream=False)
        except UnexpectedExit as exc:
            if exc.result.return_code != -1:
                raise
            result = exc.result
        if result.return_code == -1:
            self.close()  # whatever is left of the connection: the next command opens a new one
            head = " ".join(command.split())
            raise BoardConnectionLost(
                f"board {self.settings.name} ({self.settings.host}): a command ended without an exit status: the "
                f"connection was lost, or the command was killed by a signal "
                f"({head[:100]}{'...' if len(head) > 100 else ''})")
        return result

    def put(self, local: str, remote: str):
        return self.get_conn().put(local, remote)

    def get(self, remote: str, local: str):
        return self.get_conn().get(remote, local)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def test_connection(self) -> tuple[bool, str]:
        try:
            result = self.run("uname -a")
            return True, result.stdout.strip()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)


def _add_host_key(client, settings: BoardSettings) -> None:
    import base64

    import paramiko

    try:
        key_type, key_b64 = settings.host_key.split()[:2]
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
    except (ValueError, paramiko.SSHException) as exc:
        raise UserError(f"board connection {settings.name!r}: host_key is not an OpenSSH public key ({exc})") from None
    name = settings.host if settings.port == 22 else f"[{settings.host}]:{settings.port}"
    client.get_host_keys().add(name, key_type, key)


LOCAL_BOARD = "local"


class LocalBoard:
    """This machine as a board, without SSH: the embedded default. Same ``run``/``put``/``get`` as BoardHook. Its
    ArmCL builds are the machine's cache (``requestflow.board.armcl.default_cache``), shared with the tests."""

    def __init__(self, python: str | None = None, work_dir: str | None = None) -> None:
        import os
        import sys

        from operators.config import local_settings
        from requestflow.board.armcl import default_cache

        self.settings = BoardSettings(
            name=LOCAL_BOARD, host="localhost", key_file="-", no_host_key_check=True, **local_settings(),
            python=python or sys.executable, armcl_cache=str(default_cache()),
            work_dir=work_dir or os.path.join(os.environ.get("REQUESTFLOW_STATE") or
                                              os.path.expanduser("~/.local/state/requestflow"), "board"))

    def run(self, command: str, *, timeout: float | None = None, warn: bool = False, hide: bool = True):
        from invoke import Context

        return Context().run(command, timeout=timeout, warn=warn, hide=hide, in_stream=False,
                             env=local_board_env(), replace_env=True)

    def put(self, local: str, remote: str):
        import shutil

        shutil.copyfile(local, remote)

    def get(self, remote: str, local: str):
        import shutil

        shutil.copyfile(remote, local)

    def close(self) -> None:
        pass


@lru_cache(maxsize=1)
def _finds_itself_without_pythonpath(python: str, package: str) -> bool:
    import subprocess

    probe = subprocess.run([python, "-c", "import requestflow; print(requestflow.__file__)"], capture_output=True,
                           text=True, env=_without_pythonpath(), stdin=subprocess.DEVNULL, cwd="/")
    return probe.returncode == 0 and probe.stdout.strip() == package


def _without_pythonpath() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def local_board_env() -> dict[str, str]:
    """The environment of the local board's commands: the controller's without its ``PYTHONPATH`` whenever the
    controller's Python imports this same requestflow without it (installed from this checkout, as ``./dev.sh``
    does). A board's runner venv then imports the requestflow installed in it, as on any board: with the
    controller's ``PYTHONPATH`` (the checkout, which the local Airflow puts there), pip found the checkout's
    requestflow "already satisfied", installed none into the venv, and the runner ran the checkout's. Kept when the
    Python needs it (a checkout run through ``PYTHONPATH`` with another's venv): the local board's default runner
    is that Python."""
    import os
    import sys

    import requestflow

    if "PYTHONPATH" in os.environ and _finds_itself_without_pythonpath(sys.executable, requestflow.__file__):
        return _without_pythonpath()
    return dict(os.environ)


def board_for(conn_id: str):
    """The board behind a name: ``local`` is this machine, anything else an Airflow Connection."""
    return LocalBoard() if conn_id == LOCAL_BOARD else BoardHook(board_conn_id=conn_id)


def last_said(result, *, silent: str | None = None) -> str:
    """The last line a board command printed (stderr, else stdout): what a failure message quotes. With no output,
    ``silent``, else ``exit N``."""
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else (silent if silent is not None else f"exit {result.return_code}")
