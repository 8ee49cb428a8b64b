"""Deploying the runner and its data to a board, so that a board needs neither internet nor a preinstalled
requestflow, and the runner reads only the board's work dir.

What, in three steps (this module is the second; the others are ``operators.bundle``, ``operators.data_push`` and
the board's store ``operators.blob_store``):

1. ``build_bundle`` (``operators.bundle``, on the controller): the project's wheel plus a wheelhouse of the board's
   dependencies, cached by a digest of the sources, the constraints and the target; reused while nothing changes.
2. ``deploy_runner``: the bundle into ``<work_dir>/runner/<digest>/``: the wheels the board lacks are sent once
   (a content-addressed store, below), a venv is made with the board's Python and the runner installed into it
   with ``pip --no-index`` from those wheels only, then checked. Reused while unchanged: one round trip. A new
   runner whose other wheels another runner on the board already has (the common case: only requestflow's code
   changed) gets a hard-linked copy of that runner's venv with only requestflow's wheel installed over it, seconds
   instead of minutes (``clone_script``); a runner sharing most of its wheels gets the copy with the others
   installed, pinned to the wheelhouse's versions, and what it does not need removed.
3. ``push_data`` (``operators.data_push``): weights and images into ``<work_dir>/data/`` (downloaded weights into
   ``<work_dir>/cache/``) through the same store, each distinct content sent once.
   ``operators.point_data.files_for_points`` says which files a sweep's points need (the registry's resolution, the
   dataset's image selection: the runner's own code, asked on the controller).

Why a content-addressed store: a new bundle (one source file changed) differs from the last one by the project's
small wheel only, and two data paths with the same content (or the same weights in two sweeps) are one file: only
what the board lacks crosses the link, and the board checks every transfer's sha256 with ``sha256sum``.

Board-side layout (``W`` = the board's work dir)::

    W/blobs/<sha256>                    every file sent, named by its content (wheels, weights, images)
    W/blobs/.incoming/                  transfers in progress (verified, then moved into blobs/)
    W/runner/<digest>/wheels/*.whl      the bundle's wheelhouse (hard links to blobs)
    W/runner/<digest>/venv/             the runner: <board python> -m venv, pip install --no-index
    W/runner/<digest>/.deployed         written last, once the runner was installed and checked
    W/runner/<digest>/.wheels           its base Python and every wheel but the project's (sha256): for the next
                                        runner to find a venv to copy
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

import os
import re
import shlex
import sys
import time

from operators.blob_store import DeployError, Log, shell_path, sync
from operators.bundle import Bundle, normalize_arch
from requestflow.errors import UserError


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
    answer is ``sys.executable``. A bundle with a runtime spec (``operators.runtime_spec``) is installed on any
    board, the local one too: the spec with the runner, written into the venv (``requestflow.board.runtime``), and
    the runner linked as ``W/runner/<bundle.link>`` instead of ``current``. Its digest does not follow the
    project's sources (``operators.runtime_spec``): its ``.deployed`` holds the sha256 of the project wheel it has,
    and a new project wheel is installed into the same venv (``pip --no-deps``, seconds), its dependencies kept.

    A venv is made new (``python -m venv``, then pip from the whole wheelhouse: minutes, mostly unpacking and
    byte-compiling TensorFlow) only when no installed runner of the board has the same base Python and at least
    half of the bundle's bytes in identical wheels (``choose_donor``); otherwise it is made from that runner's venv
    (``clone_script``), and made new if that fails. Every way ends with the same checks.
    """
    from operators import board_jobs
    from operators.board_hook import LocalBoard

    if isinstance(board, LocalBoard) and (bundle is None or not bundle.runtime):
        log(f"board {board.settings.name}: this machine; the runner is this installation ({sys.executable})")
        return sys.executable
    settings, digest, link = board.settings, bundle.digest, bundle.link
    project = bundle.sha256[bundle.project_wheel]
    # a runtime's runner is current when its .deployed names this project wheel; the default runner's when it exists
    current = f'[ "$(cat {{}}.deployed 2>/dev/null)" = {project} ]' if bundle.runtime else "[ -f {}.deployed ]"
    started = time.monotonic()
    version_code = ('import os, platform, sys; print("python %d.%d" % sys.version_info[:2], platform.python_version(), '
                    'os.path.realpath(sys.executable))')
    probe = board.run(
        f"W={shell_path(settings.work_dir)}; mkdir -p \"$W/blobs/.incoming\" \"$W/runner\" && cd \"$W\" && pwd "
        f"&& uname -m && if {current.format(f'runner/{digest}/')}; then ln -sfn {digest} runner/{link} && "
        f"{_emulation_marker(settings, f'runner/{digest}/venv')} && echo DEPLOYED; "
        f"else {shlex.quote(settings.python)} -c {shlex.quote(version_code)} 2>&1 | tail -n 3; {_LIST_DONORS}; fi",
        warn=True)
    lines, donors = _split_donors(probe.stdout)
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
    found = re.match(r"^python (\d+\.\d+) (\S+) (.+)$", lines[-1])
    if not found:
        raise UserError(f"board {settings.name}: its python {settings.python!r} does not run: "
                        f"{' '.join(lines[2:])} (set the connection's extra `python`)")
    if found.group(1) != bundle.python:
        raise UserError(f"board {settings.name}: its python {settings.python!r} is Python {found.group(2)}, the "
                        f"runner bundle is for Python {bundle.python}: set the connection's extra `python` to a "
                        f"Python {bundle.python} interpreter on the board")
    interpreter = f"python {found.group(3)} {found.group(2)}"  # the venvs' base: a donor must have the same
    dependencies = {name: sha for name, sha in bundle.sha256.items() if name != bundle.project_wheel}
    donor, exact = choose_donor(donors, interpreter, dependencies,
                                {path.name: path.stat().st_size for path in bundle.wheels}, own=digest)

    log(f"board {settings.name}: deploying runner {digest} ({len(bundle.wheels)} wheels) to {runner_dir}")
    entries = [(path, bundle.sha256[path.name], f"runner/{digest}/wheels/{path.name}") for path in bundle.wheels]
    transfer = sync(board, work, entries, log)
    log(f"board {settings.name}: wheels: {transfer.describe()}")

    pip = "PIP_CONFIG_FILE=/dev/null venv/bin/python -m pip --isolated --disable-pip-version-check"
    env = f"REQUESTFLOW_CACHE={shlex.quote(work + '/cache')} REQUESTFLOW_DATA={shlex.quote(work + '/data')}"
    wanted = f"requestflow=={bundle.version}" + (f" {shlex.quote(bundle.runtime)}" if bundle.runtime else "")
    project_wheel = f"wheels/{shlex.quote(bundle.project_wheel)}"
    fresh = (f"rm -rf venv venv.clone && {shlex.quote(settings.python)} -m venv venv "
             f"&& {pip} install --no-index --no-cache-dir --progress-bar off --find-links wheels {wanted}")
    make = fresh
    if donor is not None:  # the donor's venv hard-linked, then only what differs installed (clone_script)
        make = (f"{{ {clone_script(settings.python, f'{work}/runner/{donor}', bundle, exact, pip)} ; }} || "
                f"{{ echo 'cloning runner {donor} failed: a new venv instead'; {fresh}; }}")
        log(f"board {settings.name}: making runner {digest} from runner {donor}'s venv "
            + ("(the same dependencies: only requestflow installed)" if exact
               else "(the dependencies it shares hard-linked, the others installed)"))
    markers = _emulation_marker(settings, "venv")
    if bundle.runtime:  # the spec too, written into the venv; a venv with them gets only a new project wheel
        from requestflow.board.runtime import MARKER

        marker = shlex.quote(f"venv/{MARKER}")
        make = (f"rm -f .deployed; if [ -f .dependencies ]; then {pip} install --no-index --no-cache-dir --no-deps "
                f"--force-reinstall --progress-bar off {project_wheel} && echo 'runner updated in place'; "
                f"else {make} && {markers} "
                f"&& rm -f {marker} && echo {shlex.quote(bundle.runtime)} > {marker} && touch .dependencies; fi")
    else:
        make = f"{make} && {markers}"
    listing = "".join(f"{name} {sha}\n" for name, sha in sorted(dependencies.items()))
    install = (
        f"cd {shlex.quote(runner_dir)} && if {current.format('')}; then echo 'already deployed'; exit 0; fi; "
        f"{make} "
        f"&& {pip} check "
        f"&& {env} venv/bin/python -m requestflow.cli models > /dev/null "
        f"&& {env} venv/bin/python -c 'import numpy, PIL, h5py, tqdm, ai_edge_litert.interpreter, tensorflow' "
        f"&& printf %s {shlex.quote(interpreter + chr(10) + listing)} > .wheels "
        f"&& {f'echo {project} >' if bundle.runtime else 'touch'} .deployed && ln -sfn {digest} ../{link} "
        "&& echo 'runner installed and checked'")
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


# the probe's list of the runners a new venv could be made from: each installed runner's .wheels (its base Python,
# then every wheel but the project's, with its sha256), written once it was installed and checked
_DONORS = "--donors--"
_LIST_DONORS = (f"echo {_DONORS}; for d in runner/*; do if [ ! -L \"$d\" ] && [ -f \"$d/.deployed\" ] && "
                "[ -f \"$d/.wheels\" ] && [ -x \"$d/venv/bin/python\" ]; then echo \"donor ${d#runner/}\"; "
                "cat \"$d/.wheels\"; fi; done; true")


def _split_donors(stdout: str) -> tuple[list[str], dict[str, tuple[str, dict[str, str]]]]:
    """The probe's lines before the donor list, and the donors: runner digest -> (its base Python line, wheel file
    name -> sha256)."""
    lines = stdout.strip().splitlines()
    if _DONORS not in lines:
        return lines, {}
    at = lines.index(_DONORS)
    donors: dict[str, tuple[str, dict[str, str]]] = {}
    name = None
    for line in lines[at + 1:]:
        if line.startswith("donor "):
            name = line.split(" ", 1)[1]
            donors[name] = ("", {})
        elif name is not None and not donors[name][0]:
            donors[name] = (line, {})
        elif name is not None and len(line.split()) == 2:
            wheel, sha = line.split()
            donors[name][1][wheel] = sha
    return lines[:at], donors


def choose_donor(donors: dict[str, tuple[str, dict[str, str]]], interpreter: str, wanted: dict[str, str],
                 sizes: dict[str, int], own: str = "") -> tuple[str | None, bool]:
    """(the runner whose venv a new runner's venv is best made from, whether its dependencies are exactly
    ``wanted``), or (None, False): a new venv. A donor has the same base Python (``interpreter``: path and full
    version) and, unless exact, at least half of ``wanted``'s bytes in identical wheels (same file name, same
    sha256): hard-linking those is what saves the time (tensorflow's wheel is most of a runner)."""
    best, best_bytes = None, 0
    for name, (python, wheels) in sorted(donors.items()):
        if name == own or python != interpreter:
            continue
        if wheels == wanted:
            return name, True
        shared = sum(sizes.get(wheel, 0) for wheel, sha in wanted.items() if wheels.get(wheel) == sha)
        if shared > best_bytes:
            best, best_bytes = name, shared
    if best is not None and 2 * best_bytes >= sum(sizes.get(wheel, 0) for wheel in wanted):
        return best, False
    return None, False


# run by the board's Python: a hard-linked copy of a venv pointed at its own folder (its scripts' #! lines, the
# activate scripts and pyvenv.cfg name the venv's path; nothing in site-packages does). Each file changed is
# written anew and renamed over its link, so the donor's file is untouched.
_REPOINT = """import os, sys
donor, clone = sys.argv[1:]
old = os.path.realpath(donor).encode()
new = (os.path.realpath(os.path.dirname(os.path.abspath(clone))) + "/venv").encode()
names = ["pyvenv.cfg"] + ["bin/" + n for n in os.listdir(os.path.join(clone, "bin"))]
for path in (os.path.join(clone, n) for n in names):
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as f:
        data = f.read()
    if old in data:
        with open(path + ".new", "wb") as f:
            f.write(data.replace(old, new))
        os.chmod(path + ".new", os.stat(path).st_mode & 0o7777)
        os.replace(path + ".new", path)
"""

# run by a made venv's Python: the distributions installed that nothing reachable from the arguments (requestflow,
# the runtime spec) requires here (markers evaluated on the board, extras followed), but the venv's own pip and
# setuptools: what a new venv installed from the same wheelhouse would not have
_NOT_NEEDED = """import sys, importlib.metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical
dists = {canonical(d.metadata["Name"]): d for d in md.distributions()}
seen, todo = set(), [(Requirement(r), "") for r in sys.argv[1:]]
while todo:
    req, extra = todo.pop()
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        continue
    name = canonical(req.name)
    for key in [(name, "")] + [(name, e) for e in sorted(req.extras)]:
        if key not in seen:
            seen.add(key)
            todo += [(Requirement(r), key[1]) for r in dists[name].requires or []]
print(" ".join(sorted(set(dists) - {n for n, _ in seen} - {"pip", "setuptools"})))
"""
_SEEDS = ("pip", "setuptools")  # what ``python -m venv`` installs (Python 3.11)


def clone_script(python: str, donor: str, bundle: Bundle, exact: bool, pip: str) -> str:
    """The board-side commands (in the new runner's folder) that make its ``venv`` from the runner ``donor``'s:
    ``cp -al`` (every file a hard link: seconds, no space; pip and Python replace files by renaming, never in place,
    so neither venv can change the other's), the copy pointed at its own folder, the runtime and emulation markers
    removed (written again by the caller), and requestflow's wheel installed over the donor's (``--no-deps
    --force-reinstall``). When the donor's dependencies are not exactly the bundle's (``exact`` False): pip installs
    what differs, every package pinned to the wheelhouse's version (``-c``: an installed version not the wheel's is
    replaced), and what the new runner does not need is uninstalled: the venv holds what a new venv from the same
    wheelhouse would (its base pip and setuptools aside). A failure is the caller's cue to make a new venv."""
    from packaging.utils import parse_wheel_filename

    from requestflow.board.emulation import MARKER as EMULATION
    from requestflow.board.runtime import MARKER as RUNTIME

    wanted = f"requestflow=={bundle.version}" + (f" {shlex.quote(bundle.runtime)}" if bundle.runtime else "")
    script = (f"rm -rf venv venv.clone && cp -al {shlex.quote(donor + '/venv')} venv.clone "
              f"&& rm -f venv.clone/{shlex.quote(RUNTIME)} venv.clone/{shlex.quote(EMULATION)} "
              f"&& {shlex.quote(python)} -c {shlex.quote(_REPOINT)} {shlex.quote(donor + '/venv')} venv.clone "
              f"&& mv venv.clone venv && {pip} install --no-index --no-cache-dir --no-deps --force-reinstall "
              f"--progress-bar off wheels/{shlex.quote(bundle.project_wheel)}")
    if not exact:
        # the venv's own pip and setuptools are not pinned: a new venv keeps the ones it was made with unless a
        # requirement wants another version, and so does this one
        pins = "".join(f"{name}=={version}\n" for name, version, *_ in
                       (parse_wheel_filename(w.name) for w in bundle.wheels if w.name != bundle.project_wheel)
                       if name not in _SEEDS)
        roots = " ".join(shlex.quote(r) for r in ["requestflow", *([bundle.runtime] if bundle.runtime else [])])
        script += (f" && printf %s {shlex.quote(pins)} > pins.txt && {pip} install --no-index --no-cache-dir "
                   f"--progress-bar off --find-links wheels -c pins.txt {wanted} "
                   f"&& extra=$(venv/bin/python -c {shlex.quote(_NOT_NEEDED)} {roots}) "
                   f"&& if [ -n \"$extra\" ]; then {pip} uninstall -y $extra; fi")
    return f"{script} && echo {shlex.quote('runner cloned from ' + donor.rsplit('/', 1)[-1])}"


def _emulation_marker(settings, venv: str) -> str:
    """The shell command that writes the board's ``emulator`` extra into the runner's venv (or removes an old one):
    the runner then labels every result emulated (``requestflow.board.emulation.MARKER``), whoever starts it."""
    from requestflow.board.emulation import MARKER

    marker = shlex.quote(f"{venv}/{MARKER}")
    emulator = getattr(settings, "emulator", None)
    # removed first: a venv made from another's (clone_script) shares its files until they are replaced
    return f"rm -f {marker} && echo {shlex.quote(emulator)} > {marker}" if emulator else f"rm -f {marker}"


def runner_python(board) -> str:
    """The board-side Python of the runner deployed last (``runner/current``), without deploying: one round trip.
    A DeployError says so when the board has none. The LocalBoard's is ``sys.executable``."""
    return runner_location(board)[0]


def runner_location(board, runtime: str | None = None) -> tuple[str, str]:
    """(the deployed runner's Python, the board's work dir), both absolute (``~`` expanded by the board): what a
    point's command line and its ``$REQUESTFLOW_DATA`` / ``$REQUESTFLOW_CACHE`` need. One round trip. ``runtime``:
    the runner of that runtime spec (a point's ``runtime``), on the local board too."""
    from operators.board_hook import LocalBoard
    from operators.runtime_spec import parse

    if isinstance(board, LocalBoard) and not runtime:
        return sys.executable, os.path.abspath(os.path.expanduser(board.settings.work_dir))
    link = parse(runtime).link if runtime else "current"
    work = shell_path(board.settings.work_dir)
    result = board.run(f"cd {work}/runner/{link} 2>/dev/null && [ -f .deployed ] && "
                       f"echo \"$(pwd -P)/venv/bin/python\" && cd {work} && pwd -P", warn=True)
    lines = result.stdout.strip().splitlines()
    if result.return_code != 0 or len(lines) < 2:
        what = f"runner of runtime {runtime}" if runtime else "runner"
        raise DeployError(f"board {board.settings.name}: no {what} deployed in {board.settings.work_dir}/runner "
                          "(provision the board first: deploy_runner)")
    return lines[-2], lines[-1]
