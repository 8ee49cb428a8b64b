"""``requestflow sweep`` through a running scheduler (issue #18; docs/orchestration.md): the run triggered through
Airflow's REST API as a user would (``POST /api/v2/dags/{dag}/dagRuns``: a ``manual`` run, triggered by
``rest_api``), then followed until it ends: each task's state as it changes, and a progress line after each change.
Its outcome has the shape ``operators.local.dag_run.run_dag`` returns, so that the command's summary is the same.

Where the scheduler is: ``--airflow URL``; else ``$AIRFLOW__API__BASE_URL`` (exported by ``./dev.sh stack up``) when
the api-server there reports a healthy scheduler; else the local Airflow (``requestflow airflow-env``) when a live
scheduler on its metadata database has the DAG unpaused, at its api-server (``local_api``). Otherwise the command
runs the sweep itself with ``dag.test()``, as before.

Ctrl-C (or SIGTERM) while following stops the following only: the run belongs to the scheduler, which goes on with
it (other users may watch it; a board task killed half-way would be retried anyway). The command says so, with the
run's page and how to stop it: mark it failed (the UI, or ``PATCH .../dagRuns/{run} {"state": "failed"}``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from urllib.parse import quote

from operators.airflow_api import NotFound, Refused, api_url, quoted, request, scheduler_status, task_instances, token
from requestflow.errors import UserError

POLL_S = 3.0
FINISHED = ("success", "failed", "skipped", "upstream_failed", "removed")  # a task instance that will not run again
ENDED = ("success", "failed")  # a run's


def detected(given: str | None) -> str | None:
    """The api-server to trigger the sweep through: ``--airflow`` (always: an error there is the user's), else
    ``$AIRFLOW__API__BASE_URL``'s when a healthy scheduler is behind it; None: run the sweep here."""
    if given:
        return api_url(given)
    if not os.environ.get("AIRFLOW__API__BASE_URL"):
        return None
    base = api_url(None)
    status = scheduler_status(base)
    if status == "healthy":
        return base
    print(f"requestflow: {'no api-server answers' if status is None else f'the scheduler is {status}'} at "
          f"$AIRFLOW__API__BASE_URL ({base}): the sweep runs here, through dag.test()", file=sys.stderr, flush=True)
    return None


def local_api(env: dict[str, str]) -> str:
    """The api-server of the local Airflow whose environment is ``env`` (``airflow standalone`` listens there)."""
    if env.get("AIRFLOW__API__BASE_URL"):
        return api_url(env["AIRFLOW__API__BASE_URL"])
    host = env.get("AIRFLOW__API__HOST") or os.environ.get("AIRFLOW__API__HOST", "localhost")
    return f"http://{host}:{env.get('AIRFLOW__API__PORT') or os.environ.get('AIRFLOW__API__PORT', '8080')}"


def run_page(base: str, dag_id: str, run_id: str) -> str:
    return f"{base}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def trigger(base: str, auth: str, dag_id: str, conf: dict) -> str:
    """Trigger ``dag_id`` with ``conf``; its run id. UserError: unknown DAG, paused DAG, conf refused."""
    try:
        dag = request(f"{base}/api/v2/dags/{quoted(dag_id)}", token=auth)
    except NotFound:
        raise UserError(f"no DAG {dag_id!r} in the Airflow at {base} (not parsed yet, or not in its DAGs "
                        "folder)") from None
    if dag.get("is_paused"):
        raise UserError(f"DAG {dag_id} is paused in the Airflow at {base}: a run would wait for ever; unpause it "
                        f"(`airflow dags unpause {dag_id}`, or its toggle in the UI), then run the sweep again")
    run = request(f"{base}/api/v2/dags/{quoted(dag_id)}/dagRuns", token=auth,
                  body={"logical_date": None, "conf": conf})
    return run["dag_run_id"]


def task_name(ti: dict) -> str:
    label = ti.get("rendered_map_index") or (str(ti["map_index"]) if ti.get("map_index", -1) >= 0 else "")
    return f"{ti['task_id']}{f' [{label}]' if label else ''}"


def follow(base: str, auth: str, dag_id: str, run_id: str, log: Callable[[str], None] = print) -> dict:
    """Until the run ends: each task instance's state as it changes, then one progress line. The outcome."""
    seen: dict[tuple, str] = {}
    started, renewed = time.monotonic(), False
    while True:
        try:
            run = request(f"{base}/api/v2/dags/{quoted(dag_id)}/dagRuns/{quoted(run_id)}", token=auth)
            tis = task_instances(base, auth, dag_id, run_id)
        except Refused:
            if renewed:
                raise
            auth, renewed = token(base), True  # the token expired during a long sweep: a new one, once
            continue
        renewed = False
        changed = False
        for ti in sorted(tis, key=lambda t: (t.get("start_date") or "~", t["task_id"], t.get("map_index", -1))):
            state = ti.get("state") or "none"
            if seen.get((ti["task_id"], ti.get("map_index", -1))) != state:
                seen[(ti["task_id"], ti.get("map_index", -1))] = state
                if state != "none":
                    log(f"  {task_name(ti)}: {state}")
                    changed = True
        if changed or run["state"] in ENDED:
            states = [ti.get("state") for ti in tis]
            log(f"requestflow: run {run_id} {run['state']}: {sum(s in FINISHED for s in states)}/{len(tis)} tasks "
                f"finished, {states.count('running')} running, {states.count('failed')} failed "
                f"({time.monotonic() - started:.0f} s)")
        if run["state"] in ENDED:
            return {"run_id": run_id, "state": run["state"],
                    "failed": [{"task_id": ti["task_id"], "map_index": ti.get("map_index", -1),
                                "label": ti.get("rendered_map_index"), "state": ti.get("state") or "none"}
                               for ti in sorted(tis, key=lambda t: (t["task_id"], t.get("map_index", -1)))
                               if ti.get("state") not in ("success", "skipped")]}
        time.sleep(POLL_S)


def run_sweep(base: str, dag_id: str, conf: dict) -> dict:
    """Trigger and follow (module docstring). Ctrl-C / SIGTERM: the run goes on under the scheduler; said, and the
    command ends 130 / 143."""
    auth = token(base)
    run_id = trigger(base, auth, dag_id, conf)
    print(f"requestflow: triggered {run_id} through the scheduler at {base}: {run_page(base, dag_id, run_id)}",
          flush=True)
    try:
        return follow(base, auth, dag_id, run_id, lambda line: print(line, flush=True))
    except (KeyboardInterrupt, SystemExit) as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else exc.code
        print(f"\nrequestflow: stopped following; the run {run_id} goes on under the scheduler at {base}: "
              f"{run_page(base, dag_id, run_id)}. To stop it, mark it failed there, or: curl -X PATCH -H "
              f"'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' -d '{{\"state\": \"failed\"}}' "
              f"{base}/api/v2/dags/{quoted(dag_id)}/dagRuns/{quoted(run_id)}", file=sys.stderr, flush=True)
        raise SystemExit(code) from None
