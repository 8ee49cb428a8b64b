"""What every benchmark says about the machine it ran on: CPU model, package versions, load average. One module
for all of them (``bench_all.py`` assembles RESULTS.md from their reports)."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path


def cpuinfo() -> str:
    """``/proc/cpuinfo``, or "" where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(text: str | None = None) -> str:
    """The CPU's model name (x86 ``model name``, ARM ``Hardware``/``Processor``), else platform's, else unknown."""
    match = re.search(r"^(?:model name|Hardware|Processor)\s*:\s*(.+)$", cpuinfo() if text is None else text,
                      re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def package_version(*names: str) -> str:
    """The installed version of the first of ``names`` that is installed (e.g. tensorflow-cpu, tensorflow)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())
