"""ArmCL cross-built from source for the arm64 farm board (issue #15 item 3, ``cross: true``): the build
``armcl_24_11_neon_cross_arm64`` of ``config/armcl.json`` (Debian trixie's verified 24.11 source, ``arch=arm64-v8a
neon=1 opencl=1``, fp32) cross-built on the controller in the trixie toolchain environment
(``operators/arm64_cross.py``), shipped to the board with trixie's runtime and the program cross-compiled for it,
then one NEON accuracy point through a sweep on ``arm64`` must give tf's top-1 on the local board (same weights,
same images).

Opt-in: skipped unless ``REQUESTFLOW_TEST_CROSS=1``, since the cold cross build is long (see docs/armcl.md for the
times measured here). The build is the machine's cache (``$REQUESTFLOW_ARM64_CACHE``, default
``~/.cache/requestflow/arm64``): a second run reuses it. Needs root, the farm's tools and Linux 6.7+. Timings
under qemu are asserted to exist, never compared.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.airflow_run import run_dag
from tests.farm import require_arm64_board
from tests.integration import test_arm64_neon_sweep as neon_sweep
from tests.integration.test_arm64_neon_sweep import ARM64_CACHE

pytestmark = pytest.mark.skipif(os.environ.get("REQUESTFLOW_TEST_CROSS") != "1",
                                reason="opt-in (REQUESTFLOW_TEST_CROSS=1): the cold ArmCL cross build is long")

MODEL = "mobilenet-v1-0.25-224"
BUILD = "armcl_24_11_neon_cross_arm64"
IMAGES = 20
TIMINGS: dict[str, float] = {}


def say(line: str) -> None:
    if not line.startswith("aarch64-linux-gnu-"):  # scons's command lines: thousands of them
        print(line, flush=True)


@pytest.fixture(scope="module")
def cross_built():
    """The cross build, made (cold: the whole scons build) or reused before the sweep, whose task then reuses it:
    (its folder, its build.json)."""
    from operators.arm64_cross import cross_build
    from operators.armcl_spec import ArmclSpec, checked_builds

    require_arm64_board()
    spec = ArmclSpec.from_value(checked_builds()[BUILD])
    started = time.monotonic()
    folder, reused = cross_build(spec, "aarch64", cache_dir=ARM64_CACHE, log=say)
    TIMINGS["cross build, " + ("reused" if reused else "cold")] = time.monotonic() - started
    return folder, json.loads((folder / "build.json").read_text())


# the arm64 farm board and the Airflow and results databases with boards local and arm64: the NEON sweep's own
# (each test below asks for cross_built first, so the build is made before the farm starts)
farm, airflow = neon_sweep.farm, neon_sweep.airflow


def test_the_cross_built_neon_point_on_the_arm64_board_gives_tfs_top1(cross_built, farm, airflow):
    from requestflow.results.query import read_only

    folder, record = cross_built
    assert record["options"]["build"] == "cross_compile" and record["options"]["arch"] == "arm64-v8a"
    assert record["options"]["neon"] == "1" and record["options"]["opencl"] == "1"
    assert record["target_arch"] == "aarch64" and record["cross"]["compiler"].startswith("aarch64-linux-gnu-g++")
    env, store = airflow
    started = time.monotonic()
    reference = run_dag(env, {"boards": ["local"], "models": [MODEL], "backends": ["tf"], "modes": ["accuracy"],
                              "image_limit": IMAGES})
    TIMINGS["local tf reference"] = time.monotonic() - started
    started = time.monotonic()
    run = run_dag(env, {"boards": ["arm64"], "models": [MODEL], "backends": ["armcl"], "armcl_targets": ["NEON"],
                        "armcl_build": BUILD, "modes": ["accuracy"], "image_limit": IMAGES})
    TIMINGS["arm64 sweep (armcl NEON, the cross build reused), cold deploy"] = time.monotonic() - started
    assert "cross-built from source (reused on the controller)" in run["output"] and "shipped" in run["output"]
    columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep IN (%(a)s, %(b)s)",
                              {"a": reference["run_id"], "b": run["run_id"]})
    board_rows = {(r["board"], r["backend"]): r for r in (dict(zip(columns, row, strict=True)) for row in rows)}
    tf, neon = board_rows[("local", "tf")], board_rows[("arm64", "armcl")]
    assert neon["variant_label"].startswith("NEON/") and neon["image_count"] == IMAGES == tf["image_count"]
    assert neon["top1"] == tf["top1"] and neon["accuracy_check"] == "ok", neon
    _, builds = read_only(store, "SELECT sha256, info FROM library_builds WHERE info->>'board' = 'arm64'")
    assert [key for key, _ in builds] == [record["key"]]
    info = builds[0][1]
    assert info["options"]["build"] == "cross_compile" and info["cross"]["toolchain"] == record["cross"]["toolchain"]
    assert info["source"]["sha256"] == record["source"]["sha256"] and info["shipped"]["tar_sha256"]
    print("top-1:", tf["top1"], "timings:", {k: round(v, 1) for k, v in TIMINGS.items()})


def test_the_cross_build_is_reused_warm_and_a_damaged_one_is_assembled_again_without_building(cross_built):
    from operators.arm64_cross import check_raw, cross_build
    from operators.arm64_debian import check_build
    from operators.armcl_spec import ArmclSpec, checked_builds

    folder, record = cross_built
    spec = ArmclSpec.from_value(checked_builds()[BUILD])
    started = time.monotonic()
    assert cross_build(spec, "aarch64", cache_dir=ARM64_CACHE, log=say) == (folder, True)
    TIMINGS["cross build, warm"] = time.monotonic() - started
    library = folder / "lib" / "libarm_compute.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    assert "damaged" in check_build(folder)
    started = time.monotonic()
    assert cross_build(spec, "aarch64", cache_dir=ARM64_CACHE, log=say) == (folder, False)
    TIMINGS["cross build, damaged and assembled again"] = time.monotonic() - started
    assert check_build(folder) is None and check_raw(Path(record["cross"]["build"])) is None
    print("timings:", {k: round(v, 1) for k, v in TIMINGS.items()})
