"""A real arm64 Linux board, opt-in (issue #15, item 5): the arm64 VM of ``tests/arm64_vm.py`` (Debian bookworm,
its own kernel, systemd and sshd, under ``qemu-system-aarch64`` with TCG) provisioned through ``board_provision``
as any SSH board is, then one sweep on it: one tflite accuracy point and one armcl NEON accuracy point
(``armcl_24_11_debian_arm64``: Debian trixie's ArmCL shipped with trixie's loader and libraries, which the VM's
bookworm userland lacks, as on the farm's arm64 board), after a tf reference on the local board.

Inside a full-system emulator /proc/cpuinfo describes the emulated Cortex-A72 and the runner's Python is aarch64
code: the cross-check of ``requestflow.board.emulation`` sees nothing, so only the Connection's extra ``emulator``
labels the board's results; checked here on what the store holds.

Skipped unless ``REQUESTFLOW_TEST_VM=1`` (the cold image build and the first deploy take tens of minutes: not in
every CI run). The image is the machine's cache (``~/.cache/requestflow/arm64/vms``); the VM's work disk is kept in
``~/.cache/requestflow/test-arm64-vm`` so a second run reuses the deployed runner. Timings are the emulator's:
asserted to exist, never compared.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.airflow_run import airflow_databases, run_dag

pytestmark = pytest.mark.skipif(os.environ.get("REQUESTFLOW_TEST_VM") != "1",
                                reason="the arm64 VM board is opt-in: REQUESTFLOW_TEST_VM=1")

ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
WORK = Path.home() / ".cache" / "requestflow" / "test-arm64-vm"
BOARD = "arm64_vm"
MODEL = "mobilenet-v1-0.25-224"
BUILD = "armcl_24_11_debian_arm64"
IMAGES = 20
VM_DAG_S = 3600  # a cold deploy under TCG: pip installs TensorFlow 2.20 (1.6 GB) as emulated arm64 code
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def vm():
    from tests.arm64_vm import VM, available, vm_image

    problem = available()
    if problem is not None:
        pytest.fail(f"REQUESTFLOW_TEST_VM=1 but the arm64 VM cannot run here: {problem}")
    started = time.monotonic()
    image = vm_image(ARM64_CACHE, log=print)
    TIMINGS["image " + ("checked" if image.reused else "made")] = time.monotonic() - started
    machine = VM(image, WORK)
    machine.start(log=print)
    TIMINGS.update({f"boot to {k}": v for k, v in machine.timings.items()})
    try:
        yield machine
    finally:
        machine.stop()
        print("timings:", {k: round(v, 1) for k, v in TIMINGS.items()})


@pytest.fixture(scope="module")
def airflow(vm, tmp_path_factory):
    connection = {"conn_type": "ssh", "host": "127.0.0.1", "port": vm.port, "login": "root", "extra": vm.extra()}
    with airflow_databases(tmp_path_factory.mktemp("airflow"), boards=("local", BOARD)) as (env, results):
        yield dict(env, REQUESTFLOW_BOARDS=f"local,{BOARD}", AIRFLOW_CONN_ARM64_VM=json.dumps(connection),
                   REQUESTFLOW_ARM64_CACHE=str(ARM64_CACHE)), results


def test_board_provision_deploys_to_the_vm_and_its_platform_is_labelled_emulated_by_the_extra_alone(vm, airflow):
    from sqlalchemy import text

    env, results = airflow
    started = time.monotonic()
    run_dag(env, {"boards": [BOARD], "build_armcl": False}, dag_id="board_provision", timeout_s=VM_DAG_S)
    TIMINGS["board_provision"] = time.monotonic() - started
    with results.connect() as connection:
        info = connection.execute(text("SELECT kind, info FROM boards WHERE name = :b"), {"b": BOARD}).one()
    platform = info.info["platform"]
    assert info.kind == "ssh" and platform["arch"] == "aarch64" and platform["hostname"] == "arm64-vm"
    emulated = platform["emulated"]
    # a whole emulated machine: its CPU, as the runner sees it, is the emulated Arm one, and so is its Python
    assert emulated["cpu_arch"] == emulated["python_arch"] == emulated["kernel_arch"] == "aarch64", emulated
    assert emulated["emulator"] == "qemu-system-tcg"
    assert [e for e in emulated["evidence"] if not e.startswith("the board's settings say emulator")] == []


def test_a_tflite_and_an_armcl_neon_point_on_the_vm_are_checked_against_the_local_board(vm, airflow):
    from requestflow.results.query import read_only

    env, store = airflow
    started = time.monotonic()
    reference = run_dag(env, {"boards": ["local"], "models": [MODEL], "backends": ["tf", "tflite"],
                              "modes": ["accuracy"], "image_limit": IMAGES})
    TIMINGS["local reference (tf, tflite)"] = time.monotonic() - started
    started = time.monotonic()
    run = run_dag(env, {"boards": [BOARD], "models": [MODEL], "backends": ["armcl", "tflite"],
                        "armcl_targets": ["NEON"], "armcl_build": BUILD, "modes": ["accuracy"],
                        "image_limit": IMAGES}, timeout_s=VM_DAG_S)
    TIMINGS["VM sweep (armcl NEON, tflite)"] = time.monotonic() - started
    columns, rows = read_only(store, "SELECT * FROM scoreboard WHERE sweep IN (%(a)s, %(b)s)",
                              {"a": reference["run_id"], "b": run["run_id"]})
    rows = {(r["board"], r["backend"]): r for r in (dict(zip(columns, row, strict=True)) for row in rows)}
    assert sorted(rows) == [(BOARD, "armcl"), (BOARD, "tflite"), ("local", "tf"), ("local", "tflite")], rows
    tf, neon, tflite = rows[("local", "tf")], rows[(BOARD, "armcl")], rows[(BOARD, "tflite")]
    assert neon["variant_label"].startswith("NEON/") and neon["image_count"] == tflite["image_count"] == IMAGES
    assert neon["reference_top1"] == tf["top1"] and neon["accuracy_check"] == "ok", neon
    assert tflite["top1"] == rows[("local", "tflite")]["top1"]
    # accuracy points carry no latency verdict (quality is the performance's): each stored result says the machine
    # was emulated, by the board's setting, so none of them can pass for a real Arm board's
    _, emulators = read_only(store, "SELECT r.document->'machine'->'emulated'->>'emulator' FROM results r "
                                    "JOIN sweeps s ON s.id = r.sweep_id WHERE s.run_id = %(b)s", {"b": run["run_id"]})
    assert sorted(e for e, in emulators) == ["qemu-system-tcg", "qemu-system-tcg"], emulators
    assert neon["quality"] is None and tflite["quality"] is None
    _, frontier = read_only(store, "SELECT DISTINCT board FROM pareto_frontier")
    assert (BOARD,) not in frontier
    print("timings:", {k: round(v, 1) for k, v in TIMINGS.items()})
