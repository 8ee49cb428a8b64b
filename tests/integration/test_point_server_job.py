"""A sweep's point under ``isolation: fork`` (issue #20) on the local board, through RunPointOperator: its runner is
a child of the board's point server, its result says so, and a child killed mid-point (SIGKILL, as the OOM killer
does) fails the attempt exactly as a killed fresh runner does ("exited 137 without a result"), leaves no process of
the point behind, and the retry measures the point through the same server.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from sqlalchemy import text

from operators.board_settings import ISOLATION_ENV
from operators.run_point import RunPointOperator
from requestflow.board import point_client
from tests.board.test_point_server import gone, measuring_child
from tests.controller.test_run_point_retry import FakeTI, store  # noqa: F401 - store: the fixture forking uses

SWEEP = "fork-test"


@pytest.fixture
def forking(store, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture, by its name
    """The retry tests' store, points run under ``isolation: fork``; the local board's point servers stopped after."""
    monkeypatch.setenv(ISOLATION_ENV, "fork")
    monkeypatch.setenv(point_client.IDLE_ENV, "60")
    yield store
    point_client.stop(tmp_path / "board" / "cache" / "point-server")  # the local board's runner cache


def test_a_forked_point_killed_mid_run_fails_like_a_killed_runner_and_its_retry_measures_it(forking, tmp_path,
                                                                                            models_dir):
    point = {"model": "mobilenet-v1-0.25-128", "backend": "tflite", "mode": "performance", "repetitions": 1_000_000,
             "warmup": 1, "threads": 1, "weights": str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")}
    operator = RunPointOperator(task_id="run", board_conn_id="local", sweep_id=SWEEP, point=point)
    runs, killed = tmp_path / "board" / "runs", {}

    def kill_the_child() -> None:
        deadline = time.monotonic() + 120
        while not (runs.is_dir() and any(runs.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        (killed["folder"],) = runs.iterdir()
        killed["pid"] = measuring_child(killed["folder"])
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_child)
    killer.start()
    with pytest.raises(RuntimeError, match="the runner exited 137 without a result"):
        operator.execute({"ti": FakeTI(1)})
    killer.join(timeout=60)
    folder = killed["folder"]
    assert (folder / "exit_code").read_text().strip() == "137"
    assert gone(killed["pid"])  # the child's group: itself and all it started
    (server,) = point_client.server_processes(tmp_path / "board" / "cache" / "point-server")

    retry = RunPointOperator(task_id="run", board_conn_id="local", sweep_id=SWEEP, point={**point, "repetitions": 50})
    summary = retry.execute({"ti": FakeTI(2)})
    assert summary["status"] == "ok" and summary["loaded"] is True
    document = json.loads((folder / "result.json").read_text())
    assert document["isolation"]["mode"] == "fork" and document["isolation"]["server_pid"] == server
    assert document["command"][:2] == ["requestflow", "run"]
    with forking.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM results WHERE status = 'ok'")).scalar() == 1


def test_isolation_is_a_checked_board_setting_with_the_controller_s_default(monkeypatch):
    from operators.board_hook import LocalBoard
    from operators.board_settings import BoardSettings
    from operators.point_steps import runner_command
    from requestflow.errors import UserError
    from tests.controller.test_board_settings import HOST_KEY, FakeConnection

    extras = {"key_file": "/k", "host_key": HOST_KEY}
    monkeypatch.delenv(ISOLATION_ENV, raising=False)
    assert BoardSettings.from_connection("b", FakeConnection(extra_dejson=extras)).isolation == "fresh"
    assert BoardSettings.from_connection("b", FakeConnection(extra_dejson={**extras, "isolation": "fork"})).isolation \
        == "fork"
    with pytest.raises(UserError, match="'b': isolation must be fresh or fork, got 'spawn'"):
        BoardSettings.from_connection("b", FakeConnection(extra_dejson={**extras, "isolation": "spawn"}))
    monkeypatch.setenv(ISOLATION_ENV, "fork")
    assert LocalBoard().settings.isolation == "fork"
    assert BoardSettings.from_connection("b", FakeConnection(extra_dejson={**extras, "isolation": "fresh"})).isolation \
        == "fresh"
    point = {"model": "mobilenet-v1-0.25-128", "backend": "tflite"}
    assert " -m requestflow.board.point_client run " in runner_command("py", point, isolation="fork")
    assert " -m requestflow.cli run " in runner_command("py", point)
    monkeypatch.setenv(ISOLATION_ENV, "vfork")
    with pytest.raises(UserError, match=r"\$REQUESTFLOW_ISOLATION must be fresh or fork"):
        LocalBoard()


@pytest.fixture
def fork_by_point(store, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture, by its name
    """The retry tests' store, the board's isolation fresh: only the points say fork; its point servers stopped."""
    monkeypatch.delenv(ISOLATION_ENV, raising=False)
    monkeypatch.setenv(point_client.IDLE_ENV, "60")
    yield store
    point_client.stop(tmp_path / "board" / "cache" / "point-server")


def test_a_forked_point_killed_while_its_sibling_measures_is_retried_once_and_leaves_nothing(fork_by_point, tmp_path,
                                                                                             models_dir):
    """The sweep's isolation (``fork`` on the points, the board's default fresh): two points of one sweep share the
    board's point server; one's child SIGKILLed (the OOM killer) while the other measures: its attempt fails as a
    killed runner's, nothing of it is left, the sibling's result is unharmed, and one retry completes the point."""
    common = {"backend": "tflite", "mode": "performance", "warmup": 1, "threads": 1, "isolation": "fork"}
    victim = {**common, "model": "mobilenet-v1-0.25-128", "repetitions": 1_000_000,
              "weights": str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")}
    sibling = {**common, "model": "mobilenet-v1-0.25-160", "repetitions": 2000,
               "weights": str(models_dir / "mobilenet_v1_0.25_160_quant.tflite")}
    runs = tmp_path / "board" / "runs"
    outcomes: dict = {}

    def run(name: str, point: dict, try_number: int) -> None:
        try:
            outcomes[name] = RunPointOperator(task_id=name, board_conn_id="local", sweep_id=SWEEP,
                                              point=point).execute({"ti": FakeTI(try_number)})
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=("victim", victim, 1))]
    threads[0].start()
    deadline = time.monotonic() + 120
    while not (runs.is_dir() and any(runs.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder,) = runs.iterdir()
    child = measuring_child(folder)
    threads.append(threading.Thread(target=run, args=("sibling", sibling, 1)))
    threads[1].start()
    sibling_folder = next(f for f in _wait_for_two(runs) if f != folder)
    sibling_child = measuring_child(sibling_folder)
    os.kill(child, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=300)
    assert isinstance(outcomes["victim"], RuntimeError) and "exited 137 without a result" in str(
        outcomes["victim"])
    assert gone(child) and gone(sibling_child)  # the victim's group at once; the sibling's once it ended
    assert outcomes["sibling"]["status"] == "ok", outcomes["sibling"]
    retry = RunPointOperator(task_id="victim", board_conn_id="local", sweep_id=SWEEP,
                             point={**victim, "repetitions": 50})
    assert retry.execute({"ti": FakeTI(2)})["status"] == "ok"
    documents = [json.loads((f / "result.json").read_text()) for f in (folder, sibling_folder)]
    assert {d["isolation"]["mode"] for d in documents} == {"fork"}
    assert documents[0]["isolation"]["server_pid"] == documents[1]["isolation"]["server_pid"]
    with fork_by_point.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM results WHERE status = 'ok'")).scalar() == 2


def _wait_for_two(runs, timeout_s: float = 120.0) -> list:
    deadline = time.monotonic() + timeout_s
    while len(list(runs.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(runs.iterdir())
