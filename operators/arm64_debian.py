"""ArmCL from Debian's prebuilt arm64 packages and requestflow's MobileNet program cross-compiled against it
(issue #15, ADR 0007), on the controller; each cached by a key and checked on every use.

* **Build from Debian's binaries** (``debian_binary_build()``): ``libarm-compute43`` and ``libarm-compute-dev`` for
  arm64 fetched through a private apt configuration (``operators.armcl_sources.PrivateApt`` with
  ``APT::Architecture=arm64``), each .deb's sha256 checked against the signed Packages index, unpacked with
  ``dpkg-deb -x`` into a build folder of the same shape as a source build (``build.json``, ``lib/``,
  ``include/``). The scons options in ``build.json`` are read from the build string ArmCL embeds in
  ``libarm_compute.so``. Nothing is compiled.
* **Cross-compiled program** (``cross_compile()``): ``armcl_program.command`` (the same g++ command a board runs)
  with ``aarch64-linux-gnu-g++`` inside the toolchain environment, the build folder bind-mounted at its own path
  in a private mount namespace, into ``<build>/requestflow-mobilenet/<source hash>/mobilenet`` with
  ``program.json``: the armcl backend finds it there and reuses it. Its rpath is ``<build>/lib``.
* **For a board** (``board_shipment()``): the build with the suite's own runtime (``runtime/``: loader, glibc,
  libstdc++, libgcc_s) and the program compiled for the build's place on the board, run through that runtime, so a
  board whose userland is older than the suite (the farm board's bookworm) runs it; one tar with ``SHA256SUMS``.

Cache (``operators.arm64_toolchain.cache_root``)::

    debs/apt/                             the private arm64 apt configuration (sources.list, lists, cache)
    debs/<file>.deb, debs/<file>.deb.json a verified .deb and what it was checked against
    builds/<key>/                         build.json, lib/, include/, runtime/, requestflow-mobilenet/<source hash>/
    shipments/<key>.tar, <key>.json       a build as a board gets it (``board_shipment``) and its sha256
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from operators.arm64_toolchain import (
    CROSS_CXX,
    KEYRING,
    MIRROR,
    SUITE,
    Toolchain,
    ToolchainError,
    cache_root,
    key_of,
    require_root,
    run_tool,
)
from requestflow.errors import UserError

Log = Callable[[str], None]

ARMCL_PACKAGES = ("libarm-compute43", "libarm-compute-dev")
SUITE_PACKAGES = {SUITE: ARMCL_PACKAGES, "bookworm": ("libarm-compute20", "libarm-compute-dev")}  # 24.11, 20.08
# what the libraries and the program need at run time, from the toolchain's suite: a board whose userland is older
# (bookworm: glibc 2.36, libstdc++ 12) runs the program through this loader with these libraries (``board_shipment``)
RUNTIME_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
RUNTIME_FILES = ("ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1")
_INCLUDE = "usr/include/aarch64-linux-gnu"
_LIB = "usr/lib/aarch64-linux-gnu"
_BOARD_PATH = re.compile(r"^/[A-Za-z0-9._/+-]+$")

# --- ArmCL from Debian's arm64 packages ------------------------------------------------------------------------


def fetch_debs(cache_dir: str | os.PathLike | None = None, *, suite: str = SUITE, mirror: str = MIRROR,
               packages: tuple[str, ...] = ARMCL_PACKAGES, arch: str = "arm64", log: Log = print) -> list[dict]:
    """Debian's ``packages`` for ``arch`` (the suite's current version), each a verified .deb in the cache:
    ``[{"package", "version", "architecture", "file", "path", "sha256", "size", "url", "verified_against"}]``.
    Cached: a .deb whose sha256 still matches its record is not fetched again; a damaged one is."""
    from operators.armcl_sources import PrivateApt, parse_control, verify_sha256
    from operators.file_lock import file_lock

    root = cache_root(cache_dir) / "debs"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        apt = PrivateApt(root / "apt", f"deb [signed-by={KEYRING}] {mirror} {suite} main")
        apt.options.update({"APT::Architecture": arch, "APT::Architectures": arch})
        log(f"apt (private, {apt.folder}): updating the {suite} {arch} index from {mirror}")
        apt.run("apt-get", "update")
        out = []
        for package in packages:
            stanzas = [s for s in parse_control(apt.run("apt-cache", "show", f"{package}:{arch}"))
                       if s.get("Package") == package and s.get("Architecture") == arch]
            if not stanzas:
                raise UserError(f"{package} is not in Debian {suite} for {arch}")
            stanza = stanzas[0]  # apt-cache show lists the candidate (the suite's one version) first
            name = Path(stanza["Filename"]).name
            entry = {"package": package, "version": stanza["Version"], "architecture": arch, "file": name,
                     "sha256": stanza["SHA256"], "size": int(stanza["Size"]), "suite": suite,
                     "url": f"{mirror}/{stanza['Filename']}",
                     "verified_against": f"the Packages index of {suite} {arch} (signed InRelease, checked by apt)"}
            path = root / name
            record = root / f"{name}.json"
            if path.is_file() and record.is_file() and json.loads(record.read_text()).get("sha256") == \
                    entry["sha256"]:
                try:
                    verify_sha256(path, entry["sha256"], what=name)
                    out.append({**entry, "path": str(path)})
                    continue
                except Exception:
                    log(f"{name}: damaged in the cache (sha256 differs): fetching it again")
            with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as download:
                apt.run("apt-get", "download", f"{package}:{arch}={stanza['Version']}", cwd=Path(download))
                fetched = Path(download) / name
                if not fetched.is_file():
                    found = sorted(p.name for p in Path(download).iterdir())
                    raise ToolchainError(f"apt-get download {package}: expected {name}, got {found}")
                verify_sha256(fetched, entry["sha256"], what=f"{name} (SHA256 of the {suite} {arch} index)",
                              error=ToolchainError)
                os.replace(fetched, path)
            record.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
            log(f"{name}: sha256 {entry['sha256']} checked against {entry['verified_against']}")
            out.append({**entry, "path": str(path)})
        return out


def embedded_options(library: Path) -> tuple[str | None, dict]:
    """(version, scons options) from the build string ArmCL compiles into ``libarm_compute.so``:
    ``arm_compute_version=v24.11 Build options: {'arch': 'arm64-v8a', 'neon': '1', ...}``."""
    data = library.read_bytes()
    match = re.search(rb"arm_compute_version=v?([0-9][0-9.]*) Build options: (\{[^}]*\})", data)
    if not match:
        raise ToolchainError(f"{library.name} has no ArmCL build string (arm_compute_version=... Build options:)")
    options = ast.literal_eval(match.group(2).decode())
    drop = ("install_dir", "build_dir", "Werror", "validation_tests", "benchmark_tests")
    return match.group(1).decode(), {str(k): str(v) for k, v in sorted(options.items()) if k not in drop}


def debian_binary_build(cache_dir: str | os.PathLike | None = None, *, suite: str = SUITE, mirror: str = MIRROR,
                        log: Log = print) -> Path:
    """An ArmCL build folder made of Debian's arm64 packages (nothing compiled): ``build.json`` (``source.kind``
    ``debian-binary``, the packages and their sha256, the options ArmCL embeds, every library's sha256), ``lib/``,
    ``include/`` and ``runtime/`` (the suite's loader, glibc, libstdc++ and libgcc_s: ``RUNTIME_FILES``). Reused
    while its files match ``build.json``; made again otherwise."""
    from operators.file_lock import file_lock
    from requestflow.board.armcl import build_key
    from requestflow.board.files import atomic_write_text, sha256_file

    if suite not in SUITE_PACKAGES:
        raise UserError(f"ArmCL from Debian's binaries: suites {', '.join(SUITE_PACKAGES)}, not {suite}")
    armcl = SUITE_PACKAGES[suite]
    # the runtime is always the toolchain's suite's: the program is compiled by its GCC (another suite's ArmCL, e.g.
    # bookworm's 20.08, runs on trixie's newer glibc and libstdc++ too)
    debs = fetch_debs(cache_dir, suite=suite, mirror=mirror, packages=armcl + (RUNTIME_PACKAGES if suite == SUITE
                                                                               else ()), log=log)
    if suite != SUITE:
        debs += fetch_debs(cache_dir, suite=SUITE, mirror=mirror, packages=RUNTIME_PACKAGES, log=log)
    source_id = "debian-binary:" + ",".join(f"{d['package']}={d['version']}@sha256:{d['sha256']}" for d in debs)
    library = next(d for d in debs if d["package"] == armcl[0])
    compiler = {"name": "debian", "version": f"Debian {suite} arm64 {library['version']} (prebuilt)"}
    builds = cache_root(cache_dir) / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    # the options are read from the library, so the key is first made of the packages alone
    with file_lock(builds / ".lock"):
        for existing in sorted(builds.glob("*/build.json")):
            record = json.loads(existing.read_text())
            if record.get("source", {}).get("id") == source_id:
                problem = check_build(existing.parent)
                if problem is None:
                    return existing.parent
                log(f"ArmCL build {existing.parent.name[:16]}: {problem}: made again")
                shutil.rmtree(existing.parent)
        started = time.monotonic()
        staged = Path(tempfile.mkdtemp(prefix=".debian-", dir=builds))
        try:
            unpacked = staged / "unpacked"
            for deb in debs:
                run_tool(["dpkg-deb", "-x", deb["path"], str(unpacked)], f"dpkg-deb -x {deb['file']}")
            out = staged / "out"
            out.mkdir()
            os.rename(unpacked / _INCLUDE, out / "include")
            (out / "lib").mkdir()
            for path in sorted((unpacked / _LIB).iterdir()):
                if path.name.startswith("libarm_compute") and ".so" in path.name:
                    os.rename(path, out / "lib" / path.name)
            libraries = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                         for p in sorted((out / "lib").iterdir()) if p.is_file() and not p.is_symlink()}
            runtime = copy_runtime(unpacked, out / "runtime")
            main = next((out / "lib" / n for n in libraries if n.startswith("libarm_compute.so")), None)
            if main is None or not any(n.startswith("libarm_compute_graph.so") for n in libraries):
                raise ToolchainError(f"the packages hold no libarm_compute/libarm_compute_graph ({sorted(libraries)})")
            version, options = embedded_options(main)
            key = build_key(source_id, options, compiler)
            final = builds / key
            provenance = {
                "key": key, "library": "arm_compute", "version": version, "source_version": version,
                "status": "ok", "options": options, "compiler": compiler, "target_arch": "aarch64",
                "source": {"kind": "debian-binary", "id": source_id, "suite": suite,
                           "packages": [{k: d[k] for k in ("package", "version", "architecture", "sha256", "url",
                                                           "verified_against")} for d in debs]},
                "options_from": f"the build string embedded in {main.name}",
                "libraries": libraries, "library_bytes": sum(e["bytes"] for e in libraries.values()),
                "runtime": runtime,
                "build_seconds": round(time.monotonic() - started, 1),
                "machine": {"arch": "aarch64", "built_by": "Debian (prebuilt packages)"},
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "path": str(final)}
            atomic_write_text(out / "build.json", json.dumps(provenance, indent=1, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(out, final)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        log(f"ArmCL {version} for arm64 from Debian's packages: build {key[:16]} "
            f"({' '.join(f'{k}={v}' for k, v in options.items() if k in ('arch', 'neon', 'opencl'))})")
        return final


def copy_runtime(unpacked: Path, into: Path) -> dict:
    """``RUNTIME_FILES`` from the unpacked runtime packages into ``into`` (each file under its soname, the
    packages' symlinks resolved; the loader executable): name -> ``{"bytes", "sha256"}``, as ``build.json``'s
    ``runtime`` records them."""
    from requestflow.board.files import sha256_file

    into.mkdir()
    for name in RUNTIME_FILES:
        shutil.copyfile((unpacked / _LIB / name).resolve(), into / name)
    (into / RUNTIME_FILES[0]).chmod(0o755)
    return {name: {"bytes": (into / name).stat().st_size, "sha256": sha256_file(into / name)}
            for name in RUNTIME_FILES}


def check_build(folder: Path) -> str | None:
    """None when ``folder``'s libraries and runtime match its ``build.json``; else what is wrong."""
    from requestflow.board.files import sha256_file

    try:
        record = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return "no readable build.json"
    if not record.get("runtime"):
        return "no runtime recorded (made before runtime/ was)"
    for sub, entries in (("lib", record.get("libraries") or {}), ("runtime", record["runtime"])):
        for name, entry in entries.items():
            path = folder / sub / name
            if not path.is_file():
                return f"{sub}/{name} is missing"
            if sha256_file(path) != entry["sha256"]:
                return f"{sub}/{name} is damaged (sha256 differs)"
    if not (folder / "include/arm_compute/graph.h").is_file():
        return "include/arm_compute/graph.h is missing"
    return None


# --- the program, cross-compiled -------------------------------------------------------------------------------


def cross_compile(build: str | os.PathLike, chain: Toolchain, log: Log = print) -> dict:
    """requestflow's MobileNet program for arm64 against ``build``, compiled in ``chain``'s environment:
    ``{"path", "sha256" (sources), "program_sha256", "build_key", "compile_s", "reused", "arch", "cross"}``,
    where ``armcl_program.compile_program(build)`` finds it (and reuses it). It runs with the environment as its
    userland (``qemu-aarch64-static -L <env>``); ``board_shipment`` makes one for a board."""
    from requestflow.board import armcl_program
    from requestflow.board.files import sha256_file

    build = Path(build).resolve()
    problem = check_build(build)
    if problem is not None:
        raise UserError(f"{build} is not a usable ArmCL build: {problem}")
    digest = armcl_program.source_sha256(armcl_program.source_dir())
    folder = build / "requestflow-mobilenet" / digest[:16]
    record_path = folder / "program.json"
    if record_path.is_file() and (folder / "mobilenet").is_file():
        record = json.loads(record_path.read_text())
        if record.get("program_sha256") == sha256_file(folder / "mobilenet") and \
                record.get("cross", {}).get("toolchain") == chain.key:
            return {**record, "reused": True}
        log(f"the arm64 program in {folder} is damaged or from another toolchain: compiled again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".mobilenet-", dir=folder.parent))
    try:
        record = _compile(chain, build, build, staged, runtime=False, log=log)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staged / "out", folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log(f"arm64 MobileNet program: {record['path']} ({record['compile_s']} s)")
    return {**record, "reused": False}


def _compile(chain: Toolchain, mount: Path, at: Path, staged: Path, *, runtime: bool, log: Log) -> dict:
    """Compile the program in ``chain`` with the folder ``mount`` bound at ``at`` (a private mount namespace of
    the one command), so every path in the program (rpath; with ``runtime``, also the ELF interpreter and the
    build's ``runtime/`` first in a DT_RPATH, which the libraries' own dependencies follow too) is ``at``'s: the
    build's folder where the program will run. ``staged`` is a folder under ``mount``: the sources are copied to
    ``staged/src``, the program and ``program.json`` (its path under ``at``) are left in ``staged/out``."""
    from requestflow.board import armcl_program
    from requestflow.board.emulation import elf_arch
    from requestflow.board.files import atomic_write_text, sha256_file

    require_root("cross-compiling in the toolchain environment")
    source = armcl_program.source_dir()
    digest = armcl_program.source_sha256(source)
    (staged / "src").mkdir()
    for name in armcl_program.SOURCE_FILES:
        shutil.copyfile(source / name, staged / "src" / name)
    (staged / "out").mkdir()
    seen = at / staged.relative_to(mount)  # the staged folder as the compiler sees it
    cmd = armcl_program.command(at, seen / "src", seen / "out" / "mobilenet", CROSS_CXX, version_from=mount)
    # a DT_RPATH, which the libraries' own dependencies follow too (20.08's libarm_compute_graph needs
    # libarm_compute.so.20: a DT_RUNPATH would not find it)
    cmd.append("-Wl,--disable-new-dtags")
    if runtime:
        cmd += [f"-Wl,-rpath,{at / 'runtime'}", f"-Wl,--dynamic-linker={at / 'runtime' / RUNTIME_FILES[0]}"]
    inside = chain.path / str(at).lstrip("/")
    created = [p for p in (inside, *inside.parents) if p.is_relative_to(chain.path) and not p.exists()]
    inside.mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" "$2" && shift 2 && exec chroot "$@"'
    log(f"cross-compiling the MobileNet program for arm64 against {at.name[:16]} ({chain.record['compiler']})")
    started = time.monotonic()
    try:
        run_tool(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(mount),
                  str(inside), str(chain.path), *cmd], "the cross compile", timeout=900)
    finally:
        for path in created:  # the mount point's folders made in the environment, empty again
            try:
                path.rmdir()
            except OSError:
                break
    seconds = time.monotonic() - started
    program = staged / "out" / "mobilenet"
    if elf_arch(program) != "aarch64":
        raise ToolchainError(f"the cross compile made a {elf_arch(program)} program, not aarch64")
    folder = at / "requestflow-mobilenet" / digest[:16]
    record = {"path": str(folder / "mobilenet"), "sha256": digest, "build_key": at.name, "build": str(at),
              "command": cmd, "compile_s": round(seconds, 2), "arch": "aarch64",
              "program_sha256": sha256_file(program),
              "cross": {"toolchain": chain.key, "compiler": chain.record["compiler"], "environment": str(chain.path),
                        "runtime": str(at / "runtime") if runtime else None}}
    atomic_write_text(staged / "out" / "program.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def board_shipment(build: str | os.PathLike, chain: Toolchain, at: str, cache_dir: str | os.PathLike | None = None,
                   log: Log = print) -> tuple[Path, dict]:
    """``build`` as a board gets it, to be unpacked at ``at`` (the board's build folder, absolute): one tar of
    ``build.json`` (its ``path`` = ``at``), ``lib/``, ``include/``, ``runtime/``, the MobileNet program
    cross-compiled for ``at`` (run through ``runtime/``'s loader and libraries, so a board whose own glibc and
    libstdc++ are older runs it: bookworm's under trixie's ArmCL) and ``SHA256SUMS`` of every file, which the
    board checks after unpacking and on reuse. Cached by build, ``at``, program source and toolchain, the tar's
    sha256 checked on reuse. (the tar, ``{"sha256", "key", "program"}``)."""
    from operators.file_lock import file_lock
    from requestflow.board import armcl_program
    from requestflow.board.files import atomic_write_text, sha256_file

    build = Path(build).resolve()
    if not _BOARD_PATH.match(at) or "/../" in f"{at}/" or "/./" in f"{at}/":
        raise UserError(f"the board's ArmCL build folder {at!r} is not a plain absolute path")
    problem = check_build(build)
    if problem is not None:
        raise UserError(f"{build} is not a usable ArmCL build: {problem}")
    digest = armcl_program.source_sha256(armcl_program.source_dir())
    key = key_of({"format": 1, "build": build.name, "at": at, "program": digest, "toolchain": chain.key})[:16]
    root = cache_root(cache_dir) / "shipments"
    root.mkdir(parents=True, exist_ok=True)
    tar, record_path = root / f"{key}.tar", root / f"{key}.json"
    with file_lock(root / f".{key}.lock"):
        if tar.is_file() and record_path.is_file():
            record = json.loads(record_path.read_text())
            if sha256_file(tar) == record.get("sha256"):
                return tar, record
            log(f"arm64 shipment {key}: the tar is damaged (sha256 differs): made again")
        staged = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            tree = staged / "tree"
            tree.mkdir()
            for sub in ("lib", "include", "runtime"):
                shutil.copytree(build / sub, tree / sub, symlinks=True)  # plain files and symlinks only
            provenance = json.loads((build / "build.json").read_text())
            atomic_write_text(tree / "build.json", json.dumps({**provenance, "path": at}, indent=1, sort_keys=True)
                              + "\n")
            work = tree / "requestflow-mobilenet" / f".{digest[:16]}"
            work.mkdir(parents=True)
            program = _compile(chain, tree, Path(at), work, runtime=True, log=log)
            os.rename(work / "out", tree / "requestflow-mobilenet" / digest[:16])
            shutil.rmtree(work)
            sums = sorted((str(p.relative_to(tree)), sha256_file(p)) for p in tree.rglob("*")
                          if p.is_file() and not p.is_symlink())
            (tree / "SHA256SUMS").write_text("".join(f"{sha}  {name}\n" for name, sha in sums))
            run_tool(["tar", "-C", str(tree), "-cf", str(staged / "out.tar"), "."], "tar of the shipment")
            record = {"key": key, "sha256": sha256_file(staged / "out.tar"), "build": build.name, "at": at,
                      "program": program, "files": len(sums)}
            os.replace(staged / "out.tar", tar)
            atomic_write_text(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    log(f"arm64 shipment {key}: build {build.name[:16]} for {at} ({tar.stat().st_size / 1e6:.1f} MB)")
    return tar, record
