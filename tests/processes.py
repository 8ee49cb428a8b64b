"""Which processes run where: the tests' way to prove that a stopped job left nothing behind."""

from __future__ import annotations

import os


def commands_under(folder: str | os.PathLike) -> list[str]:
    """Command lines of the live processes whose working directory is under ``folder``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(command)
    return found
