"""A sweep of two ArmCL builds names the build of each point it accounts for (issue #17): the summary's planned
labels and the stored tally agree on the build, so a failure line says which build failed and a point that never
ran on one build is not hidden by its twin on the other.

``operators.sweep_tasks.summarize`` runs on the real PostgreSQL server (a throwaway store) with a stand-in task
instance whose XComs are a sweep's: the plan of board ``rpi`` (two builds x one armcl point), the build tasks' keys
and the run tasks' returns. The stored armcl results are real runner documents relabelled as ArmCL runs on each
build (``context.backend``: name, library, version, build key, variant, as the armcl backend records them)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from operators.sweep import form, plan
from operators.sweep_tasks import summarize
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from requestflow.results.sweeps import record_failure, sweep_tally
from tests.results import test_results

documents = test_results.documents  # real runner documents (a session fixture of that module)
database, store = test_results.database, test_results.store
MODEL = "mobilenet-v1-0.25-128"
NEW, OLD = "armcl_24_11_cl_fp32", "armcl_20_08_cl_fp32"
KEYS = {NEW: "a" * 64, OLD: "b" * 64}
VERSIONS = {NEW: "24.11", OLD: "20.08"}
VARIANT = {"target": "CL", "layout": "NHWC", "conv_method": "DEFAULT", "tuner": "NONE"}
LABEL = f"{MODEL} armcl performance CL/NHWC/DEFAULT/NONE"


def params() -> dict:
    p = {name: field["default"] for name, field in form(None, [NEW, OLD], ["rpi"]).items()}
    return {**p, "boards": ["rpi"], "models": [MODEL], "backends": ["armcl"], "modes": ["performance"],
            "armcl_build": [NEW, OLD], "repetitions": 3, "warmup": 1}


def on_build(document: dict, build: str) -> dict:
    out = copy.deepcopy(document)
    out["context"]["backend"].update(name="armcl", library="arm_compute", version=VERSIONS[build], variant=VARIANT,
                                     build={"key": KEYS[build], "options": {"opencl": "1"}})
    return out


class TI:
    """The XComs of a sweep on board rpi: its plan, the builds its points need (armcl_needed), the mapped build
    task's returns (map index i: the i-th build), the run tasks' returns."""

    def __init__(self, points: list[dict], built: dict[str, dict | None], runs: list[dict]):
        self.xcoms = {("board_rpi.plan", None): points, ("board_rpi.run", None): runs,
                      ("board_rpi.armcl_needed", None): [{"build_name": name, "spec": {}} for name in built],
                      **{("board_rpi.armcl_build", index): value for index, value in enumerate(built.values())}}

    def xcom_pull(self, task_ids: str, map_indexes: int | None = None):
        return self.xcoms.get((task_ids, map_indexes))


@pytest.fixture
def sweep(store, database, monkeypatch):
    """summarize(points, built, runs) of sweep ``sweep-1`` on the throwaway store: its counts and printed lines."""
    monkeypatch.setenv("REQUESTFLOW_BOARDS", "rpi")
    monkeypatch.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", database.replace("postgresql+psycopg", "postgresql"))

    def run(built: dict[str, dict | None], runs: list[dict], capsys) -> tuple[dict, str]:
        points = plan("rpi", params())
        assert [p["armcl_build"] for p in points] == [NEW, OLD]
        counts = summarize({"ti": TI(points, built, runs), "run_id": "sweep-1", "params": params(),
                            "dag": SimpleNamespace(dag_id="mobilenets_sweep")})
        return counts, capsys.readouterr().out
    return run


def failures(store) -> list[tuple]:
    return read_only(store, "SELECT f.point->>'armcl_build', f.error_type FROM point_failures f JOIN sweeps s "
                            "ON s.id = f.sweep_id WHERE s.run_id = 'sweep-1' ORDER BY f.id")[1]


def test_the_failure_line_names_the_build_that_failed(store, documents, sweep, capsys):
    load_documents(store, [("new", on_build(documents["perf_tflite"], NEW))], board="rpi", sweep="sweep-1")
    old_point = plan("rpi", params())[1]
    record_failure(store, "sweep-1", "mobilenets_sweep", "rpi", old_point, "ArmclBuildFailed",
                   "board rpi: ArmCL 20.08 build failed: source tarball not found", attempts=1)
    counts, out = sweep({NEW: {"key": KEYS[NEW], "path": "/b/new"}, OLD: None}, [{"point": LABEL, "status": "ok"}],
                        capsys)
    assert counts["failed_points"] == [f"rpi: {LABEL} {OLD}"]
    assert f"  FAILED {LABEL} {OLD}: ArmclBuildFailed: board rpi: ArmCL 20.08 build failed" in out
    assert counts["boards"]["rpi"] == {"planned": 2, "ok": 1, "already_stored": 0, "failed": 0, "no_result": 1}
    assert failures(store) == [(OLD, "ArmclBuildFailed")]  # stored once, no NotRun beside it
    assert sorted(e["point"] for e in sweep_tally(store, "sweep-1", {KEYS[NEW]: NEW})["rpi"]["ok"]) == \
        [f"{LABEL} {NEW}"]


def test_a_point_that_never_ran_is_not_hidden_by_its_twin_on_the_other_build(store, documents, sweep, capsys):
    """Before, both points had one label: the 24.11 result counted for the 20.08 point, which was never stored."""
    load_documents(store, [("new", on_build(documents["perf_tflite"], NEW))], board="rpi", sweep="sweep-1")
    counts, out = sweep({NEW: {"key": KEYS[NEW]}, OLD: {"key": KEYS[OLD]}}, [{"point": LABEL, "status": "ok"}],
                        capsys)
    assert counts["failed_points"] == [f"rpi: {LABEL} {OLD}"]
    assert f"  FAILED {LABEL} {OLD}: NotRun: board rpi: the point never ran" in out
    assert failures(store) == [(OLD, "NotRun")]


def test_a_point_already_stored_on_one_build_is_counted_for_that_build(store, documents, sweep, capsys):
    load_documents(store, [("old", on_build(documents["perf_tflite"], OLD))], board="rpi", sweep="earlier")
    load_documents(store, [("new", on_build(documents["perf_tflite"], NEW))], board="rpi", sweep="sweep-1")
    (earlier,), = read_only(store, "SELECT r.id FROM results r JOIN sweeps s ON s.id = r.sweep_id "
                                   "WHERE s.run_id = 'earlier'")[1]
    counts, out = sweep({NEW: {"key": KEYS[NEW]}, OLD: {"key": KEYS[OLD]}},
                        [{"point": LABEL, "status": "ok"},
                         {"point": LABEL, "status": "already stored", "result_id": earlier}], capsys)
    assert counts == {"boards": {"rpi": {"planned": 2, "ok": 1, "already_stored": 1, "failed": 0, "no_result": 0}},
                      "failed_points": []}, out
    assert failures(store) == []


def test_one_build_keeps_the_labels_of_before(store, documents):
    load_documents(store, [("new", on_build(documents["perf_tflite"], NEW))], board="rpi", sweep="sweep-1")
    assert [e["point"] for e in sweep_tally(store, "sweep-1")["rpi"]["ok"]] == [LABEL]
