"""A slower machine for real-run tests of issue #19 ("telling a slower machine from slower software").

What slows the machine: a process at real-time priority (SCHED_FIFO 2), pinned to the point's CPU, that takes it
for :data:`BUSY_S` out of every ~:data:`BUSY_S` + :data:`GAP_S`: a grain far finer than one timed run of the
point (1.6 ms) and than one calibration sample (some 0.6-1 ms), so both are stretched alike, run after run, as on
a slower CPU (measured with the calibration sampled during the timed region: 20 real pairs, the point x1.80-x3.08,
its calibration alike, calibrated x0.93-x1.02, docs/trust.md; ``bench/bench_slower_machine.py`` runs the pairs).

What keeps everything else out: the runner itself runs at real-time priority too (SCHED_FIFO 1, :data:`REALTIME`,
below the slowing process), on the normal machine and on the slowed one, so that the other work of a shared
machine (a load of 13-15 on 2 CPUs here) does not time-slice it: that work comes and goes in slices of
milliseconds, longer than a timed run, and hits the point's runs and the workload's samples differently (the
finding of 838526c: a competing hog gave calibrated ratios x0.53-x1.41). Ordinary priority with the same slowing
process gave x3-x10 slowdowns that followed the machine's load, not the slowing process.

Not a cgroup CPU bandwidth limit (``cpu.max`` / ``cpu.cfs_quota_us``): the kernel enforces it at its tick (4 ms
at HZ=250 here, whatever the period, minimum 1 ms), so a run of 1 ms either fits between throttles or waits one
out: the median did not move (two real pairs at 600/1000 us: raw x0.99 and x1.10, calibration x0.98 and x1.01).

Real-time priority needs root or CAP_SYS_NICE (:func:`realtime_refused` says why not). The real-time runs are
short (a second or two on one CPU), and the kernel keeps 5% of every second for ordinary processes
(``sched_rt_runtime_us``).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

REALTIME = ("chrt", "-f", "1")  # the runner's priority, normal or slowed
SLOWING_PRIORITY = 2  # above the runner's: it takes the CPU whenever it wakes
BUSY_S = 10e-6
GAP_S = 40e-6


def realtime_refused() -> str | None:
    """Why the runner cannot run at real-time priority here (None: it can)."""
    if shutil.which(REALTIME[0]) is None:
        return "chrt (util-linux) is not installed: the slower-machine tests run the runner at real-time priority"
    result = subprocess.run([*REALTIME, "true"], capture_output=True, text=True)
    if result.returncode != 0:
        return (f"real-time scheduling is refused here ({result.stderr.strip() or result.returncode}): the "
                "slower-machine tests need root or CAP_SYS_NICE")
    return None


def take_cycles(cpu: int, ready, busy_s: float = BUSY_S, gap_s: float = GAP_S) -> None:
    """The slowing process: on ``cpu``, at real-time priority, busy for ``busy_s``, asleep for ``gap_s``, until
    killed."""
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(SLOWING_PRIORITY))
    clock = time.perf_counter
    ready.set()
    while True:
        until = clock() + busy_s
        while clock() < until:
            pass
        time.sleep(gap_s)


@contextmanager
def slower_machine(cpu: int, busy_s: float = BUSY_S, gap_s: float = GAP_S) -> Iterator[None]:
    """``cpu`` slowed while the block runs (the slowing process started and ready before it, killed after it)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=take_cycles, args=(cpu, ready, busy_s, gap_s), daemon=True)
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"the slowing process did not start within 60 s (exit code {process.exitcode})")
        yield
        alive = process.is_alive()
    finally:
        process.kill()
        process.join()
    assert alive, f"the slowing process ended early (exit code {process.exitcode})"
