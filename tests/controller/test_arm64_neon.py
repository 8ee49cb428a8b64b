"""ArmCL's NEON path executing as real arm64 code (issue #15): Debian trixie's prebuilt ArmCL 24.11 for arm64
(``arch=arm64-v8a neon=1``), requestflow's MobileNet program cross-compiled against it with trixie's GCC 14, run by
the armcl backend under ``qemu-aarch64-static -L <arm64 userland>`` on this x86_64 machine, must give tf's top-1 on
the same images and weights (0.25_224 .h5), NHWC and NCHW; every such result says it was emulated.

The toolchain environment, the verified .debs, the build and the program are the machine's
(``operators.arm64_toolchain``, ``operators.arm64_debian``, cached in ``$REQUESTFLOW_ARM64_CACHE``, default
``~/.cache/requestflow/arm64``, across runs and CI runs): cold about 45 s here, warm a few seconds. The damage tests
work on copies or in their own folders, never on the shared cache.
Needs root (mmdebstrap --mode=root, chroot); ``./dev.sh test`` installs qemu-user-static and mmdebstrap."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

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
    """The controller's arm64 modules (the toolchain environment; Debian's build and the cross compile), once
    the tools they need are here."""
    from operators import arm64_debian, arm64_toolchain

    _missing("mmdebstrap", "qemu-aarch64-static", "unshare", "dpkg-deb")
    return SimpleNamespace(toolchain=arm64_toolchain.toolchain, check_toolchain=arm64_toolchain.check_toolchain,
                           fetch_debs=arm64_debian.fetch_debs, debian_binary_build=arm64_debian.debian_binary_build,
                           check_build=arm64_debian.check_build, cross_compile=arm64_debian.cross_compile)


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
        assert {p["package"] for p in record["source"]["packages"]} == {
            "libarm-compute43", "libarm-compute-dev", "libc6", "libstdc++6", "libgcc-s1"}
        assert all("signed InRelease" in p["verified_against"] for p in record["source"]["packages"])
        for name in record["libraries"]:
            assert elf_arch(build / "lib" / name) == "aarch64"
        assert (build / "include/arm_compute/graph.h").is_file()
        assert set(record["runtime"]) == {"ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libstdc++.so.6",
                                          "libgcc_s.so.1"}
        assert all(elf_arch(build / "runtime" / name) == "aarch64" for name in record["runtime"])

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


class TestTheShipmentToABoard:
    """What a board whose userland is older than trixie (the farm board's bookworm: glibc 2.36) gets: the build
    with trixie's runtime, and the program made for the build's place on the board, run through that runtime."""

    @pytest.fixture(scope="class")
    def bookworm(self):
        from operators import arm64_runner

        return arm64_runner.python_userland(ARM64_CACHE, log=lambda line: None)

    @pytest.fixture(scope="class")
    def shipped(self, chain, build, tmp_path_factory) -> tuple[Path, dict, Path]:
        from operators.arm64_debian import board_shipment

        at = tmp_path_factory.mktemp("board") / "armcl" / "builds" / build.name
        tar, record = board_shipment(build, chain, str(at), tmp_path_factory.mktemp("shipments"),
                                     log=lambda line: None)
        at.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(tar), "-C", str(at)], check=True)
        return tar, record, at

    def test_the_board_checks_every_file_it_unpacks(self, shipped):
        _, record, at = shipped
        check = subprocess.run(["sha256sum", "-c", "--quiet", "--strict", "SHA256SUMS"], cwd=at,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert len((at / "SHA256SUMS").read_text().splitlines()) == record["files"]
        assert json.loads((at / "build.json").read_text())["path"] == str(at)
        program = Path(record["program"]["path"])
        assert program.is_relative_to(at) and program.is_file()
        assert armcl_program.compile_program(at)["reused"] is True  # the board compiles nothing

    def test_its_program_runs_on_bookworms_userland_through_trixies_runtime(self, chain, program, shipped,
                                                                           bookworm):
        _, record, at = shipped
        emulate = [shutil.which("qemu-aarch64-static"), "-L", str(bookworm.path)]
        loaded = subprocess.run([*emulate, record["program"]["path"]], capture_output=True, text=True,
                                env={"LD_TRACE_LOADED_OBJECTS": "1"}, timeout=120)
        libraries = dict(line.split(" => ") for line in loaded.stdout.split("\n\t") if " => " in line)
        assert {name.strip() for name in libraries} >= {"libarm_compute.so.43", "libstdc++.so.6", "libc.so.6"}
        assert all(path.startswith(str(at)) for path in libraries.values()), loaded.stdout
        result = subprocess.run([*emulate, record["program"]["path"], "--weights", "/nonexistent", "--layout",
                                 "NWHC"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert result.returncode == 2 and result.stdout.startswith("ERROR --layout NHWC or NCHW")
        # the program made for the toolchain's own userland does not load on bookworm's: why the runtime ships
        plain = subprocess.run([*emulate, program["path"]], capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and "GLIBC" in plain.stderr, plain.stderr

    def test_a_damaged_shipment_is_made_again_and_a_bad_place_refused(self, chain, build, shipped, tmp_path):
        from operators.arm64_debian import board_shipment

        tar, record, at = shipped
        tar.write_bytes(tar.read_bytes()[:-1000])
        lines: list[str] = []
        again, remade = board_shipment(build, chain, str(at), tar.parent.parent, log=lines.append)
        assert again == tar and any("the tar is damaged" in line for line in lines), lines
        from requestflow.board.files import sha256_file

        assert sha256_file(again) == remade["sha256"]
        with pytest.raises(UserError, match="not a plain absolute path"):
            board_shipment(build, chain, "armcl/builds/x", tmp_path)


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
