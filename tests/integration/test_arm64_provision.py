"""The arm64 farm board provisioned as a real board is (issue #15): the aarch64 runner bundle built on this x86_64
controller (``build_bundle("aarch64")``: pyproject's markers evaluated for aarch64, pinned by
``requirements/constraints-aarch64.txt``, every manylinux tag), installed with ``pip --no-index`` into the board's
own aarch64 CPython under qemu-user, then ``board_provision`` through Airflow (``dag.test()``) with the Connection
extra ``emulator: qemu-user``: the platform snapshot stored in the results store says ``emulated``.

The board (tests/farm.py's ARM64_ENTER) sees only its work dir: nothing of this checkout, no internet. The bundle
and the userland are the machine's caches (``~/.cache/requestflow``). Needs root, the farm's tools and Linux 6.7+.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from operators import wheel_target
from operators.bundle import build_bundle
from tests.airflow_run import airflow_databases, run_dag
from tests.farm import Farm, require_arm64_board

ROOT = Path(__file__).resolve().parents[2]
ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
BOARD_PYTHON = "/usr/bin/python3.11"  # bookworm's arm64 CPython in the board's userland
TIMINGS: dict[str, float] = {}
IMAGES = 20


# --- the target's requirements, without a board -----------------------------------------------------------------


def test_the_markers_are_evaluated_for_the_board_not_for_the_controller():
    aarch64 = wheel_target.board_requirements(ROOT, "aarch64", "3.11")
    x86 = wheel_target.board_requirements(ROOT, "x86_64", "3.11")
    assert "tensorflow==2.20.0" in aarch64 and not any(r.startswith("tensorflow-cpu") for r in aarch64)
    assert "ai-edge-litert==1.4.0" in aarch64 and "ai-edge-litert>=1.4" in x86
    assert "tensorflow-cpu<2.22,>=2.20" in x86 and not any(r.startswith("tensorflow==") for r in x86)
    assert not any(";" in r for r in aarch64)  # markers evaluated, dropped
    tags = wheel_target.platform_tags("aarch64")
    assert tags[0] == "manylinux_2_28_aarch64" and tags[-1] == "manylinux2014_aarch64" and len(tags) == 13


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    import zipfile

    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)


def test_the_closure_is_read_from_the_wheels_for_the_target(tmp_path):
    _wheel(tmp_path, "requestflow", "0.1.0", ["numpy>=1.26", "tensorflow-cpu==2.21.0; platform_machine == 'x86_64'",
                                              "tensorflow==2.20.0; platform_machine == 'aarch64'"])
    _wheel(tmp_path, "numpy", "2.4.6", [])
    _wheel(tmp_path, "tensorflow", "2.20.0", ["keras>=3", "tensorflow-intel; platform_system == 'Windows'",
                                              "pytest; extra == 'test'"])
    _wheel(tmp_path, "keras", "3.15.1", ["numpy"])
    _wheel(tmp_path, "tensorflow_cpu", "2.21.0", [])  # what pip picks for an x86_64 controller's markers
    unneeded = wheel_target.check_closure(tmp_path, ["requestflow"], "aarch64", "3.11")
    assert [p.name for p in unneeded] == ["tensorflow_cpu-2.21.0-py3-none-any.whl"]
    (tmp_path / "keras-3.15.1-py3-none-any.whl").unlink()
    with pytest.raises(wheel_target.ClosureError, match=r"the aarch64 wheelhouse lacks keras>=3"):
        wheel_target.check_closure(tmp_path, ["requestflow"], "aarch64", "3.11")


def test_the_committed_aarch64_pins_are_the_whole_closure_of_the_board_requirements():
    pins = {line.split("==")[0].lower().replace("_", "-").replace(".", "-"): line.split("==")[1]
            for line in (ROOT / "requirements/constraints-aarch64.txt").read_text().splitlines()
            if line and not line.startswith("#")}
    assert pins["tensorflow"] == "2.20.0" and pins["ai-edge-litert"] == "1.4.0" and "tensorflow-cpu" not in pins
    assert {"numpy", "pillow", "h5py", "tqdm", "ai-edge-litert", "keras", "protobuf"} <= set(pins)
    header = (ROOT / "requirements/constraints-aarch64.txt").read_text().splitlines()[:3]
    assert "python -m operators.wheel_target pins aarch64" in "\n".join(header)


# --- the arm64 farm board ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle():
    started = time.monotonic()
    built = build_bundle("aarch64", log=lambda line: None)
    TIMINGS["bundle"] = time.monotonic() - started
    return built


@pytest.fixture(scope="module")
def farm(tmp_path_factory, arm64_work_dir):
    """The arm64 farm board, its work dir the session's (tests/integration/conftest.py): the runner installed here
    is the NEON sweep's. A work dir that has a runner already (that module ran first) is not this test's to use."""
    require_arm64_board()
    from operators import arm64_runner as arm64

    work = arm64_work_dir if not (arm64_work_dir / "runner").exists() else tmp_path_factory.mktemp("arm64-board")
    userland = arm64.python_userland(ARM64_CACHE, log=lambda line: None)
    with Farm(1, tmp_path_factory.mktemp("farm"), arm64=[1], arm64_rootfs=userland.path, shared=[work]) as farm:
        farm.boards[0].work_dir = work
        farm.userland = userland.path
        yield farm


def arm64_connection(board, **extra) -> str:
    extras = {"key_file": str(board.key_file), "host_key": board.host_public_key, "work_dir": str(board.work_dir),
              "python": BOARD_PYTHON, **extra}
    return json.dumps({"conn_type": "ssh", "host": board.host, "login": "root", "extra": extras})


def test_the_aarch64_bundle_has_aarch64_wheels_only_each_with_its_sha256(bundle):
    names = [w.name for w in bundle.wheels]
    assert bundle.platform == "aarch64" and bundle.python == "3.11"
    assert any(n.startswith("tensorflow-2.20.0-cp311") and "aarch64" in n for n in names)
    assert not any(n.startswith("tensorflow_cpu") for n in names)
    assert all(n.endswith(("_aarch64.whl", "-none-any.whl")) or "aarch64" in n for n in names), names
    pins = [line for line in (ROOT / "requirements/constraints-aarch64.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(names) == len(pins) + 1  # the pins' closure and requestflow's own wheel
    from requestflow.board.files import sha256_file

    assert all(sha256_file(w) == bundle.sha256[w.name] for w in bundle.wheels)
    started = time.monotonic()
    assert build_bundle("aarch64", log=lambda line: None).digest == bundle.digest  # cached: no pip
    TIMINGS["bundle, cached"] = time.monotonic() - started


@pytest.fixture(scope="module")
def airflow(farm, tmp_path_factory):
    """(environment, results engine): Airflow with the boards local and arm64 (the farm board, extra
    ``emulator: qemu-user``), one results store for the module."""
    with airflow_databases(tmp_path_factory.mktemp("airflow"), boards=("local", "arm64")) as (env, results):
        yield dict(env, REQUESTFLOW_BOARDS="local,arm64",
                   AIRFLOW_CONN_ARM64=arm64_connection(farm.boards[0], emulator="qemu-user")), results


def test_board_provision_deploys_the_aarch64_runner_and_stores_an_emulated_platform(farm, bundle, airflow):
    from sqlalchemy import text

    board = farm.boards[0]
    env, results = airflow
    started = time.monotonic()
    run = run_dag(env, {"boards": ["arm64"], "build_armcl": False}, dag_id="board_provision")
    TIMINGS["board_provision, cold"] = time.monotonic() - started
    assert "board arm64: deploying runner" in run["output"], run["output"][-4000:]  # installed here, not found
    # the runner deployed last (the bundle's digest is the sources', which others may edit meanwhile)
    runner = (board.work_dir / "runner" / "current").resolve()
    assert (runner / ".deployed").is_file(), run["output"][-4000:]
    assert (runner / "venv" / "requestflow-emulated").read_text().strip() == "qemu-user"
    from requestflow.board.emulation import elf_arch

    python = runner / "venv/bin/python"
    while python.is_symlink():  # to the board's /usr/bin/python3.11, which is in its userland
        target = Path(os.readlink(python))
        python = farm.userland / target.relative_to("/") if target.is_absolute() else python.parent / target
    assert elf_arch(python) == "aarch64"
    print("".join(line + "\n" for line in run["output"].splitlines() if "deployed in" in line or
                  "sent" in line or "bundle" in line))
    log = (runner / "install" / "stdout.log").read_text()
    assert "Looking in indexes" not in log and "runner installed and checked" in log, log
    with results.connect() as connection:
        info = connection.execute(text("SELECT kind, info FROM boards WHERE name = 'arm64'")).one()
    platform = info.info["platform"]
    assert info.kind == "ssh" and platform["arch"] == "aarch64"
    emulated = platform["emulated"]
    assert emulated["emulator"] == "qemu-user"
    assert "the runner's Python is aarch64 code and /proc/cpuinfo describes an x86_64 CPU" in \
        emulated["evidence"]
    assert any(e.startswith("the board's settings say emulator qemu-user") for e in emulated["evidence"])
    # provisioning again (the runner reused): the next test's sweep starts with board_provision's task on this board
    print("timings:", {k: round(v, 1) for k, v in TIMINGS.items()})


def test_a_sweep_on_local_and_arm64_tflite_equals_and_every_arm64_row_is_emulated_off_the_frontier(farm, airflow):
    """One sweep through Airflow on both boards, tf and tflite, performance and accuracy on 20 images of
    mobilenet-v1-0.25-224: the arm64 board's data shipped by sha256 into its work dir, its tflite top-1 equal to
    the local board's, its tf (TensorFlow 2.20 as aarch64 code) checked against the local tf reference, and every
    arm64 row EMULATED, off pareto_frontier. Its timings are qemu's: they are asserted to exist, never compared."""
    from requestflow.results.query import read_only

    env, store = airflow
    board = farm.boards[0]
    started = time.monotonic()
    run = run_dag(env, {"boards": ["local", "arm64"], "models": ["mobilenet-v1-0.25-224"],
                        "backends": ["tf", "tflite"], "modes": ["performance", "accuracy"], "repetitions": 3,
                        "warmup": 1, "image_limit": IMAGES})
    TIMINGS["sweep local + arm64"] = time.monotonic() - started
    columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s ORDER BY board, backend",
                              {"s": run["run_id"]})
    rows = {(r["board"], r["backend"]): r for r in (dict(zip(columns, row, strict=True)) for row in rows)}
    assert sorted(rows) == [("arm64", "tf"), ("arm64", "tflite"), ("local", "tf"), ("local", "tflite")]
    assert "board arm64: data:" in run["output"] and "distinct; sent" in run["output"]
    for backend in ("tf", "tflite"):
        arm, local = rows[("arm64", backend)], rows[("local", backend)]
        assert arm["image_count"] == local["image_count"] == IMAGES
        assert arm["top1"] == local["top1"], (backend, arm["top1"], local["top1"])
        assert arm["quality"] == "EMULATED" and local["quality"] != "EMULATED"
        assert arm["accuracy_check"] in ("ok", "reference"), arm
    documents = [d for d in _documents(board.work_dir, run["run_id"])]
    assert len(documents) == 4 and all(d["machine"]["emulated"]["emulator"] == "qemu-user" for d in documents)
    versions = {d["context"]["backend"]["name"]: d["context"]["backend"]["version"] for d in documents}
    assert versions == {"tf": "2.20.0", "tflite": "1.4.0"}  # the aarch64 pins (pyproject.toml says why)
    assert all(d["context"]["dataset"]["path"].startswith(str(board.work_dir)) for d in documents
               if "accuracy" in d)
    _, frontier = read_only(store, "SELECT DISTINCT board FROM pareto_frontier")
    assert ("arm64",) not in frontier and ("local",) in frontier
    print("timings:", {k: round(v, 1) for k, v in TIMINGS.items()})


def _documents(work_dir: Path, run_id: str) -> list[dict]:
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    return [json.loads(p.read_text()) for p in Path(work_dir).glob(f"**/runs/{slug}_*/result.json")]
