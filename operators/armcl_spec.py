"""What an ArmCL build is (issue #6): ``ArmclSpec`` (version, source, scons options) with every option checked
against an allowlist and its allowed values before anything runs (a UserError naming the option), and
``options_for``, which completes the options for a board from its platform snapshot: arch from the detected
machine, NEON where the CPU has it, jobs by cores and memory. ``checked_builds`` reads ``config/armcl.json``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from operators.armcl_sources import (
    DEBIAN_SUITE,
    SHA256_HEX,
    SourceTarball,
    fetch_debian_source,
    plain_version,
    tarball_from,
)
from requestflow.board.armcl_versions import release
from requestflow.errors import UserError

Log = Callable[[str], None]

OFFICIAL_GIT = "https://github.com/ARM-software/ComputeLibrary.git"
KINDS = ("debian", "debian-binary", "tarball", "git")

BOOL = ("0", "1")
ARCHES = {  # ArmCL's arch values a board can build natively, by the board's machine (uname -m)
    "x86_64": ("x86_64",),
    "aarch64": ("arm64-v8a", "arm64-v8.2-a", "armv8a", "armv8.2-a", "armv8.6-a", "arm64-v8.2-a-sve",
                "arm64-v8.2-a-sve2", "armv8.2-a-sve", "armv8.6-a-sve", "armv8.6-a-sve2"),
    "armv7l": ("armv7a", "armv7a-hf"),
}
MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64", "armv7l": "armv7l",
            "armv8l": "armv7l", "armhf": "armv7l"}  # armv8l: a 32-bit userland on a 64-bit CPU
DEFAULT_ARCH = {"x86_64": "x86_64", "aarch64": "arm64-v8a", "armv7l": "armv7a"}
DATA_TYPES = ("fp16", "fp32", "integer", "qasymm8", "qasymm8_signed", "qsymm16")
DATA_LAYOUTS = ("nchw", "nhwc")
# scons option -> allowed values (a tuple), or the items of a list option (a frozenset). Every option and value is
# checked before anything runs; anything else is refused (never passed through to scons).
OPTIONS: dict[str, tuple[str, ...] | frozenset[str]] = {
    "arch": tuple(a for arches in ARCHES.values() for a in arches),
    "neon": BOOL, "opencl": BOOL, "embed_kernels": BOOL, "debug": BOOL, "asserts": BOOL, "logging": BOOL,
    "cppthreads": BOOL, "openmp": BOOL, "Werror": BOOL, "multi_isa": BOOL, "fixed_format_kernels": BOOL,
    "set_soname": BOOL, "exceptions": BOOL,
    "examples": BOOL, "gemm_tuner": BOOL, "validation_tests": BOOL, "benchmark_tests": BOOL,
    "benchmark_examples": BOOL, "validate_examples": BOOL,
    "build": ("native",),  # a board builds for itself
    "os": ("linux",),
    "data_type_support": frozenset(DATA_TYPES), "data_layout_support": frozenset(DATA_LAYOUTS),
}
# what a build is unless the spec says otherwise: OpenCL kernels embedded, the libraries only, warnings not fatal
# (a newer compiler's new warning must not fail a release build)
DEFAULT_OPTIONS = {
    "build": "native", "os": "linux", "opencl": "1", "embed_kernels": "1", "debug": "0", "asserts": "0",
    "logging": "0", "cppthreads": "1", "openmp": "0", "Werror": "0", "multi_isa": "0", "examples": "0",
    "gemm_tuner": "0", "validation_tests": "0", "benchmark_tests": "0", "data_type_support": "all",
    "data_layout_support": "all",
}
REFUSED = {  # options scons knows that a spec may not set, and why
    "build_dir": "the builder sets it (the board's build cache)", "install_dir": "the builder sets it",
    "compiler_cache": "the builder uses ccache when the board has it",
    "standalone": "it builds static libraries only; the runner loads the shared ones",
    "toolchain_prefix": "boards build natively", "compiler_prefix": "boards build natively",
    "extra_cxx_flags": "free-form flags are not accepted", "extra_link_flags": "free-form flags are not accepted",
    "build_config": "tailored operator lists drop the graph library",
}
_TRUE, _FALSE = ("1", "true", "yes", "on", "y", "t"), ("0", "false", "no", "off", "n", "f")


@dataclass(frozen=True)
class ArmclSource:
    """Where an ArmCL build comes from: ``debian-binary`` (a suite's prebuilt ``libarm-compute`` packages for the
    board's architecture, verified and unpacked on the controller, nothing compiled: ``operators.arm64_debian``),
    ``debian`` (a suite's source package), ``tarball`` (a path or URL with its sha256, shipped by the controller)
    or ``git`` (an official tag, cloned by a board with internet)."""

    kind: str = "debian"
    location: str | None = None  # tarball: path or URL; git: repository URL (default: ARM-software's)
    sha256: str | None = None  # tarball
    tag: str | None = None  # git (default: v<version>)
    suite: str = DEBIAN_SUITE  # debian, debian-binary

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"ArmCL source kind {self.kind!r}: expected {', '.join(KINDS)}")
        if self.kind.startswith("debian") and not re.match(r"^[a-z][a-z0-9-]*$", str(self.suite)):
            raise UserError(f"ArmCL source suite {self.suite!r}: a Debian suite name such as trixie")
        if self.kind == "tarball":
            if not self.location:
                raise UserError("an ArmCL tarball source needs its path or URL")
            if not SHA256_HEX.match(str(self.sha256 or "").lower()):
                raise UserError(f"an ArmCL tarball source needs its sha256 (64 hex digits), got {self.sha256!r}")
            object.__setattr__(self, "sha256", self.sha256.lower())
        if self.kind == "git" and self.tag is not None and not re.match(r"^v?\d+\.\d+(\.\d+)?$", self.tag):
            raise UserError(f"ArmCL git tag {self.tag!r}: official release tags only (e.g. v24.11)")

    @classmethod
    def debian(cls, suite: str = DEBIAN_SUITE) -> ArmclSource:
        return cls("debian", suite=suite)

    @classmethod
    def tarball(cls, location: str, sha256: str) -> ArmclSource:
        return cls("tarball", location=str(location), sha256=sha256)

    @classmethod
    def git(cls, tag: str | None = None, url: str = OFFICIAL_GIT) -> ArmclSource:
        return cls("git", location=url, tag=tag)

    def to_dict(self) -> dict:
        suite = self.suite if self.kind.startswith("debian") else None
        return {k: v for k, v in {"kind": self.kind, "location": self.location, "sha256": self.sha256,
                                  "tag": self.tag, "suite": suite}.items() if v is not None}


@dataclass(frozen=True)
class ArmclSpec:
    """What to build: the ArmCL version, its source and scons options (validated here, before anything runs;
    values kept as scons reads them: ``"0"``/``"1"``, list options sorted and comma-joined). ``jobs`` overrides
    the board's default (by cores and memory)."""

    version: str = "24.11"
    source: ArmclSource | dict | str = "debian"
    options: dict = field(default_factory=dict)
    jobs: int | None = None
    cross: bool = False  # built from source on the controller for an aarch64 board (``operators.arm64_cross``)

    def __post_init__(self) -> None:
        plain_version(self.version)
        source = self.source
        if isinstance(source, str):
            source = ArmclSource(source)
        elif isinstance(source, dict):
            unknown = set(source) - {"kind", "location", "sha256", "tag", "suite"}
            if unknown:
                raise UserError(f"unknown ArmCL source field {sorted(unknown)[0]!r}")
            source = ArmclSource(**source)
        elif not isinstance(source, ArmclSource):
            raise UserError(f"ArmCL source: expected one of {', '.join(KINDS)}, got {type(source).__name__}")
        if source.kind == "git" and source.tag is None:
            source = ArmclSource.git(f"v{self.version}", source.location or OFFICIAL_GIT)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "options", validate_options(self.options, self.version))
        if source.kind == "debian-binary" and self.options:
            raise UserError(f"ArmCL from Debian's binaries is built with Debian's options (read from the library), "
                            f"not {', '.join(self.options)}: drop them, or build from source")
        check_cross(self.cross, source.kind, self.options)
        if self.jobs is not None and (not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1):
            raise UserError(f"ArmCL build jobs must be a positive integer, got {self.jobs!r}")

    def to_dict(self) -> dict:
        return {"version": self.version, "source": self.source.to_dict(), "options": dict(self.options),
                "jobs": self.jobs, **({"cross": True} if self.cross else {})}

    @classmethod
    def from_value(cls, value: ArmclSpec | dict) -> ArmclSpec:
        if isinstance(value, ArmclSpec):
            return value
        if not isinstance(value, dict):
            raise UserError(f"an ArmCL spec is an ArmclSpec or a dict, got {type(value).__name__}")
        provisioned(value)  # checked; where a build is made, not what it is
        value = {k: v for k, v in value.items() if k != "provision"}
        unknown = set(value) - {"version", "source", "options", "jobs", "cross"}
        if unknown:
            raise UserError(f"unknown ArmCL spec field {sorted(unknown)[0]!r}")
        return cls(**value)


def check_cross(cross, kind: str, options: dict) -> None:
    """``cross: true`` is a source build (``debian`` or ``tarball``: a source the controller holds and verifies)
    for an aarch64 target (trixie's ``aarch64-linux-gnu`` toolchain): an explicit ``arch`` must be an aarch64 one."""
    if not isinstance(cross, bool):
        raise UserError(f"ArmCL spec field cross: true or false, not {cross!r}")
    if not cross:
        return
    if kind == "debian-binary":
        raise UserError("ArmCL cross: true builds from source on the controller; a debian-binary build is Debian's "
                        "own, already built: drop cross, or use source debian")
    if kind not in ("debian", "tarball"):
        raise UserError(f"ArmCL cross: true needs a source the controller fetches and verifies (debian or tarball), "
                        f"not {kind}")
    if "arch" in options and options["arch"] not in ARCHES["aarch64"]:
        raise UserError(f"ArmCL cross: true builds for aarch64 (trixie's aarch64-linux-gnu toolchain): arch "
                        f"{options['arch']} is not one of {', '.join(ARCHES['aarch64'])}")


def provisioned(spec: dict) -> bool:
    """Whether board_provision builds the spec on every board (``"provision": true``, the default), or only the
    sweeps whose points name it (``false``: a build made on demand, e.g. another library version)."""
    value = spec.get("provision", True)
    if not isinstance(value, bool):
        raise UserError(f"ArmCL spec field provision: true or false, not {value!r}")
    return value


def validate_options(options: dict, version: str | None = None) -> dict[str, str]:
    """Every option checked against the allowlist and its allowed values, and against what ArmCL ``version``'s
    scons knows (``requestflow.board.armcl_versions``: 20.08 has fewer); canonical values, sorted by name.
    A UserError names the first bad option (and the closest known name, for a typo) or value."""
    if not isinstance(options, dict):
        raise UserError(f"ArmCL options must be a mapping of scons option to value, got {type(options).__name__}")
    out = {}
    for name in sorted(options, key=str):
        value = options[name]
        if name in REFUSED:
            raise UserError(f"ArmCL option {name!r} cannot be set in a spec: {REFUSED[name]}")
        allowed = OPTIONS.get(name)
        if allowed is None:
            close = difflib.get_close_matches(str(name), list(OPTIONS) + ["data_type_support"], n=1, cutoff=0.5)
            if name in ("data_types", "data_type"):
                close = ["data_type_support"]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown ArmCL scons option {name!r}{hint}; allowed: {', '.join(sorted(OPTIONS))}")
        out[name] = _option_value(name, value, allowed)
        _check_release(name, out[name], version)
    return dict(sorted(out.items()))


def _check_release(name: str, value: str, version: str | None) -> None:
    facts = release(version)
    if facts.options is not None and name not in facts.options:
        raise UserError(f"ArmCL {version} has no scons option {name!r} (its options: "
                        f"{', '.join(sorted(facts.options))})")
    if name == "arch" and facts.arches is not None and value not in facts.arches:
        raise UserError(f"ArmCL {version} has no arch {value} (its arches: {', '.join(facts.arches)})")


def _option_value(name: str, value, allowed) -> str:
    if allowed is BOOL:
        text = str(int(value)) if isinstance(value, bool) else str(value).strip().lower()
        if text in _TRUE:
            return "1"
        if text in _FALSE:
            return "0"
        raise UserError(f"ArmCL option {name}: {value!r} is not a boolean (0 or 1)")
    if isinstance(allowed, frozenset):
        items = [str(v).strip() for v in value] if isinstance(value, list | tuple) else \
            [v.strip() for v in str(value).split(",")]
        if items in (["all"], ["none"]):
            return items[0]
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise UserError(f"ArmCL option {name}: {bad[0] if bad else value!r} is not one of all, none, "
                            f"{', '.join(sorted(allowed))}")
        return ",".join(sorted(set(items)))
    text = str(value).strip()
    if text not in allowed:
        raise UserError(f"ArmCL option {name}: {value!r} is not one of {', '.join(allowed)}")
    return text




@dataclass(frozen=True)
class BuildOptions:
    """A spec's options completed for one board: the full scons option list and the number of jobs."""

    options: dict[str, str]
    jobs: int
    machine: str  # the board's machine family: x86_64, aarch64, armv7l


def options_for(platform_snapshot: dict, spec: ArmclSpec) -> BuildOptions:
    """The full scons options of ``spec`` for a board (``requestflow platform``'s snapshot, with the CPU's feature
    flags in ``cpu_features`` when known): ``arch`` from the detected machine (x86_64 -> x86_64, aarch64 ->
    arm64-v8a, armv7l -> armv7a), ``neon=1`` only on Arm CPUs with Advanced SIMD (aarch64: ``asimd``, which every
    ARMv8-A application core has, so it is assumed when the flags are unknown; armv7l: ``neon`` must be listed),
    the defaults for the rest; jobs by cores and memory. A spec that asks what the board cannot build (arch of
    another machine, NEON without it, NEON on x86) is a UserError."""
    from requestflow.board.armcl import default_jobs

    detected = str(platform_snapshot.get("arch") or "")
    machine = MACHINES.get(detected.lower())
    if machine is None:
        raise UserError(f"ArmCL cannot be built for a {detected or 'unknown'} board (known: "
                        f"{', '.join(sorted(MACHINES))})")
    features = platform_snapshot.get("cpu_features")
    features = {f.lower() for f in features} if features is not None else None
    if machine == "x86_64":
        has_neon = False
    elif machine == "aarch64":
        has_neon = features is None or "asimd" in features
    else:
        has_neon = features is not None and "neon" in features
    known = release(spec.version).options  # a release's scons without an option never gets its default
    defaults = {k: v for k, v in DEFAULT_OPTIONS.items() if known is None or k in known}
    options = {**defaults, "arch": DEFAULT_ARCH[machine], "neon": "1" if has_neon else "0", **spec.options}
    if options["arch"] not in ARCHES[machine]:
        raise UserError(f"ArmCL option arch={options['arch']} cannot be built on a {detected} board (boards build "
                        f"natively: {', '.join(ARCHES[machine])})")
    if options["neon"] == "1" and not has_neon:
        why = "ArmCL has no NEON code for x86" if machine == "x86_64" else "its CPU does not list NEON"
        raise UserError(f"ArmCL option neon=1 on a {detected} board: {why}")
    _check_release("arch", options["arch"], spec.version)
    if options.get("multi_isa") == "1" and "v8" not in options["arch"]:
        raise UserError(f"ArmCL option multi_isa=1 needs an armv8 arch, not {options['arch']}")
    if options["neon"] == "0" and options["opencl"] == "0":
        raise UserError("ArmCL options neon=0 and opencl=0 leave no backend to build")
    jobs = spec.jobs or default_jobs(platform_snapshot.get("cpu_count"), platform_snapshot.get("memory_bytes"))
    return BuildOptions(options=dict(sorted(options.items())), jobs=jobs, machine=machine)


def cache_key(source_id: str, options: dict, compiler: dict) -> str:
    """The build's cache key (``requestflow.board.armcl.build_key``, the one the board computes)."""
    from requestflow.board.armcl import build_key

    return build_key(source_id, options, compiler)


def resolve_source(spec: ArmclSpec, cache_dir: str | os.PathLike | None = None, log: Log = print
                   ) -> SourceTarball | None:
    """The spec's source tarball on the controller (fetched or downloaded once, checked); None for a git tag,
    which the board clones itself."""
    source = spec.source
    if source.kind == "debian":
        return fetch_debian_source(spec.version, cache_dir, suite=source.suite, log=log)
    if source.kind == "tarball":
        return tarball_from(source.location, source.sha256, cache_dir, version=spec.version, log=log)
    return None



def checked_builds() -> dict[str, dict]:
    """The ArmCL builds of ``config/armcl.json`` (name -> spec), each spec checked (a bad option fails the DAG's
    parse with its name)."""
    from operators.config import configured_builds

    builds = configured_builds()
    for name, spec in builds.items():
        try:
            ArmclSpec.from_value(spec)
        except UserError as exc:
            raise UserError(f"config/armcl.json: build {name!r}: {exc}") from None
    return builds
