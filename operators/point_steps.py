"""What a sweep's point does on its board besides running the runner (``operators.runner_job``), one function each:
its command line and job folder, its deadline, the resume check, the cool-down, taking over an earlier attempt's
runner, and storing its document. ``RunPointOperator`` calls them; each raises ``UserError`` for what no retry can
change (the runner refusing the point) and ``RuntimeError`` for the rest.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable

from operators import board_jobs, runner_job
from requestflow.errors import UserError

# A run point's deadline (issue #22): the backend's set-up, plus the longest its mode may measure; once the runner
# reports how long the rest should take (its warm-up's pace, ``board_jobs.wait``), that estimate instead. Past it, a
# runner that has printed nothing for HEARTBEAT_S is killed ("timed out after N s").
MODE_CAPS_S = {"performance": 2 * 3600.0, "accuracy": 6 * 3600.0}
SETUP_S = 600.0
HEARTBEAT_S = 120.0

POINT_FIELDS = ("model", "backend", "mode", "precision", "release", "repetitions", "warmup", "batch_size",
                "threads", "cpus", "cluster", "limit", "variant", "profile")

Log = Callable[[str], None]


def runner_command(python: str, point: dict, out: str | None = "result.json", armcl_build: str | None = None,
                   power_meter: str | None = None, power_rate_hz: float | None = None,
                   isolation: str = "fresh") -> str:
    """The board-side command line of a point (``out=None``: ``--identify``, print its context); values quoted.
    ``armcl_build``: the folder, on the board, of the ArmCL build the point's ``armcl_build`` names;
    ``power_meter`` / ``power_rate_hz``: the board's meter (its Connection's extras), for performance points;
    ``isolation``: ``fork`` runs it in a child of the board's point server (``requestflow.board.point_client``), the
    board's unless the point has its own (the sweep's ``isolation``: ``operators.sweep``)."""
    # runtime: which python; isolation: which module (the ``isolation`` argument, from it or the board's)
    unknown = set(point) - set(POINT_FIELDS) - {"board", "armcl_build", "weights", "runtime", "isolation"}
    if unknown:
        raise ValueError(f"unknown point field {sorted(unknown)[0]!r}")
    forked = out is not None and (point.get("isolation") or isolation) == "fork"  # --identify: a fresh process
    module = "requestflow.board.point_client" if forked else "requestflow.cli"
    args = [python, "-m", module, "run", "--quiet", "--offline"]
    args += ["--out", out] if out else ["--identify"]
    for name in POINT_FIELDS:
        value = point.get(name)
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        if value is not None and value != "":
            args += [f"--{name.replace('_', '-')}", str(value)]
    if armcl_build:
        args += ["--armcl-build", armcl_build]
    if point.get("weights"):  # "random": the sweep's weights = random (operators.sweep.plan)
        args += ["--weights", str(point["weights"])]
    if out and power_meter and power_meter != "none" and point.get("mode", "performance") == "performance":
        args += ["--power-meter", power_meter]
        if power_rate_hz:
            args += ["--power-rate-hz", f"{power_rate_hz:g}"]
    return " ".join(shlex.quote(a) for a in args)


def job_dir(work_dir: str, sweep_id: str, label: str = "") -> str:
    """The point's job folder on the board (``label`` empty: the prefix of all the sweep's folders)."""
    return f"{work_dir}/runs/{re.sub(r'[^A-Za-z0-9_.-]+', '_', f'{sweep_id}/{label}')}"


def deadline_s(point, mode_caps_s: dict[str, float], setup_s: float) -> float:
    """Seconds a silent runner of ``point`` may take at most: set-up + its mode's cap (the longest cap for a mode
    not known yet, a templated point)."""
    mode = point.get("mode") if isinstance(point, dict) else None
    return setup_s + mode_caps_s.get(mode, max(mode_caps_s.values()))


def earlier_document(board, folder: str, log: Log, **wait_options) -> dict | None:
    """On a retry: the successful document of the runner an earlier attempt started in ``folder``, else None.

    An attempt killed hard (SIGKILL, a worker lost) never ran ``on_kill``, and one that lost its connection left
    its runner measuring: a runner still running is followed to its end (its output into this attempt's log; never
    a second runner beside it). A runner that finished while its attempt failed after it (the store down mid-load,
    the reply of a committed load lost) left its document: it is the point's (loading it again is a no-op) rather
    than the point measured a second time in this sweep. Anything else it left (a failed document, which a new
    attempt may well turn into a result) is removed, so that it cannot be taken for the new runner's."""
    name = board.settings.name
    if board_jobs.running(board, folder):
        log(f"board {name}: following the runner an earlier attempt started in {folder}")
        outcome = runner_job.follow(board, folder, log=log, **wait_options)
        document, missing = outcome.document, outcome.why
    else:
        document, missing = board_jobs.fetch_document(board, folder)
    if document is None:
        log(f"board {name}: no result of an earlier attempt ({missing})")
    elif document.get("status") == "ok":
        log(f"board {name}: the result an earlier attempt's runner wrote is the point's")
        return document
    runner_job.remove_document(board, folder)
    return None


def identify(board, python: str, env: dict[str, str], point: dict, armcl_build: str | None) -> dict:
    """The point's context as the runner on the board computes it (``--identify``): what resume looks up."""
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
    result = board.run(exports + runner_command(python, point, out=None, armcl_build=armcl_build), warn=True,
                       timeout=600)
    if result.return_code == 2:
        raise UserError(f"board {board.settings.name} refused the point: "
                        f"{result.stderr.strip().splitlines()[-1:]}")
    if result.return_code != 0:
        raise RuntimeError(f"board {board.settings.name}: identifying the point failed ({result.return_code}): "
                           f"{result.stderr.strip()[-300:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["context"]


def stored_result(board, context: dict, results_conn_id: str) -> int | None:
    """Resume: the id of the successful result of the point ``context`` identifies on ``board``, or None."""
    from operators.results_hook import ResultsHook
    from requestflow.results.identity import point_id
    from requestflow.results.sweeps import stored_ok

    with ResultsHook(results_conn_id).engine() as engine:
        return stored_ok(engine, point_id(board.settings.name, context))


def cool_down(board, below_c: float, timeout_s: float, log: Log) -> dict:
    """Wait, up to ``timeout_s``, until the board's hottest sensor is below ``below_c``; its report, logged."""
    from operators.provision import board_cli

    s = board.settings
    report = board_cli(board, ["cooldown", "--below", str(below_c), "--timeout", str(timeout_s), "--root",
                               s.sysfs_root], timeout=timeout_s + 60)
    if report.get("reached") is None:
        log(f"board {s.name}: no cool-down ({report.get('reason')})")
    elif report["reached"]:
        log(f"board {s.name}: {report['celsius']:.1f} C after {report.get('waited_s', 0):.0f} s of cool-down "
            f"(below {below_c} C)")
    else:
        log(f"board {s.name}: still {report['celsius']:.1f} C after {report.get('waited_s', 0):.0f} s; running "
            "anyway (the result records its temperatures)")
    return report


def store(results_conn_id: str, board_name: str, folder: str, document: dict, sweep: str,
          dag_id: str | None) -> dict:
    """Load the point's document into the results store (a no-op when it is stored already); its summary:
    board, status, whether it was loaded now, its median latency or top-1."""
    from operators.results_hook import ResultsHook

    report = ResultsHook(results_conn_id).load([(f"{board_name}:{folder}", document)], board=board_name,
                                               sweep=sweep, dag_id=dag_id)
    summary = {"board": board_name, "status": document["status"], "loaded": bool(report.loaded)}
    if "performance" in document:
        summary["median_ms"] = round(document["performance"]["median"] * 1e3, 4)
    if "accuracy" in document:
        summary["top1"] = document["accuracy"]["top1"]
    return summary
