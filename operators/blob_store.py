"""The board's content-addressed store: every file sent to a board (wheels, weights, images) is kept once under
``<work_dir>/blobs/<sha256>``, and the places that need it are hard links to it (copies where the file system cannot
link). ``sync`` makes a set of board paths hold given contents, sending only what the board lacks, checking every
transfer's sha256 on arrival (``sha256sum``) and replacing a blob damaged on the board. Used by the runner deploy
(``operators.deploy``) and the data push (``operators.data_push``); ``operators.board_gc`` removes unlinked blobs.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SHA256 = re.compile(r"^[0-9a-f]{64}$")

Log = Callable[[str], None]


class DeployError(RuntimeError):
    """Deploying to a board failed (a transfer damaged, pip failed): may succeed on a retry once fixed."""


@dataclass
class Transfer:
    """What a sync did: files placed, distinct contents, contents sent (bytes), damaged blobs replaced."""

    files: int
    blobs: int
    sent: int = 0
    sent_bytes: int = 0
    repaired: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        text = (f"{self.files} file(s), {self.blobs} distinct; sent {self.sent} ({self.sent_bytes / 1e6:.1f} MB), "
                f"{self.blobs - self.sent} already there")
        if self.repaired:
            text += f", {self.repaired} damaged on the board and sent again"
        return text + f" ({self.seconds:.1f} s)"


def sync(board, work: str, entries: list[tuple[Path, str, str]], log: Log) -> Transfer:
    """Make ``<work>/<dest>`` hold each ``local``'s content (sha256 given) through ``<work>/blobs``.

    Round trips: the manifest (one put), the listing (one command: which blobs exist, with their sha256 recomputed),
    one put per missing blob, the commit (one command: sha256sum of what arrived, moved into the store or removed,
    then every destination linked)."""
    started = time.monotonic()
    name = board.settings.name
    token = uuid.uuid4().hex[:12]
    incoming = f"blobs/.incoming/{token}"
    blobs: dict[str, Path] = {}
    for local, sha, _dest in entries:
        if not SHA256.match(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        blobs.setdefault(sha, local)
    manifest = "".join(f"{sha} {dest}\n" for _local, sha, dest in sorted(entries, key=lambda e: e[2]))
    transfer = Transfer(files=len(entries), blobs=len(blobs))
    quoted_work = shlex.quote(work)
    with _local_text(manifest) as local_manifest:
        _put(board, str(local_manifest), f"{work}/{incoming}.manifest")
    # the listing: sha256sum of each blob the manifest names that the store has (a damaged one is reported)
    listing = board.run(
        f"cd {quoted_work}/blobs && cut -d ' ' -f 1 .incoming/{token}.manifest | sort -u | "
        "while read -r h; do [ -f \"$h\" ] && echo \"$h\"; done | xargs -r sha256sum --", warn=True)
    if listing.return_code != 0:
        raise DeployError(f"board {name}: listing its blob store failed: {(listing.stderr or '').strip()}")
    have = set()
    for line in listing.stdout.splitlines():
        actual, _, blob = line.partition("  ")
        if blob in blobs and actual == blob:
            have.add(blob)
        elif blob in blobs:
            transfer.repaired += 1
            log(f"board {name}: blob {blob} is damaged on the board (its sha256 is {actual}): sending it again")
    missing = [sha for sha in blobs if sha not in have]
    for index, sha in enumerate(missing, 1):
        size = blobs[sha].stat().st_size
        if size > 20_000_000:
            log(f"board {name}: sending {blobs[sha].name} ({size / 1e6:.0f} MB, {index}/{len(missing)})")
        _put(board, str(blobs[sha]), f"{work}/{incoming}.{sha}")
        transfer.sent += 1
        transfer.sent_bytes += size
    # the commit: what arrived is checked and moved into the store (a damaged transfer removed and named), then
    # every destination becomes a hard link to its blob (a copy where linking fails); destinations already linked
    # to the right blob are left alone
    commit = (
        f"cd {quoted_work}/blobs && bad=$(find .incoming -name '{token}.*' ! -name '{token}.manifest' "
        f"-exec sha256sum {{}} + | while read -r actual file; do sha=${{file#.incoming/{token}.}}; "
        "if [ \"$actual\" = \"$sha\" ]; then mv -f \"$file\" \"$sha\"; else rm -f \"$file\"; "
        "echo \"BAD $sha $actual\"; fi; done) || exit 1; "
        f"if [ -n \"$bad\" ]; then rm -f .incoming/{token}.manifest; echo \"$bad\"; exit 3; fi; "
        f"cd {quoted_work} && prev= && while read -r sha dest; do dir=${{dest%/*}}; "
        "if [ \"$dir\" != \"$prev\" ]; then mkdir -p \"$dir\" || exit 1; prev=$dir; fi; "
        "[ \"$dest\" -ef \"blobs/$sha\" ] && continue; rm -f \"$dest\" && "
        "{ ln \"blobs/$sha\" \"$dest\" 2>/dev/null || cp \"blobs/$sha\" \"$dest\"; } || exit 1; "
        f"done < blobs/.incoming/{token}.manifest && rm -f blobs/.incoming/{token}.manifest")
    result = board.run(commit, warn=True)
    if result.return_code == 3:
        damaged = [line.split() for line in result.stdout.splitlines() if line.startswith("BAD ")]
        detail = "; ".join(f"{blobs[sha].name if sha in blobs else sha} (sha256 {sha}, arrived as {actual})"
                           for _bad, sha, actual in damaged)
        raise DeployError(f"board {name}: {len(damaged)} file(s) arrived damaged and were removed: {detail}")
    if result.return_code != 0:
        raise DeployError(f"board {name}: placing files in {work} failed: "
                          f"{(result.stderr or result.stdout).strip()}")
    transfer.seconds = time.monotonic() - started
    return transfer


def _put(board, local: str, remote: str) -> None:
    """``board.put``, failing with where and why: SFTP reports most write errors (a read-only or full file system)
    as a bare "Failure", so the board's shell is asked what writing there says."""
    try:
        board.put(local, remote)
    except OSError as exc:
        probe = board.run(f": > {shlex.quote(remote)} && rm -f {shlex.quote(remote)}", warn=True)
        why = (probe.stderr or "").strip().splitlines()[-1:] if probe.return_code != 0 else []
        raise DeployError(f"board {board.settings.name}: cannot write {remote}: {why[0] if why else exc}") from exc


@contextlib.contextmanager
def _local_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rf-deploy-") as folder:
        path = Path(folder) / "manifest"
        path.write_text(text)
        yield path


def shell_path(path: str) -> str:
    """A board path for the shell: quoted, with a leading ``~`` left to the board's shell to expand."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)
