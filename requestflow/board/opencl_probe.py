"""What OpenCL the board offers: platforms and devices, through pyopencl when it and a driver are present, else
through ``clinfo``; best effort, like every reader of ``requestflow.board.machine`` (what cannot be read is said,
never guessed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

PROBE_TIMEOUT_S = 5
_known: dict | None = None  # a point server's answer, probed once before it forks (probe_for_children)


def opencl() -> dict:
    """Platforms and devices through pyopencl, when it and a driver are present; without pyopencl, through
    ``clinfo --json`` (clinfo 3.x), else ``clinfo -l`` (names only). Each device has
    ``non_uniform_work_group_support``: true/false where the device answers (OpenCL 2.0+), else null.

    In a process that has loaded TensorFlow, a fresh interpreter asks instead: PoCL, an OpenCL driver built on
    LLVM, segfaults when it starts its devices in a process holding TensorFlow's own LLVM (``clGetDeviceIDs``, seen
    with tensorflow-cpu 2.21 and Debian's PoCL 3.1; the other order works). A runner loads TensorFlow before this
    when its weights need it to be read (a TF-slim checkpoint). A child of the point server (issue #20) takes the
    answer its server got once, in a fresh interpreter, before its first fork (``probe_for_children``)."""
    if _known is not None:
        return json.loads(json.dumps(_known))
    if "tensorflow" in sys.modules:
        return _opencl_in_a_child()
    return opencl_here()


def opencl_remembered() -> dict:
    """``opencl()``, remembered in the board's cache for as long as what it depends on is unchanged: this boot, this
    Python, the ICD files and the libraries they name, the installed packages (dpkg's status), pyopencl and clinfo,
    and the OpenCL variables of the environment. A point's document gets the answer its board's first point got
    (probing loads the driver: PoCL takes 0.2-0.7 s of a 2-core board's every point, issue #20); anything changed is
    a new key, probed afresh. A point server's children take their server's answer (``probe_for_children``)."""
    if _known is not None:
        return opencl()
    from requestflow.board.files import atomic_write_text, cache_dir, canonical_json, sha256_text

    path = cache_dir("opencl") / f"{sha256_text(canonical_json(_driver_state()))}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    answer = opencl()
    atomic_write_text(path, json.dumps(answer))
    return answer


_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
                 "/usr/lib64", "/usr/lib", "/usr/local/lib")  # where an ICD's bare library name is usually found


def _driver_state() -> dict:
    """What an OpenCL probe's answer depends on, cheaply read (no driver loaded)."""
    import importlib.util
    import os

    def stat(path) -> list | None:
        try:
            found = os.stat(path)
            return [found.st_size, found.st_mtime_ns]
        except OSError:
            return None

    icds = {}
    for vendors in ("/etc/OpenCL/vendors", os.environ.get("OCL_ICD_VENDORS") or ""):
        for icd in sorted(Path(vendors).glob("*.icd")) if vendors else ():
            try:
                library = icd.read_text().strip()
            except OSError:
                continue
            icds[str(icd)] = [library, stat(icd), stat(library) if library.startswith("/") else
                              [stat(Path(folder, library)) for folder in _LIBRARY_DIRS]]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    spec = importlib.util.find_spec("pyopencl")
    return {"boot": boot, "python": sys.executable, "icds": icds, "dpkg": stat("/var/lib/dpkg/status"),
            "pyopencl": stat(spec.origin) if spec and spec.origin else None, "clinfo": shutil.which("clinfo"),
            "tensorflow": "tensorflow" in sys.modules,
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("OCL_", "POCL_", "OPENCL", "RUSTICL", "LD_LIBRARY_PATH", "CL_"))}}


def probe_for_children() -> dict:
    """Probe once, in a fresh interpreter (no driver or thread of it in this process), for the children this process
    will fork: ``opencl()`` answers with it from then on."""
    global _known
    _known = _opencl_in_a_child()
    return _known


def _opencl_in_a_child() -> dict:
    root = Path(__file__).resolve().parents[2]  # the folder holding the requestflow package
    code = (f"import json, sys; sys.path.insert(0, {str(root)!r}); "
            "from requestflow.board.opencl_probe import opencl_here; print(json.dumps(opencl_here()))")
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "source": "pyopencl", "reason": f"the OpenCL probe process failed: {exc}"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        return {"available": False, "source": "pyopencl",
                "reason": f"the OpenCL probe process ended with exit code {result.returncode}: {last}".rstrip(": ")}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"available": False, "source": "pyopencl",
                "reason": f"the OpenCL probe process printed no report (its last line: {lines[-1][:200]!r})"}


def opencl_here() -> dict:
    try:
        import pyopencl as cl
    except ImportError:
        return _opencl_from_clinfo()
    try:
        platforms = cl.get_platforms()
    except Exception as exc:  # pyopencl raises its own LogicError/RuntimeError without an ICD
        return {"available": False, "source": "pyopencl", "reason": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "source": "pyopencl", "platforms": [
        {"name": p.name, "vendor": p.vendor, "version": p.version,
         "devices": [{"name": d.name, "type": cl.device_type.to_string(d.type), "version": d.version,
                      "driver_version": d.driver_version, "compute_units": d.max_compute_units,
                      "max_clock_mhz": d.max_clock_frequency,
                      "non_uniform_work_group_support": _optional_bool(d, "non_uniform_work_group_support")}
                     for d in p.get_devices()]}
        for p in platforms]}


def _optional_bool(device, attribute: str) -> bool | None:
    try:  # absent from older pyopencl; an OpenCL 1.x device answers CL_INVALID_VALUE
        return bool(getattr(device, attribute))
    except Exception:
        return None


def _opencl_from_clinfo() -> dict:
    clinfo = shutil.which("clinfo")
    if clinfo is None:
        return {"available": False, "source": None, "reason": "neither pyopencl nor clinfo installed"}
    text = _run_text([clinfo, "--json"])
    try:
        platforms = _platforms_from_clinfo_json(json.loads(text)) if text else None
    except (ValueError, KeyError, TypeError, AttributeError):  # an older clinfo, or a JSON shape not yet seen
        platforms = None
    if platforms is not None:
        source = "clinfo --json"
    else:
        source, platforms = "clinfo -l", _platforms_from_clinfo_list(_run_text([clinfo, "-l"]) or "")
    if not platforms:
        return {"available": False, "source": source, "reason": "clinfo lists no OpenCL platform"}
    return {"available": True, "source": source, "platforms": platforms}


def _run_text(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _platforms_from_clinfo_json(document: dict) -> list[dict]:
    """clinfo --json: ``platforms`` [{CL_PLATFORM_*}] and, platform by platform, ``devices``
    [{"online": [{CL_DEVICE_*}]}]."""
    platforms = []
    for index, plat in enumerate(document["platforms"]):
        devices = document.get("devices", [])
        online = devices[index].get("online", []) if index < len(devices) else []
        platforms.append({
            "name": plat.get("CL_PLATFORM_NAME"), "vendor": plat.get("CL_PLATFORM_VENDOR"),
            "version": plat.get("CL_PLATFORM_VERSION"),
            "devices": [{"name": d.get("CL_DEVICE_NAME"), "type": _clinfo_type(d.get("CL_DEVICE_TYPE")),
                         "version": d.get("CL_DEVICE_VERSION"), "driver_version": d.get("CL_DRIVER_VERSION"),
                         "compute_units": _clinfo_raw(d.get("CL_DEVICE_MAX_COMPUTE_UNITS")),
                         "max_clock_mhz": _clinfo_raw(d.get("CL_DEVICE_MAX_CLOCK_FREQUENCY")),
                         "non_uniform_work_group_support":
                             _clinfo_bool(d.get("CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT"))}
                        for d in online]})
    return platforms


def _clinfo_raw(value):
    """clinfo writes some values plainly and others as ``{"raw": ..., ...}``."""
    return value.get("raw") if isinstance(value, dict) else value


def _clinfo_type(value) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("type"), list):
        return " ".join(str(t) for t in value["type"])
    return value if isinstance(value, str) else None


def _clinfo_bool(value) -> bool | None:
    value = _clinfo_raw(value)
    if isinstance(value, bool | int):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("yes", "true", "no", "false"):
        return value.lower() in ("yes", "true")
    return None


def _platforms_from_clinfo_list(text: str) -> list[dict]:
    """clinfo -l: ``Platform #0: NAME`` lines, each followed by its `` +-- Device #0: NAME`` lines (the last one
    drawn with a backquote instead of the +)."""
    platforms: list[dict] = []
    for line in text.splitlines():
        platform_match = re.match(r"^Platform #\d+: (.*)$", line)
        device_match = re.match(r"^\s*[+`]-- Device #\d+: (.*)$", line)
        if platform_match:
            platforms.append({"name": platform_match.group(1).strip(), "vendor": None, "version": None,
                              "devices": []})
        elif device_match and platforms:
            platforms[-1]["devices"].append({
                "name": device_match.group(1).strip(), "type": None, "version": None, "driver_version": None,
                "compute_units": None, "max_clock_mhz": None, "non_uniform_work_group_support": None})
    return platforms
