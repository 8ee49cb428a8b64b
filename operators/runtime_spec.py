"""Runtime specs (issue #17): a board may hold several runner environments, one per runtime spec, each its own venv
from its own wheelhouse, and a sweep's point chooses one.

A runtime spec is one exact pin of a backend's library: ``ai-edge-litert==1.4.0`` (tflite points),
``tensorflow-cpu==2.20.0`` or ``tensorflow==2.20.0`` (tf points). Only ``RUNTIME_PACKAGES`` are accepted, and only
``==`` with a plain release version (``parse``: one clear line otherwise), so that what a sweep names is exactly
what a venv holds. A point with a spec carries it as ``point["runtime"]`` (``operators.sweep.plan``); the runner
installed for it records it as ``context.backend.runtime`` (``requestflow.board.runtime``), part of the point's
identity.

On the controller, ``runtime_bundle`` makes the spec's wheelhouse: the pinned package and its dependencies
downloaded for the board's machine and Python with the board's other pins (``requirements/constraints-<arch>.txt``
without the spec's package), cached under ``<requestflow cache>/runtimes/<key>`` where the key is a digest of the
spec, the target and the constraints (only the wheels the runner bundle lacks are kept there); combined with the
runner bundle (``operators.bundle``) into a ``Bundle`` whose digest is the spec's and its wheels' but the project's
own (so that a change of requestflow's sources does not make a new venv: ``deploy_runner`` installs the new
project wheel into it, without its dependencies). A version the package index cannot provide for the board is named
there, at provisioning. ``operators.deploy.deploy_runner`` installs it as ``W/runner/<digest>/`` like the default
runner, writes the spec into its venv and links it as ``W/runner/runtime-<spec digest>`` (``RuntimeSpec.link``),
which the point's task finds (``runner_location``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as platform_module
import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from operators.blob_store import DeployError, Log
from operators.bundle import Bundle, normalize_arch, run_pip
from operators.config import ROOT
from operators.file_lock import file_lock
from requestflow.board.files import sha256_file
from requestflow.errors import UserError

RUNTIME_FORMAT = 1
# the packages a runtime spec may pin, and the backend whose points run on it
RUNTIME_PACKAGES = {"ai-edge-litert": "tflite", "tensorflow-cpu": "tf", "tensorflow": "tf"}
_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([0-9]+(?:\.[0-9]+){1,3}(?:\.post[0-9]+)?)\s*$")


class SpecError(UserError, ValueError):
    """A runtime spec not of the accepted shape (a UserError for the CLI, a ValueError for the sweep's plan)."""


@dataclass(frozen=True)
class RuntimeSpec:
    package: str  # canonical name: ai-edge-litert
    version: str  # 1.4.0

    @property
    def text(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def backend(self) -> str:
        return RUNTIME_PACKAGES[self.package]

    @property
    def digest(self) -> str:
        """16 hex digits of the spec alone: its runner's link on a board (the same on every board)."""
        return hashlib.sha256(f"runtime_format {RUNTIME_FORMAT}\n{self.text}".encode()).hexdigest()[:16]

    @property
    def link(self) -> str:
        return f"runtime-{self.digest}"

    def __str__(self) -> str:
        return self.text


def parse(text: str, backend: str | None = None) -> RuntimeSpec:
    """The spec ``text`` names (``ai-edge-litert==1.4.0``), checked: one of ``RUNTIME_PACKAGES``, an exact release
    version, for ``backend``'s points when given. SpecError (one line) otherwise."""
    found = _SPEC.match(text) if isinstance(text, str) else None
    if not found:
        raise SpecError(f"runtime spec {text!r} is not NAME==VERSION (an exact release, e.g. ai-edge-litert==1.4.0)")
    package = canonicalize_name(found.group(1))
    if package not in RUNTIME_PACKAGES:
        raise SpecError(f"runtime spec {text!r}: {package} is not a runtime requestflow knows; one of "
                        f"{', '.join(RUNTIME_PACKAGES)}")
    spec = RuntimeSpec(package, found.group(2))
    if backend is not None and spec.backend != backend:
        raise SpecError(f"runtime spec {spec} is for {spec.backend} points, not {backend}")
    return spec


def parse_all(texts, backend: str) -> list[RuntimeSpec]:
    """Several specs for ``backend``'s points, each checked, none twice."""
    specs = [parse(text, backend) for text in texts or []]
    seen = [s.text for s in specs]
    twice = sorted({t for t in seen if seen.count(t) > 1})
    if twice:
        raise SpecError(f"runtime spec {twice[0]} is given twice")
    return specs


def point_specs(points) -> list[RuntimeSpec]:
    """The distinct runtime specs ``points`` name, in order."""
    texts = dict.fromkeys(p["runtime"] for p in points or [] if isinstance(p, dict) and p.get("runtime"))
    return [parse(text) for text in texts]


def check_target(spec: RuntimeSpec, arch: str, python: str, root: Path | None = None) -> None:
    """Refuse a spec requestflow's own requirements exclude on the target (``pyproject.toml``'s dependencies for
    ``arch``): a UserError naming the requirement."""
    from operators import wheel_target

    wanted = {canonicalize_name(Requirement(r).name): Requirement(r)
              for r in wheel_target.board_requirements(root or ROOT, arch, python)}
    requirement = wanted.get(spec.package)
    if requirement is None:
        others = [name for name, backend in RUNTIME_PACKAGES.items() if backend == spec.backend and name in wanted]
        raise UserError(f"runtime spec {spec}: requestflow does not use {spec.package} on {arch} boards"
                        + (f" (it uses {', '.join(others)})" if others else ""))
    if not requirement.specifier.contains(spec.version, prereleases=True):
        raise UserError(f"runtime spec {spec}: requestflow requires {requirement} on {arch} boards "
                        "(pyproject.toml)")


def runtime_key(spec: RuntimeSpec, arch: str, python: str, constraints: Path) -> str:
    """16 hex digits: the spec, the target and the board's pins (what the spec's wheelhouse depends on)."""
    text = f"runtime_format {RUNTIME_FORMAT}\n{spec}\ntarget {arch} {python}\nconstraints {sha256_file(constraints)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def runtime_bundle(base: Bundle, spec: RuntimeSpec, cache_dir: str | os.PathLike | None = None, *,
                   root: str | os.PathLike | None = None, log: Log = print) -> Bundle:
    """The runner bundle ``base`` with ``spec`` in place of its package: the spec's wheelhouse (downloaded once per
    key, module docstring) and the base's other wheels. UserError when requestflow excludes the spec on the target;
    DeployError naming the spec when the package index cannot provide it."""
    from requestflow.board.files import cache_dir as requestflow_cache_dir

    root = Path(root) if root else ROOT
    arch, python = base.platform, base.python
    check_target(spec, arch, python, root)
    constraints = root / "requirements" / f"constraints-{arch}.txt"
    folders = Path(cache_dir) if cache_dir else requestflow_cache_dir("runtimes")
    folders.mkdir(parents=True, exist_ok=True)
    key = runtime_key(spec, arch, python, constraints)
    final = folders / key
    with file_lock(folders / f".{key}.lock"):
        if not (final / "runtime.json").is_file():
            _download(spec, base, constraints, final, log)
    manifest = json.loads((final / "runtime.json").read_text())
    files = manifest["files"]
    for name, entry in files.items():
        if (final / name).stat().st_size != entry["size"]:
            raise DeployError(f"runtime {spec}: {final / name} does not have the size its manifest says")
    replaced = {canonicalize_name(parse_wheel_filename(name)[0]) for name in files}
    kept = [w for w in base.wheels if canonicalize_name(parse_wheel_filename(w.name)[0]) not in replaced]
    wheels = kept + [final / name for name in sorted(files)]
    sha256 = {w.name: base.sha256[w.name] for w in kept} | {name: e["sha256"] for name, e in files.items()}
    # the venv's digest: the spec and every wheel but the project's (a new project wheel updates the venv in place)
    others = "".join(f"{name} {sha}\n" for name, sha in sorted(sha256.items()) if name != base.project_wheel)
    digest = hashlib.sha256(f"{key}\n{spec}\n{others}".encode()).hexdigest()[:16]
    return replace(base, path=final, digest=digest, wheels=wheels, sha256=sha256, runtime=spec.text,
                   link=spec.link)


def _download(spec: RuntimeSpec, base: Bundle, constraints: Path, final: Path, log: Log) -> None:
    """``spec`` and its dependencies for the target, pinned like the runner's; only what ``base`` lacks kept."""
    from operators import wheel_target

    started = time.monotonic()
    work = final.parent / f".download-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        pins = work / "constraints.txt"
        work.mkdir(parents=True)
        pins.write_text("".join(f"{line}\n" for line in constraints.read_text().splitlines()
                                if not _pins_package(line, spec.package)))
        args = ["download", "--only-binary=:all:", "--constraint", str(pins), "--dest", str(work / "wheels")]
        if base.platform != normalize_arch(platform_module.machine()):
            args += wheel_target.pip_target_args(base.platform, base.python)[1:]
        log(f"runtime {spec}: downloading its wheels for {base.platform} / Python {base.python}")
        try:
            run_pip([*args, spec.text], log)
        except DeployError as exc:
            last = str(exc).strip().splitlines()[-1]
            raise DeployError(f"runtime {spec}: the package index cannot provide it for {base.platform} / Python "
                              f"{base.python}: {last}") from None
        wheels = work / "wheels"
        others = [p.name for p in wheels.iterdir() if not p.name.endswith(".whl")]
        if others:
            raise DeployError(f"runtime {spec}: pip saved non-wheel files {others}: boards install wheels only")
        if not any(parse_wheel_filename(p.name)[:2] == (spec.package, Version(spec.version))
                   for p in wheels.iterdir()):
            raise DeployError(f"runtime {spec}: pip did not download {spec.package} {spec.version}")
        for path in list(wheels.iterdir()):
            if base.sha256.get(path.name) == sha256_file(path):
                path.unlink()  # the runner bundle has it (the spec itself, when it is the bundle's own version)
        files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(wheels.iterdir())}
        (wheels / "runtime.json").write_text(json.dumps({
            "runtime_format": RUNTIME_FORMAT, "spec": spec.text, "platform": base.platform, "python": base.python,
            "constraints": constraints.name, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files}, indent=1) + "\n")
        if final.exists():  # a damaged leftover without a manifest
            shutil.rmtree(final)
        os.rename(wheels, final)
        log(f"runtime {spec}: {len(files)} wheel(s) beside the runner bundle's "
            f"({sum(f['size'] for f in files.values()) / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pins_package(line: str, package: str) -> bool:
    line = line.split("#", 1)[0].strip()
    return bool(line) and canonicalize_name(Requirement(line).name) == package
