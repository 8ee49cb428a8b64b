"""arm64 on the controller (issue #15, ADR 0007), from the terminal: ``python -m operators.arm64 prepare`` makes or
reuses everything a NEON run under qemu-user needs: the trixie toolchain environment
(``operators.arm64_toolchain``), ArmCL from Debian's arm64 packages and the MobileNet program cross-compiled against
it (``operators.arm64_debian``). The aarch64 runner (CPython and wheels) is ``operators.arm64_runner``.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable

from operators.arm64_debian import cross_compile, debian_binary_build
from operators.arm64_toolchain import ToolchainError, toolchain
from requestflow.errors import UserError

Log = Callable[[str], None]


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
