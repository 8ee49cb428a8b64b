"""Two LiteRT versions in one sweep (issue #17): ``litert_specs`` [ai-edge-litert==1.4.0, ==2.3.0] on the local
board and a farm board (an sshd in its own network namespace), through ``dag.test()``. Each board gets a runner venv
per spec from the spec's own wheelhouse; each tflite point runs on its spec's runner, records its version and spec,
and is a point of its own; the two versions' accuracies on the same weights and images are compared image by image,
and the version report pairs them.

Kept cheap: one model (0.25_128), performance with 5 repetitions and accuracy on 20 images. The wheelhouses
(the runner bundle, the specs') are the machine's, under ``~/.cache/requestflow`` (``$REQUESTFLOW_CACHE`` of the
controller's process), and so are the boards' work dirs (``~/.cache/requestflow/test-runtimes``): a second run
reinstalls nothing while the sources are unchanged (a changed source is a new runner bundle, as on a real board).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from requestflow.results.query import read_only
from requestflow.results.version_report import version_report
from tests.airflow_run import airflow_databases, farm_connections, run_dag
from tests.farm import farm_fixture

farm = farm_fixture(1, scope="module")
MODEL = "mobilenet-v1-0.25-128"
SPECS = {"1.4.0": "ai-edge-litert==1.4.0", "2.3.0": "ai-edge-litert==2.3.0"}
MACHINE_CACHE = Path.home() / ".cache" / "requestflow"
KEPT = MACHINE_CACHE / "test-runtimes"  # the boards' work dirs, kept across runs like a real board's


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, farm, data_dir):
    with airflow_databases(tmp_path_factory.mktemp("airflow-home")) as (env, store):
        env = dict(env, REQUESTFLOW_CACHE=str(MACHINE_CACHE), REQUESTFLOW_STATE=str(KEPT / "state"),
                   REQUESTFLOW_BOARDS="local,rfb1", **farm_connections(farm, KEPT / "boards"))
        started = time.monotonic()
        run = run_dag(env, {"boards": ["local", "rfb1"], "models": [MODEL], "backends": ["tflite"],
                            "modes": ["performance", "accuracy"], "repetitions": 5, "warmup": 1, "image_limit": 20,
                            "litert_specs": list(SPECS.values())})
        output = run["output"]
        print(f"\nthe sweep took {time.monotonic() - started:.0f} s; runners: "
              f"{output.count('already deployed')} reused, {output.count('Successfully installed absl')} installed "
              f"in a new venv, {output.count('runner cloned from ')} made from another runner's venv, "
              f"{output.count('runner updated in place')} updated in place")
        yield run, store


def work_dir(board: str) -> Path:
    return KEPT / "state" / "board" if board == "local" else KEPT / "boards" / board


def documents(board: str, run_id: str) -> list[dict]:
    root = work_dir(board)
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    return [json.loads(p.read_text()) for p in root.glob(f"runs/{slug}_*/result.json")]


@pytest.mark.parametrize("board", ["local", "rfb1"])
def test_each_point_ran_on_its_specs_runner_and_recorded_it(sweep, board):
    run, _store = sweep
    found = documents(board, run["run_id"])
    seen = sorted((d["context"]["mode"], d["context"]["backend"]["version"], d["context"]["backend"].get("runtime"))
                  for d in found)
    assert seen == sorted((mode, version, spec) for mode in ("accuracy", "performance")
                          for version, spec in SPECS.items()), seen
    assert all(d["status"] == "ok" and d["context"]["backend"]["library"] == "ai_edge_litert" for d in found)


def test_the_store_keeps_one_point_per_board_and_version(sweep):
    run, store = sweep
    _, rows = read_only(store, "SELECT board, library_version, top1, image_count, latency_median_s IS NOT NULL "
                               "FROM scoreboard WHERE sweep = %(s)s ORDER BY 1, 2", {"s": run["run_id"]})
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (board, version, 20, True) for board in ("local", "rfb1") for version in SPECS]
    _, builds = read_only(store, "SELECT version, info->>'runtime' FROM library_builds ORDER BY 1")
    assert builds == [(version, spec) for version, spec in SPECS.items()]


def test_the_two_versions_classify_the_same_images_alike(sweep):
    """Same weights, same images: LiteRT 1.4.0 and 2.3.0 are expected to give the same top-1 on every image (the
    same XNNPACK kernels on this machine); a difference would be a finding of this sweep, shown here."""
    run, _store = sweep
    top1 = {}
    for board in ("local", "rfb1"):
        for d in documents(board, run["run_id"]):
            if d["context"]["mode"] == "accuracy":
                top1[board, d["context"]["backend"]["version"]] = (
                    d["accuracy"]["top1"], [(p["file"], p["top5"][0][0]) for p in d["predictions"]])
    assert len(top1) == 4
    for board in ("local", "rfb1"):
        (a, predictions_a), (b, predictions_b) = top1[board, "1.4.0"], top1[board, "2.3.0"]
        changed = [(x, y) for x, y in zip(predictions_a, predictions_b, strict=True) if x != y]
        assert (a, changed) == (b, []), f"board {board}: top-1 {a} with 1.4.0, {b} with 2.3.0; changed: {changed}"


def test_the_version_report_pairs_the_two_litert_versions(sweep):
    _run, store = sweep
    report = version_report(store, "rfb1", "1.4.0", "2.3.0", backend="tflite")
    assert [(r.model, r.mode) for r in report.rows] == [(MODEL, "accuracy"), (MODEL, "performance")]
    accuracy, performance = report.rows
    assert accuracy.images == 20 and accuracy.top1_delta == 0 and accuracy.broken == accuracy.fixed == []
    assert performance.ratio > 0 and performance.latency in ("slower", "faster", "no significant difference")
    assert "configuration(s) with both 1.4.0 (a) and 2.3.0 (b)" in report.render()


@pytest.mark.parametrize("board", ["local", "rfb1"])
def test_each_specs_venv_holds_its_version_and_names_only_itself(sweep, board):
    """A spec's venv may be made from another runner's (hard links, operators.deploy.clone_script): it must still
    be its own: the spec's version installed and recorded in it, its scripts and pyvenv.cfg naming its own folder
    only, and no file of its requestflow shared with another venv."""
    from operators.runtime_spec import parse

    runners = work_dir(board) / "runner"
    venvs = {}
    for spec in SPECS.values():
        venv = (runners / parse(spec).link).resolve() / "venv"
        venvs[spec] = venv
        assert (venv / "requestflow-runtime").read_text().strip() == spec
        installed = [p.name for p in (venv / "lib").glob("python3.*/site-packages/ai_edge_litert-*.dist-info")]
        assert installed == [f"ai_edge_litert-{spec.split('==')[1]}.dist-info"], (venv, installed)
    others = {str(d) for d in runners.iterdir() if d.is_dir() and not d.is_symlink()}
    for venv in venvs.values():
        for path in [venv / "pyvenv.cfg", *(p for p in (venv / "bin").iterdir() if p.is_file() and not p.is_symlink())]:
            text = path.read_bytes()
            named = [o for o in others if o != str(venv.parent) and f"{o}/".encode() in text]
            assert not named, f"{path} names {named}"
        # a requestflow of its own, on the local board too: its commands do not inherit the controller's
        # PYTHONPATH (operators.board_hook.local_board_env), with which pip found the checkout's "already satisfied"
        own = next(venv.glob("lib/python3.*/site-packages/requestflow/__init__.py"), None)
        assert own is not None, f"{venv} has no requestflow of its own"
        assert own.stat().st_nlink == 1, f"{own} is shared with another venv"
