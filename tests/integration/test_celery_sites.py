"""Scale-out with the CeleryExecutor (issue #18), under a real scheduler, api-server and dag-processor: two sites,
each a Celery worker on a host of its own (a network namespace with its own address and hostname, reaching the
controller over a veth and only its own site's two sshd boards; ``tests/celery_stack.py``), Redis as the broker,
the metadata and results in the controller's PostgreSQL. Every task that touches a board runs on its site's worker;
a site without a worker leaves its tasks queued while the other site finishes; a worker host killed in the middle
of a point is detected (task heartbeats) and the point is retried when the worker is back, stored once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from itertools import combinations

import pytest
from sqlalchemy import text

from tests.airflow_run import ROOT, farm_connections
from tests.celery_stack import CeleryStack, available
from tests.fake_sysfs import hikey960_tree
from tests.farm import farm_fixture
from tests.integration.test_scheduler import alive

DAG_ID = "mobilenets_sweep"
SITES = {"a": [1, 3], "b": [2, 4]}  # site -> farm boards rfb<n>
# (interleaved: rfb1 and rfb2 usually have their runner from tests/controller/test_dags.py, so each site has one board
# that needs a new runner, minutes on 2 cores: rfb3 and rfb4 are installed on two hosts, not two slots of one)
CONCURRENCY = 2  # each worker's: its site's boards in parallel (docs/scale-out.md), their pools keeping each exclusive
SITE_OF = {f"rfb{n}": site for site, boards in SITES.items() for n in boards}
BOARDS = tuple(SITE_OF)
MODELS = ["mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160"]
TOUCHING = ("provision", "pin_clocks", "run", "restore_clocks")

farm = farm_fixture(4, scope="module")


@pytest.fixture(scope="module")
def bundle():
    """The boards' runner bundle, built on the controller (which reaches a package index) before the farm starts:
    a worker host here reaches only the controller and its boards, and finds the bundle in the shared cache."""
    from operators.bundle import build_bundle

    return build_bundle()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, bundle, farm, data_dir, board_work_root):
    ok, reason = available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"the Celery stack cannot run in CI: {reason}")
        pytest.skip(f"the Celery stack cannot run here: {reason}")
    sysfs = {b.name: str(hikey960_tree(tmp_path_factory.mktemp(f"sysfs-{b.name}"))) for b in farm.boards}
    env = {"REQUESTFLOW_BOARDS": ",".join(BOARDS), "REQUESTFLOW_RETRY_DELAY_S": "1",
           # a task whose worker died is detected after 30 s without heartbeats (default 5 min; a live task's
           # supervisor heartbeats every 5 s, [workers] min_heartbeat_interval), looked for every 5 s; work queued
           # for a site without a worker is requeued after 10 minutes (the default), past these tests' waits
           "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
           "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
           **farm_connections(farm, board_work_root, sysfs_root=sysfs, site=SITE_OF)}
    with CeleryStack(tmp_path_factory.mktemp("celery-home"), farm, SITES, env,
                     pools=tuple(f"board_{b}" for b in BOARDS), concurrency=CONCURRENCY) as stack:
        stack.services.wait_for_dag(DAG_ID, timeout=240)
        # through the REST API, as the UI does (an `airflow` command costs seconds of imports)
        stack.services.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        yield stack


def sweep(stack: CeleryStack, boards: list[str], tag: str, **conf) -> str:
    from operators.bundle import build_bundle

    build_bundle()  # again: the sources may have changed since (the bundle's digest follows them)
    run_id = f"celery_{tag}_{int(time.time())}"
    conf = {"boards": boards, "models": MODELS, "backends": ["tflite"], "modes": ["performance"],
            "repetitions": 3, "warmup": 1, **conf}
    stack.services.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",  # as the UI's form does
                       {"dag_run_id": run_id, "logical_date": None, "conf": conf})
    return run_id


def board_tasks(stack: CeleryStack, run_id: str) -> list:
    with stack.services.metadata.connect() as connection:
        return connection.execute(text(
            "SELECT task_id, map_index, state, queue, hostname, start_date, end_date, try_number FROM task_instance "
            "WHERE dag_id = :d AND run_id = :r AND task_id LIKE 'board\\_%' AND state IS DISTINCT FROM 'skipped' "
            "ORDER BY start_date"), {"d": DAG_ID, "r": run_id}).fetchall()


def stored(stack: CeleryStack, run_id: str) -> dict[tuple[str, str], int]:
    """(board, model) -> how many ok results the sweep stored."""
    with stack.services.results.connect() as connection:
        rows = connection.execute(text(
            "SELECT b.name, p.model_id, count(*) FROM results r JOIN points p ON p.id = r.point_id "
            "JOIN boards b ON b.id = p.board_id JOIN sweeps s ON s.id = r.sweep_id "
            "WHERE s.run_id = :r AND r.status = 'ok' GROUP BY b.name, p.model_id"), {"r": run_id}).fetchall()
    return {(board, model): count for board, model, count in rows}


def overlaps(a, b) -> bool:
    return a.start_date < b.end_date and b.start_date < a.end_date


def test_each_worker_host_reaches_the_controller_and_only_its_own_sites_boards(stack, farm):
    for site in stack.sites.values():
        for board in farm.boards:
            probe = site.exec("python3", "-c", f"import socket; socket.create_connection(('{board.host}', 22), 3)")
            assert (probe.returncode == 0) == (SITE_OF[board.name] == site.name), (site.name, board.name, probe)
        api = site.exec("python3", "-c", f"import socket; socket.create_connection(('{site.controller_ip}', "
                                         f"{stack.services.port}), 3)")
        assert api.returncode == 0, api.stderr


def test_a_sweep_over_two_sites_runs_every_board_task_on_its_sites_worker(stack):
    run_id = sweep(stack, list(BOARDS), "sites")
    states = stack.services.wait_for_runs(DAG_ID, [run_id], timeout=1500)
    rows = board_tasks(stack, run_id)
    timeline = "\n".join(f"{r.task_id}[{r.map_index}] {r.state} {r.queue}@{r.hostname} try {r.try_number} "
                         f"{r.start_date:%H:%M:%S.%f} - {r.end_date:%H:%M:%S.%f}" for r in rows if r.start_date)
    print(timeline)  # shown with a failure
    assert states == {run_id: "success"}, (timeline, stack.services.log_tail("scheduler"))

    touching = [r for r in rows if r.task_id.split(".")[-1] in TOUCHING]
    assert len(touching) == 4 * (3 + len(MODELS)), timeline  # provision, pin, restore and the points, per board
    for r in touching:
        site = stack.sites[SITE_OF[r.task_id.split(".")[0].removeprefix("board_")]]
        assert (r.state, r.queue, r.hostname) == ("success", site.name, site.hostname), r
    assert {r.hostname for r in rows if r.task_id.endswith(".plan")} <= {s.hostname for s in stack.sites.values()}
    assert socket.gethostname() not in {r.hostname for r in rows}

    for board in BOARDS:  # each board exclusive: its pool's one slot, across both workers
        spans = [r for r in touching if r.task_id.startswith(f"board_{board}.")]
        clashes = [(a.task_id, b.task_id) for a, b in combinations(spans, 2) if overlaps(a, b)]
        assert not clashes, f"tasks overlap on {board}: {clashes}"
    a = [r for r in touching if SITE_OF[r.task_id.split(".")[0].removeprefix("board_")] == "a"]
    b = [r for r in touching if SITE_OF[r.task_id.split(".")[0].removeprefix("board_")] == "b"]
    assert any(overlaps(x, y) for x in a for y in b), "the two sites never worked at the same time:\n" + timeline

    assert stored(stack, run_id) == {(board, model): 1 for board in BOARDS for model in MODELS}


def test_a_site_without_a_worker_leaves_its_tasks_queued_while_the_other_site_finishes(stack):
    stack.stop_worker("b")
    try:
        run_id = sweep(stack, ["rfb1", "rfb2"], "no_worker_b", threads=2)  # other points than the first sweep's
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:  # until site a's board is done (its teardown ran)
            stack.services.check_alive()
            done = {r.task_id: r.state for r in board_tasks(stack, run_id)}
            if done.get("board_rfb1.restore_clocks") in ("success", "failed"):
                break
            time.sleep(1)
        rows = board_tasks(stack, run_id)
        site_a = [r for r in rows if r.task_id.startswith("board_rfb1.") and r.task_id.split(".")[-1] in TOUCHING]
        assert site_a and all(r.state == "success" and r.hostname == "worker-a" for r in site_a), rows
        assert stored(stack, run_id) == {("rfb1", model): 1 for model in MODELS}
        # what an operator sees: the site's work waits in `queued`, on the site's queue (`requestflow queued`, as
        # in a shell of `./dev.sh stack up`: the api-server from $AIRFLOW__API__BASE_URL; docs/scale-out.md)
        shown = subprocess.run([sys.executable, "-m", "requestflow.cli", "queued", "--dag", DAG_ID], text=True,
                               capture_output=True, env=stack.services.env, timeout=120, cwd=str(ROOT))
        assert shown.returncode == 0, shown.stderr
        site_b = shown.stdout.split("site b: ", 1)[-1].split("\nsite ", 1)[0].splitlines()
        assert site_b[0].startswith("1 task(s) queued, the oldest for "), shown.stdout
        assert site_b[1:] == [f"  {DAG_ID}  {run_id}  board_rfb2.provision"], shown.stdout
        with stack.services.metadata.connect() as connection:
            run_state = connection.execute(text("SELECT state FROM dag_run WHERE run_id = :r"), {"r": run_id}).scalar()
        assert run_state == "running"
    finally:
        stack.start_worker("b")
    # the site's worker back: its board's work is picked up and the sweep completes
    stack.wait_for_worker("b", timeout=240)
    states = stack.services.wait_for_runs(DAG_ID, [run_id], timeout=900)
    assert states == {run_id: "success"}, board_tasks(stack, run_id)
    # the board's own work on its site's worker (plan touches no board: the default queue, any worker serving it)
    assert {r.hostname for r in board_tasks(stack, run_id)
            if r.task_id.startswith("board_rfb2.") and r.task_id.split(".")[-1] in TOUCHING} == {"worker-b"}
    assert stored(stack, run_id) == {(board, model): 1 for board in ("rfb1", "rfb2") for model in MODELS}


def test_a_worker_host_killed_mid_point_has_the_point_retried_when_it_is_back_and_stored_once(stack, board_work_root):
    # a point of seconds: the worker is killed as soon as its runner's pid file is there, while the runner is still
    # starting (a fresh Python, its backend loaded, calibrated, warmed up) before its 5000 repetitions; the state
    # seen after the kill (not success) says that the task was still running then
    run_id = sweep(stack, ["rfb1"], "worker_killed", models=MODELS[:1], repetitions=5000, threads=3)
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    deadline = time.monotonic() + 600
    pid_file = None
    while pid_file is None and time.monotonic() < deadline:  # the point's runner has started on the board
        stack.services.check_alive()
        pid_file = next(iter((board_work_root / "rfb1" / "runs").glob(f"{slug}_*/pid")), None)
        time.sleep(0.5)
    assert pid_file is not None, stack.services.log_tail("scheduler")
    job = pid_file.parent

    stack.stop_worker("a", signal.SIGKILL)  # the worker host dies: its process group, then all it ran
    assert alive(int(pid_file.read_text())) or (job / "exit_code").exists()  # the board's runner is its own

    deadline = time.monotonic() + 420  # 30 s without heartbeats, then the scheduler's detection (every 5 s)
    while time.monotonic() < deadline:
        state = {r.task_id: (r.state, r.try_number) for r in board_tasks(stack, run_id)}.get("board_rfb1.run")
        if state and state[0] != "running":
            break
        time.sleep(1)
    assert state and state[0] in ("up_for_retry", "scheduled", "queued"), (state, stack.services.log_tail("scheduler"))

    stack.start_worker("a")
    stack.wait_for_worker("a", timeout=240)
    states = stack.services.wait_for_runs(DAG_ID, [run_id], timeout=1200)
    rows = board_tasks(stack, run_id)
    assert states == {run_id: "success"}, rows
    run = next(r for r in rows if r.task_id == "board_rfb1.run")
    assert run.try_number >= 2 and run.hostname == "worker-a", run
    assert stored(stack, run_id) == {("rfb1", MODELS[0]): 1}  # 0 lost, 0 duplicated
    with stack.services.results.connect() as connection:
        failures = connection.execute(text(
            "SELECT count(*) FROM point_failures f JOIN sweeps s ON s.id = f.sweep_id WHERE s.run_id = :r"),
            {"r": run_id}).scalar()
    assert failures == 0
    assert not alive(int(pid_file.read_text())), "the runner of the killed attempt is still running"



def test_redis_restarted_mid_sweep_and_a_resume_leave_every_point_stored_once(stack, board_work_root):
    boards = ["rfb3", "rfb4"]  # one board of each site
    params = {"repetitions": 1000, "threads": 4}  # Redis dies while the first point's runner starts (seconds)
    # a task queued in Redis when it dies is lost with it: the scheduler requeues a task queued for longer than
    # task_queued_timeout (default 600 s, checked every 120 s; the third time, it fails the task). This test's own
    # scheduler (started before the sweep, nothing in flight) looks after 60 s, every 5 s: here no task waits that
    # long for a worker, even while a board is provisioned for minutes: each site has one board of the sweep (its
    # pool: one task at a time) and its worker two slots, the other one for the short tasks of the default queue,
    # and the scheduler queues at most 4 tasks ([core] parallelism), the two workers' slots
    stack.services.restart("scheduler", AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="60",
                           AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL="5")
    first = sweep(stack, boards, "redis_restart", **params)
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in first)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # a point is running on a board
        stack.services.check_alive()
        if any(any((board_work_root / b / "runs").glob(f"{slug}_*/pid")) for b in boards):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no point started: {board_tasks(stack, first)}")

    stack.stop_redis()  # the broker's queue and its unacknowledged tasks are gone (nothing saved to disk)
    time.sleep(5)
    stack.start_redis()
    states = stack.services.wait_for_runs(DAG_ID, [first], timeout=1800)
    runs = [first]
    if states[first] != "success":  # failed clearly: then a resume completes it
        print("after the Redis restart:", states, board_tasks(stack, first))
        runs.append(sweep(stack, boards, "redis_resume", resume=True, **params))
        assert stack.services.wait_for_runs(DAG_ID, runs[1:], timeout=1200) == {runs[1]: "success"}
    with stack.services.results.connect() as connection:
        counts = connection.execute(text(
            "SELECT b.name, p.model_id, count(*) FROM results r JOIN points p ON p.id = r.point_id "
            "JOIN boards b ON b.id = p.board_id JOIN sweeps s ON s.id = r.sweep_id "
            "WHERE s.run_id = ANY(:r) AND r.status = 'ok' GROUP BY b.name, p.model_id"), {"r": runs}).fetchall()
    assert {(b, m): n for b, m, n in counts} == {(b, m): 1 for b in boards for m in MODELS}, runs
