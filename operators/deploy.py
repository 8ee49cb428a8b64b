"""Deploying the runner and its data to a board, so that a board needs neither internet nor a preinstalled
requestflow, and the runner reads only the board's work dir.

What, in three steps:

1. ``build_bundle`` (on the controller): the project's wheel plus a wheelhouse of the board's dependencies (the core
   dependencies of ``pyproject.toml``, pinned by ``requirements/constraints-<arch>.txt``; never the controller's or
   the results store's extras). Cached under the controller's cache dir, keyed by a digest of the project's sources,
   the constraints and the target (architecture, Python minor version); built in a temporary folder renamed into
   place, under a file lock so that two tasks never build the same bundle at once; ``manifest.json`` lists each
   wheel's sha256. While nothing changes, a call costs one hash of the source tree and no pip.
2. ``deploy_runner``: the bundle into ``<work_dir>/runner/<digest>/``: the wheels the board lacks are sent once
   (a content-addressed store, below), a venv is made with the board's Python and the runner installed into it
   with ``pip --no-index`` from those wheels only, then checked. Reused while unchanged: one round trip.
3. ``push_data``: weights and images into ``<work_dir>/data/`` (downloaded weights into ``<work_dir>/cache/``)
   through the same store, each distinct content sent once. ``operators.point_data.files_for_points`` says which
   files a sweep's points need (the registry's resolution, the dataset's image selection: the runner's own code,
   asked on the controller).

Why a content-addressed store: a new bundle (one source file changed) differs from the last one by the project's
small wheel only, and two data paths with the same content (or the same weights in two sweeps) are one file: only
what the board lacks crosses the link, and the board checks every transfer's sha256 with ``sha256sum``.

Board-side layout (``W`` = the board's work dir)::

    W/blobs/<sha256>                    every file sent, named by its content (wheels, weights, images)
    W/blobs/.incoming/                  transfers in progress (verified, then moved into blobs/)
    W/runner/<digest>/wheels/*.whl      the bundle's wheelhouse (hard links to blobs)
    W/runner/<digest>/venv/             the runner: <board python> -m venv, pip install --no-index
    W/runner/<digest>/.deployed         written last, once the runner was installed and checked
    W/runner/<digest>/install/          the install job's folder (stdout.log, exit_code)
    W/runner/current -> <digest>        the runner last deployed
    W/data/<relative path>              the data folder the runner reads ($REQUESTFLOW_DATA), links to blobs
    W/cache/                            the runner's cache ($REQUESTFLOW_CACHE)

Board-side commands are POSIX sh with coreutils (``sha256sum``, ``ln``, ``find``) and, if present, ``flock``.
Deploys to one board are serialised by the board's Airflow pool; the install itself also holds a board-side
``flock`` when the board has one. Old runner folders, finished job folders and unlinked blobs are removed by
``operators.board_gc`` (after each provisioning, in the board's pool).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform as platform_module
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from operators.config import ROOT
from requestflow.errors import UserError

BUNDLE_FORMAT = 1
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Log = Callable[[str], None]


class DeployError(RuntimeError):
    """Deploying to a board failed (a transfer damaged, pip failed): may succeed on a retry once fixed."""


# --- the bundle, on the controller -----------------------------------------------------------------------------


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
    return _ARCH_ALIASES.get(arch.lower(), arch)


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
            files = {p.name: {"sha256": _sha256(p), "size": p.stat().st_size} for p in sorted(wheels.iterdir())}
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
        return Bundle.load(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def source_digest(root: Path, constraints: Path, arch: str, python: str) -> str:
    """16 hex digits of sha256 over the project's source files (``requestflow/`` with its JSON files, ``native/``
    (shipped in the wheel as ``requestflow.native``), ``pyproject.toml``, ``README.md``), the constraints file and
    the target."""
    lines = [f"bundle_format {BUNDLE_FORMAT}", f"target {arch} {python}", f"constraints {_sha256(constraints)}"]
    lines += [f"{path.relative_to(root).as_posix()} {_sha256(path)}" for path in _source_files(root)]
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
    _pip(["wheel", "--no-deps", "--wheel-dir", str(project), str(source)], log)
    built = sorted(project.glob("requestflow-*.whl"))
    if len(built) != 1:
        raise DeployError(f"pip wheel made {[p.name for p in built]}, expected one requestflow wheel")
    args = ["download", "--only-binary=:all:", "--constraint", str(constraints), "--dest", str(wheels)]
    cross = arch != normalize_arch(platform_module.machine())
    if cross:
        requirements = wheel_target.board_requirements(source, arch, python)
        log(f"the board's requirements on {arch}: {', '.join(requirements)}")
        _pip([*args, *wheel_target.pip_target_args(arch, python)[1:], *requirements], log)
    else:
        _pip([*args, str(built[0])], log)
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


def _pip(args: list[str], log: Log) -> None:
    """``python -m pip <args>`` with the controller's Python; DeployError with pip's last lines on failure."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise DeployError(f"`pip {args[0]}` failed ({result.returncode}):\n{tail}")


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block: one builder at a time."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy(path: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, to)


def _sha256(path: Path) -> str:
    from requestflow.board.files import sha256_file

    return sha256_file(path)


# --- the runner, on the board ----------------------------------------------------------------------------------


def deploy_runner(board, bundle: Bundle | None, log: Log = print, timeout_s: float | None = 3600) -> str:
    """Install ``bundle`` on ``board``; the board-side path of the runner's Python.

    Reused while unchanged: when ``<work_dir>/runner/<digest>/.deployed`` exists, one round trip (which also points
    ``runner/current`` at it). Otherwise the board's Python (``settings.python``) must be the bundle's minor version
    and the board of its machine (UserError if not); the wheels it lacks are sent; ``<python> -m venv`` and
    ``pip install --no-index`` from those wheels (pip's configuration ignored: nothing but the wheelhouse); the
    runner is checked (``pip check``, ``requestflow models``, its libraries import) before ``.deployed`` is written.
    A failed install raises DeployError naming the board, with pip's last lines. The board's extra ``emulator``
    is written into the venv (``requestflow.board.emulation.MARKER``; removed when unset), also when reused.

    The LocalBoard (this machine, the embedded default) gets no venv: its runner is this installation, so the
    answer is ``sys.executable``.
    """
    from operators import board_jobs
    from operators.board_hook import LocalBoard

    if isinstance(board, LocalBoard):
        log(f"board {board.settings.name}: this machine; the runner is this installation ({sys.executable})")
        return sys.executable
    settings, digest = board.settings, bundle.digest
    started = time.monotonic()
    version_code = 'import platform, sys; print("python %d.%d" % sys.version_info[:2], platform.python_version())'
    probe = board.run(
        f"W={_shell_path(settings.work_dir)}; mkdir -p \"$W/blobs/.incoming\" \"$W/runner\" && cd \"$W\" && pwd "
        f"&& uname -m && if [ -f runner/{digest}/.deployed ]; then ln -sfn {digest} runner/current && "
        f"{_emulation_marker(settings, f'runner/{digest}/venv')} && echo DEPLOYED; "
        f"else {shlex.quote(settings.python)} -c {shlex.quote(version_code)} 2>&1 | tail -n 3; fi",
        warn=True)
    lines = probe.stdout.strip().splitlines()
    if probe.return_code != 0 or len(lines) < 3:
        raise DeployError(f"board {settings.name}: cannot use work dir {settings.work_dir}: "
                          f"{(probe.stderr or probe.stdout).strip()}")
    work, machine = lines[0], normalize_arch(lines[1])
    runner_dir = f"{work}/runner/{digest}"
    python = f"{runner_dir}/venv/bin/python"
    if lines[2] == "DEPLOYED":
        log(f"board {settings.name}: runner {digest} already deployed ({python})")
        return python
    if machine != bundle.platform:
        raise UserError(f"board {settings.name} is {machine}, the bundle is for {bundle.platform}: build it with "
                        f"build_bundle(target={machine!r})")
    found = re.match(r"^python (\d+\.\d+) (\S+)$", lines[-1])
    if not found:
        raise UserError(f"board {settings.name}: its python {settings.python!r} does not run: "
                        f"{' '.join(lines[2:])} (set the connection's extra `python`)")
    if found.group(1) != bundle.python:
        raise UserError(f"board {settings.name}: its python {settings.python!r} is Python {found.group(2)}, the "
                        f"runner bundle is for Python {bundle.python}: set the connection's extra `python` to a "
                        f"Python {bundle.python} interpreter on the board")

    log(f"board {settings.name}: deploying runner {digest} ({len(bundle.wheels)} wheels) to {runner_dir}")
    entries = [(path, bundle.sha256[path.name], f"runner/{digest}/wheels/{path.name}") for path in bundle.wheels]
    transfer = _sync(board, work, entries, log)
    log(f"board {settings.name}: wheels: {transfer.describe()}")

    pip = "PIP_CONFIG_FILE=/dev/null venv/bin/python -m pip --isolated --disable-pip-version-check"
    env = f"REQUESTFLOW_CACHE={shlex.quote(work + '/cache')} REQUESTFLOW_DATA={shlex.quote(work + '/data')}"
    install = (
        f"cd {shlex.quote(runner_dir)} && if [ -f .deployed ]; then echo 'already deployed'; exit 0; fi; "
        f"rm -rf venv && {shlex.quote(settings.python)} -m venv venv && {_emulation_marker(settings, 'venv')} "
        f"&& {pip} install --no-index --no-cache-dir --progress-bar off --find-links wheels "
        f"requestflow=={bundle.version} "
        f"&& {pip} check "
        f"&& {env} venv/bin/python -m requestflow.cli models > /dev/null "
        f"&& {env} venv/bin/python -c 'import numpy, PIL, h5py, tqdm, ai_edge_litert.interpreter, tensorflow' "
        f"&& touch .deployed && ln -sfn {digest} ../current && echo 'runner installed and checked'")
    lock = shlex.quote(f"{work}/runner/.{digest}.lock")
    command = (f"if command -v flock > /dev/null 2>&1; then flock {lock} sh -c {shlex.quote(install)}; "
               f"else sh -c {shlex.quote(install)}; fi")
    output: list[str] = []

    def show(line: str) -> None:
        output.append(line)
        log(f"[{settings.name}] {line}")

    job_dir = f"{runner_dir}/install"
    board_jobs.start(board, job_dir, command)
    code = board_jobs.wait(board, job_dir, show, timeout_s=timeout_s)
    if code != 0:
        tail = "\n".join(output[-15:]) or "(no output)"
        raise DeployError(f"board {settings.name}: installing runner {digest} failed (exit {code}; log "
                          f"{job_dir}/stdout.log):\n{tail}")
    log(f"board {settings.name}: runner {digest} deployed in {time.monotonic() - started:.1f} s ({python})")
    return python


def _emulation_marker(settings, venv: str) -> str:
    """The shell command that writes the board's ``emulator`` extra into the runner's venv (or removes an old one):
    the runner then labels every result emulated (``requestflow.board.emulation.MARKER``), whoever starts it."""
    from requestflow.board.emulation import MARKER

    marker = shlex.quote(f"{venv}/{MARKER}")
    emulator = getattr(settings, "emulator", None)
    return f"echo {shlex.quote(emulator)} > {marker}" if emulator else f"rm -f {marker}"


def runner_python(board) -> str:
    """The board-side Python of the runner deployed last (``runner/current``), without deploying: one round trip.
    A DeployError says so when the board has none. The LocalBoard's is ``sys.executable``."""
    return runner_location(board)[0]


def runner_location(board) -> tuple[str, str]:
    """(the deployed runner's Python, the board's work dir), both absolute (``~`` expanded by the board): what a
    point's command line and its ``$REQUESTFLOW_DATA`` / ``$REQUESTFLOW_CACHE`` need. One round trip."""
    from operators.board_hook import LocalBoard

    if isinstance(board, LocalBoard):
        return sys.executable, os.path.abspath(os.path.expanduser(board.settings.work_dir))
    work = _shell_path(board.settings.work_dir)
    result = board.run(f"cd {work}/runner/current 2>/dev/null && [ -f .deployed ] && "
                       f"echo \"$(pwd -P)/venv/bin/python\" && cd {work} && pwd -P", warn=True)
    lines = result.stdout.strip().splitlines()
    if result.return_code != 0 or len(lines) < 2:
        raise DeployError(f"board {board.settings.name}: no runner deployed in {board.settings.work_dir}/runner "
                          "(provision the board first: deploy_runner)")
    return lines[-2], lines[-1]


# --- data, on the board ----------------------------------------------------------------------------------------


def push_data(board, files: Iterable[tuple[Path, str]], log: Log = print,
              cache_files: Iterable[tuple[Path, str]] = ()) -> str:
    """Copy local files to ``<work_dir>/data/<relative path>`` on the board (and ``cache_files`` to
    ``<work_dir>/cache/<relative path>``, the runner's ``$REQUESTFLOW_CACHE``: downloaded weights); the board's data
    dir (absolute), for ``$REQUESTFLOW_DATA``.

    Each distinct content (sha256) crosses the link once, ever: the board's store says what it holds (one command,
    which also checks what it holds, so that a blob damaged on the board is found, removed and sent again); what is
    sent is checked with ``sha256sum`` on arrival and refused (removed, DeployError) if it differs. Data files are
    hard links to the blobs (copies where the file system cannot link).
    """
    chosen: dict[str, Path] = {}
    for root, pairs in (("data", files), ("cache", cache_files)):
        for local, relative in pairs:
            destination = f"{root}/{_relative(relative)}"
            local = Path(local)
            if not local.is_file():
                raise UserError(f"push_data: {local} is not a file")
            if destination in chosen and chosen[destination].resolve() != local.resolve():
                raise UserError(f"push_data: {destination} is given twice ({chosen[destination]} and {local})")
            chosen[destination] = local
    settings = board.settings
    probe = board.run(f"W={_shell_path(settings.work_dir)}; mkdir -p \"$W/blobs/.incoming\" \"$W/data\" && "
                      "cd \"$W\" && pwd", warn=True)
    if probe.return_code != 0 or not probe.stdout.strip():
        raise DeployError(f"board {settings.name}: cannot use work dir {settings.work_dir}: "
                          f"{(probe.stderr or probe.stdout).strip()}")
    work = probe.stdout.strip().splitlines()[-1]
    hashes: dict[Path, str] = {}
    entries = []
    for destination, local in sorted(chosen.items()):
        if local not in hashes:
            hashes[local] = _sha256(local)
        entries.append((local, hashes[local], destination))
    transfer = _sync(board, work, entries, log)
    log(f"board {settings.name}: data: {transfer.describe()}")
    return f"{work}/data"


def _relative(relative: str) -> str:
    text = str(relative)
    parts = text.split("/")
    if (not text or text.startswith("/") or any(p in ("", ".", "..") for p in parts) or text != text.strip()
            or any(c in text for c in "\n\r\0")):
        raise UserError(f"push_data: {relative!r} is not a plain relative path under the data dir")
    return text


# --- the content-addressed store -------------------------------------------------------------------------------


@dataclass
class Transfer:
    """What a sync did: files placed, distinct contents, contents sent (bytes), damaged blobs replaced."""

    files: int
    blobs: int
    sent: int = 0
    sent_bytes: int = 0
    repaired: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        text = (f"{self.files} file(s), {self.blobs} distinct; sent {self.sent} ({self.sent_bytes / 1e6:.1f} MB), "
                f"{self.blobs - self.sent} already there")
        if self.repaired:
            text += f", {self.repaired} damaged on the board and sent again"
        return text + f" ({self.seconds:.1f} s)"


def _sync(board, work: str, entries: list[tuple[Path, str, str]], log: Log) -> Transfer:
    """Make ``<work>/<dest>`` hold each ``local``'s content (sha256 given) through ``<work>/blobs``.

    Round trips: the manifest (one put), the listing (one command: which blobs exist, with their sha256 recomputed),
    one put per missing blob, the commit (one command: sha256sum of what arrived, moved into the store or removed,
    then every destination linked)."""
    started = time.monotonic()
    name = board.settings.name
    token = uuid.uuid4().hex[:12]
    incoming = f"blobs/.incoming/{token}"
    blobs: dict[str, Path] = {}
    for local, sha, _dest in entries:
        if not _SHA256.match(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        blobs.setdefault(sha, local)
    manifest = "".join(f"{sha} {dest}\n" for _local, sha, dest in sorted(entries, key=lambda e: e[2]))
    transfer = Transfer(files=len(entries), blobs=len(blobs))
    quoted_work = shlex.quote(work)
    with _local_text(manifest) as local_manifest:
        _put(board, str(local_manifest), f"{work}/{incoming}.manifest")
    # the listing: sha256sum of each blob the manifest names that the store has (a damaged one is reported)
    listing = board.run(
        f"cd {quoted_work}/blobs && cut -d ' ' -f 1 .incoming/{token}.manifest | sort -u | "
        "while read -r h; do [ -f \"$h\" ] && echo \"$h\"; done | xargs -r sha256sum --", warn=True)
    if listing.return_code != 0:
        raise DeployError(f"board {name}: listing its blob store failed: {(listing.stderr or '').strip()}")
    have = set()
    for line in listing.stdout.splitlines():
        actual, _, blob = line.partition("  ")
        if blob in blobs and actual == blob:
            have.add(blob)
        elif blob in blobs:
            transfer.repaired += 1
            log(f"board {name}: blob {blob} is damaged on the board (its sha256 is {actual}): sending it again")
    missing = [sha for sha in blobs if sha not in have]
    for index, sha in enumerate(missing, 1):
        size = blobs[sha].stat().st_size
        if size > 20_000_000:
            log(f"board {name}: sending {blobs[sha].name} ({size / 1e6:.0f} MB, {index}/{len(missing)})")
        _put(board, str(blobs[sha]), f"{work}/{incoming}.{sha}")
        transfer.sent += 1
        transfer.sent_bytes += size
    # the commit: what arrived is checked and moved into the store (a damaged transfer removed and named), then
    # every destination becomes a hard link to its blob (a copy where linking fails); destinations already linked
    # to the right blob are left alone
    commit = (
        f"cd {quoted_work}/blobs && bad=$(find .incoming -name '{token}.*' ! -name '{token}.manifest' "
        f"-exec sha256sum {{}} + | while read -r actual file; do sha=${{file#.incoming/{token}.}}; "
        "if [ \"$actual\" = \"$sha\" ]; then mv -f \"$file\" \"$sha\"; else rm -f \"$file\"; "
        "echo \"BAD $sha $actual\"; fi; done) || exit 1; "
        f"if [ -n \"$bad\" ]; then rm -f .incoming/{token}.manifest; echo \"$bad\"; exit 3; fi; "
        f"cd {quoted_work} && prev= && while read -r sha dest; do dir=${{dest%/*}}; "
        "if [ \"$dir\" != \"$prev\" ]; then mkdir -p \"$dir\" || exit 1; prev=$dir; fi; "
        "[ \"$dest\" -ef \"blobs/$sha\" ] && continue; rm -f \"$dest\" && "
        "{ ln \"blobs/$sha\" \"$dest\" 2>/dev/null || cp \"blobs/$sha\" \"$dest\"; } || exit 1; "
        f"done < blobs/.incoming/{token}.manifest && rm -f blobs/.incoming/{token}.manifest")
    result = board.run(commit, warn=True)
    if result.return_code == 3:
        damaged = [line.split() for line in result.stdout.splitlines() if line.startswith("BAD ")]
        detail = "; ".join(f"{blobs[sha].name if sha in blobs else sha} (sha256 {sha}, arrived as {actual})"
                           for _bad, sha, actual in damaged)
        raise DeployError(f"board {name}: {len(damaged)} file(s) arrived damaged and were removed: {detail}")
    if result.return_code != 0:
        raise DeployError(f"board {name}: placing files in {work} failed: "
                          f"{(result.stderr or result.stdout).strip()}")
    transfer.seconds = time.monotonic() - started
    return transfer


def _put(board, local: str, remote: str) -> None:
    """``board.put``, failing with where and why: SFTP reports most write errors (a read-only or full file system)
    as a bare "Failure", so the board's shell is asked what writing there says."""
    try:
        board.put(local, remote)
    except OSError as exc:
        probe = board.run(f": > {shlex.quote(remote)} && rm -f {shlex.quote(remote)}", warn=True)
        why = (probe.stderr or "").strip().splitlines()[-1:] if probe.return_code != 0 else []
        raise DeployError(f"board {board.settings.name}: cannot write {remote}: {why[0] if why else exc}") from exc


@contextlib.contextmanager
def _local_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rf-deploy-") as folder:
        path = Path(folder) / "manifest"
        path.write_text(text)
        yield path


def _shell_path(path: str) -> str:
    """A board path for the shell: quoted, with a leading ``~`` left to the board's shell to expand."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)
