"""``requestflow queued``: the work waiting for each site's Celery workers (issue #18; docs/scale-out.md).

Every task instance in state ``queued``, of every DAG and run (or of one DAG), asked of a running Airflow's REST API
as a user would (``GET /api/v2/dags/~/dagRuns/~/taskInstances?state=queued``), grouped by its queue: a board's site
(the Connection extra ``site``: ``operators.board_settings.site_queue``), or ``default``. A site whose work has
waited long has no worker serving its queue (its host down, its worker stopped).

Authentication, as a user: ``operators.airflow_api`` (``$AIRFLOW_TOKEN``, else ``$AIRFLOW_USERNAME`` and
``$AIRFLOW_PASSWORD``, else a token asked without credentials).
"""

from __future__ import annotations

from datetime import UTC, datetime

from operators.airflow_api import api_url, task_instances, token
from requestflow.cli import Command


def queued(base: str, dag_id: str = "~") -> list[dict]:
    """The task instances in state ``queued`` (of ``dag_id``, or of every DAG), every page of them."""
    return task_instances(base, token(base), dag_id, state="queued")


def by_site(task_instances: list[dict], now: datetime | None = None) -> list[str]:
    """The report's lines: per queue (a site, or default), its tasks and how long the oldest has waited."""
    now = now or datetime.now(UTC)
    sites: dict[str, list[dict]] = {}
    for ti in task_instances:
        sites.setdefault(ti.get("queue") or "default", []).append(ti)
    if not sites:
        return ["no task is queued"]
    lines = []
    for site, tis in sorted(sites.items()):
        waited = [now - datetime.fromisoformat(ti["queued_when"]) for ti in tis if ti.get("queued_when")]
        oldest = f", the oldest for {max(waited).total_seconds():.0f} s" if waited else ""
        lines.append(f"site {site}: {len(tis)} task(s) queued{oldest}")
        for ti in sorted(tis, key=lambda t: (t["dag_id"], t["dag_run_id"], t["task_id"], t.get("map_index", -1))):
            index = f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
            lines.append(f"  {ti['dag_id']}  {ti['dag_run_id']}  {ti['task_id']}{index}")
    return lines


def cmd_queued(args, argv) -> int:
    print("\n".join(by_site(queued(api_url(args.airflow), args.dag or "~"))))
    return 0


def _queued_arguments(parser) -> None:
    parser.add_argument("--airflow", metavar="URL",
                        help="Airflow's api-server (default: $AIRFLOW__API__BASE_URL, else http://localhost:8080)")
    parser.add_argument("--dag", help="only this DAG's task instances (default: every DAG's)")


queued_command = Command(help="the task instances waiting in `queued`, per site (Celery queue): a site without a "
                              "worker leaves its work there", arguments=_queued_arguments, run=cmd_queued)
