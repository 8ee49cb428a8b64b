"""The scoreboard's figures (requestflow/results/plot.py) and ``requestflow plot``: the generalised Pareto frontier
against the definition and against the ``pareto_frontier`` view, the SVG's per-point data, valid SVG and PNG files
from the command line on a seeded store."""

from __future__ import annotations

import io
import itertools
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from requestflow.errors import UserError
from requestflow.results.database import sqlalchemy_url
from requestflow.results.plot import METRICS, SVG_NS, frontier, histogram, metric, scatter
from requestflow.results.query import read_only
from requestflow.results.scoreboard_data import Selection, read_rows
from tests.databases import throwaway_database
from tests.scoreboard_seed import SEEDS, frontier_by_hand, seed_store


def row(point_id: str, board: str = "b", random: bool = False, **figures) -> dict:
    base = {"point_id": point_id, "board": board, "backend": "tflite", "variant": "{}",
            "model": "mobilenet-v1-0.25-128", "width": 0.25, "resolution": 128, "precision": "uint8",
            "random_weights": random}
    return {**base, **{column: None for column in METRICS}, **figures}


def dominated(a: dict, b: dict, x: str, y: str) -> bool:
    """Does ``b`` beat ``a``: at least as good on both metrics, better on one (each with its direction)?"""
    def at_least(m, p, q):
        return q[m] <= p[m] if METRICS[m].better == "lower" else q[m] >= p[m]

    def better(m, p, q):
        return q[m] < p[m] if METRICS[m].better == "lower" else q[m] > p[m]

    return (a["board"] == b["board"] and at_least(x, a, b) and at_least(y, a, b)
            and (better(x, a, b) or better(y, a, b)))


def by_definition(rows: list[dict], x: str, y: str) -> set[str]:
    candidates = [r for r in rows if not r["random_weights"] and r[x] is not None and r[y] is not None]
    return {a["point_id"] for a in candidates if not any(dominated(a, b, x, y) for b in candidates)}


class TestTheFrontier:
    def test_latency_against_top1_keeps_ties_and_drops_the_beaten(self):
        rows = [row("fast", latency_median_s=1, top1=0.4), row("tie-a", latency_median_s=2, top1=0.5),
                row("tie-b", latency_median_s=2, top1=0.5), row("as-fast-worse", latency_median_s=2, top1=0.45),
                row("slower-same", latency_median_s=3, top1=0.5), row("best", latency_median_s=9, top1=0.7),
                row("random", random=True, latency_median_s=0.1, top1=0.9), row("no-accuracy", latency_median_s=0.5),
                row("no-latency", top1=0.95)]
        assert frontier(rows, "latency_median_s", "top1") == {"fast", "tie-a", "tie-b", "best"}

    def test_each_metric_has_its_own_better_direction(self):
        rows = [row("small-slow", throughput_ips=100, model_size_bytes=1e6),
                row("big-fast", throughput_ips=900, model_size_bytes=9e6),
                row("big-slow", throughput_ips=100, model_size_bytes=9e6),
                row("mid", throughput_ips=500, model_size_bytes=4e6)]
        assert frontier(rows, "throughput_ips", "model_size_bytes") == {"small-slow", "big-fast", "mid"}
        assert frontier(rows, "model_size_bytes", "throughput_ips") == {"small-slow", "big-fast", "mid"}

    def test_the_frontier_is_per_board(self):
        rows = [row("x1", board="x", latency_median_s=1, top1=0.4), row("y1", board="y", latency_median_s=5, top1=0.3)]
        assert frontier(rows, "latency_median_s", "top1") == {"x1", "y1"}

    @settings(max_examples=300, deadline=None, database=None)  # no .hypothesis/ folder in the checkout
    @given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 6), st.integers(0, 6), st.booleans(),
                              st.booleans()), max_size=25),
           st.sampled_from(sorted(itertools.permutations(METRICS, 2))))
    def test_equals_the_definition_for_any_rows_and_any_pair_of_metrics(self, raw, axes):
        x, y = axes
        rows = [row(f"p{i}", board=board, random=random and i % 3 == 0,
                    **{x: None if missing and i % 2 else float(vx), y: float(vy)})
                for i, (board, vx, vy, random, missing) in enumerate(raw)]
        assert frontier(rows, x, y) == by_definition(rows, x, y)

    def test_metrics_have_aliases_and_unknown_ones_are_named(self):
        assert metric("median").column == "latency_median_s" and metric("cost").column.startswith("cost")
        with pytest.raises(UserError, match="unknown metric 'speed'; known: latency_median_s"):
            metric("speed")


class TestTheFigure:
    rows = [row("a", latency_min_s=0.8e-3, latency_median_s=1e-3, latency_p90_s=1.5e-3, top1=0.4, throughput_ips=1000),
            row("b", latency_min_s=1.5e-3, latency_median_s=2e-3, latency_p90_s=2.5e-3, top1=0.3, throughput_ips=500),
            row("c", top1=0.9)]

    def points(self, svg: bytes) -> dict[str, dict]:
        root = ET.fromstring(svg)
        assert root.tag == f"{{{SVG_NS}}}svg"
        return {g.get("data-point-id"): g for g in root.iter(f"{{{SVG_NS}}}g")
                if g.get("class", "").startswith("point")}

    def test_every_drawn_point_carries_its_id_figures_and_frontier_flag(self):
        drawing = scatter(self.rows, "latency_median_s", "top1", "svg", point_href=lambda r: f"point/{r['point_id']}")
        points = self.points(drawing.data)
        assert set(points) == {"a", "b"} and drawing.missing == 1 and drawing.drawn == ["a", "b"]
        assert {p for p, g in points.items() if g.get("data-frontier") == "true"} == drawing.frontier == {"a"}
        assert float(points["a"].get("data-x")) == 1e-3 and float(points["a"].get("data-y")) == 0.4
        assert "on the Pareto frontier" in points["a"].find(f"{{{SVG_NS}}}title").text
        links = [a.get("href") for a in ET.fromstring(drawing.data).iter(f"{{{SVG_NS}}}a")]
        assert sorted(links) == ["point/a", "point/b"]

    def test_variation_bars_span_min_to_p90_on_latency_axes(self):
        svg = scatter(self.rows, "latency_median_s", "throughput_ips", "svg").data
        ids = {g.get("id") for g in ET.fromstring(svg).iter(f"{{{SVG_NS}}}g")}
        assert {"bar-x-a", "bar-x-b", "bar-y-a", "bar-y-b", "frontier-line-0"} <= ids

    def test_png_is_a_real_image(self):
        from PIL import Image

        drawing = scatter(self.rows, "throughput_ips", "top1", "png")
        image = Image.open(io.BytesIO(drawing.data))
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300

    def test_nothing_to_draw_is_still_a_valid_figure(self):
        drawing = scatter([], "energy_est_j", "cost_per_million_images_usd", "svg")
        assert self.points(drawing.data) == {} and b"no point has both" in drawing.data

    def test_a_histogram_of_samples(self):
        svg = histogram([0.001, 0.0012, 0.0011, 0.002, 0.0013], marks={"median": 0.0012})
        root = ET.fromstring(svg)
        assert any(g.get("id", "").startswith("histogram-bar-") for g in root.iter(f"{{{SVG_NS}}}g"))


@pytest.fixture(scope="module")
def seeded(models_dir):
    """A results store holding the seeded points: (URL, engine, point ids by seed)."""
    with throwaway_database() as plain:
        url = sqlalchemy_url(plain)
        engine = create_engine(url)
        ids = seed_store(engine, models_dir)
        yield url, engine, ids
        engine.dispose()


def svg_points(path) -> dict[str, dict]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{{{SVG_NS}}}svg"
    return {g.get("data-point-id"): dict(g.attrib) for g in root.iter(f"{{{SVG_NS}}}g")
            if g.get("data-point-id")}


class TestOnTheStore:
    def test_the_generalised_frontier_equals_the_view_for_latency_and_top1(self, seeded):
        _, engine, ids = seeded
        _, view = read_only(engine, "SELECT point_id FROM pareto_frontier WHERE latency_stat = 'median'")
        assert frontier(read_rows(engine), "latency_median_s", "top1") == {p for (p,) in view} == frontier_by_hand(
            SEEDS, ids)

    def test_selectors_filter_with_bound_values(self, seeded):
        _, engine, _ = seeded
        assert {r["backend"] for r in read_rows(engine, {"backend": ["tf", "armcl"]})} == {"tf", "armcl"}
        assert {r["width"] for r in read_rows(engine, {"width": ["0.75", "1"]})} == {0.75, 1.0}
        assert len(read_rows(engine, {"images": ["50"]})) == 2
        assert read_rows(engine, {"board": ["' OR ''='"]}) == []
        with pytest.raises(UserError, match="unknown selector"):
            read_rows(engine, {"1=1; DROP TABLE results; --": ["x"]})

    def test_a_selection_round_trips_through_its_url(self):
        chosen = Selection.from_query({"x": ["throughput"], "y": ["top5"], "board": ["hikey960"],
                                       "backend": ["tf", "tflite"], "log_x": ["1"], "junk": ["?"]})
        assert chosen.x == "throughput_ips" and chosen.log_x and not chosen.log_y
        from urllib.parse import parse_qs

        assert Selection.from_query(parse_qs(chosen.query())) == chosen


class TestTheCommand:
    def test_svg_and_png_with_the_frontier_points(self, run_cli, seeded, tmp_path):
        url, _, ids = seeded
        by_hand = frontier_by_hand(SEEDS, ids)
        code, stdout, stderr = run_cli("plot", "--x", "median", "--y", "top1", "--out", tmp_path / "f.svg",
                                       "--db", url)
        assert code == 0, stderr
        points = svg_points(tmp_path / "f.svg")
        assert {p for p, g in points.items() if g["data-frontier"] == "true"} == by_hand
        assert set(points) == {ids[s.key()] for s in SEEDS if s.median_s is not None and s.top1 is not None}
        assert f"{len(by_hand)} on the Pareto frontier" in stdout
        assert len([line for line in stdout.splitlines() if line.startswith("  ")]) == len(by_hand)

        from PIL import Image

        code, stdout, _ = run_cli("plot", "--out", tmp_path / "f.png", "--db", url)
        assert code == 0 and f"{len(by_hand)} on the Pareto frontier" in stdout
        image = Image.open(tmp_path / "f.png")
        image.verify()
        assert image.format == "PNG"

    def test_filters_change_the_frontier(self, run_cli, seeded, tmp_path):
        url, _, ids = seeded
        tflite = [s for s in SEEDS if s.backend == "tflite" and s.board == "hikey960"]
        code, _, stderr = run_cli("plot", "--backend", "tflite", "--board", "hikey960", "--out", tmp_path / "t.svg",
                                  "--db", url)
        assert code == 0, stderr
        points = svg_points(tmp_path / "t.svg")
        assert {g["data-backend"] for g in points.values()} == {"tflite"}
        assert {p for p, g in points.items() if g["data-frontier"] == "true"} == frontier_by_hand(tflite, ids)

    @pytest.mark.parametrize("args, message", [
        (["--out", "plot.pdf"], "the file name must end in .svg or .png"),
        (["--x", "speed", "--out", "p.svg"], "unknown metric 'speed'"),
        (["--out", "no/such/folder/p.svg"], "does not exist"),
    ])
    def test_bad_arguments_are_one_line_and_no_file(self, run_cli, seeded, tmp_path, monkeypatch, args, message):
        monkeypatch.chdir(tmp_path)
        code, stdout, stderr = run_cli("plot", *args, "--db", seeded[0])
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []
