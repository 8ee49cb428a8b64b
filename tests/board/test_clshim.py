"""The OpenCL shim (native/clshim, requestflow/board/clshim.py) on real OpenCL: Debian's PoCL on this machine's CPU,
which has no non-uniform work-groups, the case of issue #5.

Two clients run in subprocesses, each with and without the shim. ``dlopen`` loads OpenCL the way ArmCL's
CLSymbols::load_default() does: dlopen("libOpenCL.so") by name, then every function from that handle, so the shim is
reached through LD_LIBRARY_PATH alone, as ArmCL will reach it. ``pyopencl`` is pyopencl, whose wheel links its own
copy of the ICD loader by RPATH (pyopencl/.libs/libOpenCL-*.so): LD_LIBRARY_PATH does not redirect it, so it gets the
shim through LD_PRELOAD. Each client builds a kernel that records, per work-item, its local size and its index, and
enqueues it with global 10 / local 4 (not a multiple) and global 12 / local 4 (a multiple), into 16 ints set to -1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from requestflow.board import clshim
from requestflow.board.clshim import ARM_EXTENSION, ARM_OPTION, ShimError

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native" / "clshim"

CL_INVALID_BUILD_OPTIONS = -43
CL_INVALID_WORK_GROUP_SIZE = -54
CL_INVALID_OPERATION = -59

# The core functions ArmCL 24.11's CLSymbols::load() takes with dlsym from the library it opened
# (src/core/CL/OpenCL.cpp), and its command-buffer functions, which the ICD loader does not export.
ARMCL_CORE = (
    "clCreateContext clCreateContextFromType clCreateCommandQueue clCreateCommandQueueWithProperties clGetContextInfo "
    "clBuildProgram clEnqueueNDRangeKernel clSetKernelArg clReleaseKernel clCreateProgramWithSource clCreateBuffer "
    "clRetainKernel clCreateKernel clGetProgramInfo clFlush clFinish clReleaseProgram clRetainContext "
    "clCreateProgramWithBinary clReleaseCommandQueue clEnqueueMapBuffer clRetainProgram clGetProgramBuildInfo "
    "clEnqueueReadBuffer clEnqueueWriteBuffer clReleaseEvent clReleaseContext clRetainCommandQueue "
    "clEnqueueUnmapMemObject clRetainMemObject clReleaseMemObject clGetDeviceInfo clGetDeviceIDs clGetMemObjectInfo "
    "clRetainEvent clGetPlatformInfo clGetPlatformIDs clGetKernelWorkGroupInfo clGetCommandQueueInfo clGetKernelInfo "
    "clGetEventProfilingInfo clSVMAlloc clSVMFree clEnqueueSVMMap clEnqueueSVMUnmap clEnqueueMarker clWaitForEvents "
    "clCreateImage clSetKernelExecInfo clGetExtensionFunctionAddressForPlatform").split()
ARMCL_COMMAND_BUFFER = ("clCreateCommandBufferKHR clRetainCommandBufferKHR clReleaseCommandBufferKHR "
                        "clFinalizeCommandBufferKHR clEnqueueCommandBufferKHR clCommandNDRangeKernelKHR "
                        "clUpdateMutableCommandsKHR").split()

KERNEL = """__kernel void fill(__global int *out) {
    size_t i = get_global_id(0);
    out[i] = 1000 * (int)get_local_size(0) + 3 * (int)i + OFFSET;
}"""
RUNS = [[10, 4], [12, 4]]

DLOPEN_CLIENT = r'''
import ctypes, json, sys
from ctypes import POINTER, byref, c_char_p, c_int32, c_size_t, c_uint32, c_uint64, c_void_p

args = json.loads(sys.argv[1])
out = {}

def report(**values):
    out.update(values)
    print(json.dumps(out))
    sys.exit(0)

cl = ctypes.CDLL("libOpenCL.so")  # as ArmCL: dlopen by name, then each function from this handle

class DlInfo(ctypes.Structure):
    _fields_ = [("fname", c_char_p), ("fbase", c_void_p), ("sname", c_char_p), ("saddr", c_void_p)]

info = DlInfo()
ctypes.CDLL(None).dladdr(ctypes.cast(cl.clGetPlatformIDs, c_void_p), byref(info))
out["library"] = info.fname.decode()
out["missing"] = [name for name in args["symbols"] if not hasattr(cl, name)]

def fn(name, restype, *argtypes):
    function = getattr(cl, name)
    function.restype, function.argtypes = restype, argtypes
    return function

P, I = c_void_p, POINTER(c_int32)
GetPlatformIDs = fn("clGetPlatformIDs", c_int32, c_uint32, POINTER(P), POINTER(c_uint32))
GetDeviceIDs = fn("clGetDeviceIDs", c_int32, P, c_uint64, c_uint32, POINTER(P), POINTER(c_uint32))
GetDeviceInfo = fn("clGetDeviceInfo", c_int32, P, c_uint32, c_size_t, P, POINTER(c_size_t))
CreateContext = fn("clCreateContext", P, P, c_uint32, POINTER(P), P, P, I)
CreateQueue = fn("clCreateCommandQueueWithProperties", P, P, P, P, I)
CreateProgram = fn("clCreateProgramWithSource", P, P, c_uint32, POINTER(c_char_p), POINTER(c_size_t), I)
BuildProgram = fn("clBuildProgram", c_int32, P, c_uint32, POINTER(P), c_char_p, P, P)
CreateKernel = fn("clCreateKernel", P, P, c_char_p, I)
CreateBuffer = fn("clCreateBuffer", P, P, c_uint64, c_size_t, P, I)
SetKernelArg = fn("clSetKernelArg", c_int32, P, c_uint32, c_size_t, P)
Enqueue = fn("clEnqueueNDRangeKernel", c_int32, P, P, c_uint32, P, POINTER(c_size_t), POINTER(c_size_t), c_uint32,
             P, P)
ReadBuffer = fn("clEnqueueReadBuffer", c_int32, P, P, c_uint32, c_size_t, c_size_t, P, c_uint32, P, P)
Finish = fn("clFinish", c_int32, P)

platform, device, count, err = P(), P(), c_uint32(), c_int32()
code = GetPlatformIDs(1, byref(platform), byref(count))
if code:
    report(failed_at="clGetPlatformIDs", code=code)
code = GetDeviceIDs(platform, 1, 1, byref(device), byref(count))  # CL_DEVICE_TYPE_DEFAULT, as ArmCL
if code:
    report(failed_at="clGetDeviceIDs", code=code)
size = c_size_t()
GetDeviceInfo(device, 0x1030, 0, None, byref(size))  # CL_DEVICE_EXTENSIONS
text = ctypes.create_string_buffer(size.value)
GetDeviceInfo(device, 0x1030, size, text, None)
out["extensions"] = text.value.decode().split()
support = c_uint32(7)
out["non_uniform_code"] = GetDeviceInfo(device, 0x1065, 4, byref(support), None)  # ..._NON_UNIFORM_WORK_GROUP_SUPPORT
out["non_uniform"] = bool(support.value)
context = CreateContext(None, 1, byref(device), None, None, byref(err))
queue = CreateQueue(context, device, None, byref(err))
source = c_char_p(args["source"].encode())

def build(options):
    program = CreateProgram(context, 1, byref(source), None, byref(err))
    return program, BuildProgram(program, 1, byref(device), options.encode(), None, None)

out["builds"] = {options: build(options)[1] for options in args["build_options"]}
program, code = build(args["kernel_options"])
if code:
    report(failed_at="clBuildProgram", code=code)
kernel = CreateKernel(program, b"fill", byref(err))
out["runs"] = []
for global_size, local_size in args["runs"]:
    host = (c_int32 * 16)(*([-1] * 16))
    buffer = P(CreateBuffer(context, 1 | 0x20, 64, host, byref(err)))  # CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR
    SetKernelArg(kernel, 0, ctypes.sizeof(P), byref(buffer))
    g, l = c_size_t(global_size), c_size_t(local_size)
    code = Enqueue(queue, kernel, 1, None, byref(g), byref(l), 0, None, None)
    Finish(queue)
    ReadBuffer(queue, buffer, 1, 0, 64, host, 0, None, None)
    out["runs"].append({"global": global_size, "local": local_size, "code": code, "out": list(host)})
report()
'''

PYOPENCL_CLIENT = r'''
import json, sys
import numpy as np
import pyopencl as cl

args = json.loads(sys.argv[1])
out = {}
device = cl.get_platforms()[0].get_devices()[0]
out["extensions"] = device.extensions.split()
out["non_uniform"] = bool(device.non_uniform_work_group_support)
context = cl.Context([device])
queue = cl.CommandQueue(context)

def build(options):
    try:
        return cl.Program(context, args["source"]).build(options=options.split()), 0
    except cl.Error as exc:
        return None, exc.code

out["builds"] = {options: build(options)[1] for options in args["build_options"]}
program, code = build(args["kernel_options"])
kernel = cl.Kernel(program, "fill")
out["runs"] = []
for global_size, local_size in args["runs"]:
    host = np.full(16, -1, np.int32)
    buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=host)
    kernel.set_arg(0, buffer)
    try:
        cl.enqueue_nd_range_kernel(queue, kernel, (global_size,), (local_size,)).wait()
        code = 0
    except cl.Error as exc:
        code = exc.code
    cl.enqueue_copy(queue, host, buffer)
    out["runs"].append({"global": global_size, "local": local_size, "code": code, "out": host.tolist()})
out["mapped"] = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libOpenCL" in line})
print(json.dumps(out))
'''

CLIENTS = {"dlopen": DLOPEN_CLIENT, "pyopencl": PYOPENCL_CLIENT}


def _missing_prerequisite() -> str | None:
    if not Path("/etc/OpenCL/vendors/pocl.icd").is_file():
        return "PoCL is not installed (pocl-opencl-icd)"
    if not Path("/usr/include/CL/cl.h").is_file():
        return "the OpenCL headers are not installed (opencl-headers)"
    if shutil.which("nm") is None:
        return "nm (binutils) is not installed"
    return None


_MISSING = _missing_prerequisite()
if _MISSING and os.environ.get("CI"):
    pytest.fail(f"{_MISSING}: ./dev.sh test installs it", pytrace=False)
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"{_MISSING}: ./dev.sh test installs it")


def clean_env(pocl_cache: Path) -> dict[str, str]:
    """This process's environment without anything that steers OpenCL, PoCL's cache in ``pocl_cache``."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("LD_LIBRARY_PATH", "LD_PRELOAD") and not name.startswith(("REQUESTFLOW_CLSHIM_", "POCL_"))}
    return {**env, "POCL_CACHE_DIR": str(pocl_cache), "PYOPENCL_NO_CACHE": "1"}


def run_client(client: str, env: dict[str, str], *, kernel_options: str = "-DOFFSET=7",
               build_options: tuple[str, ...] = ("-DOFFSET=7", f"-DOFFSET=7 {ARM_OPTION}"),
               source: str = KERNEL) -> tuple[dict, str]:
    args = {"symbols": ARMCL_CORE + ARMCL_COMMAND_BUFFER, "source": source, "build_options": list(build_options),
            "kernel_options": kernel_options, "runs": RUNS}
    result = subprocess.run([sys.executable, "-c", CLIENTS[client], json.dumps(args)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def shim_env(shim_dir: Path, real_lib: str, client: str, pocl_cache: Path, stats: Path | None = None) -> dict:
    """``clshim.environment`` for a client, with PoCL's cache in ``pocl_cache``."""
    base = clean_env(pocl_cache)
    with pytest.MonkeyPatch.context() as patch:  # environment() creates <requestflow cache>/pocl: not the user's
        patch.setenv("REQUESTFLOW_CACHE", str(pocl_cache.parent / "requestflow-cache"))
        env = {**base, **clshim.environment(shim_dir, real_lib, stats_path=stats, base=base)}
    env["POCL_CACHE_DIR"] = str(pocl_cache)
    if client == "pyopencl":  # its wheel's own loader is linked by RPATH: only LD_PRELOAD reaches it
        env["LD_PRELOAD"] = str(shim_dir / "libOpenCL.so")
    return env


def values(run: dict) -> list[tuple[int, int]]:
    """(local size, 3 * index + OFFSET) of each work-item's entry."""
    return [(value // 1000, value % 1000) if value >= 0 else (None, value) for value in run["out"]]


def compiled_files(folder: Path) -> dict[str, tuple[int, int]]:
    """PoCL's compiled programs and kernels under its cache: path -> (size, mtime)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.suffix in (".so", ".bc")}


def exported(library: Path | str) -> set[str]:
    listing = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in listing.stdout.splitlines() if line.split()[-1].startswith("cl")}


@pytest.fixture(scope="module")
def real_lib() -> str:
    return clshim.find_real_loader()


@pytest.fixture(scope="module")
def shim_dir(tmp_path_factory, real_lib) -> Path:
    return clshim.build_shim(tmp_path_factory.mktemp("cache"), real_lib=real_lib)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shim_dir, real_lib) -> dict:
    """Each client once without the shim (PoCL as it is) and once through it, as ArmCL would build: with the Arm
    option. {(client, shim?): (output, stderr, stats)}."""
    folder = tmp_path_factory.mktemp("runs")
    out = {}
    for client in CLIENTS:
        output, stderr = run_client(client, clean_env(folder / "pocl"))
        out[client, False] = (output, stderr, None)
        stats = folder / f"{client}-stats.json"
        output, stderr = run_client(client, shim_env(shim_dir, real_lib, client, folder / "pocl", stats),
                                    kernel_options=f"-DOFFSET=7 {ARM_OPTION}")
        out[client, True] = (output, stderr, clshim.read_stats(stats))
    return out


@pytest.mark.parametrize("client", CLIENTS)
class TestPoclWithoutTheShim:
    def test_lists_neither_the_arm_extension_nor_non_uniform_support(self, runs, client):
        output = runs[client, False][0]
        assert ARM_EXTENSION not in output["extensions"]
        assert "cl_khr_fp64" in output["extensions"]  # a real answer, not an empty list
        assert output["non_uniform"] is False

    def test_rejects_the_arm_build_option(self, runs, client):
        builds = runs[client, False][0]["builds"]
        assert builds == {"-DOFFSET=7": 0, f"-DOFFSET=7 {ARM_OPTION}": CL_INVALID_BUILD_OPTIONS}

    def test_refuses_a_global_size_that_is_not_a_multiple_of_the_local_size(self, runs, client):
        non_uniform, uniform = runs[client, False][0]["runs"]
        assert non_uniform["code"] == CL_INVALID_WORK_GROUP_SIZE
        assert non_uniform["out"] == [-1] * 16  # nothing ran
        assert uniform["code"] == 0
        assert values(uniform) == [(4, 3 * i + 7) for i in range(12)] + [(None, -1)] * 4


@pytest.mark.parametrize("client", CLIENTS)
class TestPoclThroughTheShim:
    def test_the_calls_reach_the_shim(self, runs, client, shim_dir, real_lib):
        output = runs[client, True][0]
        if client == "dlopen":
            assert output["library"] == str(shim_dir / "libOpenCL.so")
            assert runs[client, False][0]["library"] != output["library"]
        else:
            assert str(shim_dir / "libOpenCL.so") in output["mapped"]
            assert os.path.realpath(real_lib) in output["mapped"]

    def test_reports_the_arm_extension_and_nothing_else(self, runs, client):
        without, through = runs[client, False][0], runs[client, True][0]
        assert through["extensions"] == [*without["extensions"], ARM_EXTENSION]
        assert through["non_uniform"] is without["non_uniform"] is False

    def test_accepts_the_arm_build_option_and_passes_the_others_on(self, runs, client):
        assert runs[client, True][0]["builds"] == {"-DOFFSET=7": 0, f"-DOFFSET=7 {ARM_OPTION}": 0}

    def test_runs_each_of_the_10_work_items_once_with_a_local_size_the_driver_chose(self, runs, client):
        run = runs[client, True][0]["runs"][0]
        assert (run["global"], run["local"], run["code"]) == (10, 4, 0)
        entries = values(run)
        assert [index_part for _, index_part in entries[:10]] == [3 * i + 7 for i in range(10)]  # OFFSET=7 built in
        local_sizes = {local for local, _ in entries[:10]}
        assert len(local_sizes) == 1 and 10 % local_sizes.pop() == 0
        assert entries[10:] == [(None, -1)] * 6  # no work-item beyond the global size

    def test_leaves_an_enqueue_with_a_multiple_unchanged(self, runs, client):
        uniform = runs[client, True][0]["runs"][1]
        assert uniform["code"] == 0
        assert uniform["out"] == runs[client, False][0]["runs"][1]["out"]  # local size 4, as asked

    def test_counts_what_it_changed(self, runs, client):
        stats = runs[client, True][2]
        assert (stats["processes"], stats["loaded"]) == (1, True)
        assert stats["enqueues"] == 2
        assert stats["rewritten_enqueues"] == 1
        assert stats["stripped_build_options"] == 2  # the probe build and the kernel's build
        assert stats["reported_extension"] >= 1

    def test_says_once_that_it_is_active(self, runs, client):
        stderr = runs[client, True][1]
        assert stderr.count("requestflow-clshim: active, forwarding to") == 1
        assert "enqueue: global" not in stderr  # per-call lines only with REQUESTFLOW_CLSHIM_LOG=1
        assert "requestflow-clshim" not in runs[client, False][1]


class TestShimProcess:
    def test_armcl_finds_the_same_functions_as_in_the_real_loader(self, runs):
        """Looked up from the dlopen()ed handle, as ArmCL does: all of its core functions, and the same missing
        command-buffer ones as with the real loader."""
        assert runs["dlopen", True][0]["missing"] == runs["dlopen", False][0]["missing"] == ARMCL_COMMAND_BUFFER

    def test_logs_each_changed_call_when_asked(self, tmp_path, shim_dir, real_lib):
        env = {**shim_env(shim_dir, real_lib, "dlopen", tmp_path / "pocl"), "REQUESTFLOW_CLSHIM_LOG": "1"}
        _, stderr = run_client("dlopen", env, kernel_options=f"-DOFFSET=7 {ARM_OPTION}")
        assert "requestflow-clshim: enqueue: global 10, local 4 -> local chosen by the driver" in stderr
        assert "enqueue: global 12" not in stderr
        assert stderr.count(f"requestflow-clshim: build options: dropped {ARM_OPTION}") == 2
        assert f"requestflow-clshim: CL_DEVICE_EXTENSIONS: added {ARM_EXTENSION}" in stderr

    @pytest.mark.parametrize("real, message", [
        ("shim", "is this shim, not the real OpenCL library"),
        ("/nonexistent/libOpenCL.so.1", "cannot load the real OpenCL library /nonexistent/libOpenCL.so.1"),
    ])
    def test_a_wrong_real_library_fails_every_call_and_says_why(self, tmp_path, shim_dir, real_lib, real, message):
        real = str(shim_dir / "libOpenCL.so") if real == "shim" else real
        env = shim_env(shim_dir, real, "dlopen", tmp_path / "pocl", tmp_path / "stats.json")
        output, stderr = run_client("dlopen", env)
        assert (output["failed_at"], output["code"]) == ("clGetPlatformIDs", CL_INVALID_OPERATION)
        assert message in stderr
        stats = json.loads((tmp_path / "stats.json").read_text())
        assert (stats["loaded"], stats["real"], stats["enqueues"]) == (False, real, 0)
        assert clshim.read_stats(tmp_path / "stats.json")["loaded"] is False

    def test_each_process_adds_its_own_counts(self, tmp_path, shim_dir, real_lib):
        env = shim_env(shim_dir, real_lib, "dlopen", tmp_path / "pocl", tmp_path / "stats.json")
        for _ in range(2):
            run_client("dlopen", env, kernel_options=f"-DOFFSET=7 {ARM_OPTION}")
        assert len((tmp_path / "stats.json").read_text().splitlines()) == 2
        stats = clshim.read_stats(tmp_path / "stats.json")
        assert (stats["processes"], stats["loaded"], stats["enqueues"], stats["rewritten_enqueues"]) == (2, True, 4, 2)

    def test_a_process_that_never_calls_opencl_leaves_no_counts(self, tmp_path, shim_dir, real_lib):
        env = shim_env(shim_dir, real_lib, "dlopen", tmp_path / "pocl", tmp_path / "stats.json")
        subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL('libOpenCL.so')"], env=env, check=True)
        assert clshim.read_stats(tmp_path / "stats.json") is None


# As ArmCL's helpers.h: a macro that expands to its own name (a no-op in OpenCL C), which hides PoCL's rename of the
# builtin (_builtin_renames.h: #define convert_uchar2_sat _cl_convert_uchar2_sat). Lines that merely look alike stay.
SATURATING_KERNEL = """#define convert_uchar2_sat convert_uchar2_sat
  #  define   convert_uchar4_sat\tconvert_uchar4_sat\t
#define CLAMPED(x) CLAMPED_IMPL(x)
#define CLAMPED_IMPL(x) convert_uchar2_sat(x)
#define SHIFT SHIFT_VALUE
#define SHIFT_VALUE 0
__kernel void fill(__global int *out) {
    size_t i = get_global_id(0);
    uchar2 s = CLAMPED((int2)(300, -5));
    uchar4 t = convert_uchar4_sat((int4)(1, 2, 3, 400));
    out[i] = 1000 * (int)get_local_size(0) + 3 * (int)i + OFFSET + (s.x - 255) + s.y + (t.w - 255) + SHIFT;
}"""


class TestPoclBuiltinRenames:
    def test_a_self_defining_macro_breaks_the_build_without_the_shim(self, tmp_path):
        output, _ = run_client("dlopen", clean_env(tmp_path / "pocl"), build_options=(), source=SATURATING_KERNEL)
        assert output["failed_at"] == "clBuildProgram" and output["code"] == -11  # CL_BUILD_PROGRAM_FAILURE

    def test_the_shim_blanks_it_and_the_kernel_computes_the_saturated_values(self, tmp_path, shim_dir, real_lib):
        env = {**shim_env(shim_dir, real_lib, "dlopen", tmp_path / "pocl", tmp_path / "stats.json"),
               "REQUESTFLOW_CLSHIM_LOG": "1"}
        output, stderr = run_client("dlopen", env, build_options=(), source=SATURATING_KERNEL)
        assert "failed_at" not in output, output
        multiple = next(run for run in output["runs"] if run["global"] == 12)
        assert multiple["code"] == 0 and multiple["out"][:12] == [4000 + 3 * i + 7 for i in range(12)]
        blanked = [line for line in stderr.splitlines() if "program source: blanked" in line]
        assert len(blanked) == 2 and "convert_uchar2_sat convert_uchar2_sat" in blanked[0]
        assert clshim.read_stats(tmp_path / "stats.json")["patched_sources"] == 1


class TestBuild:
    def test_exports_the_real_loaders_api_with_its_symbol_versions(self, shim_dir, real_lib):
        ours = exported(shim_dir / "libOpenCL.so")
        theirs = {name for name in exported(real_lib) if not re.search(r"GL|(KHR|EXT)@", name)}
        assert len(theirs) >= 114  # OpenCL 3.0's core: the filter above did not empty the comparison
        assert ours == theirs  # e.g. clGetDeviceInfo@@OPENCL_1.0, clCreateBufferWithProperties@@OPENCL_3.0
        assert {name.split("@")[0] for name in ours} >= set(ARMCL_CORE)

    def test_is_libopencl_so_and_so_1(self, shim_dir):
        assert (shim_dir / "libOpenCL.so").is_file()
        assert os.readlink(shim_dir / "libOpenCL.so.1") == "libOpenCL.so"
        assert shim_dir.stat().st_mode & 0o777 == 0o755
        build = json.loads((shim_dir / "build.json").read_text())
        assert build["sha256"].startswith(shim_dir.name)

    def test_is_reused_while_the_source_is_unchanged_and_rebuilt_when_it_changes(self, tmp_path, monkeypatch,
                                                                                 real_lib):
        source = tmp_path / "source"
        shutil.copytree(NATIVE, source)
        monkeypatch.setenv("REQUESTFLOW_CLSHIM_SOURCE", str(source))
        first = clshim.build_shim(tmp_path / "cache", real_lib=real_lib)
        built = (first / "libOpenCL.so").stat()
        again = clshim.build_shim(tmp_path / "cache", real_lib=real_lib)
        assert again == first
        assert (again / "libOpenCL.so").stat().st_mtime_ns == built.st_mtime_ns
        with open(source / "clshim.c", "a") as handle:
            handle.write("/* changed */\n")
        changed = clshim.build_shim(tmp_path / "cache", real_lib=real_lib)
        assert changed != first and changed.parent == first.parent
        assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, changed.name])  # no leftovers

    def test_without_a_compiler_says_what_to_install(self, tmp_path, monkeypatch, real_lib):
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.delenv("CC", raising=False)
        with pytest.raises(ShimError, match=r"no C compiler \(cc, gcc or clang\) on PATH .*apt-get install gcc"):
            clshim.build_shim(tmp_path / "cache", real_lib=real_lib)
        assert not (tmp_path / "cache" / "clshim").exists() or not any((tmp_path / "cache" / "clshim").iterdir())

    def test_a_compile_error_is_reported_with_the_compilers_message(self, tmp_path, monkeypatch, real_lib):
        source = tmp_path / "source"
        shutil.copytree(NATIVE, source)
        (source / "clshim.c").write_text((source / "clshim.c").read_text() + "\nint broken = ;\n")
        monkeypatch.setenv("REQUESTFLOW_CLSHIM_SOURCE", str(source))
        failed = r"(?s)building the OpenCL shim failed \(.*clshim.c:\d+:\d+: error: expected expression"
        with pytest.raises(ShimError, match=failed):
            clshim.build_shim(tmp_path / "cache", real_lib=real_lib)
        assert list((tmp_path / "cache" / "clshim").iterdir()) == []  # the half-built folder is gone

    def test_missing_opencl_headers_say_what_to_install(self, tmp_path, monkeypatch, real_lib):
        compiler = tmp_path / "cc-without-system-headers"
        compiler.write_text(f"#!/bin/sh\nexec {shutil.which('cc')} -nostdinc \"$@\"\n")
        compiler.chmod(0o755)
        monkeypatch.setenv("CC", str(compiler))
        with pytest.raises(ShimError, match=r"OpenCL headers \(CL/cl.h\) are missing.*apt-get install opencl-headers"):
            clshim.build_shim(tmp_path / "cache", real_lib=real_lib)

    def test_a_real_library_path_that_cannot_go_into_c_is_refused(self, tmp_path):
        with pytest.raises(ShimError, match="absolute path without quotes"):
            clshim.build_shim(tmp_path / "cache", real_lib='/opt/a"b/libOpenCL.so.1')

    def test_a_missing_source_folder_is_named(self, tmp_path, monkeypatch):
        monkeypatch.setenv("REQUESTFLOW_CLSHIM_SOURCE", str(tmp_path))
        with pytest.raises(ShimError, match=f"the OpenCL shim's source is not at {tmp_path} .*clshim.c"):
            clshim.source_dir()

    def test_the_makefile_uses_the_same_flags(self):
        makefile = (NATIVE / "Makefile").read_text()

        def variable(name):
            return tuple(re.search(rf"^{name} = (.*)$", makefile, re.MULTILINE).group(1).split())

        assert variable("CFLAGS") == clshim.CFLAGS
        assert variable("LDLIBS") == clshim.LDLIBS
        ldflags = variable("LDFLAGS")
        assert f"-Wl,--version-script={clshim.VERSION_SCRIPT}" in ldflags
        assert tuple(f for f in ldflags if "--version-script" not in f) == clshim.LDFLAGS

    def test_finds_the_real_loader_and_honours_the_override(self, monkeypatch, real_lib, shim_dir):
        assert Path(real_lib).is_absolute() and Path(real_lib).is_file()
        assert "libOpenCL" in Path(real_lib).name and not str(real_lib).startswith(str(shim_dir))
        monkeypatch.setenv("REQUESTFLOW_CLSHIM_REAL", "/nonexistent/libOpenCL.so.1")
        with pytest.raises(ShimError, match="REQUESTFLOW_CLSHIM_REAL=/nonexistent/libOpenCL.so.1 is not"):
            clshim.find_real_loader()


class TestPoclCache:
    def test_only_the_first_run_compiles_and_a_second_run_reuses_the_kernels(self, tmp_path, monkeypatch, shim_dir,
                                                                            real_lib):
        monkeypatch.delenv("POCL_CACHE_DIR", raising=False)  # the default: under requestflow's cache
        monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
        env = {**clean_env(tmp_path / "unused"), **clshim.environment(shim_dir, real_lib)}
        assert env["POCL_CACHE_DIR"] == str(tmp_path / "cache" / "pocl")
        pocl = Path(env["POCL_CACHE_DIR"])
        options = f"-DOFFSET=7 {ARM_OPTION}"
        run_client("dlopen", env, kernel_options=options, build_options=())
        first = compiled_files(pocl)
        assert any(name.endswith("program.bc") for name in first)
        assert any(name.endswith("/fill.so") for name in first)  # the kernel, compiled at its first enqueue
        run_client("dlopen", env, kernel_options=options, build_options=())
        assert compiled_files(pocl) == first  # nothing compiled again, nothing rewritten
        run_client("dlopen", env, kernel_options=f"-DOFFSET=8 {ARM_OPTION}", build_options=())
        third = compiled_files(pocl)
        assert len(third) > len(first) and all(third[name] == first[name] for name in first)


def device(name, version, support=None, extensions=None, platform="Platform"):
    entry = {"name": name, "type": "GPU", "version": version, "driver_version": "1", "compute_units": 4,
             "max_clock_mhz": 800, "non_uniform_work_group_support": support}
    if extensions is not None:
        entry["extensions"] = extensions
    return {"available": True, "source": "pyopencl", "platforms": [
        {"name": platform, "vendor": "v", "version": version, "devices": [entry]}]}


MALI_G52 = device("Mali-G52", "OpenCL 3.0 v1.r40p0-01eac0", support=True, platform="ARM Platform")
MALI_T860 = device("Mali-T860", "OpenCL 1.2 v1.r14p0-01rel0", extensions=f"cl_khr_fp16 {ARM_EXTENSION}")
POCL = device("pthread-cortex-a72", "OpenCL 3.0 PoCL HSTR: pthread-aarch64", support=False,
              platform="Portable Computing Language")


class TestNeedsShim:
    def test_not_for_a_mali_gpu_that_supports_non_uniform_work_groups(self):
        needed, reason = clshim.needs_shim(MALI_G52)
        assert not needed and "-cl-std=CL3.0" in reason and "Mali-G52" in reason

    def test_not_for_a_device_listing_the_arm_extension(self):
        needed, reason = clshim.needs_shim(MALI_T860)
        assert not needed and ARM_EXTENSION in reason

    def test_not_for_an_opencl_2_device(self):
        assert clshim.needs_shim(device("Adreno", "OpenCL 2.0 Adreno(TM) 640"))[0] is False

    def test_needed_for_pocl(self):
        needed, reason = clshim.needs_shim(POCL)
        assert needed and "no non-uniform work-group support" in reason

    def test_needed_for_an_opencl_1_device_whose_extensions_lack_it(self):
        assert clshim.needs_shim(device("old", "OpenCL 1.2", extensions=["cl_khr_fp16"]))[0] is True

    def test_left_alone_when_it_cannot_tell(self):
        needed, reason = clshim.needs_shim(device("Mali-T860", "OpenCL 1.2 v1.r14p0"))
        assert not needed and "cannot tell" in reason

    def test_not_without_opencl(self):
        needed, reason = clshim.needs_shim({"available": False, "source": None, "reason": "no clinfo"})
        assert not needed and "no clinfo" in reason

    def test_reads_a_whole_platform_snapshot_too(self):
        assert clshim.needs_shim({"board": {"id": "rk3399"}, "opencl": POCL}) == clshim.needs_shim(POCL)
        assert clshim.needs_shim({"board": {"id": "rk3399"}, "opencl": None})[0] is False

    def test_needed_on_this_machine(self):
        from requestflow.board.opencl_probe import opencl

        needed, reason = clshim.needs_shim(opencl())
        assert needed, reason


class TestWhatAResultRecords:
    def test_prepare_without_need_keeps_only_the_pocl_cache(self, tmp_path, monkeypatch):
        monkeypatch.delenv("POCL_CACHE_DIR", raising=False)  # the default: under requestflow's cache
        monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path))
        env, description = clshim.prepare(MALI_G52)
        assert env == {"POCL_CACHE_DIR": str(tmp_path / "pocl"), "POCL_KERNEL_CACHE": "1"}
        assert description == {"used": False, "reason": clshim.needs_shim(MALI_G52)[1], "device": {
            "platform": "ARM Platform", "name": "Mali-G52", "version": "OpenCL 3.0 v1.r40p0-01eac0",
            "driver_version": "1"}}
        assert not (tmp_path / "clshim").exists()  # nothing built

    def test_prepare_with_need_builds_and_points_the_environment_at_the_shim(self, tmp_path, monkeypatch, real_lib):
        monkeypatch.delenv("POCL_CACHE_DIR", raising=False)  # the default: under requestflow's cache
        monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path))
        monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/vendor/lib")
        env, description = clshim.prepare(POCL, stats_path=tmp_path / "stats.json")
        shim_dir = Path(env["LD_LIBRARY_PATH"].split(":")[0])
        assert shim_dir.parent == tmp_path / "clshim" and (shim_dir / "libOpenCL.so").is_file()
        assert env == {"LD_LIBRARY_PATH": f"{shim_dir}:/opt/vendor/lib", "REQUESTFLOW_CLSHIM_REAL": real_lib,
                       "POCL_CACHE_DIR": str(tmp_path / "pocl"), "POCL_KERNEL_CACHE": "1",
                       "REQUESTFLOW_CLSHIM_STATS": str(tmp_path / "stats.json")}
        build = json.loads((shim_dir / "build.json").read_text())
        assert description == {"used": True, "reason": clshim.needs_shim(POCL)[1],
                               "device": {"platform": "Portable Computing Language", "name": "pthread-cortex-a72",
                                          "version": "OpenCL 3.0 PoCL HSTR: pthread-aarch64", "driver_version": "1"},
                               "sha256": build["sha256"], "real_loader": real_lib,
                               "pocl_cache_dir": str(tmp_path / "pocl")}

    def test_describe_after_the_run_carries_the_counts(self, runs, shim_dir):
        stats = runs["dlopen", True][2]
        description = clshim.describe(POCL, shim_dir, stats)
        assert description["used"] is True
        assert description["counts"] == {"processes": 1, "loaded": True, "enqueues": 2, "rewritten_enqueues": 1,
                                         "stripped_build_options": 2, "reported_extension": stats["reported_extension"],
                                         "patched_sources": 0}

    def test_no_stats_file_reads_as_none(self, tmp_path):
        assert clshim.read_stats(tmp_path / "absent.json") is None


def test_the_module_prints_the_shell_lines_that_apply_it_here(tmp_path, shim_dir):
    """``python -m requestflow.board.clshim`` on this machine (PoCL: needed), then a client run with those lines."""
    env = {**clean_env(tmp_path / "unused"), "REQUESTFLOW_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "requestflow.board.clshim"], env=env, capture_output=True,
                            text=True, check=True, cwd=ROOT)
    assert result.stderr.startswith("# shim used: ")
    exports = dict(re.fullmatch(r"export (\w+)=(\S+)", line).groups() for line in result.stdout.splitlines())
    assert set(exports) == {"LD_LIBRARY_PATH", "REQUESTFLOW_CLSHIM_REAL", "POCL_CACHE_DIR", "POCL_KERNEL_CACHE"}
    assert Path(exports["LD_LIBRARY_PATH"]).parent == tmp_path / "cache" / "clshim"
    assert Path(exports["LD_LIBRARY_PATH"]).name == shim_dir.name  # same source, flags and compiler: same key
    output, _ = run_client("dlopen", {**env, **exports}, kernel_options=f"-DOFFSET=7 {ARM_OPTION}")
    assert [run["code"] for run in output["runs"]] == [0, 0]
