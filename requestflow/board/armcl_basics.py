"""What ArmCL's builder on the board (``requestflow.board.armcl``) and the controller both use: the builder's errors,
a build's cache key, the parallel jobs a board can take, and the board's CPU features, memory and build tools (the
``probe`` the controller asks before choosing options)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from requestflow.board.files import canonical_json, sha256_text

KEY_FORMAT = 1


class Refused(Exception):
    """Bad input or a missing tool: exit status 2, one line."""


class BuildFailed(Exception):
    """The build ran and failed: exit status 1, ``failed.json``."""

    def __init__(self, reason: str, record: dict) -> None:
        super().__init__(reason)
        self.record = record


def build_key(source_id: str, options: dict, compiler: dict) -> str:
    """The cache key of a build: sha256 of the canonical JSON of the source id, the full option list (values as
    scons reads them: text) and the compiler's name and version line."""
    return sha256_text(canonical_json({
        "format": KEY_FORMAT, "source": source_id,
        "options": {str(name): str(value) for name, value in options.items()},
        "compiler": {"name": compiler.get("name"), "version": compiler.get("version")}}))


def default_jobs(cpu_count: int | None, memory_bytes: int | None) -> int:
    """Parallel compile jobs for a board: one per core, but at most one per 2 GiB of memory (an ArmCL compile job
    can take 1-2 GB; 3-4 GB boards get one or two jobs). Memory unknown: one job, since an out-of-memory kill
    halfway costs more than a slow build."""
    cores = max(1, cpu_count or 1)
    if not memory_bytes:
        return 1
    return min(cores, max(1, int(memory_bytes / 2**30) // 2))


def cpu_features(root: str | os.PathLike = "/") -> list[str] | None:
    """The CPU's feature flags from ``<root>/proc/cpuinfo`` (``Features`` on Arm, ``flags`` on x86), sorted;
    None when the file or the line is missing."""
    try:
        text = Path(root, "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^(?:Features|flags)\s*:\s*(.*)$", text, re.MULTILINE)
    return sorted(set(match.group(1).split())) if match else None


def compiler_info(cxx: str | None = None, path: str | None = None) -> dict:
    """``{"name", "path", "version"}`` of the C++ compiler scons will use (``$CXX`` or g++); path None when absent."""
    name = cxx or os.environ.get("CXX") or "g++"
    found = shutil.which(name.split()[0], path=path)
    return {"name": name, "path": found, "version": _first_line([found, "--version"]) if found else None}


def tools(path: str | None = None) -> dict:
    """The build tools on ``path``: the C++ compiler, scons, ccache, git (each with its version line, or null)."""
    out = {"cxx": compiler_info(path=path)}
    for name in ("scons", "ccache", "git"):
        found = shutil.which(name, path=path)
        out[name] = {"path": found, "version": _first_version_line(found)} if found else None
    return out


def _first_line(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
                                env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def _first_version_line(path: str) -> str | None:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                                stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    versioned = [line for line in lines if re.search(r"\d+\.\d+", line)]
    return (versioned or lines or [None])[0]


def memory_bytes() -> int | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
