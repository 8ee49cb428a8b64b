"""Long jobs on a board, detached from the SSH session (the SSH provider's remote-job pattern).

A job runs in its own folder on the board, in its own session (``setsid``) so that one signal stops it and
everything it started: ``stdout.log`` holds its output, ``pid`` its process group, ``child_pid`` the command's own
process (the session leader waits for it, so it is reaped the moment it ends), ``exit_code`` appears when it
ends. The controller tails the log into the task log until then, so a 20-minute build or a long accuracy run holds
no single SSH channel open and survives a dropped connection.

A job is alive only while its process group is (issue #22): ``boot_id`` holds the board's boot id when the job
started (``/proc/sys/kernel/random/boot_id``, or the board's ``boot_id_file`` setting: tests point it at a file they
change), and ``wait`` raises ``JobLost`` when the board has booted since (every process of the job died with it) or
when the group is gone without an ``exit_code`` (its supervising shell was killed). ``wait`` with a deadline kills a
job that outlives it while printing nothing (``JobTimedOut``): a runner that keeps printing keeps a heartbeat.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BOOT_ID = "/proc/sys/kernel/random/boot_id"
PROGRESS = "progress.jsonl"  # the job's progress lines (the runner's $REQUESTFLOW_PROGRESS): see ``wait``
_SEPARATOR = "@@requestflow-progress@@"


class JobLost(RuntimeError):
    """The job's processes are gone and it left no exit code: ``reason`` says why (its supervising shell was
    killed, or the board rebooted)."""

    def __init__(self, job_dir: str, reason: str) -> None:
        super().__init__(f"the job in {job_dir} was lost: {reason}")
        self.job_dir, self.reason = job_dir, reason


class JobTimedOut(RuntimeError):
    """The job outlived its deadline without printing anything for a while: its process group was killed."""


def boot_id_file(board) -> str:
    """Where the board's boot id is read: the board's ``boot_id_file`` setting, else the kernel's."""
    return getattr(getattr(board, "settings", None), "boot_id_file", None) or BOOT_ID


def _boot_id_file(board) -> str:
    return shlex.quote(boot_id_file(board))


def start(board, job_dir: str, command: str, env: dict[str, str] | None = None) -> None:
    exports = "".join(f"export {key}={shlex.quote(value)}; " for key, value in (env or {}).items())
    # the command runs in a subshell: all of its output is logged, and an `exit` in it still leaves an exit_code;
    # in the background with its pid in child_pid, so that `wait` below can see it end (see there)
    inner = (f"{exports}( {command} ) > stdout.log 2>&1 & echo $! > child_pid; wait $!; "
             "echo $? > exit_code.tmp && mv exit_code.tmp exit_code")
    script = (f"mkdir -p {shlex.quote(job_dir)} && cd {shlex.quote(job_dir)} && "
              f"rm -f exit_code stdout.log child_pid boot_id killed {PROGRESS} && "
              f"{{ cat {_boot_id_file(board)} > boot_id 2>/dev/null || rm -f boot_id; }} && "
              f"{{ setsid sh -c {shlex.quote(inner)} < /dev/null > /dev/null 2>&1 & echo $! > pid; }}")
    board.run(script)


def wait(board, job_dir: str, on_output: Callable[[str], None], poll_s: float = 1.0,
         timeout_s: float | None = None, deadline_s: float | None = None, heartbeat_s: float = 120.0,
         on_progress: Callable[[dict], None] | None = None) -> int:
    """Tail the job's output until it ends; its exit code.

    Each poll is one command on the board that first waits, up to ``poll_s``, for the command's process to end
    (GNU ``tail --pid`` on ``child_pid``: one process checking every 50 ms, nothing started meanwhile that could
    disturb a measurement), then sends the new output and the exit code. The end of a job is seen within ~50 ms
    instead of up to a whole poll later (half a second per sweep point on average, bench/bench_sweep.py); the
    output still streams every ``poll_s``. ``child_pid`` rather than ``pid``: the session leader's parent is gone,
    so it is reaped by init, which may take a second (a zombie still answers ``kill -0``); its child is reaped by
    it at once. Without ``tail --pid`` or ``timeout`` (BusyBox), or for a job started without ``child_pid``, the
    command returns at once and the controller sleeps instead, as before.

    Without an exit code the same command says whether the job is still alive (``_STATUS``): ``JobLost`` when the
    board's boot id changed since ``start`` or no process of the job's group is left. ``timeout_s``: raise
    TimeoutError, the job left running (the caller decides). ``deadline_s``: past it, and with no output for
    ``heartbeat_s``, the job's process group is killed and ``JobTimedOut`` says "timed out after N s".

    The same poll reads the job's progress lines (``PROGRESS`` in its folder: the runner's ``Heartbeat``, written
    under ``--quiet`` too): each is a heartbeat like an output line, goes to ``on_progress``, and one that says
    how long the rest should take (``expect_s``) brings the deadline to now + twice that + ``heartbeat_s``, never
    past ``deadline_s``: a runner that stops soon after its warm-up is caught long before its mode's cap."""
    offset, progress_offset, started = 0, 0, time.monotonic()
    heard, limit = started, deadline_s
    quoted = shlex.quote(job_dir)
    status_command = _STATUS.replace("BOOT_ID_FILE", _boot_id_file(board))
    ended = ("i=0; while [ ! -s child_pid ] && [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; "  # job just started
             f"timeout {poll_s:g} tail --pid=\"$(cat child_pid)\" -s 0.05 -f /dev/null && "
             "for i in 1 2 3 4 5 6 7 8 9 10; do [ -f exit_code ] && break; sleep 0.02; done")  # written just after
    while True:
        polled = time.monotonic()
        result = board.run(f"cd {quoted} && {{ {{ [ -f exit_code ] || {{ {ended}; }}; }} >/dev/null 2>&1; "
                           f"tail -c +{offset + 1} stdout.log 2>/dev/null; }}; echo; echo {_SEPARATOR}; "
                           f"tail -c +{progress_offset + 1} {PROGRESS} 2>/dev/null; echo; {status_command}")
        output, _, rest = result.stdout.partition(f"\n{_SEPARATOR}\n")
        lines = rest.split("\n")
        status = lines[-2].strip() if len(lines) >= 2 else "RUNNING"
        progress = "\n".join(lines[:-2])
        progress = progress[:progress.rfind("\n") + 1]  # whole lines only: the rest is read at the next poll
        if output or progress:
            heard = time.monotonic()
        if output:
            offset += len(output.encode())
            for line in output.splitlines():
                if line.strip():
                    on_output(line)
        progress_offset += len(progress.encode())
        for line in progress.splitlines():
            report = _progress_line(line)
            if report is None:
                continue
            if on_progress is not None:
                on_progress(report)
            if deadline_s is not None and isinstance(report.get("expect_s"), (int, float)):
                limit = min(deadline_s, heard - started + 2 * report["expect_s"] + heartbeat_s)
        if status.startswith("LOST"):
            rest = board.run(f"tail -c +{offset + 1} {quoted}/stdout.log 2>/dev/null", warn=True).stdout
            for line in rest.splitlines():  # what the job printed after this poll's output was read
                if line.strip():
                    on_output(line)
            _, _, booted = status.partition("REBOOTED ")
            raise JobLost(job_dir, f"the board rebooted (boot id {booted.strip()} now)" if booted else
                          "its process group is gone without an exit code (its supervising shell was killed)")
        if status != "RUNNING":
            return int(status)
        now = time.monotonic()
        if timeout_s is not None and now - started > timeout_s:
            raise TimeoutError(f"job in {job_dir} still running after {timeout_s:.0f} s")
        if limit is not None and now - started > limit and now - heard > heartbeat_s:
            kill(board, job_dir)
            raise JobTimedOut(f"timed out after {limit:.0f} s (no output for {now - heard:.0f} s): "
                              f"the job in {job_dir} was killed")
        time.sleep(max(0.0, poll_s - (time.monotonic() - polled)))  # when the board could not wait itself


def _progress_line(line: str) -> dict | None:
    """A progress line as the runner writes it (a JSON object), or None."""
    try:
        report = json.loads(line)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


# The last line of a poll: the exit code, RUNNING, "LOST REBOOTED <boot id>" (the board's boot id is not the one
# recorded at start) or "LOST" (no live process left in the job's group, and no exit code: a process group outlives
# its supervising shell while the runner runs, so this is the moment the last of them ended). Builtins only while the
# command's own process lives (``read`` of its /proc stat: a zombie is not alive), the whole /proc read otherwise;
# the exit code is read again after that, as a job that just ended writes it before its group is gone; a job that
# ``kill`` stopped (its ``killed`` marker) ended 143, as ``kill`` writes once the group is gone.
_STATUS = ('cat exit_code 2>/dev/null || { '
           'b=; read -r b < boot_id 2>/dev/null; n=; read -r n < BOOT_ID_FILE 2>/dev/null; '
           'if [ -n "$b" ] && [ -n "$n" ] && [ "$b" != "$n" ]; then echo "LOST REBOOTED $n"; exit 0; fi; '
           'alive=; c=; read -r c < child_pid 2>/dev/null; l=; '
           '[ -n "$c" ] && read -r l 2>/dev/null < /proc/$c/stat && { l=${l##*) }; [ "${l%% *}" != Z ] && alive=1; }; '
           'g=; read -r g < pid 2>/dev/null; '
           'if [ -z "$alive" ] && [ -n "$g" ]; then for p in /proc/[0-9]*; do '
           'read -r l 2>/dev/null < "$p/stat" || continue; l=${l##*) }; set -- $l; '
           '[ "$1" != Z ] && [ "$3" = "$g" ] && { alive=1; break; }; done; fi; '
           'if [ -n "$alive" ] || [ -z "$g" ]; then echo RUNNING; '
           'else cat exit_code 2>/dev/null || { [ -f killed ] && echo 143; } || echo LOST; fi; }')


# Sets $ours when the process group in the job folder's ``pid`` is still the job's: some process of that group has
# the job folder as its working directory (the session leader and the command's subshell do, until they end). A
# job that ended long ago may have left a ``pid`` that the system has since given to another process group, which
# must never be taken for the job's. Runs in the job folder, with $pid set.
_OURS = ('here=$(pwd -P); ours=; for p in /proc/[0-9]*; do '
         '[ "$(readlink "$p/cwd" 2>/dev/null)" = "$here" ] || continue; '
         # /proc/PID/stat: "pid (comm) state ppid pgrp ...": the process group is the 3rd field after ") "
         'g=$(sed "s/.*) //" "$p/stat" 2>/dev/null | cut -d" " -f3); '
         '[ "$g" = "$pid" ] && { ours=1; break; }; done')


def _in_job(job_dir: str) -> str:
    """The shell prefix of ``running`` and ``kill``: into the job folder, $pid read, $ours set (nothing to do, and
    exit 0, without a folder or a pid)."""
    return f"cd {shlex.quote(job_dir)} 2>/dev/null || exit 0; pid=$(cat pid 2>/dev/null) || exit 0; {_OURS}; "


def running(board, job_dir: str) -> bool:
    """Whether the job in ``job_dir`` is still running (its process group alive and still the job's)."""
    result = board.run(_in_job(job_dir) + "[ -n \"$ours\" ] && echo RUNNING; exit 0", warn=True)
    return result.stdout.strip() == "RUNNING"


def kill(board, job_dir: str, grace_s: float = 5.0) -> None:
    """Stop the job's whole process group: TERM, then KILL after ``grace_s``. A job killed before it could write
    its exit code gets 143 (TERM) written for it, so that whoever waits for it is released. A group that is no
    longer the job's (``_OURS``) is left alone: the kill only writes the exit code."""
    board.run(_in_job(job_dir) + "if [ -n \"$ours\" ]; then touch killed; kill -TERM -- -$pid 2>/dev/null; "
              "kill -CONT -- -$pid 2>/dev/null; "  # a stopped process handles its TERM
              f"for i in $(seq {int(grace_s * 10)}); do kill -0 -- -$pid 2>/dev/null || break; sleep 0.1; done; "
              "kill -KILL -- -$pid 2>/dev/null; fi; [ -f exit_code ] || echo 143 > exit_code; exit 0",
              warn=True)


def fetch_document(board, job_dir: str, name: str = "result.json") -> tuple[dict | None, str]:
    """The JSON document the job wrote to ``name`` in its folder (the runner writes it atomically: whole or absent)
    and "", or None and why there is none."""
    path = f"{job_dir}/{name}"
    with tempfile.TemporaryDirectory(prefix="rf-job-") as folder:
        local = Path(folder) / name
        try:
            board.get(path, str(local))
        except OSError as exc:
            return None, f"{path}: {exc.strerror or exc}"
        try:
            return json.loads(local.read_text()), ""
        except ValueError as exc:  # never written so by the runner: a damaged disk, a hand-edited file
            return None, f"{path} is not a JSON document: {exc}"


def no_document(board_name: str, code: int, why: str, lines: list[str]) -> str:
    """The error of a job that ended without its document: its exit code, why (``fetch_document``), and its last
    three output lines."""
    last = f"; its last output: {' | '.join(lines[-3:])}" if lines else "; it printed nothing"
    return f"board {board_name}: the runner exited {code} without a result ({why}){last}"
