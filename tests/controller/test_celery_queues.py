"""Sites (issue #18): every task that touches a board goes to its site's Celery queue, set per board task group at
parse time as the pools are; boards without a site (and the tasks that touch no board) go to the default queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOUCHING = ("provision", "armcl_build", "pin_clocks", "run", "restore_clocks")  # armcl_build: a sweep's builds


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    extras = {"key_file": "/keys/k", "no_host_key_check": True}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTFLOW_BOARDS", "local,in_a,in_b,nowhere")
        patch.setenv("AIRFLOW_CONN_IN_A", json.dumps({"conn_type": "ssh", "host": "10.0.0.2",
                                                     "extra": {**extras, "site": "a"}}))
        patch.setenv("AIRFLOW_CONN_IN_B", json.dumps({"conn_type": "ssh", "host": "10.0.0.3",
                                                     "extra": {**extras, "site": "b"}}))
        patch.setenv("AIRFLOW_CONN_NOWHERE", json.dumps({"conn_type": "ssh", "host": "10.0.0.4", "extra": extras}))
        yield DagBag(str(ROOT / "dags"))


def test_every_task_that_touches_a_board_goes_to_its_sites_queue(dagbag):
    assert dagbag.import_errors == {}
    expected = {"local": "default", "in_a": "a", "in_b": "b", "nowhere": "default"}
    for dag_id in ("mobilenets_sweep", "mobilenets_nightly", "board_provision"):
        tasks = dagbag.dags[dag_id].tasks
        for board, queue in expected.items():
            touching = [t for t in tasks if t.task_id.startswith(f"board_{board}.")
                        and t.task_id.split(".")[-1] in TOUCHING]
            assert len(touching) >= 3, (dag_id, board)
            assert {t.task_id: t.queue for t in touching} == dict.fromkeys((t.task_id for t in touching), queue)
            assert all(t.pool == f"board_{board}" for t in touching)


def test_what_touches_no_board_stays_on_the_default_queue(dagbag):
    dag = dagbag.dags["mobilenets_sweep"]
    assert {dag.get_task(t).queue for t in ("summary", "verdict", "board_in_a.plan", "board_in_b.plan",
                                            "board_in_a.armcl_needed")} == {"default"}
