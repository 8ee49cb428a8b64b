"""Measured energy per inference in the store (issue #19, migration 0014): the scoreboard (version 6) shows a power
meter's valid figure beside the estimate, which stays, and says which one ``energy_j`` is; ``energy_frontier`` is
the Pareto frontier on (energy, top-1), measured and estimated rows never compared. An upgrade from 0013 keeps
version 5's columns row for row, and so does the downgrade."""

from __future__ import annotations

import copy

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from requestflow.results.boards import set_board
from requestflow.results.database import alembic_config, sqlalchemy_url, upgrade
from requestflow.results.load import load_documents
from tests.databases import throwaway_database
from tests.results.test_scoreboard_table import differences
from tests.scoreboard_seed import Seed, documents, templates

PEAK_W = 5.0
# (seed, energy block or None): measured, measured but not valid, no meter; on two boards
POINTS = (
    (Seed("a", "mobilenet-v1-0.25-128", "tflite", "uint8", 0.0020, 0.40), "valid"),
    (Seed("a", "mobilenet-v1-0.5-160", "tflite", "uint8", 0.0050, 0.58), "valid"),
    (Seed("a", "mobilenet-v1-1.0-224", "tflite", "uint8", 0.0180, 0.70), "invalid"),
    (Seed("a", "mobilenet-v1-0.25-224", "tflite", "uint8", 0.0030, 0.45), None),
    (Seed("a", "mobilenet-v1-0.75-192", "tflite", "uint8", 0.0100, 0.44), None),
    (Seed("b", "mobilenet-v1-0.25-128", "tflite", "uint8", 0.0040, 0.40), "valid"),
)
JOULES = {"mobilenet-v1-0.25-128": 0.012, "mobilenet-v1-0.5-160": 0.010, "mobilenet-v1-1.0-224": 0.090}


def energy(kind: str, joules: float) -> dict:
    """An ``energy`` block as requestflow.board.power writes it (hwmon, 100 Hz)."""
    valid = kind == "valid"
    return {"meter": {"kind": "hwmon", "chip": "ina226", "channels": ["power1"]}, "rate_hz": 100.0, "idle_w": 2.0,
            "active_w": 5.0 if valid else None, "active_p90_w": 5.2 if valid else None,
            "joules": joules * 21 if valid else None, "inferences": 21,
            "joules_per_inference": joules if valid else None,
            "joules_per_inference_above_idle": joules * 0.6 if valid else None,
            "joules_per_image": joules if valid else None, "samples": 40, "valid": valid,
            "reason": None if valid else "the meter disappeared during the timed region",
            "trace": {"t_s": [0.0, 0.01], "w": [2.0, 5.0], "of": 40}}


def load(engine, pair) -> None:
    for seed, kind in POINTS:
        docs = documents(seed, *pair)
        for _, document in docs:
            if kind and "performance" in document:
                document["energy"] = energy(kind, JOULES[seed.model])
        load_documents(engine, docs, board=seed.board)
    for board in ("a", "b"):
        set_board(engine, board, peak_power_w=PEAK_W)


def by_model(engine, board: str) -> dict[str, dict]:
    with engine.connect() as connection:
        return {row["model"]: row for row in connection.execute(text(
            "SELECT * FROM scoreboard WHERE board = :b"), {"b": board}).mappings()}


@pytest.fixture(scope="module")
def pair(models_dir):
    return templates(models_dir)


@pytest.fixture(scope="module")
def store(pair):
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        load(engine, pair)
        yield engine
        engine.dispose()


class TestTheScoreboardsEnergy:
    def test_a_valid_measurement_is_shown_and_the_estimate_stays(self, store):
        row = by_model(store, "a")["mobilenet-v1-0.25-128"]
        assert (row["energy_measured_j"], row["energy_j"], row["energy_source"], row["energy_meter"]) \
            == (0.012, 0.012, "measured", "hwmon")
        assert row["energy_above_idle_j"] == pytest.approx(0.0072) and row["energy_invalid_reason"] is None
        assert row["energy_est_j"] == PEAK_W * row["latency_median_s"]  # the estimate, as before
        assert row["energy_kind"] == "upper bound: peak power x median latency"

    def test_no_valid_measurement_gives_the_estimate_labelled_so(self, store):
        rows = by_model(store, "a")
        invalid, none = rows["mobilenet-v1-1.0-224"], rows["mobilenet-v1-0.25-224"]
        for row in (invalid, none):
            assert row["energy_measured_j"] is None and row["energy_above_idle_j"] is None
            assert (row["energy_j"], row["energy_source"]) == (PEAK_W * row["latency_median_s"], "estimated")
        assert invalid["energy_meter"] == "hwmon"
        assert invalid["energy_invalid_reason"] == "the meter disappeared during the timed region"
        assert none["energy_meter"] is None and none["energy_invalid_reason"] is None

    def test_the_table_equals_the_live_view(self, store):
        assert differences(store) == 0

    def test_the_energy_frontier_never_compares_measured_with_estimated(self, store):
        with store.connect() as connection:
            rows = connection.execute(text(
                "SELECT board, energy_source, model, energy_j, top1 FROM scoreboard WHERE energy_j IS NOT NULL "
                "AND top1 IS NOT NULL AND NOT random_weights")).all()
            frontier = set(connection.execute(text("SELECT board, model FROM energy_frontier")).all())

        def beaten(r) -> bool:
            return any(o.board == r.board and o.energy_source == r.energy_source and o.energy_j <= r.energy_j
                       and o.top1 >= r.top1 and (o.energy_j < r.energy_j or o.top1 > r.top1) for o in rows)

        assert frontier == {(r.board, r.model) for r in rows if not beaten(r)}
        # a's measured 0.25_128 (0.012 J) is beaten by its measured 0.5_160 (0.010 J, more accurate); the estimated
        # 0.25_224 (5 W x 3 ms = 0.015 J, 0.45) would be beaten by that measured row, but meets estimates only
        assert ("a", "mobilenet-v1-0.25-128") not in frontier and ("a", "mobilenet-v1-0.5-160") in frontier
        assert ("a", "mobilenet-v1-0.25-224") in frontier and ("a", "mobilenet-v1-1.0-224") in frontier
        assert ("a", "mobilenet-v1-0.75-192") not in frontier  # estimated, beaten by the estimated 0.25_224


class TestMigration0014:
    def test_version_5s_columns_keep_their_rows_up_and_down(self, pair):
        with throwaway_database(schema=False) as url:
            url = sqlalchemy_url(url)
            upgrade(url, revision="0013")
            engine = create_engine(url)
            load(engine, pair)

            def rows(columns: str) -> list[tuple]:
                with engine.connect() as connection:
                    return sorted(map(tuple, connection.execute(text(f"SELECT {columns} FROM scoreboard"))),
                                  key=repr)

            with engine.connect() as connection:
                columns = ", ".join(connection.execute(text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'scoreboard' "
                    "ORDER BY ordinal_position")).scalars())
            at_0013 = rows(columns)
            upgrade(url)
            assert rows(columns) == at_0013 and differences(engine) == 0
            with engine.connect() as connection:
                assert connection.execute(text("SELECT count(*) FROM scoreboard WHERE energy_source = "
                                               "'measured'")).scalar_one() == 3
            with engine.begin() as connection:
                command.downgrade(alembic_config(url, connection), "0013")
            assert rows("*") == at_0013 and differences(engine) == 0
            engine.dispose()


def test_a_document_without_energy_still_loads_as_before(store, pair):
    perf, _ = pair
    document = copy.deepcopy(perf)
    document["started_at"] = "2026-12-01T00:00:00.000+00:00"
    assert "energy" not in document
    load_documents(store, [("old", document)], board="c")
    row = by_model(store, "c")[document["context"]["model"]["id"]]
    assert row["energy_source"] is None and row["energy_j"] is None  # board c has no peak power: no estimate
    assert differences(store) == 0


def test_the_plot_and_the_page_draw_energy_j_with_the_views_frontier(store):
    from requestflow.results import plot, scoreboard_data
    from requestflow.results.query import read_only

    columns, rows = read_only(store, f"SELECT {', '.join(scoreboard_data.COLUMNS)} FROM scoreboard")
    rows = [dict(zip(columns, row, strict=True)) for row in rows]
    _, frontier = read_only(store, "SELECT point_id, image_set FROM energy_frontier")
    drawing = plot.scatter(rows, "joules", "top1", "svg")
    assert drawing.frontier == {plot.mark_id({"point_id": p, "image_set": i}) for p, i in frontier}
    assert b"measured" in drawing.data and b"estimated" in drawing.data  # a frontier line for each, named
    assert ("energy_j", "energy per batch (measured, else upper bound) (mJ)") in scoreboard_data.metric_choices()
