"""Provisioning a board: what it is, the runner and its data on it, its clocks.

Three operators, used by the ``board_provision`` DAG and by every sweep (each inside the board's one-slot pool, so
that nothing else runs on the board meanwhile):

* ``ProvisionBoardOperator`` deploys the runner (``operators.deploy``: the project's wheel and a wheelhouse built
  here, so boards need no internet) and one runner per runtime spec the points name (``operators.runtime_spec``; a
  spec that cannot be installed fails only its points, stored with ``RuntimeInstallFailed``),
  detects the platform with the deployed runner (``requestflow platform``) and
  stores that snapshot in the results store, and copies the weights and images the sweep's points need into the
  board's work dir (keyed by sha256: copied once).
* ``ClocksOperator`` pins the clocks to their maximum (a sweep's setup task) or restores them (its teardown task,
  which Airflow runs even when points fail or the run is marked failed). The board side keeps the original values
  and a set of holders, so two sweeps on one board do not unpin each other's clocks; what could not be pinned is
  reported with the reason and never claimed.

Board-side commands are the runner's own CLI (``requestflow platform``, ``clocks``, ``cooldown``), which print one
JSON document; ``sudo -n`` is used for clocks when the board's Connection says ``sudo``.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from typing import TYPE_CHECKING

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from operators.board_hook import board_for
from requestflow.results.database import CONN_ID

if TYPE_CHECKING:
    from operators.bundle import Bundle

# every board task has a deadline (issue #22): Airflow's execution_timeout, unless the task is given its own
PROVISION_TIMEOUT = dt.timedelta(hours=3)  # a bundle, the runner's installation (1 h at most), gc, the data
CLOCKS_TIMEOUT = dt.timedelta(minutes=15)  # a few board commands of 120 s at most each


def board_cli(board, args: list[str], *, sudo: bool = False, timeout: float | None = 120) -> dict:
    """Run ``requestflow <args>`` with the board's deployed runner; its one JSON document."""
    from operators.deploy import runner_python

    command = " ".join(shlex.quote(a) for a in [runner_python(board), "-m", "requestflow.cli", *args])
    if sudo:
        command = f"sudo -n {command}"
    result = board.run(command, timeout=timeout, warn=True)
    if result.return_code != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"board {board.settings.name}: `requestflow {args[0]}` exited {result.return_code}: "
                           f"{last[0]}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"board {board.settings.name}: `requestflow {args[0]}` did not print JSON: "
                           f"{result.stdout[:200]!r}") from None


def describe_platform(snapshot: dict) -> str:
    known = snapshot.get("board") or {}
    clusters = ", ".join(f"{c.get('name', '?')} {c['cpus']} @ {c['max_khz'] or '?'} kHz"
                         for c in snapshot.get("clusters", []))
    name = known.get("name") or snapshot.get("board_model") or f"{known.get('id', 'unknown')} board"
    return (f"{name}: {snapshot.get('cpu_model')}, "
            f"{snapshot.get('cpu_count')} CPUs ({clusters}), {snapshot.get('os')}, {snapshot.get('arch')}")


def provision_runtimes(board, points, base: Bundle | None, log=print,
                       failed=None) -> tuple[dict[str, str], dict[str, str]]:
    """Every runtime the board's ``points`` name, deployed on ``board`` (reused while unchanged): (spec -> the
    board-side Python of its runner, spec -> why it could not be installed). ``base``: the board's runner bundle
    (None for the local board: this machine's is built here, once a spec needs it: a spec requestflow excludes on
    this machine is refused before). A spec that fails (issue #17) fails only its points: ``failed(spec, points,
    error)`` decides (it re-raises an error a retry may fix, unless it is the task's last attempt, and stores the
    points failed); the others are deployed."""
    import platform
    import sys

    from operators.bundle import build_bundle, normalize_arch
    from operators.deploy import deploy_runner
    from operators.runtime_spec import check_target, point_specs, runtime_bundle

    pythons, failures = {}, {}
    for spec in point_specs(points):
        try:
            if base is None:  # this machine: what requestflow excludes here is known before a bundle is built
                check_target(spec, normalize_arch(platform.machine()), f"{sys.version_info[0]}.{sys.version_info[1]}")
                base = build_bundle(None, log=log)
            pythons[spec.text] = deploy_runner(board, runtime_bundle(base, spec, log=log), log=log)
        except Exception as exc:
            if failed is None:
                raise
            failed(spec.text, [p for p in points if p.get("runtime") == spec.text], exc)
            failures[spec.text] = f"{type(exc).__name__}: {exc}"
            log(f"board {board.settings.name}: runtime {spec} NOT installed, its points stored failed: {exc}")
            continue
        log(f"board {board.settings.name}: runtime {spec}: {pythons[spec.text]}")
    return pythons, failures


class RuntimeInstallFailed(AirflowFailException):
    """A runtime spec's runner could not be installed on a board (issue #17): the error its points are stored with;
    the board's other points run."""


class ProvisionBoardOperator(BaseOperator):
    """Deploy the runner, detect and store the platform, copy the points' data to the board."""

    template_fields = ("points",)
    ui_color = "#fdebd0"

    def __init__(self, *, board_conn_id: str, points: list[dict] | None = None, results_conn_id: str = CONN_ID,
                 data_dir: str | None = None, **kwargs) -> None:
        if kwargs.get("execution_timeout") is None:
            kwargs["execution_timeout"] = PROVISION_TIMEOUT
        super().__init__(**kwargs)
        self.board_conn_id = board_conn_id
        self.points = points
        self.results_conn_id = results_conn_id
        self.data_dir = data_dir

    def execute(self, context) -> dict:
        from operators.results_hook import fail_points_on_last_attempt, user_errors_are_final

        self._stored: list[dict] = []  # points already stored failed (a runtime that could not be installed)
        try:
            with user_errors_are_final():
                return self._provision(context)
        except Exception as exc:  # no attempt left (or a user error): the points fail
            fail_points_on_last_attempt(self, context, [p for p in self.points or [] if p not in self._stored], exc)
            raise

    def _runtime_failed(self, context):
        """``provision_runtimes``' ``failed``: a runtime spec that cannot be installed fails its points only, stored
        with its error (``RunPointOperator`` skips them), once no retry can help (a refusal, or the last attempt);
        before that, the error fails the task, which Airflow retries."""
        from operators.results_hook import fail_points_on_last_attempt
        from requestflow.errors import UserError

        def failed(spec: str, points: list[dict], exc: Exception) -> None:
            ti = context.get("ti")
            if not (isinstance(exc, UserError) or ti is None or ti.try_number > self.retries):
                raise exc
            error = RuntimeInstallFailed(f"board {self.board_conn_id}: runtime {spec} could not be installed: "
                                         f"{type(exc).__name__}: {exc}")
            fail_points_on_last_attempt(self, context, points, error)
            self._stored += points
        return failed

    def _provision(self, context) -> dict:
        from operators import point_data
        from operators.board_hook import LocalBoard
        from operators.bundle import board_target, build_bundle
        from operators.data_push import push_data
        from operators.deploy import deploy_runner
        from operators.results_hook import ResultsHook
        from requestflow.results.boards import record_platform

        board = board_for(self.board_conn_id)
        name = board.settings.name
        try:
            # the local board runs this very installation: no bundle to build or deploy
            bundle = None if isinstance(board, LocalBoard) else build_bundle(board_target(board), log=self.log.info)
            python = deploy_runner(board, bundle, log=self.log.info)
            self.log.info("board %s: runner %s", name, python)
            runtimes, failed = provision_runtimes(board, self.points, bundle, log=self.log.info,
                                                  failed=self._runtime_failed(context))  # the points' specs
            self._collect_garbage(board)
            snapshot = board_cli(board, ["platform", "--root", board.settings.sysfs_root])
            self.log.info("board %s: %s", name, describe_platform(snapshot))
            with ResultsHook(self.results_conn_id).engine() as engine:
                record_platform(engine, name, "local" if isinstance(board, LocalBoard) else "ssh", snapshot)
            data = None
            if self.points:
                shipment = point_data.files_for_points(self.points, point_data.controller_data_dir(self.data_dir))
                data = push_data(board, shipment.data, log=self.log.info, cache_files=shipment.cache)
                self.log.info("board %s: %d data file(s) in %s, %d downloaded weights file(s) in its cache", name,
                              len(shipment.data), data, len(shipment.cache))
            return {"board": name, "python": python, "runtimes": runtimes, "failed_runtimes": failed, "data_dir": data,
                    "known_board": (snapshot.get("board") or {}).get("id"), "arch": snapshot.get("arch")}
        finally:
            board.close()


    def _collect_garbage(self, board) -> None:
        """Old runners, finished job folders and unlinked blobs out of the work dir (``operators.board_gc``), as
        the board's extras ``gc_keep_runners`` / ``gc_keep_days`` say. A failure is only logged: the board can
        still run its points."""
        from operators.board_gc import collect_garbage

        s = board.settings
        try:
            collect_garbage(board, s.gc_keep_runners, s.gc_keep_days, log=self.log.info)
        except Exception as exc:  # noqa: BLE001 - housekeeping must not fail a sweep
            self.log.warning("board %s: cleaning the work dir failed: %s", s.name, exc)


class ClocksOperator(BaseOperator):
    """Pin a board's CPU/GPU clocks to their maximum (``action="pin"``) or restore them (``"restore"``).

    The holder is ``<dag_id>/<run_id>``. Before acting, holders whose run has ended are released: a sweep whose
    teardown could not reach its board (it went away mid-sweep) leaves its holder behind, and the next sweep on that
    board, at its pin or at its restore, gives the clocks back.
    """

    template_fields = ("holder",)
    ui_color = "#e8daef"

    def __init__(self, *, board_conn_id: str, action: str, holder: str = "{{ dag.dag_id }}/{{ run_id }}",
                 results_conn_id: str = CONN_ID, **kwargs) -> None:
        if kwargs.get("execution_timeout") is None:
            kwargs["execution_timeout"] = CLOCKS_TIMEOUT
        super().__init__(**kwargs)
        if action not in ("pin", "restore"):
            raise ValueError(f"ClocksOperator action must be pin or restore, got {action!r}")
        self.board_conn_id = board_conn_id
        self.action = action
        self.holder = holder
        self.results_conn_id = results_conn_id

    def execute(self, context) -> dict:
        from operators.results_hook import user_errors_are_final

        with user_errors_are_final():
            return self._execute(context)

    def _execute(self, context) -> dict:
        from operators.results_hook import ResultsHook
        from requestflow.results.sweeps import record_sweep_info

        board = board_for(self.board_conn_id)
        s = board.settings
        where = ["--state", f"{s.work_dir}/clocks.json", "--root", s.sysfs_root]
        try:
            for holder in self._ended_holders(board_cli(board, ["clocks", "status", *where]), context.get("ti")):
                released = board_cli(board, ["clocks", "restore", *where, "--holder", holder], sudo=s.sudo)
                self.log.warning("board %s: released the clocks held by %s, a run that has ended (its teardown "
                                 "could not restore them): %s", s.name, holder,
                                 "restored" if released.get("restored") else released.get("reason"))
            report = board_cli(board, ["clocks", self.action, *where, "--holder", self.holder], sudo=s.sudo)
        finally:
            board.close()
        for line in clock_lines(report):
            self.log.info("board %s: %s", s.name, line)
        dag = context.get("dag")
        with ResultsHook(self.results_conn_id).engine() as engine:
            record_sweep_info(engine, context["run_id"], dag.dag_id if dag else None, s.name,
                              f"clocks_{self.action}", report)
        return report

    def _ended_holders(self, status: dict, ti) -> list[str]:
        """Holders (``dag_id/run_id``) other than this run whose Dag run is no longer queued or running."""
        ended = []
        for holder in status.get("holders") or []:
            if holder == self.holder or "/" not in holder or ti is None:
                continue
            dag_id, run_id = holder.split("/", 1)
            try:
                state = ti.get_dagrun_state(dag_id, run_id)
            except Exception as exc:  # unknown to this Airflow: leave it, and say so
                self.log.warning("clocks holder %s: run state unknown (%s); left in place", holder, exc)
                continue
            if str(state).lower() not in ("queued", "running"):
                ended.append(holder)
        return ended


def clock_lines(report: dict) -> list[str]:
    """One readable line per device of a clocks report (pinned, or why not), plus the report's own reason."""
    lines = [f"clocks: {report['reason']}"] if report.get("reason") else []
    for kind in ("cpus", "gpus"):
        for device in report.get(kind) or []:
            label = device.get("cpu", device.get("name", "?"))
            if device.get("pinned"):
                speed = f"{device['khz']} kHz" if device.get("khz") else f"{device.get('hz')} Hz"
                lines.append(f"{kind[:-1]} {label}: pinned by {device.get('method')} at {speed}"
                             + (f" ({device['warning']})" if device.get("warning") else ""))
            elif "pinned" in device:
                lines.append(f"{kind[:-1]} {label}: NOT pinned: {device.get('reason')}")
            elif device.get("restored"):
                lines.append(f"{kind[:-1]} {label}: restored")
            elif "restored" in device:
                lines.append(f"{kind[:-1]} {label}: NOT restored: {device.get('reason')}")
    return lines
