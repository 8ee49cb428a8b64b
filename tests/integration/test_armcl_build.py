"""Building ArmCL (operators/armcl_sources.py, armcl_spec.py and armcl_build.py, requestflow/board/armcl.py,
requestflow/results/builds.py).

A spec's options are checked against an allowlist before anything runs and completed from the board's platform;
Debian's source (trixie, 24.11) is fetched through a private apt configuration, checked and cached; the board-side
builder refuses a missing compiler at once, reports scons's and the compiler's own errors, and caches builds by
key. Through the operator: a stand-in ArmCL project on an sshd board of the farm (built, reused, a failed build
failing its points) and ONE real ArmCL 24.11 build on this machine (x86_64, OpenCL, fp32, no examples or tests)
into a cache kept across runs (``$REQUESTFLOW_ARMCL_CACHE``, default ``~/.cache/requestflow/armcl``): cold once
per machine (about 10-20 min on 2 cores), then reused in seconds. ``pytest -s`` shows the timings.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from operators import armcl_sources
from operators.armcl_build import ArmclBuildFailed, ArmclBuildOperator
from operators.armcl_sources import SourceError, fetch_debian_source, parse_checksums, parse_control, tarball_from
from operators.armcl_spec import ArmclSource, ArmclSpec, cache_key, options_for
from requestflow.board import armcl as board_armcl
from requestflow.board.files import sha256_file
from requestflow.errors import UserError
from requestflow.results.database import sqlalchemy_url
from tests.databases import throwaway_database
from tests.farm import farm_fixture
from tests.processes import commands_under

farm = farm_fixture(1, scope="module")
ROOT = Path(__file__).resolve().parents[2]
ARMCL_CACHE = Path(os.environ.get("REQUESTFLOW_ARMCL_CACHE") or Path.home() / ".cache" / "requestflow" / "armcl")
BUILDER = [sys.executable, "-m", "requestflow.board.armcl"]
X86 = {"arch": "x86_64", "neon": "0", "opencl": "1", "build": "native", "os": "linux", "data_type_support": "fp32"}
TIMINGS: dict[str, float] = {}

HIKEY960 = {  # what `requestflow platform` says of a HiKey960 (Kirin 960: 4 A73 + 4 A53, 3 GB), with its flags
    "arch": "aarch64", "cpu_count": 8, "memory_bytes": 3 * 2**30 - 200 * 2**20, "board": {"id": "hikey960"},
    "cpu_features": ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"]}
X86_BOX = {"arch": "x86_64", "cpu_count": 2, "memory_bytes": 23 * 2**30, "cpu_features": ["sse2", "avx2"]}


def need(tool: str) -> None:
    """Tools dev.sh installs: missing in CI is a failure, elsewhere a skip."""
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing in CI (./dev.sh test installs it)")
        pytest.skip(f"{tool} not installed")


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    if TIMINGS:
        print("\narmcl timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


# --- a stand-in ArmCL project: ArmCL's option names, two tiny shared libraries ---------------------------------

FAKE_SCONSTRUCT = '''\
# A stand-in for ArmCL's SConstruct (tests only): the same option names, two tiny shared libraries.
import os, time
BOOLS = ("neon", "opencl", "embed_kernels", "debug", "asserts", "logging", "cppthreads", "openmp", "Werror",
         "multi_isa", "fixed_format_kernels", "set_soname", "exceptions", "examples", "gemm_tuner",
         "validation_tests", "benchmark_tests", "benchmark_examples", "validate_examples")
vars = Variables("scons")
vars.AddVariables(
    EnumVariable("arch", "", "armv7a", allowed_values=("armv7a", "armv7a-hf", "arm64-v8a", "arm64-v8.2-a", "armv8a",
                                                       "armv8.2-a", "armv8.6-a", "x86_64")),
    EnumVariable("build", "", "cross_compile", allowed_values=("native", "cross_compile")),
    EnumVariable("os", "", "linux", allowed_values=("linux", "android")),
    ListVariable("data_type_support", "", "all", ["qasymm8", "qasymm8_signed", "qsymm16", "fp16", "fp32", "integer"]),
    ListVariable("data_layout_support", "", "all", ["nhwc", "nchw"]),
    PathVariable("build_dir", "", ".", PathVariable.PathAccept),
    PathVariable("install_dir", "", "", PathVariable.PathAccept),
    ("compiler_cache", "", ""),
    *[BoolVariable(name, "", False) for name in BOOLS],
)
env = Environment(variables=vars, ENV=os.environ)
if os.path.exists("SLOW"):
    time.sleep(300)
env["CXX"] = (env["compiler_cache"] + " " + os.environ.get("CXX", "g++")).strip()
build = "build/" + env["build_dir"]
install = build + "/" + env["install_dir"]
core = env.SharedLibrary(build + "/arm_compute", ["src/core.cpp"])
graph = env.SharedLibrary(build + "/arm_compute_graph", ["src/graph.cpp"])
env.Install(install + "/lib", [core, graph])
env.Install(install + "/include", "arm_compute")
if env["examples"]:
    example = env.Program(build + "/example", ["examples/example.cpp"], LIBS=["arm_compute"], LIBPATH=[build])
    env.Install(install + "/bin", example)
unknown = vars.UnknownVariables()
if unknown:
    print("Unknown variables: %s" % " ".join(unknown.keys()))
    Exit(1)
'''
FAKE_FILES = {
    "SConstruct": FAKE_SCONSTRUCT,
    "SConscript": 'VERSION = "v24.11"\n',
    "src/core.cpp": "int arm_compute_version() { return 2411; }\n",
    "src/graph.cpp": "int arm_compute_version();\nint graph_version() { return arm_compute_version(); }\n",
    "arm_compute/Version.h": "#pragma once\n",
    "examples/example.cpp": "int arm_compute_version();\n"
                            "int main() { return arm_compute_version() == 2411 ? 0 : 1; }\n",
}


def fake_tarball(folder: Path, name: str = "fake", **changes: str) -> tuple[Path, str]:
    """A stand-in ArmCL source tarball (``changes``: file -> new content); (path, sha256)."""
    files = {**FAKE_FILES, **changes}
    path = folder / f"{name}.tar.xz"
    with tarfile.open(path, "w:xz") as archive:
        for relative, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(f"ComputeLibrary-{name}/{relative}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            archive.addfile(info, io.BytesIO(data))
    return path, sha256_file(path)


BROKEN_CPP = "int arm_compute_version() { return undefined_symbol; }\n"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("armcl-sources")
    return {"fake": fake_tarball(folder), "broken": fake_tarball(folder, "broken", **{"src/core.cpp": BROKEN_CPP}),
            "slow": fake_tarball(folder, "slow", SLOW="")}


def run_builder(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*BUILDER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture
def results_url(monkeypatch):
    """A throwaway results database, the ``requestflow_results`` Connection pointing at it; its URL."""
    with throwaway_database() as url:
        monkeypatch.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", url)
        yield sqlalchemy_url(url)


def query(url: str, sql: str, **params) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


# --- the spec ----------------------------------------------------------------------------------------------------


class TestSpec:
    def test_an_unknown_option_is_named_with_the_closest_real_one(self):
        with pytest.raises(UserError, match=r"unknown ArmCL scons option 'data_types' \(did you mean "
                                            r"data_type_support\?\)"):
            ArmclSpec(options={"data_types": "fp32"})
        with pytest.raises(UserError, match=r"unknown ArmCL scons option 'opencl_kernels'"):
            ArmclSpec(options={"opencl": 1, "opencl_kernels": 1})

    @pytest.mark.parametrize(("option", "value", "message"), [
        ("neon", "maybe", r"ArmCL option neon: 'maybe' is not a boolean \(0 or 1\)"),
        ("arch", "riscv64", r"ArmCL option arch: 'riscv64' is not one of x86_64, arm64-v8a"),
        ("data_type_support", "fp32,fp64", r"ArmCL option data_type_support: 'fp64' is not one of all, none"),
        ("build", "cross_compile", r"ArmCL option build: 'cross_compile' is not one of native"),
        ("os", "android", r"ArmCL option os: 'android' is not one of linux"),
    ])
    def test_a_bad_value_is_named(self, option, value, message):
        with pytest.raises(UserError, match=message):
            ArmclSpec(options={option: value})

    @pytest.mark.parametrize("option", ["build_dir", "install_dir", "compiler_cache", "extra_cxx_flags", "standalone"])
    def test_options_that_are_the_builders_or_unsafe_are_refused(self, option):
        with pytest.raises(UserError, match=rf"ArmCL option '{option}' cannot be set in a spec"):
            ArmclSpec(options={option: "x"})

    def test_values_are_kept_as_scons_reads_them(self):
        spec = ArmclSpec(options={"opencl": 0, "neon": True, "debug": "false", "data_type_support": ["qasymm8", "fp32"],
                                  "data_layout_support": "all"})
        assert spec.options == {"data_layout_support": "all", "data_type_support": "fp32,qasymm8", "debug": "0",
                                "neon": "1", "opencl": "0"}
        assert list(spec.options) == sorted(spec.options)
        assert ArmclSpec.from_value(spec.to_dict()) == spec

    def test_sources(self):
        assert ArmclSpec().source == ArmclSource("debian", suite="trixie")
        assert ArmclSpec(source={"kind": "git"}).source == ArmclSource.git("v24.11")
        with pytest.raises(UserError, match="needs its sha256"):
            ArmclSpec(source={"kind": "tarball", "location": "/tmp/x.tar.xz"})
        with pytest.raises(UserError, match="official release tags only"):
            ArmclSource.git("main")
        with pytest.raises(UserError, match="unknown ArmCL spec field 'option'"):
            ArmclSpec.from_value({"option": {}})
        with pytest.raises(UserError, match="ArmCL version 'latest'"):
            ArmclSpec("latest")

    def test_debian_binary_takes_debians_options_and_a_suite_name(self):
        spec = ArmclSpec(source={"kind": "debian-binary"})
        assert spec.source == ArmclSource("debian-binary", suite="trixie")
        assert spec.to_dict()["source"] == {"kind": "debian-binary", "suite": "trixie"}
        assert ArmclSpec.from_value(spec.to_dict()) == spec
        with pytest.raises(UserError, match="built with Debian's options .* not neon: drop them"):
            ArmclSpec(source={"kind": "debian-binary"}, options={"neon": 1})
        with pytest.raises(UserError, match="ArmCL source suite 'trixie; rm -rf /'"):
            ArmclSource("debian-binary", suite="trixie; rm -rf /")
        with pytest.raises(UserError, match="expected debian, debian-binary, tarball, git"):
            ArmclSource("debian-bin")

    def test_the_operator_refuses_a_bad_spec_when_the_dag_is_parsed(self):
        with pytest.raises(UserError, match="ArmCL option neon: 'maybe'"):
            ArmclBuildOperator(task_id="armcl", board_conn_id="local", spec={"options": {"neon": "maybe"}})


class TestOptionsFor:
    def test_a_hikey960_builds_arm64_with_neon_and_one_job_per_2_gib(self):
        plan = options_for(HIKEY960, ArmclSpec(options={"data_type_support": "fp32"}))
        assert (plan.options["arch"], plan.options["neon"], plan.options["opencl"]) == ("arm64-v8a", "1", "1")
        assert plan.options["data_type_support"] == "fp32"
        assert plan.jobs == 1  # 8 cores, under 3 GB: the seed throttled these builds too
        assert plan.machine == "aarch64"

    def test_an_x86_64_board_builds_opencl_without_neon(self):
        plan = options_for(X86_BOX, ArmclSpec())
        assert (plan.options["arch"], plan.options["neon"], plan.options["opencl"]) == ("x86_64", "0", "1")
        assert plan.jobs == 2

    def test_the_full_option_list_holds_the_defaults(self):
        plan = options_for(X86_BOX, ArmclSpec(options={"debug": 1}))
        assert plan.options == {
            "Werror": "0", "arch": "x86_64", "asserts": "0", "benchmark_tests": "0", "build": "native",
            "cppthreads": "1", "data_layout_support": "all", "data_type_support": "all", "debug": "1",
            "embed_kernels": "1", "examples": "0", "gemm_tuner": "0", "logging": "0", "multi_isa": "0", "neon": "0",
            "opencl": "1", "openmp": "0", "os": "linux", "validation_tests": "0"}

    def test_neon_follows_the_cpu(self):
        assert options_for({**HIKEY960, "cpu_features": None}, ArmclSpec()).options["neon"] == "1"  # ARMv8-A: asimd
        armv7 = {"arch": "armv7l", "cpu_count": 4, "memory_bytes": 2**30}
        assert options_for({**armv7, "cpu_features": ["half", "thumb", "vfpv4", "neon"]}, ArmclSpec()).options[
            "neon"] == "1"
        plain = options_for({**armv7, "cpu_features": ["half", "thumb", "vfpv3d16"]}, ArmclSpec())
        assert (plain.options["arch"], plain.options["neon"], plain.jobs) == ("armv7a", "0", 1)

    def test_what_a_board_cannot_build_is_refused(self):
        with pytest.raises(UserError, match=r"neon=1 on a x86_64 board: ArmCL has no NEON code for x86"):
            options_for(X86_BOX, ArmclSpec(options={"neon": 1}))
        with pytest.raises(UserError, match=r"arch=x86_64 cannot be built on a aarch64 board"):
            options_for(HIKEY960, ArmclSpec(options={"arch": "x86_64"}))
        with pytest.raises(UserError, match=r"cannot be built for a riscv64 board"):
            options_for({"arch": "riscv64"}, ArmclSpec())
        with pytest.raises(UserError, match=r"neon=0 and opencl=0 leave no backend"):
            options_for(X86_BOX, ArmclSpec(options={"opencl": 0}))

    def test_jobs_by_cores_and_memory(self):
        assert board_armcl.default_jobs(8, 16 * 2**30) == 8
        assert board_armcl.default_jobs(8, 4 * 2**30) == 2
        assert board_armcl.default_jobs(2, 1 * 2**30) == 1
        assert board_armcl.default_jobs(4, None) == 1
        assert options_for(HIKEY960, ArmclSpec(jobs=3)).jobs == 3


class TestCacheKey:
    COMPILER = {"name": "g++", "path": "/usr/bin/g++", "version": "g++ (Debian 12.2.0-14+deb12u1) 12.2.0"}

    def test_stable_whatever_the_order_and_spelling(self):
        options = options_for(X86_BOX, ArmclSpec()).options
        key = cache_key("sha256:" + "a" * 64, options, self.COMPILER)
        assert key == cache_key("sha256:" + "a" * 64, dict(reversed(list(options.items()))), dict(self.COMPILER))
        assert key == board_armcl.build_key("sha256:" + "a" * 64, options, {**self.COMPILER, "path": "/opt/g++"})
        # pinned: a change of the key's recipe makes every board rebuild, so it must be deliberate
        assert key == "b34270df2abd9cbd85145a7198302c61a865bc05e72a2d55722c26b41d0fb058"

    def test_changes_with_the_source_an_option_or_the_compiler(self):
        options = options_for(X86_BOX, ArmclSpec()).options
        key = cache_key("sha256:" + "a" * 64, options, self.COMPILER)
        assert cache_key("sha256:" + "b" * 64, options, self.COMPILER) != key
        assert cache_key("sha256:" + "a" * 64, {**options, "debug": "1"}, self.COMPILER) != key
        assert cache_key("sha256:" + "a" * 64, options, {**self.COMPILER, "version": "g++ (Debian 14.2.0) 14.2.0"}) \
            != key
        # the number of jobs is not an option: a board with more memory reuses the same build
        assert options_for({**X86_BOX, "memory_bytes": 2**30}, ArmclSpec()).options == options


# --- sources on the controller -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debian_source():
    """Debian trixie's ArmCL 24.11 source, fetched once into this session's cache (deb.debian.org)."""
    need("apt-get")
    started = time.monotonic()
    source = fetch_debian_source("24.11", log=lambda line: None)
    TIMINGS["fetch debian source"] = time.monotonic() - started
    return source


class TestDebianSource:
    def test_fetched_through_a_private_apt_and_checked(self, debian_source):
        assert debian_source.version == "24.11"
        assert debian_source.path.name.startswith("arm-compute-library_24.11") and \
            debian_source.path.name.endswith(".orig.tar.xz")
        assert sha256_file(debian_source.path) == debian_source.sha256
        assert debian_source.origin.startswith("debian trixie arm-compute-library 24.11")
        folder = debian_source.path.parent
        record = json.loads((folder / "source.json").read_text())
        assert record["sha256"] == debian_source.sha256 and record["debian_version"].startswith("24.11")
        # the checksums the tarball was checked against: the signed index's entry of the source package (its .dsc's
        # fields), and the .dsc itself where the mirror serves it
        apt = folder.parent / "apt"
        index = parse_control(armcl_sources.PrivateApt(apt, (apt / "sources.list").read_text().strip()).run(
            "apt-cache", "showsrc", "--only-source", "arm-compute-library"))
        stanza = next(s for s in index if s["Version"] == record["debian_version"])
        assert parse_checksums(stanza["Checksums-Sha256"])[record["file"]][0] == debian_source.sha256
        assert any("Sources index" in what for what in record["verified_against"])
        if record["dsc"]:
            dsc = parse_control((folder / record["dsc"]).read_text())[0]
            assert parse_checksums(dsc["Checksums-Sha256"])[record["file"]][0] == debian_source.sha256
        # the system's apt state is untouched: the private lists hold the trixie sources, the system's do not
        assert list((apt / "lists").glob("*trixie*Sources*"))
        assert not list(Path("/var/lib/apt/lists").glob("*trixie*Sources*"))

    def test_a_second_call_makes_no_network_access(self, debian_source, monkeypatch):
        def offline(self, *command, cwd=None):
            raise AssertionError(f"apt ran for a cached source: {command}")

        monkeypatch.setattr(armcl_sources.PrivateApt, "run", offline)
        started = time.monotonic()
        assert fetch_debian_source("24.11") == debian_source
        TIMINGS["fetch debian source (cached)"] = time.monotonic() - started

    def test_a_damaged_cached_tarball_is_fetched_again(self, debian_source, monkeypatch):
        record = debian_source.path.parent / "source.json"
        original, original_record = debian_source.path.read_bytes(), record.read_text()
        attempts = []

        def offline(self, *command, cwd=None):
            attempts.append(command)
            raise SourceError("offline")

        monkeypatch.setattr(armcl_sources.PrivateApt, "run", offline)
        try:
            debian_source.path.write_bytes(original[:-1] + b"X")
            with pytest.raises(SourceError, match="offline"):
                fetch_debian_source("24.11")
            assert attempts[0][:2] == ("apt-get", "update")
        finally:  # put it back for the other tests: no second download
            debian_source.path.write_bytes(original)
            record.write_text(original_record)
        assert fetch_debian_source("24.11") == debian_source


class FakeApt:
    """Stands in for the private apt: an index entry, the tarball and the .dsc it serves (tests the checks
    offline)."""

    def __init__(self, tarball: bytes, index_sha: str, dsc_sha: str | None) -> None:
        self.tarball, self.index_sha, self.dsc_sha = tarball, index_sha, dsc_sha
        self.dsc = ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nFormat: 3.0 (quilt)\n"
                    "Source: arm-compute-library\nVersion: 24.11+dfsg-3\nChecksums-Sha256:\n"
                    f" {dsc_sha or '0' * 64} {len(tarball)} arm-compute-library_24.11+dfsg.orig.tar.xz\n"
                    "\n-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n")

    def __call__(self, *command, cwd=None):  # a callable instance as a class attribute: not bound
        if command[:2] == ("apt-cache", "showsrc"):
            import hashlib

            dsc_sha = hashlib.sha256(self.dsc.encode()).hexdigest()
            return ("Package: arm-compute-library\nVersion: 24.11+dfsg-3\nDirectory: pool/main/a/arm-compute-library\n"
                    "Checksums-Sha256:\n"
                    f" {dsc_sha} {len(self.dsc)} arm-compute-library_24.11+dfsg-3.dsc\n"
                    f" {self.index_sha} {len(self.tarball)} arm-compute-library_24.11+dfsg.orig.tar.xz\n"
                    "\nPackage: arm-compute-library\nVersion: 20.08+dfsg-5\n\n")
        if "--tar-only" in command:
            (cwd / "arm-compute-library_24.11+dfsg.orig.tar.xz").write_bytes(self.tarball)
        if "--dsc-only" in command:
            if self.dsc_sha is None:
                raise SourceError("404  Not Found")
            (cwd / "arm-compute-library_24.11+dfsg-3.dsc").write_text(self.dsc)
        return ""


class TestSourceChecks:
    def test_the_tarball_must_match_the_dsc_and_the_index(self, tmp_path, monkeypatch):
        import hashlib

        good = b"the real tarball"
        sha = hashlib.sha256(good).hexdigest()
        monkeypatch.setattr(armcl_sources.shutil, "which", lambda name: "/usr/bin/" + name)
        monkeypatch.setattr(armcl_sources.PrivateApt, "run", FakeApt(good, sha, sha))
        source = fetch_debian_source("24.11", tmp_path / "a", log=lambda line: None)
        record = json.loads((source.path.parent / "source.json").read_text())
        assert record["verified_against"][0] == "arm-compute-library_24.11+dfsg-3.dsc"
        assert (source.sha256, source.path.read_bytes()) == (sha, good)

        monkeypatch.setattr(armcl_sources.PrivateApt, "run", FakeApt(b"a different tarball", sha, sha))
        with pytest.raises(SourceError, match=rf"orig\.tar\.xz \(Checksums-Sha256 of arm-compute-library "
                                              rf"24\.11\+dfsg-3\): sha256 is [0-9a-f]{{64}}, expected {sha}"):
            fetch_debian_source("24.11", tmp_path / "b", log=lambda line: None)
        monkeypatch.setattr(armcl_sources.PrivateApt, "run", FakeApt(good, sha, "1" * 64))
        with pytest.raises(SourceError, match=r"\.dsc lists arm-compute-library_24\.11\+dfsg\.orig\.tar\.xz with "
                                              r"sha256 1111"):
            fetch_debian_source("24.11", tmp_path / "c", log=lambda line: None)
        lines: list[str] = []
        monkeypatch.setattr(armcl_sources.PrivateApt, "run", FakeApt(good, sha, None))  # a mirror without the .dsc
        source = fetch_debian_source("24.11", tmp_path / "d", log=lines.append)
        assert source.sha256 == sha and any("checked against the signed index only" in line for line in lines)
        with pytest.raises(UserError, match=r"arm-compute-library 23\.08 is not in Debian trixie \(it has "
                                            r"20\.08\+dfsg-5, 24\.11\+dfsg-3\)"):
            fetch_debian_source("23.08", tmp_path / "e", log=lambda line: None)
        assert not list((tmp_path / "b").rglob("*.orig.tar.xz"))  # nothing kept of a tarball that did not match


class TestTarballFrom:
    def test_a_local_path_or_file_url_is_checked(self, sources):
        path, sha = sources["fake"]
        assert tarball_from(str(path), sha).path == path.resolve()
        assert tarball_from(path.as_uri(), sha.upper()).sha256 == sha
        with pytest.raises(UserError, match=rf"sha256 is {sha}, expected {'0' * 64}"):
            tarball_from(str(path), "0" * 64)
        with pytest.raises(UserError, match="needs its sha256"):
            tarball_from(str(path), "")
        with pytest.raises(UserError, match="not found"):
            tarball_from(str(path) + ".missing", sha)

    def test_a_url_is_downloaded_once_and_checked(self, sources, tmp_path):
        path, sha = sources["fake"]
        requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(path.parent), **kwargs)

            def log_message(self, *args):
                requests.append(self.path)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}/{path.name}"
        try:
            first = tarball_from(url, sha, tmp_path, log=lambda line: None)
            assert first.path.read_bytes() == path.read_bytes() and first.origin == url
            with pytest.raises(UserError, match=rf"sha256 is {sha}, expected {'1' * 64}"):
                tarball_from(url, "1" * 64, tmp_path, log=lambda line: None)
            assert not (tmp_path / "tarballs" / ("1" * 64) / path.name).exists()
        finally:
            server.shutdown()
            server.server_close()
        assert len(requests) == 2
        assert tarball_from(url, sha, tmp_path) == first  # the server is gone: from the cache


# --- the board-side builder ------------------------------------------------------------------------------------


class TestBoardSideBuilder:
    def test_a_missing_compiler_is_one_clear_line_in_seconds(self, sources, tmp_path):
        path, _sha = sources["fake"]
        started = time.monotonic()
        result = run_builder("build", "--source", str(path), "--options", json.dumps(X86), "--cache",
                             str(tmp_path), env={"PATH": str(tmp_path / "empty")}, timeout=60)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "armcl build: no C++ compiler: g++ not found on PATH (install g++, e.g. apt-get install g++, or set CXX)"]
        assert time.monotonic() - started < 15
        assert not [p for p in tmp_path.iterdir() if p.name != "empty"]  # nothing started

    def test_missing_scons_is_one_clear_line(self, sources, tmp_path):
        need("g++")
        path, _sha = sources["fake"]
        only = tmp_path / "bin"
        only.mkdir()
        (only / "g++").symlink_to(shutil.which("g++"))
        result = run_builder("build", "--source", str(path), "--options", json.dumps(X86), "--cache",
                             str(tmp_path / "cache"), env={"PATH": str(only)}, timeout=60)
        assert (result.returncode, result.stderr.strip()) == (
            2, "armcl build: scons not found on PATH (install it, e.g. apt-get install scons)")

    def test_a_tarball_that_does_not_match_its_sha256_is_refused(self, sources, tmp_path):
        need("scons")
        path, _sha = sources["fake"]
        result = run_builder("build", "--source", str(path), "--sha256", "0" * 64, "--options", json.dumps(X86),
                             "--cache", str(tmp_path))
        assert result.returncode == 2 and f"expected {'0' * 64}" in result.stderr

    def test_builds_records_provenance_and_reuses_the_cache(self, sources, tmp_path):
        need("scons")
        path, sha = sources["fake"]
        args = ["build", "--source", str(path), "--sha256", sha, "--options", json.dumps(X86), "--version", "24.11",
                "--cache", str(tmp_path), "--result", str(tmp_path / "result.json"), "--origin", "a test"]
        result = run_builder(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        provenance = json.loads((tmp_path / "result.json").read_text())
        key = cache_key(f"sha256:{sha}", X86, board_armcl.compiler_info())
        assert provenance["key"] == key and provenance["reused"] is False
        build = tmp_path / key
        assert json.loads((build / "build.json").read_text())["key"] == key
        assert sorted(p.name for p in (build / "lib").iterdir()) == ["libarm_compute.so", "libarm_compute_graph.so"]
        assert (build / "include" / "arm_compute" / "Version.h").is_file() and not (build / "bin").exists()
        assert provenance["source"] == {"kind": "tarball", "name": path.name, "sha256": sha, "origin": "a test"}
        assert (provenance["version"], provenance["source_version"]) == ("24.11", "v24.11")
        assert provenance["options"] == dict(sorted(X86.items()))
        assert provenance["compiler"]["version"].startswith("g++")
        assert provenance["libraries"]["libarm_compute.so"]["bytes"] == \
            (build / "lib" / "libarm_compute.so").stat().st_size
        assert provenance["library_bytes"] == sum(e["bytes"] for e in provenance["libraries"].values())
        assert "build_dir=out" in provenance["command"] and f"-j{provenance['jobs']}" in provenance["command"]
        assert not list((tmp_path / ".tmp").iterdir())  # the build folder is gone
        started = time.monotonic()
        again = run_builder(*args)
        assert again.returncode == 0 and "reused" in again.stdout
        assert time.monotonic() - started < 10
        assert json.loads((tmp_path / "result.json").read_text())["reused"] is True

    def test_examples_only_when_asked(self, sources, tmp_path):
        need("scons")
        path, sha = sources["fake"]
        result = run_builder("build", "--source", str(path), "--options", json.dumps({**X86, "examples": "1"}),
                             "--cache", str(tmp_path), "--result", str(tmp_path / "r.json"))
        assert result.returncode == 0, result.stdout
        key = json.loads((tmp_path / "r.json").read_text())["key"]
        assert [p.name for p in (tmp_path / key / "bin").iterdir()] == ["example"]

    def test_a_compiler_error_is_a_failed_build_with_its_error_lines(self, sources, tmp_path):
        need("scons")
        path, sha = sources["broken"]
        started = time.monotonic()
        result = run_builder("build", "--source", str(path), "--options", json.dumps(X86), "--cache", str(tmp_path),
                             "--result", str(tmp_path / "r.json"))
        assert result.returncode == 1
        failed = json.loads((tmp_path / "r.json").read_text())
        assert "error: 'undefined_symbol' was not declared in this scope" in failed["reason"]
        assert any("src/core.cpp" in line and "error:" in line for line in failed["error_lines"])
        folder = tmp_path / failed["key"]
        assert json.loads((folder / "failed.json").read_text())["reason"] == failed["reason"]
        assert not (folder / "build.json").exists() and (folder / "build.log").is_file()
        assert f"armcl build failed: {failed['reason']}" in result.stdout
        assert time.monotonic() - started < 60
        # a failure is not cached: the next attempt builds again (and fails again)
        assert run_builder("build", "--source", str(path), "--options", json.dumps(X86), "--cache",
                           str(tmp_path)).returncode == 1

    def test_a_bad_scons_option_is_scons_own_error(self, debian_source, tmp_path):
        """Bypassing the spec's validation: the real ArmCL SConstruct says what is wrong, before compiling."""
        need("scons")
        bad_value = run_builder("build", "--source", str(debian_source.path), "--options",
                                json.dumps({**X86, "neon": "maybe"}), "--cache", str(tmp_path), "--result",
                                str(tmp_path / "r.json"), timeout=120)
        assert bad_value.returncode == 1
        reason = json.loads((tmp_path / "r.json").read_text())["reason"]
        assert reason == "scons: *** Error converting option: neon; Invalid value for boolean option: maybe"
        unknown = run_builder("build", "--source", str(debian_source.path), "--options",
                              json.dumps({**X86, "not_an_option": "1"}), "--cache", str(tmp_path), "--result",
                              str(tmp_path / "r.json"), timeout=120)
        assert unknown.returncode == 1
        assert json.loads((tmp_path / "r.json").read_text())["reason"] == "Unknown variables: not_an_option"
        assert "g++ -o" not in unknown.stdout  # refused before anything compiled

    def test_a_git_tag_is_cloned_and_its_commit_recorded(self, tmp_path):
        need("scons")
        need("git")
        repo = tmp_path / "repo"
        for relative, content in FAKE_FILES.items():
            (repo / relative).parent.mkdir(parents=True, exist_ok=True)
            (repo / relative).write_text(content)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", "v24.11"], check=True)
        subprocess.run([*git, "tag", "-a", "v24.11", "-m", "release"], check=True)
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        args = ["build", "--git", repo.as_uri(), "--tag", "v24.11", "--options", json.dumps(X86), "--version",
                "24.11", "--cache", str(tmp_path / "cache"), "--result", str(tmp_path / "r.json")]
        assert run_builder(*args).returncode == 0
        provenance = json.loads((tmp_path / "r.json").read_text())
        assert provenance["source"]["commit"] == commit and provenance["source"]["tag"] == "v24.11"
        assert provenance["key"] == cache_key(f"git:{commit}", X86, board_armcl.compiler_info())
        missing = run_builder(*[("v99.1" if a == "v24.11" else a) for a in args])
        assert missing.returncode == 2 and "has no tag v99.1" in missing.stderr

    def test_probe_reads_the_cpu_flags_and_the_tools(self, tmp_path):
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n"
                                                   "CPU part\t: 0xd09\n")
        result = run_builder("probe", "--root", str(tmp_path))
        probe = json.loads(result.stdout)
        assert probe["cpu_features"] == ["aes", "asimd", "evtstrm", "fp"]
        assert set(probe["tools"]) == {"cxx", "scons", "ccache", "git"}
        assert board_armcl.cpu_features(tmp_path / "nothing") is None


# --- the operator ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def farm_board(farm, board_work_root):
    """Board rfb1 of the farm with the runner deployed (the session's bundle, reused by later modules), as the
    Airflow Connection ``rfb1``."""
    from operators.board_hook import BoardHook
    from operators.board_settings import BoardSettings
    from operators.bundle import build_bundle
    from operators.deploy import deploy_runner

    board = farm.boards[0]
    settings = BoardSettings(name=board.name, host=board.host, user="root", key_file=str(board.key_file),
                             host_key=board.host_public_key, work_dir=str(board_work_root / board.name),
                             python=os.path.realpath(sys.executable))
    hook = BoardHook(settings=settings)
    try:
        started = time.monotonic()
        deploy_runner(hook, build_bundle(log=lambda line: None), log=lambda line: None)
        TIMINGS["runner on rfb1"] = time.monotonic() - started
    finally:
        hook.close()
    connection = json.dumps({"conn_type": "ssh", "host": board.host, "login": "root", "extra": {
        "key_file": str(board.key_file), "host_key": board.host_public_key,
        "work_dir": str(board_work_root / board.name), "python": os.path.realpath(sys.executable)}})
    return board, board_work_root / board.name, connection


POINTS = [{"model": "mobilenet-v1-0.25-128", "backend": "armcl", "mode": "performance"},
          {"model": "mobilenet-v1-1.0-224", "backend": "armcl", "mode": "performance"}]


def context(run_id: str) -> dict:
    return {"run_id": run_id, "ti": None, "dag": None}


class TestOperatorOnAFarmBoard:
    def test_builds_over_ssh_records_provenance_and_reuses_the_build(self, farm_board, sources, results_url,
                                                                      monkeypatch, tmp_path):
        need("scons")
        board, work, connection = farm_board
        monkeypatch.setenv("AIRFLOW_CONN_RFB1", connection)
        path, sha = sources["fake"]
        spec = ArmclSpec(source=ArmclSource.tarball(str(path), sha), options={"data_type_support": "fp32"})
        # a stand-in ArmCL (a few symbols, no graph API): requestflow's MobileNet program cannot compile against it
        operator = ArmclBuildOperator(task_id="armcl", board_conn_id="rfb1", spec=spec, points=POINTS,
                                      source_cache_dir=str(tmp_path), program=False)
        started = time.monotonic()
        first = operator.execute(context("armcl-farm"))
        TIMINGS["stand-in build on rfb1"] = time.monotonic() - started
        assert first["reused"] is False and first["board"] == "rfb1"
        build = work / "armcl" / "builds" / first["key"]
        assert first["path"] == str(build) and (build / "lib" / "libarm_compute.so").is_file()
        assert (work / "data" / "armcl-sources" / path.name).samefile(work / "blobs" / sha)  # shipped by sha256
        provenance = json.loads((build / "build.json").read_text())
        assert provenance["options"]["arch"] == "x86_64" and provenance["options"]["neon"] == "0"
        rows = query(results_url, "SELECT id, sha256, backend, library, version, info FROM library_builds")
        assert len(rows) == 1
        row = rows[0]
        assert (row["sha256"], row["backend"], row["library"], row["version"]) == \
            (first["key"], "armcl", "arm_compute", "24.11")
        assert row["id"] == first["library_build_id"] and row["info"]["board"] == "rfb1"
        assert row["info"]["source"]["sha256"] == sha and row["info"]["options"] == provenance["options"]
        assert row["info"]["compiler"]["version"] == provenance["compiler"]["version"]

        started = time.monotonic()
        second = operator.execute(context("armcl-farm-2"))
        TIMINGS["stand-in reuse on rfb1"] = time.monotonic() - started
        assert second["reused"] is True and second["key"] == first["key"]
        assert second["library_build_id"] == first["library_build_id"]
        assert query(results_url, "SELECT count(*) AS n FROM library_builds")[0]["n"] == 1
        assert query(results_url, "SELECT count(*) AS n FROM point_failures")[0]["n"] == 0

    def test_a_program_that_cannot_compile_against_the_build_fails_its_points(self, farm_board, sources,
                                                                              results_url, monkeypatch, tmp_path):
        """requestflow's MobileNet program is compiled against every build it will run on, in the build's task: on
        the stand-in ArmCL (no graph API) that fails, with the compiler's words, and the points are stored failed."""
        need("scons")
        board, work, connection = farm_board
        monkeypatch.setenv("AIRFLOW_CONN_RFB1", connection)
        path, sha = sources["fake"]
        spec = ArmclSpec(source=ArmclSource.tarball(str(path), sha), options={"data_type_support": "fp32"})
        operator = ArmclBuildOperator(task_id="armcl", board_conn_id="rfb1", spec=spec, points=POINTS,
                                      source_cache_dir=str(tmp_path))
        with pytest.raises(ArmclBuildFailed, match=r"board rfb1: the ArmCL MobileNet program did not compile against "
                                                   r"\w+: .*arm_compute/graph\.h"):
            operator.execute(context("armcl-program"))
        failures = query(results_url, "SELECT f.point, f.error_type FROM point_failures f JOIN sweeps s ON "
                                      "s.id = f.sweep_id WHERE s.run_id = 'armcl-program' ORDER BY f.id")
        assert [(f["point"], f["error_type"]) for f in failures] == [(p, "ArmclBuildFailed") for p in POINTS]

    def test_a_failed_build_fails_every_point_that_needed_it(self, farm_board, sources, results_url, monkeypatch,
                                                            tmp_path):
        need("scons")
        board, work, connection = farm_board
        monkeypatch.setenv("AIRFLOW_CONN_RFB1", connection)
        path, sha = sources["broken"]
        operator = ArmclBuildOperator(task_id="armcl", board_conn_id="rfb1", points=POINTS,
                                      spec=ArmclSpec(source=ArmclSource.tarball(str(path), sha)),
                                      source_cache_dir=str(tmp_path))
        with pytest.raises(ArmclBuildFailed, match=r"board rfb1: ArmCL 24\.11 build failed: .*error: "
                                                   r"'undefined_symbol' was not declared in this scope"):
            operator.execute(context("armcl-broken"))
        failures = query(results_url, "SELECT s.run_id, b.name, f.point, f.error_type, f.message FROM point_failures f "
                                      "JOIN sweeps s ON s.id = f.sweep_id JOIN boards b ON b.id = f.board_id "
                                      "ORDER BY f.id")
        assert [f["point"] for f in failures] == POINTS
        for failure in failures:
            assert (failure["run_id"], failure["name"], failure["error_type"]) == \
                ("armcl-broken", "rfb1", "ArmclBuildFailed")
            assert "'undefined_symbol' was not declared" in failure["message"]
        assert query(results_url, "SELECT count(*) AS n FROM library_builds")[0]["n"] == 0

    def test_a_spec_the_board_cannot_build_fails_its_points_before_building(self, farm_board, sources,
                                                                           results_url, monkeypatch, tmp_path):
        board, work, connection = farm_board
        monkeypatch.setenv("AIRFLOW_CONN_RFB1", connection)
        path, sha = sources["fake"]
        operator = ArmclBuildOperator(task_id="armcl", board_conn_id="rfb1", points=POINTS[:1],
                                      spec=ArmclSpec(source=ArmclSource.tarball(str(path), sha),
                                                     options={"neon": 1}),
                                      source_cache_dir=str(tmp_path))
        with pytest.raises(ArmclBuildFailed, match=r"neon=1 on a x86_64 board"):
            operator.execute(context("armcl-neon"))
        failures = query(results_url, "SELECT error_type, message FROM point_failures")
        assert len(failures) == 1 and "neon=1" in failures[0]["message"]


class TestOperatorOnTheLocalBoard:
    def test_debian_binary_is_skipped_by_provisioning_and_fails_its_points_on_an_x86_64_board(self, results_url,
                                                                                             monkeypatch, tmp_path):
        """Debian's arm64 packages are for aarch64 boards: board_provision (no points) skips the build on this
        x86_64 machine, a sweep whose points name it fails them, before anything is fetched."""
        from airflow.sdk.exceptions import AirflowSkipException

        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
        monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "nothing-fetched"))
        spec = {"version": "24.11", "source": {"kind": "debian-binary", "suite": "trixie"}}
        provisioning = ArmclBuildOperator(task_id="armcl", board_conn_id="local", spec=spec)
        with pytest.raises(AirflowSkipException, match="made for aarch64 boards .*, not for a x86_64 board"):
            provisioning.execute(context("armcl-debian-binary-provision"))
        points = [dict(p, armcl_build="debian") for p in POINTS[:1]]
        sweep = ArmclBuildOperator(task_id="armcl", board_conn_id="local", spec=spec, points=points,
                                   build_name="debian")
        with pytest.raises(ArmclBuildFailed, match="board local: ArmCL from Debian's binaries is made for aarch64"):
            sweep.execute(context("armcl-debian-binary-sweep"))
        failures = query(results_url, "SELECT error_type, message FROM point_failures")
        assert len(failures) == 1 and "not for a x86_64 board" in failures[0]["message"]
        assert not (tmp_path / "nothing-fetched" / "armcl").exists()  # (the OpenCL probe remembers its answer there)

    def test_a_killed_build_leaves_no_process_and_no_half_build(self, sources, results_url, monkeypatch, tmp_path):
        need("scons")
        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
        path, sha = sources["slow"]  # its SConstruct sleeps
        builds = tmp_path / "builds"  # not the machine's cache, the local board's default
        operator = ArmclBuildOperator(task_id="armcl", board_conn_id="local", source_cache_dir=str(tmp_path),
                                      spec=ArmclSpec(source=ArmclSource.tarball(str(path), sha)),
                                      cache_dir=str(builds))
        outcome: dict = {}

        def execute():
            try:
                operator.execute(context("armcl-kill"))
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcome["error"] = exc

        thread = threading.Thread(target=execute)
        thread.start()
        deadline = time.monotonic() + 60
        while not commands_under(builds) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert commands_under(builds), "scons never started"
        operator.on_kill()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), ArmclBuildFailed)
        assert commands_under(builds) == []
        assert not list((builds / ".tmp").iterdir())

    def test_builds_armcl_24_11_from_debian_and_reuses_it(self, results_url, monkeypatch, tmp_path):
        """THE real build: x86_64, OpenCL, fp32, no examples or tests, into the machine's ArmCL cache (kept across
        test runs). Cold: 10-20 min on 2 cores; later runs reuse it."""
        need("apt-get")
        need("scons")
        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
        spec = ArmclSpec("24.11", "debian", options={"opencl": 1, "neon": 0, "data_type_support": "fp32"})
        operator = ArmclBuildOperator(task_id="armcl", board_conn_id="local", spec=spec, points=POINTS,
                                      cache_dir=str(ARMCL_CACHE / "builds"),
                                      source_cache_dir=str(ARMCL_CACHE / "sources"))
        started = time.monotonic()
        first = operator.execute(context("armcl-real"))
        TIMINGS[f"ArmCL 24.11 first run ({'reused' if first['reused'] else 'built'})"] = time.monotonic() - started
        build = Path(first["path"])
        provenance = json.loads((build / "build.json").read_text())
        TIMINGS["ArmCL 24.11 build_seconds (provenance)"] = provenance["build_seconds"]
        options = provenance["options"]
        assert (options["arch"], options["neon"], options["opencl"], options["data_type_support"]) == \
            ("x86_64", "0", "1", "fp32")
        assert (options["examples"], options["validation_tests"], options["benchmark_tests"]) == ("0", "0", "0")
        assert provenance["source_version"] == "v24.11"
        if not first["reused"]:  # a build of the cache made by hand records the tarball's path instead
            assert provenance["source"]["origin"].startswith("debian trixie arm-compute-library 24.11")
        assert sorted(provenance["libraries"]) == ["libarm_compute.so", "libarm_compute_graph.so"]
        assert provenance["library_bytes"] > 5_000_000
        assert b"arm_compute_version=v24.11" in (build / "lib" / "libarm_compute.so").read_bytes()
        loaded = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL('libarm_compute_graph.so')"],
                                env={**os.environ, "LD_LIBRARY_PATH": str(build / "lib")}, capture_output=True,
                                text=True)
        assert loaded.returncode == 0, loaded.stderr
        row = query(results_url, "SELECT sha256, backend, library, version, info FROM library_builds")[0]
        assert (row["sha256"], row["backend"], row["library"], row["version"]) == \
            (first["key"], "armcl", "arm_compute", "24.11")
        assert row["info"]["options"] == options and row["info"]["build_seconds"] == provenance["build_seconds"]
        assert row["info"]["compiler"]["version"].startswith("g++")
        assert row["info"]["source"]["sha256"] == sha256_file(
            next((ARMCL_CACHE / "sources").rglob("*.orig.tar.xz")))

        started = time.monotonic()
        second = operator.execute(context("armcl-real-2"))
        TIMINGS["ArmCL 24.11 cached"] = time.monotonic() - started
        assert second["reused"] is True and second["key"] == first["key"]
        assert query(results_url, "SELECT count(*) AS n FROM point_failures")[0]["n"] == 0
