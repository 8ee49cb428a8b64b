"""ArmCL's NEON path executing as real arm64 code (issue #15): Debian trixie's prebuilt ArmCL 24.11 for arm64
(``arch=arm64-v8a neon=1``), requestflow's MobileNet program cross-compiled against it with trixie's GCC 14, run by
the armcl backend under ``qemu-aarch64-static -L <arm64 userland>`` on this x86_64 machine, must give tf's top-1 on
the same images and weights (0.25_224 .h5), NHWC and NCHW; every such result says it was emulated.

The toolchain environment, the verified .debs, the build and the program are the machine's (``operators.arm64``,
cached in ``$REQUESTFLOW_ARM64_CACHE``, default ``~/.cache/requestflow/arm64``, across runs and CI runs): cold about
45 s here, warm a few seconds. The damage tests work on copies or in their own folders, never on the shared cache.
Needs root (mmdebstrap --mode=root, chroot); ``./dev.sh test`` installs qemu-user-static and mmdebstrap."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from requestflow.board import armcl_program
from requestflow.board.emulation import ENV, elf_arch
from requestflow.board.runner import RunConfig, run
from requestflow.board.schema import validate_document
from requestflow.errors import UserError

ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
IMAGES = int(os.environ.get("REQUESTFLOW_ARM64_TEST_IMAGES", "20"))
MODEL, WEIGHTS = "mobilenet-v1-0.25-224", "mobilenet_v1_0.25_224.h5"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the arm64 toolchain needs root (mmdebstrap --mode=root, "
                                                         "chroot, a private mount namespace)")


def _missing(*tools: str) -> None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if absent:  # dev.sh test installs them: when root, their absence is a failure, not a skip
        pytest.fail(f"{', '.join(absent)} not installed (./dev.sh test installs qemu-user-static and mmdebstrap)")


@pytest.fixture(scope="module")
def arm64():
    from operators import arm64

    _missing("mmdebstrap", "qemu-aarch64-static", "unshare", "dpkg-deb")
    return arm64


@pytest.fixture(scope="module")
def chain(arm64):
    return arm64.toolchain(ARM64_CACHE, log=lambda line: None)


@pytest.fixture(scope="module")
def build(arm64) -> Path:
    return arm64.debian_binary_build(ARM64_CACHE, log=lambda line: None)


@pytest.fixture(scope="module")
def program(arm64, chain, build) -> dict:
    return arm64.cross_compile(build, chain, log=lambda line: None)


@pytest.fixture
def emulated(chain, monkeypatch):
    monkeypatch.setenv(ENV, " ".join(chain.emulator()))


class TestTheToolchain:
    def test_is_trixie_with_gcc_14_and_debians_armcl_for_arm64(self, arm64, chain):
        record = chain.record
        assert record["suite"] == "trixie" and record["architectures"] == ["amd64", "arm64"]
        assert "aarch64-linux-gnu-g++" in record["compiler"] and " 14." in record["compiler"]
        assert record["packages"]["libarm-compute43:arm64"].startswith("24.11")
        assert record["packages"]["libc6:arm64"] >= "2.38"
        # the userland qemu-user needs: the ELF interpreter at /lib (a link to usr/lib)
        assert (chain.sysroot / "lib").resolve() == (chain.sysroot / "usr/lib").resolve()
        assert elf_arch(chain.sysroot / "lib/ld-linux-aarch64.so.1") == "aarch64"
        assert arm64.check_toolchain(chain.path.parent) is None

    def test_a_second_call_reuses_it(self, arm64, chain):
        again = arm64.toolchain(ARM64_CACHE, log=lambda line: None)
        assert again.reused is True and again.path == chain.path and again.key == chain.key

    def test_a_damaged_environment_is_detected_and_made_again(self, arm64, chain, tmp_path):
        copy = tmp_path / "toolchains" / chain.key
        # device nodes (env/dev/full, zero, ...) are skipped: copytree would read them, and /dev/full never ends
        # (a run of this test filled the disk with 75 GB of zeros)
        shutil.copytree(chain.path.parent, copy, symlinks=True, ignore=lambda folder, names: [
            n for n in names if stat.S_ISCHR(os.lstat(os.path.join(folder, n)).st_mode)
            or stat.S_ISBLK(os.lstat(os.path.join(folder, n)).st_mode)])
        library = copy / "env/usr/lib/aarch64-linux-gnu/libarm_compute.so.43.0.0"
        data = bytearray(library.read_bytes())
        data[len(data) // 2] ^= 0xFF
        library.write_bytes(bytes(data))
        problem = arm64.check_toolchain(copy)
        assert problem is not None and "/usr/lib/aarch64-linux-gnu/libarm_compute.so.43.0.0" in problem
        lines = []
        remade = arm64.toolchain(tmp_path, log=lines.append)
        assert remade.reused is False and remade.path == copy / "env"
        assert any("dpkg --verify" in line and "making it again" in line for line in lines), lines
        assert arm64.check_toolchain(copy) is None

    def test_an_incomplete_environment_is_not_used(self, arm64, tmp_path):
        (tmp_path / "env/usr/bin").mkdir(parents=True)
        assert arm64.check_toolchain(tmp_path) == "incomplete (no toolchain.json)"


class TestDebiansBinaries:
    def test_the_build_says_what_the_library_itself_says(self, build):
        record = json.loads((build / "build.json").read_text())
        assert record["status"] == "ok" and record["version"] == "24.11" and record["target_arch"] == "aarch64"
        assert record["options"]["arch"] == "arm64-v8a" and record["options"]["neon"] == "1"
        assert record["options_from"].startswith("the build string embedded in libarm_compute.so")
        assert record["source"]["kind"] == "debian-binary"
        assert {p["package"] for p in record["source"]["packages"]} == {"libarm-compute43", "libarm-compute-dev"}
        assert all("signed InRelease" in p["verified_against"] for p in record["source"]["packages"])
        for name in record["libraries"]:
            assert elf_arch(build / "lib" / name) == "aarch64"
        assert (build / "include/arm_compute/graph.h").is_file()

    def test_a_damaged_deb_is_fetched_again_and_a_damaged_library_is_unpacked_again(self, arm64, tmp_path):
        lines = []
        debs = arm64.fetch_debs(tmp_path, log=lines.append)
        path = Path(debs[0]["path"])
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        lines.clear()
        again = arm64.fetch_debs(tmp_path, log=lines.append)
        assert any("damaged in the cache" in line for line in lines), lines
        assert again[0]["sha256"] == debs[0]["sha256"]
        from requestflow.board.files import sha256_file

        assert sha256_file(path) == debs[0]["sha256"]
        folder = arm64.debian_binary_build(tmp_path, log=lambda line: None)
        library = next(p for p in (folder / "lib").iterdir() if p.is_file() and not p.is_symlink())
        library.write_bytes(b"not a library")
        assert "damaged (sha256 differs)" in arm64.check_build(folder)
        assert arm64.debian_binary_build(tmp_path, log=lambda line: None) == folder
        assert arm64.check_build(folder) is None


class TestTheProgram:
    def test_is_arm64_code_compiled_once_and_found_by_the_backend(self, arm64, chain, build, program):
        assert elf_arch(program["path"]) == "aarch64" and program["arch"] == "aarch64"
        assert program["cross"]["toolchain"] == chain.key
        again = arm64.cross_compile(build, chain, log=lambda line: None)
        assert again["reused"] is True and again["path"] == program["path"]
        found = armcl_program.compile_program(build)  # what the armcl backend calls: no native compile
        assert found["reused"] is True and found["path"] == program["path"]

    def test_runs_under_qemu_and_refuses_bad_arguments_with_its_own_error(self, chain, program):
        result = subprocess.run([*chain.emulator(), program["path"], "--weights", "/nonexistent", "--layout",
                                 "NWHC"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert result.returncode == 2 and result.stdout.startswith("ERROR --layout NHWC or NCHW")

    def test_the_backend_refuses_arm64_code_without_an_emulator(self, build, program, monkeypatch):
        monkeypatch.delenv(ENV, raising=False)
        with pytest.raises(UserError, match="is aarch64 code and this machine is x86_64: set \\$REQUESTFLOW_EMULATOR"):
            run(RunConfig(model="mobilenet-v1-0.25-128", backend="armcl", weights=["random"], repetitions=1,
                          warmup=0, progress=False, variant={"target": "NEON"}, armcl_build=str(build)))


_TF: dict = {}


def _accuracy(models_dir, backend: str, **options) -> dict:
    document = run(RunConfig(model=MODEL, backend=backend, mode="accuracy", progress=False, limit=IMAGES,
                             weights=[str(models_dir / WEIGHTS)], **options))
    validate_document(document)
    assert document["status"] == "ok", document.get("error")
    return document


def _top5(document: dict) -> tuple[np.ndarray, np.ndarray]:
    top5 = np.array([p["top5"] for p in document["predictions"]])
    return top5[:, :, 0].astype(int), top5[:, :, 1]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_neon_under_qemu_gives_tfs_top1_on_the_same_weights(models_dir, build, program, emulated, layout):
    if "tf" not in _TF:
        _TF["tf"] = _accuracy(models_dir, "tf")
    tf = _TF["tf"]
    armcl = _accuracy(models_dir, "armcl", variant={"target": "NEON", "layout": layout}, armcl_build=str(build),
                      threads=2)
    assert armcl["context"]["weights"]["sha256"] == tf["context"]["weights"]["sha256"]
    assert armcl["accuracy"]["n"] == tf["accuracy"]["n"] == IMAGES
    (classes, scores), (tf_classes, tf_scores) = _top5(armcl), _top5(tf)
    same = int((classes[:, 0] == tf_classes[:, 0]).sum())
    assert same == IMAGES, f"top-1 identical on {same}/{IMAGES} images"
    assert (classes == tf_classes).mean() >= 0.95  # the rest of the top-5 too, but for near-ties
    assert np.abs(scores[:, 0] - tf_scores[:, 0]).max() < 1e-4
    backend = armcl["context"]["backend"]
    assert backend["variant"]["target"] == "NEON" and backend["variant"]["layout"] == layout
    assert backend["build"]["key"] == build.name and backend["build"]["options"]["neon"] == "1"
    emulation = backend["emulated"]
    assert emulation["emulator"] == "qemu-aarch64-static" and emulation["version"].startswith("qemu-aarch64")
    assert emulation["program_arch"] == "aarch64" and emulation["host_arch"] == "x86_64"
    assert "(emulated)" in backend["untested"] and "timings are meaningless" in backend["untested"]


def test_an_emulated_performance_run_is_labelled_never_a_measurement_of_arm(models_dir, build, program, emulated):
    document = run(RunConfig(model=MODEL, backend="armcl", mode="performance", progress=False, repetitions=2,
                             warmup=1, weights=[str(models_dir / WEIGHTS)], variant={"target": "NEON"},
                             armcl_build=str(build)))
    validate_document(document)
    assert document["status"] == "ok", document.get("error")
    backend = document["context"]["backend"]
    assert backend["emulated"]["emulator"] == "qemu-aarch64-static"
    assert "timings are meaningless" in backend["untested"]
    assert document["machine"]["arch"] == "x86_64"  # the runner's machine, not an ARM board
    assert document["machine"]["emulated"]["evidence"] == ["native programs run through $REQUESTFLOW_EMULATOR"]
    verdict = document["performance"]["quality"]
    assert verdict["verdict"] == "EMULATED" and verdict["reasons"][0].startswith("emulated (qemu-aarch64 version")
