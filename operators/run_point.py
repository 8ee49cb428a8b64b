"""RunPointOperator: one benchmark point on one board, its result loaded into the results store.

Thin, as Airflow's operators should be: ``__init__`` stores arguments, the work happens in ``execute``, the board
hook owns the connection, ``on_kill`` stops the job on the board. The runner runs detached on the board
(``board_jobs``) and its output streams into the task log.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from operators import board_jobs
from operators.board_hook import board_for
from requestflow.board.catalogue import point_label
from requestflow.results.database import CONN_ID

# A run point's deadline (issue #22): the backend's set-up, plus the longest its mode may measure; past it, a runner
# that has printed nothing for HEARTBEAT_S is killed ("timed out after N s"). Airflow's execution_timeout, derived
# from it, is the outer guard.
MODE_CAPS_S = {"performance": 2 * 3600.0, "accuracy": 6 * 3600.0}
SETUP_S = 600.0
HEARTBEAT_S = 120.0
OUTER_MARGIN_S = 900.0  # execution_timeout beyond the deadline: connecting, identifying, cool-down, storing

POINT_FIELDS = ("model", "backend", "mode", "precision", "release", "repetitions", "warmup", "batch_size",
                "threads", "cpus", "cluster", "limit", "variant")


def runner_command(python: str, point: dict, out: str | None = "result.json", armcl_build: str | None = None) -> str:
    """The board-side command line of a point (``out=None``: ``--identify``, print its context); values quoted.
    ``armcl_build``: the folder, on the board, of the ArmCL build the point's ``armcl_build`` names."""
    unknown = set(point) - set(POINT_FIELDS) - {"board", "armcl_build", "weights"}
    if unknown:
        raise ValueError(f"unknown point field {sorted(unknown)[0]!r}")
    args = [python, "-m", "requestflow.cli", "run", "--quiet", "--offline"]
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
    return " ".join(shlex.quote(a) for a in args)


class RunPointOperator(BaseOperator):
    """One point on one board: (resume check,) cool-down, the runner detached on the board with its output in the
    task log, its result document loaded into the results store.

    Failures: the runner refusing its input (exit 2) fails at once; a document with ``status: failed`` is stored
    and fails the task without retry (it is a result); anything else (board unreachable, connection lost, runner
    killed without a document) is transient and retried; on the last attempt it is stored in ``point_failures``.

    A job lost on the board (``board_jobs.JobLost``: its supervising shell killed, the board rebooted) is not
    waited for: a complete, schema-valid document it wrote is the point's result, anything else a failed attempt
    naming the loss. The wait has a deadline, ``setup_s`` + ``mode_caps_s[mode]``: a runner past it that printed
    nothing for ``heartbeat_s`` is killed and the attempt fails "timed out after N s"; unless given,
    ``execution_timeout`` is that deadline + the cool-down's + ``OUTER_MARGIN_S``.

    A retry takes up what an earlier attempt's runner did (``_earlier_attempt``): one still running is followed to
    its end; a successful document it wrote is loaded (a no-op if it is stored already) instead of measuring again,
    so a point has one result per sweep run. Clearing a finished task therefore reloads its result; a new
    measurement is a new sweep run.
    """

    template_fields = ("point", "sweep_id", "resume", "cooldown_c")
    ui_color = "#d6eaf8"

    def __init__(self, *, board_conn_id: str, point: dict, sweep_id: str = "{{ run_id }}", resume: bool = False,
                 cooldown_c: float | None = None, cooldown_timeout_s: float = 600,
                 armcl_build_tasks: dict[str, str] | None = None, results_conn_id: str = CONN_ID,
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
        self.armcl_build_tasks = armcl_build_tasks or {}
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
        """Seconds the point's runner may take: set-up + its mode's cap (the longest cap for a mode not known yet,
        a templated point)."""
        point = self.point if point is None else point
        mode = point.get("mode") if isinstance(point, dict) else None
        return self.setup_s + self.mode_caps_s.get(mode, max(self.mode_caps_s.values()))

    def execute(self, context) -> dict:
        from operators.results_hook import fail_points_on_last_attempt, user_errors_are_final

        dag_id = context["dag"].dag_id if context.get("dag") else None
        try:
            with user_errors_are_final():
                return self._execute(context, dag_id)
        except Exception as exc:  # a point whose failed document was stored needs nothing more
            fail_points_on_last_attempt(self, context, [] if self._stored_document else [self.point], exc,
                                        sweep=self.sweep_id)
            raise
        finally:
            if self._board is not None:
                self._board.close()

    def _execute(self, context, dag_id: str | None) -> dict:
        from operators.deploy import runner_location

        board = self._board = board_for(self.board_conn_id)
        settings = board.settings
        python, work_dir = runner_location(board)
        # the runner reads only its work dir: the data provisioning copied there, its own cache
        env = {"REQUESTFLOW_CACHE": f"{work_dir}/cache", "REQUESTFLOW_DATA": f"{work_dir}/data",
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        label = point_label(self.point)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.sweep_id}/{label}")
        job_dir = f"{work_dir}/runs/{slug}"
        ti = context.get("ti")
        if ti is not None and ti.try_number > 1:
            previous = self._earlier_attempt(board, job_dir, label, ti.try_number)
            if previous is not None:
                return self._store(dag_id, settings.name, label, job_dir, previous)
        armcl_build = self._armcl_build(context)
        if _true(self.resume):
            stored = self._stored_result(board, python, env, armcl_build)
            if stored is not None:
                self.log.info("board %s: %s is already stored (result %d): skipped (resume)", settings.name,
                              label, stored)
                return {"board": settings.name, "point": label, "status": "already stored", "result_id": stored}
        if self.cooldown_c not in (None, ""):
            self._cool_down(board, python)
        self._job_dir = job_dir
        command = runner_command(python, self.point, armcl_build=armcl_build)
        self.log.info("board %s: %s (in %s)", settings.name, command, job_dir)
        board_jobs.start(board, job_dir, command, env)
        lines: list[str] = []

        def show(line: str) -> None:
            lines.append(line)
            self.log.info("[%s] %s", settings.name, line)

        try:
            code = self._wait(board, job_dir, show)
        except board_jobs.JobLost as lost:
            document = self._lost_document(board, job_dir, label, lost, lines)
            return self._store(dag_id, settings.name, label, job_dir, document)
        if code == 2:  # the runner refused its input: retrying cannot help
            raise AirflowFailException(f"board {settings.name} refused the point: {lines[-1] if lines else code}")
        document, missing = board_jobs.fetch_document(board, job_dir)
        if document is None:
            raise RuntimeError(board_jobs.no_document(settings.name, code, missing, lines))
        return self._store(dag_id, settings.name, label, job_dir, document)

    def _wait(self, board, job_dir: str, show) -> int:
        """``board_jobs.wait`` with the point's deadline; its timeout raised with the board and the point named."""
        try:
            return board_jobs.wait(board, job_dir, show, deadline_s=self.deadline_s(), heartbeat_s=self.heartbeat_s)
        except board_jobs.JobTimedOut as exc:
            raise RuntimeError(f"board {board.settings.name}: {point_label(self.point)}: {exc}") from None

    def _lost_document(self, board, job_dir: str, label: str, lost: board_jobs.JobLost, lines: list[str]) -> dict:
        """The document of a lost job when the runner finished writing it (complete and schema-valid), else the
        RuntimeError of a failed attempt, which Airflow retries."""
        from requestflow.board.schema import validate_document
        from requestflow.errors import UserError

        name = board.settings.name
        self.log.warning("board %s: %s: %s", name, label, lost)
        document, why = board_jobs.fetch_document(board, job_dir)
        if document is not None:
            try:
                validate_document(document)
            except UserError as exc:
                document, why = None, f"{job_dir}/result.json is not a complete result: {exc}"
        if document is None:
            last = f"; its last output: {' | '.join(lines[-3:])}" if lines else ""
            raise RuntimeError(f"board {name}: {label}: the runner's job was lost ({lost.reason}) without a "
                               f"result ({why}){last}") from None
        self.log.info("board %s: %s: the runner had finished its document: it is the result", name, label)
        return document

    def _earlier_attempt(self, board, job_dir: str, label: str, attempt: int) -> dict | None:
        """On a retry: the successful document of the runner an earlier attempt started, else None.

        An attempt killed hard (SIGKILL, a worker lost) never ran ``on_kill``, and one that lost its connection
        left its runner measuring: a runner still running is watched to its end (its output into this attempt's
        log; never a second runner beside it). A runner that finished while its attempt failed after it (the store
        down mid-load, the reply of a committed load lost) left its document: it is loaded - a no-op if stored
        already - rather than the point measured a second time in this sweep. Anything else it left (a failed
        document, which a new attempt may well turn into a result) is removed, so that it cannot be taken for
        the new runner's."""
        name = board.settings.name
        if board_jobs.running(board, job_dir):
            self.log.info("board %s: %s: attempt %d follows the runner an earlier attempt started", name, label,
                          attempt)
            self._job_dir = job_dir  # on_kill stops it
            try:
                self._wait(board, job_dir, lambda line: self.log.info("[%s] %s", name, line))
            except board_jobs.JobLost as lost:  # its document, if any, is judged below
                self.log.warning("board %s: %s: %s", name, label, lost)
        document, missing = board_jobs.fetch_document(board, job_dir)
        if document is None:
            self.log.info("board %s: no result of an earlier attempt (%s)", name, missing)
        elif document.get("status") == "ok":
            self.log.info("board %s: %s: attempt %d stores the result an earlier attempt's runner wrote", name,
                          label, attempt)
            return document
        board.run(f"rm -f {shlex.quote(job_dir)}/result.json")
        return None

    def _store(self, dag_id: str | None, board_name: str, label: str, job_dir: str, document: dict) -> dict:
        from operators.results_hook import ResultsHook

        report = ResultsHook(self.results_conn_id).load([(f"{board_name}:{job_dir}", document)],
                                                        board=board_name, sweep=self.sweep_id, dag_id=dag_id)
        summary = {"board": board_name, "point": label, "status": document["status"],
                   "loaded": bool(report.loaded)}
        if "performance" in document:
            summary["median_ms"] = round(document["performance"]["median"] * 1e3, 4)
        if "accuracy" in document:
            summary["top1"] = document["accuracy"]["top1"]
        if document["status"] != "ok":  # stored with its error; the sweep goes on with the other points
            self._stored_document = True
            raise AirflowFailException(f"point failed on {board_name}: {document['error']['type']}: "
                                       f"{document['error']['message']}")
        return summary

    def _armcl_build(self, context) -> str | None:
        """The board's folder of the ArmCL build the point names: what its build task returned (XCom)."""
        name = self.point.get("armcl_build")
        if not name:
            return None
        if name not in self.armcl_build_tasks:
            raise AirflowFailException(f"the point names the ArmCL build {name!r}, which no task of this sweep makes "
                                       f"(known: {', '.join(self.armcl_build_tasks) or 'none'})")
        built = context["ti"].xcom_pull(task_ids=self.armcl_build_tasks[name])
        if not built or not built.get("path"):
            raise AirflowFailException(f"the ArmCL build {name} of board {self.board_conn_id} did not complete")
        return built["path"]

    def _stored_result(self, board, python: str, env: dict, armcl_build: str | None) -> int | None:
        """Resume: the point's identity, computed on the board by the runner (``--identify``), looked up in the
        store; the id of its successful result, or None."""
        from operators.results_hook import ResultsHook
        from requestflow.results.identity import point_id
        from requestflow.results.sweeps import stored_ok

        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
        result = board.run(exports + runner_command(python, self.point, out=None, armcl_build=armcl_build),
                           warn=True, timeout=600)
        if result.return_code == 2:
            raise AirflowFailException(f"board {board.settings.name} refused the point: "
                                       f"{result.stderr.strip().splitlines()[-1:]}")
        if result.return_code != 0:
            raise RuntimeError(f"board {board.settings.name}: identifying the point failed "
                               f"({result.return_code}): {result.stderr.strip()[-300:]}")
        context = json.loads(result.stdout.strip().splitlines()[-1])["context"]
        with ResultsHook(self.results_conn_id).engine() as engine:
            return stored_ok(engine, point_id(board.settings.name, context))

    def _cool_down(self, board, python: str) -> None:
        from operators.provision import board_cli

        s = board.settings
        report = board_cli(board, ["cooldown", "--below", str(self.cooldown_c), "--timeout",
                                   str(self.cooldown_timeout_s), "--root", s.sysfs_root],
                           timeout=self.cooldown_timeout_s + 60)
        if report.get("reached") is None:
            self.log.warning("board %s: no cool-down (%s)", s.name, report.get("reason"))
        elif report["reached"]:
            self.log.info("board %s: %.1f C after %.0f s of cool-down (below %s C)", s.name, report["celsius"],
                          report.get("waited_s", 0), self.cooldown_c)
        else:
            self.log.warning("board %s: still %.1f C after %.0f s; running anyway (the result records its "
                             "temperatures)", s.name, report["celsius"], report.get("waited_s", 0))

    def on_kill(self) -> None:
        if self._board is not None and self._job_dir is not None:
            self.log.info("stopping the job on board %s", self._board.settings.name)
            board_jobs.kill(self._board, self._job_dir)


def _true(value) -> bool:
    """A templated flag: True, or the text a template renders it to."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes")
