"""Fake power meters for tests: sysfs trees (hwmon chips, RAPL zones) whose files a writer thread changes over time
with a known power profile, like a real sensor driver would (``requestflow.board.power`` reads them through a
``sysfs_root``, as the clocks do)."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path


def write(path: Path, value) -> None:
    """Replace ``path``'s content at once (a reader sees the old or the new value, never half of one: as sysfs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"{value}\n")
    os.replace(temporary, path)


def ina3221(root: Path, chip: str = "hwmon0") -> Path:
    """A Jetson-like INA3221: channel 1 VDD_IN (the board's input), 2 VDD_CPU_GPU_CV, 3 VDD_SOC; current and bus
    voltage per channel, no power files."""
    folder = root / "sys/class/hwmon" / chip
    write(folder / "name", "ina3221")
    for index, label in ((1, "VDD_IN"), (2, "VDD_CPU_GPU_CV"), (3, "VDD_SOC")):
        write(folder / f"in{index}_label", label)
        write(folder / f"in{index}_input", 5000)
        write(folder / f"curr{index}_input", 100)
    return folder


def ina231_rails(root: Path) -> list[Path]:
    """ODROID-XU4-like: four INA231 chips, one rail each (A15, A7, GPU, memory), power in µW, no board total."""
    folders = []
    for number, rail in enumerate(("sensor_arm", "sensor_kfc", "sensor_g3d", "sensor_mem")):
        folder = root / "sys/class/hwmon" / f"hwmon{number}"
        write(folder / "name", "ina231")
        write(folder / "power1_label", rail)
        write(folder / "power1_input", 0)
        folders.append(folder)
    return folders


def rapl(root: Path, max_range_uj: int = 262143328850, start_uj: int = 0) -> Path:
    folder = root / "sys/class/powercap/intel-rapl:0"
    write(folder / "name", "package-0")
    write(folder / "max_energy_range_uj", max_range_uj)
    write(folder / "energy_uj", start_uj)
    write(root / "sys/class/powercap/intel-rapl:0:0/name", "core")  # a sub-zone: part of the package, not read
    write(root / "sys/class/powercap/intel-rapl:0:0/energy_uj", 0)
    return folder


class Profile(threading.Thread):
    """Writes a power profile into a fake meter every ``period`` s: ``watts`` now (set by the test: 2 W idle, 5 W
    during inference), with a zero-mean ripple of ``ripple`` W so that the files do change over time.

    ``kind``: "ina3221" (VDD_IN current at 5 V; the other channels carry noise the meter must ignore), "ina231"
    (split over four rails in fixed shares), "rapl" (a counter integrating the power, wrapping at its range)."""

    def __init__(self, root: Path, kind: str, watts: float = 2.0, ripple: float = 0.1, period: float = 0.001,
                 max_range_uj: int = 262143328850, start_uj: int = 0) -> None:
        super().__init__(daemon=True)
        self.root, self.kind, self.watts, self.ripple, self.period = root, kind, watts, ripple, period
        self.max_range_uj = max_range_uj
        self.stopping = threading.Event()
        self.paused = False
        if kind == "ina3221":
            self.folder = ina3221(root)
        elif kind == "ina231":
            self.folders = ina231_rails(root)
        else:
            self.folder = rapl(root, max_range_uj, start_uj)
            self.energy_uj = float(start_uj)
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self._write(self.last)

    def set(self, watts: float) -> None:
        """From now on, ``watts`` (the energy so far integrated at the power before)."""
        with self.lock:
            self._write(time.monotonic())
            self.watts = watts
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        if self.paused:
            return
        watts = self.watts + self.ripple * math.sin(2 * math.pi * 37 * now)
        if self.kind == "ina3221":
            write(self.folder / "in1_input", 5000)
            write(self.folder / "curr1_input", round(watts / 5.0 * 1000, 3))  # mA at 5000 mV
            write(self.folder / "curr2_input", round(700 + 300 * math.sin(now), 3))
        elif self.kind == "ina231":
            for folder, share in zip(self.folders, (0.5, 0.2, 0.2, 0.1), strict=True):
                write(folder / "power1_input", round(watts * share * 1e6))
        else:
            self.energy_uj += watts * (now - self.last) * 1e6
            self.energy_uj %= self.max_range_uj
            write(self.folder / "energy_uj", int(self.energy_uj))
        self.last = now

    def run(self) -> None:
        while not self.stopping.wait(self.period):
            with self.lock:
                self._write(time.monotonic())

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
