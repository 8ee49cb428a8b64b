"""Emulation, detected and labelled (issue #15): which machine a program's code is for, the emulator that runs
native programs of another architecture on this machine, and whether the runner itself is emulated. Standard
library only (runs on boards).

``$REQUESTFLOW_EMULATOR`` is the exec prefix of the board's native programs (the armcl backend's MobileNet
program): shell words, e.g. ``qemu-aarch64-static -L /path/to/arm64-userland``. A program whose ELF machine is not
this machine's is refused without it (it could not run), and any program run through it is labelled emulated:
its results are correctness checks, its timings meaningless.

``detect()`` is what the runner records as ``machine.emulated``: the exec prefix above, the explicit setting
``$REQUESTFLOW_EMULATED`` (the emulator's name, e.g. ``qemu-user``: a board whose whole runner runs emulated says so
in its settings; provisioning writes a board Connection's extra ``emulator`` into the runner's venv, ``MARKER``,
which counts the same), and a cross-check that needs no setting: under qemu-user the kernel reports the guest's machine
(``uname -m`` aarch64) and the runner's Python is aarch64 code, but ``/proc/cpuinfo`` is the host's and describes
an x86 CPU (checked with QEMU 7.2). Any one of them makes a result emulated.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ENV = "REQUESTFLOW_EMULATOR"
SETTING = "REQUESTFLOW_EMULATED"
# The board's setting, written into the deployed runner's venv by provisioning (a board Connection's extra
# ``emulator``): the same as ``$REQUESTFLOW_EMULATED`` for every command of that runner, whoever starts it.
MARKER = "requestflow-emulated"
_FAMILIES = {"x86_64": "x86", "i686": "x86", "aarch64": "arm", "armv7l": "arm", "riscv64": "riscv"}
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


def cpuinfo_arch(text: str) -> str | None:
    """The machine a ``/proc/cpuinfo`` describes: x86 (``vendor_id``, ``flags``), Arm (``CPU implementer``,
    ``Features``: aarch64 when it lists ``asimd`` or says architecture 8), RISC-V (``isa : rv64...``); None when
    it says nothing recognisable."""
    if re.search(r"^(vendor_id|flags)\s*:", text, re.MULTILINE):
        flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
        return "x86_64" if flags is None or "lm" in flags.group(1).split() else "i686"
    if re.search(r"^(CPU implementer|Features)\s*:", text, re.MULTILINE):
        features = re.search(r"^Features\s*:(.*)$", text, re.MULTILINE)
        v8 = re.search(r"^CPU architecture\s*:\s*8", text, re.MULTILINE)
        return "aarch64" if v8 or (features and "asimd" in features.group(1).split()) else "armv7l"
    isa = re.search(r"^isa\s*:\s*rv64", text, re.MULTILINE)
    return "riscv64" if isa else None


def board_setting(prefix: str | os.PathLike | None = None) -> str | None:
    """The emulator the board's settings name (``<runner venv>/requestflow-emulated``, one word), or None."""
    try:
        text = (Path(prefix or sys.prefix) / MARKER).read_text(errors="replace").strip()
    except OSError:
        return None
    return text.split()[0] if text else None


def detect(cpuinfo: str | os.PathLike = "/proc/cpuinfo", executable: str | None = None) -> dict | None:
    """None when nothing says this runner or its programs are emulated; else ``{"emulator", "version",
    "evidence": [...], "python_arch", "cpu_arch", "kernel_arch"}``. ``cpuinfo`` is the real one (a board's fake
    sysfs tree is not where this process runs); ``executable`` defaults to this Python."""
    evidence = []
    try:
        python_arch = elf_arch(os.path.realpath(executable or sys.executable))
    except OSError:
        python_arch = None
    try:
        cpu_arch = cpuinfo_arch(Path(cpuinfo).read_text(errors="replace"))
    except OSError:
        cpu_arch = None
    if python_arch and cpu_arch and _FAMILIES.get(python_arch, python_arch) != _FAMILIES.get(cpu_arch, cpu_arch):
        evidence.append(f"the runner's Python is {python_arch} code and {cpuinfo} describes an {cpu_arch} CPU")
    setting = os.environ.get(SETTING, "").strip()
    if setting:
        evidence.append(f"${SETTING}={setting}")
    marked = board_setting()
    if marked:
        evidence.append(f"the board's settings say emulator {marked} ({Path(sys.prefix) / MARKER})")
        setting = setting or marked
    prefix = exec_prefix()
    if prefix:
        evidence.append(f"native programs run through ${ENV}")
    if not evidence:
        return None
    found = describe(prefix) if prefix else {"emulator": setting or "unknown (a user-mode emulator such as qemu)",
                                             "version": None}
    return {"emulator": found["emulator"], "version": found["version"], "evidence": evidence,
            "python_arch": python_arch, "cpu_arch": cpu_arch, "kernel_arch": host_arch()}
