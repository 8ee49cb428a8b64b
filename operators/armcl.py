"""Building the Arm Compute Library for a board: the source on the controller, the options from the board, the
build on the board (``requestflow/board/armcl.py``), its provenance in the results store.

* **Sources** (on the controller): Debian's source package ``arm-compute-library`` (``fetch_debian_source``: trixie
  has 24.11, fetched through a private apt configuration, the system's apt state untouched); a tarball given by
  path or URL with its sha256 (``tarball_from``), shipped to boards without internet; or an official git tag,
  cloned by the board itself (boards with internet; nothing happens on the controller).
* **Spec** (``ArmclSpec``): version, source and scons options, every option checked against an allowlist with its
  allowed values before anything runs (a UserError naming the option). ``options_for`` completes the options for a
  board from its platform snapshot: arch from the detected machine, NEON where the CPU has it, jobs by cores and
  memory.
* **Operator** (``ArmclBuildOperator``): once per board and spec, inside the board's one-slot pool (never per
  point): the tarball crosses the link once (``deploy.push_data``: content-addressed, checked on arrival), the
  build runs detached on the board (``board_jobs``: its output in the task log, stopped by ``on_kill``) and is
  cached there by its key (source sha256 + full options + compiler): a second run reuses it in seconds. The
  provenance goes into ``library_builds`` (``requestflow.results.builds``). A failed build fails the task with
  the compiler's or scons's error, without retries, and stores every point that needed it in ``point_failures``.

Controller-side cache (``$REQUESTFLOW_CACHE/armcl``, or ``source_cache_dir``)::

    debian/<suite>/apt/                               the private apt configuration: sources.list, lists, cache
    debian/<suite>/arm-compute-library_<version>/     the .orig.tar.xz and source.json (what was verified, how)
    tarballs/<sha256>/<file name>                     tarballs downloaded from a URL
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from operators.board_hook import board_for
from operators.deploy import file_lock
from requestflow.errors import UserError
from requestflow.results.database import CONN_ID

Log = Callable[[str], None]

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "trixie"  # the suite with ArmCL 24.11 (bookworm has 20.08)
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCE_PACKAGE = "arm-compute-library"
OFFICIAL_GIT = "https://github.com/ARM-software/ComputeLibrary.git"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SourceError(RuntimeError):
    """Fetching or checking a source failed (network, apt, a checksum): may succeed on a retry once fixed."""


class ArmclBuildFailed(AirflowFailException):
    """The build failed in a way retrying cannot help: a compiler or scons error, a board without compiler or
    scons, a spec the board cannot build, a source whose checksum does not match. Points that needed the build are
    stored failed with this error."""


# --- sources, on the controller --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTarball:
    """A source tarball on the controller, its content checked: what is shipped to a board."""

    path: Path
    sha256: str
    version: str | None
    origin: str  # where it came from, recorded in the build's provenance

    @property
    def source_id(self) -> str:
        return f"sha256:{self.sha256}"


def source_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    from requestflow.board.files import cache_dir as requestflow_cache_dir

    path = Path(cache_dir) if cache_dir else requestflow_cache_dir("armcl")
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_debian_source(version: str = "24.11", cache_dir: str | os.PathLike | None = None, *,
                        suite: str = DEBIAN_SUITE, mirror: str = DEBIAN_MIRROR, log: Log = print) -> SourceTarball:
    """Debian's ``arm-compute-library`` source of upstream ``version`` (its ``.orig.tar.xz``), fetched once.

    A private apt configuration under the cache (its own sources.list with one ``deb-src`` line, its own lists,
    state and cache folders; ``Dir::Etc::SourceParts``, the preferences and the dpkg status pointed at /dev/null):
    ``apt-get update`` then ``apt-get source --download-only --tar-only`` of the highest Debian version of that
    upstream version in ``suite``. The tarball's sha256 is checked against the ``Checksums-Sha256`` of the source
    package's .dsc (when the mirror serves the .dsc, whose own sha256 is checked first) and always against those of
    the Sources index, which apt verified through the suite's signed InRelease (the index's entry is the .dsc's
    fields). Cached: a second call checks the file's sha256 and touches no network. The system's apt state is
    never changed (nor read, beyond its configuration files).
    """
    _plain_version(version)
    root = source_cache(cache_dir) / "debian" / suite
    final = root / f"{SOURCE_PACKAGE}_{version}"
    cached = _cached_source(final)
    if cached is not None:
        return cached
    if shutil.which("apt-get") is None:
        raise UserError("apt-get not found: Debian's ArmCL source needs apt; give a tarball and its sha256 instead "
                        "(ArmclSource.tarball)")
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        cached = _cached_source(final)
        if cached is not None:
            return cached
        started = time.monotonic()
        apt = _PrivateApt(root / "apt", f"deb-src [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main")
        log(f"apt (private, {apt.folder}): updating the {suite} source index from {mirror}")
        apt.run("apt-get", "update")
        stanzas = parse_control(apt.run("apt-cache", "showsrc", "--only-source", SOURCE_PACKAGE))
        stanza = _choose_version(stanzas, version, suite)
        debian_version = stanza["Version"]
        checksums = parse_checksums(stanza.get("Checksums-Sha256", ""))
        orig = [name for name in checksums if re.search(r"\.orig\.tar\.(xz|gz|bz2)$", name)]
        if len(orig) != 1:
            raise SourceError(f"{SOURCE_PACKAGE} {debian_version}: expected one .orig tarball in the index, found "
                              f"{orig or 'none'}")
        name = orig[0]
        download = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            log(f"apt-get source --download-only --tar-only {SOURCE_PACKAGE}={debian_version}")
            apt.run("apt-get", "source", "--download-only", "--tar-only", f"{SOURCE_PACKAGE}={debian_version}",
                    cwd=download)
            checked = [f"the Sources index of {suite} (signed InRelease, checked by apt)"]
            dsc = _fetch_dsc(apt, download, debian_version, checksums, log)
            if dsc is not None:
                dsc_sums = parse_checksums(parse_control(dsc)[0].get("Checksums-Sha256", ""))
                if dsc_sums.get(name, (None,))[0] != checksums[name][0]:
                    raise SourceError(f"{SOURCE_PACKAGE}_{debian_version}.dsc lists {name} with sha256 "
                                      f"{dsc_sums.get(name, ('none',))[0]}, the index with {checksums[name][0]}")
                checked.insert(0, f"{SOURCE_PACKAGE}_{debian_version}.dsc")
            path = download / name
            verify_sha256(path, checksums[name][0], what=f"{name} (Checksums-Sha256 of {SOURCE_PACKAGE} "
                                                        f"{debian_version})")
            final.mkdir(parents=True, exist_ok=True)
            os.replace(path, final / name)
            record = {"package": SOURCE_PACKAGE, "version": version, "debian_version": debian_version,
                      "suite": suite, "file": name, "sha256": checksums[name][0], "size": checksums[name][1],
                      "url": f"{mirror}/{stanza.get('Directory', '')}/{name}", "verified_against": checked,
                      "dsc": f"{SOURCE_PACKAGE}_{debian_version}.dsc" if dsc is not None else None,
                      "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if dsc is not None:
                (final / record["dsc"]).write_text(dsc)
            (final / "source.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        finally:
            shutil.rmtree(download, ignore_errors=True)
        log(f"{name}: sha256 {record['sha256']} checked against {' and '.join(checked)} "
            f"({time.monotonic() - started:.1f} s)")
        return _cached_source(final)


class _PrivateApt:
    """apt with a configuration of its own: nothing of the system's sources, lists, caches or dpkg state."""

    def __init__(self, folder: Path, source_line: str) -> None:
        self.folder = folder
        for sub in ("lists/partial", "cache/archives/partial", "state"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "sources.list").write_text(source_line + "\n")
        self.options = {
            "Dir::Etc::SourceList": folder / "sources.list", "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State": folder / "state", "Dir::State::Lists": folder / "lists",
            "Dir::State::status": "/dev/null", "Dir::Cache": folder / "cache", "Acquire::Languages": "none",
        }
        if os.geteuid() == 0:
            # as root apt downloads as the _apt user, which cannot enter a private folder under root's home: it
            # would warn and download as root anyway
            self.options["APT::Sandbox::User"] = "root"

    def run(self, *command: str, cwd: Path | None = None) -> str:
        args = [command[0]]
        for name, value in self.options.items():
            args += ["-o", f"{name}={value}"]
        args += list(command[1:])
        try:
            result = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
                                    cwd=cwd, env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
        except subprocess.TimeoutExpired:
            raise SourceError(f"`{' '.join(command)}` (private apt) did not finish in 15 minutes") from None
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith(("E:", "Err:", "W:"))] or lines[-5:]
            raise SourceError(f"`{' '.join(command)}` (private apt in {self.folder}) failed ({result.returncode}): "
                              + " | ".join(errors[-5:]))
        return result.stdout


def _fetch_dsc(apt: _PrivateApt, folder: Path, debian_version: str, checksums: dict, log: Log) -> str | None:
    """The .dsc's text, its sha256 checked against the index; None (said in the log) when the mirror lacks it."""
    name = f"{SOURCE_PACKAGE}_{debian_version}.dsc"
    try:
        apt.run("apt-get", "source", "--download-only", "--dsc-only", f"{SOURCE_PACKAGE}={debian_version}",
                cwd=folder)
    except SourceError as exc:
        log(f"{name} could not be fetched ({exc}): the tarball is checked against the signed index only")
        return None
    if name in checksums:
        verify_sha256(folder / name, checksums[name][0], what=name)
    return (folder / name).read_text()


def _cached_source(final: Path) -> SourceTarball | None:
    record_path = final / "source.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    path = final / record["file"]
    if not path.is_file() or _sha256(path) != record["sha256"]:  # damaged or removed: fetched again
        record_path.unlink()
        return None
    return SourceTarball(path=path, sha256=record["sha256"], version=record["version"],
                         origin=f"debian {record['suite']} {SOURCE_PACKAGE} {record['debian_version']} "
                                f"({record['url']})")


def parse_control(text: str) -> list[dict[str, str]]:
    """Debian control stanzas (``apt-cache showsrc``, a .dsc, possibly PGP-signed): fields, continuation lines
    kept with their newlines."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line.startswith("-----BEGIN PGP SIGNED MESSAGE") or line.startswith("Hash:"):
            continue
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            break
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, None
        elif line[0] in " \t" and last is not None:
            current[last] += "\n" + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_checksums(field_text: str) -> dict[str, tuple[str, int]]:
    """``Checksums-Sha256`` lines ``<sha256> <size> <name>``: name -> (sha256, size)."""
    out = {}
    for line in field_text.splitlines():
        parts = line.split()
        if len(parts) == 3 and _SHA256.match(parts[0]):
            out[parts[2]] = (parts[0], int(parts[1]))
    return out


def _choose_version(stanzas: list[dict], version: str, suite: str) -> dict:
    """The stanza of the highest Debian version whose upstream version is ``version`` (24.11 matches
    24.11+dfsg-3 and 1:24.11-1)."""
    matching = [s for s in stanzas if s.get("Package") == SOURCE_PACKAGE and _upstream(s.get("Version", "")) ==
                version]
    if not matching:
        have = sorted({s.get("Version", "?") for s in stanzas})
        raise UserError(f"{SOURCE_PACKAGE} {version} is not in Debian {suite} (it has {', '.join(have) or 'none'})")
    return max(matching, key=functools.cmp_to_key(lambda x, y: _compare_versions(x["Version"], y["Version"])))


def _upstream(debian_version: str) -> str:
    version = debian_version.split(":", 1)[-1]
    version = version.rsplit("-", 1)[0] if "-" in version else version
    return re.split(r"[+~]", version, maxsplit=1)[0]


def _compare_versions(a: str, b: str) -> int:
    """Debian's own order of versions (``dpkg --compare-versions``; only asked when a suite has several)."""
    if a == b:
        return 0
    return 1 if subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0 else -1


def tarball_from(path_or_url: str, sha256: str, cache_dir: str | os.PathLike | None = None, *,
                 version: str | None = None, log: Log = print) -> SourceTarball:
    """A source tarball from a local path, a ``file://`` URL or an http(s) URL, its sha256 required and checked.
    A downloaded tarball is kept under ``<cache>/tarballs/<sha256>/``: a second call does not download it again.
    A content that does not match is a UserError naming both hashes (a download is then removed)."""
    sha256 = (sha256 or "").strip().lower()
    if not _SHA256.match(sha256):
        raise UserError(f"a source tarball needs its sha256 (64 hex digits), got {sha256 or 'none'!r}")
    parsed = urllib.parse.urlparse(str(path_or_url))
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else str(path_or_url))
        path = path.expanduser()
        if not path.is_file():
            raise UserError(f"source tarball {path_or_url} not found")
        verify_sha256(path, sha256, what=f"source tarball {path_or_url}", error=UserError)
        return SourceTarball(path=path.resolve(), sha256=sha256, version=version, origin=str(path_or_url))
    if parsed.scheme not in ("http", "https"):
        raise UserError(f"source tarball {path_or_url}: only local paths, file://, http:// and https:// URLs")
    name = Path(urllib.parse.unquote(parsed.path)).name or "source.tar"
    folder = source_cache(cache_dir) / "tarballs" / sha256
    path = folder / name
    if path.is_file() and _sha256(path) == sha256:
        return SourceTarball(path=path, sha256=sha256, version=version, origin=str(path_or_url))
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        if not (path.is_file() and _sha256(path) == sha256):
            log(f"downloading {path_or_url}")
            partial = folder / f".{name}.{os.getpid()}.partial"
            try:
                with urllib.request.urlopen(str(path_or_url), timeout=60) as response, open(partial, "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
                verify_sha256(partial, sha256, what=f"source tarball {path_or_url}", error=UserError)
                os.replace(partial, path)
            except OSError as exc:
                raise SourceError(f"downloading {path_or_url} failed: {exc}") from None
            finally:
                partial.unlink(missing_ok=True)
    return SourceTarball(path=path, sha256=sha256, version=version, origin=str(path_or_url))


def verify_sha256(path: Path, expected: str, *, what: str, error: type[Exception] = SourceError) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise error(f"{what}: sha256 is {actual}, expected {expected}")


def _sha256(path: Path) -> str:
    from requestflow.board.files import sha256_file

    return sha256_file(path)


# --- the spec --------------------------------------------------------------------------------------------------

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
    """Where an ArmCL source comes from: ``debian`` (a suite's source package), ``tarball`` (a path or URL with
    its sha256, shipped by the controller) or ``git`` (an official tag, cloned by a board with internet)."""

    kind: str = "debian"
    location: str | None = None  # tarball: path or URL; git: repository URL (default: ARM-software's)
    sha256: str | None = None  # tarball
    tag: str | None = None  # git (default: v<version>)
    suite: str = DEBIAN_SUITE  # debian

    def __post_init__(self) -> None:
        if self.kind not in ("debian", "tarball", "git"):
            raise UserError(f"ArmCL source kind {self.kind!r}: expected debian, tarball or git")
        if self.kind == "tarball":
            if not self.location:
                raise UserError("an ArmCL tarball source needs its path or URL")
            if not _SHA256.match(str(self.sha256 or "").lower()):
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
        return {k: v for k, v in {"kind": self.kind, "location": self.location, "sha256": self.sha256,
                                  "tag": self.tag, "suite": self.suite if self.kind == "debian" else None}.items()
                if v is not None}


@dataclass(frozen=True)
class ArmclSpec:
    """What to build: the ArmCL version, its source and scons options (validated here, before anything runs;
    values kept as scons reads them: ``"0"``/``"1"``, list options sorted and comma-joined). ``jobs`` overrides
    the board's default (by cores and memory)."""

    version: str = "24.11"
    source: ArmclSource | dict | str = "debian"
    options: dict = field(default_factory=dict)
    jobs: int | None = None

    def __post_init__(self) -> None:
        _plain_version(self.version)
        source = self.source
        if isinstance(source, str):
            source = ArmclSource(source)
        elif isinstance(source, dict):
            unknown = set(source) - {"kind", "location", "sha256", "tag", "suite"}
            if unknown:
                raise UserError(f"unknown ArmCL source field {sorted(unknown)[0]!r}")
            source = ArmclSource(**source)
        elif not isinstance(source, ArmclSource):
            raise UserError(f"ArmCL source: expected debian, tarball or git, got {type(source).__name__}")
        if source.kind == "git" and source.tag is None:
            source = ArmclSource.git(f"v{self.version}", source.location or OFFICIAL_GIT)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "options", validate_options(self.options))
        if self.jobs is not None and (not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1):
            raise UserError(f"ArmCL build jobs must be a positive integer, got {self.jobs!r}")

    def to_dict(self) -> dict:
        return {"version": self.version, "source": self.source.to_dict(), "options": dict(self.options),
                "jobs": self.jobs}

    @classmethod
    def from_value(cls, value: ArmclSpec | dict) -> ArmclSpec:
        if isinstance(value, ArmclSpec):
            return value
        if not isinstance(value, dict):
            raise UserError(f"an ArmCL spec is an ArmclSpec or a dict, got {type(value).__name__}")
        unknown = set(value) - {"version", "source", "options", "jobs"}
        if unknown:
            raise UserError(f"unknown ArmCL spec field {sorted(unknown)[0]!r}")
        return cls(**value)


def validate_options(options: dict) -> dict[str, str]:
    """Every option checked against the allowlist and its allowed values; canonical values, sorted by name.
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
    return dict(sorted(out.items()))


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


def _plain_version(version) -> str:
    if not isinstance(version, str) or not re.match(r"^\d+\.\d+(\.\d+)?$", version):
        raise UserError(f"ArmCL version {version!r}: expected a release number such as 24.11")
    return version


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
    options = {**DEFAULT_OPTIONS, "arch": DEFAULT_ARCH[machine], "neon": "1" if has_neon else "0", **spec.options}
    if options["arch"] not in ARCHES[machine]:
        raise UserError(f"ArmCL option arch={options['arch']} cannot be built on a {detected} board (boards build "
                        f"natively: {', '.join(ARCHES[machine])})")
    if options["neon"] == "1" and not has_neon:
        why = "ArmCL has no NEON code for x86" if machine == "x86_64" else "its CPU does not list NEON"
        raise UserError(f"ArmCL option neon=1 on a {detected} board: {why}")
    if options["multi_isa"] == "1" and "v8" not in options["arch"]:
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


# --- the operator ----------------------------------------------------------------------------------------------


class ArmclBuildOperator(BaseOperator):
    """Build ArmCL on one board for one spec (or reuse the board's cached build) and record its provenance.

    Put it in the board's pool, once per board and spec, before the points that need the library; ``points``
    (templated) are those points: when the build fails for good they are stored in ``point_failures`` with its
    reason. With ``build_name`` (a sweep's build task), only the points whose ``armcl_build`` is that name count,
    and the task skips itself when there are none. Then (unless ``program=False``) it compiles requestflow's
    MobileNet program against the build (once per build and program source), so the points only run it. Returns
    (XCom) the build's key and folder on the board, whether it was reused, its version, build time, library size
    and the program.
    ``cache_dir`` is the board's build cache (default: the board's ``armcl_cache`` setting, else
    ``<work_dir>/armcl/builds``); ``source_cache_dir`` the controller's source cache (default
    ``$REQUESTFLOW_CACHE/armcl``).
    """

    template_fields = ("points",)
    ui_color = "#fcf3cf"

    def __init__(self, *, board_conn_id: str, spec: ArmclSpec | dict, points: list[dict] | None = None,
                 build_name: str | None = None, program: bool = True, results_conn_id: str = CONN_ID,
                 cache_dir: str | None = None, source_cache_dir: str | None = None, build_timeout_s: float = 6 * 3600,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.board_conn_id = board_conn_id
        self.spec = ArmclSpec.from_value(spec)  # a bad option fails here, when the DAG is parsed
        self.points = points
        self.build_name = build_name
        self.program = program
        self.results_conn_id = results_conn_id
        self.cache_dir = cache_dir
        self.source_cache_dir = source_cache_dir
        self.build_timeout_s = build_timeout_s
        self._board = None
        self._job_dir: str | None = None

    def execute(self, context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from operators.results_hook import fail_points_on_last_attempt

        if self.build_name is not None:  # a sweep's build: only for the points that name it
            self.points = [p for p in self.points or [] if p.get("armcl_build") == self.build_name]
            if not self.points:
                raise AirflowSkipException(f"no point of this sweep on board {self.board_conn_id} needs the ArmCL "
                                           f"build {self.build_name}")
        try:
            try:
                return self._build()
            except UserError as exc:  # a spec the board cannot build, a checksum that does not match: final
                raise ArmclBuildFailed(f"board {self.board_conn_id}: {exc}") from exc
        except Exception as exc:
            fail_points_on_last_attempt(self, context, self.points, exc)
            raise
        finally:
            if self._board is not None:
                self._board.close()

    def _build(self) -> dict:
        from operators import board_jobs, deploy
        from operators.provision import board_cli
        from operators.results_hook import ResultsHook
        from requestflow.results.builds import record_build

        spec = self.spec
        board = self._board = board_for(self.board_conn_id)
        name = board.settings.name
        tarball = resolve_source(spec, self.source_cache_dir, log=self.log.info)
        python, work = deploy.runner_location(board)
        snapshot = board_cli(board, ["platform", "--root", board.settings.sysfs_root])
        probe = _board_json(board, [python, "-m", "requestflow.board.armcl", "probe", "--root",
                                    board.settings.sysfs_root])
        plan = options_for({**snapshot, "cpu_features": probe.get("cpu_features")}, spec)
        self.log.info("board %s: ArmCL %s from %s, %d job(s): %s", name, spec.version,
                      tarball.origin if tarball else f"{spec.source.location} {spec.source.tag}", plan.jobs,
                      " ".join(f"{k}={v}" for k, v in plan.options.items()))
        if tarball is not None:
            data = deploy.push_data(board, [(tarball.path, f"armcl-sources/{tarball.path.name}")], log=self.log.info)
            source_args = ["--source", f"{data}/armcl-sources/{tarball.path.name}", "--sha256", tarball.sha256,
                           "--origin", tarball.origin]
            source_id = tarball.source_id
        else:
            source_args = ["--git", spec.source.location, "--tag", spec.source.tag,
                           "--origin", f"git {spec.source.location} {spec.source.tag}"]
            source_id = f"git {spec.source.location} {spec.source.tag}"
        cache = self.cache_dir or board.settings.armcl_cache or f"{work}/armcl/builds"
        slug = hashlib.sha256(json.dumps([source_id, plan.options], sort_keys=True).encode()).hexdigest()[:16]
        self._job_dir = job_dir = f"{work}/armcl/jobs/{slug}"
        command = [python, "-m", "requestflow.board.armcl", "build", *source_args, "--version", spec.version,
                   "--options", json.dumps(plan.options, sort_keys=True), "--jobs", str(plan.jobs),
                   "--cache", cache, "--result", f"{job_dir}/result.json"]
        lines: list[str] = []

        def show(line: str) -> None:
            lines.append(line)
            del lines[:-50]
            self.log.info("[%s] %s", name, line)

        started = time.monotonic()
        board_jobs.start(board, job_dir, " ".join(shlex.quote(a) for a in command))
        code = board_jobs.wait(board, job_dir, show, poll_s=2.0, timeout_s=self.build_timeout_s)
        outcome = _read_result(board, f"{job_dir}/result.json")
        if code != 0:
            reason = (outcome or {}).get("reason") or (f"stopped (exit {code})" if code in (137, 143) else
                                                       lines[-1] if lines else f"exit {code}")
            what = "refused the build" if code == 2 else f"ArmCL {spec.version} build failed"
            raise ArmclBuildFailed(f"board {name}: {what}: {reason} (log: {job_dir}/stdout.log)")
        if not outcome or outcome.get("status") != "ok":
            raise RuntimeError(f"board {name}: the ArmCL build ended without its provenance ({job_dir}/result.json)")
        program = self._compile_program(board, python, outcome["path"]) if self.program else None
        with ResultsHook(self.results_conn_id).engine() as engine:
            build_id = record_build(engine, outcome, board=name)
        self.log.info("board %s: ArmCL %s build %s %s (%.1f s here; build time %.0f s, %.1f MB of libraries), "
                      "library_builds id %d", name, spec.version, outcome["key"][:16],
                      "reused from the board's cache" if outcome.get("reused") else "built",
                      time.monotonic() - started, outcome["build_seconds"], outcome["library_bytes"] / 1e6, build_id)
        return {"board": name, "key": outcome["key"], "reused": bool(outcome.get("reused")),
                "version": outcome.get("version"), "source_version": outcome.get("source_version"),
                "build_seconds": outcome["build_seconds"], "library_bytes": outcome["library_bytes"],
                "path": outcome.get("path"), "library_build_id": build_id, "program": program}

    def _compile_program(self, board, python: str, build_path: str) -> dict:
        """requestflow's MobileNet program (native/mobilenet) against the build, once per build and program source:
        the points only run it."""
        name = board.settings.name
        command = [python, "-m", "requestflow.board.armcl_program", "compile", "--build", build_path]
        result = board.run(" ".join(shlex.quote(a) for a in command), warn=True, timeout=900)
        if result.return_code != 0:
            reason = ((result.stderr or result.stdout).strip().splitlines() or [f"exit {result.return_code}"])[-1]
            raise ArmclBuildFailed(f"board {name}: the ArmCL MobileNet program did not compile against "
                                   f"{Path(build_path).name[:16]}: {reason.removeprefix('error: ')}")
        program = json.loads(result.stdout.strip().splitlines()[-1])
        self.log.info("board %s: MobileNet program %s (%s)", name, program["path"],
                      "reused" if program.get("reused") else f"compiled in {program.get('compile_s')} s")
        return {key: program.get(key) for key in ("path", "sha256", "compile_s", "reused")}

    def on_kill(self) -> None:
        if self._board is not None and self._job_dir is not None:
            from operators import board_jobs

            self.log.info("stopping the ArmCL build on board %s", self._board.settings.name)
            board_jobs.kill(self._board, self._job_dir)


def _board_json(board, command: list[str]) -> dict:
    result = board.run(" ".join(shlex.quote(a) for a in command), warn=True, timeout=120)
    if result.return_code != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"board {board.settings.name}: `{' '.join(command[1:4])}` exited {result.return_code}: "
                           f"{last[0]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _read_result(board, remote: str) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="rf-armcl-") as folder:
        local = Path(folder) / "result.json"
        try:
            board.get(remote, str(local))
            return json.loads(local.read_text())
        except (OSError, ValueError):
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
