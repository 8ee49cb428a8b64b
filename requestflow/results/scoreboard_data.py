"""Filtered reads of the scoreboard for the plots and the scoreboard page: what can be selected, the selected rows,
and everything about one point. Every read goes through :func:`requestflow.results.query.read_only` (one statement,
READ ONLY transaction); user input only ever travels as bound parameters, and column names come from the fixed
tables below, never from a request.
"""

from __future__ import annotations

import bisect
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.plot import METRICS, Drawing, metric, scatter
from requestflow.results.plot_colours import COLOUR_BY, colour_by
from requestflow.results.query import LATENCY_STATS, json_value, read_only

# every column of the scoreboard the page shows, in the table's order
COLUMNS = ("board", "backend", "variant", "variant_label", "library", "library_version", "model", "width",
           "resolution", "macs", "model_size_bytes", "precision", "batch_size", "threads", "cpu_affinity",
           "latency_min_s", "latency_median_s", "latency_p90_s", "throughput_ips", "quality", "quality_reasons",
           "top1", "top5", "image_count", "image_set", "largest_image_set",
           "reference_top1", "accuracy_delta", "accuracy_check", "energy_est_j", "energy_measured_j", "energy_j",
           "energy_source", "cost_per_million_images_usd",
           "random_weights", "caveats", "weights_sha256", "sweep", "point_id", "performance_point_id",
           "accuracy_point_id", "performance_result_id", "accuracy_result_id")

# selector (URL parameter) -> scoreboard column; compared as PostgreSQL's text form of the value
FILTERS = {"board": "board", "backend": "backend", "variant": "variant", "width": "width",
           "resolution": "resolution", "precision": "precision", "sweep": "sweep", "images": "image_count",
           "library_version": "library_version"}
FILTER_LABELS = {"board": "board", "backend": "backend", "variant": "variant", "width": "width",
                 "resolution": "resolution", "precision": "precision", "sweep": "sweep",
                 "images": "dataset size (images)", "library_version": "library version"}
DEFAULT_X, DEFAULT_Y = "latency_median_s", "top1"
POINT_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_VALUES = 200  # values of one selector in a request


@dataclass
class Selection:
    """What is shown: the filters (selector -> accepted values; none = all), the axes, log scales, the latency
    statistic the rows are ranked by (and a latency axis shows), what colours the marks. The page keeps it in its
    URL (:meth:`query`) so that a view can be shared."""

    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    x: str = DEFAULT_X
    y: str = DEFAULT_Y
    log_x: bool = False
    log_y: bool = False
    latency_stat: str = "median"  # query.LATENCY_STATS
    colour: str = "backend"  # plot_colours.COLOUR_BY

    @classmethod
    def from_query(cls, params: Mapping[str, Iterable[str]]) -> Selection:
        """From URL parameters (each a list of values, as ``parse_qs`` or Starlette's ``getlist`` give them).
        Unknown parameters are ignored; a bad metric is a :class:`UserError`."""
        def values(key: str) -> list[str]:
            return [v for v in (params.get(key) or []) if v != ""]

        filters = {}
        for key in FILTERS:
            chosen = tuple(dict.fromkeys(values(key)))
            if len(chosen) > MAX_VALUES:
                raise UserError(f"too many values for {key} ({len(chosen)}; at most {MAX_VALUES})")
            if chosen:
                filters[key] = chosen
        x = metric((values("x") or [DEFAULT_X])[-1]).column
        y = metric((values("y") or [DEFAULT_Y])[-1]).column
        stat, x, y = latency_axes(x, y, (values("latency_stat") or [None])[-1])
        return cls(filters=filters, x=x, y=y,
                   log_x=(values("log_x") or ["0"])[-1] in ("1", "true", "on"),
                   log_y=(values("log_y") or ["0"])[-1] in ("1", "true", "on"), latency_stat=stat,
                   colour=colour_by((values("colour") or ["backend"])[-1]))

    def query(self, **changes) -> str:
        """The URL query of this selection (``changes`` replace fields), e.g. ``x=...&y=...&backend=tflite``."""
        s = Selection(**{**self.__dict__, **changes})
        pairs = [("x", s.x), ("y", s.y)] + [(k, v) for k in FILTERS for v in s.filters.get(k, ())]
        pairs += [("log_x", "1")] * s.log_x + [("log_y", "1")] * s.log_y
        pairs += [("latency_stat", s.latency_stat)] * (s.latency_stat != "median")
        pairs += [("colour", s.colour)] * (s.colour != "backend")
        return urlencode(pairs)

    def describe(self) -> str:
        chosen = "; ".join(f"{FILTER_LABELS[k]} {', '.join(v)}" for k, v in self.filters.items()) or "all points"
        return chosen if "images" in self.filters else f"{chosen}, each on its largest image set"

    def cli(self, out: str = "plot.svg") -> str:
        """The ``requestflow plot`` command line that writes this view's figure."""
        words = ["requestflow", "plot", "--x", self.x, "--y", self.y]
        for key, values in self.filters.items():
            words += [f"--{key.replace('_', '-')}", *values]
        words += ["--log-x"] * self.log_x + ["--log-y"] * self.log_y
        words += ["--colour", self.colour] * (self.colour != "backend") + ["--out", out]
        return shlex.join(words)

    def title(self) -> str:
        """The figure's title: the same on the page and from the CLI."""
        return f"{METRICS[self.y].label} vs {METRICS[self.x].label}: {self.describe()}"


def latency_axes(x: str, y: str, stat: str | None) -> tuple[str, str, str]:
    """(statistic, x, y): the page's latency statistic (``median`` or ``p90``, issue #19) and the axes it gives. An
    axis on the median or p90 latency shows the chosen statistic, unless both axes are latency statistics (a median
    against p90 plot). Not chosen: ``p90`` when an axis shows the p90 (and none the median), else ``median``."""
    latencies = set(LATENCY_STATS.values())
    if stat is None:
        stat = "p90" if LATENCY_STATS["p90"] in (x, y) and LATENCY_STATS["median"] not in (x, y) else "median"
    if stat not in LATENCY_STATS:
        raise UserError(f"unknown latency statistic {stat!r}; known: {', '.join(LATENCY_STATS)}")
    if not (x in latencies and y in latencies):
        x, y = (LATENCY_STATS[stat] if axis in latencies else axis for axis in (x, y))
    return stat, x, y


def draw(engine: Engine, selection: Selection, fmt: str, point_href=None) -> tuple[list[dict], Drawing]:
    """The selected rows, ranked by the selection's latency statistic (:func:`rank`), and their figure: what
    ``requestflow plot`` writes and the scoreboard page shows."""
    rows = rank(read_rows(engine, selection.filters, selection.latency_stat), selection.latency_stat)
    return rows, scatter(rows, selection.x, selection.y, fmt, title=selection.title(), log_x=selection.log_x,
                         log_y=selection.log_y, point_href=point_href, colour=selection.colour)


def rank(rows: list[dict], latency_stat: str = "median") -> list[dict]:
    """``rows`` with ``rank``: 1 for each board's fastest on ``latency_stat`` (median or p90), rows as fast sharing
    a rank (1, 2, 2, 4); None without that latency."""
    column = LATENCY_STATS[latency_stat]
    by_board: dict[str, list[float]] = {}
    for row in rows:
        if row.get(column) is not None:
            by_board.setdefault(row["board"], []).append(row[column])
    for values in by_board.values():
        values.sort()
    for row in rows:
        value = row.get(column)
        row["rank"] = None if value is None else 1 + bisect.bisect_left(by_board[row["board"]], value)
    return rows


def read_rows(engine: Engine, filters: Mapping[str, Iterable[str]] | None = None,
              latency_stat: str | None = None) -> list[dict]:
    """The scoreboard rows matching ``filters`` (selector -> accepted values), as dicts; by board, then (with
    ``latency_stat``: ``median``, ``p90``) fastest first on that statistic, rows without it last. Unless dataset sizes
    (``images``) are chosen, each configuration's row of its largest image set (``largest_image_set``): a quick
    20-image check does not stand beside, or replace, the same configuration's 500-image figure."""
    clauses, parameters = [], {}
    if not [v for v in (filters or {}).get("images") or () if str(v)]:
        clauses.append("largest_image_set")
    for key, chosen in (filters or {}).items():
        if key not in FILTERS:
            raise UserError(f"unknown selector {key!r}; known: {', '.join(FILTERS)}")
        chosen = [str(v) for v in chosen]
        if chosen:
            clauses.append(f"{FILTERS[key]}::text = ANY(%({key})s)")
            parameters[key] = chosen
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    ranked = f"{LATENCY_STATS[latency_stat]} NULLS LAST, " if latency_stat else ""
    columns, rows = read_only(engine, f"SELECT {', '.join(COLUMNS)} FROM scoreboard {where} "
                                      f"ORDER BY board, {ranked}model, backend, precision, threads, point_id",
                              parameters)
    return [{c: json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def variant_labels(engine: Engine) -> dict[str, str]:
    """What the page shows for each variant (its JSON text, the selector's value): the scoreboard's variant_label
    (``CL/NHWC/DEFAULT/NONE``, ``graph``, ``XLA``, ``XNNPACK``). Two variants with one label (tflite's pieces, say)
    are told apart by their JSON."""
    _, rows = read_only(engine, "SELECT DISTINCT variant, variant_label FROM scoreboard")
    count: dict[str, int] = {}
    for _, label in rows:
        count[label or ""] = count.get(label or "", 0) + 1
    return {variant: (label or variant) if count[label or ""] == 1 else f"{label} {variant}"
            for variant, label in rows}


def version_labels(engine: Engine) -> dict[str, str]:
    """What the page shows for each library version (the selector's value): the version and its libraries, e.g.
    ``24.11 (armcl)``, ``2.3.0 (ai-edge-litert, tensorflow)``."""
    _, rows = read_only(engine, "SELECT library_version, string_agg(DISTINCT library, ', ' ORDER BY library) "
                                "FROM scoreboard WHERE library_version IS NOT NULL GROUP BY library_version")
    return {version: f"{version} ({libraries})" if libraries else version for version, libraries in rows}


def options(engine: Engine) -> dict[str, list[str]]:
    """Every value each selector can take (what the scoreboard holds), sorted (numbers as numbers)."""
    union = " UNION ".join(f"SELECT '{key}' AS selector, {column}::text AS value FROM scoreboard "
                           f"WHERE {column} IS NOT NULL" for key, column in FILTERS.items())
    _, rows = read_only(engine, union)
    out: dict[str, list[str]] = {key: [] for key in FILTERS}
    for key, value in rows:
        out[key].append(value)
    for values in out.values():
        values.sort(key=_sort_key)
    return out


def _sort_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


RESULT_SQL = """
SELECT r.id AS result_id, r.status, r.started_at, r.finished_at, r.requestflow_version, r.schema_version,
       r.repetitions, r.warmup, r.loaded_at, r.document -> 'command' AS command,
       r.document -> 'context' AS context, r.document -> 'timings' AS timings,
       r.document -> 'environment' AS environment, r.document -> 'performance' AS performance,
       r.document -> 'accuracy' AS accuracy,
       p.point_id, p.mode, p.identity,
       ps.cpu_model, ps.arch, ps.os, ps.machine,
       sw.run_id AS sweep, sw.dag_id, sw.created_at AS sweep_created_at,
       d.synthetic AS dataset_synthetic, d.image_count AS dataset_images, d.sha256 AS dataset_sha256,
       d.path AS dataset_path,
       w.format AS weights_format, w.release AS weights_release, w.url AS weights_url,
       w.source_precision AS weights_source_precision, w.random AS weights_random,
       lb.library, lb.version AS library_version, lb.sha256 AS library_build_sha256, lb.info AS library_build
FROM results r
JOIN points p ON p.id = r.point_id
JOIN platform_snapshots ps ON ps.id = r.snapshot_id
JOIN datasets d ON d.id = p.dataset_id
JOIN weights w ON w.sha256 = p.weights_sha256
JOIN library_builds lb ON lb.id = p.library_build_id
LEFT JOIN sweeps sw ON sw.id = r.sweep_id
WHERE r.id = ANY(%(ids)s)
"""


def read_point(engine: Engine, point_id: str, images: Iterable[str] = ()) -> dict | None:
    """One scoreboard row with its provenance: ``row``, ``board`` (its figures), ``results`` (the performance and
    accuracy results behind it: document fields, platform, sweep, dataset, weights, library build, ``command`` as a
    shell line), ``samples`` (raw seconds of the performance result). None when no such point. A point measured on
    several image sets: the row of the first of ``images`` (dataset sizes) it has, else of its largest (the page's
    link from a row of a view with several sizes ticked puts the row's own first)."""
    if not POINT_ID.match(point_id or ""):
        return None
    columns, rows = read_only(engine, f"SELECT {', '.join(COLUMNS)} FROM scoreboard WHERE point_id = %(p)s "
                                      "ORDER BY array_position(%(images)s::text[], image_count::text) NULLS LAST, "
                                      "largest_image_set DESC",
                              {"p": point_id, "images": [str(i) for i in images]})
    if not rows:
        return None
    row = {c: json_value(v) for c, v in zip(columns, rows[0], strict=True)}
    columns, boards = read_only(engine, "SELECT name, kind, price_usd, price_date, service_life_years, peak_power_w, "
                                        "read_only FROM boards WHERE name = %(b)s", {"b": row["board"]})
    board = {c: json_value(v) for c, v in zip(columns, boards[0], strict=True)} if boards else {}
    ids = [i for i in (row["performance_result_id"], row["accuracy_result_id"]) if i is not None]
    columns, found = read_only(engine, RESULT_SQL, {"ids": ids})
    results = {}
    for values in found:
        result = {c: json_value(v) for c, v in zip(columns, values, strict=True)}
        command = result.get("command")
        result["command_line"] = shlex.join(str(a) for a in command) if isinstance(command, list) and command else None
        results[result["mode"]] = result
    samples = []
    if row["performance_result_id"] is not None:
        _, sample_rows = read_only(engine, "SELECT seconds FROM samples WHERE result_id = %(r)s ORDER BY i",
                                   {"r": row["performance_result_id"]})
        samples = [s for (s,) in sample_rows]
    return {"row": row, "board": board, "results": results, "samples": samples}


def pretty_json(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def metric_choices() -> list[tuple[str, str]]:
    """(column, label) of every metric an axis can show."""
    return [(m.column, f"{m.label} ({m.unit})") for m in METRICS.values()]


def colour_choices() -> list[tuple[str, str]]:
    """(value, label) of what can colour the marks."""
    return list(COLOUR_BY.items())
