"""arm64 on the controller (issue #15): a verified trixie toolchain environment, ArmCL from Debian's prebuilt arm64
packages, and requestflow's MobileNet program cross-compiled against them, each cached by a key and checked on
every use (a damaged entry is detected and made again).

* **Toolchain environment** (``toolchain()``): ``mmdebstrap --mode=root --variant=apt
  --architectures=amd64,arm64`` of Debian trixie with ``g++-aarch64-linux-gnu`` (GCC 14) and
  ``libarm-compute-dev:arm64``. It is both the cross compiler (run through ``chroot``) and the arm64 userland the
  program runs on under qemu-user (``qemu-aarch64-static -L <env>``: glibc 2.41, libstdc++ 14, which Debian's ArmCL
  needs; ``/lib -> usr/lib`` holds the ELF interpreter). apt inside mmdebstrap checks every package against the
  suite's signed InRelease (``debian-archive-keyring``); the installed files are checked on every use with the
  environment's own ``dpkg --verify`` (each file against the checksums its package shipped). The system's dpkg and
  apt are never touched (no ``dpkg --add-architecture``). Needs root (mmdebstrap's root mode, chroot).
* **ArmCL build from Debian's binaries** (``debian_binary_build()``): ``libarm-compute43`` and
  ``libarm-compute-dev`` for arm64 fetched through a private apt configuration (``operators.armcl``'s, with
  ``APT::Architecture=arm64``), each .deb's sha256 checked against the signed Packages index, unpacked with
  ``dpkg-deb -x`` into a build folder of the same shape as a source build (``build.json``, ``lib/``,
  ``include/``). The scons options in ``build.json`` are not assumed: they are read from the build string ArmCL
  embeds in ``libarm_compute.so`` (Debian's: ``arch=arm64-v8a neon=1 opencl=1 embed_kernels=1``). Nothing is
  compiled.
* **Cross-compiled program** (``cross_compile()``): ``armcl_program.command`` (the same g++ command a board runs)
  with ``aarch64-linux-gnu-g++`` inside the environment, the build folder bind-mounted at its own path in a private
  mount namespace, into ``<build>/requestflow-mobilenet/<source hash>/mobilenet`` with ``program.json``: the armcl
  backend finds it there and reuses it as it reuses a natively compiled one. Its rpath is ``<build>/lib``.

Cache (``$REQUESTFLOW_CACHE/arm64``, default ``~/.cache/requestflow/arm64``)::

    toolchains/<key>/env/                 the environment; toolchain.json beside it is written last (complete)
    debs/apt/                             the private arm64 apt configuration (sources.list, lists, cache)
    debs/<file>.deb, debs/<file>.deb.json a verified .deb and what it was checked against
    builds/<key>/                         build.json, lib/, include/, requestflow-mobilenet/<source hash>/
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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
TOOLCHAIN_PACKAGES = ("g++-aarch64-linux-gnu", "libarm-compute-dev:arm64")
ARMCL_PACKAGES = ("libarm-compute43", "libarm-compute-dev")
CROSS_CXX = "aarch64-linux-gnu-g++"
TOOLCHAIN_FORMAT = 1
_INCLUDE = "usr/include/aarch64-linux-gnu"
_LIB = "usr/lib/aarch64-linux-gnu"
_TIMEOUT_S = 1800


class ToolchainError(RuntimeError):
    """Making or checking the environment, fetching a package or cross-compiling failed."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    from requestflow.board.files import cache_dir as requestflow_cache_dir

    path = Path(cache_dir) if cache_dir else requestflow_cache_dir("arm64")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(value) -> str:
    from requestflow.board.files import canonical_json, sha256_text

    return sha256_text(canonical_json(value))


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"{what} needs root (mmdebstrap --mode=root, chroot and a private mount namespace)")


def _run(command: list[str], what: str, *, timeout: float = _TIMEOUT_S, cwd: Path | None = None) -> str:
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
        _mmdebstrap("apt", ",".join(ARCHITECTURES), TOOLCHAIN_PACKAGES, suite, env, mirror)
        versions = _installed(env)
        problem = _verify(env)
        if problem is not None:
            raise ToolchainError(f"the new environment does not verify: {problem}")
        compiler = _run(["chroot", str(env), CROSS_CXX, "--version"], "the cross compiler").splitlines()[0]
        log(f"arm64 toolchain: {compiler}, ArmCL {versions.get('libarm-compute-dev:arm64')}")
        return {"compiler": compiler, "mmdebstrap": _run(["mmdebstrap", "--version"], "mmdebstrap").strip(),
                "armcl": versions.get("libarm-compute-dev:arm64"), "packages": versions,
                "verified_by": f"apt in mmdebstrap: every package against the signed InRelease of {suite} "
                               f"({KEYRING}); on each use: dpkg --verify in the environment"}

    key, folder, record, reused = _made_once(cache_dir, "toolchains", spec, "toolchain.json", check_toolchain, make,
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
    out = _run(["chroot", str(env), "dpkg-query", "-W", "-f", "${Package}:${Architecture} ${Version}\\n"],
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


# --- ArmCL from Debian's arm64 packages ------------------------------------------------------------------------


def fetch_debs(cache_dir: str | os.PathLike | None = None, *, suite: str = SUITE, mirror: str = MIRROR,
               packages: tuple[str, ...] = ARMCL_PACKAGES, arch: str = "arm64", log: Log = print) -> list[dict]:
    """Debian's ``packages`` for ``arch`` (the suite's current version), each a verified .deb in the cache:
    ``[{"package", "version", "architecture", "file", "path", "sha256", "size", "url", "verified_against"}]``.
    Cached: a .deb whose sha256 still matches its record is not fetched again; a damaged one is."""
    from operators.armcl import _PrivateApt, parse_control, verify_sha256
    from operators.deploy import file_lock

    root = cache_root(cache_dir) / "debs"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        apt = _PrivateApt(root / "apt", f"deb [signed-by={KEYRING}] {mirror} {suite} main")
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
    ``debian-binary``, the packages and their sha256, the options ArmCL embeds, every library's sha256), ``lib/``
    and ``include/``. Reused while its libraries match ``build.json``; made again otherwise."""
    from operators.deploy import file_lock
    from requestflow.board.armcl import build_key
    from requestflow.board.files import atomic_write_text, sha256_file

    debs = fetch_debs(cache_dir, suite=suite, mirror=mirror, log=log)
    source_id = "debian-binary:" + ",".join(f"{d['package']}={d['version']}@sha256:{d['sha256']}" for d in debs)
    runtime = next(d for d in debs if d["package"] == ARMCL_PACKAGES[0])
    compiler = {"name": "debian", "version": f"Debian {suite} arm64 {runtime['version']} (prebuilt)"}
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
                _run(["dpkg-deb", "-x", deb["path"], str(unpacked)], f"dpkg-deb -x {deb['file']}")
            out = staged / "out"
            out.mkdir()
            os.rename(unpacked / _INCLUDE, out / "include")
            (out / "lib").mkdir()
            for path in sorted((unpacked / _LIB).iterdir()):
                if path.name.startswith("libarm_compute") and ".so" in path.name:
                    os.rename(path, out / "lib" / path.name)
            libraries = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                         for p in sorted((out / "lib").iterdir()) if p.is_file() and not p.is_symlink()}
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


def check_build(folder: Path) -> str | None:
    """None when ``folder``'s libraries match its ``build.json``; else what is wrong."""
    from requestflow.board.files import sha256_file

    try:
        record = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return "no readable build.json"
    for name, entry in (record.get("libraries") or {}).items():
        path = folder / "lib" / name
        if not path.is_file():
            return f"lib/{name} is missing"
        if sha256_file(path) != entry["sha256"]:
            return f"lib/{name} is damaged (sha256 differs)"
    if not (folder / "include/arm_compute/graph.h").is_file():
        return "include/arm_compute/graph.h is missing"
    return None


# --- the program, cross-compiled -------------------------------------------------------------------------------


def cross_compile(build: str | os.PathLike, chain: Toolchain, log: Log = print) -> dict:
    """requestflow's MobileNet program for arm64 against ``build``, compiled in ``chain``'s environment:
    ``{"path", "sha256" (sources), "program_sha256", "build_key", "compile_s", "reused", "arch", "cross"}``,
    where ``armcl_program.compile_program(build)`` finds it (and reuses it)."""
    from requestflow.board import armcl_program
    from requestflow.board.files import atomic_write_text, sha256_file

    build = Path(build).resolve()
    problem = check_build(build)
    if problem is not None:
        raise UserError(f"{build} is not a usable ArmCL build: {problem}")
    source = armcl_program.source_dir()
    digest = armcl_program.source_sha256(source)
    folder = build / "requestflow-mobilenet" / digest[:16]
    record_path = folder / "program.json"
    if record_path.is_file() and (folder / "mobilenet").is_file():
        record = json.loads(record_path.read_text())
        if record.get("program_sha256") == sha256_file(folder / "mobilenet") and \
                record.get("cross", {}).get("toolchain") == chain.key:
            return {**record, "reused": True}
        log(f"the arm64 program in {folder} is damaged or from another toolchain: compiled again")
    _require_root("cross-compiling in the toolchain environment")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".mobilenet-", dir=folder.parent))
    created: list[Path] = []
    try:
        (staged / "src").mkdir()
        for name in armcl_program.SOURCE_FILES:
            shutil.copyfile(source / name, staged / "src" / name)
        (staged / "out").mkdir()
        cmd = armcl_program.command(build, staged / "src", staged / "out" / "mobilenet", CROSS_CXX)
        inside = chain.path / str(build).lstrip("/")
        created += [p for p in (inside, *inside.parents) if p.is_relative_to(chain.path) and not p.exists()]
        inside.mkdir(parents=True, exist_ok=True)
        # the build at its own path inside the environment, in a mount namespace of this command only
        script = 'mount --bind "$1" "$2" && shift 2 && exec chroot "$@"'
        log(f"cross-compiling the MobileNet program for arm64 against {build.name[:16]} ({chain.record['compiler']})")
        started = time.monotonic()
        _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(build), str(inside),
              str(chain.path), *cmd], "the cross compile", timeout=900)
        seconds = time.monotonic() - started
        program = staged / "out" / "mobilenet"
        from requestflow.board.emulation import elf_arch

        if elf_arch(program) != "aarch64":
            raise ToolchainError(f"the cross compile made a {elf_arch(program)} program, not aarch64")
        record = {"path": str(folder / "mobilenet"), "sha256": digest, "build_key": build.name, "build": str(build),
                  "command": cmd, "compile_s": round(seconds, 2), "arch": "aarch64",
                  "program_sha256": sha256_file(program),
                  "cross": {"toolchain": chain.key, "compiler": chain.record["compiler"],
                            "environment": str(chain.path)}}
        atomic_write_text(staged / "out" / "program.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staged / "out", folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        for path in created:  # the mount point's folders made in the environment, empty again
            try:
                path.rmdir()
            except OSError:
                break
    log(f"arm64 MobileNet program: {record['path']} ({record['compile_s']} s)")
    return {**record, "reused": False}


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
        _mmdebstrap("extract", "arm64", PYTHON_PACKAGES, suite, staged / "env", mirror)
        python = staged / "env/usr/bin/python3.11"
        if not python.is_file() or elf_arch(python) != "aarch64":
            raise ToolchainError(f"the {suite} arm64 userland has no aarch64 python3.11")
        (staged / "manifest.json").write_text(json.dumps(_manifest(staged / "env"), sort_keys=True) + "\n")
        return {"verified_by": f"apt in mmdebstrap: every package against the signed InRelease of {suite} "
                               f"({KEYRING}); on each use: every file's sha256 against manifest.json"}

    key, folder, record, reused = _made_once(cache_dir, "userlands", spec, "userland.json",
                                             lambda folder: _check_tree(folder, "userland.json"), make,
                                             "the arm64 Python userland", log)
    return Userland(key, folder / "env", record, reused)


def _mmdebstrap(variant: str, architectures: str, packages, suite: str, target: Path, mirror: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap not found: apt-get install mmdebstrap (./dev.sh test installs it)")
    _run(["mmdebstrap", "--mode=root", f"--variant={variant}", f"--architectures={architectures}",
          f"--keyring={KEYRING}", f"--include={','.join(packages)}", suite, str(target), mirror], "mmdebstrap")


def _made_once(cache_dir, kind: str, spec: dict, record_name: str, check: Callable[[Path], str | None],
               make: Callable[[Path], dict], what: str, log: Log) -> tuple[str, Path, dict, bool]:
    """``<cache>/<kind>/<key of spec>``: reused while ``check`` finds nothing wrong, else (damaged, incomplete,
    missing) made again by ``make`` in a staged folder, its record (``spec`` + what ``make`` returns) written last,
    then renamed into place. One maker at a time per key (a lock file). (key, folder, record, reused)."""
    from operators.deploy import file_lock

    key = _key(spec)[:16]
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
        _require_root(what)
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


def runner_site(cache_dir: str | os.PathLike | None = None, *, tensorflow: bool = False, log: Log = print) -> Path:
    """A ``site-packages`` folder of the runner's dependencies for aarch64 CPython 3.11 (``RUNNER_PACKAGES`` at
    the versions of ``requirements/constraints-x86_64.txt``, ai-edge-litert at ``AARCH64_PINS``; with
    ``tensorflow``, also tensorflow ``AARCH64_TENSORFLOW``: 1.6 GB, a site of its own), to put on the arm64
    Python's ``PYTHONPATH``. The wheels are downloaded once with every manylinux tag of ``PLATFORM_TAGS``; the
    sha256 of each is recorded on its first download (trust on first use, as ``weights.lock.json``) and checked on
    every use: a damaged wheel is downloaded again and must match its record, and a damaged site is installed
    again from the wheels."""
    from operators.deploy import file_lock
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
    key = _key(spec)[:16]
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
        _run([*pip, "download", "-q", *target, "-c", str(folder / "constraints.txt"), "-d", str(folder / "wheels"),
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
        _run([*pip, "install", "-q", "--no-index", "--find-links", str(folder / "wheels"), "--target", str(site),
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


def prepare(cache_dir: str | os.PathLike | None = None, log: Log = print) -> dict:
    """Everything a NEON run under qemu-user needs, made or reused: the environment, Debian's build, the program.
    ``{"toolchain", "build", "program", "emulator"}`` (``emulator`` is the value for ``$REQUESTFLOW_EMULATOR``)."""
    chain = toolchain(cache_dir, log=log)
    build = debian_binary_build(cache_dir, log=log)
    program = cross_compile(build, chain, log=log)
    return {"toolchain": str(chain.path), "build": str(build), "program": program["path"],
            "emulator": shlex.join(chain.emulator())}


def main(argv: list[str] | None = None) -> int:
    """``python -m operators.arm64 prepare [--cache DIR]``: make or reuse the arm64 environment, Debian's ArmCL
    build and the cross-compiled program; print them as one JSON line and the environment line to use them."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m operators.arm64")
    parser.add_argument("action", choices=("prepare",))
    parser.add_argument("--cache", metavar="DIR",
                        help="default: $REQUESTFLOW_CACHE/arm64, else ~/.cache/requestflow/arm64")
    args = parser.parse_args(argv)
    try:
        made = prepare(args.cache, log=lambda line: print(line, file=sys.stderr))
    except (UserError, ToolchainError) as exc:  # 2: bad input or a missing tool; 1: a step failed
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 1
    print(f"export REQUESTFLOW_EMULATOR={shlex.quote(made['emulator'])}  # then: requestflow run --backend armcl "
          f"--variant target=NEON --armcl-build {shlex.quote(made['build'])} ...", file=sys.stderr)
    print(json.dumps(made, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
