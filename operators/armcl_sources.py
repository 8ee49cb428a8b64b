"""ArmCL sources on the controller (issue #6): Debian's source package ``arm-compute-library``
(``fetch_debian_source``: trixie has 24.11, fetched through a private apt configuration, ``PrivateApt``, the
system's apt state untouched) and a tarball given by path or URL with its sha256 (``tarball_from``), each checked
before it is shipped to a board. An official git tag needs nothing here: a board with internet clones it.

Controller-side cache (``$REQUESTFLOW_CACHE/armcl``, or ``source_cache_dir``)::

    debian/<suite>/apt/                               the private apt configuration: sources.list, lists, cache
    debian/<suite>/arm-compute-library_<version>/     the .orig.tar.xz and source.json (what was verified, how)
    tarballs/<sha256>/<file name>                     tarballs downloaded from a URL
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from operators.file_lock import file_lock
from requestflow.errors import UserError

Log = Callable[[str], None]

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "trixie"  # the suite with ArmCL 24.11 (bookworm has 20.08)
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCE_PACKAGE = "arm-compute-library"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class SourceError(RuntimeError):
    """Fetching or checking a source failed (network, apt, a checksum): may succeed on a retry once fixed."""


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
    plain_version(version)
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
        apt = PrivateApt(root / "apt", f"deb-src [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main")
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


class PrivateApt:
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


def _fetch_dsc(apt: PrivateApt, folder: Path, debian_version: str, checksums: dict, log: Log) -> str | None:
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
        if len(parts) == 3 and SHA256_HEX.match(parts[0]):
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
    if not SHA256_HEX.match(sha256):
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


def plain_version(version) -> str:
    if not isinstance(version, str) or not re.match(r"^\d+\.\d+(\.\d+)?$", version):
        raise UserError(f"ArmCL version {version!r}: expected a release number such as 24.11")
    return version
