"""The scoreboard app in this process, for tests of what its pages show: Airflow's login is replaced by a stub user and
the results store by a given engine. That the login is required on every route -- these included -- is tested
against a real api-server and in-process in ``test_scoreboard_page.py``; here only the content is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Response:
    status_code: int
    text: str


class Client:
    """GET requests straight through the ASGI app (no HTTP server, no client library)."""

    def __init__(self, app) -> None:
        self.app = app

    def get(self, url: str, accept: str = "text/html") -> Response:
        parts = urlsplit(url)
        messages = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": parts.path, "raw_path": parts.path.encode(),
                 "query_string": parts.query.encode(), "root_path": "", "headers": [(b"accept", accept.encode())],
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
        asyncio.run(self.app(scope, receive, send))
        status = next(m["status"] for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        return Response(status, body.decode())


@contextlib.contextmanager
def logged_in_client(monkeypatch, engine) -> Iterator[Client]:
    """A client of a fresh app whose every request is let in, reading ``engine``."""
    monkeypatch.syspath_prepend(str(ROOT / "plugins"))  # as Airflow does with its plugins folder
    from requestflow_scoreboard import app as app_module
    from requestflow_scoreboard import auth

    async def stub_user(request):
        return {"user": "test"}

    monkeypatch.setattr(auth, "authenticate", stub_user)
    monkeypatch.setattr(auth, "authorize", lambda user: None)
    monkeypatch.setattr(app_module, "results_engine", lambda: engine)
    yield Client(app_module.create_app())
