"""The latency statistic and the library version as dimensions of the scoreboard (issues #19 and #17).

- pareto_frontier version 7 (migration 0016): each row says which latency statistic its frontier is on
  (``latency_stat``, ``latency_s``); ``WHERE latency_stat = 'median'`` gives version 6's rows exactly, the p90's
  frontier is its own (a point with a long tail leaves it), down to 0015 and up again keeps the rows and the roles'
  privileges; the plot's frontier on either statistic is the view's.
- The page's selection (``scoreboard_data``): the latency statistic ranks each board's rows and a latency axis shows
  it; a library-version selector; colour by library version, the legend naming the versions; ``requestflow plot
  --colour version --library-version ...``.

The store is the seeded one (tests/scoreboard_seed.py) with a tail on one point and two more library versions.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from urllib.parse import parse_qs

import numpy as np
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from requestflow.errors import UserError
from requestflow.results.database import alembic_config, head_revision, sqlalchemy_url, upgrade
from requestflow.results.plot import SVG_NS, frontier, mark_id, scatter
from requestflow.results.role_sql import READER, WRITER
from requestflow.results.scoreboard_data import Selection, draw, options, read_rows, version_labels
from tests.databases import throwaway_database
from tests.scoreboard_seed import (
    SEEDS,
    Seed,
    armcl_variant,
    frontier_by_hand,
    samples_around,
    samples_tailed,
    seed_store,
)

# hikey960's 0.5_160 tflite: on the median's frontier (5 ms, top-1 0.58), its p90 25 ms (beaten there by 0.5_160 tf)
TAILED = ("hikey960", "mobilenet-v1-0.5-160", "tflite")
OTHER_VERSIONS = (
    Seed("hikey960", "mobilenet-v1-0.75-192", "armcl", "fp32", 0.0100, 0.64, 50, armcl_variant("GEMM"),
         version="20.08"),
    Seed("hikey960", "mobilenet-v1-1.0-224", "tflite", "uint8", 0.0150, 0.70, version="1.4.0"),
)
HERE = tuple(replace(s, p90_s=0.025) if (s.board, s.model, s.backend) == TAILED else s for s in SEEDS) \
    + OTHER_VERSIONS
# pareto_frontier version 6's columns, in its order
V6_COLUMNS = (
    "board, backend, variant, variant_label, library, library_version, model, width, resolution, macs, "
    "model_size_bytes, precision, batch_size, threads, cpu_affinity, latency_min_s, latency_median_s, latency_p90_s, "
    "throughput_ips, quality, quality_reasons, top1, top5, image_count, image_set, largest_image_set, reference_top1, "
    "accuracy_delta, accuracy_check, energy_est_j, energy_kind, cost_per_million_images_usd, random_weights, "
    "weights_sha256, sweep, point_id, performance_point_id, accuracy_point_id, performance_result_id, "
    "accuracy_result_id, caveats")


def p90_of(seed: Seed) -> float:
    samples = samples_around(seed.median_s) if seed.p90_s is None else samples_tailed(seed.median_s, seed.p90_s)
    return float(np.percentile(samples, 90))


def p90_frontier_by_hand(seeds, ids) -> set[str]:
    """:func:`frontier_by_hand` on each seed's p90 instead of its median."""
    return frontier_by_hand([replace(s, median_s=p90_of(s)) if s.median_s is not None else s for s in seeds], ids)


@pytest.fixture(scope="module")
def seeded(models_dir):
    """(URL, engine, point ids by seed) of a store holding HERE's points."""
    with throwaway_database() as plain:
        url = sqlalchemy_url(plain)
        engine = create_engine(url)
        ids = seed_store(engine, models_dir, HERE)
        yield url, engine, ids
        engine.dispose()


def frontier_rows(engine, stat: str | None = None, columns: str = "*") -> list[tuple]:
    where = f"WHERE latency_stat = '{stat}'" if stat else ""
    with engine.connect() as connection:
        return sorted(map(tuple, connection.execute(text(f"SELECT {columns} FROM pareto_frontier {where}"))), key=repr)


class TestTheViewTakesTheStatisticAsAColumn:
    def test_each_statistic_has_its_own_frontier_and_the_tail_leaves_the_p90s(self, seeded):
        _, engine, ids = seeded
        tailed = ids[next(s for s in HERE if (s.board, s.model, s.backend) == TAILED).key()]
        median = {p for (p,) in frontier_rows(engine, "median", "point_id")}
        p90 = {p for (p,) in frontier_rows(engine, "p90", "point_id")}
        assert median == frontier_by_hand(HERE, ids) and p90 == p90_frontier_by_hand(HERE, ids)
        assert tailed in median and tailed not in p90 and median != p90
        statistics = frontier_rows(engine, None, "latency_stat, latency_s = CASE latency_stat WHEN 'median' THEN "
                                                 "latency_median_s ELSE latency_p90_s END")
        assert {row for row in statistics} == {("median", True), ("p90", True)}

    def test_the_plots_frontier_on_either_statistic_is_the_views(self, seeded):
        _, engine, _ = seeded
        rows = read_rows(engine)
        for stat, column in (("median", "latency_median_s"), ("p90", "latency_p90_s")):
            assert frontier(rows, column, "top1") == {p for (p,) in frontier_rows(engine, stat, "point_id")}

    def test_down_to_0015_the_medians_rows_are_version_6s_and_up_again_the_same(self, models_dir):
        with throwaway_database() as plain:
            url = sqlalchemy_url(plain)
            engine = create_engine(url)
            seed_store(engine, models_dir, HERE)
            at_head = frontier_rows(engine, None)
            median = frontier_rows(engine, "median", V6_COLUMNS)
            with engine.begin() as connection:
                command.downgrade(alembic_config(url, connection), "0015")
            assert frontier_rows(engine, None) == median  # version 6: SELECT * is its columns
            upgrade(url)
            with engine.connect() as connection:
                assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() \
                    == head_revision()
                privileges = {(role, p): connection.execute(text(
                    "SELECT has_table_privilege(:r, 'pareto_frontier', :p)"), {"r": role, "p": p}).scalar_one()
                    for role in (READER, WRITER) for p in ("SELECT", "INSERT", "UPDATE", "DELETE")}
            assert frontier_rows(engine, None) == at_head
            assert {k for k, granted in privileges.items() if granted} == {(READER, "SELECT"), (WRITER, "SELECT")}
            engine.dispose()


class TestThePageAndThePlot:
    def test_the_latency_statistic_ranks_each_boards_rows_and_a_latency_axis_shows_it(self, seeded):
        _, engine, ids = seeded
        tailed = ids[next(s for s in HERE if (s.board, s.model, s.backend) == TAILED).key()]
        for stat, column in (("median", "latency_median_s"), ("p90", "latency_p90_s")):
            chosen = Selection.from_query({"latency_stat": [stat], "board": ["hikey960"]})
            assert (chosen.x, chosen.latency_stat) == (column, stat)
            rows, drawing = draw(engine, chosen, "svg")
            timed = [r for r in rows if r[column] is not None]
            assert [r[column] for r in timed] == sorted(r[column] for r in timed)
            assert [r["rank"] for r in timed] == [1 + sorted(r[column] for r in timed).index(r[column]) for r in timed]
            assert all(r["rank"] is None for r in rows if r[column] is None)
            on = {r["point_id"] for r in rows if mark_id(r) in drawing.frontier}
            assert on == {p for (p,) in frontier_rows(engine, stat, "point_id") if p in {r["point_id"] for r in rows}}
            ranks = {r["point_id"]: r["rank"] for r in rows}
            if stat == "median":
                median_rank = ranks[tailed]
        assert ranks[tailed] > median_rank  # its tail puts it behind others on the p90

    def test_selections_with_a_statistic_and_a_colour_round_trip_and_bad_ones_are_named(self):
        chosen = Selection.from_query({"x": ["median"], "latency_stat": ["p90"], "colour": ["version"],
                                       "library_version": ["24.11", "20.08"]})
        assert (chosen.x, chosen.colour, chosen.filters["library_version"]) == (
            "latency_p90_s", "library_version", ("24.11", "20.08"))
        assert Selection.from_query(parse_qs(chosen.query())) == chosen
        assert "--colour library_version" in chosen.cli() and "--library-version 24.11 20.08" in chosen.cli()
        assert Selection.from_query({"x": ["p90"]}).latency_stat == "p90"  # a p90 axis chooses p90
        both = Selection.from_query({"x": ["median"], "y": ["p90"], "latency_stat": ["p90"]})
        assert (both.x, both.y) == ("latency_median_s", "latency_p90_s")  # median against p90 stays
        with pytest.raises(UserError, match="unknown latency statistic 'p99'; known: median, p90"):
            Selection.from_query({"latency_stat": ["p99"]})
        with pytest.raises(UserError, match="unknown colour 'board'; known: backend, library_version"):
            Selection.from_query({"colour": ["board"]})

    def test_the_library_version_is_a_selector(self, seeded):
        _, engine, ids = seeded
        assert {"20.08", "24.11", "1.4.0", "2.3.0", "2.21.0"} == set(options(engine)["library_version"])
        labels = version_labels(engine)
        assert labels["20.08"] == "20.08 (armcl)" and labels["2.3.0"] == "2.3.0 (ai-edge-litert)"
        rows = read_rows(engine, {"library_version": ["20.08", "1.4.0"]})
        assert {r["point_id"] for r in rows} == {ids[s.key()] for s in OTHER_VERSIONS}

    def test_colour_by_library_version_one_colour_per_version_named_in_the_legend(self, seeded):
        _, engine, _ = seeded
        rows = read_rows(engine, {"board": ["hikey960"], "backend": ["armcl", "tflite"]})
        svg = ET.fromstring(scatter(rows, "latency_median_s", "top1", "svg", colour="library_version").data)
        fills: dict[str, set[str]] = {}
        for g in svg.iter(f"{{{SVG_NS}}}g"):
            if g.get("data-colour"):
                assert g.get("data-colour").endswith(" " + g.get("data-library-version"))
                fills.setdefault(g.get("data-colour"), set()).update(
                    part.split(":")[1].strip() for e in g.iter() for part in (e.get("style") or "").split(";")
                    if part.strip().startswith("fill:") and "none" not in part)
        assert set(fills) == {"armcl 20.08", "armcl 24.11", "ai-edge-litert 1.4.0", "ai-edge-litert 2.3.0"}
        assert all(len(f) == 1 for f in fills.values()) and len(set.union(*fills.values())) == 4
        legend = {t.text for t in svg.iter(f"{{{SVG_NS}}}text")}
        assert set(fills) <= legend and "tflite" not in legend
        by_backend = ET.fromstring(scatter(rows, "latency_median_s", "top1", "svg").data)
        assert {"armcl", "tflite"} <= {t.text for t in by_backend.iter(f"{{{SVG_NS}}}text")}

    def test_requestflow_plot_colours_by_version_and_refuses_an_unknown_colour(self, seeded, run_cli, tmp_path):
        url, _, ids = seeded
        code, stdout, stderr = run_cli("plot", "--colour", "version", "--library-version", "20.08,24.11",
                                       "--backend", "armcl", "--out", tmp_path / "v.svg", "--db", url)
        assert code == 0, stderr
        marks = {g.get("data-point-id"): g.get("data-colour") for g in ET.parse(tmp_path / "v.svg").iter(
            f"{{{SVG_NS}}}g") if g.get("data-colour")}
        assert sorted(marks.values()) == ["armcl 20.08", "armcl 24.11", "armcl 24.11"]
        assert ids[OTHER_VERSIONS[0].key()] in marks
        assert "  armcl  armcl 20.08  fp32  " in stdout  # the frontier's lines name the version
        code, _, stderr = run_cli("plot", "--colour", "board", "--out", tmp_path / "b.svg", "--db", url)
        assert code == 2 and "unknown colour 'board'" in stderr and len(stderr.strip().splitlines()) == 1
        assert not (tmp_path / "b.svg").exists()

    def test_requestflow_scoreboard_shows_the_version_and_selects_by_it(self, seeded, run_cli):
        url, _, _ = seeded
        code, stdout, stderr = run_cli("scoreboard", "--library-version", "20.08,1.4.0", "--format", "json",
                                       "--db", url)
        assert code == 0, stderr
        assert sorted((r["backend"], r["library_version"], r["model"]) for r in json.loads(stdout)) == sorted(
            (s.backend, s.version, s.model) for s in OTHER_VERSIONS)
        code, stdout, _ = run_cli("scoreboard", "--board", "hikey960", "--db", url)
        assert code == 0 and "library_version" in stdout.splitlines()[0] and " 20.08 " in stdout
