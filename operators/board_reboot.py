"""After a board rebooted, what the reboot undid is checked again before the next point runs (issue #22).

A reboot loses the pinned clocks (the kernel boots with its own governors while ``clocks.json`` still lists the
sweeps that hold them), may leave the runner's installation broken (a disk that was being written), and kills the
job of the point that was running. ``check(...)``, first thing of every point on a board, compares the board's boot
id (``board_jobs.boot_id_file``) with the one the last point saw (``SEEN`` in the board's work dir); when it
changed:

- the runner's installation: the deployed runner must still start (``requestflow models``), else the point fails
  saying so (provision the board again);
- the clocks: pinned again for the sweeps that held them, the report logged and recorded in the sweep's info
  (``boards -> <board> -> after_reboot``);
- the sweep's earlier points: a document its runner had completed (schema-valid, ``status: ok``) before the
  reboot is loaded (a no-op when it is stored already), so that the point is stored once and never run again by a
  retry or a resumed sweep (which find it stored).

The cool-down, when the sweep asks for one, follows as before every point. The first point ever on a board records
its boot id and checks nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from operators import board_jobs

SEEN = "boot_id.seen"
Log = Callable[[str], None]


def check(board, work_dir: str, python: str, env: dict[str, str], *, sweep: str, dag_id: str | None,
          holder: str, results_conn_id: str, log: Log) -> dict | None:
    """What was done because the board rebooted since the last point (module docstring), or None."""
    seen_file = shlex.quote(f"{work_dir}/{SEEN}")
    result = board.run(f"cat {shlex.quote(board_jobs.boot_id_file(board))}; echo; cat {seen_file} 2>/dev/null",
                       warn=True, timeout=60)
    now, _, seen = result.stdout.partition("\n")
    now, seen = now.strip(), seen.strip()
    if not now or now == seen:
        return None
    name = board.settings.name
    report = None
    if seen:
        log(f"board {name} rebooted since its last point (boot id {seen}, now {now}): checking what a reboot undoes")
        _check_runner(board, python, env)
        report = {"boot_id": now, "previous_boot_id": seen, "clocks": _pin_again(board, holder, log),
                  "stored_points": _store_finished(board, work_dir, sweep, dag_id, results_conn_id, log)}
        _record(results_conn_id, sweep, dag_id, name, report)
    board.run(f"mkdir -p {shlex.quote(work_dir)} && echo {shlex.quote(now)} > {seen_file}", timeout=60)
    return report


def _check_runner(board, python: str, env: dict[str, str]) -> None:
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
    result = board.run(f"{exports}{shlex.quote(python)} -m requestflow.cli models > /dev/null", warn=True,
                       timeout=300)
    if result.return_code != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.return_code}"]
        raise RuntimeError(f"board {board.settings.name}: the runner ({python}) no longer starts after the board "
                           f"rebooted: {last[0]} (provision the board again)")


def _pin_again(board, holder: str, log: Log) -> dict | None:
    """Pin the clocks again when a sweep holds them (``clocks.json``); the pin report, or None."""
    from operators.provision import board_cli, clock_lines

    s = board.settings
    where = ["--state", f"{s.work_dir}/clocks.json", "--root", s.sysfs_root]
    holders = board_cli(board, ["clocks", "status", *where]).get("holders") or []
    if not holders:
        log(f"board {s.name}: no sweep holds its clocks: none pinned again")
        return None
    report = board_cli(board, ["clocks", "pin", *where, "--holder", holder if holder in holders else holders[0]],
                       sudo=s.sudo)
    log(f"board {s.name}: clocks pinned again after the reboot (held by {', '.join(holders)})")
    for line in clock_lines(report):
        log(f"board {s.name}: {line}")
    return report


def _store_finished(board, work_dir: str, sweep: str, dag_id: str | None, results_conn_id: str, log: Log) -> int:
    """Load the complete, successful documents in the sweep's job folders; how many were new to the store."""
    from operators import point_steps
    from operators.results_hook import ResultsHook
    from requestflow.board.schema import validate_document
    from requestflow.errors import UserError

    prefix = point_steps.job_dir(work_dir, sweep)
    listed = board.run(f"ls -d {shlex.quote(prefix)}*/result.json 2>/dev/null", warn=True, timeout=60).stdout
    documents = []
    for path in listed.splitlines():
        folder = path.rsplit("/", 1)[0]
        document, _ = board_jobs.fetch_document(board, folder)
        if document is None or document.get("status") != "ok":
            continue
        try:
            validate_document(document)
        except UserError:  # a runner's document is whole or absent: this one was damaged, and is not a result
            continue
        documents.append((f"{board.settings.name}:{folder}", document))
    if not documents:
        return 0
    report = ResultsHook(results_conn_id).load(documents, board=board.settings.name, sweep=sweep, dag_id=dag_id)
    log(f"board {board.settings.name}: {len(documents)} point(s) of the sweep had completed before the reboot: "
        f"{len(report.loaded)} stored now, {len(report.unchanged)} stored already")
    return len(report.loaded)


def _record(results_conn_id: str, sweep: str, dag_id: str | None, board: str, report: dict) -> None:
    from operators.results_hook import ResultsHook
    from requestflow.results.sweeps import record_sweep_info

    with ResultsHook(results_conn_id).engine() as engine:
        record_sweep_info(engine, sweep, dag_id, board, "after_reboot", report)
