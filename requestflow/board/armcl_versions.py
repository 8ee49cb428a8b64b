"""What differs between the ArmCL releases requestflow builds (issue #17): scons options, libraries, the program's
compile flags. Every release not named in ``RELEASES`` is built as 24.11 is (the options of today's SConstruct).

20.08 (Debian bookworm's ``arm-compute-library 20.08+dfsg``), read from what Debian ships of it, since its source
tarball is not served by this machine's mirror: the ``scons -h`` listing of its own documentation
(``libarm-compute-doc 20.08+dfsg-7``, ``index.xhtml``: debug, asserts, arch, os, build, examples, Werror, opencl,
neon, gles_compute, embed_kernels, set_soname, openmp, cppthreads, build_dir, extra_cxx_flags, pmu, mali,
validation_tests, benchmark_tests; arch armv7a, arm64-v8a, arm64-v8.2-a, x86_32, x86_64) and the build string
embedded in Debian's library (``libarm-compute20``: install_dir too). It has a third library,
``libarm_compute_core.so`` (Debian's ``libarm-compute20`` ships it; 24.11's ``libarm-compute43`` does not), and its
graph API lacks ``ITensorAccessor::access_tensor_data`` and ``GraphConfig::mlgo_file`` (native/mobilenet's two
``REQUESTFLOW_ARMCL_VERSION`` conditionals). What that documentation does not list (``logging``, ``multi_isa``,
``gemm_tuner``, ``data_type_support``, ``data_layout_support``, ``compiler_cache``...) is never passed to 20.08's
scons: a spec asking for it is refused. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """One ArmCL release's build facts: ``options`` (the scons options a spec may set; None: every option of the
    allowlist), ``arches`` (None: all), the builder's own options and the shared libraries a build must make."""

    options: frozenset[str] | None = None
    arches: tuple[str, ...] | None = None
    builder_options: tuple[str, ...] = ("build_dir", "install_dir", "compiler_cache")
    libraries: tuple[str, ...] = ("libarm_compute.so", "libarm_compute_graph.so")


CURRENT = Release()
RELEASES = {
    "20.08": Release(
        options=frozenset({"debug", "asserts", "arch", "os", "build", "examples", "Werror", "opencl", "neon",
                           "embed_kernels", "set_soname", "openmp", "cppthreads", "validation_tests",
                           "benchmark_tests"}),
        arches=("armv7a", "arm64-v8a", "arm64-v8.2-a", "x86_64"),
        builder_options=("build_dir", "install_dir"),
        libraries=("libarm_compute.so", "libarm_compute_core.so", "libarm_compute_graph.so")),
}


def release(version: str | None) -> Release:
    """The build facts of ArmCL ``version`` (``24.11``, ``v20.08``, ``20.08.1``: by major.minor)."""
    match = re.match(r"^v?(\d+\.\d+)", str(version or ""))
    return RELEASES.get(match.group(1), CURRENT) if match else CURRENT


def version_number(version: str | None) -> int | None:
    """``REQUESTFLOW_ARMCL_VERSION`` for native/mobilenet: ``24.11`` -> 2411, ``v20.08`` -> 2008."""
    match = re.match(r"^v?(\d+)\.(\d+)", str(version or ""))
    return int(match.group(1)) * 100 + int(match.group(2)) if match else None
