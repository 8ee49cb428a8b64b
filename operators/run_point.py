"""RunPointOperator: one benchmark point on one board, its result loaded into the results store.

Thin, as Airflow's operators should be: ``__init__`` stores arguments, ``execute`` turns them into calls of small
services (``point_steps``, ``board_reboot``, ``runner_job``: the runner detached on the board, its output streaming
into the task log) and their errors into Airflow's exceptions; ``on_kill`` stops the job on the board.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators import board_jobs, board_reboot, point_steps, runner_job
from operators.board_hook import board_for
from operators.point_steps import HEARTBEAT_S, MODE_CAPS_S, SETUP_S, runner_command
from requestflow.board.catalogue import point_label
from requestflow.results.database import CONN_ID

OUTER_MARGIN_S = 900.0  # execution_timeout beyond the deadline: connecting, identifying, cool-down, storing


class RunPointOperator(BaseOperator):
    """One point on one board: (resume check,) cool-down, the runner detached on the board with its output in the
    task log, its result document loaded into the results store.

    Failures: the runner refusing its input (exit 2) fails at once; a document with ``status: failed`` is stored
    and fails the task without retry (it is a result); anything else (board unreachable, connection lost, runner
    killed without a document) is transient and retried; on the last attempt it is stored in ``point_failures``.

    A job lost on the board (``board_jobs.JobLost``: its supervising shell killed, the board rebooted) is not
    waited for: a complete, schema-valid document it wrote is the point's result, anything else a failed attempt
    naming the loss. The wait has a deadline, ``setup_s`` + ``mode_caps_s[mode]`` at most, sooner once the
    runner's progress lines say how long the rest should take at its warm-up's pace (``board_jobs.wait``): a runner
    past it that printed nothing, progress lines included, for ``heartbeat_s`` is killed and the attempt fails
    "timed out after N s"; one that keeps making progress runs on, up to ``execution_timeout``, the outer guard:
    unless given, the cap's deadline + the cool-down's + ``OUTER_MARGIN_S``.

    A retry takes up what an earlier attempt's runner did (``point_steps.earlier_document``): one still running is
    followed to its end; a successful document it wrote is loaded (a no-op if it is stored already) instead of
    measuring again, so a point has one result per sweep run. Clearing a finished task therefore reloads its
    result; a new measurement is a new sweep run. Before anything else, a board that rebooted since its last point
    is checked again (``board_reboot``: the runner, the clocks pinned again, the sweep's finished points stored).
    """

    template_fields = ("point", "sweep_id", "resume", "cooldown_c")
    ui_color = "#d6eaf8"

    def __init__(self, *, board_conn_id: str, point: dict, sweep_id: str = "{{ run_id }}", resume: bool = False,
                 cooldown_c: float | None = None, cooldown_timeout_s: float = 600,
                 armcl_group: str | None = None, provision_task: str | None = None,
                 results_conn_id: str = CONN_ID,
                 mode_caps_s: dict[str, float] | None = None, setup_s: float = SETUP_S,
                 heartbeat_s: float = HEARTBEAT_S, **kwargs) -> None:
        self.mode_caps_s = {**MODE_CAPS_S, **(mode_caps_s or {})}
        self.setup_s = setup_s
        self.heartbeat_s = heartbeat_s
        if kwargs.get("execution_timeout") is None:
            kwargs["execution_timeout"] = dt.timedelta(
                seconds=self.deadline_s(point) + cooldown_timeout_s + OUTER_MARGIN_S)
        super().__init__(**kwargs)
        self.board_conn_id = board_conn_id
        self.armcl_group = armcl_group  # the task group whose mapped task made the sweep's ArmCL builds
        self.provision_task = provision_task  # its XCom's failed_runtimes: the runtime specs not installed
        self.point = point
        self.sweep_id = sweep_id
        self.resume = resume
        self.cooldown_c = cooldown_c
        self.cooldown_timeout_s = cooldown_timeout_s
        self.results_conn_id = results_conn_id
        self._board = None
        self._job_dir: str | None = None
        self._stored_document = False

    def deadline_s(self, point: dict | None = None) -> float:
        """Seconds the point's runner may take at most (``point_steps.deadline_s``)."""
        return point_steps.deadline_s(self.point if point is None else point, self.mode_caps_s, self.setup_s)

    def execute(self, context) -> dict:
        from operators.results_hook import fail_points_on_last_attempt, user_errors_are_final

        self._skip_without_its_build(context)
        try:
            with user_errors_are_final():
                return self._execute(context)
        except Exception as exc:  # a point whose failed document was stored needs nothing more
            fail_points_on_last_attempt(self, context, [] if self._stored_document else [self.point], exc,
                                        sweep=self.sweep_id)
            raise
        finally:
            if self._board is not None:
                self._board.close()

    def _execute(self, context) -> dict:
        from operators.deploy import runner_location

        dag_id = context["dag"].dag_id if context.get("dag") else None
        board = self._board = board_for(self.board_conn_id)
        name, label, log = board.settings.name, point_label(self.point), self.log.info
        python, work_dir = runner_location(board, self.point.get("runtime"))  # its runtime spec's runner, if any
        env = runner_job.runner_env(work_dir)
        folder = point_steps.job_dir(work_dir, self.sweep_id, label)
        waits = {"log": log, "deadline_s": self.deadline_s(), "heartbeat_s": self.heartbeat_s}
        board_reboot.check(board, work_dir, python, env, sweep=self.sweep_id, dag_id=dag_id, log=log,
                           holder=f"{dag_id}/{self.sweep_id}", results_conn_id=self.results_conn_id)
        ti = context.get("ti")
        try:
            document = None
            if ti is not None and ti.try_number > 1:
                self._job_dir = folder  # on_kill stops a runner it follows
                document = point_steps.earlier_document(board, folder, **waits)
            if document is None:
                armcl_build = self._armcl_build(context)
                if _true(self.resume):
                    identity = point_steps.identify(board, python, env, self.point, armcl_build)
                    stored = point_steps.stored_result(board, identity, self.results_conn_id)
                    if stored is not None:
                        log(f"board {name}: {label} is already stored (result {stored}): skipped (resume)")
                        return {"board": name, "point": label, "status": "already stored", "result_id": stored}
                if self.cooldown_c not in (None, ""):
                    point_steps.cool_down(board, float(self.cooldown_c), self.cooldown_timeout_s, log)
                command = runner_command(python, self.point, armcl_build=armcl_build,
                                         power_meter=board.settings.power_meter,
                                         power_rate_hz=board.settings.power_rate_hz,
                                         isolation=board.settings.isolation)
                log(f"board {name}: {command} (in {folder})")
                self._job_dir = folder
                document = self._document(runner_job.run(board, folder, command, env, **waits), label)
        except board_jobs.JobTimedOut as exc:
            raise RuntimeError(f"board {name}: {label}: {exc}") from None
        summary = {"point": label, **point_steps.store(self.results_conn_id, name, folder, document, self.sweep_id,
                                                       dag_id)}
        if document["status"] != "ok":  # stored with its error; the sweep goes on with the other points
            self._stored_document = True
            raise AirflowFailException(f"point failed on {name}: {document['error']['type']}: "
                                       f"{document['error']['message']}")
        return summary

    def _document(self, outcome: runner_job.Outcome, label: str) -> dict:
        """The runner's document, or the error that says why there is none."""
        if outcome.refused:  # the runner refused its input: retrying cannot help
            raise AirflowFailException(f"board {outcome.board} refused the point: "
                                       f"{outcome.lines[-1] if outcome.lines else outcome.code}")
        if outcome.document is None:
            raise RuntimeError(outcome.failure() if outcome.lost is None else
                               f"board {outcome.board}: {label}: {outcome.failure()}")
        if outcome.lost is not None:
            self.log.info("board %s: %s: the runner had finished its document: it is the result", outcome.board,
                          label)
        return outcome.document

    def _skip_without_its_build(self, context) -> None:
        """A point whose ArmCL build failed does not run: the build's task stored it failed, with the build's error
        (the board's other points run: ``sweep_tasks.builds_done``)."""
        name = self.point.get("armcl_build")
        built = self._builds(context) if name else {}
        if name in built and not (built[name] or {}).get("path"):
            raise AirflowSkipException(f"the ArmCL build {name} of board {self.board_conn_id} failed: the point is "
                                       "stored failed with the build's error (see the build's task)")
        runtime = self.point.get("runtime")  # a runtime spec provisioning could not install (issue #17): likewise
        if runtime and self.provision_task and runtime in (
                context["ti"].xcom_pull(task_ids=self.provision_task) or {}).get("failed_runtimes", {}):
            raise AirflowSkipException(f"runtime {runtime} could not be installed on board {self.board_conn_id}: "
                                       "the point is stored failed with its error (see the provision task)")

    def _builds(self, context) -> dict[str, dict | None]:
        """The sweep's ArmCL builds on the board: name -> what its build returned (``armcl_build.sweep_builds``)."""
        from operators.armcl_build import sweep_builds

        if getattr(self, "_built", None) is None:  # pulled once per try: the skip check and the command both read it
            self._built = sweep_builds(context["ti"], self.armcl_group) if self.armcl_group else {}
        return self._built

    def _armcl_build(self, context) -> str | None:
        """The board's folder of the ArmCL build the point names: what its build task returned (XCom)."""
        name = self.point.get("armcl_build")
        if not name:
            return None
        built = self._builds(context)
        if name not in built:
            raise AirflowFailException(f"the point names the ArmCL build {name!r}, which no task of this sweep makes "
                                       f"(the board's builds: {', '.join(built) or 'none'})")
        if not (built[name] or {}).get("path"):
            raise AirflowFailException(f"the ArmCL build {name} of board {self.board_conn_id} did not complete")
        return built[name]["path"]

    def on_kill(self) -> None:
        if self._board is not None and self._job_dir is not None:
            self.log.info("stopping the job on board %s", self._board.settings.name)
            board_jobs.kill(self._board, self._job_dir)


def _true(value) -> bool:
    """A templated flag: True, or the text a template renders it to."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes")
