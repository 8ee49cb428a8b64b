"""ArmCL's NEON path in a sweep on the arm64 farm board (issue #15, item 4): after a tf accuracy reference on the
local board, a sweep through Airflow on board ``arm64`` with backends armcl (target NEON, the build
``armcl_24_11_debian_arm64`` of ``config/armcl.json``: ``source: debian-binary``) and tflite gives an armcl NEON row
whose accuracy is checked ``ok`` against tf on the same weights and images, and the arm64 board's tflite
predictions (top-5 classes) equal the local board's.

The board's userland is bookworm's (glibc 2.36, for CPython 3.11) while Debian's ArmCL 24.11 is trixie's (glibc
2.41, libstdc++ 14): the build task ships the build with trixie's loader and libraries in ``runtime/`` and the
program cross-compiled on the controller to run through them (``operators.arm64_debian.board_shipment``). The
userland, the toolchain environment, the .debs and the shipment are the machine's caches (``~/.cache/requestflow``).
Needs root, the farm's tools and Linux 6.7+. Its timings are qemu's: asserted to exist, never compared.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.airflow_run import airflow_databases, run_dag
from tests.farm import Farm, require_arm64_board

ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
BOARD_PYTHON = "/usr/bin/python3.11"  # bookworm's arm64 CPython in the board's userland
MODEL = "mobilenet-v1-0.25-224"
BUILD = "armcl_24_11_debian_arm64"
IMAGES = 20
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def farm(tmp_path_factory, arm64_work_dir):
    """The arm64 farm board, its work dir the session's (tests/integration/conftest.py): with the runner that
    test_arm64_provision's board_provision installed there, when that module ran first (else the sweep installs it)."""
    require_arm64_board()
    from operators import arm64_runner

    userland = arm64_runner.python_userland(ARM64_CACHE, log=lambda line: None)
    with Farm(1, tmp_path_factory.mktemp("farm"), arm64=[1], arm64_rootfs=userland.path,
              shared=[arm64_work_dir]) as farm:
        farm.boards[0].work_dir = arm64_work_dir
        yield farm


@pytest.fixture(scope="module")
def airflow(farm, tmp_path_factory):
    board = farm.boards[0]
    connection = {"conn_type": "ssh", "host": board.host, "login": "root",
                  "extra": {"key_file": str(board.key_file), "host_key": board.host_public_key,
                            "work_dir": str(board.work_dir), "python": BOARD_PYTHON, "emulator": "qemu-user"}}
    with airflow_databases(tmp_path_factory.mktemp("airflow"), boards=("local", "arm64")) as (env, results):
        yield dict(env, REQUESTFLOW_BOARDS="local,arm64", AIRFLOW_CONN_ARM64=json.dumps(connection),
                   REQUESTFLOW_ARM64_CACHE=str(ARM64_CACHE)), results


def _rows(store, run_id: str) -> dict[tuple, dict]:
    from requestflow.results.query import read_only

    columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep = %(s)s", {"s": run_id})
    return {(r["board"], r["backend"]): r for r in (dict(zip(columns, row, strict=True)) for row in rows)}


def test_an_armcl_neon_row_on_the_arm64_board_is_checked_ok_against_tf_and_its_tflite_equals_the_local_board(
        farm, airflow):
    env, store = airflow
    board = farm.boards[0]
    started = time.monotonic()
    reference = run_dag(env, {"boards": ["local"], "models": [MODEL], "backends": ["tf", "tflite"],
                              "modes": ["accuracy"], "image_limit": IMAGES})
    TIMINGS["local reference (tf, tflite)"] = time.monotonic() - started
    started = time.monotonic()
    run = run_dag(env, {"boards": ["arm64"], "models": [MODEL], "backends": ["armcl", "tflite"],
                        "armcl_targets": ["NEON"], "armcl_build": BUILD, "modes": ["accuracy"],
                        "image_limit": IMAGES})
    TIMINGS["arm64 sweep (armcl NEON, tflite), the build shipped"] = time.monotonic() - started
    local, arm = _rows(store, reference["run_id"]), _rows(store, run["run_id"])
    assert sorted(arm) == [("arm64", "armcl"), ("arm64", "tflite")], arm
    tf, neon = local[("local", "tf")], arm[("arm64", "armcl")]
    assert tf["accuracy_check"] == "reference" and tf["image_count"] == IMAGES
    assert neon["variant_label"].startswith("NEON/") and neon["image_count"] == IMAGES
    assert neon["reference_top1"] == tf["top1"] and neon["accuracy_check"] == "ok", neon
    assert arm[("arm64", "tflite")]["top1"] == local[("local", "tflite")]["top1"]
    assert "shipped" in run["output"] and "from Debian's trixie arm64 packages" in run["output"]

    documents = {d["context"]["backend"]["name"]: d for d in _documents(board.work_dir, run["run_id"])}
    locals_ = {d["context"]["backend"]["name"]: d for d in _local_documents(env, reference["run_id"])}
    # the same classes in the same order on every image; scores as close as two LiteRT builds get (1.4.0 for
    # aarch64 here, x86's newer one there: 0.511254 against 0.511255 was seen)
    arm_top5 = [p["top5"] for p in documents["tflite"]["predictions"]]
    local_top5 = [p["top5"] for p in locals_["tflite"]["predictions"]]
    assert [[c for c, _ in top] for top in arm_top5] == [[c for c, _ in top] for top in local_top5]
    assert max(abs(a[1] - b[1]) for x, y in zip(arm_top5, local_top5, strict=True)
               for a, b in zip(x, y, strict=True)) < 1e-5
    backend = documents["armcl"]["context"]["backend"]
    assert backend["variant"]["target"] == "NEON" and backend["build"]["options"]["neon"] == "1"
    assert documents["armcl"]["machine"]["emulated"]["emulator"] == "qemu-user"
    # the provenance: Debian's packages, each with its sha256, the runtime and the program shipped with them
    from requestflow.results.query import read_only

    _, builds = read_only(store, "SELECT sha256, info FROM library_builds WHERE info->>'board' = 'arm64'")
    assert [key for key, _ in builds] == [backend["build"]["key"]]
    info = builds[0][1]
    assert info["board"] == "arm64" and info["source"]["kind"] == "debian-binary"
    assert {p["package"] for p in info["source"]["packages"]} >= {"libarm-compute43", "libc6", "libstdc++6"}
    assert set(info["runtime"]) >= {"ld-linux-aarch64.so.1", "libc.so.6", "libstdc++.so.6"}
    # what made it necessary: the board's own glibc is older than the one Debian's ArmCL needs
    with board.connection() as connection:
        libc = connection.run(f"{BOARD_PYTHON} -c 'import platform; print(platform.libc_ver()[1])'", hide=True)
    assert tuple(int(x) for x in libc.stdout.strip().split(".")) < (2, 38)
    print("timings:", {k: round(v, 1) for k, v in TIMINGS.items()})


def _documents(work_dir: Path, run_id: str) -> list[dict]:
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    return [json.loads(p.read_text()) for p in Path(work_dir).glob(f"**/runs/{slug}_*/result.json")]


def _local_documents(env: dict, run_id: str) -> list[dict]:
    return _documents(Path(env["REQUESTFLOW_STATE"]), run_id)


def test_the_build_on_the_board_is_reused_while_it_checks_and_unpacked_again_when_damaged(farm, airflow, monkeypatch):
    """The build task again, on the board the sweep above provisioned: its folder passes ``SHA256SUMS`` and is
    reused (nothing sent); a library damaged on the board is found and the build unpacked again."""
    from operators.armcl_build import ArmclBuildOperator
    from operators.armcl_spec import checked_builds

    env, _ = airflow
    for name in ("AIRFLOW_CONN_ARM64", "AIRFLOW_CONN_REQUESTFLOW_RESULTS", "REQUESTFLOW_ARM64_CACHE"):
        monkeypatch.setenv(name, env[name])
    operator = ArmclBuildOperator(task_id=BUILD, board_conn_id="arm64", spec=checked_builds()[BUILD])
    context = {"run_id": "manual__reuse", "ti": None, "dag": None}
    reused = operator.execute(context)
    assert reused["reused"] is True and reused["program"]["reused"] is True
    library = Path(reused["path"]) / "lib" / "libarm_compute_graph.so.43.0.0"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    again = operator.execute(context)
    assert again["reused"] is False and again["path"] == reused["path"] and again["key"] == reused["key"]
    from requestflow.board.files import sha256_file

    recorded = json.loads((Path(again["path"]) / "build.json").read_text())["libraries"]
    assert sha256_file(library) == recorded[library.name]["sha256"]
