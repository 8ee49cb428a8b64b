"""The runner bundle, built on the controller: the project's wheel plus a wheelhouse of the board's dependencies
(the core dependencies of ``pyproject.toml``, pinned by ``requirements/constraints-<arch>.txt``; never the
controller's or the results store's extras), so that a board needs neither internet nor a preinstalled requestflow.

Cached under the controller's cache dir, keyed by a digest of the project's sources, the constraints and the target
(architecture, Python minor version); built in a temporary folder renamed into place, under a file lock so that two
tasks never build the same bundle at once; ``manifest.json`` lists each wheel's sha256. While nothing changes, a
call costs one hash of the source tree and no pip. A new bundle removes those not used for a while beyond the
``KEEP_BUNDLES`` used last (``prune_bundles``): every source edit makes a bundle, and they would fill the disk.
``operators.deploy`` installs it on a board.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as platform_module
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from operators.blob_store import DeployError, Log
from operators.config import ROOT
from operators.file_lock import file_lock
from requestflow.board.files import sha256_file
from requestflow.errors import UserError

BUNDLE_FORMAT = 1
# the controller keeps the bundles used most recently (each some 360 MB for x86_64): the others go once a newer one
# was built, unless used within PRUNE_AFTER_S (a provisioning may still be sending its wheels)
KEEP_BUNDLES = 3
PRUNE_AFTER_S = 3 * 3600.0
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}


@dataclass(frozen=True)
class Bundle:
    """A built bundle: the folder holding the wheels and ``manifest.json``."""

    path: Path
    digest: str  # 16 hex digits: sources + constraints + target
    wheels: list[Path]  # every wheel, the project's included
    python: str  # "3.11": the boards' Python must be this minor version
    python_tag: str  # "cp311"
    platform: str  # the boards' machine (``uname -m``): x86_64, aarch64
    project_wheel: str  # file name of requestflow's own wheel
    version: str  # requestflow's version in it
    sha256: dict[str, str] = field(repr=False)  # wheel file name -> sha256
    runtime: str | None = None  # a runtime spec (operators.runtime_spec): installed and recorded in the venv
    link: str = "current"  # the board's W/runner/<link> -> <digest> once deployed

    @classmethod
    def load(cls, path: Path) -> Bundle:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("bundle_format") != BUNDLE_FORMAT:
            raise DeployError(f"{path}: bundle_format {manifest.get('bundle_format')!r}, expected {BUNDLE_FORMAT}")
        files = manifest["files"]
        for name, entry in files.items():  # cheap: sizes only (the manifest is written last, the folder renamed)
            if (path / name).stat().st_size != entry["size"]:
                raise DeployError(f"bundle {path}: {name} does not have the size its manifest says")
        return cls(path=path, digest=manifest["digest"], wheels=[path / name for name in sorted(files)],
                   python=manifest["python"], python_tag=manifest["python_tag"], platform=manifest["platform"],
                   project_wheel=manifest["project"]["wheel"], version=manifest["project"]["version"],
                   sha256={name: entry["sha256"] for name, entry in files.items()})


def normalize_arch(arch: str) -> str:
    arch = arch.strip()
    return ARCH_ALIASES.get(arch.lower(), arch)


def board_target(board) -> str | None:
    """The ``target`` of ``build_bundle`` for a board: its machine (``uname -m``); None for this machine."""
    from operators.board_hook import LocalBoard

    if isinstance(board, LocalBoard):
        return None
    result = board.run("uname -m", warn=True)
    if result.return_code != 0 or not result.stdout.strip():
        raise DeployError(f"board {board.settings.name}: `uname -m` failed: {(result.stderr or '').strip()}")
    return normalize_arch(result.stdout.strip())


def build_bundle(target: str | None = None, cache_dir: str | os.PathLike | None = None, *,
                 root: str | os.PathLike | None = None, log: Log = print) -> Bundle:
    """The bundle for boards of machine ``target`` (default: this machine's), built once per content.

    The boards' Python is this controller's minor version (the constraints are pinned for it). For another
    architecture the wheels are downloaded for it (``--platform manylinux_2_xx_<arch> --python-version X.Y
    --only-binary=:all:``), pinned by ``requirements/constraints-<arch>.txt``, which must exist. Every dependency
    comes as a wheel: a board never compiles anything. ``cache_dir`` defaults to ``<requestflow cache>/bundles``;
    ``root`` is the source checkout (default: this one).
    """
    from requestflow.board.files import cache_dir as requestflow_cache_dir

    root = Path(root) if root else ROOT
    if not (root / "pyproject.toml").is_file() or not (root / "requestflow").is_dir():
        raise UserError(f"{root}: not requestflow's source checkout (no pyproject.toml beside requestflow/): "
                        "the bundle is built from the sources")
    arch = normalize_arch(target or platform_module.machine())
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    constraints = root / "requirements" / f"constraints-{arch}.txt"
    if not constraints.is_file():
        raise UserError(f"no pins for {arch} boards: {constraints.relative_to(root)} does not exist. Resolve the "
                        f"board dependencies for {arch} with Python {python} (python -m operators.wheel_target pins "
                        f"{arch} --python {python} > {constraints.relative_to(root)}) and commit the file")
    bundles = Path(cache_dir) if cache_dir else requestflow_cache_dir("bundles")
    bundles.mkdir(parents=True, exist_ok=True)
    digest = source_digest(root, constraints, arch, python)
    if (bundles / digest / "manifest.json").is_file():
        os.utime(bundles / digest / "manifest.json")  # used now: pruned last
        return Bundle.load(bundles / digest)

    started = time.monotonic()
    work = bundles / f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        # the sources are copied first and the digest taken from the copy: an edit meanwhile cannot make a bundle
        # whose content is not what its digest says
        source = work / "src"
        for path in _source_files(root):
            _copy(path, source / path.relative_to(root))
        _copy(constraints, source / constraints.relative_to(root))
        digest = source_digest(source, source / constraints.relative_to(root), arch, python)
        final = bundles / digest
        with file_lock(bundles / f".{digest}.lock"):
            if (final / "manifest.json").is_file():  # another task built it while this one waited
                return Bundle.load(final)
            log(f"building the runner bundle {digest} for {arch} / Python {python} (in {bundles})")
            _build(source, source / constraints.relative_to(root), work / "wheels", arch, python, log)
            wheels = work / "wheels"
            project = sorted(wheels.glob("requestflow-*.whl"))
            files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(wheels.iterdir())}
            manifest = {
                "bundle_format": BUNDLE_FORMAT, "digest": digest, "platform": arch, "python": python,
                "python_tag": f"cp{python.replace('.', '')}",
                "project": {"wheel": project[0].name, "version": project[0].name.split("-")[1]},
                "constraints": str(constraints.relative_to(root)), "sources": str(root),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files,
            }
            (wheels / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            if final.exists():  # a damaged leftover without a manifest
                shutil.rmtree(final)
            os.rename(wheels, final)
        total = sum(f["size"] for f in files.values())
        log(f"bundle {digest}: {len(files)} wheels, {total / 1e6:.0f} MB, built in {time.monotonic() - started:.1f} s")
        prune_bundles(bundles, log=log)
        return Bundle.load(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prune_bundles(bundles: Path, keep: int = KEEP_BUNDLES, after_s: float = PRUNE_AFTER_S,
                  log: Log = print) -> list[str]:
    """Remove the bundles of ``bundles`` but the ``keep`` used most recently (a bundle's use touches its manifest)
    and those used within ``after_s``, each under its build lock; their digests."""
    built = sorted((p for p in bundles.iterdir() if (p / "manifest.json").is_file()),
                   key=lambda p: (p / "manifest.json").stat().st_mtime, reverse=True)
    gone = []
    for path in built[keep:]:
        with file_lock(bundles / f".{path.name}.lock"):
            manifest = path / "manifest.json"
            if manifest.is_file() and time.time() - manifest.stat().st_mtime > after_s:
                shutil.rmtree(path, ignore_errors=True)  # (its lock file stays: another task may hold it open)
                gone.append(path.name)
    if gone:
        log(f"removed {len(gone)} runner bundle(s) not used for {after_s / 3600:g} h: {', '.join(gone)}")
    return gone


def source_digest(root: Path, constraints: Path, arch: str, python: str) -> str:
    """16 hex digits of sha256 over the project's source files (``requestflow/`` with its JSON files, ``native/``
    (shipped in the wheel as ``requestflow.native``), ``pyproject.toml``, ``README.md``), the constraints file and
    the target."""
    lines = [f"bundle_format {BUNDLE_FORMAT}", f"target {arch} {python}", f"constraints {sha256_file(constraints)}"]
    lines += [f"{path.relative_to(root).as_posix()} {sha256_file(path)}" for path in _source_files(root)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _source_files(root: Path) -> list[Path]:
    files = [path for folder in ("requestflow", "native") for path in (root / folder).rglob("*")
             if path.is_file() and not {"__pycache__", "build"} & set(path.relative_to(root).parts)
             and path.suffix not in (".pyc", ".pyo")]
    files += [root / name for name in ("pyproject.toml", "README.md") if (root / name).is_file()]
    return sorted(files)


def _build(source: Path, constraints: Path, wheels: Path, arch: str, python: str, log: Log) -> None:
    """The project's wheel (built with build isolation: setuptools from the package index, as pyproject says) and
    the wheelhouse of its core dependencies, binary wheels only.

    For another machine pip is not given the project's wheel: it would evaluate the wheel's markers for this
    controller (pip issue #11664: ``--platform`` changes the wheel tags, not the markers), and an x86_64 controller
    would pick ``tensorflow-cpu==2.21.0; platform_machine == 'x86_64'`` for an aarch64 board. It is given
    ``pyproject.toml``'s requirements evaluated for the target (``operators.wheel_target``) with every manylinux
    tag of the target, and the wheelhouse is then checked against the wheels' own metadata, evaluated for the
    target: a missing requirement fails the build, a wheel only the controller's markers wanted is left out."""
    from operators import wheel_target

    project = source.parent / "project"
    run_pip(["wheel", "--no-deps", "--wheel-dir", str(project), str(source)], log)
    built = sorted(project.glob("requestflow-*.whl"))
    if len(built) != 1:
        raise DeployError(f"pip wheel made {[p.name for p in built]}, expected one requestflow wheel")
    args = ["download", "--only-binary=:all:", "--constraint", str(constraints), "--dest", str(wheels)]
    cross = arch != normalize_arch(platform_module.machine())
    if cross:
        requirements = wheel_target.board_requirements(source, arch, python)
        log(f"the board's requirements on {arch}: {', '.join(requirements)}")
        run_pip([*args, *wheel_target.pip_target_args(arch, python)[1:], *requirements], log)
    else:
        run_pip([*args, str(built[0])], log)
    if not list(wheels.glob("requestflow-*.whl")):  # pip saves a local wheel it was given; make sure of it
        shutil.copy2(built[0], wheels / built[0].name)
    others = [p.name for p in wheels.iterdir() if not p.name.endswith(".whl")]
    if others:
        raise DeployError(f"the wheelhouse holds non-wheel files {others}: boards install binary wheels only")
    if cross:
        try:
            unneeded = wheel_target.check_closure(wheels, ["requestflow"], arch, python)
        except wheel_target.ClosureError as exc:
            raise DeployError(str(exc)) from None
        for wheel in unneeded:
            log(f"{wheel.name}: not needed on {arch} (pip chose it for this controller's markers): left out")
            wheel.unlink()


def run_pip(args: list[str], log: Log) -> None:
    """``python -m pip <args>`` with the controller's Python; DeployError with pip's last lines on failure."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise DeployError(f"`pip {args[0]}` failed ({result.returncode}):\n{tail}")


def _copy(path: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, to)


