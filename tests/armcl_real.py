"""The real ArmCL build the OpenCL tests run on: Debian trixie's 24.11 for this machine (opencl=1, fp32, no NEON on
x86), in the machine's ArmCL cache (``$REQUESTFLOW_ARMCL_CACHE``, default ``~/.cache/requestflow/armcl``), built
there when cold (minutes on 2 cores) and reused in seconds afterwards, whichever test module asks first."""

from __future__ import annotations

import os
from pathlib import Path

ARMCL_CACHE = Path(os.environ.get("REQUESTFLOW_ARMCL_CACHE") or Path.home() / ".cache" / "requestflow" / "armcl")


def real_build() -> tuple[Path, Path]:
    """(the build's folder, the source tarball it came from)."""
    from operators.armcl_sources import fetch_debian_source
    from operators.armcl_spec import ArmclSpec, options_for
    from requestflow.board import armcl
    from requestflow.board.machine import platform_snapshot

    source = fetch_debian_source("24.11", ARMCL_CACHE / "sources", log=lambda line: None)
    spec = ArmclSpec("24.11", "debian", options={"opencl": 1, "neon": 0, "data_type_support": "fp32"})
    plan = options_for(platform_snapshot("/"), spec)
    built = armcl.build(options=plan.options, cache=ARMCL_CACHE / "builds", source=str(source.path),
                        sha256=source.sha256, version="24.11", log=lambda line: None)
    return Path(built["path"]), Path(source.path)
