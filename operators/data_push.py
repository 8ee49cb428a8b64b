"""Weights and images onto a board: ``push_data`` puts them in ``<work_dir>/data/`` (downloaded weights in
``<work_dir>/cache/``) through the board's content-addressed store (``operators.blob_store``), each distinct content
sent once, ever. ``operators.point_data.files_for_points`` says which files a sweep's points need."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from operators.blob_store import DeployError, Log, shell_path, sync
from requestflow.board.files import sha256_file
from requestflow.errors import UserError


def push_data(board, files: Iterable[tuple[Path, str]], log: Log = print,
              cache_files: Iterable[tuple[Path, str]] = ()) -> str:
    """Copy local files to ``<work_dir>/data/<relative path>`` on the board (and ``cache_files`` to
    ``<work_dir>/cache/<relative path>``, the runner's ``$REQUESTFLOW_CACHE``: downloaded weights); the board's data
    dir (absolute), for ``$REQUESTFLOW_DATA``.

    Each distinct content (sha256) crosses the link once, ever: the board's store says what it holds (one command,
    which also checks what it holds, so that a blob damaged on the board is found, removed and sent again); what is
    sent is checked with ``sha256sum`` on arrival and refused (removed, DeployError) if it differs. Data files are
    hard links to the blobs (copies where the file system cannot link).
    """
    chosen: dict[str, Path] = {}
    for root, pairs in (("data", files), ("cache", cache_files)):
        for local, relative in pairs:
            destination = f"{root}/{_relative(relative)}"
            local = Path(local)
            if not local.is_file():
                raise UserError(f"push_data: {local} is not a file")
            if destination in chosen and chosen[destination].resolve() != local.resolve():
                raise UserError(f"push_data: {destination} is given twice ({chosen[destination]} and {local})")
            chosen[destination] = local
    settings = board.settings
    probe = board.run(f"W={shell_path(settings.work_dir)}; mkdir -p \"$W/blobs/.incoming\" \"$W/data\" && "
                      "cd \"$W\" && pwd", warn=True)
    if probe.return_code != 0 or not probe.stdout.strip():
        raise DeployError(f"board {settings.name}: cannot use work dir {settings.work_dir}: "
                          f"{(probe.stderr or probe.stdout).strip()}")
    work = probe.stdout.strip().splitlines()[-1]
    hashes: dict[Path, str] = {}
    entries = []
    for destination, local in sorted(chosen.items()):
        if local not in hashes:
            hashes[local] = sha256_file(local)
        entries.append((local, hashes[local], destination))
    transfer = sync(board, work, entries, log)
    log(f"board {settings.name}: data: {transfer.describe()}")
    return f"{work}/data"


def _relative(relative: str) -> str:
    text = str(relative)
    parts = text.split("/")
    if (not text or text.startswith("/") or any(p in ("", ".", "..") for p in parts) or text != text.strip()
            or any(c in text for c in "\n\r\0")):
        raise UserError(f"push_data: {relative!r} is not a plain relative path under the data dir")
    return text
