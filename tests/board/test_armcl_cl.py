"""ArmCL's OpenCL path on this machine's only OpenCL device, PoCL on the CPU (ADR 0006).

ArmCL's own graph example for MobileNet (``examples/graph_mobilenet.cpp``, dummy weights), compiled against the
real ArmCL 24.11 build of tests/integration/test_armcl_build.py (the machine's ArmCL cache: built there when
cold), runs on the
CL target through requestflow's OpenCL forwarding shim, and stops with ArmCL's own error without it: the shim is
what makes it work."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

from requestflow.board import clshim
from requestflow.board.armcl_basics import Refused
from requestflow.board.armcl_example import build_example
from requestflow.board.opencl_probe import opencl
from tests.armcl_real import ARMCL_CACHE, real_build

RUN = ["--target=CL", "--type=F32", "--model-id=1"]  # MobileNet-v1 0.75_160, dummy weights (no --data)


@pytest.fixture(scope="module")
def graph_mobilenet() -> Path:
    """ArmCL's graph_mobilenet, compiled against the x86_64 OpenCL fp32 build of ArmCL 24.11 from Debian."""
    if platform.machine() != "x86_64":
        pytest.skip("the CL build of these tests is x86_64's")
    build, source = real_build()
    return build_example(build, source, "graph_mobilenet", log=lambda line: None)


@pytest.fixture(scope="module")
def device() -> dict:
    info = opencl()
    if not info.get("available"):
        message = f"no OpenCL device: {info.get('reason')} (dev.sh installs pocl-opencl-icd)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return info


def run(program: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *RUN], env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)


def test_pocl_lacks_what_armcl_needs_so_the_shim_is_chosen(device):
    needed, reason = clshim.needs_shim(device)
    assert needed, reason
    assert "no non-uniform work-group support" in reason


def test_without_the_shim_armcl_stops_with_its_own_error(graph_mobilenet, device):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    result = run(graph_mobilenet, env)
    assert result.returncode != 0
    assert "Non uniform workgroup size is not supported" in result.stdout + result.stderr


def test_through_the_shim_mobilenet_runs_on_the_cl_target(graph_mobilenet, device, tmp_path):
    stats = tmp_path / "clshim-stats.jsonl"
    env = {**os.environ, **clshim.environment(clshim.build_shim(), clshim.find_real_loader(), stats_path=stats)}
    result = run(graph_mobilenet, env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Test passed" in result.stdout
    counts = clshim.read_stats(stats)
    # ArmCL's kernels went through the shim: built with the Arm option dropped, some enqueues given to the driver
    assert counts["loaded"] and counts["enqueues"] > 0
    assert counts["rewritten_enqueues"] > 0 and counts["stripped_build_options"] > 0
    described = clshim.describe(device, clshim.build_shim(), counts)
    assert described["used"] is True and described["counts"]["rewritten_enqueues"] == counts["rewritten_enqueues"]
    assert Path(env["POCL_CACHE_DIR"]).is_dir() and any(Path(env["POCL_CACHE_DIR"]).rglob("*.so"))


def test_the_example_is_compiled_once_per_build(graph_mobilenet):
    before = graph_mobilenet.stat().st_mtime_ns
    again = build_example(graph_mobilenet.parents[1],
                                next((ARMCL_CACHE / "sources").rglob("*.orig.tar.xz")), "graph_mobilenet")
    assert again == graph_mobilenet and again.stat().st_mtime_ns == before
    with pytest.raises(Refused, match="expected a graph example name"):
        build_example(graph_mobilenet.parents[1], again, "../../bin/sh")
