"""The arm64 toolchain environment on the controller (issue #15, ADR 0007): ``mmdebstrap --mode=root
--variant=apt --architectures=amd64,arm64`` of Debian trixie with ``g++-aarch64-linux-gnu`` (GCC 14) and
``libarm-compute-dev:arm64`` (``toolchain()``). It is both the cross compiler (run through ``chroot``) and the arm64
userland a program runs on under qemu-user (``qemu-aarch64-static -L <env>``: glibc 2.41, libstdc++ 14, which
Debian's ArmCL needs; ``/lib -> usr/lib`` holds the ELF interpreter). apt inside mmdebstrap checks every package
against the suite's signed InRelease (``debian-archive-keyring``); the installed files are checked on every use with
the environment's own ``dpkg --verify``. The system's dpkg and apt are never touched (no ``dpkg
--add-architecture``). Needs root (mmdebstrap's root mode, chroot). Also the helpers every arm64 cache shares
(``cache_root``, ``made_once``, ``run``).

Cache (``$REQUESTFLOW_ARM64_CACHE``, else ``$REQUESTFLOW_CACHE/arm64``, default ``~/.cache/requestflow/arm64``)::

    toolchains/<key>/env/                 the environment; toolchain.json beside it is written last (complete)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from requestflow.errors import UserError

Log = Callable[[str], None]

MIRROR = "http://deb.debian.org/debian"
SUITE = "trixie"  # ArmCL 24.11 (libarm-compute43) needs glibc >= 2.38 and libstdc++ >= 14: bookworm has neither
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ARCHITECTURES = ("amd64", "arm64")  # the compiler runs on the host (amd64), the program's userland is arm64
# scons and the host binutils: ArmCL cross-built from source runs its SConstruct here (``operators.arm64_cross``,
# ``cross: true``); scons sets up its static-library builder only where it finds a native ranlib
TOOLCHAIN_PACKAGES = ("g++-aarch64-linux-gnu", "libarm-compute-dev:arm64", "scons", "binutils")
CROSS_CXX = "aarch64-linux-gnu-g++"
TOOLCHAIN_FORMAT = 1
_TIMEOUT_S = 1800


class ToolchainError(RuntimeError):
    """Making or checking the environment, fetching a package or cross-compiling failed."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$REQUESTFLOW_ARM64_CACHE`` (the tests point it at the machine's cache while their
    ``$REQUESTFLOW_CACHE`` is a throwaway one: the environment and the builds are made once per machine), else
    ``$REQUESTFLOW_CACHE/arm64``."""
    from requestflow.board.files import cache_dir as requestflow_cache_dir

    chosen = cache_dir or os.environ.get("REQUESTFLOW_ARM64_CACHE")
    path = Path(chosen) if chosen else requestflow_cache_dir("arm64")
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_of(value) -> str:
    from requestflow.board.files import canonical_json, sha256_text

    return sha256_text(canonical_json(value))


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"{what} needs root (mmdebstrap --mode=root, chroot and a private mount namespace)")


def run_tool(command: list[str], what: str, *, timeout: float = _TIMEOUT_S, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                                cwd=cwd, env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{what} did not finish in {timeout:.0f} s") from None
    except FileNotFoundError as exc:
        raise UserError(f"{what}: {exc.filename} not found (./dev.sh test installs it)") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "Err:", "error", "dpkg:"))] or lines[-5:]
        raise ToolchainError(f"{what} failed ({result.returncode}): " + " | ".join(errors[-5:]))
    return result.stdout


# --- the toolchain environment ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """A complete, checked toolchain environment: ``path`` is the root of the trixie amd64+arm64 tree."""

    key: str
    path: Path
    record: dict
    reused: bool

    @property
    def sysroot(self) -> Path:
        """The arm64 userland for ``qemu-aarch64-static -L``."""
        return self.path

    def emulator(self, qemu: str = "qemu-aarch64-static") -> list[str]:
        """The exec prefix that runs an arm64 program of this userland on this machine."""
        return [shutil.which(qemu) or qemu, "-L", str(self.path)]


def toolchain_spec(suite: str = SUITE, mirror: str = MIRROR) -> dict:
    return {"format": TOOLCHAIN_FORMAT, "suite": suite, "mirror": mirror, "architectures": list(ARCHITECTURES),
            "variant": "apt", "packages": list(TOOLCHAIN_PACKAGES)}


def toolchain(cache_dir: str | os.PathLike | None = None, *, suite: str = SUITE, mirror: str = MIRROR,
              log: Log = print) -> Toolchain:
    """The toolchain environment for ``suite``: made once (mmdebstrap, about 30 s and 500 MB here), then checked on
    each call with its own ``dpkg --verify`` (under a second) and remade when anything is damaged or missing."""
    spec = toolchain_spec(suite, mirror)

    def make(staged: Path) -> dict:
        env = staged / "env"
        log(f"arm64 toolchain: mmdebstrap {suite} ({', '.join(ARCHITECTURES)}) with {', '.join(TOOLCHAIN_PACKAGES)} "
            f"from {mirror}")
        mmdebstrap("apt", ",".join(ARCHITECTURES), TOOLCHAIN_PACKAGES, suite, env, mirror)
        versions = _installed(env)
        problem = _verify(env)
        if problem is not None:
            raise ToolchainError(f"the new environment does not verify: {problem}")
        compiler = run_tool(["chroot", str(env), CROSS_CXX, "--version"], "the cross compiler").splitlines()[0]
        log(f"arm64 toolchain: {compiler}, ArmCL {versions.get('libarm-compute-dev:arm64')}")
        return {"compiler": compiler, "mmdebstrap": run_tool(["mmdebstrap", "--version"], "mmdebstrap").strip(),
                "armcl": versions.get("libarm-compute-dev:arm64"), "packages": versions,
                "verified_by": f"apt in mmdebstrap: every package against the signed InRelease of {suite} "
                               f"({KEYRING}); on each use: dpkg --verify in the environment"}

    key, folder, record, reused = made_once(cache_dir, "toolchains", spec, "toolchain.json", check_toolchain, make,
                                             "the arm64 toolchain environment", log)
    return Toolchain(key, folder / "env", record, reused)


def check_toolchain(folder: Path) -> str | None:
    """None when ``folder`` holds a complete environment whose files all match their packages; else what is
    wrong."""
    if not (folder / "toolchain.json").is_file():
        return "incomplete (no toolchain.json)" if folder.exists() else "not made yet"
    try:
        record = json.loads((folder / "toolchain.json").read_text())
    except ValueError:
        return "toolchain.json is damaged"
    env = folder / "env"
    if not (env / "usr/bin" / CROSS_CXX).exists() or not (env / "lib/ld-linux-aarch64.so.1").exists():
        return f"{CROSS_CXX} or the arm64 ELF interpreter is missing"
    if os.geteuid() != 0:  # dpkg --verify runs in a chroot: without root, the presence checks above must do
        return None
    problem = _verify(env)
    if problem is None and _installed(env) != record.get("packages"):
        problem = "its installed packages differ from toolchain.json"
    return problem


def _installed(env: Path) -> dict[str, str]:
    out = run_tool(["chroot", str(env), "dpkg-query", "-W", "-f", "${Package}:${Architecture} ${Version}\\n"],
               "dpkg-query in the environment")
    return dict(line.split(" ", 1) for line in sorted(out.splitlines()) if " " in line)


def _verify(env: Path) -> str | None:
    """The environment's own ``dpkg --verify``: every installed file against its package's checksums. Its
    configuration files are left out (mmdebstrap and apt write some of them)."""
    try:
        result = subprocess.run(["chroot", str(env), "dpkg", "--verify"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"dpkg --verify could not run ({exc})"
    bad = [line for line in result.stdout.splitlines() if line.strip() and not re.match(r"^\S+\s+c\s", line)]
    if result.returncode != 0 and not bad:
        bad = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1:]
    return f"dpkg --verify: {'; '.join(bad[:5])}" if bad else None


def mmdebstrap(variant: str, architectures: str, packages, suite: str, target: Path, mirror: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap not found: apt-get install mmdebstrap (./dev.sh test installs it)")
    run_tool(["mmdebstrap", "--mode=root", f"--variant={variant}", f"--architectures={architectures}",
          f"--keyring={KEYRING}", f"--include={','.join(packages)}", suite, str(target), mirror], "mmdebstrap")


def made_once(cache_dir, kind: str, spec: dict, record_name: str, check: Callable[[Path], str | None],
               make: Callable[[Path], dict], what: str, log: Log) -> tuple[str, Path, dict, bool]:
    """``<cache>/<kind>/<key of spec>``: reused while ``check`` finds nothing wrong, else (damaged, incomplete,
    missing) made again by ``make`` in a staged folder, its record (``spec`` + what ``make`` returns) written last,
    then renamed into place. One maker at a time per key (a lock file). (key, folder, record, reused)."""
    from operators.file_lock import file_lock

    key = key_of(spec)[:16]
    root = cache_root(cache_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    with file_lock(root / f".{key}.lock"):
        problem = check(folder)
        if problem is None:
            return key, folder, json.loads((folder / record_name).read_text()), True
        if folder.exists():
            log(f"{what} {key}: {problem}: making it again")
            shutil.rmtree(folder)
        require_root(what)
        started = time.monotonic()
        staged = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            record = {**spec, "key": key, **make(staged), "seconds": round(time.monotonic() - started, 1),
                      "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (staged / record_name).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            os.rename(staged, folder)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        log(f"{what} {key}: made in {record['seconds']} s")
        return key, folder, record, False
