"""``requestflow queued``: the work waiting for each site's Celery workers (issue #18; docs/scale-out.md).

Every task instance in state ``queued``, of every DAG and run (or of one DAG), asked of a running Airflow's REST API
as a user would (``GET /api/v2/dags/~/dagRuns/~/taskInstances?state=queued``), grouped by its queue: a board's site
(the Connection extra ``site``: ``operators.board_settings.site_queue``), or ``default``. A site whose work has
waited long has no worker serving its queue (its host down, its worker stopped).

Authentication, as a user: ``$AIRFLOW_TOKEN`` (a token of the api-server), else ``$AIRFLOW_USERNAME`` and
``$AIRFLOW_PASSWORD`` (``POST /auth/token``: the simple auth manager's users), else a token asked without
credentials (``GET /auth/token``: granted only when every user is an admin, as in ``./dev.sh stack up``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

from requestflow.cli import Command
from requestflow.errors import UserError

PAGE = 100  # task instances per request: the api-server's default maximum


def api_url(given: str | None) -> str:
    """The api-server's base URL: ``--airflow``, else ``$AIRFLOW__API__BASE_URL``, else http://localhost:8080."""
    url = (given or os.environ.get("AIRFLOW__API__BASE_URL") or "http://localhost:8080").rstrip("/")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"--airflow {url!r}: not an http(s) URL of Airflow's api-server")
    return url


def _request(url: str, *, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UserError(f"Airflow's api-server refused {url} ({exc.code}): set $AIRFLOW_TOKEN, or "
                            "$AIRFLOW_USERNAME and $AIRFLOW_PASSWORD") from None
        raise UserError(f"Airflow's api-server answered {exc.code} to {url}: {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach Airflow's api-server at {url}: {reason}") from None


def token(base: str) -> str:
    """A token of the api-server at ``base``, as the module docstring says."""
    if os.environ.get("AIRFLOW_TOKEN"):
        return os.environ["AIRFLOW_TOKEN"]
    user, password = os.environ.get("AIRFLOW_USERNAME"), os.environ.get("AIRFLOW_PASSWORD")
    body = {"username": user, "password": password} if user and password else None
    return _request(f"{base}/auth/token", body=body)["access_token"]


def queued(base: str, dag_id: str = "~") -> list[dict]:
    """The task instances in state ``queued`` (of ``dag_id``, or of every DAG), every page of them."""
    auth, found, offset = token(base), [], 0
    while True:
        query = urllib.parse.urlencode({"state": "queued", "limit": PAGE, "offset": offset})
        page = _request(f"{base}/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/~/taskInstances?{query}",
                        token=auth)
        found += page.get("task_instances", [])
        offset += PAGE
        if offset >= page.get("total_entries", 0):
            return found


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
