"""Long jobs on a board, detached from the SSH session (the SSH provider's remote-job pattern).

A job runs in its own folder on the board, in its own session (``setsid``) so that one signal stops it and
everything it started: ``stdout.log`` holds its output, ``pid`` its process group, ``exit_code`` appears when it
ends. The controller tails the log into the task log until then, so a 20-minute build or a long accuracy run holds
no single SSH channel open and survives a dropped connection.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable


def start(board, job_dir: str, command: str, env: dict[str, str] | None = None) -> None:
    exports = "".join(f"export {key}={shlex.quote(value)}; " for key, value in (env or {}).items())
    # the command runs in a subshell: all of its output is logged, and an `exit` in it still leaves an exit_code
    inner = f"{exports}( {command} ) > stdout.log 2>&1; echo $? > exit_code.tmp && mv exit_code.tmp exit_code"
    script = (f"mkdir -p {shlex.quote(job_dir)} && cd {shlex.quote(job_dir)} && rm -f exit_code stdout.log && "
              f"{{ setsid sh -c {shlex.quote(inner)} < /dev/null > /dev/null 2>&1 & echo $! > pid; }}")
    board.run(script)


def wait(board, job_dir: str, on_output: Callable[[str], None], poll_s: float = 1.0,
         timeout_s: float | None = None) -> int:
    """Tail the job's output until it ends; its exit code."""
    offset, started = 0, time.monotonic()
    quoted = shlex.quote(job_dir)
    while True:
        result = board.run(f"cd {quoted} && tail -c +{offset + 1} stdout.log 2>/dev/null; echo; "
                           "cat exit_code 2>/dev/null || echo RUNNING")
        lines = result.stdout.split("\n")
        status = lines[-2].strip() if len(lines) >= 2 else "RUNNING"
        output = "\n".join(lines[:-2])
        if output:
            offset += len(output.encode())
            for line in output.splitlines():
                if line.strip():
                    on_output(line)
        if status != "RUNNING":
            return int(status)
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"job in {job_dir} still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def kill(board, job_dir: str, grace_s: float = 5.0) -> None:
    """Stop the job's whole process group: TERM, then KILL after ``grace_s``. A job killed before it could write
    its exit code gets 143 (TERM) written for it, so that whoever waits for it is released."""
    quoted = shlex.quote(job_dir)
    board.run(f"pid=$(cat {quoted}/pid 2>/dev/null) || exit 0; kill -TERM -- -$pid 2>/dev/null; "
              f"for i in $(seq {int(grace_s * 10)}); do kill -0 -- -$pid 2>/dev/null || break; sleep 0.1; done; "
              f"kill -KILL -- -$pid 2>/dev/null; [ -f {quoted}/exit_code ] || echo 143 > {quoted}/exit_code; exit 0",
              warn=True)
