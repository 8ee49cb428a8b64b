"""Emulation, detected and labelled (issue #15): which machine a program's code is for, and the emulator that runs
native programs of another architecture on this machine. Standard library only (runs on boards).

``$REQUESTFLOW_EMULATOR`` is the exec prefix of the board's native programs (the armcl backend's MobileNet
program): shell words, e.g. ``qemu-aarch64-static -L /path/to/arm64-userland``. A program whose ELF machine is not
this machine's is refused without it (it could not run), and any program run through it is labelled emulated:
its results are correctness checks, its timings meaningless.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
from pathlib import Path

ENV = "REQUESTFLOW_EMULATOR"
# ELF e_machine -> uname -m
_ELF_MACHINES = {3: "i686", 40: "armv7l", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "armv7": "armv7l", "armhf": "armv7l"}


def elf_arch(path: str | os.PathLike) -> str | None:
    """The machine an ELF file's code is for (``uname -m`` spelling), from its header; None when it is not ELF."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], order)
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine}")


def normalise(arch: str | None) -> str | None:
    return _ALIASES.get((arch or "").lower(), (arch or "").lower()) or None


def host_arch() -> str:
    """This process's machine as the kernel reports it (under qemu-user: the emulated one)."""
    return normalise(platform.machine()) or "unknown"


def exec_prefix() -> list[str]:
    """``$REQUESTFLOW_EMULATOR`` as an argument list (empty when unset)."""
    return shlex.split(os.environ.get(ENV, ""))


def describe(prefix: list[str]) -> dict:
    """What an exec prefix is: ``{"emulator": <name>, "version": <its --version line>, "command": [...]}``."""
    program = shutil.which(prefix[0]) or prefix[0]
    version = None
    try:
        result = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=20,
                                stdin=subprocess.DEVNULL)
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        version = lines[0] if result.returncode == 0 and lines else None
    except OSError:
        pass
    return {"emulator": Path(program).name, "version": version, "command": list(prefix)}


def program_launch(program: str | os.PathLike) -> tuple[list[str], dict | None]:
    """How to start a native program here: (the argument list's start, the emulation record or None).

    A program for this machine runs as it is, unless ``$REQUESTFLOW_EMULATOR`` is set (then it is used and
    recorded: a board that is emulated as a whole runs its programs through it too). A program for another
    machine needs the emulator: without it a ValueError says so."""
    prefix = exec_prefix()
    arch = elf_arch(program)
    host = host_arch()
    if not prefix:
        if arch is not None and arch != host:
            raise ValueError(f"{program} is {arch} code and this machine is {host}: set ${ENV} to an emulator for "
                             f"it, e.g. qemu-{arch}-static -L <{arch} userland>")
        return [str(program)], None
    return [*prefix, str(program)], {**describe(prefix), "program_arch": arch, "host_arch": host}
