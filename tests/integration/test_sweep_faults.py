"""Faults in sweeps across two sshd boards (``dag.test()``): a board that cannot be reached, a board whose sshd
dies mid-sweep, resuming a sweep, and secrets that must never reach a log or a result.

In every case the other board's points all land, the failed board's points are stored as failed with a clear
reason, the run fails with a summary naming them, and a resumed sweep completes what is missing with no
duplicates."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.airflow_run import airflow_databases, farm_connections, run_dag
from tests.fake_sysfs import governors, hikey960_tree
from tests.farm import farm_fixture

farm = farm_fixture(2, scope="module")
PASSPHRASE = "tr0ub4dor&3 passphrase"
MODELS = ["mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160"]
CONF = {"boards": ["rfb1", "rfb2"], "models": MODELS, "backends": ["tflite"], "modes": ["performance"],
        "repetitions": 3, "warmup": 1}


@pytest.fixture(scope="module")
def sysfs(tmp_path_factory, farm):
    """A fake HiKey960 sysfs tree per board: clocks are pinned and restored there, never on this machine."""
    return {board.name: hikey960_tree(tmp_path_factory.mktemp(f"sysfs-{board.name}")) for board in farm.boards}


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory, farm, board_work_root, sysfs):
    with airflow_databases(tmp_path_factory.mktemp("airflow-home")) as (env, store):
        env = dict(env, REQUESTFLOW_BOARDS="rfb1,rfb2",
                   **farm_connections(farm, board_work_root, sysfs_root={b: str(p) for b, p in sysfs.items()}))
        yield env, store


def tally(store, run_id: str) -> dict[str, dict[str, list[str]]]:
    from requestflow.results.sweeps import sweep_tally

    return {board: {kind: sorted(e["point"] + ("" if e["error"] is None else f" | {e['error']}") for e in entries)
                    for kind, entries in kinds.items()}
            for board, kinds in sweep_tally(store, run_id).items()}


def ok_points(store, run_ids: list[str]) -> dict[str, int]:
    """Successful results per point over the sweeps ``run_ids``: a point stored twice is a duplicate."""
    with store.connect() as connection:
        return dict(connection.execute(text(
            "SELECT p.point_id, count(*) FROM results r JOIN points p ON p.id = r.point_id "
            "JOIN sweeps s ON s.id = r.sweep_id WHERE r.status = 'ok' AND s.run_id = ANY(:runs) "
            "GROUP BY p.point_id"), {"runs": run_ids}).fetchall())


def results_since(store, board: str, since: float) -> int:
    with store.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM results r JOIN points p ON p.id = r.point_id JOIN boards b ON b.id = p.board_id "
            "WHERE b.name = :b AND r.loaded_at > to_timestamp(:t)"), {"b": board, "t": since}).scalar()


def labels(models, mode="performance"):
    return sorted(f"{m} tflite {mode}" for m in models)


class TestAnUnreachableBoard:
    def test_its_points_fail_clearly_and_the_other_boards_land(self, sweep_env, farm):
        env, store = sweep_env
        env = dict(env)
        broken = json.loads(env["AIRFLOW_CONN_RFB2"])
        broken["port"] = 2222  # nothing listens there: connection refused, every attempt
        env["AIRFLOW_CONN_RFB2"] = json.dumps(broken)

        # no task retries: rfb2 refuses every connection for the whole run, so a retry could only fail the same way
        # (the connect attempts the message counts are the board hook's own, within one attempt)
        run = run_dag(env, CONF, expect="failed", retries=0)

        result = tally(store, run["run_id"])
        assert result["rfb1"]["ok"] == labels(MODELS) and not result["rfb1"]["failed"]
        assert not result["rfb1"]["no_result"]
        assert [entry.split(" | ")[0] for entry in result["rfb2"]["no_result"]] == labels(MODELS)
        assert all("BoardUnreachable: board rfb2 (10.231.2.2:2222) unreachable after 3 attempts" in entry
                   for entry in result["rfb2"]["no_result"]), result["rfb2"]
        assert "board rfb2: 2 point(s): 0 ok, 0 already stored, 0 failed, 2 without a result" in run["output"]


class TestASshdKilledMidSweep:
    def test_fails_the_rest_of_its_points_and_a_resumed_sweep_completes_them_once(
            self, sweep_env, farm, board_work_root, sysfs):
        env, store = sweep_env
        rfb2 = farm.boards[1]
        conf = {**CONF, "modes": ["performance", "accuracy"], "image_limit": 8}
        started = time.time()
        outcome = {}
        # one retry per task, not the DAG's two: rfb2's sshd stays down until the run has ended, so the point its
        # kill interrupted fails its retry as unreachable, as do the points after it, and a third attempt could only
        # meet the refused connection again (3 connect attempts each)
        sweep = threading.Thread(target=lambda: outcome.update(run_dag(env, conf, expect=None, retries=1)))
        sweep.start()
        try:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and sweep.is_alive():
                if results_since(store, "rfb2", started):
                    break  # rfb2 has a point stored: kill its sshd now, with points left to run
                time.sleep(0.2)
            rfb2.kill_sshd()
        finally:
            sweep.join(timeout=1200)
        assert outcome and outcome["state"] == "failed", outcome.get("output", "")[-4000:]
        result = tally(store, outcome["run_id"])
        assert result["rfb1"]["ok"] == sorted(labels(MODELS) + labels(MODELS, "accuracy"))
        assert not result["rfb1"]["failed"] and not result["rfb1"]["no_result"]
        assert 1 <= len(result["rfb2"]["ok"]) < 4
        assert len(result["rfb2"]["ok"]) + len(result["rfb2"]["no_result"]) == 4, result["rfb2"]
        other = [e for e in result["rfb2"]["no_result"]
                 if not ("unreachable" in e or "NotRun" in e or "SSH" in e or "Socket" in e)]
        assert not other, other
        assert governors(sysfs["rfb1"]) == dict.fromkeys(range(8), "schedutil")  # rfb1's teardown restored them

        rfb2.start_sshd()
        resumed = run_dag(env, {**conf, "resume": True})
        result = tally(store, resumed["run_id"])
        assert not result.get("rfb1", {}).get("ok")  # all of rfb1's points were already stored
        assert len(result["rfb2"]["ok"]) == 4 - len(tally(store, outcome["run_id"])["rfb2"]["ok"])
        both = ok_points(store, [outcome["run_id"], resumed["run_id"]])
        assert len(both) == 8, both  # 2 boards x 2 models x 2 modes, every one stored
        assert set(both.values()) == {1}, "a point was stored twice"
        assert "board rfb1: 4 point(s): 0 ok, 4 already stored, 0 failed, 0 without a result" in resumed["output"]
        assert governors(sysfs["rfb2"]) == dict.fromkeys(range(8), "schedutil")


class TestSecrets:
    @pytest.fixture(scope="class")
    def protected_key(self, farm, tmp_path_factory):
        path = tmp_path_factory.mktemp("keys") / "id_protected"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-C", "protected", "-f",
                        str(path)], check=True)
        with open(farm.authorized_keys, "a") as handle:
            handle.write(path.with_suffix(".pub").read_text())
        return path

    def test_a_passphrase_never_reaches_a_task_log_or_a_result(self, sweep_env, farm, board_work_root,
                                                                protected_key):
        env, store = sweep_env
        env = dict(env, REQUESTFLOW_BOARDS="rfb1")
        connection = json.loads(env["AIRFLOW_CONN_RFB1"])
        connection["password"] = PASSPHRASE
        connection["extra"]["key_file"] = str(protected_key)
        env["AIRFLOW_CONN_RFB1"] = json.dumps(connection)

        run = run_dag(env, {**CONF, "boards": ["rfb1"], "models": MODELS[:1], "threads": 1})

        assert "board rfb1: 1 point(s): 1 ok" in run["output"]  # the key and its passphrase were used
        searched = {"the run's output": run["output"]}
        for path in Path(env["AIRFLOW_HOME"]).rglob("*"):
            if path.is_file() and path.suffix in (".log", ".json", ".txt", ""):
                searched[str(path)] = path.read_text(errors="replace")
        for path in (board_work_root / "rfb1").glob("runs/**/*"):
            if path.is_file() and path.suffix in (".log", ".json"):
                searched[str(path)] = path.read_text(errors="replace")
        with store.connect() as db:
            for table in ("results", "errors", "point_failures", "sweeps", "boards", "platform_snapshots"):
                searched[f"table {table}"] = "\n".join(
                    str(row) for row in db.execute(text(f"SELECT * FROM {table}")).fetchall())
        assert PASSPHRASE not in json.dumps(connection["extra"])  # only the password field holds it
        leaks = [name for name, content in searched.items() if PASSPHRASE in content or "tr0ub4dor" in content]
        assert leaks == []
