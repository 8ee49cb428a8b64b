"""What the board is, read from the board itself: CPU, clusters, frequencies, temperatures, OS, OpenCL, GPU clocks,
compilers, and which known board it is.

Every reader is best effort: what cannot be read is left out (or null), never guessed. The sysfs/procfs root is a
parameter so that tests can point it at a fake tree. ``machine_info`` goes into every result document;
``platform_snapshot`` adds what provisioning needs (``requestflow platform``): the known board id, the GPU devfreq
devices whose clocks ``clocks.pin`` fixes, the compilers, and OpenCL details such as non-uniform work-group support
(``requestflow.board.opencl_probe``).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from requestflow.board import emulation
from requestflow.board.cpu_isa import isa
from requestflow.board.opencl_probe import PROBE_TIMEOUT_S, opencl_remembered
from requestflow.errors import UserError


def read_value(path: Path) -> str | None:
    """A sysfs/procfs file's stripped text, or None when it cannot be read."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: Path) -> int | None:
    text = read_value(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_words(path: Path) -> list[str] | None:
    """A space-separated list (``scaling_available_governors``, ``available_frequencies``), or None."""
    text = read_value(path)
    return text.split() if text is not None else None


def cpu_model(root: Path) -> str | None:
    cpuinfo = read_value(root / "proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    parts = re.findall(r"^CPU part\s*:\s*(\S+)$", cpuinfo, re.MULTILINE)
    return f"ARM CPU parts {' '.join(sorted(set(parts)))}" if parts else None


def board_model(root: Path) -> str | None:
    """The device-tree model string (HiKey960, RK3399 boards, Jetson, Raspberry Pi), or the DMI product name."""
    for path in ("proc/device-tree/model", "sys/firmware/devicetree/base/model", "sys/class/dmi/id/product_name"):
        text = read_value(root / path)
        if text:
            return text.rstrip("\x00")
    return None


# (regular expression, id, name), first match wins, so specific entries come before the general ones of their
# family. Ids and names may use the match's groups (\1). Searched case-insensitively in the device-tree/DMI model
# string first, then in /proc/cpuinfo (whose "Model" line names a Raspberry Pi on its vendor kernel).
KNOWN_BOARDS: tuple[tuple[str, str, str], ...] = (
    (r"hikey\s*960", "hikey960", "HiKey960"),
    (r"firefly\W*rk3399|rk3399\W.*firefly", "firefly-rk3399", "Firefly RK3399"),
    (r"rk3399", "rk3399", "RK3399 board"),
    (r"jetson\W*agx\W*orin", "jetson-agx-orin", "Jetson AGX Orin"),
    (r"jetson\W*orin\W*nx", "jetson-orin-nx", "Jetson Orin NX"),
    (r"jetson\W*orin\W*nano", "jetson-orin-nano", "Jetson Orin Nano"),
    (r"jetson\W*xavier\W*nx", "jetson-xavier-nx", "Jetson Xavier NX"),
    (r"jetson\W*agx(\W*xavier)?\b|jetson\W*xavier", "jetson-agx-xavier", "Jetson AGX Xavier"),
    (r"jetson\W*nano", "jetson-nano", "Jetson Nano"),
    (r"jetson\W*tx2|^quill$", "jetson-tx2", "Jetson TX2"),
    (r"jetson\W*tx1", "jetson-tx1", "Jetson TX1"),
    (r"jetson", "jetson", "NVIDIA Jetson"),
    (r"raspberry pi compute module (\d+)", r"raspberry-pi-cm\1", r"Raspberry Pi Compute Module \1"),
    (r"raspberry pi zero 2", "raspberry-pi-zero-2", "Raspberry Pi Zero 2"),
    (r"raspberry pi (\d+)", r"raspberry-pi-\1", r"Raspberry Pi \1"),
    (r"raspberry pi", "raspberry-pi", "Raspberry Pi"),
)


def known_board(model_string: str | None, cpu_info: str | None) -> dict:
    """``{"id", "name"}`` of the known board a model string (and /proc/cpuinfo text) names, else id ``generic``
    with the model string itself (or null) as name."""
    for text in (model_string, cpu_info):
        for pattern, board_id, name in KNOWN_BOARDS:
            match = re.search(pattern, text or "", re.IGNORECASE | re.MULTILINE)
            if match:
                return {"id": match.expand(board_id), "name": match.expand(name)}
    return {"id": "generic", "name": model_string or None}


def cpus(root: Path) -> list[dict]:
    """One entry per CPU: id, current/min/max frequency (kHz), governor."""
    base = root / "sys/devices/system/cpu"
    out = []
    for entry in sorted(base.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        freq = entry / "cpufreq"
        out.append({
            "cpu": int(entry.name[3:]),
            "online": read_int(entry / "online") != 0,
            "cur_khz": read_int(freq / "scaling_cur_freq"),
            "min_khz": read_int(freq / "cpuinfo_min_freq"),
            "max_khz": read_int(freq / "cpuinfo_max_freq"),
            "governor": read_value(freq / "scaling_governor"),
        })
    return out


def clusters(cpu_list: list[dict]) -> list[dict]:
    """CPUs grouped by maximum frequency, fastest first. Two groups of known frequency are named ``big`` and
    ``LITTLE``; a single group is ``all``; any other grouping (three clusters, an unreadable frequency) is
    ``cluster0``, ``cluster1``, ... in that order, since calling one of them big or LITTLE would be a guess."""
    groups: dict[int | None, list[int]] = {}
    for cpu in cpu_list:
        groups.setdefault(cpu["max_khz"], []).append(cpu["cpu"])
    ordered = sorted(groups.items(), key=lambda kv: -(kv[0] or 0))
    if len(ordered) == 1:
        names = ["all"]
    elif len(ordered) == 2 and None not in groups:
        names = ["big", "LITTLE"]
    else:
        names = [f"cluster{i}" for i in range(len(ordered))]
    return [{"name": name, "max_khz": khz, "cpus": ids} for name, (khz, ids) in zip(names, ordered, strict=True)]


CLUSTER_CHOICES = ("all", "big", "LITTLE")


def cluster_cpus(info_or_root: dict | str | os.PathLike, which: str) -> list[int]:
    """The CPU ids of cluster ``which`` (``all``, ``big`` or ``LITTLE``, any case) of a board, given its
    ``machine_info``/``platform_snapshot`` or its root folder. A cluster the board does not have is a UserError that
    says what it has."""
    wanted = {choice.lower(): choice for choice in CLUSTER_CHOICES}.get(str(which).lower())
    if wanted is None:
        raise UserError(f"unknown cluster {which!r}: expected one of {', '.join(CLUSTER_CHOICES)}")
    groups = info_or_root["clusters"] if isinstance(info_or_root, dict) else clusters(cpus(Path(info_or_root)))
    if not groups:
        raise UserError("no CPUs listed under sys/devices/system/cpu: no cluster to choose from")
    if wanted == "all":
        return sorted(cpu for group in groups for cpu in group["cpus"])
    for group in groups:
        if group["name"] == wanted:
            return sorted(group["cpus"])
    has = ", ".join(f"{g['name']} (CPUs {format_cpus(g['cpus'])}"
                    + (f", {g['max_khz'] // 1000} MHz)" if g["max_khz"] else ")") for g in groups)
    raise UserError(f"this board has no {wanted} cluster; it has {has}")


def format_cpus(ids: list[int]) -> str:
    """[0, 1, 2, 3, 6] -> ``0-3,6`` (the form ``run --cpus`` takes)."""
    ids = sorted(ids)
    parts = []
    start = previous = None
    for cpu in [*ids, None]:
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(parts)


# Markers of a GPU in a devfreq device name (``e82c0000.mali``, ``ff9a0000.gpu``, ``17000000.gv11b``) or in its
# device-tree compatible string; other devfreq devices (memory controllers, buses) are not GPUs.
_GPU_MARKERS = re.compile(r"gpu|mali|gk20a|gm20b|gp10b|gv11b|ga10b|adreno|kgsl", re.IGNORECASE)


def gpu_devfreq(root: Path) -> list[dict]:
    """The GPU devfreq devices (``sys/class/devfreq/*``): governor, current/min/max and available frequencies (Hz)."""
    out = []
    for device in sorted((root / "sys/class/devfreq").glob("*")):
        compatible = (read_value(device / "device/of_node/compatible") or "").replace("\x00", " ")
        if not _GPU_MARKERS.search(f"{device.name} {compatible}"):
            continue
        available = read_words(device / "available_frequencies")
        out.append({
            "name": device.name,
            "governor": read_value(device / "governor"),
            "available_governors": read_words(device / "available_governors"),
            "cur_hz": read_int(device / "cur_freq"),
            "min_hz": read_int(device / "min_freq"),
            "max_hz": read_int(device / "max_freq"),
            "available_hz": sorted(int(f) for f in available if f.isdigit()) if available is not None else None,
        })
    return out


def temperatures(root: Path) -> list[dict]:
    out = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        millideg = read_int(zone / "temp")
        if millideg is not None:
            out.append({"zone": zone.name, "type": read_value(zone / "type"), "celsius": millideg / 1000})
    return out


def memory_bytes(root: Path) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+) kB", read_value(root / "proc/meminfo") or "", re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def os_release(root: Path) -> str | None:
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', read_value(root / "etc/os-release") or "", re.MULTILINE)
    return match.group(1) if match else None


COMPILERS = ("gcc", "g++", "clang", "cc", "ccache")


def compilers(path: str | None = None) -> dict:
    """For each of gcc, g++, clang, cc and ccache on ``path`` (default: $PATH): ``{"path", "version"}`` with the
    first line of its ``--version``, or null when absent. These run on this machine whatever the sysfs root."""
    out = {}
    for name in COMPILERS:
        found = shutil.which(name, path=path)
        out[name] = {"path": found, "version": _first_line_of([found, "--version"])} if found else None
    return out


def _first_line_of(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def machine_info(root: str | os.PathLike = "/", with_opencl: bool = True) -> dict:
    root = Path(root)
    cpu_list = cpus(root)
    info = {
        "hostname": platform.node(),
        "board_model": board_model(root),
        "cpu_model": cpu_model(root),
        "arch": platform.machine(),
        # the ISA extensions that change a MobileNet's speed: AVX2, AVX-512 subsets, AMX, NEON, dotprod, SVE...
        "isa": isa(root, platform.machine()),
        "cpu_count": os.cpu_count(),
        "cpus": cpu_list,
        "clusters": clusters(cpu_list),
        "temperatures": temperatures(root),
        "memory_bytes": memory_bytes(root),
        "os": os_release(root),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        # None, or why this runner or its native programs run emulated (issue #15): results to check correctness
        # with, never timings of a CPU
        "emulated": emulation.detect(),
    }
    if with_opencl:
        info["opencl"] = opencl_remembered()
    return info


def platform_snapshot(root: str | os.PathLike = "/", with_opencl: bool = True) -> dict:
    """``machine_info`` plus the known board (``board``), the GPU devfreq devices (``gpus``), the compilers
    (``compilers``) and the power meters (``power_meters``): what provisioning records about a board. JSON-able;
    every key is always present."""
    root = Path(root)
    info = machine_info(root, with_opencl=with_opencl)
    info["board"] = known_board(info["board_model"], read_value(root / "proc/cpuinfo"))
    info["gpus"] = gpu_devfreq(root)
    info["compilers"] = compilers()
    from requestflow.board.power_meters import detect
    info["power_meters"] = detect(root)  # for requestflow run --power-meter (requestflow.board.power_meters)
    return info


def snapshot_frequencies_and_temperatures(root: str | os.PathLike = "/") -> dict:
    """The quickly changing part, read before and after a run to see clock or thermal changes."""
    root = Path(root)
    return {"cur_khz": {str(c["cpu"]): c["cur_khz"] for c in cpus(root)},
            "temperatures": {t["zone"]: t["celsius"] for t in temperatures(root)}}
