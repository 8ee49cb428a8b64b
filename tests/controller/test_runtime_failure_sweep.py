"""A runtime spec that cannot be installed fails only its points (issue #17): a real sweep through ``dag.test()`` on
the local board with tflite points on the board's default runner and tf points on ``tensorflow-cpu==2.19.0``, which
requestflow excludes on x86_64 (pyproject.toml: 2.20 or 2.21), so provisioning refuses it before building a bundle
or downloading anything. The tflite point runs and is on the scoreboard; the tf point is stored once, with the
refusal, its run task skipped; the run fails (the verdict)."""

from __future__ import annotations

import platform

import pytest

from requestflow.results.query import read_only
from tests.airflow_run import airflow_databases, run_dag

SPEC = "tensorflow-cpu==2.19.0"
MODEL = "mobilenet-v1-0.25-128"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the excluded spec is x86_64's")
def test_a_runtime_that_cannot_be_installed_fails_its_points_and_the_default_runners_run(tmp_path):
    with airflow_databases(tmp_path / "airflow-home", boards=("local",)) as (env, store):
        run = run_dag(env, {"boards": ["local"], "models": [MODEL], "backends": ["tflite", "tf"],
                            "modes": ["performance"], "repetitions": 3, "warmup": 1, "tf_specs": [SPEC]},
                      expect="failed")  # the verdict: the tf point did not succeed
        output = run["output"]
        _, rows = read_only(store, "SELECT backend, library_version FROM scoreboard WHERE sweep = %(s)s",
                            {"s": run["run_id"]})
        assert [backend for backend, _ in rows] == ["tflite"], output[-6000:]
        _, failures = read_only(store, "SELECT f.point->>'backend', f.point->>'runtime', f.error_type, f.message "
                                       "FROM point_failures f JOIN sweeps s ON s.id = f.sweep_id "
                                       "WHERE s.run_id = %(s)s", {"s": run["run_id"]})
        assert len(failures) == 1, failures  # stored once, by provisioning: not again by its run task
        backend, runtime, error_type, message = failures[0]
        assert (backend, runtime, error_type) == ("tf", SPEC, "RuntimeInstallFailed")
        assert message.startswith(f"board local: runtime {SPEC} could not be installed: UserError: runtime spec "
                                  f"{SPEC}: requestflow requires tensorflow-cpu"), message
        assert f"runtime {SPEC} could not be installed on board local" in output  # the run task's skip
        assert "1 ok, 0 already stored, 0 failed, 1 without a result" in output
        assert f"FAILED {MODEL} tf performance {SPEC}: RuntimeInstallFailed" in output
