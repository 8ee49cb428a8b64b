"""ArmCL 20.08 and 24.11 running requestflow's MobileNet program (issue #17): Debian's prebuilt arm64 libraries of
each release (bookworm's ``libarm-compute20``, trixie's ``libarm-compute43``, every .deb checked against its suite's
signed index) as build folders, the program cross-compiled against each with trixie's GCC 14 (20.08's conditionals
and third library), run with ``target=NEON`` under qemu-user: on the shared images each release gives tf's top-1 on
every image, for two configs. (20.08 from source for OpenCL on x86_64 cannot be built here: its source tarball is
not served; tests/integration/test_armcl_versions.py.) Needs root, like tests/controller/test_arm64_neon.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from requestflow.board.emulation import ENV
from requestflow.board.runner import RunConfig, run

ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
IMAGES = int(os.environ.get("REQUESTFLOW_ARM64_TEST_IMAGES", "20"))
CONFIGS = [("mobilenet-v1-0.25-224", "mobilenet_v1_0.25_224.h5"),
           ("mobilenet-v1-0.25-128", "mobilenet_v1_0.25_128_quant.tflite")]  # dequantized to fp32 for both
SUITES = {"20.08": "bookworm", "24.11": "trixie"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the arm64 toolchain needs root (mmdebstrap --mode=root, "
                                                         "chroot, a private mount namespace)")


@pytest.fixture(scope="module")
def releases() -> dict[str, dict]:
    """release -> {"build": folder, "program": the cross compile's record}, each made (or reused) once."""
    from operators.arm64_debian import cross_compile, debian_binary_build
    from operators.arm64_toolchain import toolchain

    absent = [tool for tool in ("mmdebstrap", "qemu-aarch64-static", "unshare", "dpkg-deb") if not shutil.which(tool)]
    if absent:
        pytest.fail(f"{', '.join(absent)} not installed (./dev.sh test installs qemu-user-static and mmdebstrap)")
    chain = toolchain(ARM64_CACHE, log=lambda line: None)
    out = {}
    for release, suite in SUITES.items():
        build = debian_binary_build(ARM64_CACHE, suite=suite, log=lambda line: None)
        out[release] = {"build": build, "program": cross_compile(build, chain, log=lambda line: None)}
    with pytest.MonkeyPatch.context() as patch:  # the module's runs are emulated
        patch.setenv(ENV, " ".join(chain.emulator()))
        yield out


def test_each_release_is_debians_and_the_program_is_compiled_for_it(releases):
    old, new = releases["20.08"], releases["24.11"]
    record = json.loads((old["build"] / "build.json").read_text())
    assert record["version"] == "20.08" and record["options"]["neon"] == "1"
    assert [p["package"] for p in record["source"]["packages"]][:2] == ["libarm-compute20", "libarm-compute-dev"]
    assert any(name.startswith("libarm_compute_core.so") for name in record["libraries"])
    assert json.loads((new["build"] / "build.json").read_text())["version"] == "24.11"
    assert "-DREQUESTFLOW_ARMCL_VERSION=2008" in old["program"]["command"]
    assert "-larm_compute_core" in old["program"]["command"]
    assert "-DREQUESTFLOW_ARMCL_VERSION=2411" in new["program"]["command"]
    assert "-Wl,--disable-new-dtags" in old["program"]["command"]  # libarm_compute_graph.so.20 finds its siblings


def _accuracy(data_dir: Path, model: str, weights: str, backend: str, **options) -> tuple[dict, np.ndarray]:
    document = run(RunConfig(model=model, backend=backend, mode="accuracy", progress=False, limit=IMAGES,
                             weights=[str(data_dir / "models" / weights)], **options))
    assert document["status"] == "ok", document.get("error")
    return document, np.array([[c for c, _ in p["top5"]] for p in document["predictions"]], dtype=int)


@pytest.mark.parametrize("model, weights", CONFIGS)
def test_both_releases_give_tfs_top1_on_every_image(releases, data_dir, model, weights):
    tf, tf_classes = _accuracy(data_dir, model, weights, "tf")
    for release, made in releases.items():
        armcl, classes = _accuracy(data_dir, model, weights, "armcl", variant={"target": "NEON"},
                                   armcl_build=str(made["build"]), threads=2)
        backend = armcl["context"]["backend"]
        assert backend["version"] == release and backend["build"]["key"] == made["build"].name
        assert armcl["context"]["weights"]["sha256"] == tf["context"]["weights"]["sha256"]
        same = int((classes[:, 0] == tf_classes[:, 0]).sum())
        assert same == IMAGES, f"ArmCL {release} {model}: top-1 of tf's on {same}/{IMAGES} images"
        assert armcl["accuracy"]["top1"] == tf["accuracy"]["top1"]
        assert backend["emulated"]["emulator"] == "qemu-aarch64-static"
