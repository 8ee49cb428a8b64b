"""Files on a board: the cache folder, sha256 of files, atomic writes, the shared data folder."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

_CHUNK = 1 << 20


def cache_dir(*parts: str) -> Path:
    """``$REQUESTFLOW_CACHE`` or ``~/.cache/requestflow``, created on demand. On a board it is under its work dir."""
    root = os.environ.get("REQUESTFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "requestflow")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_json(value) -> str:
    """The one canonical JSON spelling used for hashes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file so that it appears whole or not at all (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def progress(iterable=None, *, total: int | None = None, description: str, enabled: bool = True, **options):
    """A tqdm progress bar on stderr, shown only on a terminal (``disable=None``) and never when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, disable=None if enabled else True, file=sys.stderr,
                **options)


def user_data_dir() -> Path:
    """requestflow's own data folder, for a machine without the shared one: ``$XDG_DATA_HOME/requestflow`` (else
    ``~/.local/share/requestflow``). ``requestflow dataset import`` puts ImageNet validation images there, laid out
    as in the shared folder (``imagenet/val/``, ``imagenet/val.txt``, ``imagenet/synset_words.txt``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base, "requestflow")


def shared_data_dir() -> Path | None:
    """The data folder (real weights, ImageNet images): ``$REQUESTFLOW_DATA``; else the first ``shared/data`` found
    beside the current folder or the source checkout, walking up; else requestflow's own data folder
    (``user_data_dir``) once something was imported into it. None when there is none."""
    env = os.environ.get("REQUESTFLOW_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if (candidate / "README.md").is_file():
                return candidate
    own = user_data_dir()
    return own if (own / "imagenet").is_dir() else None
