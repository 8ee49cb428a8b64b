"""Downloads of official weights: cached, verified by sha256, recorded in a lock file on first use.

A URL's sha256 is pinned in the committed lock file ``requestflow/board/weights.lock.json`` where known. A URL
that is not pinned there is downloaded once, its sha256 recorded (trust on first use) in the lock file that can
be written — the committed one in a source checkout, else ``<cache>/weights.lock.json`` — and verified on every
later use. A file whose sha256 differs from the lock is refused and not kept.

A lab without internet access, or with its own copies, sets ``$REQUESTFLOW_WEIGHTS_MIRROR`` to a base URL (or a
folder) holding the official files under their own names: each file is then fetched from
``<mirror>/<file name>``, while the cache, the lock and every result keep the official URL (the mirror only
changes where the bytes come from, and the lock still verifies them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from requestflow.board.files import atomic_write_bytes, atomic_write_text, cache_dir, sha256_file
from requestflow.board.files import progress as show_progress
from requestflow.errors import UserError

PACKAGE_LOCK = Path(__file__).with_name("weights.lock.json")
LOCK_VERSION = 1
_TIMEOUT_S = 60


class DownloadError(Exception):
    """The file could not be fetched (offline, HTTP error): callers may fall back to something else."""


def lock_path() -> Path:
    """Where first downloads are recorded: ``$REQUESTFLOW_WEIGHTS_LOCK``, the committed lock in a writable
    source checkout, else the cache's."""
    env = os.environ.get("REQUESTFLOW_WEIGHTS_LOCK")
    if env:
        return Path(env)
    if os.access(PACKAGE_LOCK, os.W_OK) and (PACKAGE_LOCK.parents[2] / "pyproject.toml").is_file():
        return PACKAGE_LOCK
    return cache_dir() / "weights.lock.json"


def read_lock(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
        if document.get("lock_version") != LOCK_VERSION:
            raise ValueError(f"lock_version {document.get('lock_version')!r}, expected {LOCK_VERSION}")
        return {url: entry["sha256"] for url, entry in document["files"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable weights lock file ({exc})") from None


def pinned_sha256(url: str) -> str | None:
    """The sha256 recorded for ``url`` in the committed lock, else in the writable one."""
    for path in dict.fromkeys((PACKAGE_LOCK, lock_path())):
        sha = read_lock(path).get(url)
        if sha:
            return sha
    return None


def record_sha256(url: str, sha256: str) -> Path:
    path = lock_path()
    document = {"lock_version": LOCK_VERSION,
                "comment": "sha256 of official weight files, recorded on first download and verified ever after",
                "files": {}}
    if path.is_file():
        document = json.loads(path.read_text())
    document["files"][url] = {"sha256": sha256}
    document["files"] = dict(sorted(document["files"].items()))
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return path


def cached_download_path(url: str) -> Path:
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    return cache_dir("downloads", hashlib.sha256(url.encode()).hexdigest()[:16]) / name


def source_url(url: str) -> str:
    """Where ``url``'s bytes are fetched from: the official URL, or its file name under
    ``$REQUESTFLOW_WEIGHTS_MIRROR`` (a URL or a folder)."""
    mirror = os.environ.get("REQUESTFLOW_WEIGHTS_MIRROR", "").strip()
    if not mirror:
        return url
    if "://" not in mirror:
        mirror = Path(mirror).resolve().as_uri()
    return f"{mirror.rstrip('/')}/{url.rstrip('/').rsplit('/', 1)[-1]}"


def fetch(url: str, sha256: str | None = None, progress: bool = True) -> Path:
    """The local path of ``url``'s file, downloading it once. Verified against ``sha256`` or the lock."""
    expected = sha256 or pinned_sha256(url)
    target = cached_download_path(url)
    if target.is_file():
        actual = sha256_file(target)
        if expected is None or actual == expected:
            if expected is None:
                record_sha256(url, actual)
            return target
        target.unlink()  # corrupted or replaced: fetch again, and verify again
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        digest = hashlib.sha256()
        source = source_url(url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = show_progress(total=total, description=f"download {target.name}", enabled=progress, unit="B",
                                unit_scale=True)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            bar.close()
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise UserError(f"sha256 mismatch for {url}: got {actual}, expected {expected}; the file was not kept")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        where = url if source_url(url) == url else f"{url} (from the mirror {source_url(url)})"
        raise DownloadError(f"cannot download {where}: {getattr(exc, 'reason', exc)}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    if expected is None:
        where = record_sha256(url, actual)
        print(f"requestflow: recorded sha256 {actual} of {url} in {where}", file=sys.stderr)
    return target


def extract_member(archive: Path, pattern: str) -> list[Path]:
    """Extract the members of a .tar.gz / .tgz whose base name matches ``pattern`` (fnmatch), once, safely."""
    import fnmatch

    out_dir = archive.parent / "extracted"
    marker = out_dir / f".done-{hashlib.sha256(pattern.encode()).hexdigest()[:12]}"
    if marker.is_file():
        return [out_dir / line for line in marker.read_text().splitlines()]
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(Path(m.name).name, pattern)]
            if not members:
                raise UserError(f"{archive}: no member matching {pattern!r}")
            unsafe = [m.name for m in members if m.name.startswith("/") or ".." in Path(m.name).parts]
            if unsafe:
                raise UserError(f"{archive}: refusing member {unsafe[0]!r}, whose path leaves the archive's folder")
            out_dir.mkdir(exist_ok=True)
            names = []
            for member in members:  # only the base name is used: no member can write outside out_dir
                name = Path(member.name).name
                atomic_write_bytes(out_dir / name, tar.extractfile(member).read())
                names.append(name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{archive}: cannot extract ({exc})") from None
    atomic_write_text(marker, "\n".join(names) + "\n")
    return [out_dir / name for name in names]

