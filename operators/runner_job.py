"""Running the runner on a board: one call from a command line to an outcome (issue #16's small service).

The sweep's points (``RunPointOperator``), the replay (``operators.replay_board``) and, later, provisioning and the
ArmCL build run a command on a board the same way: a detached job (``board_jobs``) started in a job folder, its
output streamed to a log, waited for (with a deadline and a heartbeat, or a plain time limit), then its document
fetched. This module is that sequence, once:

``runner_env(work_dir) -> dict``
    The environment of a runner deployed in the board's work dir: it reads only the data provisioning copied there
    (``$REQUESTFLOW_DATA``) and its own cache (``$REQUESTFLOW_CACHE``).

``run(board, job_dir, command, env=None, *, log=print, document="result.json", deadline_s=None,
heartbeat_s=120, timeout_s=None, poll_s=1.0, kill_on_error=False) -> Outcome``
    Start ``command`` in ``job_dir`` (a runner started so writes its progress lines there: ``$REQUESTFLOW_PROGRESS``)
    and ``follow`` it.

``follow(board, job_dir, *, ...same options) -> Outcome``
    Wait for the job already started in ``job_dir`` (an earlier attempt's) and fetch its document.

``Outcome``
    ``board`` and ``job_dir``; ``code``, the exit code (None: the job was lost); ``document``, the JSON document it
    wrote (None when it wrote none, or when a lost job's document is not a complete result); ``why``, why there is
    no document; ``lines``, its last ``KEEP_LINES`` output lines; ``lost``, the reason the job was lost (its
    supervising shell killed, the board rebooted) or None. ``refused`` (exit 2: the runner refused its input) and
    ``failure()``, the error of an outcome without a document, naming the board, the exit code or the loss, and the
    last output lines.

Each output line goes to ``log`` as ``[<board>] <line>``, each progress line as ``[<board>] progress: ...``. A
connection lost while waiting is opened again (``RECONNECTS`` times) and the job followed on. Errors:
``board_jobs.JobTimedOut`` past the deadline (the job killed), ``TimeoutError`` past ``timeout_s`` (the job left
running unless ``kill_on_error``), a connection lost for good, and whatever else the board raises;
``kill_on_error`` kills the job on any of them but the lost connection (a caller with no ``on_kill`` of its own,
as the replay).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from operators import board_jobs

KEEP_LINES = 50
RECONNECTS = 2
Log = Callable[[str], None]


def runner_env(work_dir: str) -> dict[str, str]:
    """The environment of the runner deployed in ``work_dir`` on a board."""
    return {"REQUESTFLOW_CACHE": f"{work_dir}/cache", "REQUESTFLOW_DATA": f"{work_dir}/data",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class Outcome:
    board: str
    job_dir: str
    code: int | None
    document: dict | None
    why: str = ""
    lines: list[str] = field(default_factory=list)
    lost: str | None = None

    @property
    def refused(self) -> bool:
        return self.code == 2

    def failure(self) -> str:
        """Why the job gave no document, for an error message."""
        if self.lost is None:
            return board_jobs.no_document(self.board, self.code, self.why, self.lines)
        last = f"; its last output: {' | '.join(self.lines[-3:])}" if self.lines else ""
        return f"the runner's job was lost ({self.lost}) without a result ({self.why}){last}"


def run(board, job_dir: str, command: str, env: dict[str, str] | None = None, *, log: Log = print,
        **options) -> Outcome:
    """Start ``command`` in ``job_dir`` on ``board`` and follow it to its outcome (module docstring)."""
    from requestflow.board.runner import PROGRESS_ENV

    env = {**(env or {}), PROGRESS_ENV: f"{job_dir}/{board_jobs.PROGRESS}"}
    board_jobs.start(board, job_dir, command, env)
    return follow(board, job_dir, log=log, **options)


def follow(board, job_dir: str, *, log: Log = print, document: str = "result.json", deadline_s: float | None = None,
           heartbeat_s: float = 120.0, timeout_s: float | None = None, poll_s: float = 1.0,
           kill_on_error: bool = False) -> Outcome:
    """Wait for the job in ``job_dir`` and fetch its document (module docstring). A connection lost while waiting
    is opened again (``RECONNECTS`` times), and the job followed on: a board that rebooted meanwhile is then seen
    as such (its boot id), its job lost."""
    name = board.settings.name
    lines: list[str] = []
    printed = [0, 0]  # lines shown; lines to skip (shown before a reconnect: the wait reads the log from its start)

    def show(line: str) -> None:
        if printed[1]:
            printed[1] -= 1
            return
        printed[0] += 1
        lines.append(line)
        del lines[:-KEEP_LINES]
        log(f"[{name}] {line}")

    def progress(report: dict) -> None:
        expect = f", {report['expect_s']:.0f} s to go" if "expect_s" in report else ""
        log(f"[{name}] progress: {report.get('stage')} {report.get('done')}/{report.get('total')}{expect}")

    reconnects = 0
    while True:
        try:
            code = board_jobs.wait(board, job_dir, show, poll_s=poll_s, timeout_s=timeout_s, deadline_s=deadline_s,
                                   heartbeat_s=heartbeat_s, on_progress=progress)
            break
        except board_jobs.JobLost as lost:
            log(f"board {name}: {lost}")
            return _lost(board, job_dir, document, lost.reason, lines)
        except Exception as exc:
            lost = _connection_lost(exc)
            if not lost or reconnects == RECONNECTS:
                if kill_on_error and not lost:  # (a board that cannot be reached cannot be told to kill)
                    board_jobs.kill(board, job_dir)
                raise
            reconnects += 1
            log(f"board {name}: {exc or type(exc).__name__}: connecting again to follow the job")
            board.close()
            printed[1] = printed[0]
        except BaseException:
            if kill_on_error:
                board_jobs.kill(board, job_dir)
            raise
    fetched, why = board_jobs.fetch_document(board, job_dir, document)
    return Outcome(name, job_dir, code, fetched, why, lines)


def _connection_lost(exc: Exception) -> bool:
    """Whether ``exc`` says the connection to the board was lost (not the job's own time limit)."""
    import paramiko

    from operators.board_hook import BoardConnectionLost

    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, (BoardConnectionLost, EOFError, OSError, paramiko.SSHException))


def _lost(board, job_dir: str, name: str, reason: str, lines: list[str]) -> Outcome:
    """A lost job's outcome: its document when the runner finished writing it (complete and schema-valid)."""
    from requestflow.board.schema import validate_document
    from requestflow.errors import UserError

    fetched, why = board_jobs.fetch_document(board, job_dir, name)
    if fetched is not None:
        try:
            validate_document(fetched)
        except UserError as exc:
            fetched, why = None, f"{job_dir}/{name} is not a complete result: {exc}"
    return Outcome(board.settings.name, job_dir, None, fetched, why, lines, lost=reason)


def remove_document(board, job_dir: str, name: str = "result.json") -> None:
    """Remove a document an earlier job left in ``job_dir``, so that it is never taken for the next job's."""
    board.run(f"rm -f {shlex.quote(f'{job_dir}/{name}')}")
