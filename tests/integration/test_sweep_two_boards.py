"""A sweep through ``dag.test()`` on two sshd boards of the farm (moved from tests/controller/test_dags.py, whose
other sweeps run on the local board): each board's points land in the store, run in the board's own work dir from
its copy of the data, cooled down by the board's (fake) sysfs, its platform stored by provisioning."""

from __future__ import annotations

from requestflow.results.query import read_only
from tests.airflow_run import farm_connections, run_dag
from tests.controller import test_dags
from tests.fake_sysfs import hikey960_tree
from tests.farm import farm_fixture

farm = farm_fixture(2, scope="module")
airflow_env = test_dags.airflow_env  # the same module fixture: an Airflow metadata and a results database
result_documents = test_dags.result_documents


def test_a_sweep_across_two_sshd_boards(airflow_env, farm, board_work_root, tmp_path):
    env, store = airflow_env
    sysfs = {b.name: str(hikey960_tree(tmp_path / b.name, celsius=41.0)) for b in farm.boards}
    env = dict(env, REQUESTFLOW_BOARDS="rfb1,rfb2", **farm_connections(farm, board_work_root, sysfs_root=sysfs))
    run = run_dag(env, {"boards": ["rfb1", "rfb2"], "models": ["mobilenet-v1-0.25-128"], "backends": ["tflite"],
                        "modes": ["performance", "accuracy"], "repetitions": 3, "warmup": 1, "image_limit": 10,
                        "cooldown_c": 45})
    columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s ORDER BY board",
                              {"s": run["run_id"]})
    rows = [dict(zip(columns, row, strict=True)) for row in rows]
    assert [(r["board"], r["model"]) for r in rows] == [("rfb1", "mobilenet-v1-0.25-128"),
                                                       ("rfb2", "mobilenet-v1-0.25-128")]
    for board, row in zip(farm.boards, rows, strict=True):  # the runner ran in the board's own work dir
        documents = result_documents(board_work_root / board.name, run["run_id"])
        perf = next(d for d in documents if "performance" in d)
        acc = next(d for d in documents if "accuracy" in d)
        assert row["latency_median_s"] == perf["performance"]["median"] and row["top1"] == acc["accuracy"]["top1"]
        assert len(perf["performance"]["samples"]) == 3 and acc["accuracy"]["n"] == 10
        # the runner read only its work dir: weights and images came from the board's copy of the data
        work = str(board_work_root / board.name)
        assert all(d["context"]["weights"]["files"][0].startswith(work) for d in documents)
        assert acc["context"]["dataset"]["path"].startswith(work)
        cooled = [line for line in run["output"].splitlines() if "cool-down" in line and board.name in line]
        assert cooled and all("41.0 C after 0 s of cool-down (below 45" in line for line in cooled), cooled
        # provisioning stored the board's platform, read from its (fake) sysfs tree
        _, platform = read_only(store, "SELECT info->'platform'->'board'->>'id', kind FROM boards "
                                       "WHERE name = %(b)s", {"b": board.name})
        assert platform == [("hikey960", "ssh")]
