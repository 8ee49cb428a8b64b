"""One run of a DAG through the local Airflow, from the terminal (``requestflow sweep``): ``dag.test()`` in a
subprocess (``python -m operators.local.dag_run run-dag``), one process, the tasks one after the other, their logs
on the terminal; refused when a live scheduler on the same metadata database would run it too. SIGINT/SIGTERM stop
it cleanly (``operators.local.stopping``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from operators.config import ROOT
from operators.local import stopping
from requestflow.errors import UserError

DEFAULT_DAG = "mobilenets_sweep"
# A sweep run from the terminal shows its tasks' own lines; Airflow's bookkeeping only when something is wrong
QUIET_LOGGERS = ("airflow.api_fastapi=warning airflow.dag_processing=warning airflow.serialization=warning "
                 "airflow.models=warning airflow.task.operators.airflow=warning task=warning "
                 "py.warnings=error")


def scheduler_conflict(env: dict[str, str], dag_id: str) -> str | None:
    """Why ``dag.test()`` must not run now, if it must not: a live scheduler on the same metadata database also
    schedules the running runs of unpaused DAGs, test runs included, so the same points could run twice at once."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), connect_timeout=15) as connection:
        alive = connection.execute("SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
                                   "AND latest_heartbeat > now() - interval '60 seconds'").fetchone()[0]
        row = connection.execute("SELECT is_paused FROM dag WHERE dag_id = %s", (dag_id,)).fetchone()
    if alive and row is not None and not row[0]:
        return (f"an Airflow scheduler is running on this metadata database and {dag_id} is unpaused: trigger the "
                f"sweep from the UI (or `airflow dags trigger {dag_id} --conf ...`), or pause {dag_id}, or stop "
                "the scheduler first")
    return None


def run_dag(env: dict[str, str], conf: dict, dag_id: str = DEFAULT_DAG) -> dict:
    """Run ``dag_id`` once with ``conf`` through Airflow (``dag.test()`` in a subprocess with ``env``), its output
    on this terminal. The outcome: ``{"run_id", "state", "failed": [...]}``; UserError when Airflow refused the
    DAG or its conf (unknown DAG or param, a value the Params reject), or a scheduler would run it too."""
    conflict = scheduler_conflict(env, dag_id)
    if conflict:
        raise UserError(conflict)
    with tempfile.TemporaryDirectory(prefix="rf-run-") as tmp:
        outcome_file = Path(tmp) / "outcome.json"
        process = subprocess.Popen([sys.executable, "-m", "operators.local.dag_run", "run-dag", dag_id,
                                    json.dumps(conf), str(outcome_file)], cwd=str(ROOT),
                                   env={"AIRFLOW__LOGGING__NAMESPACE_LEVELS": QUIET_LOGGERS,
                                        "AIRFLOW__LOGGING__CALLSITE_PARAMETERS": "", **os.environ, **env},
                                   stdin=subprocess.DEVNULL)
        stopped_by = stopping.wait(process, _stop_file(outcome_file))  # SIGINT/SIGTERM stop the run (#22)
        outcome = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
    if stopped_by is not None:
        stopping.end_as(stopped_by)
    if outcome is None:
        raise RuntimeError(f"the Airflow run of {dag_id} ended (exit {process.returncode}) without an outcome")
    if outcome.get("refused"):
        raise UserError(outcome["refused"])
    return outcome


def _stop_file(outcome_file: Path) -> Path:
    """Beside the run's outcome file: written when the command asks the run to stop (``operators.stopping``)."""
    return outcome_file.with_name("stop")


# -- inside the Airflow process -----------------------------------------------------------------------------------

def _run_dag_here(dag_id: str, conf: dict) -> dict:
    """Runs in the subprocess, with the environment set before Airflow is imported."""
    import copy
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the results store's schema check, at every task

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        path, error = next(iter(bag.import_errors.items()))
        return {"refused": f"the DAGs do not import: {path}: {str(error).strip().splitlines()[-1]}"}
    dag = bag.dags.get(dag_id)
    if dag is None:
        return {"refused": f"no DAG {dag_id!r} in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}; "
                           f"known: {', '.join(sorted(bag.dags))}"}
    unknown = sorted(set(conf) - set(dag.params.keys()))
    if unknown:
        return {"refused": f"DAG {dag_id} has no param {unknown[0]!r}; its params: {', '.join(dag.params.keys())}"}
    params = copy.deepcopy(dag.params)
    try:
        for key, value in conf.items():
            params[key] = value
        params.validate()
    except ParamValidationError as exc:
        return {"refused": f"DAG {dag_id} refused its conf: {str(exc).strip().splitlines()[0]}"}
    run = dag.test(run_conf=conf)
    return {"run_id": run.run_id, "state": str(run.state), "failed": _failed_tasks(dag_id, run.run_id)}


def _failed_tasks(dag_id: str, run_id: str) -> list[dict]:
    """Task instances of the run that did not succeed. The run's own state is not enough: Airflow decides it from
    the leaves alone (here the summary, which runs whatever happened, and the boards' clock teardowns)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                         TaskInstance.run_id == run_id)).all()
        return [{"task_id": ti.task_id, "map_index": ti.map_index, "label": ti.rendered_map_index,
                 "state": str(ti.state)}
                for ti in sorted(tis, key=lambda t: (t.task_id, t.map_index))
                if str(ti.state) not in ("success", "skipped")]


def _checked_schemas_once() -> None:
    """``jsonschema.validate`` checks the schema against its metaschema at every call, and Airflow's
    ``Param.resolve`` calls it for every Param whenever a ParamsDict is validated, dumped or compared: the sweep's
    form has dozens of Params, and dag.test serializes the DAG and each task's operator after it ran, each time
    comparing and printing ParamsDicts (issue #20: 16% of this process's profiled time in a one-point sweep,
    nearly all of it re-checking the same schemas). In this process a schema that passed the check is not checked
    again (it is keyed by its JSON text, so a schema changed in place is checked anew); every value is still
    validated against it, with the same errors as before."""
    import jsonschema
    from jsonschema import exceptions, validators

    original = jsonschema.validate
    checked: set = set()

    def validate(instance, schema, cls=None, *args, **kwargs):
        try:
            key = (cls, json.dumps(schema, sort_keys=True))
        except (TypeError, ValueError):  # not JSON: as before
            return original(instance, schema, cls, *args, **kwargs)
        if cls is None:
            cls = validators.validator_for(schema)
        if key not in checked:
            cls.check_schema(schema)  # SchemaError as before
            checked.add(key)
        error = exceptions.best_match(cls(schema, *args, **kwargs).iter_errors(instance))
        if error is not None:
            raise error

    validate.__wrapped__ = original
    jsonschema.validate = validate


def _quick_polls() -> Callable[[], None]:
    """dag.test's loop sleeps a whole second whenever no task is runnable: in every sweep at least twice, while
    the next round of its state update would find the ArmCL builds' empty expansion and the skipped gate resolved.
    Here its sleeps after a task ran grow from 0.05 s (0.05, 0.1, 0.2, 0.4, 0.8, then 1 s as before), so a task
    waiting on a retry delay or a deferral is still polled once a second; every other sleep of the process is
    unchanged (only a call from dag.test's own frame is shortened). Returns what resets the backoff: call it when
    a task has run."""
    import inspect
    import time

    from airflow.sdk.definitions.dag import DAG

    test_code = inspect.unwrap(DAG.test).__code__
    sleep = time.sleep
    idle = [0]

    def polling_sleep(seconds: float) -> None:
        if seconds == 1 and sys._getframe(1).f_code is test_code:
            seconds = min(1.0, 0.05 * 2 ** idle[0])
            idle[0] += 1
        sleep(seconds)

    time.sleep = polling_sleep
    return lambda: idle.__setitem__(0, 0)


def _exit(code: int) -> None:
    """End this process as the interpreter would, without its final teardown: the run is over and its outcome
    written; what is left is Python freeing every module and object of Airflow one by one (5 s of a one-point
    sweep's 65 s on a loaded machine, issue #20). Non-daemon threads are waited for and every atexit handler runs
    (Airflow's ORM disposal, logging's flush, weakref finalizers such as the in-process API's shutdown), then
    stdout and stderr are flushed (``exit_now``): what the interpreter would have done before freeing everything."""
    import atexit
    import threading

    from requestflow.board.tensorflow_import import exit_now

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    exit_now(code)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "run-dag":
        print("usage: python -m operators.local.dag_run run-dag DAG_ID CONF_JSON OUTCOME_FILE", file=sys.stderr)
        return 2
    dag_id, conf, outcome_file = argv[1], json.loads(argv[2]), Path(argv[3])
    _checked_schemas_once()
    stopping.make_stoppable(_stop_file(outcome_file), on_task_end=_quick_polls())
    outcome = _run_dag_here(dag_id, conf)
    outcome_file.write_text(json.dumps(outcome) + "\n")
    return 0 if outcome.get("state") == "success" and not outcome.get("failed") else 1


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
