"""Replaying a stored point on its board (issue #8): the stored runner document's own command, run again through
the board hook, detached on the board like a sweep's point (``runner_job``), its new document fetched.

The command is the one the document records (``command``: what the runner was asked), with only its output file
changed; the runner reads the same data as then: a point that a sweep ran read its board's work dir
(``$REQUESTFLOW_DATA`` / ``$REQUESTFLOW_CACHE`` there, as ``RunPointOperator`` sets them), one run by hand read what
its command names. ``requestflow.results.replay`` compares the two documents.
"""

from __future__ import annotations

import shlex
import time

from requestflow.errors import UserError

VALUE_OPTIONS = {"--out"}  # options of `requestflow run` replaced by the replay
FLAGS = {"--identify"}


def replay_command(python: str, recorded: list[str], out: str) -> str:
    """The board-side command line that reruns ``recorded`` (a result document's ``command``), writing ``out``."""
    if not recorded or len(recorded) < 2 or recorded[1] != "run":
        raise UserError(f"the stored result was not made by `requestflow run` (its command: {' '.join(recorded)!r}): "
                        "it cannot be replayed")
    args, skip = [], False
    for arg in recorded[2:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in VALUE_OPTIONS:
            skip = "=" not in arg
            continue
        if name in FLAGS:
            continue
        args.append(arg)
    if "--quiet" not in args:
        args.append("--quiet")
    return " ".join(shlex.quote(a) for a in [python, "-m", "requestflow.cli", "run", *args, "--out", out])


def run_on_board(board_name: str, document: dict, log=print, timeout_s: float | None = 6 * 3600) -> dict:
    """Rerun ``document``'s command on board ``board_name``; the new runner document."""
    from operators import runner_job
    from operators.board_hook import board_for
    from operators.deploy import runner_location

    board = board_for(board_name)
    try:
        # the runner of the runtime spec the point ran on (issue #17), if it had one
        python, work_dir = runner_location(board, ((document.get("context") or {}).get("backend") or {}).get("runtime"))
        files = (document.get("context", {}).get("weights") or {}).get("files") or []
        # a sweep's point read its board's work dir: run it with the same environment
        env = runner_job.runner_env(work_dir) if any(str(f).startswith(f"{work_dir}/") for f in files) else {}
        job_dir = f"{work_dir}/replays/{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6:06d}"
        command = replay_command(python, document.get("command") or [], "result.json")
        log(f"board {board_name}: {command} (in {job_dir})")
        outcome = runner_job.run(board, job_dir, command, env, log=log, timeout_s=timeout_s, kill_on_error=True)
        if outcome.refused:
            last = outcome.lines[-1] if outcome.lines else "exit 2"
            raise UserError(f"board {board_name} refused the replay: {last}")
        if outcome.document is None:
            raise RuntimeError(outcome.failure())
        return outcome.document
    finally:
        board.close()
