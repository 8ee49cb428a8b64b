"""The DAGs: they import, follow the project's policies, validate their trigger form, and run sweeps end to end
(``dag.test()``, one task at a time: wiring, not parallelism) on the local board (on two sshd boards:
tests/integration/test_sweep_two_boards.py)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from requestflow.board.catalogue import CONFIGS
from requestflow.results.query import read_only
from tests.airflow_run import airflow_databases, run_dag
from tests.armcl_real import real_build

ROOT = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")

@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(ROOT / "dags"))


class TestTheDags:
    def test_import_with_no_errors(self, dagbag):
        assert dagbag.import_errors == {}
        assert set(dagbag.dags) == {"mobilenets_sweep", "mobilenets_nightly", "board_provision", "regression_check"}

    def test_every_dag_has_tags_a_doc_and_retries(self, dagbag):
        for dag in dagbag.dags.values():
            assert dag.tags and "requestflow" in dag.tags
            assert dag.doc_md and len(dag.doc_md) > 50
            # verdict only reads what summary found: a retry could not change its answer
            assert all(task.retries >= 1 for task in dag.tasks if task.task_id != "verdict"), dag.dag_id

    def test_every_task_that_touches_a_board_is_in_that_boards_pool(self, dagbag):
        for dag_id in ("mobilenets_sweep", "board_provision"):
            touching = [t for t in dagbag.dags[dag_id].tasks if t.task_id.split(".")[-1] in
                        ("provision", "armcl_build", "pin_clocks", "run", "restore_clocks")]
            assert len(touching) == (5 if dag_id == "mobilenets_sweep" else 3)  # the sweep's builds: armcl_build
            assert all(t.pool == "board_local" for t in touching), dag_id

    def test_clocks_are_restored_by_a_teardown_of_the_pinning(self, dagbag):
        dag = dagbag.dags["mobilenets_sweep"]
        pin, restore = dag.get_task("board_local.pin_clocks"), dag.get_task("board_local.restore_clocks")
        assert pin.is_setup and restore.is_teardown
        assert "board_local.run" in restore.upstream_task_ids and pin.task_id in restore.upstream_task_ids

    def test_the_summary_waits_for_every_boards_points_and_the_verdict_for_the_summary(self, dagbag):
        dag = dagbag.dags["mobilenets_sweep"]
        assert {"board_local.run", "board_local.restore_clocks"} <= dag.get_task("summary").upstream_task_ids
        assert "summary" in dag.get_task("verdict").upstream_task_ids

    def test_the_nightly_sweep_is_scheduled_from_the_versioned_config(self, dagbag):
        config = json.loads((ROOT / "config" / "nightly.json").read_text())
        nightly = dagbag.dags["mobilenets_nightly"]
        assert nightly.timetable.expression == config["schedule"]
        assert nightly.params["models"] == config["params"]["models"]


class TestTheTriggerForm:
    @pytest.mark.parametrize("field, value, message", [
        ("models", ["mobilenet-v1-0.3-128"], "is not one of"),
        ("boards", ["hikey"], "is not one of"),
        ("repetitions", 0, "less than the minimum of 1"),
        ("boards", ["x'; DROP TABLE boards; --"], "is not one of"),
        ("cpus", "0-3; rm -rf /", "does not match"),
        ("models", [], "non-empty"),
        ("backends", ["onnx"], "is not one of"),
        ("image_limit", 0, "less than the minimum of 1"),
        ("cluster", "middle", "is not one of"),
        ("cooldown_c", "45; DROP TABLE results", "is not of type"),
        ("release", "2018'--", "is not one of"),
        ("armcl_layouts", ["NWHC"], "is not one of"),
        ("armcl_tuners", [], "non-empty"),
        ("armcl_build", "armcl_25_02", "is not one of"),
        ("weights", "randomly", "is not one of"),
        ("weights", None, "is not of type"),
    ])
    def test_bad_params_are_rejected_before_anything_runs(self, dagbag, field, value, message):
        from airflow.sdk.exceptions import ParamValidationError

        params = copy.deepcopy(dagbag.dags["mobilenets_sweep"].params)
        with pytest.raises(ParamValidationError, match=message):
            params[field] = value
            params.validate()

    def test_the_defaults_are_valid_and_cover_all_sixteen_models(self, dagbag):
        params = dagbag.dags["mobilenets_sweep"].params
        params.validate()
        assert len(params["models"]) == 16

    def test_armcl_points_are_one_per_variant_and_name_their_build(self, dagbag):
        from operators.sweep import plan
        from requestflow.board.catalogue import point_label

        params = dagbag.dags["mobilenets_sweep"].params.validate()
        params.update(models=["mobilenet-v1-0.25-128"], backends=["armcl", "tflite"], modes=["accuracy"],
                      armcl_layouts=["NHWC", "NCHW"], armcl_conv_methods=["GEMM", "DIRECT"])
        points = plan("local", params)
        labels = [point_label(p) for p in points]
        assert labels == ["mobilenet-v1-0.25-128 armcl accuracy CL/NHWC/GEMM/NONE",
                          "mobilenet-v1-0.25-128 armcl accuracy CL/NHWC/DIRECT/NONE",
                          "mobilenet-v1-0.25-128 armcl accuracy CL/NCHW/GEMM/NONE",
                          "mobilenet-v1-0.25-128 armcl accuracy CL/NCHW/DIRECT/NONE",
                          "mobilenet-v1-0.25-128 tflite accuracy"]
        assert {p.get("armcl_build") for p in points} == {"armcl_24_11_cl_fp32", None}
        assert "variant" not in points[-1]

    def test_weights_default_to_the_registry_and_leave_the_points_as_they_were(self, dagbag):
        import shlex

        from operators.run_point import runner_command
        from operators.sweep import plan

        params = dagbag.dags["mobilenets_sweep"].params.validate()
        assert params["weights"] == "registry"
        points = plan("local", params)
        assert len(points) == 32 and not any("weights" in p for p in points)  # their identities are unchanged
        assert "--weights" not in shlex.split(runner_command("python3", points[0]))

    def test_random_weights_plan_all_sixteen_models_for_performance_with_weights_random(self, dagbag):
        import shlex

        from operators.run_point import runner_command
        from operators.sweep import plan
        from requestflow.cli import build_parser

        params = dagbag.dags["mobilenets_sweep"].params.validate()
        params.update(weights="random", modes=["performance"], backends=["tflite", "tf"], precision="fp32")
        points = plan("local", params)
        assert len(points) == 32 and {p["weights"] for p in points} == {"random"}
        assert {p["model"] for p in points} == {c.id for c in CONFIGS}
        for point in points[:2]:
            args = shlex.split(runner_command("python3", point))
            assert args[args.index("--weights") + 1] == "random"
            parsed = build_parser().parse_args(args[3:])  # the runner's own parser reads it as --weights random
            assert parsed.weights == ["random"] and parsed.mode == "performance" and parsed.precision == "fp32"
        # resume identifies a point with the same command line, --identify instead of --out
        assert "--weights random" in runner_command("python3", points[0], out=None)

    @pytest.mark.parametrize("change, message", [
        ({}, r"weights = random measures performance only, and accuracy needs real weights: 2 accuracy point\(s\) "
             r"cannot run \(mobilenet-v1-0\.75-160 tflite accuracy, mobilenet-v1-0\.25-128 tflite accuracy\): "
             r"choose modes = performance only, or weights = registry"),
        ({"modes": ["performance"], "precision": "uint8"}, r"runs fp32 weights, not precision uint8"),
        ({"modes": ["performance"], "release": "2018_08_02_quant"},
         r"uses no release \(2018_08_02_quant names registry weights\)"),
    ])
    def test_random_weights_refuse_what_they_cannot_run_before_any_board(self, dagbag, change, message):
        """The default modes include accuracy: the plan names the accuracy points rather than dropping them, so
        that the sweep never has fewer points than the form asked for without saying so."""
        from operators.sweep import plan

        params = dagbag.dags["mobilenets_sweep"].params.validate()
        params.update(weights="random", models=["mobilenet-v1-0.75-160", "mobilenet-v1-0.25-128"], **change)
        with pytest.raises(ValueError, match=message):
            plan("local", params)
        assert plan("rfb9", params) == []  # a board not chosen has no points, whatever the params

    def test_a_point_on_random_weights_has_an_identity_of_its_own(self, dagbag, data_dir):
        """What resume and the store key on: the runner's --identify on the planned points' own command lines. For
        0.25 x 224, whose real weights are float (the .h5): the same backend, variant, precision and preprocessing
        on random and on real weights, and still two points, by the weights' sha256 (the random ones': a seeded He
        initialisation per config, the same each time, so a resume finds a point on random weights stored)."""
        import shlex
        import subprocess
        import sys

        from operators.run_point import runner_command
        from operators.sweep import plan
        from requestflow.results.identity import identity, point_id

        params = dagbag.dags["mobilenets_sweep"].params.validate()
        params.update(models=["mobilenet-v1-0.25-224"], modes=["performance"], precision="fp32", threads=1)
        contexts = []
        for weights in ("registry", "random", "random"):
            [point] = plan("local", {**params, "weights": weights})
            result = subprocess.run(shlex.split(runner_command(sys.executable, point, out=None)), text=True,
                                    capture_output=True, timeout=600,
                                    env={**os.environ, "REQUESTFLOW_DATA": str(data_dir)})
            assert result.returncode == 0, result.stderr
            contexts.append(json.loads(result.stdout.strip().splitlines()[-1])["context"])
        real, random, again = contexts
        assert (real["weights"]["random"], random["weights"]["random"]) == (False, True)
        assert real["weights"]["files"] == [str(data_dir / "models" / "mobilenet_v1_0.25_224.h5")]
        assert random["weights"]["sha256"] != real["weights"]["sha256"]
        assert point_id("local", random) != point_id("local", real)
        assert point_id("local", random) == point_id("local", again)
        different = {k for k, v in identity("local", random).items() if identity("local", real)[k] != v}
        assert different == {"weights_sha256"}, different

    def test_the_runner_command_carries_the_variant_and_the_build_folder(self):
        import shlex

        from operators.run_point import runner_command

        point = {"model": "mobilenet-v1-0.25-128", "backend": "armcl", "mode": "performance",
                 "variant": {"target": "CL", "layout": "NCHW", "conv_method": "GEMM", "tuner": "NONE"},
                 "armcl_build": "armcl_24_11_cl_fp32"}
        args = shlex.split(runner_command("python3", point, armcl_build="/w/armcl/builds/abc"))
        assert json.loads(args[args.index("--variant") + 1]) == point["variant"]
        assert args[args.index("--armcl-build") + 1] == "/w/armcl/builds/abc"
        assert "armcl_24_11_cl_fp32" not in args


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    with airflow_databases(tmp_path_factory.mktemp("airflow-home")) as env_and_store:
        yield env_and_store


def result_documents(root: Path, run_id: str) -> list[dict]:
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    return [json.loads(p.read_text()) for p in root.glob(f"**/runs/{slug}_*/result.json")]


class TestSweeps:
    def test_a_sweep_on_the_local_board_lands_in_the_store_matching_the_runners_json(self, airflow_env):
        env, store = airflow_env
        run = run_dag(env, {"models": ["mobilenet-v1-0.25-128", "mobilenet-v1-0.5-160"], "backends": ["tflite"],
                            "repetitions": 5, "warmup": 1, "image_limit": 20})
        assert run["state"] == "success"
        columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s ORDER BY model",
                                  {"s": run["run_id"]})
        rows = [dict(zip(columns, row, strict=True)) for row in rows]
        documents = result_documents(Path(env["REQUESTFLOW_STATE"]), run["run_id"])
        assert len(rows) == 2 and len(documents) == 4
        for row in rows:
            perf = next(d for d in documents if d["context"]["model"]["id"] == row["model"] and "performance" in d)
            acc = next(d for d in documents if d["context"]["model"]["id"] == row["model"] and "accuracy" in d)
            assert row["board"] == "local"
            assert row["latency_median_s"] == perf["performance"]["median"]
            assert row["top1"] == acc["accuracy"]["top1"] and row["image_count"] == 20

    def test_provisioning_the_local_board_stores_its_platform_and_its_armcl_build(self, airflow_env):
        """board_provision on this machine: the platform stored, the clocks reported, and the ArmCL build of
        config/armcl.json made in the board's pool (the local board's builds are the machine's ArmCL cache, where
        tests/armcl_real.py's build is: reused), with its provenance in library_builds, and the MobileNet program
        compiled against it."""
        env, store = airflow_env
        real_build()
        run = run_dag(env, {"boards": ["local"]}, dag_id="board_provision")
        assert "reused from the board's cache" in run["output"] and "MobileNet program" in run["output"]
        _, rows = read_only(store, "SELECT kind, info->'platform'->>'arch' FROM boards WHERE name = 'local'")
        assert rows == [("local", "x86_64")]
        _, builds = read_only(store, "SELECT backend, library, version, info->'options'->>'opencl', "
                                     "info->'options'->>'neon' FROM library_builds WHERE backend = 'armcl'")
        assert builds == [("armcl", "arm_compute", "24.11", "1", "0")]
        assert "clocks: no cpufreq" in run["output"] or "pinned by" in run["output"]

    def test_a_sweep_with_armcl_variants_lands_with_its_variants_and_accuracy_checked_against_tf(self, airflow_env):
        """armcl x 2 layouts x 2 conv methods beside tf, on this machine: the ArmCL build task reuses the machine's
        build and compiles the program once; every variant is its own scoreboard row, checked against tf's top-1 on
        the same weights and images, with the PoCL caveat."""
        env, store = airflow_env
        build, _ = real_build()
        run = run_dag(env, {"models": ["mobilenet-v1-0.25-128"], "backends": ["armcl", "tf"],
                            "modes": ["performance", "accuracy"], "repetitions": 3, "warmup": 1, "image_limit": 30,
                            "armcl_layouts": ["NHWC", "NCHW"], "armcl_conv_methods": ["DEFAULT", "GEMM"]})
        assert run["state"] == "success"
        assert "ArmCL 24.11 build" in run["output"] and "reused from the board's cache" in run["output"]
        columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s ORDER BY backend, "
                                         "variant_label", {"s": run["run_id"]})
        rows = [dict(zip(columns, row, strict=True)) for row in rows]
        assert [(r["backend"], r["variant_label"]) for r in rows] == [
            ("armcl", "CL/NCHW/DEFAULT/NONE"), ("armcl", "CL/NCHW/GEMM/NONE"), ("armcl", "CL/NHWC/DEFAULT/NONE"),
            ("armcl", "CL/NHWC/GEMM/NONE"), ("tf", "graph")]  # tf: its compiler variant (#17)
        tf = rows[-1]
        assert tf["accuracy_check"] == "reference" and tf["image_count"] == 30
        for row in rows[:-1]:
            assert row["latency_median_s"] > 0 and row["image_count"] == 30
            assert row["reference_top1"] == tf["top1"] and row["accuracy_check"] == "ok", row
            assert any("not Mali GPU timings" in c for c in row["caveats"]), row["caveats"]
        _, keys = read_only(store, "SELECT DISTINCT r.document->'context'->'backend'->'build'->>'key' FROM results r "
                                   "JOIN sweeps s ON s.id = r.sweep_id WHERE s.run_id = %(s)s AND "
                                   "r.document->'context'->'backend'->>'name' = 'armcl'", {"s": run["run_id"]})
        assert keys == [(build.name,)]

    def test_a_sweep_on_random_weights_runs_configs_without_real_weights_labelled_random(self, airflow_env, data_dir):
        """weights = random: 0.75 x 160 has no real weights in the shared data (a registry sweep refuses it at
        provisioning); on random weights, explicitly, its performance point runs, lands on the scoreboard with
        random_weights = true, and provisioning copies no weights file (0.25 x 128, which has real weights, runs on
        random ones too: the sweep's weights are one choice for every point)."""
        env, store = airflow_env
        models = ["mobilenet-v1-0.75-160", "mobilenet-v1-0.25-128"]
        assert not list((data_dir / "models").glob("mobilenet_v1_0.75_160*"))
        run = run_dag(env, {"models": models, "backends": ["tflite"], "modes": ["performance"], "weights": "random",
                            "repetitions": 3, "warmup": 1, "threads": 1})
        assert "--weights random" in run["output"]  # the runner's command line, in the point's task log
        assert "board local: 0 data file(s)" in run["output"], run["output"][-3000:]
        columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s ORDER BY model",
                                  {"s": run["run_id"]})
        rows = [dict(zip(columns, row, strict=True)) for row in rows]
        assert [(r["model"], r["random_weights"], r["precision"]) for r in rows] == [
            ("mobilenet-v1-0.25-128", True, "fp32"), ("mobilenet-v1-0.75-160", True, "fp32")]
        assert all(r["latency_median_s"] > 0 and r["top1"] is None for r in rows)
        documents = result_documents(Path(env["REQUESTFLOW_STATE"]), run["run_id"])
        assert len(documents) == 2
        for document in documents:
            weights = document["context"]["weights"]
            assert (weights["random"], weights["origin"], weights["files"]) == (True, "random", [])
            assert document["command"][document["command"].index("--weights") + 1] == "random"
        # the same point on real weights is another point: 0.25 x 128's registry weights give another identity
        real = run_dag(env, {"models": models[1:], "backends": ["tflite"], "modes": ["performance"],
                             "repetitions": 3, "warmup": 1, "threads": 1})
        _, ids = read_only(store, "SELECT sweep, random_weights, point_id, weights_sha256 FROM scoreboard "
                                  "WHERE model = %(m)s AND threads = 1 AND sweep IN (%(a)s, %(b)s) ORDER BY sweep",
                           {"m": models[1], "a": run["run_id"], "b": real["run_id"]})
        assert len(ids) == 2 and {r[1] for r in ids} == {True, False}
        assert ids[0][2] != ids[1][2] and ids[0][3] != ids[1][3]

    def test_a_sweep_on_random_weights_with_accuracy_points_is_refused_before_any_board(self, airflow_env):
        env, store = airflow_env
        run = run_dag(env, {"models": ["mobilenet-v1-0.75-160"], "weights": "random"}, expect=None)  # both modes
        assert run["state"] == "failed", run["output"][-3000:]
        assert ("weights = random measures performance only, and accuracy needs real weights: 1 accuracy point(s) "
                "cannot run (mobilenet-v1-0.75-160 tflite accuracy)") in run["output"]
        assert "the sweep's params are refused: weights = random" in run["output"].split("starting task_id=verdict")[-1]
        assert "starting task_id=board_local.provision" not in run["output"]
        assert run["output"].count("starting task_id=board_local.plan ") == 1  # refused once: no retry can help
        _, rows = read_only(store, "SELECT count(*) FROM results r JOIN sweeps s ON s.id = r.sweep_id "
                                   "WHERE s.run_id = %(s)s", {"s": run["run_id"]})
        assert rows == [(0,)]

    def test_a_dry_run_lists_the_points_and_runs_none(self, airflow_env):
        env, store = airflow_env
        run = run_dag(env, {"models": ["mobilenet-v1-0.25-160"], "dry_run": True})
        assert run["state"] == "success"
        _, rows = read_only(store, "SELECT count(*) FROM scoreboard WHERE sweep = %(s)s", {"s": run["run_id"]})
        assert rows == [(0,)]
