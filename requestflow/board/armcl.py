"""Building the Arm Compute Library (ArmCL) on a board, once per source and option list, cached on the board.

Runs on the board with the standard library only (and requestflow's board side), as the controller's
``ArmclBuildOperator`` starts it, or by hand::

    python -m requestflow.board.armcl build --source TARBALL [--sha256 HEX] --options JSON [--version 24.11]
                                           [--jobs N] [--cache DIR] [--result FILE] [--origin TEXT]
    python -m requestflow.board.armcl build --git URL --tag v24.11 --options JSON ...   (boards with internet)
    python -m requestflow.board.armcl probe [--root /]     (CPU features and build tools, one JSON document)
    python -m requestflow.board.armcl example --build C/<key> --source TARBALL [--name graph_mobilenet]
                                           (one of ArmCL's graph examples compiled against a build; its path)

``--options`` is the full scons option list, ``{"arch": "x86_64", "neon": "0", ...}``, given to scons as it is:
the controller validates it (``operators.armcl_spec.ArmclSpec``); here a bad option is scons's own error. Only the
libraries are built (``libarm_compute.so``, ``libarm_compute_graph.so``, 20.08's ``libarm_compute_core.so``:
``armcl_versions``), plus examples and tests when the options ask for them. ccache is used when the board has it
(ArmCL's own ``compiler_cache``; not 20.08's). ``build_dir``, ``install_dir`` and ``compiler_cache`` are the builder's.
The cache key, the errors and the probe are ``requestflow.board.armcl_basics`` (the controller uses them too), the
graph examples ``requestflow.board.armcl_example``.

The cache key is the sha256 of the canonical JSON of the source (``sha256:<tarball sha256>`` or
``git:<commit>``), the full option list and the compiler (``$CXX`` or g++, with the first line of its
``--version``): the number of jobs and ccache change how fast, not what, and are left out.

Exit status: 0 built, or reused from the cache (in about a second); 1 the build failed: its reason (the compiler's
or scons's error lines) in ``failed.json``; 2 bad input or a missing tool (no compiler, no scons), one line on
stderr. Every outcome is also written to ``--result`` (JSON) and printed as the last line of the output.

Board-side layout (``C`` = ``--cache``; by hand the default is ``$REQUESTFLOW_ARMCL_CACHE/builds`` or
``~/.cache/requestflow/armcl/builds``, the operator's is ``<work_dir>/armcl/builds``)::

    C/<key>/build.json        provenance, written last: its presence means a complete build
    C/<key>/lib/              libarm_compute.so, libarm_compute_graph.so
    C/<key>/include/          the headers (arm_compute/, support/, utils/, include/...)
    C/<key>/bin/              examples and tests, only when the options ask for them
    C/<key>/build.log         scons's output
    C/<key>/failed.json       the last failed attempt (then there is no build.json); the next attempt replaces it
    C/.locks/<key>.lock       held while <key> is being built: a second builder waits, then reuses
    C/.tmp/<key>-<random>/    a build in progress (sources, scons's build folder), renamed into C/<key> at the end
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from requestflow.board.armcl_basics import (
    BuildFailed,
    Refused,
    build_key,
    compiler_info,
    cpu_features,
    default_jobs,
    memory_bytes,
    tools,
)
from requestflow.board.armcl_example import build_example
from requestflow.board.armcl_versions import release
from requestflow.board.files import atomic_write_text, sha256_file

BUILDER_OPTIONS = ("build_dir", "install_dir", "compiler_cache")  # set here, never by the caller
OUT = "out"  # scons's build_dir (relative: <source>/build/out)
_ERROR_LINE = re.compile(r"\berror:|^scons: \*\*\*|^Unknown variables:|^ERROR\b|^Invalid value|^Cannot |"
                         r"^Error converting")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r'^VERSION\s*=\s*"v?([^"]+)"', re.MULTILINE)


# --- the build -------------------------------------------------------------------------------------------------


def default_cache() -> Path:
    """``$REQUESTFLOW_ARMCL_CACHE/builds``, else ``~/.cache/requestflow/armcl/builds``: kept across runs (and CI
    runs on one machine), unlike requestflow's per-session caches."""
    root = os.environ.get("REQUESTFLOW_ARMCL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "requestflow", "armcl")
    return Path(root, "builds")


def build(*, options: dict, cache: str | os.PathLike, source: str | None = None, sha256: str | None = None,
          git: str | None = None, tag: str | None = None, version: str | None = None, jobs: int | None = None,
          origin: str | None = None, log=print) -> dict:
    """Build (or reuse) ArmCL from a source tarball or a git tag; the provenance (``build.json``) with
    ``reused``. Raises Refused (bad input, a missing tool) or BuildFailed (the build ran and failed)."""
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise Refused("--options must be a JSON object of scons options")
    clash = sorted(set(options) & set(BUILDER_OPTIONS))
    if clash:
        raise Refused(f"option {clash[0]} is set by the builder, not by the caller")
    options = {name: str(value) for name, value in sorted(options.items())}
    if (source is None) == (git is None):
        raise Refused("give either --source TARBALL or --git URL --tag TAG")
    compiler = compiler_info()
    if compiler["path"] is None:
        raise Refused(f"no C++ compiler: {compiler['name']} not found on PATH (install g++, e.g. apt-get install "
                      "g++, or set CXX)")
    scons = shutil.which("scons")
    if scons is None:
        raise Refused("scons not found on PATH (install it, e.g. apt-get install scons)")
    if compiler["version"] is None:
        raise Refused(f"the C++ compiler {compiler['path']} does not run (`{compiler['name']} --version` failed)")
    cache = Path(cache).expanduser().resolve()
    if source is not None:
        tarball = Path(source).expanduser()
        if not tarball.is_file():
            raise Refused(f"source tarball {source} not found")
        actual = sha256_file(tarball)
        if sha256 is not None and actual != sha256.lower():
            raise Refused(f"source tarball {source}: sha256 is {actual}, expected {sha256}")
        source_info = {"kind": "tarball", "name": tarball.name, "sha256": actual, "origin": origin or str(tarball)}
        source_id = f"sha256:{actual}"
    else:
        if not tag:
            raise Refused("--git needs --tag (an official release tag, e.g. v24.11)")
        commit = _git_tag_commit(git, tag)
        source_info = {"kind": "git", "url": git, "tag": tag, "commit": commit, "origin": origin}
        source_id = f"git:{commit}"
    key = build_key(source_id, options, compiler)
    final = cache / key
    (cache / ".locks").mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".locks" / f"{key}.lock", log):
        if (final / "build.json").is_file():
            provenance = json.loads((final / "build.json").read_text())
            log(f"ArmCL build {key[:16]} is in the cache ({final}): reused")
            return {**provenance, "reused": True}
        tmp_root = cache / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        for stale in tmp_root.glob(f"{key}-*"):  # a builder of this key that was killed (we hold its lock)
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=tmp_root))
        try:
            return _build_in(work, final, key, options, compiler, scons, source_info, source, version, jobs, log)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _build_in(work: Path, final: Path, key: str, options: dict, compiler: dict, scons: str, source_info: dict,
              tarball: str | None, version: str | None, jobs: int | None, log) -> dict:
    started, started_at = time.monotonic(), _now()
    if tarball is not None:
        log(f"extracting {Path(tarball).name}")
        top = _extract(Path(tarball), work / "src")
    else:
        top = work / "src" / "ComputeLibrary"
        log(f"cloning {source_info['url']} at {source_info['tag']}")
        _run_checked(["git", "clone", "--quiet", "--depth", "1", "--branch", source_info["tag"], source_info["url"],
                      str(top)], "git clone")
        head = _run_checked(["git", "-C", str(top), "rev-parse", "HEAD"], "git rev-parse").strip()
        if head != source_info["commit"]:
            raise Refused(f"{source_info['url']} {source_info['tag']} moved while cloning ({source_info['commit']} "
                          f"then {head})")
    source_version = _source_version(top)
    if version and source_version and _plain(version) != _plain(source_version):
        raise Refused(f"the source is ArmCL {source_version}, not the {version} asked for")
    jobs = jobs or default_jobs(os.cpu_count(), memory_bytes())
    facts = release(version or source_version)  # 20.08: libarm_compute_core.so too, no compiler_cache option
    ccache = shutil.which("ccache") if "compiler_cache" in facts.builder_options else None
    install = f"build/{OUT}/install"
    targets = [f"{install}/lib/{name}" for name in facts.libraries] + [f"{install}/include"]
    wants_bin = any(options.get(name) == "1" for name in ("examples", "validation_tests", "benchmark_tests",
                                                           "benchmark_examples", "validate_examples", "gemm_tuner"))
    if wants_bin:
        targets.append(f"{install}/bin")
    command = [scons, f"-j{jobs}", *(f"{name}={value}" for name, value in options.items()), f"build_dir={OUT}",
               "install_dir=install", *([f"compiler_cache={ccache}"] if ccache else []), *targets]
    log(f"ArmCL {source_version or version or '?'} build {key[:16]}: {' '.join(command[1:])}")
    log(f"compiler: {compiler['version']}; ccache: {'yes' if ccache else 'no'}; {jobs} job(s)")
    record = {"key": key, "library": "arm_compute", "version": version or source_version,
              "source_version": source_version, "source": source_info, "options": options,
              "compiler": compiler, "command": command, "jobs": jobs, "ccache": ccache, "started_at": started_at}
    code, error_lines, tail = _stream(command, top, work / "build.log", log)
    seconds = time.monotonic() - started
    if code != 0:
        reason = "; ".join(error_lines[:3]) or (tail[-1] if tail else f"scons exited {code}")
        failed = {**record, "status": "failed", "exit_code": code, "reason": reason, "error_lines": error_lines,
                  "log_tail": tail[-40:], "seconds": round(seconds, 1), "finished_at": _now()}
        _keep_failure(final, failed, work / "build.log")
        raise BuildFailed(reason, failed)
    built = top / install
    missing = [name for name in facts.libraries if not (built / "lib" / name).is_file()]
    if missing:
        failed = {**record, "status": "failed", "exit_code": code, "reason": f"scons made no {missing[0]}",
                  "error_lines": [], "log_tail": tail[-40:], "seconds": round(seconds, 1), "finished_at": _now()}
        _keep_failure(final, failed, work / "build.log")
        raise BuildFailed(failed["reason"], failed)
    staged = work / "staged"
    staged.mkdir()
    os.rename(built / "lib", staged / "lib")
    os.rename(built / "include", staged / "include")
    if wants_bin and (built / "bin").is_dir():
        os.rename(built / "bin", staged / "bin")
    shutil.copyfile(work / "build.log", staged / "build.log")
    libraries = {path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
                 for path in sorted((staged / "lib").iterdir()) if path.is_file()}
    provenance = {**record, "status": "ok", "build_seconds": round(seconds, 1), "libraries": libraries,
                  "library_bytes": sum(entry["bytes"] for entry in libraries.values()),
                  "machine": {"hostname": platform.node(), "arch": platform.machine(), "cpu_count": os.cpu_count(),
                              "memory_bytes": memory_bytes()},
                  "finished_at": _now(), "path": str(final)}
    atomic_write_text(staged / "build.json", json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    os.chmod(staged / "build.json", 0o644)  # like the libraries: readable by whoever uses the build
    if final.exists():  # a failed attempt's folder (failed.json, no build.json)
        shutil.rmtree(final)
    os.rename(staged, final)
    log(f"ArmCL build {key[:16]} done in {seconds:.0f} s: {', '.join(libraries)} "
        f"({provenance['library_bytes'] / 1e6:.1f} MB) in {final}")
    return {**provenance, "reused": False}


def _extract(tarball: Path, into: Path) -> Path:
    """Extract a source tarball (any compression tarfile reads) safely; its one top-level folder."""
    into.mkdir(parents=True)
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Refused(f"source tarball {tarball.name} cannot be extracted: {exc}") from None
    entries = [p for p in into.iterdir()]
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else into
    if not (top / "SConstruct").is_file():
        raise Refused(f"source tarball {tarball.name} holds no SConstruct: not an ArmCL source")
    return top


def _source_version(top: Path) -> str | None:
    try:
        match = _VERSION.search((top / "SConscript").read_text(errors="replace"))
    except OSError:
        return None
    return f"v{match.group(1)}" if match else None


def _plain(version: str) -> str:
    return version.strip().lstrip("v")


def _stream(command: list[str], cwd: Path, log_path: Path, log) -> tuple[int, list[str], list[str]]:
    """Run scons, every line to ``log`` and to ``log_path``; (exit code, its error lines, the last lines)."""
    # git in ArmCL's version file: never the history of a repository the cache happens to sit in. ArmCL's
    # SConscript orders its sources through Python sets: a fixed hash seed makes the link order, and so the
    # libraries, the same from one build to the next (checked: two builds of one key are identical byte for byte)
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent), "LC_ALL": "C", "PYTHONHASHSEED": "0"}
    errors: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=200)
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, errors="replace", env=env)
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            out.write(line + "\n")
            log(line)
            tail.append(line)
            if _ERROR_LINE.search(line) and len(errors) < 20 and line not in errors:
                errors.append(line.strip())
        code = process.wait()
    return code, errors, list(tail)


def _keep_failure(final: Path, failed: dict, log_path: Path) -> None:
    """``failed.json`` (and the log) in ``C/<key>/``, which has no build.json: the next attempt replaces it."""
    final.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        shutil.copyfile(log_path, final / "build.log")
    atomic_write_text(final / "failed.json", json.dumps(failed, indent=1, sort_keys=True) + "\n")
    os.chmod(final / "failed.json", 0o644)


def _git_tag_commit(url: str, tag: str) -> str:
    """The commit a tag names (its peeled commit for an annotated tag), asked of the remote: the key needs it
    before cloning."""
    if shutil.which("git") is None:
        raise Refused("git not found on PATH (needed for a --git source; install git or give a tarball)")
    out = _run_checked(["git", "ls-remote", "--tags", url, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}"],
                       "git ls-remote")
    refs = dict(reversed(line.split("\t", 1)) for line in out.splitlines() if "\t" in line)
    commit = refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")
    if not commit:
        raise Refused(f"{url} has no tag {tag}")
    return commit


def _run_checked(command: list[str], what: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL,
                                env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        raise Refused(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise Refused(f"{what} failed: {last[0]}")
    return result.stdout


@contextlib.contextmanager
def _locked(path: Path, log):
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build of {path.stem[:16]} is running on this board: waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the command line ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m requestflow.board.armcl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("build", help="build ArmCL (or reuse the cached build)")
    run.add_argument("--source", help="the source tarball")
    run.add_argument("--sha256", help="the tarball's expected sha256")
    run.add_argument("--git", help="a git repository URL (boards with internet); with --tag")
    run.add_argument("--tag", help="the release tag to clone, e.g. v24.11")
    run.add_argument("--options", required=True, help="the full scons option list as a JSON object")
    run.add_argument("--version", help="the ArmCL version expected in the source, e.g. 24.11")
    run.add_argument("--jobs", type=int, help="parallel compile jobs (default: by cores and memory)")
    run.add_argument("--cache", help="the build cache (default: $REQUESTFLOW_ARMCL_CACHE/builds or "
                                     "~/.cache/requestflow/armcl/builds)")
    run.add_argument("--origin", help="where the source came from (recorded)")
    run.add_argument("--result", help="also write the outcome to this JSON file")
    probe = sub.add_parser("probe", help="CPU features and build tools as one JSON document")
    probe.add_argument("--root", default="/", help="root of /proc (tests use a fake tree)")
    example = sub.add_parser("example", help="compile one of ArmCL's graph examples against a build; its path")
    example.add_argument("--build", required=True, help="the build's folder (C/<key>)")
    example.add_argument("--source", required=True, help="the source tarball the build came from")
    example.add_argument("--name", default="graph_mobilenet", help="the example (default: graph_mobilenet)")
    args = parser.parse_args(argv)
    # a stopped job (SIGTERM to its process group) still removes its half-built folder on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.command == "example":
        try:
            print(build_example(args.build, args.source, args.name, log=lambda line: print(line, file=sys.stderr)))
            return 0
        except Refused as exc:
            print(f"armcl example: {exc}", file=sys.stderr)
            return 2
        except BuildFailed as exc:
            print(f"armcl example failed: {exc}", file=sys.stderr)
            return 1
    if args.command == "probe":
        print(json.dumps({"cpu_features": cpu_features(args.root), "tools": tools(), "cpu_count": os.cpu_count(),
                          "memory_bytes": memory_bytes(), "arch": platform.machine()}, sort_keys=True))
        return 0

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise Refused(f"--options is not JSON: {exc}") from None
        if args.jobs is not None and args.jobs < 1:
            raise Refused(f"--jobs must be at least 1, got {args.jobs}")
        if args.sha256 is not None and not _SHA256.match(args.sha256.lower()):
            raise Refused(f"--sha256 {args.sha256!r} is not a sha256")
        outcome = build(options=options, cache=args.cache or default_cache(), source=args.source, sha256=args.sha256,
                        git=args.git, tag=args.tag, version=args.version, jobs=args.jobs, origin=args.origin, log=log)
        code = 0
    except Refused as exc:
        outcome, code = {"status": "refused", "reason": str(exc)}, 2
        print(f"armcl build: {exc}", file=sys.stderr, flush=True)
    except BuildFailed as exc:
        outcome, code = exc.record, 1
        print(f"armcl build failed: {exc}", flush=True)
    if args.result:
        atomic_write_text(args.result, json.dumps(outcome, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: outcome.get(k) for k in ("status", "key", "reused", "reason", "build_seconds",
                                                   "library_bytes", "path") if k in outcome}, sort_keys=True),
          flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
