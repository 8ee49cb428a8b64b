"""The aarch64 runner on the controller (issue #15, ADR 0007): bookworm's arm64 CPython 3.11 (``python_userland()``,
the version requestflow's pins are made for; also the arm64 farm board's userland) and the runner's wheels for
aarch64 (``runner_site()``), each made once and checked on every use against the sha256 recorded when it was made.

Cache (``operators.arm64_toolchain.cache_root``)::

    userlands/<key>/env/, manifest.json   the arm64 userland and every file's sha256
    sites/<key>/wheels/, site/            the aarch64 wheels (sha256 in wheels.json) and the installed site
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from operators.arm64_toolchain import (
    KEYRING,
    MIRROR,
    ToolchainError,
    cache_root,
    key_of,
    made_once,
    mmdebstrap,
    run_tool,
)

Log = Callable[[str], None]

# --- the aarch64 runner: CPython 3.11 for arm64 and its wheels -------------------------------------------------

PYTHON_SUITE = "bookworm"  # CPython 3.11, the version requestflow's pins are made for
# CPython and what a board's shell needs (tests/farm.py's arm64 board chroots into it): sh, coreutils (uname
# says aarch64 there), flock and setsid (util-linux), ps and kill (procps), venv's ensurepip wheels
PYTHON_PACKAGES = ("python3.11", "python3.11-venv", "libstdc++6", "ca-certificates", "dash", "bash", "coreutils",
                   "util-linux", "procps", "findutils", "grep", "sed", "tar", "gzip")
RUNNER_PACKAGES = ("numpy", "pillow", "tqdm", "h5py", "ai-edge-litert")  # the board side, without tensorflow
AARCH64_PINS = {"ai-edge-litert": "1.4.0"}  # the newest for aarch64 CPython 3.11 (pyproject.toml)
AARCH64_TENSORFLOW = "2.20.0"  # likewise; imports in 13 s under qemu-user here
# pip takes a wheel only when one of its tags is listed: manylinux2014 alone misses manylinux_2_27/2_28 wheels
# (numpy, pillow) and ai-edge-litert 1.4.0 was "not found" with it alone (issue #15); glibc 2.36 (bookworm) runs
# wheels up to manylinux_2_36, 2.28 is the newest any of these needs
PLATFORM_TAGS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 29)))


@dataclass(frozen=True)
class Userland:
    """A complete, checked arm64 userland with CPython 3.11: ``path`` is its root."""

    key: str
    path: Path
    record: dict
    reused: bool

    @property
    def python(self) -> Path:
        return self.path / "usr/bin/python3.11"

    def emulator(self, qemu: str = "qemu-aarch64-static") -> list[str]:
        return [shutil.which(qemu) or qemu, "-L", str(self.path)]


def python_userland(cache_dir: str | os.PathLike | None = None, *, suite: str = PYTHON_SUITE, mirror: str = MIRROR,
                    log: Log = print) -> Userland:
    """Debian ``suite``'s arm64 CPython 3.11 and a shell's tools (``mmdebstrap --variant=extract``: the packages
    and their dependencies unpacked, nothing configured; 5 s and 196 MB here), made once under
    ``userlands/<key>/env`` and checked on every use against the sha256 of each of its files recorded when it was
    made (``manifest.json``); a damaged or incomplete one is made again. apt in mmdebstrap checks every package
    against the suite's signed InRelease."""
    spec = {"format": 1, "suite": suite, "mirror": mirror, "architectures": ["arm64"], "variant": "extract",
            "packages": list(PYTHON_PACKAGES)}

    def make(staged: Path) -> dict:
        from requestflow.board.emulation import elf_arch

        log(f"arm64 userland: mmdebstrap --variant=extract {suite} arm64 with {', '.join(PYTHON_PACKAGES)}")
        mmdebstrap("extract", "arm64", PYTHON_PACKAGES, suite, staged / "env", mirror)
        python = staged / "env/usr/bin/python3.11"
        if not python.is_file() or elf_arch(python) != "aarch64":
            raise ToolchainError(f"the {suite} arm64 userland has no aarch64 python3.11")
        (staged / "manifest.json").write_text(json.dumps(_manifest(staged / "env"), sort_keys=True) + "\n")
        return {"verified_by": f"apt in mmdebstrap: every package against the signed InRelease of {suite} "
                               f"({KEYRING}); on each use: every file's sha256 against manifest.json"}

    key, folder, record, reused = made_once(cache_dir, "userlands", spec, "userland.json",
                                             lambda folder: _check_tree(folder, "userland.json"), make,
                                             "the arm64 Python userland", log)
    return Userland(key, folder / "env", record, reused)


def runner_site(cache_dir: str | os.PathLike | None = None, *, tensorflow: bool = False, log: Log = print) -> Path:
    """A ``site-packages`` folder of the runner's dependencies for aarch64 CPython 3.11 (``RUNNER_PACKAGES`` at
    the versions of ``requirements/constraints-x86_64.txt``, ai-edge-litert at ``AARCH64_PINS``; with
    ``tensorflow``, also tensorflow ``AARCH64_TENSORFLOW``: 1.6 GB, a site of its own), to put on the arm64
    Python's ``PYTHONPATH``. The wheels are downloaded once with every manylinux tag of ``PLATFORM_TAGS``; the
    sha256 of each is recorded on its first download (trust on first use, as ``weights.lock.json``) and checked on
    every use: a damaged wheel is downloaded again and must match its record, and a damaged site is installed
    again from the wheels."""
    from operators.file_lock import file_lock
    checkout = Path(__file__).resolve().parents[1]
    constraints = [line.strip() for line in (checkout / "requirements/constraints-x86_64.txt").read_text()
                   .splitlines() if line.strip() and not line.startswith("#")]

    def name(line: str) -> str:
        return re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0].lower().replace("_", "-")

    left_out = set(AARCH64_PINS) | {"tensorflow", "tensorflow-cpu"}  # x86's tensorflow-cpu 2.21 has no aarch64
    pins = sorted([line for line in constraints if name(line) not in left_out]
                  + [f"{package}=={version}" for package, version in AARCH64_PINS.items()]
                  + ([f"tensorflow=={AARCH64_TENSORFLOW}"] if tensorflow else []))
    packages = [*RUNNER_PACKAGES, *(["tensorflow"] if tensorflow else [])]
    spec = {"format": 1, "packages": packages, "pins": pins, "tags": list(PLATFORM_TAGS), "python": "3.11"}
    key = key_of(spec)[:16]
    root = cache_root(cache_dir) / "sites"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    target = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
              *(arg for tag in PLATFORM_TAGS for arg in ("--platform", tag))]
    with file_lock(root / f".{key}.lock"):
        if _check_tree(folder, "site.json", tree="site") is None and _check_wheels(folder) is None:
            return folder / "site"
        (folder / "wheels").mkdir(parents=True, exist_ok=True)
        (folder / "constraints.txt").write_text("\n".join(pins) + "\n")
        problem = _check_wheels(folder)
        if problem is not None and (folder / "wheels.json").is_file():
            log(f"aarch64 wheels {key}: {problem}: downloading again")
            for wheel in (folder / "wheels").glob("*.whl"):
                wheel.unlink()
        started = time.monotonic()
        pip = [sys.executable, "-m", "pip"]
        run_tool([*pip, "download", "-q", *target, "-c", str(folder / "constraints.txt"), "-d", str(folder / "wheels"),
              *packages], "pip download (aarch64 wheels)")
        found = {p.name: _sha(p) for p in sorted((folder / "wheels").glob("*.whl"))}
        recorded = json.loads((folder / "wheels.json").read_text()) if (folder / "wheels.json").is_file() else {}
        changed = [name for name, digest in found.items() if name in recorded and recorded[name] != digest]
        if changed:
            raise ToolchainError(f"aarch64 wheels {key}: {', '.join(changed)} downloaded again differ from the "
                                 f"sha256 recorded at their first download ({folder / 'wheels.json'})")
        (folder / "wheels.json").write_text(json.dumps({**recorded, **found}, indent=1, sort_keys=True) + "\n")
        site = folder / "site"
        (folder / "site.json").unlink(missing_ok=True)
        shutil.rmtree(site, ignore_errors=True)
        run_tool([*pip, "install", "-q", "--no-index", "--find-links", str(folder / "wheels"), "--target", str(site),
              *target, "-c", str(folder / "constraints.txt"), *packages], "pip install --target (aarch64)")
        (folder / "manifest.json").write_text(json.dumps(_manifest(site), sort_keys=True) + "\n")
        record = {**spec, "key": key, "wheels": found, "seconds": round(time.monotonic() - started, 1)}
        (folder / "site.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        log(f"aarch64 wheels {key}: {len(found)} wheels, site installed ({record['seconds']} s)")
        return site


def _sha(path: Path) -> str:
    from requestflow.board.files import sha256_file

    return sha256_file(path)


def _manifest(tree: Path) -> dict[str, str]:
    """Every regular file of ``tree`` by relative path -> sha256; every symlink -> ``link:<target>``."""
    out = {}
    for path in sorted(tree.rglob("*")):
        relative = str(path.relative_to(tree))
        if path.is_symlink():
            out[relative] = f"link:{os.readlink(path)}"
        elif path.is_file():
            out[relative] = _sha(path)
    return out


def _check_tree(folder: Path, record: str, tree: str = "env") -> str | None:
    """None when ``folder/<tree>`` is complete (``record`` written last) and matches ``manifest.json``."""
    if not (folder / record).is_file():
        return "incomplete" if folder.exists() else "not made yet"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return "manifest.json is missing or damaged"
    actual = _manifest(folder / tree)
    missing = sorted(set(manifest) - set(actual))
    if missing:
        return f"{tree}/{missing[0]} is missing"
    changed = sorted(name for name, digest in manifest.items() if actual.get(name) != digest)
    return f"{tree}/{changed[0]} is damaged (sha256 differs)" if changed else None


def _check_wheels(folder: Path) -> str | None:
    try:
        recorded = json.loads((folder / "wheels.json").read_text())
    except (OSError, ValueError):
        return "no wheels recorded"
    for name, digest in recorded.items():
        path = folder / "wheels" / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha(path) != digest:
            return f"{name} is damaged (sha256 differs from its first download)"
    return None
