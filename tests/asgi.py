"""The scoreboard plugin's app called in this process, without an api-server: one GET through any ASGI app, and
the plugin's app on a given store with Airflow's login check replaced by a fixed user (the real login is
tests/integration/test_scoreboard_page.py's subject)."""

from __future__ import annotations

import asyncio
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def asgi_get(app, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET of ``path`` (a query string allowed) through the ASGI ``app``: (status, body bytes)."""
    path, _, query = path.partition("?")
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def html_get(app, path: str) -> tuple[int, str]:
    """One GET asking for HTML: (status, body text)."""
    status, body = asgi_get(app, path, {"Accept": "text/html"})
    return status, body.decode()


def page_app(monkeypatch, store):
    """The plugin's app in this process reading ``store`` (an engine), every request from the user ``tester``."""
    monkeypatch.syspath_prepend(str(ROOT / "plugins"))  # as Airflow does with its plugins folder
    from requestflow_scoreboard import app as app_module
    from requestflow_scoreboard import auth

    async def authenticate(request):
        return "tester"

    monkeypatch.setattr(auth, "authenticate", authenticate)
    monkeypatch.setattr(auth, "authorize", lambda user: None)
    monkeypatch.setattr(app_module, "_engine", store)
    return app_module.create_app()
