"""Export / import archives (``archive_export``, ``archive_import``): everything about selected points, carried from
one installation to another. This module holds the format both sides share.

An archive is a zip of JSON members, each listed with its sha256 in ``manifest.json``:

- ``manifest.json``: ``format`` (``requestflow-archive``), ``format_version``, ``requestflow_version``,
  ``created_at``, ``source`` (a fingerprint of the source database and its schema revision), ``filters``,
  ``counts`` and ``members`` (name -> ``{"sha256", "bytes"}``; every other member is listed there).
- ``documents/<document_sha256>.json``: each result's runner document exactly as the runner wrote it, rebuilt from
  ``results.document`` (the document minus its bulky arrays), ``samples`` and ``predictions``; its name is the
  ``document_sha256`` the loader gives it (board name + document), checked at export and again at import.
- ``results.json``: which board and sweep each document was loaded for, in the source's load order.
- ``boards.json``, ``snapshots.json``, ``builds.json``, ``models.json``, ``weights.json``, ``datasets.json``,
  ``sweeps.json``, ``failures.json``: the rows those results use (boards with their price, service life, peak power,
  read-only flag and info; platform snapshots; library builds with their provenance; sweeps with their info) and
  the ``point_failures`` of the exported sweeps. Row ids never travel: rows are matched by their natural keys.

Import checks the whole archive before it writes anything (zip, manifest, every member's sha256, no member missing
or unlisted or outside the archive, every document valid and named by its own hash), then writes in ONE transaction:
dimension rows first, then the documents through the one loader (``load_documents``: validated again, deduplicated
by document hash), then the point failures. Importing twice changes nothing. Decisions:

- A board that exists in the target with other figures (kind, price, price date, service life, peak power,
  read-only) is refused, naming the differences, unless ``update_boards``: the archive's figures then replace the
  target's. A figure the target does not have (NULL) is filled from the archive without asking. ``info`` keys the
  target lacks are added; a key both have with different values keeps the target's (a warning), or takes the
  archive's with ``update_boards``.
- Models, weights, datasets, platform snapshots and library builds already in the target keep the target's row, as
  the loader does (first record wins; their keys say the two are the same thing).
- Sweeps are matched by run id; a missing ``dag_id`` or ``info`` key is filled, a conflicting one keeps the
  target's (a warning).
- Results of read-only (reference) boards travel: the import is how reference data moves; the board is read-only
  before and after. A board read-only in the target and writable in the archive is a conflict like any other, and
  so is any ``info`` difference of a read-only board (its ``info`` names the source of its results).
- A filtered archive carries the selected points only: scoreboard columns computed from other points (scoreboard
  v2's tf reference top-1 of the same weights on any board) are computed in the target from what it holds.
- The checksums detect damage, not forgery: whoever can write an archive can write a consistent one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from requestflow.results.query import json_value

FORMAT = "requestflow-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("results", "boards", "snapshots", "builds", "models", "weights", "datasets", "sweeps", "failures")
DOCUMENT = re.compile(r"^documents/([0-9a-f]{64})\.json$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# selector -> SQL over the results being exported (results r, points p, boards b, models mo, datasets d, sweeps sw),
# compared as PostgreSQL's text form of the value, like the scoreboard's selectors (scoreboard_data.FILTERS)
RESULT_FILTERS = {"board": "b.name", "model": "p.model_id", "backend": "p.backend", "variant": "p.variant::text",
                  "width": "mo.width::text", "resolution": "mo.resolution::text", "precision": "p.precision",
                  "mode": "p.mode", "sweep": "sw.run_id", "images": "d.image_count::text"}
# the FROM clause those selectors are written against (export and rm select results through it)
RESULTS_FROM = """FROM results r
JOIN points p ON p.id = r.point_id
JOIN boards b ON b.id = p.board_id
JOIN models mo ON mo.id = p.model_id
JOIN datasets d ON d.id = p.dataset_id
LEFT JOIN sweeps sw ON sw.id = r.sweep_id"""
# the selectors a point failure can be judged on (what it records); the others need a result
FAILURE_FILTERS = {"board": "b.name", "model": "pf.point->>'model'", "backend": "pf.point->>'backend'",
                   "mode": "pf.point->>'mode'", "sweep": "sw.run_id"}
TIME_FILTERS = ("since", "until")
FILTERS = (*RESULT_FILTERS, *TIME_FILTERS)
LOAD_BATCH_BYTES = 256 * 2**20  # documents handed to one load_documents call, at most (JSON bytes)

# each table member: field -> accepted JSON types (None: null allowed)
ROW_FIELDS = {
    "results": {"document_sha256": (str,), "board": (str,), "sweep": (str, None)},
    "boards": {"name": (str,), "kind": (str,), "price_usd": (str, None), "price_date": (str, None),
               "service_life_years": (int, float), "peak_power_w": (int, float, None), "read_only": (bool,),
               "info": (dict,)},
    "snapshots": {"sha256": (str,), "board": (str,), "cpu_model": (str, None), "arch": (str, None),
                  "os": (str, None), "machine": (dict,), "created_at": (str,)},
    "builds": {"sha256": (str,), "backend": (str,), "library": (str, None), "version": (str, None), "info": (dict,)},
    "models": {"id": (str,), "width": (int, float), "resolution": (int,), "macs": (int,), "params": (int,)},
    "weights": {"sha256": (str,), "format": (str,), "random": (bool,), "release": (str, None),
                "source_precision": (str, None), "url": (str, None), "info": (dict,)},
    "datasets": {"sha256": (str,), "synthetic": (bool,), "image_count": (int, None), "path": (str, None),
                 "val_txt_sha256": (str, None)},
    "sweeps": {"run_id": (str,), "dag_id": (str, None), "created_at": (str,), "info": (dict,)},
    "failures": {"sweep": (str,), "board": (str,), "point": (dict,), "error_type": (str,), "message": (str,),
                 "attempts": (int,), "failed_at": (str,)},
}
BOARD_FIGURES = ("kind", "price_usd", "price_date", "service_life_years", "peak_power_w", "read_only")


@dataclass
class ExportReport:
    path: Path
    counts: dict[str, int]


@dataclass
class ImportReport:
    loaded: int = 0  # documents new to this database
    unchanged: int = 0  # documents it already held
    boards_added: list[str] = field(default_factory=list)
    boards_updated: list[str] = field(default_factory=list)
    sweeps_added: list[str] = field(default_factory=list)
    failures_added: int = 0
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        def names(values: list[str]) -> str:
            return f" ({', '.join(values)})" if values else ""

        return (f"{self.loaded} new result(s), {self.unchanged} already stored; {len(self.boards_added)} board(s) "
                f"added{names(self.boards_added)}, {len(self.boards_updated)} updated{names(self.boards_updated)}; "
                f"{len(self.sweeps_added)} sweep(s) added; {self.failures_added} point failure(s) added")


def plain(value):
    """JSON-friendly and exact: prices (Decimal) as text, dates and times as ISO text."""
    return json_value(value, exact=True)


def json_bytes(value, indent: int | None = None) -> bytes:
    separators = None if indent else (",", ":")
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators).encode()


def requestflow_version() -> str:
    from requestflow import __version__
    return __version__


