"""``requestflow queued`` (issue #18) against a stand-in api-server speaking Airflow's REST API (the real one, under
the Celery stack, is in tests/integration/test_celery_sites.py): queued work per site, every page of it, the user's
credentials, and a clear one-line error when the server refuses or cannot be reached."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.served import JsonHandler, http_server

QUEUED = [{"dag_id": "mobilenets_sweep", "dag_run_id": f"run_{i:03d}", "task_id": "board_rfb3.run", "map_index": i,
           "queue": "b", "queued_when": "2026-12-07T12:00:00+00:00"} for i in range(120)] + [
          {"dag_id": "mobilenets_sweep", "dag_run_id": "run_x", "task_id": "plan", "map_index": -1, "queue": None,
           "queued_when": None}]


class StandIn(JsonHandler):
    tokens_asked: list = []
    refuse = False

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.tokens_asked.append(("POST", body))
        self._send(201, {"access_token": "user-token"})

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        if url.path == "/auth/token":
            self.tokens_asked.append(("GET", None))
            return self._send(403 if self.refuse else 201, {"access_token": "admin-token"})
        query = parse_qs(url.query)
        assert url.path == "/api/v2/dags/~/dagRuns/~/taskInstances" and query["state"] == ["queued"]
        assert self.headers["Authorization"] in ("Bearer admin-token", "Bearer user-token")
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        self._send(200, {"task_instances": QUEUED[offset:offset + limit], "total_entries": len(QUEUED)})


@pytest.fixture
def server(monkeypatch):
    for name in ("AIRFLOW_TOKEN", "AIRFLOW_USERNAME", "AIRFLOW_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    StandIn.tokens_asked, StandIn.refuse = [], False
    with http_server(StandIn) as base:
        yield base


def test_lists_every_page_of_queued_work_per_site(server, run_cli):
    code, out, err = run_cli("queued", "--airflow", server)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("site b: 120 task(s) queued, the oldest for ")
    assert lines[1] == "  mobilenets_sweep  run_000  board_rfb3.run[0]" and "run_119" in lines[120]
    assert lines[121:] == ["site default: 1 task(s) queued", "  mobilenets_sweep  run_x  plan"]
    assert StandIn.tokens_asked == [("GET", None)]  # no credentials given: every user an admin


def test_signs_in_with_the_users_credentials(server, run_cli, monkeypatch):
    monkeypatch.setenv("AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("AIRFLOW_PASSWORD", "secret")
    code, _, err = run_cli("queued", "--airflow", server)
    assert code == 0, err
    assert StandIn.tokens_asked == [("POST", {"username": "admin", "password": "secret"})]


def test_a_refusal_and_an_unreachable_server_are_one_line_errors(server, run_cli):
    StandIn.refuse = True
    code, out, err = run_cli("queued", "--airflow", server)
    assert (code, out) == (2, "")
    assert err.strip() == (f"requestflow: error: Airflow's api-server refused {server}/auth/token (403): set "
                           "$AIRFLOW_TOKEN, or $AIRFLOW_USERNAME and $AIRFLOW_PASSWORD")
    code, _, err = run_cli("queued", "--airflow", "http://127.0.0.1:1")
    assert code == 2 and err.startswith("requestflow: error: cannot reach Airflow's api-server at http://127.0.0.1:1")
    assert len(err.strip().splitlines()) == 1
