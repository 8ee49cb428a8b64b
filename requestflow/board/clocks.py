"""Pinning a board's CPU and GPU clocks at their maximum for a sweep, restoring them afterwards, and waiting for the
board to cool down between points.

Why: a governor that scales the clock with the load (schedutil, ondemand, a GPU's own) makes latencies depend on
what ran just before, so a sweep pins every clock at its maximum first and restores the board afterwards.

How, per CPU (``sys/devices/system/cpu/cpuN/cpufreq``): governor ``performance`` when offered, else ``userspace``
with ``scaling_setspeed`` at ``cpuinfo_max_freq``, else ``scaling_min_freq = scaling_max_freq = cpuinfo_max_freq``.
Per GPU devfreq device (``sys/class/devfreq/*``, see ``machine.gpu_devfreq``): governor ``performance`` when offered,
else ``min_freq = max_freq =`` the highest available frequency. Every setting is read back, and a device is reported
``pinned`` only when the read-back values hold; a device that refuses (no permission, EINVAL, missing file) is
reported with its reason, never raised.

The original settings go to a state file *before* anything is written, and only once: a second pin, or a pin after
a crash, keeps the originals already recorded, so pinned values are never mistaken for originals. The state file also
holds the set of holders (several sweeps may pin one board); ``restore`` removes its holder and writes the originals
back only when no holder is left (or when forced), then deletes the state file. Every path is under ``root`` so that
tests use fake sysfs trees; every function returns a JSON-able report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from requestflow.board.files import atomic_write_text
from requestflow.board.machine import gpu_devfreq, read_int, read_value, read_words, temperatures
from requestflow.errors import UserError

STATE_VERSION = 1
# What is saved and restored, per device kind. ``scaling_setspeed`` only means something under ``userspace``.
CPU_SETTINGS = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")
GPU_SETTINGS = ("governor", "min_freq", "max_freq")


# ---- devices --------------------------------------------------------------------------------------------------


def _cpufreq_dirs(root: Path) -> dict[str, Path]:
    """{"0": .../cpu0/cpufreq, ...} for the CPUs that have cpufreq, in CPU order."""
    base = root / "sys/devices/system/cpu"
    found = sorted((p for p in base.glob("cpu[0-9]*") if (p / "cpufreq").is_dir()), key=lambda p: int(p.name[3:]))
    return {p.name[3:]: p / "cpufreq" for p in found}


def _gpu_dirs(root: Path) -> dict[str, Path]:
    return {gpu["name"]: root / "sys/class/devfreq" / gpu["name"] for gpu in gpu_devfreq(root)}


def _originals(folder: Path, settings: tuple[str, ...]) -> dict:
    values = {name: read_value(folder / name) for name in settings}
    if "scaling_setspeed" in values and values.get("scaling_governor") != "userspace":
        values["scaling_setspeed"] = None  # reads "<unsupported>" under any other governor
    return {name: value for name, value in values.items() if value is not None}


class _WriteError(Exception):
    """A sysfs write that did not take: the message is the report's reason."""


def _write(folder: Path, name: str, value: str | int) -> None:
    """Write one sysfs attribute. Never creates a file: a missing attribute is an error, as in sysfs."""
    path = folder / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise _WriteError(f"cannot write {value} to {path}: {exc.strerror or exc}") from None


def _write_min_max(folder: Path, min_name: str, max_name: str, low: str | int, high: str | int) -> None:
    """Set a min/max pair without passing through min > max (EINVAL): when the new minimum is above the current
    maximum, the maximum goes first, else the minimum does."""
    current_max = read_int(folder / max_name)
    if current_max is not None and int(low) > current_max:
        _write(folder, max_name, high)
        _write(folder, min_name, low)
    else:
        _write(folder, min_name, low)
        _write(folder, max_name, high)


def _pin_cpu(folder: Path) -> dict:
    top = read_int(folder / "cpuinfo_max_freq")
    if top is None:
        return {"pinned": False, "reason": f"{folder / 'cpuinfo_max_freq'} unreadable: maximum frequency unknown"}
    governors = read_words(folder / "scaling_available_governors") or []
    try:
        if "performance" in governors:
            method = "performance"
            _write(folder, "scaling_max_freq", top)
            _write(folder, "scaling_governor", "performance")
        elif "userspace" in governors:
            method = "userspace"
            _write(folder, "scaling_max_freq", top)
            _write(folder, "scaling_governor", "userspace")
            _write(folder, "scaling_setspeed", top)
        else:
            method = "min=max"
            _write_min_max(folder, "scaling_min_freq", "scaling_max_freq", top, top)
    except _WriteError as exc:
        return {"pinned": False, "reason": str(exc)}
    governor = read_value(folder / "scaling_governor")
    low, high = read_int(folder / "scaling_min_freq"), read_int(folder / "scaling_max_freq")
    if method == "performance":
        holds, khz = governor == "performance" and high == top, high
    elif method == "userspace":
        khz = read_int(folder / "scaling_setspeed")
        holds = governor == "userspace" and khz == top
    else:
        holds, khz = low == high == top, high
    if not holds:
        return {"pinned": False, "reason": f"{method}: reads back governor {governor}, min {low}, max {high} kHz"
                                           f"{f', setspeed {khz}' if method == 'userspace' else ''}, not {top} kHz"}
    report = {"pinned": True, "method": method, "governor": governor, "khz": khz,
              "cur_khz": read_int(folder / "scaling_cur_freq")}
    if report["cur_khz"] is not None and report["cur_khz"] != top:
        report["warning"] = f"running at {report['cur_khz']} kHz, not {top} kHz (thermal throttling?)"
    return report


def _pin_gpu(folder: Path) -> dict:
    available = [int(f) for f in read_words(folder / "available_frequencies") or [] if f.isdigit()]
    top = max(available, default=None)
    governors = read_words(folder / "available_governors") or []
    try:
        if "performance" in governors:
            method = "performance"
            if top is not None:
                _write(folder, "max_freq", top)
            _write(folder, "governor", "performance")
        elif top is not None:
            method = "min=max"
            _write_min_max(folder, "min_freq", "max_freq", top, top)
        else:
            return {"pinned": False, "reason": f"{folder}: no performance governor and no available_frequencies"}
    except _WriteError as exc:
        return {"pinned": False, "reason": str(exc)}
    governor = read_value(folder / "governor")
    low, high = read_int(folder / "min_freq"), read_int(folder / "max_freq")
    if method == "performance":
        holds = governor == "performance" and (top is None or high == top)
    else:
        holds = low == high == top
    if not holds:
        return {"pinned": False, "reason": f"{method}: reads back governor {governor}, min {low}, max {high} Hz"
                                           + (f", not {top} Hz" if top is not None else "")}
    return {"pinned": True, "method": method, "governor": governor, "hz": high, "cur_hz": read_int(folder / "cur_freq")}


def _restore_device(folder: Path, original: dict, min_name: str, max_name: str, governor_name: str) -> dict:
    """Write back what differs from the original: the governor, then the min/max pair in a safe order, then (under
    userspace) the set speed; read back and compare."""
    def differs(name: str) -> bool:
        return name in original and read_value(folder / name) != original[name]

    try:
        if differs(governor_name):
            _write(folder, governor_name, original[governor_name])
        if min_name in original and max_name in original and (differs(min_name) or differs(max_name)):
            _write_min_max(folder, min_name, max_name, original[min_name], original[max_name])
        for name in (min_name, max_name, "scaling_setspeed"):
            if differs(name):
                _write(folder, name, original[name])
    except _WriteError as exc:
        return {"restored": False, "reason": str(exc)}
    now = {name: read_value(folder / name) for name in original}
    if now != original:
        return {"restored": False, "reason": f"reads back {now}, originals {original}"}
    return {"restored": True, **now}


# ---- the state file -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(state_file: Path):
    """Serialise pin/restore of one state file across processes (two sweeps starting at once): an flock on
    ``<state>.lock``, which stays beside it (removing it would let two processes lock two different files)."""
    lock_file = state_file.with_name(state_file.name + ".lock")
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_file, "a")
    except OSError as exc:
        raise UserError(f"cannot lock the clock state file {state_file}: {lock_file}: {exc.strerror}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _load_state(state_file: Path, root: Path) -> dict | None:
    try:
        text = state_file.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read the clock state file {state_file}: {exc.strerror}") from None
    try:
        state = json.loads(text)
        valid = (isinstance(state, dict) and state.get("version") == STATE_VERSION
                 and isinstance(state.get("holders"), list) and all(isinstance(h, str) for h in state["holders"])
                 and isinstance(state.get("root"), str)
                 and all(isinstance(state.get(kind), dict) and all(isinstance(v, dict) for v in state[kind].values())
                         for kind in ("cpus", "gpus")))
    except ValueError:
        valid = False
    if not valid:
        raise UserError(f"corrupt clock state file {state_file}: not a requestflow clock state (version "
                        f"{STATE_VERSION}); check the clocks by hand, then remove it")
    if state["root"] != str(root):
        raise UserError(f"clock state file {state_file} is for root {state['root']}, not {root}")
    return state


def _save_state(state_file: Path, state: dict) -> None:
    try:
        atomic_write_text(state_file, json.dumps(state, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write the clock state file {state_file}: {exc.strerror}") from None


def _paths(root, state_file) -> tuple[Path, Path]:
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"root {root} is not a folder")
    return root, Path(state_file).resolve()


def _check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not holder.strip():
        raise UserError("a clock holder id must be a non-empty string")
    return holder.strip()


# ---- pin, restore, status -------------------------------------------------------------------------------------


def pin(root: str | os.PathLike, state_file: str | os.PathLike, holder: str = "default") -> dict:
    """Pin every CPU and GPU clock at its maximum for ``holder``; record the originals first (once).

    Report: ``action, root, state_file, holder, holders, originals_recorded`` (false when an earlier pin's originals
    were kept), ``pinned`` (every CPU and GPU pinned, and the board has cpufreq), ``reason`` (null when pinned),
    ``cpus`` [{cpu, pinned, method, governor, khz, cur_khz[, warning]} or {cpu, pinned: false, reason}] and
    ``gpus`` [{name, pinned, method, governor, hz, cur_hz} or {name, pinned: false, reason}].
    """
    root, state_file = _paths(root, state_file)
    holder = _check_holder(holder)
    cpu_dirs, gpu_dirs = _cpufreq_dirs(root), _gpu_dirs(root)
    with _locked(state_file):
        state = _load_state(state_file, root)
        recorded = state is None
        state = state or {"version": STATE_VERSION, "root": str(root), "holders": [], "cpus": {}, "gpus": {}}
        for kind, dirs, settings in (("cpus", cpu_dirs, CPU_SETTINGS), ("gpus", gpu_dirs, GPU_SETTINGS)):
            for name, folder in dirs.items():
                state[kind].setdefault(name, _originals(folder, settings))  # a device seen for the first time
        state["holders"] = sorted({*state["holders"], holder})
        _save_state(state_file, state)  # before any write: a crash from here on leaves the originals recorded
        cpu_reports = [{"cpu": int(name), **_pin_cpu(folder)} for name, folder in cpu_dirs.items()]
        gpu_reports = [{"name": name, **_pin_gpu(folder)} for name, folder in gpu_dirs.items()]
    failed = [r for r in cpu_reports + gpu_reports if not r["pinned"]]
    if not cpu_dirs:
        reason = f"no cpufreq in {root / 'sys/devices/system/cpu'}: clocks not pinned"
    elif failed:
        reason = f"{len(failed)} of {len(cpu_reports) + len(gpu_reports)} clocks not pinned"
    else:
        reason = None
    return {"action": "pin", "root": str(root), "state_file": str(state_file), "holder": holder,
            "holders": state["holders"], "originals_recorded": recorded, "pinned": reason is None, "reason": reason,
            "cpus": cpu_reports, "gpus": gpu_reports}


def restore(root: str | os.PathLike, state_file: str | os.PathLike, holder: str = "default",
            force: bool = False) -> dict:
    """Release ``holder``'s pin; when no holder is left (or ``force``), write the originals back and delete the
    state file. No state file means nothing to do (reported, not an error).

    Report: ``action, root, state_file, holder, force, holders`` (left after this call), ``restored`` (the originals
    are back and the state file is gone), ``reason`` (null when restored), ``cpus`` [{cpu, restored, <settings>} or
    {cpu, restored: false, reason}], ``gpus`` [{name, ...}]. When a device cannot be restored the state file is
    kept (holders emptied) so that a later restore can retry, unless ``force``.
    """
    root, state_file = _paths(root, state_file)
    holder = _check_holder(holder)
    report = {"action": "restore", "root": str(root), "state_file": str(state_file), "holder": holder,
              "force": force, "holders": [], "restored": False, "reason": None, "cpus": [], "gpus": []}
    with _locked(state_file):
        state = _load_state(state_file, root)
        if state is None:
            return {**report, "reason": f"no state file {state_file}: nothing to restore"}
        others = [h for h in state["holders"] if h != holder]
        if others and not force:
            if holder in state["holders"]:
                state["holders"] = others
                _save_state(state_file, state)
            return {**report, "holders": others,
                    "reason": f"clocks still held by {', '.join(others)}: left pinned"}
        cpu_dirs = root / "sys/devices/system/cpu"
        report["cpus"] = [{"cpu": int(name), **_restore_device(cpu_dirs / f"cpu{name}/cpufreq", original,
                                                                 "scaling_min_freq", "scaling_max_freq",
                                                                 "scaling_governor")}
                          for name, original in sorted(state["cpus"].items(), key=lambda kv: int(kv[0]))]
        report["gpus"] = [{"name": name, **_restore_device(root / "sys/class/devfreq" / name, original,
                                                              "min_freq", "max_freq", "governor")}
                          for name, original in sorted(state["gpus"].items())]
        failed = [r for r in report["cpus"] + report["gpus"] if not r["restored"]]
        if failed and not force:
            state["holders"] = []
            _save_state(state_file, state)
            report["reason"] = (f"{len(failed)} clocks not restored; state file kept for another restore "
                                f"(--force drops it)")
            return report
        state_file.unlink()
        report["restored"] = not failed
        if failed:
            report["reason"] = f"{len(failed)} clocks not restored; state file removed (force)"
    return report


def status(root: str | os.PathLike, state_file: str | os.PathLike) -> dict:
    """Report: ``action, root, state_file, state`` ("present"/"absent"), ``holders``, ``originals``
    ({cpus: {N: {sysfs setting: value}}, gpus: {...}} or null), ``current`` ({cpus: [{cpu, <settings>, cur_khz}],
    gpus: [{name, <settings>, cur_hz}]})."""
    root, state_file = _paths(root, state_file)
    state = _load_state(state_file, root)
    current = {
        "cpus": [{"cpu": int(name), **_originals(folder, CPU_SETTINGS),
                  "cur_khz": read_int(folder / "scaling_cur_freq")} for name, folder in _cpufreq_dirs(root).items()],
        "gpus": [{"name": name, **_originals(folder, GPU_SETTINGS), "cur_hz": read_int(folder / "cur_freq")}
                 for name, folder in _gpu_dirs(root).items()],
    }
    return {"action": "status", "root": str(root), "state_file": str(state_file),
            "state": "absent" if state is None else "present", "holders": state["holders"] if state else [],
            "originals": {"cpus": state["cpus"], "gpus": state["gpus"]} if state else None, "current": current}


# ---- cool-down ------------------------------------------------------------------------------------------------


def hottest(root: str | os.PathLike) -> dict | None:
    """The hottest readable thermal zone, ``{"zone", "type", "celsius"}``, or None."""
    return max(temperatures(Path(root)), key=lambda zone: zone["celsius"], default=None)


def cool_down(root: str | os.PathLike, below_c: float, timeout_s: float, poll_s: float = 1.0,
              sleep: Callable[[float], None] = time.sleep) -> dict:
    """Wait until the hottest thermal zone (``sys/class/thermal/thermal_zone*/temp``) is below ``below_c``.

    Returns ``{"reached", "celsius", "zone", "below_c", "waited_s", "reason"}``: reached true (reason null), false
    after ``timeout_s`` (not an exception), or null at once when no thermal zone is readable (the caller records that
    and goes on). ``waited_s`` counts the time slept, so that a fake ``sleep`` gives exact results.
    """
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (below_c, timeout_s, poll_s)):
        raise UserError(f"cool-down: below {below_c!r}, timeout {timeout_s!r} and poll {poll_s!r} must be numbers")
    if timeout_s < 0 or poll_s <= 0:
        raise UserError(f"cool-down: timeout {timeout_s:g} s must be at least 0 and poll {poll_s:g} s above 0")
    waited = 0.0
    while True:
        zone = hottest(root)
        result = {"reached": None, "celsius": zone["celsius"] if zone else None, "zone": zone["zone"] if zone else None,
                  "below_c": below_c, "waited_s": round(waited, 3), "reason": None}
        if zone is None:
            reason = "no thermal zone readable" + (f" (after {waited:g} s)" if waited else "")
            return {**result, "reason": reason}
        if zone["celsius"] < below_c:
            return {**result, "reached": True}
        if waited >= timeout_s:
            return {**result, "reached": False,
                    "reason": f"{zone['zone']} still at {zone['celsius']:g} °C after {waited:g} s (timeout)"}
        step = min(poll_s, timeout_s - waited)
        sleep(step)
        waited += step

