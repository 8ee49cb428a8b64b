"""Part 4 of ``bench_store.py``: what storing a point costs as the store grows (issue #20).

Two stores on the same server, side by side: an empty one, and one filled by ``bench_store.populate`` (bulk SQL)
to each size in turn (10,000 to 1,000,000 results; 50,000 configurations from 100,000 results on, each point
with a history of older nightly results above that). Into both, the same two nights of a 100-configuration
sweep (10 boards x 10 models, a performance and an accuracy point each: 200 points a night, the second night new
results of the first night's points) are loaded one document per ``load_documents`` call, as a sweep's tasks
store them, alternating between the stores document by document (the order flipped each time) so that the
machine's load falls on both alike. The documents use the weights and image set of the filled store's points, so
that its tf accuracy points are candidates for their reference (what a real store's would be).

At each size: the 200 loads' total into either store and their ratio (goal at the largest size: at most 1.2), the
scoreboard and Pareto queries, and the filled store's size on disk.
"""

from __future__ import annotations

import copy
import datetime as dt
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

RATIO_GOAL = 1.2
NIGHT_BOARDS = 10
NIGHT_MODELS = 10
# (configurations, results per point): about 2 x configurations x history results, plus 12% superseded and failed
SIZES = ((5_000, 1), (50_000, 1), (50_000, 3))  # and (50_000, --history): 1,000,000 results at 10
QUICK_SIZES = ((5_000, 1), (50_000, 1))
GROWTH_QUERIES = ("count(*) scoreboard", "pareto_frontier of board-3", "count(*) pareto_frontier")
TABLES = ("boards", "platform_snapshots", "library_builds", "models", "weights", "datasets", "sweeps", "points",
          "results", "performance", "samples", "accuracy", "predictions", "errors")


@dataclass
class Size:
    configurations: int
    history: int
    results: int = 0
    points: int = 0
    rebuild_s: float = 0.0
    night_s: dict[str, tuple[float, float]] | None = None  # night -> (empty store, filled store) seconds
    per_load_s: dict[str, tuple[float, float]] | None = None  # night -> medians of one load
    queries_s: dict[str, float] | None = None
    bytes_on_disk: int = 0
    samples_bytes: int = 0  # of the nights' performance results, in the empty store
    predictions_bytes: int = 0


def night(perf: dict, acc: dict, index: int) -> list[tuple[str, str, dict]]:
    """(board, source, document) of night ``index``: 100 configurations, a performance and an accuracy document
    each, started ``index`` days after the templates."""
    from requestflow.board.catalogue import CONFIGS
    from requestflow.board.files import sha256_text

    out = []
    for i in range(NIGHT_BOARDS * NIGHT_MODELS):
        board, model = f"night-{i % NIGHT_BOARDS}", CONFIGS[i // NIGHT_BOARDS % len(CONFIGS)]
        for template in (perf, acc):
            document = copy.deepcopy(template)
            context = document["context"]
            context["model"].update(id=model.id, width=model.width, resolution=model.resolution, macs=model.macs,
                                    params=model.params)
            # the filled store's weights of this model and precision (bench_store's POPULATE)
            context["weights"].update(
                sha256=sha256_text(f"weights:{model.id}:{context['precision']}:false"), random=False)
            for key in ("started_at", "finished_at"):
                document[key] = (dt.datetime.fromisoformat(document[key]) + dt.timedelta(days=index)).isoformat()
            out.append((board, f"{board} {model.id} {context['mode']} night {index}", document))
    return out


def empty(url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        connection.exec_driver_sql("SELECT refresh_scoreboard()")
    engine.dispose()


def side_by_side(empty_url: str, filled_url: str, documents: list[tuple[str, str, dict]]
                 ) -> tuple[list[float], list[float]]:
    """Each document loaded into both stores, by turns; the seconds of every load, per store."""
    from sqlalchemy import create_engine

    from requestflow.results.load import load_documents

    engines = [create_engine(empty_url), create_engine(filled_url)]
    times: list[list[float]] = [[], []]
    try:
        for engine in engines:  # connections made, and the first load's imports done, before the timings
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        for i, (board, source, document) in enumerate(documents):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                report = load_documents(engines[side], [(source, document)], board=board, sweep=f"night {board}")
                times[side].append(time.perf_counter() - start)
                if len(report.loaded) != 1:
                    raise RuntimeError(f"{source} was not loaded as a new result: {report}")
    finally:
        for engine in engines:
            engine.dispose()
    return times[0], times[1]


def disk(url: str) -> tuple[int, int, int]:
    """The database's bytes; those of samples and predictions."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.connect() as connection:
        row = connection.exec_driver_sql("SELECT pg_database_size(current_database()), "
                                         "pg_total_relation_size('samples'), "
                                         "pg_total_relation_size('predictions')").one()
    engine.dispose()
    return tuple(row)


def bench_growth(empty_url: str, filled_url: str, template: dict, perf: dict, sizes: tuple[tuple[int, int], ...],
                 populate: Callable, time_query: Callable, queries: dict[str, str]) -> list[Size]:
    """Every size in turn (bench_store's ``populate`` and ``time_query`` given): what it measured."""
    from sqlalchemy import create_engine

    nights = {"night 1 (new points)": night(perf, template, 0), "night 2 (new results)": night(perf, template, 1)}
    out = []
    for configurations, history in sizes:
        size = Size(configurations, history)
        print(f"\n  size: {configurations:,} configurations, {history} result(s) per point", flush=True)
        counts, size.rebuild_s = populate(filled_url, template, 2 * configurations, history)
        size.results, size.points = counts["results"], counts["points"]
        empty(empty_url)
        size.night_s, size.per_load_s = {}, {}
        for name, documents in nights.items():
            into_empty, into_filled = side_by_side(empty_url, filled_url, documents)
            size.night_s[name] = (sum(into_empty), sum(into_filled))
            size.per_load_s[name] = (statistics.median(into_empty), statistics.median(into_filled))
            print(f"  {name}: {len(documents)} loads, empty store {sum(into_empty):.2f} s, filled store "
                  f"({size.results:,} results) {sum(into_filled):.2f} s: x{sum(into_filled) / sum(into_empty):.3f}",
                  flush=True)
        engine = create_engine(filled_url)
        try:
            size.queries_s = {q: time_query(engine, queries[q])[0] for q in GROWTH_QUERIES}
        finally:
            engine.dispose()
        print("  " + ", ".join(f"{q} {s * 1e3:.1f} ms" for q, s in size.queries_s.items()), flush=True)
        size.bytes_on_disk = disk(filled_url)[0]
        _, size.samples_bytes, size.predictions_bytes = disk(empty_url)
        out.append(size)
    return out


def growth_table(sizes: list[Size], perf: dict, acc: dict) -> list[str]:
    """The markdown table of the sizes, and what the store takes on disk per 1,000,000 results."""
    names = list(sizes[0].night_s)
    lines = ["| results | points | configurations | " + " | ".join(
                 f"{n}: empty -> filled (ratio)" for n in names)
             + " | one load, median (night 2) | " + " | ".join(GROWTH_QUERIES) + " | rebuild (not per load) | "
             "database on disk |",
             "|" + "---|" * (6 + len(names) + len(GROWTH_QUERIES))]
    for s in sizes:
        cells = [f"{s.results:,}", f"{s.points:,}", f"{s.configurations:,}"]
        cells += [f"{s.night_s[n][0]:.2f} s -> {s.night_s[n][1]:.2f} s (x{s.night_s[n][1] / s.night_s[n][0]:.2f})"
                  for n in names]
        one = s.per_load_s[names[-1]]
        cells.append(f"{one[0] * 1e3:.1f} -> {one[1] * 1e3:.1f} ms")
        cells += [f"{s.queries_s[q] * 1e3:.1f} ms" for q in GROWTH_QUERIES]
        cells += [f"{s.rebuild_s:.2f} s", f"{s.bytes_on_disk / 2**30:.2f} GiB"]
        lines.append("| " + " | ".join(cells) + " |")
    largest = sizes[-1]
    per_million = largest.bytes_on_disk / largest.results * 1e6
    each = 2 * NIGHT_BOARDS * NIGHT_MODELS  # performance (and accuracy) results in the empty store after two nights
    samples = largest.samples_bytes / each / perf["performance"]["n"]
    predictions = largest.predictions_bytes / each / acc["accuracy"]["n"]
    lines.append("")
    lines.append(f"On disk: {per_million / 2**30:.2f} GiB per 1,000,000 results (the filled store at "
                 f"{largest.results:,} results: documents, dimension and figure tables, indexes, the scoreboard; "
                 f"extrapolated linearly to 1,000,000 where smaller), without raw samples and per-image predictions, "
                 f"which bulk SQL leaves out; these cost {samples:.0f} bytes per timed run and {predictions:.0f} "
                 f"bytes per image (measured on the nights' documents in the empty store): e.g. 500,000 performance "
                 f"results of 200 runs add {500_000 * 200 * samples / 2**30:.1f} GiB.")
    return lines
