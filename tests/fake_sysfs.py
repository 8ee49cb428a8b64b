"""Fake sysfs/procfs trees for simulated boards: plain files laid out like a big.LITTLE board's ``/sys`` and
``/proc``, so that platform detection, clock pinning and cool-down run for real without touching this machine's
clocks (a board's Connection extra ``sysfs_root`` points at the tree)."""

from __future__ import annotations

from pathlib import Path

GOVERNORS = "interactive conservative ondemand userspace powersave performance"


def hikey960_tree(root: Path, governors: str = GOVERNORS, celsius: float = 41.0) -> Path:
    """A HiKey960-like tree: cpu0-3 LITTLE (533-1844 MHz), cpu4-7 big (903-2362 MHz), governor ``schedutil``
    with the frequencies at their minimum, a Mali GPU devfreq device and two thermal zones."""
    clusters = {range(0, 4): (533000, 1844000), range(4, 8): (903000, 2362000)}
    for cpus, (low, high) in clusters.items():
        for cpu in cpus:
            freq = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            _write(freq, {"cpuinfo_min_freq": low, "cpuinfo_max_freq": high, "scaling_min_freq": low,
                          "scaling_max_freq": high, "scaling_cur_freq": low, "scaling_governor": "schedutil",
                          "scaling_available_governors": f"{governors} schedutil",
                          "scaling_available_frequencies": f"{low} {high}"})
            _write(root / f"sys/devices/system/cpu/cpu{cpu}", {"online": 1})
    _write(root / "sys/class/devfreq/e82c0000.mali", {
        "governor": "simple_ondemand", "available_governors": "simple_ondemand performance powersave",
        "cur_freq": 178000000, "min_freq": 178000000, "max_freq": 1037000000,
        "available_frequencies": "178000000 533000000 807000000 960000000 1037000000"})
    for zone, kind in ((0, "soc_thermal"), (1, "cls0")):
        _write(root / f"sys/class/thermal/thermal_zone{zone}", {"type": kind, "temp": int(celsius * 1000)})
    _write(root / "proc/device-tree", {"model": "HiKey960\x00"})
    return root


def governors(root: Path) -> dict[int, str]:
    """The governor of each CPU of a tree."""
    return {int(path.parent.parent.name[3:]): path.read_text().strip()
            for path in sorted(root.glob("sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"))}


def _write(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name).write_text(f"{value}\n")
