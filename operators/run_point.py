"""RunPointOperator: one benchmark point on one board, its result loaded into the results store.

Thin, as Airflow's operators should be: ``__init__`` stores arguments, the work happens in ``execute``, the board
hook owns the connection, ``on_kill`` stops the job on the board. The runner runs detached on the board
(``board_jobs``) and its output streams into the task log.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from pathlib import Path

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from operators import board_jobs
from operators.board_hook import board_for
from requestflow.results.database import CONN_ID

POINT_FIELDS = ("model", "backend", "mode", "precision", "release", "repetitions", "warmup", "batch_size",
                "threads", "cpus", "limit")


def point_label(point: dict) -> str:
    return f"{point['model']} {point['backend']} {point['mode']}"


def runner_command(python: str, point: dict, out: str = "result.json") -> str:
    """The board-side command line of a point; every value quoted."""
    unknown = set(point) - set(POINT_FIELDS) - {"board"}
    if unknown:
        raise ValueError(f"unknown point field {sorted(unknown)[0]!r}")
    args = [python, "-m", "requestflow.cli", "run", "--quiet", "--out", out]
    for name in POINT_FIELDS:
        value = point.get(name)
        if value is not None and value != "":
            args += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(a) for a in args)


class RunPointOperator(BaseOperator):
    template_fields = ("point", "sweep_id")
    ui_color = "#d6eaf8"

    def __init__(self, *, board_conn_id: str, point: dict, sweep_id: str = "{{ run_id }}",
                 results_conn_id: str = CONN_ID, data_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.board_conn_id = board_conn_id
        self.point = point
        self.sweep_id = sweep_id
        self.results_conn_id = results_conn_id
        self.data_dir = data_dir
        self._board = None
        self._job_dir: str | None = None

    def execute(self, context) -> dict:
        import os

        from operators.results_hook import ResultsHook

        board = self._board = board_for(self.board_conn_id)
        settings = board.settings
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.sweep_id}/{point_label(self.point)}")
        self._job_dir = job_dir = f"{settings.work_dir}/runs/{slug}"
        env = {"REQUESTFLOW_CACHE": f"{settings.work_dir}/cache", "TF_CPP_MIN_LOG_LEVEL": "2"}
        data_dir = self.data_dir or os.environ.get("REQUESTFLOW_DATA")
        if data_dir:
            env["REQUESTFLOW_DATA"] = data_dir
        command = runner_command(settings.python, self.point)
        self.log.info("board %s: %s (in %s)", settings.name, command, job_dir)
        board_jobs.start(board, job_dir, command, env)
        lines: list[str] = []

        def show(line: str) -> None:
            lines.append(line)
            self.log.info("[%s] %s", settings.name, line)

        code = board_jobs.wait(board, job_dir, show)
        if code == 2:  # the runner refused its input: retrying cannot help
            raise AirflowFailException(f"board {settings.name} refused the point: {lines[-1] if lines else code}")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "result.json"
            try:
                board.get(f"{job_dir}/result.json", str(local))
            except (OSError, FileNotFoundError) as exc:
                raise RuntimeError(f"board {settings.name}: the runner exited {code} without a result "
                                   f"({exc})") from None
            document = json.loads(local.read_text())
        report = ResultsHook(self.results_conn_id).load([(f"{settings.name}:{job_dir}", document)],
                                                        board=settings.name, sweep=self.sweep_id,
                                                        dag_id=context["dag"].dag_id if context.get("dag") else None)
        summary = {"board": settings.name, "point": point_label(self.point), "status": document["status"],
                   "loaded": bool(report.loaded)}
        if "performance" in document:
            summary["median_ms"] = round(document["performance"]["median"] * 1e3, 4)
        if "accuracy" in document:
            summary["top1"] = document["accuracy"]["top1"]
        if document["status"] != "ok":  # stored with its error; the sweep goes on with the other points
            raise AirflowFailException(f"point failed on {settings.name}: {document['error']['type']}: "
                                       f"{document['error']['message']}")
        board.close()
        return summary

    def on_kill(self) -> None:
        if self._board is not None and self._job_dir is not None:
            self.log.info("stopping the job on board %s", self._board.settings.name)
            board_jobs.kill(self._board, self._job_dir)
