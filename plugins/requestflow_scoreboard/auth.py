"""Airflow's own login, required on every request to the scoreboard app.

Airflow mounts plugin FastAPI apps without any authentication (apache/airflow #72655, #72935), so this app checks
each request itself, the way Airflow's core API does, and fails closed:

1. authentication: ``airflow.api_fastapi.core_api.security.get_user`` -- an ``Authorization: Bearer`` JWT, else the
   user that Airflow's ``JWTRefreshMiddleware`` already validated from the ``_token`` cookie, else the ``_token``
   cookie itself -- each token checked by the auth manager's ``get_user_from_token`` (signature, expiry, audience).
   No token: 401; an expired one: 401; a forged or malformed one: 403;
2. authorization: the auth manager must let the user read DAG runs and assets (``is_authorized_dag(method="GET",
   access_entity=DagAccessEntity.RUN)`` and ``is_authorized_asset(method="GET")``): the scoreboard is what the sweep
   DAGs wrote into the results asset. Otherwise 403;
3. anything unexpected while checking (no auth manager, a failing backend): 403, never the page.

It is an ASGI middleware wrapped around the whole app, so it runs before routing: every route, the static files,
the JSON endpoints, redirects and even unknown paths are behind it, including routes added later.
A browser without a login gets a 401 page that sends it to Airflow's login page and back.
"""

from __future__ import annotations

import html
import logging

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger(__name__)


async def authenticate(request: Request):
    """The Airflow user behind this request, exactly as Airflow's core API resolves it; raises 401/403."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)  # HTTPBearer(auto_error=False): None without a Bearer header
    return await get_user(request, _oauth_token=None, bearer_credentials=credentials)


def authorize(user) -> None:
    """Raise 403 unless the auth manager lets ``user`` read DAG runs and assets."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    manager = get_auth_manager()
    if not (manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, user=user)
            and manager.is_authorized_asset(method="GET", user=user)):
        raise HTTPException(403, "Forbidden: the scoreboard needs read access to DAG runs and assets")


class AirflowLoginRequired:
    """Pure ASGI middleware: authenticate and authorize every HTTP request before the app sees it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: none served, none let through
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope)
        try:
            user = await authenticate(request)
            await run_in_threadpool(authorize, user)
        except HTTPException as exc:
            await refusal(request, exc.status_code, str(exc.detail))(scope, receive, send)
            return
        except Exception:  # fail closed, whatever went wrong
            log.exception("requestflow scoreboard: could not check the request's login")
            await refusal(request, 403, "Forbidden: the login could not be checked")(scope, receive, send)
            return
        scope.setdefault("state", {})["requestflow_user"] = user
        await self.app(scope, receive, send)


def refusal(request: Request, status: int, detail: str) -> Response:
    """401/403 without any content of the app: JSON for programs; for a browser, a page pointing to the login."""
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if "text/html" not in request.headers.get("accept", "") or status != 401:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    try:
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login(next_url=str(request.url))
    except Exception:
        login = "/"
    login = html.escape(login, quote=True)
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="0; url={login}">'
        f"<title>Log in to Airflow</title></head><body><p>{html.escape(detail)}: the scoreboard needs the same "
        f'login as Airflow. <a href="{login}">Log in to Airflow</a>.</p></body></html>',
        status_code=status, headers=headers)
