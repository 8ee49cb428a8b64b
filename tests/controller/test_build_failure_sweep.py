"""One backend's failure does not block the others (issue #17): a sweep whose ArmCL build fails on a board still runs
that board's tf points; the armcl points that needed the build are stored failed with the build's error, never
``NotRun``. The wiring (``dags/factory.py``: the ``builds_done`` gate between the builds and the clocks) is checked
in the DAG, and a real sweep runs through ``dag.test()`` on the local board with a build whose source is missing
(``$REQUESTFLOW_ARMCL_CONFIG``: a test's config/armcl.json). The same sweep runs its tflite points on a runtime spec
that cannot be installed (``ai-edge-litert==1.3.0``, which pyproject.toml excludes on x86_64: refused before any
bundle or download): that fails only those points too, stored once with the refusal."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from requestflow.results.query import read_only
from tests.airflow_run import airflow_databases, run_dag

ROOT = Path(__file__).resolve().parents[2]
BUILD = "armcl_missing_source"
MISSING = "/nonexistent/requestflow-test/arm-compute-library-24.11.tar.xz"
SPEC = "ai-edge-litert==1.3.0"  # requestflow requires >= 1.4 on x86_64


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Path:
    """A config/armcl.json with one build, whose source tarball does not exist."""
    path = tmp_path_factory.mktemp("config") / "armcl.json"
    path.write_text(json.dumps({"builds": {BUILD: {
        "version": "24.11", "source": {"kind": "tarball", "location": MISSING, "sha256": "0" * 64},
        "options": {"opencl": 1, "data_type_support": "fp32"}}}}))
    return path


def test_the_clocks_and_points_wait_for_the_gate_not_for_the_builds(builds, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("REQUESTFLOW_ARMCL_CONFIG", str(builds))
    dag = DagBag(str(ROOT / "dags")).dags["mobilenets_sweep"]
    gate, pin = dag.get_task("board_local.builds_done"), dag.get_task("board_local.pin_clocks")
    # the builds: one mapped task, an instance per build the board's points name (armcl_needed lists them); the
    # gate runs once they are all done however they ended, and is skipped (never started) when none ran
    assert gate.trigger_rule == "all_done_min_one_success" and gate.upstream_task_ids == {
        "board_local.armcl_build", "board_local.armcl_needed", "board_local.plan"}
    build = dag.get_task("board_local.armcl_build")
    assert build.upstream_task_ids == {"board_local.provision", "board_local.armcl_needed", "board_local.plan"}
    assert (build.pool, build.map_index_template) == ("board_local", "{{ task.build_name }}")
    assert pin.upstream_task_ids == {"board_local.provision", "board_local.builds_done"}
    assert "board_local.run" in pin.downstream_task_ids


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the excluded runtime spec is x86_64's")
def test_a_failed_armcl_build_stores_its_points_failed_with_its_error_and_the_tf_point_runs(builds, tmp_path):
    with airflow_databases(tmp_path / "airflow-home", boards=("local",)) as (env, store):
        env = {**env, "REQUESTFLOW_ARMCL_CONFIG": str(builds)}
        run = run_dag(env, {"boards": ["local"], "models": ["mobilenet-v1-0.25-128"],
                            "backends": ["armcl", "tf", "tflite"], "modes": ["performance"], "repetitions": 3,
                            "warmup": 1, "armcl_build": BUILD, "litert_specs": [SPEC]},
                      expect="failed")  # the verdict: the armcl and tflite points did not succeed
        output = run["output"]
        _, rows = read_only(store, "SELECT backend, variant_label, latency_median_s FROM scoreboard "
                                   "WHERE sweep = %(s)s", {"s": run["run_id"]})
        assert [(backend, label) for backend, label, _ in rows] == [("tf", "graph")], output[-6000:]
        assert rows[0][2] > 0
        _, failures = read_only(store, "SELECT f.point->>'backend', f.error_type, f.message FROM point_failures f "
                                       "JOIN sweeps s ON s.id = f.sweep_id WHERE s.run_id = %(s)s ORDER BY 1",
                                {"s": run["run_id"]})
        # each stored once, by the build or by provisioning: not again by its run task, never NotRun
        assert [(backend, error_type) for backend, error_type, _ in failures] == [
            ("armcl", "ArmclBuildFailed"), ("tflite", "RuntimeInstallFailed")], failures
        assert f"source tarball {MISSING} not found" in failures[0][2]
        assert failures[1][2].startswith(f"board local: runtime {SPEC} could not be installed: UserError: runtime "
                                         f"spec {SPEC}: requestflow requires ai-edge-litert"), failures[1][2]
        assert f"the ArmCL build {BUILD} failed" in output and "the 2 other point(s) run" in output
        assert f"runtime {SPEC} could not be installed on board local" in output  # the tflite run task's skip
        assert "1 ok, 0 already stored, 0 failed, 2 without a result" in output
        assert f"FAILED mobilenet-v1-0.25-128 tflite performance {SPEC}: RuntimeInstallFailed" in output
