"""What a board's work dir no longer needs, removed: old runners, finished job folders, blobs nothing links to.

An edge board has a small disk (a HiKey960's 32 GB eMMC), and every deploy of a changed runner adds a venv of
~300 MB, every point a job folder, every new weights file a blob. Provisioning (``ProvisionBoardOperator``) calls
``collect_garbage`` after deploying, inside the board's pool, so that no point of that board runs meanwhile;
``requestflow board-gc NAME`` does the same by hand (``--dry-run`` lists what would go).

What goes (``W`` = the board's work dir; layout in ``operators.deploy``):
- ``W/runner/<digest>/``: every runner but ``current``, those of the runtime specs (``runtime-<digest>`` links,
  ``operators.runtime_spec``) and the ``keep_runners - 1`` most recently deployed others (a rollback target);
  a deploy that never finished (no ``.deployed``) once it is a day old.
- ``W/runs/*``, ``W/replays/*``, ``W/armcl/jobs/*``: job folders whose job ended (``exit_code``) more than
  ``keep_days`` ago. Their documents are in the results store; a running job has no ``exit_code`` and stays.
- ``W/blobs/<sha256>``: blobs with a single link (no runner wheelhouse, no data file links them) that are more
  than an hour old; a push in progress keeps its transfers in ``blobs/.incoming``. A blob removed just as a push
  outside the pool wanted it makes that push fail (its link fails) and its retry send it again.
Never touched: ``W/data`` (what the points read), ``W/cache`` (the runner's converted weights), ArmCL builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("runner", "job", "blob")


@dataclass
class Garbage:
    board: str
    dry_run: bool
    removed: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def kib(self, kind: str | None = None) -> int:
        kinds = (kind,) if kind else KINDS
        return sum(size for k in kinds for _, size in self.removed[k])

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        parts = [f"{len(self.removed[k])} {k} folder(s)" if k != "blob" else f"{len(self.removed[k])} blob(s)"
                 for k in KINDS]
        return f"board {self.board}: {verb} {', '.join(parts)}: {_size(self.kib())}"


def _size(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB" if kib >= 1024 else f"{kib} KiB"


def script(work_dir: str, keep_runners: int, keep_days: float, dry_run: bool) -> str:
    """The board-side POSIX sh: one line ``<kind> <KiB> <path>`` per thing removed (or, dry, to remove)."""
    from operators.blob_store import shell_path

    if keep_runners < 1:
        raise ValueError(f"keep_runners must be at least 1 (the current runner), got {keep_runners}")
    if keep_days < 0:
        raise ValueError(f"keep_days must be >= 0, got {keep_days}")
    minutes = int(keep_days * 1440)
    remove = ":" if dry_run else 'rm -rf -- "$2"'
    return "\n".join([
        f"cd {shell_path(work_dir)} 2>/dev/null || exit 0",
        f'gone() {{ kib=$(du -sk -- "$2" 2>/dev/null | cut -f1); echo "$1 ${{kib:-0}} $2"; {remove}; }}',
        # runners: newest deploy first; current and the keep_runners - 1 newest others stay
        # (and every runner a link names: current, each runtime spec's runtime-<digest>)
        "current=$(readlink runner/current 2>/dev/null); kept=1",
        "linked=' '; for l in runner/*; do [ -L \"$l\" ] && linked=\"$linked$(readlink \"$l\") \"; done",
        "for mark in $(ls -1t runner/*/.deployed 2>/dev/null); do",
        '  d=${mark%/.deployed}; { [ -L "$d" ] || [ "${d#runner/}" = "$current" ]; } && continue',
        '  case "$linked" in *" ${d#runner/} "*) continue;; esac',
        f'  if [ $kept -lt {keep_runners} ]; then kept=$((kept+1)); else gone runner "$d"; fi',
        "done",
        "for d in runner/*/; do d=${d%/}",
        '  [ -d "$d" ] && [ ! -L "$d" ] && [ ! -f "$d/.deployed" ] && [ "${d#runner/}" != "$current" ] || continue',
        '  [ -n "$(find "$d" -maxdepth 0 -mmin +1440)" ] && gone runner "$d"',
        "done",
        # job folders that ended more than keep_days ago
        "for d in runs/* replays/* armcl/jobs/*; do",
        f'  [ -f "$d/exit_code" ] && [ -n "$(find "$d/exit_code" -mmin +{minutes})" ] && gone job "$d"',
        "done",
        # blobs nothing links to any more
        "[ -d blobs ] && find blobs -maxdepth 1 -type f -links 1 -mmin +60 |",
        '  while read -r b; do gone blob "$b"; done',
        "exit 0",
    ])


def collect_garbage(board, keep_runners: int = 2, keep_days: float = 30.0, dry_run: bool = False,
                    log: Callable[[str], None] = print) -> Garbage:
    """Remove (or, ``dry_run``, list) what ``board``'s work dir no longer needs; what went, with sizes."""
    name = board.settings.name
    result = board.run(script(board.settings.work_dir, keep_runners, keep_days, dry_run), warn=True)
    if result.return_code != 0:
        raise RuntimeError(f"board {name}: cleaning the work dir failed ({result.return_code}): "
                           f"{result.stderr.strip()[-300:]}")
    garbage = Garbage(name, dry_run)
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        kib, _, path = rest.partition(" ")
        if kind in KINDS and kib.isdigit() and path:
            garbage.removed[kind].append((path, int(kib)))
    log(garbage.summary())
    for path, kib in garbage.removed["runner"]:
        log(f"  {path} ({_size(kib)})")
    return garbage
