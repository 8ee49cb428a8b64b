"""requestflow's native MobileNets-v1 program (``native/mobilenet``), compiled against an ArmCL build (issue #6).

``compile_program(build)`` compiles ``mobilenet.cpp`` with the build's headers and links it to the build's
libraries (rpath to them), into ``<build>/requestflow-mobilenet/<source hash>/mobilenet``: once per build and
program source, reused afterwards (a build folder never changes once complete, and a changed source gets a new
folder). The same command as ``native/mobilenet/CMakeLists.txt`` (``-DARMCL_BUILD=<build>``), by hand, so a board
needs only g++. ``find_build()`` picks the build: ``$REQUESTFLOW_ARMCL_BUILD``, else the only complete CL build in
the machine's ArmCL cache. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from requestflow.board.files import atomic_write_text
from requestflow.errors import UserError

SOURCE_FILES = ("mobilenet.cpp",)
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-DARM_COMPUTE_CL", "-DARM_COMPUTE_OPENCL_ENABLED")
LDLIBS = ("-larm_compute_graph", "-larm_compute", "-lpthread")  # and 20.08's -larm_compute_core (armcl_versions)
_TIMEOUT_S = 600


def source_dir() -> Path:
    """``$REQUESTFLOW_MOBILENET_SOURCE``, else ``requestflow/native/mobilenet`` of an installed wheel, else the
    checkout's ``native/mobilenet`` (as ``clshim.source_dir``)."""
    if os.environ.get("REQUESTFLOW_MOBILENET_SOURCE"):
        return Path(os.environ["REQUESTFLOW_MOBILENET_SOURCE"])
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "native" / "mobilenet", package.parent / "native" / "mobilenet"):
        if (candidate / SOURCE_FILES[0]).is_file():
            return candidate
    raise UserError("the ArmCL MobileNet program's sources (native/mobilenet) are not installed")


def source_sha256(directory: Path | None = None) -> str:
    directory = directory or source_dir()
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(f"{name}\0".encode())
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def find_build(cache: str | os.PathLike | None = None) -> Path:
    """The ArmCL build to use: ``$REQUESTFLOW_ARMCL_BUILD``, else the one complete build with ``opencl=1`` in the
    cache (``armcl.default_cache()``); more than one is ambiguous and refused."""
    if os.environ.get("REQUESTFLOW_ARMCL_BUILD"):
        build = Path(os.environ["REQUESTFLOW_ARMCL_BUILD"])
        if not (build / "build.json").is_file():
            raise UserError(f"$REQUESTFLOW_ARMCL_BUILD={build} is not a complete ArmCL build (no build.json)")
        return build
    from requestflow.board.armcl import default_cache

    cache = Path(cache) if cache else default_cache()
    builds = []
    for record in sorted(cache.glob("*/build.json")):
        try:
            provenance = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if provenance.get("status") == "ok" and provenance.get("options", {}).get("opencl") == "1":
            builds.append(record.parent)
    if not builds:
        raise UserError(f"no ArmCL build with OpenCL in {cache}: build one (requestflow provisioning, or "
                        "`python -m requestflow.board.armcl build`), or set $REQUESTFLOW_ARMCL_BUILD")
    if len(builds) > 1:
        raise UserError(f"{len(builds)} ArmCL builds with OpenCL in {cache}: choose one with "
                        f"$REQUESTFLOW_ARMCL_BUILD ({', '.join(b.name[:16] for b in builds)})")
    return builds[0]


def command(build: Path, source: Path, output: Path, compiler: str, version_from: Path | None = None) -> list[str]:
    """The g++ command; ``-DREQUESTFLOW_ARMCL_VERSION=YYMM`` from the build's version (native/mobilenet's
    conditionals for 20.08's graph API; its ``build.json`` read from ``version_from`` when the build is elsewhere
    by then, as in a cross compile) and the release's own libraries (``armcl_versions``)."""
    from requestflow.board.armcl_versions import release, version_number

    try:
        version = json.loads(((version_from or build) / "build.json").read_text()).get("version")
    except (OSError, ValueError):
        version = None
    number = version_number(version)
    extra = [f"-l{name[3:-3]}" for name in release(version).libraries if f"-l{name[3:-3]}" not in LDLIBS]
    return [compiler, *CXXFLAGS, *([f"-DREQUESTFLOW_ARMCL_VERSION={number}"] if number else []),
            f"-I{build / 'include'}", *(str(source / name) for name in SOURCE_FILES),
            f"-L{build / 'lib'}", *LDLIBS, *extra, f"-Wl,-rpath,{build / 'lib'}", "-o", str(output)]


def compile_program(build: str | os.PathLike, log=lambda line: None) -> dict:
    """Compile (or reuse) the program for ``build``: ``{"path", "sha256" (of the sources), "build_key",
    "compile_s", "reused"}`` (``program.json`` beside the program)."""
    build = Path(build)
    if not (build / "build.json").is_file():
        raise UserError(f"{build} is not a complete ArmCL build (no build.json)")
    source = source_dir()
    digest = source_sha256(source)
    folder = build / "requestflow-mobilenet" / digest[:16]
    record_path = folder / "program.json"
    if record_path.is_file() and (folder / "mobilenet").is_file():
        return {**json.loads(record_path.read_text()), "reused": True}
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        raise UserError("no C++ compiler (g++ or $CXX) on this board: install g++")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mobilenet-", dir=folder.parent) as tmp:
        staged = Path(tmp) / "out"
        staged.mkdir()
        cmd = command(build, source, staged / "mobilenet", compiler)
        log(f"compiling the ArmCL MobileNet program against {build.name[:16]}")
        start = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=_TIMEOUT_S)
        seconds = time.monotonic() - start
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line][:10]
            raise RuntimeError(f"the ArmCL MobileNet program did not compile: "
                               f"{'; '.join(errors) or result.stderr[-1000:]}")
        record = {"path": str(folder / "mobilenet"), "sha256": digest, "build_key": build.name,
                  "build": str(build), "command": cmd, "compile_s": round(seconds, 2)}
        atomic_write_text(staged / "program.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
        if folder.exists():  # a half-written folder from a killed compile
            shutil.rmtree(folder)
        os.rename(staged, folder)
    return {**record, "reused": False}


def main(argv: list[str] | None = None) -> int:
    """``python -m requestflow.board.armcl_program compile --build DIR``: compile (or reuse) the program for a build
    and print its record as one JSON line (provisioning runs this on the board, once per build)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m requestflow.board.armcl_program")
    parser.add_argument("action", choices=("compile",))
    parser.add_argument("--build", required=True, metavar="DIR", help="a complete ArmCL build folder")
    args = parser.parse_args(argv)
    try:
        record = compile_program(args.build, log=lambda line: print(line, file=sys.stderr))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
