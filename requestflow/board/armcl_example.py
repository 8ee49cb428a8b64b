"""ArmCL's own graph examples (``graph_mobilenet``), compiled against a build of ``requestflow.board.armcl``: they
prove the library itself before requestflow's own program builds on it (``python -m requestflow.board.armcl
example``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from requestflow.board.armcl_basics import BuildFailed, Refused

EXAMPLE_UTILS = ("utils/Utils.cpp", "utils/GraphUtils.cpp", "utils/CommonGraphOptions.cpp")


def build_example(build: str | os.PathLike, source: str | os.PathLike, name: str = "graph_mobilenet",
                  log=print) -> Path:
    """Compile one of ArmCL's graph examples (``examples/<name>.cpp`` with its utils, as ArmCL's examples/SConscript
    does) against the build in ``build`` (a ``C/<key>`` folder); the program, ``<build>/examples/<name>``. Reused
    when present: a build folder never changes once complete. ``source`` is the tarball the build came from.

    The examples prove the library itself before requestflow's own program builds on it: ``graph_mobilenet`` runs
    MobileNet-v1 with dummy weights on a target (``--target=CL``)."""
    build, source = Path(build), Path(source)
    if not (build / "build.json").is_file():
        raise Refused(f"{build} is not a complete ArmCL build (no build.json)")
    if not re.fullmatch(r"graph_[a-z0-9_]+", name):
        raise Refused(f"example {name!r}: expected a graph example name such as graph_mobilenet")
    program = build / "examples" / name
    if program.is_file():
        return program
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        raise Refused("no C++ compiler (g++ or $CXX) on this board")
    wanted = (f"examples/{name}.cpp", *EXAMPLE_UTILS)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=build) as tmp:
        work = Path(tmp)
        try:
            with tarfile.open(source) as archive:
                # the example and all of utils/ (its .cpp files include their headers from beside them)
                members = [m for m in archive.getmembers() if m.isfile() and
                           (m.name.endswith("/" + wanted[0]) or m.name.split("/", 1)[-1].startswith("utils/"))]
                archive.extractall(work, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise Refused(f"source tarball {source.name} cannot be read: {exc}") from None
        found = {path: next(iter(work.glob(f"**/{path}")), None) for path in wanted}
        missing = [path for path, where in found.items() if where is None]
        if missing:
            raise Refused(f"source tarball {source.name} has no {', '.join(missing)}")
        top = found[wanted[0]].parents[1]
        output = work / name
        command = [compiler, "-std=c++14", "-O2", "-DARM_COMPUTE_CL", "-DARM_COMPUTE_OPENCL_ENABLED",
                   f"-I{build / 'include'}", f"-I{top}", *(str(found[path]) for path in wanted),
                   f"-L{build / 'lib'}", "-larm_compute_graph", "-larm_compute", f"-Wl,-rpath,{build / 'lib'}",
                   "-lpthread", "-o", str(output)]
        log(f"compiling ArmCL's {name} against {build.name}")
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line][:10]
            raise BuildFailed(f"{name} did not compile: {'; '.join(errors) or result.stderr[-500:]}",
                              {"status": "failed", "reason": "\n".join(errors) or result.stderr[-2000:]})
        program.parent.mkdir(exist_ok=True)
        os.replace(output, program)
    return program
