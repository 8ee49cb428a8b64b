"""What a board needs to build ArmCL from source, found before the build starts and installed where the board allows it
(issue #17).

A source build (Debian's source, a tarball, a git tag) needs **scons** and a **C++ compiler** (``$CXX``, else g++)
on the board, and **git** for a git tag: without them the build cannot start (*required*). **ccache** (faster
rebuilds), and for ``opencl=1`` the **OpenCL ICD loader** (``libOpenCL.so.1``, which ArmCL opens at run time) and the
**OpenCL headers** (the shim for PoCL compiles against them; ArmCL's own are in its source) are *wanted*: installed
with the rest when installing is allowed, only mentioned otherwise.

The board's Connection extra ``install_packages`` (the local board: ``"local": {"install_packages": true}`` in
``config/boards.json``) lets the build install what is missing with the board's package manager (apt-get, dnf or
yum): as root directly, else through ``sudo -n`` (never a password prompt, never a stored sudo password; a sudo that
wants one is reported as such). Without it, a missing required tool refuses the build with the exact packages to
install. Board-side commands are plain POSIX shell, so a board needs nothing of requestflow for this.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from operators.board_hook import last_said
from requestflow.errors import UserError

INSTALL_TIMEOUT_S = 1800  # an update and an install on a slow board's mirror
MANAGERS = ("apt-get", "dnf", "yum")  # the first one found on the board's PATH is used
PACKAGES = {  # tool -> its package per package manager
    "scons": {"apt-get": "scons", "dnf": "python3-scons", "yum": "python3-scons"},
    "c++": {"apt-get": "g++", "dnf": "gcc-c++", "yum": "gcc-c++"},
    "git": {"apt-get": "git", "dnf": "git", "yum": "git"},
    "ccache": {"apt-get": "ccache", "dnf": "ccache", "yum": "ccache"},
    "opencl-icd-loader": {"apt-get": "ocl-icd-libopencl1", "dnf": "ocl-icd", "yum": "ocl-icd"},
    "opencl-headers": {"apt-get": "opencl-headers", "dnf": "opencl-headers", "yum": "opencl-headers"},
}
# one line per fact, "<name> <value>"; the loader and headers at their usual places (ldconfig may be off a user's PATH)
PROBE = r"""
for tool in scons "${CXX:-g++}" git ccache; do
  if command -v "$tool" >/dev/null 2>&1; then echo "have $tool"; fi
done
echo "cxx ${CXX:-g++}"
for lib in /usr/lib/*/libOpenCL.so.1 /usr/lib64/libOpenCL.so.1 /usr/lib/libOpenCL.so.1 /usr/local/lib/libOpenCL.so.1; do
  if [ -e "$lib" ]; then echo "have opencl-icd-loader"; break; fi
done
if [ -e /usr/include/CL/cl.h ]; then echo "have opencl-headers"; fi
for manager in apt-get dnf yum; do
  if command -v "$manager" >/dev/null 2>&1; then echo "manager $manager"; break; fi
done
if command -v sudo >/dev/null 2>&1; then echo "sudo yes"; fi
echo "uid $(id -u)"
echo "user $(id -un)"
"""


@dataclass(frozen=True)
class Probe:
    """What the board has: tools found, its package manager, whether it has sudo, who runs the commands."""

    have: frozenset[str]
    cxx: str = "g++"
    manager: str | None = None
    sudo: bool = False
    root: bool = False
    user: str = "?"

    @classmethod
    def parse(cls, text: str) -> Probe:
        have, facts = set(), {}
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "have":
                have.add(value)
            elif key:
                facts[key] = value
        cxx = facts.get("cxx") or "g++"
        if cxx in have:  # the compiler under its own name -> "c++"
            have.add("c++")
        return cls(frozenset(have), cxx, facts.get("manager") or None, facts.get("sudo") == "yes",
                   facts.get("uid") == "0", facts.get("user") or "?")


def needed_tools(spec) -> tuple[list[str], list[str]]:
    """(required, wanted) tools of a source build of ``spec`` (an ``ArmclSpec``); nothing for Debian's binaries,
    which compile nothing on the board."""
    kind = spec.source.kind
    if kind == "debian-binary":
        return [], []
    required = ["scons", "c++"] + (["git"] if kind == "git" else [])
    wanted = ["ccache"] + (["opencl-icd-loader", "opencl-headers"] if spec.options.get("opencl") == "1" else [])
    return required, wanted


def package_names(tools: list[str], manager: str | None) -> list[str]:
    """The packages of ``tools`` for ``manager`` (Debian's names when the board has none of MANAGERS)."""
    return [PACKAGES[tool][manager if manager in MANAGERS else "apt-get"] for tool in tools]


def install_commands(manager: str, packages: list[str], *, root: bool) -> list[str]:
    """The shell commands that install ``packages`` (non-interactive: no prompt, stdin closed), through ``sudo -n``
    unless ``root``."""
    sudo = "" if root else "sudo -n "
    names = " ".join(shlex.quote(p) for p in packages)
    if manager == "apt-get":
        return [f"{sudo}apt-get -q update </dev/null",
                f"{sudo}apt-get -q -y --no-install-recommends install {names} </dev/null"]
    if manager in ("dnf", "yum"):
        return [f"{sudo}{manager} -q -y install {names} </dev/null"]
    raise ValueError(f"no install command for package manager {manager!r}")


def tool_names(tools: list[str], probe: Probe) -> str:
    return ", ".join(probe.cxx if tool == "c++" else tool for tool in tools)


def refusal(what: str, missing: list[str], probe: Probe) -> str:
    """Why ``what`` cannot be built: the missing tools and the exact packages to install (install_packages off)."""
    packages = " ".join(package_names(missing, probe.manager))
    manager = probe.manager if probe.manager in MANAGERS else "apt-get"
    return (f"{what} needs {tool_names(missing, probe)}, not found on the board: install {packages} "
            f"(`{'' if probe.root else 'sudo '}{manager} install {packages}`), or set the board's Connection extra "
            "install_packages true (the local board: \"local\": {\"install_packages\": true} in config/boards.json) "
            "to let provisioning install them through sudo -n")


def probe_board(board) -> Probe:
    result = board.run(f"sh -c {shlex.quote(PROBE)}", warn=True, timeout=60)
    if result.return_code != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"board {board.settings.name}: probing its build tools exited {result.return_code}: "
                           f"{last[0]}")
    return Probe.parse(result.stdout)


def ensure_build_tools(board, spec, *, what: str = "the ArmCL build", log=print) -> Probe:
    """Check that ``board`` has what a source build of ``spec`` needs; install what it lacks when its settings'
    ``install_packages`` allow it. Raises UserError (a refusal: what to install, or why installing cannot work:
    no package manager, no root and no sudo, ``sudo -n`` wanting a password) or RuntimeError (the install ran and
    failed). The board's probe, after any install."""
    required, wanted = needed_tools(spec)
    if not required and not wanted:
        return Probe(frozenset())
    probe = probe_board(board)
    missing = [t for t in required if t not in probe.have]
    extra = [t for t in wanted if t not in probe.have]
    name = board.settings.name
    if not missing and not extra:
        return probe
    if not getattr(board.settings, "install_packages", False):
        if missing:
            raise UserError(refusal(what, missing, probe))
        log(f"board {name}: without {tool_names(extra, probe)} ({' '.join(package_names(extra, probe.manager))}; "
            "the Connection extra install_packages would install them)")
        return probe
    packages = package_names(missing + extra, probe.manager)
    try:
        install(board, probe, packages, log=log)
    except (UserError, RuntimeError):
        if missing:
            raise
        log(f"board {name}: {' '.join(packages)} not installed; the build goes on without them")
        return probe
    after = probe_board(board)
    still = [t for t in missing if t not in after.have]
    if still:
        raise RuntimeError(f"board {name}: {tool_names(still, after)} still not found after installing "
                           f"{' '.join(packages)}")
    return after


def install(board, probe: Probe, packages: list[str], *, log=print) -> None:
    """Install ``packages`` on ``board`` with its package manager, as root or through ``sudo -n``."""
    name = board.settings.name
    listed = " ".join(packages)
    if probe.manager not in MANAGERS:
        raise UserError(f"cannot install {listed}: no package manager the board's provisioning knows "
                        f"({', '.join(MANAGERS)}) on its PATH; install them by hand")
    if not probe.root:
        if not probe.sudo:
            raise UserError(f"cannot install {listed}: user {probe.user} is not root and the board has no sudo; "
                            f"install them as root ({probe.manager} install {listed})")
        check = board.run("sudo -n true </dev/null", warn=True, timeout=60)
        if check.return_code != 0:
            said = last_said(check)
            raise UserError(f"cannot install {listed}: `sudo -n` refused user {probe.user} ({said}); provisioning "
                            "never types a password: give the user passwordless sudo for "
                            f"{probe.manager}, or install them by hand (sudo {probe.manager} install {listed})")
    log(f"board {name}: installing {listed} with {probe.manager}{'' if probe.root else ' through sudo -n'}")
    for command in install_commands(probe.manager, packages, root=probe.root):
        result = board.run(command, warn=True, timeout=INSTALL_TIMEOUT_S)
        if result.return_code != 0:
            said = last_said(result, silent="no output")
            raise RuntimeError(f"board {name}: `{command.removesuffix(' </dev/null')}` exited {result.return_code}: "
                               f"{said}")
