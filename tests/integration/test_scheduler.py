"""Parallelism, exclusivity and kills under a real scheduler (LocalExecutor, metadata in PostgreSQL, tasks through
the api-server's execution API), not ``dag.test()``: two sweeps at once on two sshd boards. Each board's points
never overlap (its pool has one slot), across both sweeps; the two boards do run at the same time. A point killed
while it runs leaves no runner process on its board, and the board's clocks are restored."""

from __future__ import annotations

import json
import os
import time
from itertools import combinations

import pytest
from sqlalchemy import text

from requestflow.results.query import read_only
from tests.airflow_run import farm_connections
from tests.airflow_services import AirflowServices
from tests.fake_sysfs import governors, hikey960_tree
from tests.farm import farm_fixture

DAG_ID = "mobilenets_sweep"
BOARDS = ("rfb1", "rfb2")
MODELS = ["mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160"]

farm = farm_fixture(2, scope="module")


@pytest.fixture(scope="module")
def sysfs(tmp_path_factory, farm):
    return {board.name: hikey960_tree(tmp_path_factory.mktemp(f"sysfs-{board.name}")) for board in farm.boards}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, farm, data_dir, board_work_root, sysfs):
    # the provisioning tasks copy the shared data (REQUESTFLOW_DATA, set by conftest) to the boards
    env = {"REQUESTFLOW_BOARDS": ",".join(BOARDS), "AIRFLOW__CORE__PARALLELISM": "4",
           "REQUESTFLOW_RETRY_DELAY_S": "1",
           **farm_connections(farm, board_work_root, sysfs_root={b: str(p) for b, p in sysfs.items()})}
    pools = tuple(f"board_{b}" for b in ("local", *BOARDS))
    with AirflowServices(tmp_path_factory.mktemp("airflow-home"), env, pools=pools) as services:
        services.wait_for_dag(DAG_ID, timeout=180)
        yield services


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_sweeps_at_once_keep_each_board_exclusive_and_the_boards_parallel(airflow):
    conf = {"boards": list(BOARDS), "models": MODELS, "backends": ["tflite"], "modes": ["performance"],
            "repetitions": 3, "warmup": 1}
    stamp = int(time.time())
    run_ids = [f"sched_test_{stamp}_{n}" for n in (1, 2)]
    # new DAGs are paused: unpause the sweep only (an unpaused mobilenets_nightly would start a run of its own on
    # the same boards at once, catchup or not)
    airflow.cli("dags", "unpause", DAG_ID)
    # The scoreboard holds the latest result of each point (configuration): two sweeps of the same points would
    # share their rows, so the second sweep runs them with another thread count (a point's identity includes it).
    for threads, run_id in enumerate(run_ids, start=1):
        airflow.cli("dags", "trigger", DAG_ID, "--conf", json.dumps({**conf, "threads": threads}), "--run-id", run_id)

    states = airflow.wait_for_runs(DAG_ID, run_ids, timeout=360)
    with airflow.metadata.connect() as connection:
        # every task of a board's pool: provision, pin, the points, restore (the ArmCL build task expanded to
        # nothing: no armcl point); plan and armcl_needed run outside it
        rows = connection.execute(text(
            "SELECT run_id, task_id, map_index, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = :d AND run_id = ANY(:r) AND task_id LIKE 'board\\_%' AND task_id NOT LIKE '%.plan' "
            "AND task_id NOT LIKE '%.armcl\\_needed' AND state IS DISTINCT FROM 'skipped' ORDER BY start_date"),
            {"d": DAG_ID, "r": run_ids}).fetchall()
        unfinished = connection.execute(text(
            "SELECT run_id, task_id, map_index, state FROM task_instance WHERE dag_id = :d AND run_id = ANY(:r) "
            "AND state IS DISTINCT FROM 'success'"), {"d": DAG_ID, "r": run_ids}).fetchall()
    assert states == dict.fromkeys(run_ids, "success"), (states, unfinished, airflow.log_tail("scheduler"))
    timeline = "\n".join(f"{r.task_id} {r.run_id}[{r.map_index}] {r.start_date:%H:%M:%S.%f} - {r.end_date:%H:%M:%S.%f}"
                         for r in rows)
    print(timeline)  # shown with a failure

    # every point of both sweeps ran (2 sweeps x 2 boards x 2 models), and each sweep provisioned, pinned and
    # restored each board once
    runs = [r for r in rows if r.task_id.endswith(".run")]
    assert len(runs) == 8, timeline
    assert len(rows) == 8 + 2 * 2 * 3, timeline
    assert all(r.state == "success" and r.start_date and r.end_date for r in rows), rows
    spans = {b: [(r.start_date, r.end_date, r.run_id, r.task_id, r.map_index) for r in rows
                 if r.task_id.startswith(f"board_{b}.")] for b in BOARDS}
    for board, board_spans in spans.items():  # one task at a time in a board's pool, across both sweeps
        clashes = [(a, b) for a, b in combinations(board_spans, 2) if overlaps(a, b)]
        assert not clashes, f"tasks overlap in the pool of {board}: {clashes}"
    # the boards work at the same time: a task of one board's pool runs while one of the other's does. (Not
    # necessarily two points: a point takes about 1.5 s here, and one board may still be deploying the runner
    # while the other has run all four of its points.)
    assert any(overlaps(a, b) for a in spans["rfb1"] for b in spans["rfb2"]), timeline

    expected = [(b, m) for b in BOARDS for m in MODELS]
    stored = {run_id: scoreboard(airflow.results, run_id) for run_id in run_ids}
    assert stored == dict.fromkeys(run_ids, expected), stored


def scoreboard(engine, run_id: str) -> list[tuple]:
    """The results store's scoreboard rows of a sweep: 2 boards x 2 models."""
    _, rows = read_only(engine, "SELECT board, model FROM scoreboard WHERE sweep = %(s)s ORDER BY board, model",
                        {"s": run_id})
    return [tuple(row) for row in rows]


def test_killing_a_running_point_stops_its_runner_and_restores_the_clocks(airflow, board_work_root, sysfs):
    run_id = f"kill_test_{int(time.time())}"
    airflow.cli("dags", "unpause", DAG_ID)
    airflow.cli("dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps({
        "boards": ["rfb1"], "models": MODELS[:1], "backends": ["tflite"], "modes": ["performance"],
        "repetitions": 100000, "warmup": 1}))
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    pid_file = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and pid_file is None:  # the runner has started on the board
        airflow.check_alive()
        pid_file = next(iter((board_work_root / "rfb1" / "runs").glob(f"{slug}_*/pid")), None)
        time.sleep(0.5)
    assert pid_file is not None, airflow.log_tail("scheduler")
    group = int(pid_file.read_text())
    assert alive(group)
    assert set(governors(sysfs["rfb1"]).values()) == {"performance"}  # pinned for the sweep

    airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/board_rfb1.run/0",
                {"new_state": "failed"})

    states = airflow.wait_for_runs(DAG_ID, [run_id], timeout=180)
    assert states == {run_id: "failed"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(group):
        time.sleep(0.2)
    assert not alive(group), "the runner's process group survived the kill"
    with airflow.metadata.connect() as connection:
        restore = connection.execute(text(
            "SELECT state FROM task_instance WHERE dag_id = :d AND run_id = :r AND task_id = :t"),
            {"d": DAG_ID, "r": run_id, "t": "board_rfb1.restore_clocks"}).scalar()
    assert restore == "success"
    assert governors(sysfs["rfb1"]) == dict.fromkeys(range(8), "schedutil")  # the originals are back


def alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
