"""What the board is, read from the board itself: CPU, clusters, frequencies, temperatures, OS, OpenCL.

Every reader is best effort: what cannot be read is left out (or null), never guessed. The sysfs/procfs root is a
parameter so that tests can point it at a fake tree.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def cpu_model(root: Path) -> str | None:
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    parts = re.findall(r"^CPU part\s*:\s*(\S+)$", cpuinfo, re.MULTILINE)
    return f"ARM CPU parts {' '.join(sorted(set(parts)))}" if parts else None


def board_model(root: Path) -> str | None:
    """The device-tree model string (HiKey960, RK3399 boards, Jetson, Raspberry Pi), or the DMI product name."""
    for path in ("proc/device-tree/model", "sys/firmware/devicetree/base/model", "sys/class/dmi/id/product_name"):
        text = _read(root / path)
        if text:
            return text.rstrip("\x00")
    return None


def cpus(root: Path) -> list[dict]:
    """One entry per CPU: id, current/min/max frequency (kHz), governor."""
    base = root / "sys/devices/system/cpu"
    out = []
    for entry in sorted(base.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        freq = entry / "cpufreq"
        out.append({
            "cpu": int(entry.name[3:]),
            "online": _int(entry / "online") != 0,
            "cur_khz": _int(freq / "scaling_cur_freq"),
            "min_khz": _int(freq / "cpuinfo_min_freq"),
            "max_khz": _int(freq / "cpuinfo_max_freq"),
            "governor": _read(freq / "scaling_governor"),
        })
    return out


def clusters(cpu_list: list[dict]) -> list[dict]:
    """CPUs grouped by maximum frequency, fastest first (big.LITTLE: big, then LITTLE)."""
    groups: dict[int | None, list[int]] = {}
    for cpu in cpu_list:
        groups.setdefault(cpu["max_khz"], []).append(cpu["cpu"])
    ordered = sorted(groups.items(), key=lambda kv: -(kv[0] or 0))
    return [{"max_khz": khz, "cpus": ids} for khz, ids in ordered]


def temperatures(root: Path) -> list[dict]:
    out = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        millideg = _int(zone / "temp")
        if millideg is not None:
            out.append({"zone": zone.name, "type": _read(zone / "type"), "celsius": millideg / 1000})
    return out


def memory_bytes(root: Path) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+) kB", _read(root / "proc/meminfo") or "", re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def os_release(root: Path) -> str | None:
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read(root / "etc/os-release") or "", re.MULTILINE)
    return match.group(1) if match else None


def opencl() -> dict:
    """Platforms and devices through pyopencl, when it and a driver are present."""
    try:
        import pyopencl as cl
    except ImportError:
        return {"available": False, "reason": "pyopencl not installed"}
    try:
        platforms = cl.get_platforms()
    except Exception as exc:  # pyopencl raises its own LogicError/RuntimeError without an ICD
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "platforms": [
        {"name": p.name, "vendor": p.vendor, "version": p.version,
         "devices": [{"name": d.name, "type": cl.device_type.to_string(d.type), "version": d.version,
                      "driver_version": d.driver_version, "compute_units": d.max_compute_units,
                      "max_clock_mhz": d.max_clock_frequency} for d in p.get_devices()]}
        for p in platforms]}


def machine_info(root: str | os.PathLike = "/", with_opencl: bool = True) -> dict:
    root = Path(root)
    cpu_list = cpus(root)
    info = {
        "hostname": platform.node(),
        "board_model": board_model(root),
        "cpu_model": cpu_model(root),
        "arch": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus": cpu_list,
        "clusters": clusters(cpu_list),
        "temperatures": temperatures(root),
        "memory_bytes": memory_bytes(root),
        "os": os_release(root),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }
    if with_opencl:
        info["opencl"] = opencl()
    return info


def snapshot_frequencies_and_temperatures(root: str | os.PathLike = "/") -> dict:
    """The quickly changing part, read before and after a run to see clock or thermal changes."""
    root = Path(root)
    return {"cur_khz": {str(c["cpu"]): c["cur_khz"] for c in cpus(root)},
            "temperatures": {t["zone"]: t["celsius"] for t in temperatures(root)}}
