"""The OpenCL forwarding library ("clshim") that lets ArmCL's CL backend run on a device without non-uniform
work-groups, such as Debian's PoCL on the CPU (issue #5), and the PoCL kernel cache kept between runs.

ArmCL 24.11 compiles every CL kernel for non-uniform work-groups: ``CLCompileContext::generate_build_options``
(src/core/CL/CLCompileContext.cpp) takes the options from ``CLDevice::is_non_uniform_workgroup_supported``
(arm_compute/core/CL/CLDevice.h) and stops with "Non uniform workgroup size is not supported!!" when the device is
neither OpenCL 3 with CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT, nor OpenCL 2, nor lists
``cl_arm_non_uniform_work_group_size``. ``needs_shim`` applies the same rule to the board's platform snapshot.

When it is needed, ``build_shim`` compiles ``native/clshim`` (a libOpenCL.so that forwards the whole OpenCL API to the
real loader, reports the Arm extension, drops the Arm build option, and lets the driver choose the local size of an
enqueue whose global size is not a multiple of it; see clshim.c) into the cache, once per source; ``environment``
puts it first in LD_LIBRARY_PATH of the process that runs ArmCL (ArmCL dlopen()s "libOpenCL.so" by name, so
LD_PRELOAD would not reach it) and keeps PoCL's compiled kernels in ``<requestflow cache>/pocl``; ``describe`` says
what a result records. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from requestflow.board.files import atomic_write_text, cache_dir
from requestflow.errors import UserError

ARM_EXTENSION = "cl_arm_non_uniform_work_group_size"
ARM_OPTION = "-cl-arm-non-uniform-work-group-size"
SOURCE_FILES = ("clshim.c", "clshim_api.h", "libOpenCL.map")
# The same flags as native/clshim/Makefile (a test compares them); the version script goes by absolute path here.
CFLAGS = ("-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror")
LDFLAGS = ("-Wl,-soname,libOpenCL.so.1", "-Wl,--no-undefined-version", "-Wl,--no-undefined")
VERSION_SCRIPT = "libOpenCL.map"
LDLIBS = ("-ldl", "-pthread")
COUNTERS = ("enqueues", "rewritten_enqueues", "stripped_build_options", "reported_extension", "patched_sources")
_TIMEOUT_S = 120


class ShimError(UserError):
    """The shim cannot be built or used here; the message says what to install or set."""


# ---- whether it is needed ---------------------------------------------------------------------------------------


def _opencl(opencl_info: dict) -> dict:
    """``opencl_probe.opencl()``'s dict, given it or a platform snapshot holding it under ``opencl`` (else {})."""
    info = opencl_info.get("opencl", opencl_info) if isinstance(opencl_info, dict) else None
    return info if isinstance(info, dict) else {}


def armcl_device(opencl_info: dict) -> dict | None:
    """The device ArmCL would use (first platform, its first device: ``select_preferable_platform`` and
    ``create_opencl_context_and_device`` in src/runtime/CL/CLHelpers.cpp), with its platform's name, or None.
    ``opencl_info`` is ``opencl_probe.opencl()`` or a snapshot holding it under ``opencl``."""
    info = _opencl(opencl_info)
    platforms = (info.get("platforms") or []) if info.get("available") else []
    for platform in platforms[:1]:
        for device in (platform.get("devices") or [])[:1]:
            return {"platform": platform.get("name"), **device}
    return None


def needs_shim(opencl_info: dict) -> tuple[bool, str]:
    """(needed, reason): whether ArmCL's CL backend needs the shim on this board, by ArmCL's own rule
    (``CLDevice::is_non_uniform_workgroup_supported``). Needed only when the device is known to lack the capability:
    an OpenCL 1.x device whose extensions were not recorded is left alone (and said so)."""
    info = _opencl(opencl_info)
    if not info.get("available"):
        return False, f"no OpenCL here ({info.get('reason') or 'not available'}): nothing to bridge"
    device = armcl_device(info)
    if device is None:
        return False, "the first OpenCL platform has no device: nothing to bridge"
    version = device.get("version") or ""
    support = device.get("non_uniform_work_group_support")
    extensions = device.get("extensions")
    if isinstance(extensions, str):
        extensions = extensions.split()
    named = f"{device.get('name')!r} ({version or 'version unknown'})"
    if "OpenCL 3" in version and support is True:
        return False, f"{named} supports non-uniform work-groups: ArmCL builds its kernels with -cl-std=CL3.0"
    if "OpenCL 2" in version:
        return False, f"{named} is an OpenCL 2 device: ArmCL builds its kernels with -cl-std=CL2.0"
    if extensions is not None and ARM_EXTENSION in extensions:
        return False, f"{named} lists {ARM_EXTENSION}"
    if extensions is not None or ("OpenCL 3" in version and support is False):
        return True, (f"{named} has no non-uniform work-group support and does not list {ARM_EXTENSION}: "
                      "ArmCL's CL backend would stop with 'Non uniform workgroup size is not supported'")
    return False, (f"cannot tell whether {named} supports non-uniform work-groups (its extensions were not recorded): "
                   "the shim is not applied")


# ---- building it ------------------------------------------------------------------------------------------------


def source_dir() -> Path:
    """The shim's C sources: ``$REQUESTFLOW_CLSHIM_SOURCE``, else ``requestflow/native/clshim`` of an installed wheel
    (pyproject maps the checkout's ``native/`` there, so boards provisioned from the wheel have it), else the
    checkout's ``native/clshim``."""
    package = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["REQUESTFLOW_CLSHIM_SOURCE"])] if os.environ.get("REQUESTFLOW_CLSHIM_SOURCE") \
        else [package / "native" / "clshim", package.parent / "native" / "clshim"]
    for folder in candidates:
        if all((folder / name).is_file() for name in SOURCE_FILES):
            return folder
    raise ShimError(f"the OpenCL shim's source is not at {' or '.join(map(str, candidates))} (it needs "
                    f"{', '.join(SOURCE_FILES)}): set REQUESTFLOW_CLSHIM_SOURCE to the folder holding native/clshim")


def _elf_machine(path: str | os.PathLike) -> bytes | None:
    """ELF class, byte order and e_machine of a file, or None if it is not ELF."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError:
        return None
    return head[4:6] + head[18:20] if head[:4] == b"\x7fELF" and len(head) == 20 else None


def find_real_loader() -> str:
    """The real OpenCL library, by absolute path: ``$REQUESTFLOW_CLSHIM_REAL``, else libOpenCL.so.1 from ldconfig's
    cache for this process's architecture, else the usual folders. A ShimError when there is none."""
    env = os.environ.get("REQUESTFLOW_CLSHIM_REAL")
    if env:
        if not Path(env).is_absolute() or not Path(env).is_file():
            raise ShimError(f"REQUESTFLOW_CLSHIM_REAL={env} is not an absolute path to a file")
        return env
    candidates = []
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    if ldconfig:
        try:
            listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        candidates += re.findall(r"^\s*libOpenCL\.so\.1 \(.*\) => (\S+)$", listing, re.MULTILINE)
    multiarch = sysconfig.get_config_var("MULTIARCH")
    folders = [f"/usr/lib/{multiarch}"] if multiarch else []
    candidates += [f"{folder}/libOpenCL.so.1" for folder in (*folders, "/usr/lib64", "/usr/lib", "/usr/local/lib")]
    ours = _elf_machine(sys.executable)
    for candidate in candidates:
        if Path(candidate).is_file() and _elf_machine(candidate) == ours:
            return candidate
    raise ShimError("no OpenCL ICD loader (libOpenCL.so.1) found: install one (Debian: apt-get install "
                    "ocl-icd-libopencl1) or set REQUESTFLOW_CLSHIM_REAL to the real library's absolute path")


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        found = shutil.which(name)
        if found:
            return found
    raise ShimError("no C compiler (cc, gcc or clang) on PATH to build the OpenCL shim: install one "
                    "(Debian: apt-get install gcc) or set CC")


def build_shim(cache: str | os.PathLike | None = None, *, real_lib: str | None = None) -> Path:
    """The folder holding the built shim (``libOpenCL.so`` and ``libOpenCL.so.1``, and ``build.json``), compiled
    into ``<cache>/clshim/<key>`` (default cache: requestflow's) and reused while the source, flags, compiler and
    default real library are unchanged. Errors (no compiler, no OpenCL headers, a failed compile) are ShimErrors."""
    source = source_dir()
    real_lib = real_lib or find_real_loader()
    if not Path(real_lib).is_absolute() or any(c in real_lib for c in '"\\\n'):
        raise ShimError(f"the real OpenCL library must be an absolute path without quotes or backslashes: {real_lib!r}")
    compiler = _compiler()
    compiler_version = _first_line([compiler, "--version"])
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    source_sha256 = digest.hexdigest()
    flags = [*CFLAGS, f'-DCLSHIM_DEFAULT_REAL="{real_lib}"']
    key = hashlib.sha256(json.dumps([source_sha256, flags, LDFLAGS, LDLIBS, compiler_version]).encode()).hexdigest()
    parent = Path(cache) / "clshim" if cache is not None else cache_dir("clshim")
    final = parent / key[:16]
    if (final / "build.json").is_file() and (final / "libOpenCL.so").is_file():
        return final
    _check_headers(compiler)
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=parent))
    try:
        command = [compiler, *flags, "-o", str(work / "libOpenCL.so"), str(source / "clshim.c"), *LDFLAGS,
                   f"-Wl,--version-script={source / VERSION_SCRIPT}", *LDLIBS]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S,
                                    env={**os.environ, "LC_ALL": "C"})  # plain ASCII messages
        except (OSError, subprocess.SubprocessError) as exc:
            raise ShimError(f"cannot run {compiler}: {exc}") from None
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            shown = "\n".join(lines[:30] + ([f"... ({len(lines) - 30} more lines)"] if len(lines) > 30 else []))
            raise ShimError(f"building the OpenCL shim failed ({' '.join(command)}):\n{shown}")
        (work / "libOpenCL.so.1").symlink_to("libOpenCL.so")
        work.chmod(0o755)  # mkdtemp made it private
        atomic_write_text(work / "build.json", json.dumps({
            "sha256": key, "source_sha256": source_sha256, "compiler": compiler, "compiler_version": compiler_version,
            "command": command, "real_default": real_lib}, indent=1) + "\n")
        try:
            os.rename(work, final)
        except OSError:  # built meanwhile by another process: use that one
            if not (final / "build.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _check_headers(compiler: str) -> None:
    """The OpenCL headers, checked on their own so that their absence is named whatever the compiler's wording."""
    probe = "#define CL_TARGET_OPENCL_VERSION 300\n#include <CL/cl.h>\n"
    try:
        result = subprocess.run([compiler, "-E", "-x", "c", "-o", os.devnull, "-"], input=probe, capture_output=True,
                                text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ShimError(f"cannot run {compiler}: {exc}") from None
    if result.returncode != 0:
        raise ShimError("the OpenCL headers (CL/cl.h) are missing, needed to build the OpenCL shim: install them "
                        f"(Debian: apt-get install opencl-headers). {compiler} said: {result.stderr.strip()[:300]}")


def _first_line(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0] if lines else None


# ---- using it ---------------------------------------------------------------------------------------------------


def pocl_environment() -> dict[str, str]:
    """PoCL's kernel cache, kept between runs (only the first run compiles a kernel): ``$POCL_CACHE_DIR`` when set
    (PoCL keys its entries by kernel source, options and device, so one cache serves every run), else under
    requestflow's cache."""
    folder = os.environ.get("POCL_CACHE_DIR") or str(cache_dir("pocl"))
    return {"POCL_CACHE_DIR": folder, "POCL_KERNEL_CACHE": "1"}


def environment(shim_dir: str | os.PathLike, real_lib: str, *, stats_path: str | os.PathLike | None = None,
                base: dict | None = None) -> dict[str, str]:
    """The variables to set for the process that runs ArmCL: the shim first in LD_LIBRARY_PATH, the real library,
    PoCL's kept kernel cache and, given ``stats_path`` (a fresh file per run), where the shim leaves its counters."""
    base = os.environ if base is None else base
    library_path = ":".join(filter(None, (str(shim_dir), base.get("LD_LIBRARY_PATH"))))
    env = {"LD_LIBRARY_PATH": library_path, "REQUESTFLOW_CLSHIM_REAL": str(real_lib), **pocl_environment()}
    if stats_path is not None:
        env["REQUESTFLOW_CLSHIM_STATS"] = str(stats_path)
    return env


def read_stats(path: str | os.PathLike) -> dict | None:
    """The shim's counters for a run: each process that used OpenCL through it appended one JSON line at exit; this
    sums them ({processes, loaded, enqueues, rewritten_enqueues, stripped_build_options, reported_extension,
    patched_sources}).
    None when there is no line (the shim was not loaded, OpenCL was not used, or the process was killed)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    documents = []
    for line in lines:
        try:
            documents.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a full disk: the others still count
    if not documents:
        return None
    return {"processes": len(documents), "loaded": all(d.get("loaded") is True for d in documents),
            **{name: sum(int(d.get(name, 0)) for d in documents) for name in COUNTERS}}


def describe(opencl_info: dict, shim_dir: str | os.PathLike | None = None, stats: dict | None = None) -> dict:
    """What a result records about the shim: ``used``, the ``reason`` (from ``needs_shim``), the ``device``; when
    used, the build (``sha256``: what identifies the shim that ran, ``real_loader``), the ``pocl_cache_dir`` and,
    once the run is over, its ``counts`` (``read_stats``)."""
    needed, reason = needs_shim(opencl_info)
    device = armcl_device(opencl_info)
    out = {"used": bool(needed and shim_dir is not None), "reason": reason,
           "device": {key: device.get(key) for key in ("platform", "name", "version", "driver_version")}
           if device else None}
    if out["used"]:
        build = json.loads((Path(shim_dir) / "build.json").read_text())
        out.update({"sha256": build["sha256"], "real_loader": build["real_default"],
                    "pocl_cache_dir": pocl_environment()["POCL_CACHE_DIR"]})
        if stats is not None:
            out["counts"] = {name: stats.get(name) for name in ("processes", "loaded", *COUNTERS)}
    return out


def prepare(opencl_info: dict, *, stats_path: str | os.PathLike | None = None) -> tuple[dict[str, str], dict]:
    """For the runner: (environment variables to add, ``describe`` before the run). Builds the shim only when
    ``needs_shim`` says so; PoCL's kernel cache is kept in any case."""
    needed, _ = needs_shim(opencl_info)
    if not needed:
        return pocl_environment(), describe(opencl_info)
    real_lib = find_real_loader()
    shim_dir = build_shim(real_lib=real_lib)
    return environment(shim_dir, real_lib, stats_path=stats_path), describe(opencl_info, shim_dir)


def main() -> int:
    """``python -m requestflow.board.clshim``: this machine's decision, and the shell lines that apply it."""
    from requestflow.board.opencl_probe import opencl

    info = opencl()
    env, description = prepare(info)
    print(f"# {'shim used' if description['used'] else 'no shim'}: {description['reason']}", file=sys.stderr)
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
