"""Where the suite's time goes, printed while it is spent: every test phase (setup, call, teardown) of 45 s or more
gets a line with the wall time since the session started. `--durations` prints only at the end, and a CI run that
hits its time limit never reaches the end: these lines say where its minutes went."""

from __future__ import annotations

import time

SLOW_S = 45.0
_state: dict = {}


def pytest_configure(config) -> None:
    _state["config"] = config  # the terminal reporter is registered later in this same hook: looked up when needed
    _state["start"] = time.monotonic()


def pytest_runtest_logreport(report) -> None:
    if report.duration < SLOW_S or "config" not in _state:
        return
    reporter = _state["config"].pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    at = (time.monotonic() - _state["start"]) / 60
    reporter.write("\n")  # off the line of progress dots
    reporter.write_line(f"[slow] {report.nodeid} ({report.when}) {report.duration:.0f} s, {at:.1f} min into the run")
