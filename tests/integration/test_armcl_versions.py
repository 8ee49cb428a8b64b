"""ArmCL 20.08 beside 24.11 (issue #17): the options each release's scons knows (requestflow/board/armcl_versions.py,
operators/armcl_spec.py), the board-side builder on a stand-in with 20.08's option set and libraries, the MobileNet
program's compile flags per release, and, from Debian's mirror, bookworm's 20.08 source chosen from the signed index
and native/mobilenet compiled against 20.08's own graph API headers (bookworm's ``libarm-compute-dev``).

Not here: a real 20.08 build. Its ``.orig.tar.xz`` is in bookworm's signed Sources index but this machine's mirror
answers 404 for it (``test_bookworms_20_08_source_is_chosen_from_the_signed_index`` says which of the two it met).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from operators.armcl_sources import SourceError, fetch_debian_source
from operators.armcl_spec import ArmclSpec, checked_builds, options_for
from requestflow.board import armcl as board_armcl
from requestflow.board import armcl_program
from requestflow.board.armcl_versions import release, version_number
from requestflow.errors import UserError

X86_BOX = {"arch": "x86_64", "cpu_count": 2, "memory_bytes": 23 * 2**30, "cpu_features": ["sse2", "avx2"]}
ARM_BOX = {"arch": "aarch64", "cpu_count": 8, "memory_bytes": 3 * 2**30, "cpu_features": ["fp", "asimd"]}
# bookworm's Sources index (its signed InRelease): the one 20.08 source package and its upstream tarball
BOOKWORM_20_08 = ("20.08+dfsg-7", "arm-compute-library_20.08+dfsg.orig.tar.xz",
                  "f09b2f64c1e502db618899440f60eae5ec4f4151a1f361f09efa37efdd97e1eb")


class TestOptionsPerRelease:
    def test_20_08_gets_only_the_options_its_scons_documents(self):
        plan = options_for(X86_BOX, ArmclSpec("20.08", {"kind": "debian", "suite": "bookworm"}, {"opencl": 1}))
        assert plan.options == {"Werror": "0", "arch": "x86_64", "asserts": "0", "benchmark_tests": "0",
                                "build": "native", "cppthreads": "1", "debug": "0", "embed_kernels": "1",
                                "examples": "0", "neon": "0", "opencl": "1", "openmp": "0", "os": "linux",
                                "validation_tests": "0"}
        newer = options_for(X86_BOX, ArmclSpec("24.11", "debian", {"opencl": 1, "data_type_support": "fp32"}))
        assert {"logging", "multi_isa", "gemm_tuner", "data_type_support", "data_layout_support"} <= set(newer.options)

    @pytest.mark.parametrize("options, message", [
        ({"data_type_support": "fp32"},
         "ArmCL 20.08 has no scons option 'data_type_support' (its options: Werror, arch, "),
        ({"logging": 0}, "ArmCL 20.08 has no scons option 'logging'"),
        ({"arch": "armv8.6-a"}, "ArmCL 20.08 has no arch armv8.6-a (its arches: armv7a, arm64-v8a, arm64-v8.2-a, "
                                "x86_64)")])
    def test_what_20_08_lacks_is_refused_naming_it(self, options, message):
        with pytest.raises(UserError) as caught:
            ArmclSpec("20.08", "debian", options)
        assert str(caught.value).startswith(message)
        ArmclSpec("24.11", "debian", options)  # all of them 24.11's

    def test_an_arm_board_defaults_to_an_arch_20_08_has(self):
        plan = options_for(ARM_BOX, ArmclSpec("20.08", "debian", {"opencl": 0}))
        assert (plan.options["arch"], plan.options["neon"]) == ("arm64-v8a", "1")

    def test_releases_by_major_minor(self):
        assert release("v20.08").libraries == ("libarm_compute.so", "libarm_compute_core.so",
                                               "libarm_compute_graph.so")
        assert release("24.11") is release("25.02") is release(None)
        assert "compiler_cache" not in release("20.08").builder_options
        assert (version_number("v20.08"), version_number("24.11"), version_number("main")) == (2008, 2411, None)

    def test_config_names_both_releases_and_20_08_is_built_on_demand(self):
        builds = checked_builds()
        assert builds["armcl_20_08_cl_fp32"] == {"version": "20.08", "source": {"kind": "debian", "suite": "bookworm"},
                                                 "options": {"opencl": 1}, "provision": False}
        assert builds["armcl_24_11_cl_fp32"]["version"] == "24.11" and "provision" not in builds["armcl_24_11_cl_fp32"]
        assert list(builds)[0] == "armcl_24_11_cl_fp32"  # the form's default build stays 24.11
        assert builds["armcl_20_08_debian_arm64"] == {"version": "20.08",
                                                      "source": {"kind": "debian-binary", "suite": "bookworm"}}
        assert ArmclSpec.from_value(builds["armcl_20_08_cl_fp32"]).to_dict()["version"] == "20.08"
        with pytest.raises(UserError, match="provision: true or false, not 'no'"):
            ArmclSpec.from_value({**builds["armcl_20_08_cl_fp32"], "provision": "no"})


# --- a stand-in with 20.08's scons options (libarm-compute-doc 20.08's `scons -h`, install_dir) and 3 libraries --

SCONSTRUCT_20_08 = '''\
import os
vars = Variables("scons")
vars.AddVariables(
    EnumVariable("arch", "", "armv7a", allowed_values=("armv7a", "arm64-v8a", "arm64-v8.2-a", "x86_32", "x86_64")),
    EnumVariable("os", "", "linux", allowed_values=("linux", "android", "bare_metal")),
    EnumVariable("build", "", "cross_compile", allowed_values=("native", "cross_compile", "embed_only")),
    PathVariable("build_dir", "", ".", PathVariable.PathAccept),
    PathVariable("install_dir", "", "", PathVariable.PathAccept),
    ("extra_cxx_flags", "", ""),
    *[BoolVariable(name, "", False) for name in ("debug", "asserts", "examples", "Werror", "opencl", "neon",
      "gles_compute", "embed_kernels", "set_soname", "openmp", "cppthreads", "pmu", "mali", "validation_tests",
      "benchmark_tests")],
)
env = Environment(variables=vars, ENV=os.environ)
unknown = vars.UnknownVariables()
if unknown:
    print("Unknown variables: %s" % " ".join(unknown.keys()))
    Exit(1)
build = "build/" + env["build_dir"]
install = build + "/" + env["install_dir"]
libs = [env.SharedLibrary(build + "/" + name, ["src/%s.cpp" % name])
        for name in ("arm_compute_core", "arm_compute", "arm_compute_graph")]
env.Install(install + "/lib", libs)
env.Install(install + "/include", "arm_compute")
'''


def stand_in_20_08(folder: Path) -> Path:
    files = {"SConstruct": SCONSTRUCT_20_08, "SConscript": 'VERSION = "v20.08"\n', "arm_compute/Version.h": "\n",
             **{f"src/{name}.cpp": f"int {name}_2008() {{ return 2008; }}\n"
                for name in ("arm_compute_core", "arm_compute", "arm_compute_graph")}}
    path = folder / "ComputeLibrary-20.08.tar.xz"
    with tarfile.open(path, "w:xz") as archive:
        for relative, content in sorted(files.items()):
            info = tarfile.TarInfo(f"ComputeLibrary-20.08/{relative}")
            info.size = len(content.encode())
            archive.addfile(info, io.BytesIO(content.encode()))
    return path


def test_the_builder_gives_20_08_only_its_options_and_keeps_its_core_library(tmp_path):
    """The board-side builder with the options the controller completes for 20.08, on a stand-in whose scons has
    20.08's documented options and stops on any other (as ArmCL's does): it builds, without compiler_cache, and
    the build folder holds libarm_compute_core.so beside the two libraries of 24.11."""
    if shutil.which("scons") is None or shutil.which("g++") is None:
        pytest.skip("scons and g++ are needed (./dev.sh installs them)")
    plan = options_for(X86_BOX, ArmclSpec("20.08", "debian", {"opencl": 1}))
    built = board_armcl.build(options=plan.options, cache=tmp_path / "builds", source=str(stand_in_20_08(tmp_path)),
                              version="20.08", log=lambda line: None)
    assert built["status"] == "ok" and built["source_version"] == "v20.08"
    assert not [arg for arg in built["command"] if arg.startswith("compiler_cache=")]
    assert sorted(built["libraries"]) == ["libarm_compute.so", "libarm_compute_core.so", "libarm_compute_graph.so"]
    assert (Path(built["path"]) / "include" / "arm_compute" / "Version.h").is_file()


def build_folder(folder: Path, version: str) -> Path:
    folder.mkdir()
    (folder / "build.json").write_text(json.dumps({"version": version, "status": "ok"}))
    return folder


def test_the_program_is_compiled_for_its_builds_release(tmp_path):
    old = armcl_program.command(build_folder(tmp_path / "old", "20.08"), Path("/src"), Path("/out"), "g++")
    new = armcl_program.command(build_folder(tmp_path / "new", "24.11"), Path("/src"), Path("/out"), "g++")
    assert "-DREQUESTFLOW_ARMCL_VERSION=2008" in old and "-larm_compute_core" in old
    assert "-DREQUESTFLOW_ARMCL_VERSION=2411" in new and "-larm_compute_core" not in new
    assert [a for a in old if a != "-larm_compute_core" and "2008" not in a and "old" not in a] == \
        [a for a in new if "2411" not in a and "new" not in a]  # the rest is the same command


# --- from Debian's mirror: bookworm's source index and 20.08's headers --------------------------------------------

def test_bookworms_20_08_source_is_chosen_from_the_signed_index(tmp_path):
    """The private apt picks 20.08+dfsg-7 from bookworm's signed Sources index: its tarball is fetched and checked
    against the index's sha256, or (this machine's mirror) the download of exactly that file is refused (404)."""
    debian_version, name, sha256 = BOOKWORM_20_08
    try:
        source = fetch_debian_source("20.08", tmp_path, suite="bookworm", log=lambda line: None)
    except SourceError as exc:
        message = str(exc)
        assert f"arm-compute-library={debian_version}" in message and "404" in message, message
        assert name.replace("+", "%2b") in message, message
        return
    assert (source.sha256, source.path.name, source.version) == (sha256, name, "20.08")


@pytest.fixture(scope="module")
def headers_20_08(tmp_path_factory) -> Path:
    """bookworm's libarm-compute-dev 20.08 (arm64; the headers are the same on every arch), checked against the
    signed Packages index, unpacked."""
    from operators.arm64_debian import fetch_debs

    root = tmp_path_factory.mktemp("armcl-20.08")
    [deb] = fetch_debs(root, suite="bookworm", packages=("libarm-compute-dev",), log=lambda line: None)
    assert deb["version"] == BOOKWORM_20_08[0]
    subprocess.run(["dpkg-deb", "-x", deb["path"], str(root / "x")], check=True)
    [include] = (root / "x" / "usr" / "include").glob("*/arm_compute/graph.h")
    return include.parents[1]


@pytest.mark.parametrize("version", [2008, 2411])
def test_native_mobilenet_compiles_against_20_08s_graph_api_only_with_its_conditionals(headers_20_08, version):
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed")
    flags = [f for f in armcl_program.CXXFLAGS if f != "-O2"]
    result = subprocess.run(["g++", *flags, "-fsyntax-only", f"-DREQUESTFLOW_ARMCL_VERSION={version}",
                             f"-I{headers_20_08}", str(armcl_program.source_dir() / "mobilenet.cpp")],
                            capture_output=True, text=True, timeout=300)
    if version == 2008:
        assert result.returncode == 0, result.stderr[-3000:]
    else:  # 24.11's API on 20.08's headers: exactly the two differences the conditionals handle
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 2 and "access_tensor_data" in errors[0] and "mlgo_file" in errors[1], errors


def test_the_sweep_command_takes_several_builds_and_names_an_unknown_one(run_cli):
    code, out, err = run_cli("sweep", "--models", "mobilenet-v1-0.25-128", "--backends", "armcl", "--armcl-build",
                             "armcl_20_08_cl_fp32", "armcl_25_02")
    known = list(json.loads((Path(__file__).parents[2] / "config" / "armcl.json").read_text())["builds"])
    assert len(known) >= 4 and "armcl_25_02" not in known
    assert (code, out) == (2, "") and err.strip() == (
        f"requestflow: error: unknown ArmCL build 'armcl_25_02'; known: {', '.join(known)}")
