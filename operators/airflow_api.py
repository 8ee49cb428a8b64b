"""Airflow's REST API (``/api/v2`` of the api-server), called as a user calls it: ``requestflow queued``
(``operators.queued_work``) and ``requestflow sweep`` through a running scheduler (``operators.scheduled_sweep``).

Authentication, as a user: ``$AIRFLOW_TOKEN`` (a token of the api-server), else ``$AIRFLOW_USERNAME`` and
``$AIRFLOW_PASSWORD`` (``POST /auth/token``: the simple auth manager's users), else a token asked without
credentials (``GET /auth/token``: granted only when every user is an admin, as in ``./dev.sh stack up``).
Every failure is a UserError of one line naming the URL: not reachable, refused (401/403), or the server's answer.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from requestflow.errors import UserError


class NotFound(UserError):
    """The api-server answered 404: no such DAG, run, ..."""


class Refused(UserError):
    """The api-server answered 401 or 403: no valid token, or not allowed."""


DEFAULT_URL = "http://localhost:8080"  # `airflow standalone`'s, and the api-server's default port
PAGE = 100  # task instances per request: the api-server's default maximum


def api_url(given: str | None) -> str:
    """The api-server's base URL: ``--airflow``, else ``$AIRFLOW__API__BASE_URL``, else http://localhost:8080."""
    url = (given or os.environ.get("AIRFLOW__API__BASE_URL") or DEFAULT_URL).rstrip("/")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"--airflow {url!r}: not an http(s) URL of Airflow's api-server")
    return url


def request(url: str, *, token: str | None = None, body: dict | None = None, timeout: float = 60) -> dict:
    """GET ``url`` (POST ``body`` when given) as JSON; the answer's JSON. UserError on any failure."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise Refused(f"Airflow's api-server refused {url} ({exc.code}): set $AIRFLOW_TOKEN, or "
                            "$AIRFLOW_USERNAME and $AIRFLOW_PASSWORD") from None
        raise (NotFound if exc.code == 404 else UserError)(
            f"Airflow's api-server answered {exc.code} to {url}: {_detail(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: not JSON, not a URL
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach Airflow's api-server at {url}: {reason}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    """The answer's ``detail`` (FastAPI's error field) on one line, else the HTTP reason."""
    try:
        detail = json.loads(exc.read() or b"{}").get("detail")
    except (ValueError, OSError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a validation error: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return " ".join(str(detail or exc.reason).split())


def token(base: str) -> str:
    """A token of the api-server at ``base``, as the module docstring says."""
    if os.environ.get("AIRFLOW_TOKEN"):
        return os.environ["AIRFLOW_TOKEN"]
    user, password = os.environ.get("AIRFLOW_USERNAME"), os.environ.get("AIRFLOW_PASSWORD")
    body = {"username": user, "password": password} if user and password else None
    return request(f"{base}/auth/token", body=body)["access_token"]


def scheduler_status(base: str, timeout: float = 5) -> str | None:
    """The scheduler's status as the api-server at ``base`` reports it (``healthy``, ``unhealthy``; the health
    endpoint needs no login), or None when nothing answers there as Airflow's api-server would."""
    try:
        health = request(f"{base}/api/v2/monitor/health", timeout=timeout)
    except UserError:
        return None
    scheduler = health.get("scheduler") if isinstance(health, dict) else None
    return scheduler.get("status") if isinstance(scheduler, dict) else None


def quoted(name: str) -> str:
    """A DAG or run id as one segment of a path (run ids hold ``:`` and ``+``)."""
    return urllib.parse.quote(name, safe="")


def task_instances(base: str, auth: str, dag_id: str = "~", run_id: str = "~", **query) -> list[dict]:
    """The task instances of a run (``~``: of every run, of every DAG) matching ``query`` (e.g. ``state=queued``),
    every page of them."""
    found, offset = [], 0
    while True:
        page_query = urllib.parse.urlencode({**query, "limit": PAGE, "offset": offset})
        page = request(f"{base}/api/v2/dags/{quoted(dag_id)}/dagRuns/{quoted(run_id)}/taskInstances?{page_query}",
                       token=auth)
        found += page.get("task_instances", [])
        offset += PAGE
        if offset >= page.get("total_entries", 0):
            return found
