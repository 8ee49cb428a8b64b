"""Where the suite's time goes, printed while it is spent: every test phase (setup, call, teardown) of 45 s or more
gets a line with the wall time since the session started. `--durations` prints only at the end, and a CI run that
hits its time limit never reaches the end: these lines say where its minutes went."""

from __future__ import annotations

import time

SLOW_S = 45.0
_state: dict = {}


def pytest_configure(config) -> None:
    _state["reporter"] = config.pluginmanager.get_plugin("terminalreporter")
    _state["start"] = time.monotonic()


def pytest_runtest_logreport(report) -> None:
    reporter = _state.get("reporter")
    if reporter is None or report.duration < SLOW_S:
        return
    at = (time.monotonic() - _state["start"]) / 60
    reporter.write_line(f"[slow] {report.nodeid} ({report.when}) {report.duration:.0f} s, {at:.1f} min into the run")
