"""The version report (issue #17): for one board and two versions of a library, every configuration measured with
both, side by side -- what the seed did across ArmCL 17.12 ... 18.05 (and how it found a 17.12 accuracy bug).

A configuration is a point's identity without its library build (``requestflow.results.identity``): the same
model, backend, variant, weights, precision, images, mode, batch size, threads, affinity and preprocessing. For each
configuration stored with both versions (each side: the latest successful result of its point):

- performance: the ratio of median latencies (b / a) and the replay's significance test on the raw samples
  (``stats.compare_samples``: two-sided Mann-Whitney U, ``alpha``, a minimum effect): slower, faster or no
  significant difference;
- accuracy: top-1 of both and the delta, and the images whose top-1 changed between them: ``broken`` (right with
  a, wrong with b), ``fixed`` (the reverse), ``changed`` (wrong with both, another class).

Configurations stored with one version only are counted (``only_a``, ``only_b``), not shown. Every read is
read-only with bound parameters (``query.read_only``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from sqlalchemy.engine import Engine

from requestflow.board.catalogue import variant_label
from requestflow.errors import UserError
from requestflow.results.identity import sha256_of
from requestflow.results.query import read_only, render
from requestflow.results.stats import compare_samples

LATEST_SQL = """
SELECT DISTINCT ON (r.point_id) r.id AS result_id, p.point_id, p.identity, p.mode, p.model_id AS model, p.backend,
       p.variant, p.precision, p.threads, p.batch_size, lb.library, lb.version, f.median_s, a.top1, a.n AS images
FROM results r
JOIN points p ON p.id = r.point_id
JOIN boards b ON b.id = p.board_id
JOIN library_builds lb ON lb.id = p.library_build_id
LEFT JOIN performance f ON f.result_id = r.id
LEFT JOIN accuracy a ON a.result_id = r.id
WHERE r.status = 'ok' AND b.name = %(board)s AND lb.version = ANY(%(versions)s)
  AND (%(backend)s::text IS NULL OR p.backend = %(backend)s)
ORDER BY r.point_id, r.started_at DESC, r.id DESC
"""
SAMPLES_SQL = """
SELECT result_id, array_agg(seconds ORDER BY i) FROM samples WHERE result_id = ANY(%(ids)s) GROUP BY result_id
"""
# per pair (a result, b result): the images both classified, and those whose top-1 changed between them
PREDICTIONS_SQL = """
SELECT pairs.a, pairs.b, count(*) AS common,
       array_agg(pa.image ORDER BY pa.image) FILTER (WHERE pa.top5[1] = pa.label AND pb.top5[1] <> pb.label),
       array_agg(pa.image ORDER BY pa.image) FILTER (WHERE pa.top5[1] <> pa.label AND pb.top5[1] = pb.label),
       array_agg(pa.image ORDER BY pa.image) FILTER (WHERE pa.top5[1] <> pa.label AND pb.top5[1] <> pb.label
                                                     AND pa.top5[1] <> pb.top5[1])
FROM unnest(%(a)s::bigint[], %(b)s::bigint[]) AS pairs(a, b)
JOIN predictions pa ON pa.result_id = pairs.a
JOIN predictions pb ON pb.result_id = pairs.b AND pb.image = pa.image
GROUP BY pairs.a, pairs.b
"""
COLUMNS = ("model", "backend", "variant", "precision", "threads", "mode", "latency_a_ms", "latency_b_ms", "ratio",
           "p_value", "latency", "images", "top1_a", "top1_b", "top1_delta", "broken", "fixed", "changed")


@dataclass
class Row:
    """One configuration with both versions."""

    model: str
    backend: str
    variant: str
    precision: str
    threads: int
    mode: str
    point_a: str
    point_b: str
    result_a: int
    result_b: int
    latency_a_ms: float | None = None
    latency_b_ms: float | None = None
    ratio: float | None = None  # median b / median a
    p_value: float | None = None
    latency: str | None = None  # slower, faster, no significant difference
    images: int | None = None  # images both classified
    top1_a: float | None = None
    top1_b: float | None = None
    top1_delta: float | None = None  # b - a
    broken: list[str] = field(default_factory=list)  # right with a, wrong with b
    fixed: list[str] = field(default_factory=list)  # wrong with a, right with b
    changed: list[str] = field(default_factory=list)  # wrong with both, another class


@dataclass
class VersionReport:
    board: str
    a: str
    b: str
    rows: list[Row]
    only_a: int  # configurations stored with version a only
    only_b: int
    alpha: float
    min_effect: float

    def table(self) -> tuple[list[str], list[tuple]]:
        """(columns, rows) for ``query.render``: image lists as their counts."""
        out = []
        for row in self.rows:
            values = asdict(row)
            out.append(tuple(len(values[c]) if isinstance(values[c], list) else values[c] for c in COLUMNS))
        return list(COLUMNS), out

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            return json.dumps(asdict(self), indent=1)
        text = render(*self.table(), fmt)
        if fmt != "table":
            return text
        head = (f"board {self.board}: {len(self.rows)} configuration(s) with both {self.a} (a) and {self.b} (b); "
                f"{self.only_a} with {self.a} only, {self.only_b} with {self.b} only. latency: median b / a and a "
                f"two-sided Mann-Whitney U on the raw samples (alpha {self.alpha}, at least {self.min_effect:.0%}); "
                "broken: images right with a and wrong with b, fixed: the reverse, changed: wrong with both, "
                "another class")
        broken = [f"  {r.model} {r.backend} {r.variant} {r.precision}: {', '.join(r.broken[:10])}"
                  + (f" and {len(r.broken) - 10} more" if len(r.broken) > 10 else "") for r in self.rows if r.broken]
        return "\n".join([head, text] + (["images broken by b:", *broken] if broken else []))


def library_versions(engine: Engine) -> dict[str, list[str]]:
    """Board -> the library versions its successful results were measured with (what the page offers)."""
    _, found = read_only(engine, "SELECT DISTINCT bo.name, lb.version FROM results r JOIN points p ON p.id = "
                                 "r.point_id JOIN boards bo ON bo.id = p.board_id JOIN library_builds lb ON lb.id = "
                                 "p.library_build_id WHERE r.status = 'ok' AND lb.version IS NOT NULL ORDER BY 1, 2")
    out: dict[str, list[str]] = {}
    for board, version in found:
        out.setdefault(board, []).append(version)
    return out


def version_report(engine: Engine, board: str, a: str, b: str, backend: str | None = None, alpha: float = 0.01,
                   min_effect: float = 0.05) -> VersionReport:
    """Every configuration of ``board`` stored with library version ``a`` and with ``b`` (optionally only
    ``backend``'s), compared. Refuses a board or a version the store does not have, naming what it has."""
    if a == b:
        raise UserError(f"the two versions are the same ({a}): give two versions to compare")
    _, found = read_only(engine, "SELECT DISTINCT lb.version FROM results r JOIN points p ON p.id = r.point_id "
                                 "JOIN boards bo ON bo.id = p.board_id JOIN library_builds lb ON lb.id = "
                                 "p.library_build_id WHERE bo.name = %(board)s AND lb.version IS NOT NULL "
                                 "AND (%(backend)s::text IS NULL OR p.backend = %(backend)s) ORDER BY 1",
                         {"board": board, "backend": backend})
    have = [v for (v,) in found]
    for version in (a, b):
        if version not in have:
            raise UserError(f"board {board!r} has no result with library version {version!r}"
                            + (f" ({backend})" if backend else "")
                            + (f"; it has: {', '.join(have)}" if have else " (no result at all)"))
    columns, latest = read_only(engine, LATEST_SQL, {"board": board, "versions": [a, b], "backend": backend})
    sides: dict[str, dict[str, dict]] = {a: {}, b: {}}
    for values in latest:
        point = dict(zip(columns, values, strict=True))
        configuration = sha256_of({k: v for k, v in point["identity"].items() if k != "library_build"})
        sides[point["version"]].setdefault(configuration, point)  # a key twice (two builds): the first seen
    both = sorted(set(sides[a]) & set(sides[b]), key=lambda k: _order(sides[a][k]))
    rows = [_row(sides[a][k], sides[b][k]) for k in both]
    _performance(engine, rows, alpha, min_effect)
    _accuracy(engine, rows)
    return VersionReport(board, a, b, rows, len(set(sides[a]) - set(both)), len(set(sides[b]) - set(both)), alpha,
                         min_effect)


def _order(point: dict) -> tuple:
    return point["model"], point["backend"], json.dumps(point["variant"], sort_keys=True), point["precision"], \
        point["threads"], point["mode"]


def _row(pa: dict, pb: dict) -> Row:
    row = Row(model=pa["model"], backend=pa["backend"], variant=variant_label(pa["variant"]) or "",
              precision=pa["precision"], threads=pa["threads"], mode=pa["mode"], point_a=pa["point_id"],
              point_b=pb["point_id"], result_a=pa["result_id"], result_b=pb["result_id"])
    if pa["top1"] is not None and pb["top1"] is not None:
        row.top1_a, row.top1_b, row.top1_delta = pa["top1"], pb["top1"], pb["top1"] - pa["top1"]
    return row


def _performance(engine: Engine, rows: list[Row], alpha: float, min_effect: float) -> None:
    perf = [r for r in rows if r.mode == "performance"]
    if not perf:
        return
    _, found = read_only(engine, SAMPLES_SQL, {"ids": [i for r in perf for i in (r.result_a, r.result_b)]})
    samples = dict(found)
    for row in perf:
        old, new = samples.get(row.result_a), samples.get(row.result_b)
        if not old or not new:
            continue
        verdict = compare_samples(old, new, alpha, min_effect)
        row.latency_a_ms, row.latency_b_ms = verdict.median_old * 1e3, verdict.median_new * 1e3
        row.ratio, row.p_value, row.latency = verdict.ratio, verdict.p_value, verdict.verdict


def _accuracy(engine: Engine, rows: list[Row]) -> None:
    acc = {(r.result_a, r.result_b): r for r in rows if r.mode == "accuracy"}
    if not acc:
        return
    _, found = read_only(engine, PREDICTIONS_SQL, {"a": [a for a, _ in acc], "b": [b for _, b in acc]})
    for a, b, common, broken, fixed, changed in found:
        row = acc[a, b]
        row.images, row.broken, row.fixed, row.changed = common, broken or [], fixed or [], changed or []
