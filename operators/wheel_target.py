"""A board's dependencies evaluated for the board, not for this controller (issue #15).

pip evaluates environment markers against the interpreter it runs in, even with ``--platform``
(https://github.com/pypa/pip/issues/11664): on this x86_64 controller, ``pip download --platform
manylinux_2_17_aarch64 requestflow.whl`` picks ``tensorflow-cpu==2.21.0; platform_machine == 'x86_64'`` and finds
no aarch64 wheel for it. So, for another architecture:

* ``board_requirements``: ``pyproject.toml``'s core dependencies with their markers evaluated for the target
  (``packaging.markers`` with the target's ``platform_machine``, Python version, Linux/CPython), the markers
  dropped: what pip is given instead of the project's wheel.
* ``check_closure``: the wheelhouse pip made, read back from each wheel's own ``METADATA``, its ``Requires-Dist``
  markers evaluated for the target again: every requirement reachable from the board's is there (DeployError
  otherwise) and wheels only the controller's markers asked for are named, to be left out.
* ``resolve_pins`` (``python -m operators.wheel_target pins aarch64``): how ``requirements/constraints-<arch>.txt``
  is made, reproducibly: the target's requirements resolved by pip for the target's manylinux wheels
  (``pip install --dry-run --report``), preferring the versions of ``constraints-x86_64.txt`` (the controller's
  pins) and dropping a preferred pin only when the target has no wheel of that version (pip's own "No matching
  distribution" names it); the closure is then taken from the report's metadata, evaluated for the target.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# A cross-architecture wheelhouse accepts manylinux wheels up to this glibc (2.28: Debian 10, Ubuntu 20.04 and
# later, the boards' usual images); the board's pip refuses, at install time, a wheel its glibc cannot run.
CROSS_GLIBC_MINOR = 28


class ClosureError(RuntimeError):
    """A wheelhouse lacks a requirement its wheels have for the target."""


def platform_tags(arch: str) -> list[str]:
    """Every manylinux tag pip must be given for ``arch``, newest first: pip takes a wheel only when one of its
    tags is listed, and wheels carry one of them only (numpy and pillow for aarch64: ``manylinux_2_27/2_28``;
    ai-edge-litert 1.4.0: ``manylinux_2_17``)."""
    return [*(f"manylinux_2_{minor}_{arch}" for minor in range(CROSS_GLIBC_MINOR, 16, -1)), f"manylinux2014_{arch}"]


def pip_target_args(arch: str, python: str) -> list[str]:
    """pip's options for wheels of another machine: binary only, CPython ``python``, every manylinux tag."""
    tag = f"cp{python.replace('.', '')}"
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", tag]
    for platform in platform_tags(arch):
        args += ["--platform", platform]
    return args


def target_environment(arch: str, python: str) -> dict[str, str]:
    """The marker environment of a Linux board of machine ``arch`` running CPython ``python`` ("3.11")."""
    env = dict(default_environment())
    env.update(platform_machine=arch, platform_system="Linux", sys_platform="linux", os_name="posix",
               implementation_name="cpython", platform_python_implementation="CPython", python_version=python,
               python_full_version=f"{python}.0", implementation_version=f"{python}.0", platform_release="",
               platform_version="")
    return env


def _applies(requirement: Requirement, env: dict[str, str], extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({**env, "extra": extra})


def _without_marker(requirement: Requirement) -> str:
    requirement = Requirement(str(requirement))
    requirement.marker = None
    return str(requirement)


def board_requirements(root: Path, arch: str, python: str) -> list[str]:
    """``pyproject.toml``'s ``[project] dependencies`` that apply to the target, markers removed."""
    project = tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]
    env = target_environment(arch, python)
    return [_without_marker(r) for r in map(Requirement, project["dependencies"]) if _applies(r, env)]


def _wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) from a wheel's ``*.dist-info/METADATA``."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ClosureError(f"{wheel.name}: expected one .dist-info/METADATA, found {names}")
        message = Parser().parsestr(archive.read(names[0]).decode("utf-8", errors="replace"))
    return canonicalize_name(message["Name"]), message["Version"], message.get_all("Requires-Dist") or []


def closure(requirements: list[str], available: dict[str, list[str]], env: dict[str, str]) -> tuple[set, list]:
    """(the names reachable from ``requirements`` through ``available`` (name -> its Requires-Dist), with
    markers evaluated for ``env`` and extras followed; the requirements nothing in ``available`` provides)."""
    reached: set[str] = set()
    missing: list[str] = []
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if not _applies(requirement, env, extra):
            continue
        name = canonicalize_name(requirement.name)
        if name not in available:
            missing.append(str(requirement))
            continue
        wanted = [(name, ""), *((name, e) for e in sorted(requirement.extras))]
        for key in wanted:
            if key in reached:
                continue
            reached.add(key)
            todo += [(Requirement(line), key[1]) for line in available[name]]
    return {name for name, _extra in reached}, missing


def check_closure(wheels: Path, requirements: list[str], arch: str, python: str) -> list[Path]:
    """Check that the wheelhouse ``wheels`` holds everything ``requirements`` need on the target (each wheel's
    ``Requires-Dist`` evaluated for it); the wheels nothing needs there (pip pulled them for the controller's
    markers), for the caller to remove. ClosureError names what is missing."""
    found: dict[str, tuple[Path, list[str]]] = {}
    for wheel in sorted(Path(wheels).glob("*.whl")):
        name, _version, requires = _wheel_metadata(wheel)
        found[name] = (wheel, requires)
    reached, missing = closure(requirements, {name: requires for name, (_w, requires) in found.items()},
                               target_environment(arch, python))
    if missing:
        raise ClosureError(f"the {arch} wheelhouse lacks {', '.join(sorted(set(missing)))} (needed on {arch} "
                           f"with Python {python})")
    return [wheel for name, (wheel, _requires) in sorted(found.items()) if name not in reached]


# --- making requirements/constraints-<arch>.txt ----------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement)
    return pins


def _version(pin: str) -> str:
    """The version of a ``name==version`` line."""
    return next(iter(Requirement(pin).specifier)).version


def resolve_pins(root: Path, arch: str, python: str = "3.11", log=print) -> tuple[list[str], list[str]]:
    """(``name==version`` pins of the board's closure on ``arch``, the controller's pins left out because the
    target has no wheel of that version). Needs the package index (pip's own configuration)."""
    requirements = board_requirements(root, arch, python)
    preferred = _pins(Path(root) / "requirements" / "constraints-x86_64.txt")
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r).specifier for r in requirements}
    # a controller pin outside what pyproject asks for on the target (tensorflow==2.20.0) is not a preference
    dropped = sorted(name for name, line in preferred.items()
                     if name in wanted and not wanted[name].contains(_version(line), prereleases=True))
    for name in dropped:
        preferred.pop(name)
    env = target_environment(arch, python)
    with tempfile.TemporaryDirectory(prefix="rf-pins-") as folder:
        constraints, report = Path(folder) / "preferred.txt", Path(folder) / "report.json"
        for _attempt in range(20):
            constraints.write_text("".join(f"{line}\n" for _name, line in sorted(preferred.items())))
            command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run",
                       "--ignore-installed", "--quiet", "--report", str(report), "--target", f"{folder}/target",
                       *pip_target_args(arch, python), "--constraint", str(constraints), *requirements]
            result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if result.returncode == 0:
                break
            absent = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)==", result.stderr)
            name = canonicalize_name(absent.group(1)) if absent else None
            if name not in preferred:
                raise ClosureError(f"pip could not resolve for {arch}: {result.stderr.strip()[-2000:]}")
            log(f"{arch}: no wheel of {preferred[name]}: resolving it freely")
            dropped.append(name)
            preferred.pop(name)
        else:
            raise ClosureError(f"pip could not resolve for {arch} in 20 attempts")
        installs = json.loads(report.read_text())["install"]
    available = {canonicalize_name(i["metadata"]["name"]): i["metadata"].get("requires_dist") or []
                 for i in installs}
    versions = {canonicalize_name(i["metadata"]["name"]): (i["metadata"]["name"], i["metadata"]["version"])
                for i in installs}
    reached, missing = closure(requirements, available, env)
    if missing:
        raise ClosureError(f"pip's resolution for {arch} lacks {', '.join(sorted(set(missing)))}")
    return sorted(f"{versions[name][0]}=={versions[name][1]}" for name in reached), sorted(dropped)


def pins_file_text(root: Path, arch: str, python: str = "3.11", log=print) -> str:
    pins, dropped = resolve_pins(root, arch, python, log=log)
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()
    header = [
        f"# The board dependencies of pyproject.toml for {arch} boards with CPython {python}, pinned. Generated on",
        f"# {time.strftime('%Y-%m-%d')} (pip {pip[1] if len(pip) > 1 else '?'}, x86_64 controller) by",
        f"#     .venv/bin/python -m operators.wheel_target pins {arch} > requirements/constraints-{arch}.txt",
        f"# pyproject's markers evaluated for {arch} (not for the controller: pip issue #11664), resolved by pip for",
        f"# {arch} wheels only (every tag from manylinux2014 to manylinux_2_{CROSS_GLIBC_MINOR}) preferring the "
        "versions of",
        "# constraints-x86_64.txt; the closure read from the resolved wheels' metadata, evaluated for the target.",
        f"# Not the controller's version ({arch} has no wheel of it, or pyproject asks for another): "
        f"{', '.join(dropped) or 'none'}.",
        f"# operators.deploy.build_bundle(target={arch!r}) downloads exactly these {len(pins)} wheels.",
    ]
    return "\n".join(header + pins) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m operators.wheel_target")
    parser.add_argument("action", choices=("pins", "requirements"))
    parser.add_argument("arch")
    parser.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    if args.action == "requirements":
        print("\n".join(board_requirements(root, args.arch, args.python)))
    else:
        sys.stdout.write(pins_file_text(root, args.arch, args.python, log=lambda line: print(line, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
