"""Measured power and energy on the board: the ``--power-meter`` spec, a sampler thread, and the run's ``energy``.

**Meters** (``parse_meter``: ``hwmon[:ROOT]``, ``rapl[:ROOT]``, ``command:CMD``, ``auto``, ``none``; the meters
themselves, and how each reads the board, are ``requestflow.board.power_meters``): hwmon sensors (the board's input
channel, else the sum of every channel), RAPL counters (``psys``, else the packages), a command printing
``TIMESTAMP WATTS`` lines (from the board's configuration, never from a trigger form), the first meter found
(``auto``), or none (the scoreboard's estimate stays).

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

import os
import shlex
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from requestflow.board.power_meters import CommandMeter, HwmonMeter, MeterError, RaplMeter, detect
from requestflow.errors import UserError

DEFAULT_RATE_HZ = 200.0
DEFAULT_IDLE_S = 1.0
TRACE_POINTS = 200  # at most, in the document's trace
COUNTER_WINDOW_S = 0.02  # a counter's power trace and p90: differences over at least this long
MIN_COUNTER_PHASE_S = 0.1  # RAPL counts in steps of about 1 ms: a shorter phase could be off by more than 2%
MIN_ACTIVE_READINGS = 5  # fewer readings of an instantaneous meter in a phase (its marks included): too short
KINDS = ("hwmon", "rapl", "command", "auto", "none")


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
    out["trace"] = bounded_trace(times_w - marks["idle_start"], watts)
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


def bounded_trace(times: np.ndarray, watts: np.ndarray) -> dict:
    """At most TRACE_POINTS (t, W) pairs: each the mean of an equal share of the readings."""
    n = times.size
    if n == 0:
        return {"t_s": [], "w": [], "of": 0}
    groups = np.array_split(np.arange(n), min(n, TRACE_POINTS))
    return {"t_s": [round(float(times[g].mean()), 4) for g in groups],
            "w": [round(float(watts[g].mean()), 4) for g in groups], "of": int(n)}
