"""``requestflow sweep`` through a running scheduler (issue #18, ``operators/scheduled_sweep.py``) against a
stand-in api-server speaking Airflow's REST API: the run triggered with the sweep's conf and followed to its end
(states as they change, a progress line, the summary, the exit status), every refusal one clear line before anything
is triggered, Ctrl-C leaving the run to the scheduler. The real scheduler: tests/integration/test_regression_dag.py.
The results store is not needed here: the summary's query is replaced by a stand-in's rows."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest

from operators import scheduled_sweep
from tests.served import JsonHandler, http_server

RUN = "manual__2026-12-07T14:00:00+00:00"
MODEL = "mobilenet-v1-0.25-128"
ARGS = ("sweep", "--models", MODEL, "--backends", "tflite", "--modes", "performance", "--repetitions", "3",
        "--warmup", "1")


def ti(task_id: str, state: str | None, map_index: int = -1, label: str | None = None) -> dict:
    return {"task_id": task_id, "map_index": map_index, "rendered_map_index": label, "state": state,
            "start_date": None}


# what the stand-in answers at each poll of the run: (the run's state, its task instances)
POLLS = [("queued", [ti("plan", None)]),
         ("running", [ti("plan", "running")]),
         ("running", [ti("plan", "success"), ti("board_local.run", "running", 0, "tflite 0.25_128")]),
         ("success", [ti("plan", "success"), ti("board_local.run", "success", 0, "tflite 0.25_128"),
                      ti("summary", "success")])]


class StandIn(JsonHandler):
    dag: dict | None = {"dag_id": "mobilenets_sweep", "is_paused": False}
    refuse = False
    expire = False  # the first token stops working at the first poll
    tokens = 0
    polls: list = POLLS
    triggered: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/api/v2/dags/mobilenets_sweep/dagRuns" and self.headers["Authorization"] in ("Bearer t",
                                                                                                  "Bearer t1")
        self.triggered.append(body)
        self._send(200, {"dag_run_id": RUN, "state": "queued", "run_type": "manual"})

    def do_GET(self):  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        if path == "/api/v2/monitor/health":
            return self._send(200, {"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"}})
        if path == "/auth/token":
            type(self).tokens += 1
            return self._send(403 if self.refuse else 201, {"access_token": f"t{self.tokens}" if self.expire else "t"})
        if self.expire and self.headers["Authorization"] == "Bearer t1" and "/dagRuns/" in path:
            return self._send(401, {"detail": "Invalid JWT token"})
        assert self.headers["Authorization"] in ("Bearer t", "Bearer t1", "Bearer t2")
        if path.startswith("/api/v2/dags/mobilenets_sweep/dagRuns/"):
            assert path.removeprefix("/api/v2/dags/mobilenets_sweep/dagRuns/").startswith(RUN)
            state, tis = self.polls[min(len(self.seen) // 2, len(self.polls) - 1)]
            self.seen.append(path)
            if path.endswith("/taskInstances"):
                return self._send(200, {"task_instances": tis, "total_entries": len(tis)})
            return self._send(200, {"dag_run_id": RUN, "state": state})
        if path.startswith("/api/v2/dags/"):
            return self._send(404, {"detail": "The Dag with ID: `x` was not found"}) if self.dag is None or \
                path != "/api/v2/dags/mobilenets_sweep" else self._send(200, self.dag)
        self._send(404, {"detail": "Not Found"})


@pytest.fixture
def server(monkeypatch):
    for name in ("AIRFLOW_TOKEN", "AIRFLOW_USERNAME", "AIRFLOW_PASSWORD", "AIRFLOW__API__BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTFLOW_BOARDS", "local,rfb1")
    monkeypatch.setattr(scheduled_sweep, "POLL_S", 0.01)
    monkeypatch.setattr("operators.commands.open_store", lambda args: (None, "postgresql://unused/x"))
    summary = (["board", "model", "median_ms"], [("local", MODEL, 1.5)])
    monkeypatch.setattr("requestflow.results.query.read_only", lambda engine, sql, params: summary)
    StandIn.dag, StandIn.refuse, StandIn.polls = {"dag_id": "mobilenets_sweep", "is_paused": False}, False, POLLS
    StandIn.expire, StandIn.tokens = False, 0
    StandIn.triggered, StandIn.seen = [], []
    with http_server(StandIn) as base:
        yield base


def test_triggers_follows_and_summarises_the_run(server, run_cli):
    code, out, err = run_cli(*ARGS, "--airflow", server)
    assert code == 0, err
    assert StandIn.triggered == [{"logical_date": None, "conf": {
        "boards": ["local"], "models": [MODEL], "backends": ["tflite"], "modes": ["performance"], "repetitions": 3,
        "warmup": 1}}]
    lines = out.splitlines()
    assert lines[1] == f"requestflow: triggered {RUN} through the scheduler at {server}: " \
                       f"{server}/dags/mobilenets_sweep/runs/manual__2026-12-07T14%3A00%3A00%2B00%3A00"
    follow = lines[2:lines.index("")]
    assert follow[0] == "  plan: running" and follow[1].startswith(f"requestflow: run {RUN} running: 0/1 tasks")
    assert "  board_local.run [tflite 0.25_128]: running" in follow and "  summary: success" in follow
    assert follow[-1].startswith(f"requestflow: run {RUN} success: 3/3 tasks finished, 0 running, 0 failed (")
    assert f"sweep {RUN} on board local, from the results store:" in lines and any(MODEL in line for line in lines)


def test_a_failed_run_is_exit_1_naming_its_failed_tasks_and_boards_may_be_several(server, run_cli):
    StandIn.polls = [("failed", [ti("plan", "success"), ti("board_rfb1.run", "failed", 0, "tflite 0.25_128"),
                                 ti("board_local.run", "upstream_failed", 0)])]
    code, out, err = run_cli(*ARGS, "--board", "local", "--board", "rfb1", "--airflow", server)
    assert code == 1
    assert StandIn.triggered[0]["conf"]["boards"] == ["local", "rfb1"]
    assert f"sweep {RUN} on boards local, rfb1, from the results store:" in out
    assert err.strip() == f"requestflow: sweep {RUN} FAILED (failed): board_rfb1.run [tflite 0.25_128] failed"


def test_a_token_that_expires_while_following_is_renewed_once(server, run_cli):
    StandIn.expire = True
    code, out, err = run_cli(*ARGS, "--airflow", server)
    assert code == 0, err
    assert StandIn.tokens == 2 and f"requestflow: run {RUN} success: 3/3 tasks finished" in out


def test_the_api_server_of_the_environment_is_used_when_its_scheduler_is_healthy(server, run_cli, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", server)
    code, out, err = run_cli(*ARGS)
    assert code == 0, err
    assert len(StandIn.triggered) == 1 and f"through the scheduler at {server} on board local" in out


def test_nothing_answering_at_the_environments_url_means_a_run_here(monkeypatch, capsys):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:1")
    assert scheduled_sweep.detected(None) is None
    assert capsys.readouterr().err == ("requestflow: no api-server answers at $AIRFLOW__API__BASE_URL "
                                       "(http://127.0.0.1:1): the sweep runs here, through dag.test()\n")


@pytest.mark.parametrize("case, expected", [
    ("bad url", "requestflow: error: --airflow 'ftp://x': not an http(s) URL of Airflow's api-server"),
    ("unreachable", "requestflow: error: cannot reach Airflow's api-server at http://127.0.0.1:1/auth/token: "),
    ("refused", "requestflow: error: Airflow's api-server refused {server}/auth/token (403): set $AIRFLOW_TOKEN, "
                "or $AIRFLOW_USERNAME and $AIRFLOW_PASSWORD"),
    ("unknown dag", "requestflow: error: no DAG 'mobilenets_sweep' in the Airflow at {server} (not parsed yet, or "
                    "not in its DAGs folder)"),
    ("paused", "requestflow: error: DAG mobilenets_sweep is paused in the Airflow at {server}: a run would wait for "
               "ever; unpause it (`airflow dags unpause mobilenets_sweep`, or its toggle in the UI), then run the "
               "sweep again"),
])
def test_each_refusal_is_one_line_and_nothing_is_triggered(server, run_cli, case, expected):
    url = {"bad url": "ftp://x", "unreachable": "http://127.0.0.1:1"}.get(case, server)
    StandIn.refuse = case == "refused"
    StandIn.dag = None if case == "unknown dag" else {"dag_id": "mobilenets_sweep", "is_paused": case == "paused"}
    code, out, err = run_cli(*ARGS, "--airflow", url)
    assert code == 2 and StandIn.triggered == []
    assert len(err.strip().splitlines()) == 1 and err.startswith(expected.format(server=server)), err


def test_ctrl_c_while_following_leaves_the_run_to_the_scheduler_and_says_how_to_stop_it(server, run_cli,
                                                                                         monkeypatch, capsys):
    def interrupted(seconds):
        raise KeyboardInterrupt

    StandIn.polls = [("running", [ti("plan", "running")])]
    monkeypatch.setattr(scheduled_sweep.time, "sleep", interrupted)
    with pytest.raises(SystemExit) as stopped:
        run_cli(*ARGS, "--airflow", server)
    err = capsys.readouterr().err
    assert stopped.value.code == 130 and len(StandIn.triggered) == 1
    assert f"stopped following; the run {RUN} goes on under the scheduler at {server}" in err
    assert "mark it failed there, or: curl -X PATCH" in err and '{"state": "failed"}' in err
    assert f"{server}/api/v2/dags/mobilenets_sweep/dagRuns/manual__2026-12-07T14%3A00%3A00%2B00%3A00" in err
