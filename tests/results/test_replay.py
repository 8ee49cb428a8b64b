"""``requestflow replay`` (issue #8): a stored point rerun on its board (here the local board, through the same
board hook and detached job as a sweep's point) and compared with the stored result: raw samples by Mann-Whitney U
with a minimum effect, accuracy and every image's predictions exactly.

The slowdown is real, not simulated: the replay runs while another process takes the CPU the point is pinned to
away from it for a millisecond at a time, with gaps shorter than one timed run. "No difference" is judged on the
stored samples re-fed through a real replay (see that test's doc): two real runs of the same point differ by the
machine's drift, which a shared machine can take past the 5% minimum effect in a few minutes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import subprocess
import sys

import pytest

from requestflow.cli import main
from requestflow.errors import UserError
from tests.databases import throwaway_database

MODEL = "mobilenet-v1-0.25-128"
CPU = max(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def store():
    with throwaway_database() as url:
        yield url


@pytest.fixture(autouse=True)
def _local_board_state(tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))


def run_point(models_dir, tmp_path, *args) -> dict:
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "requestflow.cli", "run", "--model", MODEL, "--backend", "tflite", "--weights",
               str(models_dir / "mobilenet_v1_0.25_128_quant.tflite"), "--quiet", "--out", str(out), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())


def load(store: str, document: dict, tmp_path) -> str:
    from sqlalchemy import create_engine

    from requestflow.results.database import sqlalchemy_url
    from requestflow.results.identity import point_id
    from requestflow.results.load import load_documents

    engine = create_engine(sqlalchemy_url(store))
    try:
        load_documents(engine, [("test", document)], board="local")
    finally:
        engine.dispose()
    return point_id("local", document["context"])


def _interfere(cpu: int) -> None:
    """Take ``cpu`` away for 1 ms at a time, ahead of ordinary processes (real-time priority when allowed), and give
    it back for gaps of about 0.2 ms: shorter than one timed run of the point (about 0.4 ms), so every run is cut by
    at least one of those milliseconds and the median moves, not only a tail. (With gaps longer than a run, as
    this test once had, two runs in three fitted between the hog's turns and the median stayed where it was: CI of
    f440d4a.) The other CPU stays free, so the machine stays responsive."""
    import time

    os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        os.nice(-20) if os.geteuid() == 0 else None
    while True:
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:
            pass
        time.sleep(0.0002)


@pytest.fixture(scope="module")
def performance_point(store, models_dir, tmp_path_factory):
    document = run_point(models_dir, tmp_path_factory.mktemp("perf"), "--repetitions", "200", "--warmup", "20",
                         "--cpus", str(CPU), "--threads", "1")
    return load(store, document, tmp_path_factory.mktemp("load")), document


def test_a_replay_of_a_stored_point_finds_no_significant_difference(store, performance_point, capsys, monkeypatch):
    """The replay is real: the stored result rebuilt from the store, its command rerun on the local board as a
    detached job, the new document fetched, the two compared by the command at its defaults (alpha 0.01, minimum
    effect 5%), which must say SAME and exit 0.

    What decides the latency verdict is not the replay's own timings: on a shared machine two runs of unchanged code
    a few minutes apart can differ by more than 5% (this test failed so in a fresh-clone CI). The replayed document
    reaches the comparison with the stored samples re-fed (statistics recomputed; its identity, context and times
    are the replay's own), so SAME is the verdict on unchanged timings and everything else is the real machinery:
    a replay that ran another point, failed, or lost its samples is not SAME. The replay's real samples are judged
    apart, with a 50% minimum effect: no drift of an ordinary machine moves the median of a run pinned to one CPU
    that far in seconds (a busy loop pinned to that very CPU moved it by under 1% where this was written); only
    taking the CPU away for most of every timed run does, as test_a_slowdown_is_detected does on purpose."""
    from operators import replay_board as replay_operator
    from requestflow.results.identity import identity
    from requestflow.results.stats import SAME, compare_samples
    from tests.generated_runs import with_samples

    point, document = performance_point
    run_on_board, replayed = replay_operator.run_on_board, []

    def stored_samples_re_fed(board_name, stored, **kwargs):
        new = run_on_board(board_name, stored, **kwargs)
        replayed.append(new)
        if new.get("status") != "ok":
            return new
        re_fed = with_samples(new, stored["performance"]["samples"])
        if "calibration" in stored["performance"]:  # and the machine's speed they were timed at (issue #19)
            re_fed["performance"]["calibration"] = stored["performance"]["calibration"]
        return re_fed

    monkeypatch.setattr(replay_operator, "run_on_board", stored_samples_re_fed)
    code = main(["replay", point[:12], "--db", store])
    output = capsys.readouterr().out
    assert code == 0, output
    assert f"replay of point {point[:16]} on board local" in output
    assert "SAME: latency no significant difference" in output
    assert f"n = {document['performance']['n']} vs 200" in output

    (new,) = replayed  # what the board's runner wrote: a new run of the same point
    assert new["status"] == "ok" and new["started_at"] > document["finished_at"]
    assert identity("local", new["context"]) == identity("local", document["context"])
    old_samples, new_samples = document["performance"]["samples"], new["performance"]["samples"]
    assert len(new_samples) == 200 and new_samples != old_samples
    real = compare_samples(old_samples, new_samples, min_effect=0.5)
    print(f"the replay's own timings: {real.describe()}")  # shown with -rP: the drift seen between the two runs
    assert real.verdict == SAME, real.describe()


def test_a_slowdown_is_detected(store, performance_point, capsys, monkeypatch):
    """The replay runs beside a process that takes most of its CPU: a slower machine, which the replay's calibration
    (issue #19) sees and discounts (tests/results/test_calibrated.py). To judge the slowdown itself, as a replay of
    a point stored before calibrations existed is judged, the replayed document reaches the comparison without its
    calibration: raw samples against raw samples."""
    from requestflow.results import replay
    from requestflow.results.calibrated import judge, of

    point, document = performance_point
    compare, replayed = replay.compare, []

    def without_calibration(stored, new, **kwargs):
        replayed.append(new)
        if new.get("status") == "ok":
            new = {**new, "performance": {k: v for k, v in new["performance"].items() if k != "calibration"}}
        return compare(stored, new, **kwargs)

    monkeypatch.setattr(replay, "compare", without_calibration)
    hog = multiprocessing.get_context("spawn").Process(target=_interfere, args=(CPU,), daemon=True)
    hog.start()
    try:
        code = main(["replay", point, "--db", store, "--store"])
        interfered = hog.is_alive()
    finally:
        hog.kill()
        hog.join()
    output = capsys.readouterr().out
    assert interfered, f"the interfering process ended early (exit code {hog.exitcode})"
    assert code == 1, output
    assert "DIFFERENT: latency slower" in output
    judged = judge([of(document)], of(replayed[0]))  # with its calibration: the machine was slower
    assert judged.raw.verdict == "slower" and judged.judged == "calibrated", judged.summary()
    # the replay was stored as a result of the same point, in a sweep of its own
    from sqlalchemy import create_engine

    from requestflow.results.database import sqlalchemy_url
    from requestflow.results.query import read_only

    engine = create_engine(sqlalchemy_url(store))
    try:
        _, rows = read_only(engine, "SELECT s.run_id FROM results r JOIN points p ON p.id = r.point_id JOIN sweeps s "
                                    "ON s.id = r.sweep_id WHERE p.point_id = %(p)s", {"p": point})
    finally:
        engine.dispose()
    assert len(rows) == 1 and rows[0][0].startswith(f"replay/{point[:16]}/")


def test_an_accuracy_replay_compares_every_prediction(store, models_dir, tmp_path, capsys):
    document = run_point(models_dir, tmp_path, "--mode", "accuracy", "--limit", "20")
    point = load(store, document, tmp_path)
    assert main(["replay", point, "--db", store]) == 0
    output = capsys.readouterr().out
    assert "SAME: accuracy and predictions identical" in output


@pytest.mark.parametrize("given, message", [
    ("zz12", "is neither a point id"), ("abc", "is neither a point id"), ("ffffff0000", "no point id starts with"),
    ("result:999999", "no such result"), ("result:x", "expected result:N"),
])
def test_bad_points_are_refused_with_a_clear_error(store, given, message, capsys):
    assert main(["replay", given, "--db", store]) == 2
    assert message in capsys.readouterr().err


def test_the_replayed_command_is_the_stored_one_with_its_own_output():
    from operators.replay_board import replay_command

    recorded = ["requestflow", "run", "--quiet", "--offline", "--out", "/old/result.json", "--model", MODEL,
                "--variant", '{"layout": "NCHW"}', "--identify"]
    args = shlex.split(replay_command("/venv/bin/python", recorded, "result.json"))
    assert args == ["/venv/bin/python", "-m", "requestflow.cli", "run", "--quiet", "--offline", "--model", MODEL,
                    "--variant", '{"layout": "NCHW"}', "--out", "result.json"]
    with pytest.raises(UserError, match="was not made by `requestflow run`"):
        replay_command("python3", ["requestflow", "classify", "x.jpg"], "result.json")
