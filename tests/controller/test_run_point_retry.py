"""A point's retry after its runner finished: the earlier attempt's document is stored (once), not measured again.

A runner still running when its attempt died (a lost connection, a task killed hard) is followed to its end by
the retry, never doubled.

The race: the store commits a point's result, then the reply is lost (the connection dropped, PostgreSQL died
between commit and reply); the attempt fails and Airflow retries it. Measuring again would store a second result
of the point in the same sweep. The retry instead finds the document the earlier runner wrote and loads it:
a no-op when it is stored already, the point's one result when the store never got it. A failed document of an
earlier attempt is not taken: the retry measures again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from operators import board_jobs
from operators.board_hook import LocalBoard
from operators.results_hook import ResultsHook
from operators.run_point import RunPointOperator
from requestflow.results.database import sqlalchemy_url
from tests.databases import throwaway_database

SWEEP = "retry-test"
POINT = {"model": "mobilenet-v1-0.25-128", "backend": "tflite", "mode": "performance", "repetitions": 5,
         "warmup": 1, "threads": 1, "weights": "random"}


@dataclass
class FakeTI:
    try_number: int


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path))
    with throwaway_database() as url:
        monkeypatch.setenv("REQUESTFLOW_DATABASE_URL", url)
        engine = create_engine(sqlalchemy_url(url))
        yield engine
        engine.dispose()


def attempt(try_number: int, **point) -> dict:
    operator = RunPointOperator(task_id="run", board_conn_id="local", sweep_id=SWEEP, point={**POINT, **point})
    return operator.execute({"ti": FakeTI(try_number)})


def job_dir(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "board" / "runs").iterdir()
    return folder


def results(engine) -> list[tuple]:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT r.id, r.status, p.median_s FROM results r JOIN sweeps s ON s.id = r.sweep_id "
            "JOIN performance p ON p.result_id = r.id WHERE s.run_id = :sweep ORDER BY r.id"), {"sweep": SWEEP}).all()


def runner_started(folder: Path) -> str:
    """Which runner the job folder holds: the process group board_jobs.start wrote for it (a new one per runner)."""
    return (folder / "pid").read_text()


def test_a_retry_after_a_lost_reply_stores_nothing_twice_and_measures_nothing_again(store, tmp_path):
    first = attempt(1)
    assert first["loaded"] is True and first["status"] == "ok"
    folder = job_dir(tmp_path)
    started = runner_started(folder)
    # attempt 1's load committed, its reply was lost: Airflow runs attempt 2
    second = attempt(2)
    assert second == {**first, "loaded": False}  # the same document, already stored
    assert runner_started(folder) == started, "the point was measured a second time"
    assert len(results(store)) == 1


def test_a_retry_after_the_store_failed_stores_the_finished_measurement(store, tmp_path, monkeypatch):
    real_load = ResultsHook.load

    def down(self, *args, **kwargs):
        raise ConnectionRefusedError("the results store is down")

    monkeypatch.setattr(ResultsHook, "load", down)
    with pytest.raises(ConnectionRefusedError):
        attempt(1)
    assert results(store) == []
    folder = job_dir(tmp_path)
    started = runner_started(folder)
    document = json.loads((folder / "result.json").read_text())

    monkeypatch.setattr(ResultsHook, "load", real_load)
    second = attempt(2)
    assert second["loaded"] is True
    assert runner_started(folder) == started, "the finished measurement was thrown away and made again"
    [(_, status, median_s)] = results(store)
    assert status == "ok" and median_s == document["performance"]["median"]


def test_a_failed_document_of_an_earlier_attempt_is_measured_again(store, tmp_path):
    attempt(1)
    folder = job_dir(tmp_path)
    document = json.loads((folder / "result.json").read_text())
    document.update(status="failed", error={"type": "RuntimeError", "message": "the board fell over"})
    document.pop("performance")
    (folder / "result.json").write_text(json.dumps(document))
    started = runner_started(folder)

    third = attempt(3)
    assert third["loaded"] is True and third["status"] == "ok"
    assert runner_started(folder) != started  # a new runner
    assert len(results(store)) == 2


def test_a_retry_follows_the_runner_an_earlier_attempt_left_running(store, tmp_path, monkeypatch):
    follow = board_jobs.wait

    def lost(*args, **kwargs):
        raise ConnectionResetError("the connection to the board was lost")

    monkeypatch.setattr(board_jobs, "wait", lost)
    with pytest.raises(ConnectionResetError):
        attempt(1, repetitions=3000)
    folder = job_dir(tmp_path)
    assert board_jobs.running(LocalBoard(), str(folder)), "the runner should still be measuring"
    started = runner_started(folder)

    monkeypatch.setattr(board_jobs, "wait", follow)
    second = attempt(2, repetitions=3000)
    assert second["loaded"] is True and second["status"] == "ok"
    assert runner_started(folder) == started, "a second runner was started"
    assert not board_jobs.running(LocalBoard(), str(folder))
    [(_, status, median_s)] = results(store)
    assert median_s == json.loads((folder / "result.json").read_text())["performance"]["median"]
