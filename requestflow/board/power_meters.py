"""The board's power meters: hwmon sensors, RAPL counters and a meter command, each read as a plug-in of
``requestflow.board.power`` (which picks one from its ``--power-meter`` spec and samples it during a run), and
``detect``, the meters a board offers (``requestflow power-meters``, the board's platform).

ROOT is the same root as the clocks' and the platform's (``--root``, a board's Connection extra ``sysfs_root``): the
folder holding ``sys/`` (default ``/``); a folder that is itself a sysfs (holding ``class/``) is taken as it is.

- **hwmon** (``sys/class/hwmon/hwmon*``): a channel is ``power<N>_input`` (µW; ``power<N>_average`` where the chip
  has no ``_input``), or ``curr<N>_input`` (mA) x ``in<N>_input`` (mV) where a chip gives current and bus voltage
  (INA219, INA226, INA231, INA3221: the HiKey, ODROID and Jetson boards' current monitors). Channels are named by
  their ``*_label`` (else chip name and index). When a channel's label names the board's input (``VDD_IN``,
  ``VIN``, ``SYS``, ``TOTAL``...: ``TOTAL_LABELS``) it alone is read, since the others are parts of it; otherwise
  every channel is summed (ODROID-XU4's INA231s measure the A15, A7, GPU and memory rails separately).
- **rapl** (``sys/class/powercap/intel-rapl:*``): the ``psys`` zone where there is one (the whole platform), else
  the sum of the top-level ``package-*`` zones (their sub-zones are parts of them). Energy by counter difference:
  ``energy_uj`` wraps at ``max_energy_range_uj``: a drop of more than half the range between two readings (a few
  milliseconds apart) is the counter passing its range and starting again; a smaller drop, or any drop of a zone
  without a range, is a counter that went backwards (reset, or not a counter): the run's energy is invalid.
- **command**: a program started for the run that prints one sample a line, ``TIMESTAMP WATTS`` (TIMESTAMP in
  seconds since the epoch, as ``time.time()``) or ``WATTS`` alone (timed on arrival): USB meters, lab instruments.
  It comes from the board's configuration (the runner's ``--power-meter``), never from a trigger form.

A meter's ``read`` returns watts (an instantaneous meter) or cumulative joules (``counter``: RAPL); a command meter
(``push``) is not polled: its readings are drained at the end. Any failure to read is a :class:`MeterError`.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from requestflow.errors import UserError

TOTAL_LABELS = re.compile(r"^(vdd_?in|vin|in|sys|system|total|board|vbus|psu|input)(\b|_|$)", re.IGNORECASE)


class MeterError(Exception):
    """The meter stopped answering or answered nonsense: the run's energy is invalid, its latency stands."""


def sysfs(root: str | os.PathLike = "/") -> Path:
    root = Path(root)
    if (root / "class").is_dir() and not (root / "sys").is_dir():
        return root
    return root / "sys"


def _read_number(path: Path) -> float:
    """One sensor file's number. os.open/read/close, not Path.read_text: fewer bytecodes holding the GIL while the
    timed runs go on (a sysfs attribute is re-read from its driver at each open)."""
    try:
        handle = os.open(path, os.O_RDONLY)
        try:
            text = os.read(handle, 128).decode("ascii", "replace").strip()
        finally:
            os.close(handle)
    except OSError as exc:
        raise MeterError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        value = float(text)
    except ValueError:
        raise MeterError(f"{path} holds {text[:40]!r}, not a number") from None
    if not math.isfinite(value):
        raise MeterError(f"{path} holds {text[:40]!r}")
    return value


@dataclass
class Channel:
    label: str
    power: Path | None = None  # µW
    current: Path | None = None  # mA
    voltage: Path | None = None  # mV

    def watts(self) -> float:
        if self.power is not None:
            return _read_number(self.power) / 1e6
        return _read_number(self.current) * _read_number(self.voltage) / 1e6

    def describe(self) -> dict:
        files = [p for p in (self.power, self.current, self.voltage) if p is not None]
        return {"label": self.label, "files": [f"{p.parent.name}/{p.name}" for p in files]}


class HwmonMeter:
    kind, counter = "hwmon", False

    def __init__(self, root: str | os.PathLike = "/") -> None:
        self.root = str(root)
        self.chips = hwmon_chips(root)
        channels = [c for chip in self.chips for c in chip["channels"]]
        if not channels:
            raise UserError(f"--power-meter hwmon: no power or current/voltage sensor under "
                            f"{sysfs(root) / 'class/hwmon'}")
        totals = [c for c in channels if TOTAL_LABELS.match(c.label.split(" ", 1)[-1])]
        self.channels = totals[:1] or channels
        self.how = "the board's input channel" if totals else "the sum of every channel"

    def identity(self) -> dict:
        return {"kind": self.kind, "root": self.root, "chips": sorted({chip["name"] for chip in self.chips}),
                "channels": [c.describe() for c in self.channels], "reads": self.how}

    def read(self) -> float:
        return sum(c.watts() for c in self.channels)

    def close(self) -> None:
        pass


def hwmon_chips(root: str | os.PathLike = "/") -> list[dict]:
    """[{name, folder, channels: [Channel]}] of the hwmon chips that give power or current x voltage."""
    chips = []
    for folder in sorted((sysfs(root) / "class/hwmon").glob("hwmon*")):
        name = _text(folder / "name") or folder.name
        channels = []
        indices = {int(m.group(2)) for p in folder.iterdir() if (m := re.match(r"(power|curr)(\d+)_", p.name))}
        for index in sorted(indices):
            power = folder / f"power{index}_input"
            if not power.exists() and (folder / f"power{index}_average").exists():
                power = folder / f"power{index}_average"
            label = (_text(folder / f"power{index}_label") or _text(folder / f"curr{index}_label")
                     or _text(folder / f"in{index}_label") or f"{index}")
            label = f"{name} {label}"
            if power.exists():
                channels.append(Channel(label, power=power))
            elif (folder / f"curr{index}_input").exists() and (folder / f"in{index}_input").exists():
                channels.append(Channel(label, current=folder / f"curr{index}_input",
                                        voltage=folder / f"in{index}_input"))
        if channels:
            chips.append({"name": name, "folder": folder.name, "channels": channels})
    return chips


class RaplMeter:
    """Cumulative joules, wrap-around handled: ``read`` returns the energy since the meter was made."""

    kind, counter = "rapl", True

    def __init__(self, root: str | os.PathLike = "/") -> None:
        self.root = str(root)
        zones = rapl_zones(root)
        psys = [z for z in zones if z["name"].startswith("psys")]
        self.zones = psys[:1] or [z for z in zones if z["name"].startswith("package")] or zones
        if not self.zones:
            raise UserError(f"--power-meter rapl: no RAPL zone under {sysfs(root) / 'class/powercap'}")
        self.last = [_read_number(z["energy"]) for z in self.zones]
        self.total_uj = 0.0
        self.lock = threading.Lock()

    def identity(self) -> dict:
        return {"kind": self.kind, "root": self.root, "zones": [f"{z['folder']} ({z['name']})" for z in self.zones]}

    def read(self) -> float:
        with self.lock:  # the sampler thread and the runner's marks both read
            for i, zone in enumerate(self.zones):
                value = _read_number(zone["energy"])
                delta = value - self.last[i]
                if delta < 0:
                    span = zone["range"]
                    if span is None or -delta < span / 2:
                        raise MeterError(f"RAPL counter {zone['energy']} went backwards ({self.last[i]:.0f} -> "
                                         f"{value:.0f} µJ)" + ("" if span is None else
                                                             f", not a wrap at {span:.0f} µJ"))
                    delta += span
                self.last[i] = value
                self.total_uj += delta
            return self.total_uj / 1e6

    def close(self) -> None:
        pass


def rapl_zones(root: str | os.PathLike = "/") -> list[dict]:
    """The top-level RAPL zones (``intel-rapl:N``, not their ``intel-rapl:N:M`` sub-zones) that have a counter."""
    zones = []
    for folder in sorted((sysfs(root) / "class/powercap").glob("intel-rapl:*")):
        if folder.name.count(":") != 1 or not (folder / "energy_uj").exists():
            continue
        span = _text(folder / "max_energy_range_uj")
        zones.append({"folder": folder.name, "name": _text(folder / "name") or folder.name,
                      "energy": folder / "energy_uj", "range": float(span) if span and span.isdigit() else None})
    return zones


class CommandMeter:
    """A program printing ``TIMESTAMP WATTS`` (or ``WATTS``) lines; read by a thread of its own."""

    kind, counter, push = "command", False, True

    def __init__(self, command: str) -> None:
        self.command = command
        argv = shlex.split(command)
        if not argv:
            raise UserError("--power-meter command: needs a command, e.g. command:'my-meter --port /dev/ttyUSB0'")
        self.offset = time.time() - time.monotonic()
        try:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                            bufsize=1)
        except OSError as exc:
            raise UserError(f"--power-meter command:{command}: cannot start it: {exc.strerror or exc}") from None
        self.readings: list[tuple[float, float]] = []
        self.error: str | None = None
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read_lines, name="power-command", daemon=True)
        self.reader.start()

    def identity(self) -> dict:
        return {"kind": self.kind, "command": self.command}

    def _read_lines(self) -> None:
        last = -math.inf
        for line in self.process.stdout:
            words = line.split()
            if not words:
                continue
            arrived = time.monotonic()
            try:
                numbers = [float(w) for w in words[:2]]
            except ValueError:
                self._fail(f"the meter command printed {line.strip()[:60]!r}, not 'TIMESTAMP WATTS'")
                return
            t = numbers[0] - self.offset if len(numbers) == 2 else arrived
            watts = numbers[-1]
            if not all(math.isfinite(x) for x in numbers) or t < last:
                self._fail(f"the meter command's timestamps went backwards or are not numbers ({line.strip()[:60]!r})")
                return
            last = t
            with self.lock:
                self.readings.append((t, watts))
        self._fail(f"the meter command ended (exit status {self.process.wait()})", only_if_running=True)

    def _fail(self, reason: str, only_if_running: bool = False) -> None:
        with self.lock:
            if self.error is None and not (only_if_running and getattr(self, "closing", False)):
                self.error = reason

    def read(self) -> float:
        raise MeterError("a command meter is not polled")

    def drain(self) -> list[tuple[float, float]]:
        with self.lock:
            return list(self.readings)

    def close(self) -> None:
        self.closing = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=2)


def detect(root: str | os.PathLike = "/") -> list[dict]:
    """The meters this board offers, best first (what provisioning records in the board's platform):
    ``[{"kind", "spec", "description"}]``, empty when there is none."""
    found = []
    root_text = str(root)
    suffix = "" if root_text == "/" else f":{root_text}"
    try:
        for chip in hwmon_chips(root):
            labels = ", ".join(c.label for c in chip["channels"])
            found.append({"kind": "hwmon", "spec": f"hwmon{suffix}", "description": f"{chip['folder']}: {labels}"})
    except OSError:
        pass
    try:
        zones = rapl_zones(root)
        if zones:
            found.append({"kind": "rapl", "spec": f"rapl{suffix}",
                          "description": ", ".join(f"{z['folder']} ({z['name']})" for z in zones)})
    except OSError:
        pass
    return found


def no_meter_line(root: str | os.PathLike = "/") -> str:
    where = sysfs(root)
    return (f"no power meter found ({where / 'class/hwmon'} has no power or current sensor, "
            f"{where / 'class/powercap'} no RAPL zone): energy stays an estimate; add one with requestflow run "
            "--power-meter command:CMD (a program printing 'TIMESTAMP WATTS' lines) or hwmon:ROOT / rapl:ROOT")


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None

