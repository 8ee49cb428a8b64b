"""A farm board that reboots mid-point, in a real sweep (``dag.test()``; issue #22): every process of the board
killed with its sshd, the sshd started again, its boot id changed and its clocks back at the kernel's governors.

The interrupted point's attempt ends naming the reboot (its task log and its stored failure: the run's tasks have
no retries here, so that attempt is its last); the board's next point finds the reboot, pins the clocks again and
runs; a resumed sweep completes what is missing: every point stored once, none lost, none twice."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import text

from tests.airflow_run import airflow_databases, farm_connections, run_dag
from tests.fake_sysfs import governors, hikey960_tree
from tests.farm import farm_fixture
from tests.integration.test_sweep_faults import ok_points
from tests.processes import commands_under

farm = farm_fixture(1, scope="module")
MODELS = ["mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160", "mobilenet-v1-0.5-128"]
CONF = {"boards": ["rfb1"], "models": MODELS, "backends": ["tflite"], "modes": ["performance"], "weights": "random",
        "repetitions": 4000, "warmup": 5, "threads": 1}


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory, farm, board_work_root):
    sysfs = hikey960_tree(tmp_path_factory.mktemp("sysfs-rfb1"))
    boot_id = tmp_path_factory.mktemp("boot") / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    with airflow_databases(tmp_path_factory.mktemp("airflow-home")) as (env, store):
        env = dict(env, REQUESTFLOW_BOARDS="rfb1",
                   **farm_connections(farm, board_work_root, sysfs_root=str(sysfs), boot_id_file=str(boot_id)))
        yield env, store, sysfs, boot_id


def stored(store, run_id: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The run's points with a successful result, and its points stored without one (point, error)."""
    from requestflow.results.sweeps import sweep_tally

    board = sweep_tally(store, run_id).get("rfb1", {})
    return (sorted(e["point"] for e in board.get("ok", [])),
            [(e["point"], e["error"]) for e in board.get("no_result", []) + board.get("failed", [])])


def reboot(board, work, sysfs, boot_id) -> None:
    """What a reboot does to the board: a new boot id, every process gone (the sshd's namespace killed), the
    kernel's governors back, the sshd up again."""
    boot_id.write_text(f"{uuid.uuid4()}\n")
    board.kill_sshd()
    for path in sysfs.glob("sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"):
        path.write_text("schedutil\n")
    assert commands_under(work) == [], "a process of the board outlived its reboot"
    board.start_sshd()


def test_a_reboot_mid_point_is_named_the_clocks_pinned_again_and_a_resume_completes_the_sweep(
        sweep_env, farm, board_work_root):
    env, store, sysfs, boot_id = sweep_env
    rfb1, work = farm.boards[0], board_work_root / "rfb1"
    outcome: dict = {}
    started = time.time()

    def run() -> None:  # no retries: the interrupted attempt is its point's last, its failure stored
        try:
            outcome.update(run_dag(env, CONF, expect="failed", retries=0))
        except BaseException as exc:  # noqa: BLE001 - raised again below
            outcome["error"] = exc

    sweep = threading.Thread(target=run)
    sweep.start()
    try:
        deadline, job = time.monotonic() + 900, None
        while job is None and time.monotonic() < deadline and sweep.is_alive():
            ours = [folder for folder in work.glob("runs/*") if _mtime(folder / "pid") > started]  # this run's
            finished = {folder for folder in ours if (folder / "result.json").is_file()}
            running = [folder for folder in ours if folder not in finished
                       and (folder / "progress.jsonl").is_file()
                       and '"repetitions"' in (folder / "progress.jsonl").read_text()]
            if finished and running:  # a point stored, the next one measuring
                job = running[0]
            time.sleep(0.1)
        assert job is not None, f"no second point ever ran: {outcome.get('error') or 'the sweep still runs'}"
        reboot(rfb1, work, sysfs, boot_id)
    finally:
        sweep.join(timeout=1200)
    assert not sweep.is_alive(), "the sweep still runs 20 min after the reboot"
    if "error" in outcome:
        raise outcome["error"]
    log = outcome["output"]
    ok, failed = stored(store, outcome["run_id"])
    assert len(ok) == 2 and len(failed) == 1, (ok, failed, log[-6000:])
    (interrupted, message), = failed
    assert "the runner's job was lost (the board rebooted (boot id" in message, message
    assert f"the board rebooted (boot id {boot_id.read_text().strip()} now)" in log, log[-6000:]  # the task log
    assert "rfb1 rebooted since its last point" in log, log[-6000:]
    assert "clocks pinned again after the reboot" in log, log[-6000:]
    with store.connect() as connection:
        info = connection.execute(text("SELECT info->'boards'->'rfb1' FROM sweeps WHERE run_id = :run"),
                                  {"run": outcome["run_id"]}).scalar()
    assert info["after_reboot"]["clocks"]["pinned"] is True, info
    assert governors(sysfs) == dict.fromkeys(range(8), "schedutil")  # the sweep's teardown restored them

    resumed = run_dag(env, {**CONF, "resume": True})
    again, nothing = stored(store, resumed["run_id"])
    assert again == [interrupted] and nothing == []
    both = ok_points(store, [outcome["run_id"], resumed["run_id"]])
    assert len(both) == 3, both  # none lost
    assert set(both.values()) == {1}, "a point was stored twice"


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
