"""Stopping a local run (``requestflow sweep``) on SIGINT / SIGTERM: its running task killed, nothing left behind.

Two processes: the command waits for ``python -m operators.local.dag_run run-dag``, which runs the DAG with
``dag.test()``. Before, a SIGTERM to the command (``timeout``, a job scheduler) killed it alone: the run went on,
orphaned, with its board job (issue #22). Now:

- the command, from its start (``signals_end_the_command``): a SIGTERM before the run started (Airflow's database
  being made or migrated) ends it with exit code 143 through an exception, so that the subprocess it waits for is
  killed with it (``subprocess.run`` kills its child on any exception); a SIGINT does so already
  (``KeyboardInterrupt``);
- the command (``wait``): the first SIGINT/SIGTERM writes the stop file and sends SIGTERM to the run, then waits
  for it to end (``GRACE_S`` at most, a second signal at once: then SIGKILL); the command then ends as that signal
  asks, 130 (``KeyboardInterrupt``) or 143;
- the run (``make_stoppable``): Airflow's task runner answers a SIGTERM by the running task's ``on_kill`` (the
  board job killed); once the stop file exists, no task is retried or started any more (each is marked failed),
  except the teardowns (the boards' clocks restored) and the ``all_done`` tasks (the summary, which stores the
  points that never ran). A SIGINT to the run (Ctrl-C reaches the whole process group) does the same.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

GRACE_S = 300.0  # the run's teardowns after a stop: restoring each board's clocks
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signals_end_the_command(command):
    """Decorates a command: while it runs, a SIGTERM raises ``SystemExit(143)`` in it (module docstring)."""

    @functools.wraps(command)
    def decorated(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():  # no signal handlers there
            return command(*args, **kwargs)

        def on_sigterm(signum, frame) -> None:
            print("requestflow: SIGTERM: stopped", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return command(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return decorated


def wait(process: subprocess.Popen, stop_file: Path, grace_s: float = GRACE_S) -> int | None:
    """Wait for the run ``process``; the signal that stopped it (after it ended), or None."""
    if threading.current_thread() is not threading.main_thread():  # no signal handlers there
        process.wait()
        return None
    received: list[tuple[int, float]] = []

    def on_signal(signum, frame) -> None:
        if received:  # a second signal: no more waiting
            process.kill()
            return
        received.append((signum, time.monotonic()))
        print(f"requestflow: {signal.Signals(signum).name}: stopping the run (its running task is killed, the "
              "boards' clocks restored)", file=sys.stderr, flush=True)
        stop_file.touch()
        process.terminate()

    previous = {s: signal.signal(s, on_signal) for s in SIGNALS}
    try:
        while process.poll() is None:
            if received and time.monotonic() - received[0][1] > grace_s:
                print(f"requestflow: the run did not stop within {grace_s:.0f} s: killed", file=sys.stderr,
                      flush=True)
                process.kill()
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return received[0][0] if received else None


def end_as(signum: int) -> None:
    """End the command as a stopping signal asks: SIGINT as an interrupt (130), SIGTERM with exit code 143."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def make_stoppable(stop_file: Path, on_task_end: Callable[[], None] | None = None) -> None:
    """In the run's process, before ``dag.test()``: a stop (the stop file, or a SIGINT/SIGTERM between tasks)
    ends the run as the module's docstring says. ``on_task_end`` is called after each task that ran."""
    import airflow.sdk.definitions.dag as dag_module
    from airflow.utils.state import TaskInstanceState

    run_task = dag_module._run_task

    def on_signal(signum, frame) -> None:
        stop_file.touch()
        current = signal.getsignal(signal.SIGTERM)
        if callable(current) and current is not on_signal:  # the task runner's: the running task's on_kill
            current(signum, frame)

    def stoppable_run_task(*, ti, task, **kwargs):
        if stop_file.exists() and not _runs_after_a_stop(task):
            print(f"requestflow: stopped: {ti.task_id} not run", file=sys.stderr, flush=True)
            ti.set_state(TaskInstanceState.FAILED)
            return None
        try:
            return run_task(ti=ti, task=task, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, on_signal)  # the task runner left its handler of that task
            if on_task_end is not None:
                on_task_end()
            if stop_file.exists():
                ti.refresh_from_db()
                if ti.state == TaskInstanceState.UP_FOR_RETRY:  # stopped: no retry
                    ti.set_state(TaskInstanceState.FAILED)

    dag_module._run_task = stoppable_run_task
    for s in SIGNALS:
        signal.signal(s, on_signal)


def _runs_after_a_stop(task) -> bool:
    rule = getattr(task, "trigger_rule", "")
    return bool(getattr(task, "is_teardown", False)) or str(getattr(rule, "value", rule)) == "all_done"
