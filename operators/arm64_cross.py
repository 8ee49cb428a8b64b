"""ArmCL cross-built from source on the controller for an aarch64 board (issue #15, ``cross: true`` in
``config/armcl.json``): the verified source (``operators.armcl_sources``) built by requestflow's own builder
(``python -m requestflow.board.armcl build``, the one boards run) inside the cached trixie toolchain environment
(``operators.arm64_toolchain``: GCC 14's ``aarch64-linux-gnu-g++`` and scons), with ArmCL's own cross options
(its SConstruct: ``build=cross_compile``, ``toolchain_prefix=aarch64-linux-gnu-`` for ld/as/ar/ranlib;
``compiler_prefix`` empty since ``$CXX``/``$CC`` name the cross compilers, which the builder's key records).

The key is the builders' (``requestflow.board.armcl_basics.build_key``: source sha256, the full option list, the
compiler's name and version line), so it holds the arch (``arch=arm64-v8a``), ``build=cross_compile`` and the
cross compiler. Two levels, both under ``operators.arm64_toolchain.cache_root``::

    cross/<key>/             the builder's own build (its cache: build.json, lib/, include/, build.log;
                             cross/.locks, cross/.tmp as on a board)
    builds/<key>/            the build a board is shipped (``operators.arm64_debian.board_shipment``): lib/,
                             include/, runtime/ (trixie's loader, glibc, libstdc++, libgcc_s: the board's userland
                             may be older than the compiler's) and build.json (provenance, ``cross``)

Each is checked on use (every library's sha256 against its build.json): a damaged ``builds/<key>`` is made again
from ``cross/<key>``; a damaged ``cross/<key>`` is removed and built again. ``python -m operators.arm64_cross build
NAME`` builds a spec of ``config/armcl.json`` explicitly, without a board (as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from operators.arm64_toolchain import CROSS_CXX, Toolchain, ToolchainError, cache_root, require_root, toolchain
from operators.armcl_spec import ArmclSpec, BuildOptions, options_for, resolve_source
from requestflow.errors import UserError

Log = Callable[[str], None]

PREFIX = "aarch64-linux-gnu-"
CROSS_CC = f"{PREFIX}gcc"
# the builder sets these (never a spec: armcl_spec.REFUSED); CXX and CC in the builder's environment name the compilers
CROSS_OPTIONS = {"build": "cross_compile", "toolchain_prefix": PREFIX, "compiler_prefix": ""}
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNNING: set[subprocess.Popen] = set()  # what in_environment runs now (stop_all stops it)


def cross_options(spec: ArmclSpec, board_arch: str, controller_arch: str | None = None,
                  cpu_count: int | None = None, memory: int | None = None) -> BuildOptions:
    """The full scons options of a ``cross: true`` spec for a board of ``board_arch`` (``uname -m``), built on a
    controller of ``controller_arch`` (default: this machine's): the board's options as ``options_for`` makes them
    (arch from the board: arm64-v8a; NEON, which every ARMv8-A application core has), ArmCL's cross options, and
    jobs by the controller's cores and memory (or the spec's). Refused (UserError): a spec that is not cross, a
    board of the controller's own architecture (build it on the board), a board that is not aarch64."""
    from operators.armcl_spec import MACHINES
    from requestflow.board.armcl_basics import default_jobs, memory_bytes

    if not spec.cross:
        raise UserError("this ArmCL spec is not cross: true: it is built on the board")
    controller_arch = controller_arch or platform.machine()
    machine = MACHINES.get(str(board_arch).lower())
    if machine is not None and machine == MACHINES.get(controller_arch.lower()):
        raise UserError(f"ArmCL cross: true cross-builds for a board of another architecture; this {board_arch} "
                        f"board is the controller's own ({controller_arch}): drop cross, the board builds it")
    if machine != "aarch64":
        raise UserError(f"ArmCL cross: true builds for aarch64 boards (trixie's {PREFIX} toolchain), not for a "
                        f"{board_arch or 'unknown'} board")
    plan = options_for({"arch": board_arch, "cpu_features": None}, spec)  # NEON: every ARMv8-A core has it
    jobs = spec.jobs or default_jobs(cpu_count or os.cpu_count(), memory if memory is not None else memory_bytes())
    return BuildOptions(options=dict(sorted({**plan.options, **CROSS_OPTIONS}.items())), jobs=jobs, machine=machine)


def cross_key(source_id: str, options: dict, chain: Toolchain) -> str:
    """The build's key, the one the builder computes in the environment (``$CXX`` and its version line)."""
    from requestflow.board.armcl_basics import build_key

    return build_key(source_id, options, {"name": CROSS_CXX, "version": chain.record["compiler"]})


def cross_build(spec: ArmclSpec, board_arch: str = "aarch64", *, cache_dir: str | os.PathLike | None = None,
                source_cache_dir: str | os.PathLike | None = None, chain: Toolchain | None = None,
                timeout_s: float = 6 * 3600, log: Log = print) -> tuple[Path, bool]:
    """The build folder of a ``cross: true`` spec for a ``board_arch`` board, made once and checked on each use:
    (``builds/<key>``, reused). What ``board_shipment`` takes, as a Debian binary build is. ``chain``: the
    toolchain environment when the caller has just checked it (else ``toolchain()`` checks it)."""
    from operators.arm64_debian import check_build
    from operators.file_lock import file_lock

    plan = cross_options(spec, board_arch)  # refused before anything is fetched
    require_root("ArmCL cross-built in the toolchain environment")
    chain = chain or toolchain(cache_dir, log=log)
    tarball = resolve_source(spec, source_cache_dir, log=log)
    if tarball is None:
        raise UserError("ArmCL cross: true needs a source the controller holds (debian or tarball)")
    key = cross_key(tarball.source_id, plan.options, chain)
    builds = cache_root(cache_dir) / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    final = builds / key
    with file_lock(builds / f".{key[:16]}.lock"):
        if final.exists():
            problem = check_build(final)
            if problem is None:
                log(f"ArmCL {spec.version} cross-built for {board_arch}: build {key[:16]} reused ({final})")
                return final, True
            log(f"ArmCL build {key[:16]}: {problem}: made again")
            shutil.rmtree(final)
        raw = cache_root(cache_dir) / "cross" / key
        problem = check_raw(raw)
        if problem is None:  # only the assembled build was missing or damaged
            outcome = json.loads((raw / "build.json").read_text())
            log(f"ArmCL cross build {key[:16]} in {raw.parent}: reused (assembled again)")
        else:
            if raw.exists():
                log(f"ArmCL cross build {key[:16]} in {raw.parent}: {problem}: built again")
                shutil.rmtree(raw)
            outcome = run_builder(chain, tarball, spec.version, plan, raw.parent, timeout_s, log)
        if outcome.get("key") != key:
            raise ToolchainError(f"the builder's key {str(outcome.get('key'))[:16]} is not the expected {key[:16]} "
                                 "(the compiler in the environment changed?)")
        assemble(raw, final, outcome, chain, log)
    return final, False


def check_raw(folder: Path) -> str | None:
    """None when the builder's build ``folder`` is complete and its libraries match its ``build.json``."""
    from requestflow.board.files import sha256_file

    try:
        record = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return "no readable build.json" if folder.exists() else "not built yet"
    for name, entry in (record.get("libraries") or {}).items():
        if not (folder / "lib" / name).is_file() or sha256_file(folder / "lib" / name) != entry["sha256"]:
            return f"lib/{name} is missing or damaged (sha256 differs)"
    return None if record.get("libraries") else "no libraries recorded"


def builder_command(tarball, version: str, plan: BuildOptions, cache: Path, result: Path, code: Path) -> list[str]:
    """The builder's command as the environment runs it (after ``chroot``): a clean environment naming the cross
    compilers, requestflow's board side from ``code`` (the folder holding the ``requestflow`` package)."""
    return ["env", "-i", f"PATH={_PATH}", "HOME=/root", "LC_ALL=C", f"CXX={CROSS_CXX}", f"CC={CROSS_CC}",
            f"PYTHONPATH={code}", "PYTHONDONTWRITEBYTECODE=1", "python3", "-m", "requestflow.board.armcl", "build",
            "--source", str(tarball.path), "--sha256", tarball.sha256, "--origin", tarball.origin,
            "--version", version, "--options", json.dumps(plan.options, sort_keys=True), "--jobs", str(plan.jobs),
            "--cache", str(cache), "--result", str(result)]


def run_builder(chain: Toolchain, tarball, version: str, plan: BuildOptions, cache: Path, timeout_s: float,
           log: Log) -> dict:
    """The builder in the environment: the package, the tarball's folder (read-only) and ``cache`` bound at their
    own paths in a private mount namespace; every line of its output to ``log``. The builder's outcome."""
    import requestflow

    code = Path(requestflow.__file__).resolve().parents[1]
    cache.mkdir(parents=True, exist_ok=True)
    result = Path(tempfile.mkdtemp(prefix=".result-", dir=cache)) / "result.json"
    mounts = [(code / "requestflow", True), (tarball.path.parent, True), (cache, False)]
    command = builder_command(tarball, version, plan, cache, result, code)
    log(f"ArmCL {version} cross-built for aarch64 in {chain.path} ({chain.record['compiler']}), {plan.jobs} job(s): "
        + " ".join(f"{k}={v}" for k, v in plan.options.items()))
    try:
        code_ = in_environment(chain, mounts, command, log, timeout_s)
        try:
            outcome = json.loads(result.read_text())
        except (OSError, ValueError):
            outcome = {}
    finally:
        shutil.rmtree(result.parent, ignore_errors=True)
    if code_ != 0 or outcome.get("status") != "ok":
        reason = outcome.get("reason") or f"exit {code_}"
        raise UserError(f"ArmCL {version} cross build failed: {reason}") if code_ == 2 else \
            ToolchainError(f"ArmCL {version} cross build failed: {reason} (log: {cache}/<key>/build.log)")
    return outcome


def in_environment(chain: Toolchain, mounts: list[tuple[Path, bool]], command: list[str], log: Log,
                   timeout_s: float) -> int:
    """Run ``command`` chrooted in the environment, each of ``mounts`` (path, read-only) bound at its own path in a
    private mount namespace of the one command, its output streamed to ``log``; the exit status. The mount
    points made in the environment are removed afterwards (empty again)."""
    script, created = [], []
    for index, (path, read_only) in enumerate(mounts, start=1):
        inside = chain.path / str(path).lstrip("/")
        created += [p for p in (inside, *inside.parents) if p.is_relative_to(chain.path) and not p.exists()]
        inside.mkdir(parents=True, exist_ok=True)
        script.append(f'mount --bind "${index}" "$RF_ENV${index}"' +
                      (f' && mount -o remount,bind,ro "$RF_ENV${index}"' if read_only else ""))
    sh = " && ".join([*script, f'shift {len(mounts)}', 'exec chroot "$RF_ENV" "$@"'])
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", sh, "sh",
            *(str(path) for path, _ in mounts), *command]
    try:
        # a session of its own: stopping it (a timeout, Ctrl-C, the task's on_kill) reaches every process of it
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, errors="replace", env={**os.environ, "RF_ENV": str(chain.path)},
                              start_new_session=True) as process:
            RUNNING.add(process)
            try:
                deadline = time.monotonic() + timeout_s
                assert process.stdout is not None
                for line in process.stdout:
                    log(line.rstrip("\n"))
                    if time.monotonic() > deadline:
                        raise ToolchainError(f"the cross build did not finish in {timeout_s:.0f} s")
                return process.wait()
            except BaseException:
                stop(process)
                raise
            finally:
                RUNNING.discard(process)
    finally:
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()
            except OSError:
                pass


def stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the command's whole process group (unshare, chroot, the builder, scons, the compilers; the builder
    removes its half-built folder on the way out), SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_all(log: Log = print) -> None:
    """Stop every command ``in_environment`` runs now in this process (``ArmclBuildOperator.on_kill``)."""
    for process in list(RUNNING):
        log(f"stopping the ArmCL cross build (process group {process.pid})")
        stop(process)


def assemble(raw: Path, final: Path, outcome: dict, chain: Toolchain, log: Log) -> None:
    """``builds/<key>``: the builder's libraries and headers, the runtime the compiler built them for (the
    environment's own arm64 loader, glibc, libstdc++ and libgcc_s: its packages checked against trixie's signed
    index when it was made, its files with ``dpkg --verify`` on each use), ``build.json`` with the builder's
    provenance, the runtime and how it was cross-built; written staged, renamed into place."""
    from operators.arm64_debian import RUNTIME_PACKAGES, check_build, copy_runtime
    from requestflow.board.files import atomic_write_text

    problem = check_raw(raw)
    if problem is not None:
        raise ToolchainError(f"the cross build {raw.name[:16]} is not usable: {problem}")
    packages = {name: chain.record.get("packages", {}).get(f"{name}:arm64") for name in RUNTIME_PACKAGES}
    if None in packages.values():
        raise ToolchainError(f"the toolchain environment {chain.key} lacks the arm64 runtime ({packages})")
    staged = Path(tempfile.mkdtemp(prefix=f".cross-{raw.name[:16]}-", dir=final.parent))
    try:
        out = staged / "out"
        out.mkdir()
        shutil.copytree(raw / "lib", out / "lib", symlinks=True)
        shutil.copytree(raw / "include", out / "include", symlinks=True)
        shutil.copyfile(raw / "build.log", out / "build.log")
        runtime = copy_runtime(chain.path, out / "runtime")
        built_on = outcome.get("machine") or {}
        provenance = {
            **{k: v for k, v in outcome.items() if k not in ("reused", "path", "machine")},
            "target_arch": "aarch64", "runtime": runtime, "path": str(final),
            "runtime_packages": {"packages": packages, "from": f"the toolchain environment {chain.key}",
                                 "verified_by": chain.record.get("verified_by")},
            "machine": {"arch": "aarch64", "built_by": f"cross_compile on {built_on.get('arch')} "
                                                      f"({built_on.get('hostname')})", "built_on": built_on},
            "cross": {"toolchain": chain.key, "compiler": chain.record["compiler"], "environment": str(chain.path),
                      "suite": chain.record.get("suite"), "build": str(raw)}}
        atomic_write_text(out / "build.json", json.dumps(provenance, indent=1, sort_keys=True) + "\n")
        problem = check_build(out)
        if problem is not None:
            raise ToolchainError(f"the assembled cross build does not check: {problem}")
        os.rename(out, final)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log(f"ArmCL {outcome.get('version')} cross-built for aarch64: build {final.name[:16]} "
        f"({outcome.get('build_seconds')} s to build, {outcome.get('library_bytes', 0) / 1e6:.1f} MB of libraries)")


def main(argv: list[str] | None = None) -> int:
    """``python -m operators.arm64_cross build NAME [--arch aarch64]``: cross-build a ``cross: true`` spec of
    ``config/armcl.json`` explicitly (no board), print the build folder."""
    import argparse
    import sys

    from operators.armcl_spec import checked_builds

    parser = argparse.ArgumentParser(prog="python -m operators.arm64_cross")
    parser.add_argument("action", choices=("build",))
    parser.add_argument("name", help="a cross: true build of config/armcl.json")
    parser.add_argument("--arch", default="aarch64", help="the board's machine (uname -m; default aarch64)")
    args = parser.parse_args(argv)
    try:
        builds = checked_builds()
        if args.name not in builds:
            raise UserError(f"no ArmCL build {args.name!r} in config/armcl.json (it has {', '.join(builds)})")
        started = time.monotonic()
        folder, reused = cross_build(ArmclSpec.from_value(builds[args.name]), args.arch,
                                     log=lambda line: print(line, file=sys.stderr, flush=True))
    except (UserError, ToolchainError) as exc:  # 2: refused (bad input), 1: the build failed
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 1
    print(f"{folder} ({'reused' if reused else 'built'} in {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
