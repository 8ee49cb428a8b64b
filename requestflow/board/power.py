"""Measured power and energy on the board: power meters as plug-ins, a sampler thread, and the run's ``energy``.

**Meters** (``parse_meter``: ``hwmon[:ROOT]``, ``rapl[:ROOT]``, ``command:CMD``, ``auto``, ``none``). ROOT is the
same root as the clocks' and the platform's (``--root``, a board's Connection extra ``sysfs_root``): the folder
holding ``sys/`` (default ``/``); a folder that is itself a sysfs (holding ``class/``) is taken as it is.

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
- **none**: no measurement (the scoreboard's estimate stays).

**Sampling** (:class:`Sampler`): a daemon thread reads the meter every 1/rate s (default ``DEFAULT_RATE_HZ``; a
command meter pushes at its own rate) while the runner marks its phases: an idle baseline (backend loaded, nothing
running) before the warm-up, then the timed region. The marks read the meter too, on the runner's thread, just
outside the timed region, so a counter's energy is exact between them. ``energy_summary`` turns the readings into
the document's ``energy``: mean power in each phase (time-weighted), the timed region's p90 power, joules per
inference (per timed run of one batch, like the latency) and above idle, a bounded trace. Any failure of the meter
(a file that disappears or cannot be read, a counter that goes backwards, a command that dies) stops the sampling
and makes ``energy.valid`` false with the reason; the latency result is never touched.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from requestflow.errors import UserError

DEFAULT_RATE_HZ = 200.0
DEFAULT_IDLE_S = 1.0
TRACE_POINTS = 200  # at most, in the document's trace
COUNTER_WINDOW_S = 0.02  # a counter's power trace and p90: differences over at least this long
MIN_COUNTER_PHASE_S = 0.1  # RAPL counts in steps of about 1 ms: a shorter phase could be off by more than 2%
MIN_ACTIVE_READINGS = 5  # fewer readings of an instantaneous meter in a phase (its marks included): too short
KINDS = ("hwmon", "rapl", "command", "auto", "none")
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


# ---- meters ---------------------------------------------------------------------------------------------------------


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


def check_spec(spec: str, sysfs_root: str = "/") -> str:
    """A ``--power-meter`` spec checked for its form only (nothing read: the controller checks a board's
    Connection extra with it), with hwmon/rapl/auto given the board's ``sysfs_root`` when they name no root of
    their own. UserError for anything else."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("power_meter: expected hwmon[:ROOT], rapl[:ROOT], command:CMD, auto or none")
    kind, colon, argument = spec.strip().partition(":")
    if kind not in KINDS or (kind == "none" and colon) or (kind == "command" and not shlex.split(argument)):
        raise UserError(f"power_meter {spec!r}: expected hwmon[:ROOT], rapl[:ROOT], command:CMD, auto or none")
    if kind in ("hwmon", "rapl", "auto") and not argument:
        return kind if sysfs_root in ("", "/") else f"{kind}:{sysfs_root}"
    if kind in ("hwmon", "rapl", "auto") and not argument.startswith("/"):
        raise UserError(f"power_meter {spec!r}: ROOT must be an absolute path")
    return spec.strip()


def parse_meter(spec: str | None):
    """``--power-meter`` -> a meter, or None for ``none``. Bad specs and absent meters are UserErrors."""
    if spec is None or spec == "none":
        return None
    kind, _, argument = spec.partition(":")
    if kind == "command":
        return CommandMeter(argument)
    if kind not in KINDS:
        raise UserError(f"--power-meter {spec!r}: expected hwmon[:ROOT], rapl[:ROOT], command:CMD, auto or none")
    root = argument or "/"
    if not os.path.isdir(root):
        raise UserError(f"--power-meter {spec}: {root} is not a folder")
    if kind == "hwmon":
        return HwmonMeter(root)
    if kind == "rapl":
        return RaplMeter(root)
    found = detect(root)  # auto
    return parse_meter(found[0]["spec"]) if found else None


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


# ---- sampling -------------------------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Reads ``meter`` every 1/``rate_hz`` s on a thread of its own, and at each ``mark``."""

    meter: object
    rate_hz: float = DEFAULT_RATE_HZ
    readings: list = field(default_factory=list)  # (monotonic s, watts or cumulative joules)
    marks: dict = field(default_factory=dict)  # phase boundary -> monotonic s
    error: str | None = None

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="power-sampler", daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        if not getattr(self.meter, "push", False):
            self._read()
            self.thread.start()

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic() + period
        while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
            if self._read() is None:
                return
            next_at += period
            now = time.monotonic()
            if next_at < now:  # fell behind (a busy CPU): skip, do not burst
                next_at = now + period

    def _read(self) -> float | None:
        """The reading's time, or None when the meter failed (``error`` says why)."""
        if self.error is not None:
            return None
        try:
            value = self.meter.read()
        except MeterError as exc:
            self.error = f"{exc} (after {time.monotonic() - self.started:.2f} s)"
            return None
        except Exception as exc:  # noqa: BLE001 - whatever the meter does, the run goes on
            self.error = f"the meter failed: {type(exc).__name__}: {exc}"
            return None
        t = time.monotonic()
        with self.lock:
            self.readings.append((t, float(value)))
        return t

    def mark(self, name: str) -> None:
        """A phase boundary (``idle_start``, ``idle_end``, ``active_start``, ``active_end``), read at once."""
        at = None if getattr(self.meter, "push", False) else self._read()
        self.marks[name] = time.monotonic() if at is None else at  # a counter's energy is exact between marks

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        if getattr(self.meter, "push", False):
            self.readings = self.meter.drain()
            self.error = self.error or self.meter.error
        self.finished = time.monotonic()


def energy_summary(sampler: Sampler, inferences: int, batch_size: int = 1) -> dict:
    """The document's ``energy`` from a stopped sampler whose marks cover the idle baseline and the timed region."""
    meter = sampler.meter
    readings = sorted(sampler.readings)
    times = np.array([r[0] for r in readings], np.float64)
    values = np.array([r[1] for r in readings], np.float64)
    elapsed = (times[-1] - times[0]) if times.size > 1 else 0.0
    out = {"meter": meter.identity(), "requested_rate_hz": None if getattr(meter, "push", False) else sampler.rate_hz,
           "rate_hz": round(float((times.size - 1) / elapsed), 1) if elapsed > 0 else None, "samples": int(times.size),
           "idle_w": None, "active_w": None, "active_p90_w": None, "joules": None, "inferences": inferences,
           "joules_per_inference": None, "joules_per_inference_above_idle": None, "joules_per_image": None,
           "valid": False, "reason": None, "trace": None}
    marks = sampler.marks
    if sampler.error:
        out["reason"] = sampler.error
        return out
    missing = [m for m in ("idle_start", "idle_end", "active_start", "active_end") if m not in marks]
    if missing:
        out["reason"] = f"the run did not reach its {missing[0].replace('_', ' ')}"
        return out
    times_w, watts = _power_series(meter, times, values)
    out["trace"] = _trace(times_w - marks["idle_start"], watts)
    idle = _phase(meter, times, values, times_w, watts, marks["idle_start"], marks["idle_end"])
    active = _phase(meter, times, values, times_w, watts, marks["active_start"], marks["active_end"])
    if isinstance(idle, str) or isinstance(active, str):
        out["reason"] = idle if isinstance(idle, str) else active
        if isinstance(active, dict):
            out["active_w"], out["active_p90_w"] = active["mean_w"], active["p90_w"]
        return out
    if min(idle["mean_w"], active["mean_w"]) < 0 or (active["p90_w"] is not None and active["p90_w"] < 0):
        out["reason"] = f"negative power read ({min(idle['mean_w'], active['mean_w']):.3g} W)"
        return out
    duration = marks["active_end"] - marks["active_start"]
    joules = active["mean_w"] * duration
    out.update(idle_w=idle["mean_w"], active_w=active["mean_w"], active_p90_w=active["p90_w"], joules=joules,
               joules_per_inference=joules / inferences if inferences else None,
               joules_per_inference_above_idle=(active["mean_w"] - idle["mean_w"]) * duration / inferences
               if inferences else None,
               joules_per_image=joules / (inferences * batch_size) if inferences else None,
               idle_s=marks["idle_end"] - marks["idle_start"], active_s=duration, valid=True)
    return out


def _power_series(meter, times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, watts): the readings themselves, or a counter's differences over windows of at least
    ``COUNTER_WINDOW_S`` at their midpoints (RAPL counts in steps of about a millisecond: a 5 ms difference would be
    off by up to 20%)."""
    if not meter.counter:
        return times, values
    kept = [0]
    for index in range(1, times.size):
        if times[index] - times[kept[-1]] >= COUNTER_WINDOW_S:
            kept.append(index)
    if len(kept) < 2:
        return times[:0], values[:0]
    t, e = times[kept], values[kept]
    return (t[1:] + t[:-1]) / 2, np.diff(e) / np.diff(t)


def _phase(meter, times, values, times_w, watts, start: float, end: float) -> dict | str:
    """``{"mean_w", "p90_w"}`` over [start, end], or why it cannot be measured."""
    span = end - start
    if span <= 0:
        return "a phase of no duration"
    inside = (times_w >= start) & (times_w <= end)
    p90 = float(np.percentile(watts[inside], 90)) if inside.any() else None
    if meter.counter:  # exact between the marks' own readings
        if span < MIN_COUNTER_PHASE_S:
            return (f"a {span * 1e3:.0f} ms phase is too short for a counter that advances in ~1 ms steps (at least "
                    f"{MIN_COUNTER_PHASE_S * 1e3:.0f} ms): run longer (--min-duration-s)")
        if times.size < 2 or times[0] > start or times[-1] < end:
            return "the RAPL counter was not read at both ends of a phase"
        energy = float(np.interp(end, times, values) - np.interp(start, times, values))
        return {"mean_w": energy / span, "p90_w": p90}
    count = int(inside.sum())
    if count < MIN_ACTIVE_READINGS:
        return (f"too few meter readings in a {span * 1e3:.0f} ms phase ({count}; at least {MIN_ACTIVE_READINGS}): "
                "run longer (--min-duration-s) or sample faster")
    # time-weighted mean of the piecewise-linear power over [start, end] (edges interpolated from the neighbours)
    grid_t = np.concatenate(([start], times_w[inside], [end]))
    grid_w = np.interp(grid_t, times_w, watts)
    trapezoid = float(np.sum((grid_w[1:] + grid_w[:-1]) / 2 * np.diff(grid_t)))
    return {"mean_w": trapezoid / span, "p90_w": p90}


def _trace(times: np.ndarray, watts: np.ndarray) -> dict:
    """At most TRACE_POINTS (t, W) pairs: each the mean of an equal share of the readings."""
    n = times.size
    if n == 0:
        return {"t_s": [], "w": [], "of": 0}
    groups = np.array_split(np.arange(n), min(n, TRACE_POINTS))
    return {"t_s": [round(float(times[g].mean()), 4) for g in groups],
            "w": [round(float(watts[g].mean()), 4) for g in groups], "of": int(n)}
