"""ArmCL cross-built from source for an aarch64 board (``cross: true``, ``operators/arm64_cross.py``), the cheap
parts: the spec's validation, the scons options and key, the builder's command line, and the cache's two levels
(the builder's build, the assembled build a board is shipped) with damage found and repaired, the builder and the
toolchain stood in for (the real cross build: tests/integration/test_arm64_cross_sweep.py, opt-in)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from operators import arm64_cross, arm64_debian
from operators.arm64_cross import CROSS_OPTIONS, builder_command, check_raw, cross_build, cross_key, cross_options
from operators.arm64_toolchain import Toolchain, ToolchainError
from operators.armcl_sources import SourceTarball
from operators.armcl_spec import ArmclSpec, checked_builds
from requestflow.board.armcl_basics import build_key
from requestflow.board.files import sha256_file
from requestflow.errors import UserError

NAME = "armcl_24_11_neon_cross_arm64"
GCC = "aarch64-linux-gnu-g++ (Debian 14.2.0-19) 14.2.0"
GIB = 2**30
ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")


def spec(**options) -> ArmclSpec:
    return ArmclSpec("24.11", "debian", {"opencl": 1, "data_type_support": "fp32", **options}, cross=True)


class TestTheSpec:
    def test_the_configured_build_is_cross_neon_arm64_and_on_demand(self):
        value = checked_builds()[NAME]
        assert value["provision"] is False
        built = ArmclSpec.from_value(value)
        assert built.cross is True and built.source.kind == "debian"
        assert built.options["arch"] == "arm64-v8a" and built.options["neon"] == "1"
        assert ArmclSpec.from_value(built.to_dict()) == built and "cross" not in ArmclSpec().to_dict()

    @pytest.mark.parametrize(("value", "message"), [
        ({"source": {"kind": "debian-binary"}, "cross": True}, "a debian-binary build is Debian's own"),
        ({"source": {"kind": "git"}, "cross": True}, r"needs a source the controller fetches .*not git"),
        ({"cross": "yes"}, r"field cross: true or false, not 'yes'"),
        ({"cross": True, "options": {"arch": "x86_64"}}, r"builds for aarch64 .*arch x86_64 is not one of arm64-v8a"),
        ({"cross": True, "options": {"toolchain_prefix": "x-"}}, "'toolchain_prefix' cannot be set in a spec"),
    ])
    def test_is_refused_with_a_line_naming_what_is_wrong(self, value, message):
        with pytest.raises(UserError, match=message):
            ArmclSpec.from_value({"version": "24.11", **value})


class TestTheOptions:
    def test_for_an_aarch64_board_from_an_x86_64_controller(self):
        plan = cross_options(spec(), "aarch64", "x86_64", cpu_count=2, memory=8 * GIB)
        options = plan.options
        assert {k: options[k] for k in CROSS_OPTIONS} == {"build": "cross_compile",
                                                          "toolchain_prefix": "aarch64-linux-gnu-",
                                                          "compiler_prefix": ""}
        assert (options["arch"], options["neon"], options["opencl"], options["os"]) == ("arm64-v8a", "1", "1", "linux")
        assert options["data_type_support"] == "fp32" and plan.jobs == 2 and plan.machine == "aarch64"
        assert cross_options(ArmclSpec("24.11", "debian", {}, jobs=1, cross=True), "arm64", "x86_64").jobs == 1

    @pytest.mark.parametrize(("board", "controller", "message"), [
        ("x86_64", "x86_64", r"this x86_64 board is the controller's own \(x86_64\): drop cross"),
        ("aarch64", "aarch64", r"this aarch64 board is the controller's own"),
        ("armv7l", "x86_64", r"builds for aarch64 boards .*not for a armv7l board"),
        ("", "x86_64", "not for a unknown board"),
    ])
    def test_refuses_a_board_it_cannot_cross_build_for(self, board, controller, message):
        with pytest.raises(UserError, match=message):
            cross_options(spec(), board, controller)

    def test_refuses_a_spec_that_is_not_cross(self):
        with pytest.raises(UserError, match="not cross: true"):
            cross_options(ArmclSpec(), "aarch64", "x86_64")


class TestTheKey:
    def test_is_the_builders_key_and_holds_the_arch_the_cross_options_and_the_compiler(self):
        chain = toolchain(Path("/nowhere"))
        options = cross_options(spec(), "aarch64", "x86_64").options
        key = cross_key("sha256:" + "a" * 64, options, chain)
        assert key == build_key("sha256:" + "a" * 64, options, {"name": "aarch64-linux-gnu-g++", "version": GCC})
        native = {k: v for k, v in options.items() if k not in CROSS_OPTIONS} | {"build": "native"}
        others = [cross_key("sha256:" + "a" * 64, native, chain),
                  cross_key("sha256:" + "a" * 64, {**options, "arch": "arm64-v8.2-a"}, chain),
                  cross_key("sha256:" + "b" * 64, options, chain),
                  cross_key("sha256:" + "a" * 64, options, toolchain(Path("/nowhere"), GCC.replace("14.2.0-19",
                                                                                                     "14.2.0-20")))]
        assert key not in others and len(set(others)) == 4


class TestTheBuilderCommand:
    def test_runs_requestflows_builder_with_the_cross_compilers_in_a_clean_environment(self, tmp_path):
        plan = cross_options(spec(), "aarch64", "x86_64", cpu_count=2, memory=8 * GIB)
        tarball = SourceTarball(tmp_path / "acl.tar.xz", "c" * 64, "24.11", "debian trixie")
        command = builder_command(tarball, "24.11", plan, tmp_path / "cache", tmp_path / "r.json", Path("/code"))
        assert command[:2] == ["env", "-i"] and "CXX=aarch64-linux-gnu-g++" in command
        assert "CC=aarch64-linux-gnu-gcc" in command and "PYTHONPATH=/code" in command
        at = command.index("python3")
        assert command[at:at + 4] == ["python3", "-m", "requestflow.board.armcl", "build"]
        args = dict(zip(command[at + 4::2], command[at + 5::2], strict=True))
        assert json.loads(args["--options"]) == plan.options and args["--jobs"] == "2"
        assert (args["--source"], args["--sha256"], args["--version"]) == (str(tarball.path), "c" * 64, "24.11")
        assert args["--cache"] == str(tmp_path / "cache") and args["--result"] == str(tmp_path / "r.json")


# --- the cache, the builder and the toolchain stood in for -----------------------------------------------------


def toolchain(path: Path, compiler: str = GCC) -> Toolchain:
    """A stand-in environment: its record, and the arm64 runtime files (``RUNTIME_FILES``) when ``path`` exists."""
    if path.exists():
        lib = path / "usr/lib/aarch64-linux-gnu"
        lib.mkdir(parents=True)
        for name in arm64_debian.RUNTIME_FILES:
            (lib / name).write_text(f"stand-in {name}\n")
    packages = {f"{name}:arm64": "14" for name in arm64_debian.RUNTIME_PACKAGES}
    return Toolchain("t" * 16, path, {"compiler": compiler, "suite": "trixie", "packages": packages}, True)


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """cross_build with the toolchain (and its runtime files), the source and the builder stood in for: the builder
    writes a build in its cache as ``requestflow.board.armcl`` does; ``calls`` counts its runs."""
    tarball = SourceTarball(tmp_path / "acl.tar.xz", "d" * 64, "24.11", "a stand-in")
    (tmp_path / "env").mkdir()
    chain = toolchain(tmp_path / "env")
    calls: list[str] = []

    def builder(chain_, tarball_, version, plan, cache, timeout_s, log):
        key = cross_key(tarball_.source_id, plan.options, chain_)
        calls.append(key)
        folder = cache / key
        (folder / "lib").mkdir(parents=True)
        (folder / "include/arm_compute").mkdir(parents=True)
        (folder / "include/arm_compute/graph.h").write_text("// graph\n")
        libraries = {}
        for name in ("libarm_compute.so", "libarm_compute_graph.so"):
            (folder / "lib" / name).write_bytes(name.encode() * 100)
            libraries[name] = {"bytes": 100 * len(name), "sha256": sha256_file(folder / "lib" / name)}
        (folder / "build.log").write_text("scons\n")
        outcome = {"key": key, "status": "ok", "version": version, "source_version": "v24.11",
                   "options": plan.options, "compiler": {"name": "aarch64-linux-gnu-g++", "version": GCC},
                   "libraries": libraries, "library_bytes": 1, "build_seconds": 1.0, "path": str(folder),
                   "machine": {"arch": "x86_64", "hostname": "here"}, "source": {"kind": "tarball"}}
        (folder / "build.json").write_text(json.dumps(outcome))
        return {**outcome, "reused": False}

    monkeypatch.setattr(arm64_cross, "require_root", lambda what: None)
    monkeypatch.setattr(arm64_cross, "toolchain", lambda cache_dir, log: chain)
    monkeypatch.setattr(arm64_cross, "resolve_source", lambda spec_, cache_dir, log: tarball)
    monkeypatch.setattr(arm64_cross, "run_builder", builder)
    return calls


def make(tmp_path) -> tuple[Path, bool]:
    return cross_build(spec(), "aarch64", cache_dir=tmp_path / "arm64", log=lambda line: None)


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


class TestTheCache:
    def test_builds_once_assembles_with_the_runtime_and_records_how(self, stand_ins, tmp_path):
        folder, reused = make(tmp_path)
        assert reused is False and folder == tmp_path / "arm64/builds" / stand_ins[0]
        assert arm64_debian.check_build(folder) is None
        record = json.loads((folder / "build.json").read_text())
        assert record["target_arch"] == "aarch64" and record["machine"]["arch"] == "aarch64"
        assert record["options"]["build"] == "cross_compile" and record["cross"]["compiler"] == GCC
        assert record["cross"]["build"] == str(tmp_path / "arm64/cross" / stand_ins[0])
        assert set(record["runtime"]) == set(arm64_debian.RUNTIME_FILES) and record["path"] == str(folder)
        assert record["runtime_packages"]["packages"] == {"libc6": "14", "libstdc++6": "14", "libgcc-s1": "14"}
        assert (folder / "runtime/libc.so.6").read_text() == "stand-in libc.so.6\n"
        assert make(tmp_path) == (folder, True) and len(stand_ins) == 1

    def test_a_damaged_build_is_assembled_again_from_the_builders_and_a_damaged_builders_is_built_again(
            self, stand_ins, tmp_path):
        folder, _ = make(tmp_path)
        damage(folder / "lib/libarm_compute.so")
        assert make(tmp_path) == (folder, False) and len(stand_ins) == 1  # not built again
        assert arm64_debian.check_build(folder) is None
        raw = tmp_path / "arm64/cross" / stand_ins[0]
        damage(raw / "lib/libarm_compute_graph.so")
        assert "lib/libarm_compute_graph.so is missing or damaged" in check_raw(raw)
        (folder / "runtime/libc.so.6").unlink()
        assert make(tmp_path) == (folder, False) and len(stand_ins) == 2  # built again
        assert check_raw(raw) is None and arm64_debian.check_build(folder) is None

    def test_a_builder_whose_key_differs_is_an_error(self, stand_ins, tmp_path, monkeypatch):
        monkeypatch.setattr(arm64_cross, "run_builder", lambda *args: {"key": "e" * 64, "status": "ok"})
        with pytest.raises(ToolchainError, match="the builder's key eeeeeeeeeeeeeeee is not the expected"):
            make(tmp_path)
        assert not list((tmp_path / "arm64/builds").glob("[0-9a-f]*"))


class TestTheOperatorOnThisX86Board:
    def test_provisioning_skips_it_and_a_sweep_fails_its_points_before_anything_is_fetched(self, monkeypatch,
                                                                                             tmp_path):
        """The local board is the controller's own x86_64: nothing to cross-build for it."""
        from airflow.sdk.exceptions import AirflowSkipException
        from sqlalchemy import create_engine, text

        from operators.armcl_build import ArmclBuildFailed, ArmclBuildOperator
        from requestflow.results.database import sqlalchemy_url
        from tests.databases import throwaway_database

        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
        monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "nothing-fetched"))
        monkeypatch.setenv("REQUESTFLOW_ARM64_CACHE", str(tmp_path / "nothing-built"))
        value = checked_builds()[NAME]
        context = {"run_id": "cross-on-x86", "ti": None, "dag": None}
        with throwaway_database() as url:
            monkeypatch.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", url)
            on_demand = ArmclBuildOperator(task_id=NAME, board_conn_id="local", spec=value, points=[])
            with pytest.raises(AirflowSkipException, match=r"built on demand \(provision: false\)"):
                on_demand.execute(context)
            provisioning = ArmclBuildOperator(task_id=NAME, board_conn_id="local", spec={**value, "provision": True},
                                              points=[])
            with pytest.raises(AirflowSkipException, match=r"board local: .*x86_64 board is the controller's own"):
                provisioning.execute(context)
            points = [{"model": "mobilenet-v1-0.25-128", "backend": "armcl", "mode": "accuracy", "armcl_build": NAME}]
            sweep = ArmclBuildOperator(task_id=NAME, board_conn_id="local", spec=value, points=points,
                                       build_name=NAME)
            with pytest.raises(ArmclBuildFailed, match=r"board local: ArmCL cross: true cross-builds for a board of "
                                                       r"another architecture.*drop cross"):
                sweep.execute(context)
            engine = create_engine(sqlalchemy_url(url))
            try:
                with engine.connect() as connection:
                    messages = connection.execute(text("SELECT message FROM point_failures")).scalars().all()
            finally:
                engine.dispose()
        assert len(messages) == 1 and "controller's own" in messages[0]
        assert not (tmp_path / "nothing-fetched" / "armcl").exists() and not (tmp_path / "nothing-built").exists()


# --- a real cross build of a stand-in ArmCL source, in the real toolchain environment ---------------------------


@pytest.fixture(scope="class")
def chain() -> Toolchain:
    """The machine's toolchain environment (made once, as the NEON tests use it)."""
    for tool in ("mmdebstrap", "unshare", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (./dev.sh test installs mmdebstrap)")
    return arm64_cross.toolchain(ARM64_CACHE, log=lambda line: None)


def group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the toolchain environment needs root (chroot, a mount namespace)")
class TestARealCrossBuildOfAStandIn:
    def test_a_command_in_the_environment_is_stopped_whole(self, chain):
        """What runs in the environment is stopped with its whole process group: when its caller fails (here its
        log callback; a timeout or Ctrl-C alike) and by stop_all (the task's on_kill)."""
        started: list[int] = []

        def fail(line: str) -> None:
            started.append(next(iter(arm64_cross.RUNNING)).pid)
            raise RuntimeError(f"the caller failed on {line!r}")

        with pytest.raises(RuntimeError, match="the caller failed on 'started'"):
            arm64_cross.in_environment(chain, [], ["sh", "-c", "echo started; exec sleep 300"], fail, 60)
        assert not arm64_cross.RUNNING and not group_alive(started[0])
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(code=arm64_cross.in_environment(
            chain, [], ["sleep", "300"], lambda line: None, 600)))
        thread.start()
        deadline = time.monotonic() + 60
        while not arm64_cross.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        (process,) = arm64_cross.RUNNING
        arm64_cross.stop_all(lambda line: None)
        thread.join(60)
        assert not thread.is_alive() and outcome["code"] == -15 and not group_alive(process.pid)

    def test_makes_aarch64_libraries_in_the_environment_and_repairs_them(self, chain, tmp_path):
        """ArmCL's stand-in (tests/integration/test_armcl_build.py's, with the two cross options) built by the real
        builder chrooted in the toolchain environment (the machine's, as the NEON tests use it): aarch64 libraries,
        trixie's runtime beside them; reused, then a damaged library assembled again without building."""
        from operators.arm64_toolchain import cache_root
        from operators.armcl_spec import ArmclSource
        from tests.integration.test_armcl_build import FAKE_SCONSTRUCT, fake_tarball

        sconstruct = FAKE_SCONSTRUCT.replace('    ("compiler_cache", "", ""),\n', '    ("compiler_cache", "", ""),\n'
                                             '    ("toolchain_prefix", "", "auto"), ("compiler_prefix", "", "auto"),\n')
        # a source of its own (a key of its own, built cold), removed from the machine's cache afterwards
        path, sha = fake_tarball(tmp_path, "cross", SConstruct=sconstruct,
                                 **{"arm_compute/graph.h": f"#pragma once // {uuid.uuid4()}\n"})
        stand_in = ArmclSpec("24.11", ArmclSource.tarball(str(path), sha), {"opencl": 1}, cross=True)
        root, lines = cache_root(ARM64_CACHE), []
        key = cross_key(f"sha256:{sha}", cross_options(stand_in, "aarch64").options, chain)

        def build() -> tuple[Path, bool]:
            return cross_build(stand_in, "aarch64", cache_dir=ARM64_CACHE, chain=chain, log=lines.append)

        try:
            self.check(build, root / "builds" / key, lines)
        finally:
            for folder in (root / "builds" / key, root / "cross" / key):
                shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def check(build, expected: Path, lines: list[str]) -> None:
        from requestflow.board.emulation import elf_arch

        folder, reused = build()
        assert (folder, reused) == (expected, False), lines[-20:]
        assert {elf_arch(folder / "lib" / name) for name in ("libarm_compute.so", "libarm_compute_graph.so")} == \
            {"aarch64"}
        assert "CXX=aarch64-linux-gnu-g++" not in " ".join(lines)  # the environment's, not the log's business
        record = json.loads((folder / "build.json").read_text())
        assert record["options"]["build"] == "cross_compile" and record["compiler"]["name"] == "aarch64-linux-gnu-g++"
        assert elf_arch(folder / "runtime" / "libc.so.6") == "aarch64" and arm64_debian.check_build(folder) is None
        assert build() == (folder, True)
        damage(folder / "lib" / "libarm_compute.so")
        lines.clear()
        assert build() == (folder, False) and arm64_debian.check_build(folder) is None
        assert any("reused (assembled again)" in line for line in lines), lines
