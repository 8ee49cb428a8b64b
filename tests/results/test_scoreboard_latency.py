"""The runner's latency statistics on the scoreboard (issue #19, migration 0015, scoreboard version 7): the p99, the
percentiles' 95% intervals and LoadGen's early-stopping p90 as a schema version 2 document carries them, NULL for a
document written in version 1 (stored as written); version 6's columns keep their rows up and down."""

from __future__ import annotations

import copy
import json

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from requestflow.board.catalogue import get_model
from requestflow.board.latency_stats import latency_statistics
from requestflow.board.quality import assess
from requestflow.board.runner import statistics
from requestflow.results.database import alembic_config, sqlalchemy_url, upgrade
from requestflow.results.load import load_documents
from tests.databases import throwaway_database
from tests.results.test_document_upgrade import V2_ONLY, V2_PERFORMANCE_ONLY
from tests.results.test_scoreboard_table import differences
from tests.scoreboard_seed import templates

STATS = ("latency_p99_s", "latency_p50_ci_low_s", "latency_p50_ci_high_s", "latency_p90_ci_low_s",
         "latency_p90_ci_high_s", "latency_p99_ci_low_s", "latency_p99_ci_high_s", "latency_p90_early_stopping_s")


def documents(models_dir) -> dict[str, dict]:
    """A version 2 performance document with an early-stopping p90, and one written in version 1."""
    perf, _ = templates(models_dir)
    v2 = copy.deepcopy(perf)
    v2["performance"]["latency"]["early_stopping"]["p90"]["value"] = 0.00123  # as if it had run 64 times
    v1 = copy.deepcopy(perf)
    v1["schema_version"] = 1
    v1["started_at"] = "2026-01-01T00:00:00.000+00:00"
    for key in V2_ONLY:
        v1.pop(key, None)
    for key in V2_PERFORMANCE_ONLY:
        v1["performance"].pop(key, None)
    return {"v2": v2, "v1": v1}


def row(engine, board: str) -> dict:
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT * FROM scoreboard WHERE board = :b"), {"b": board}).mappings()
                    .one())


def test_the_statistics_are_the_documents_and_null_for_version_1(models_dir):
    docs = documents(models_dir)
    latency = docs["v2"]["performance"]["latency"]
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        load_documents(engine, [("v2", docs["v2"])], board="a")
        load_documents(engine, [("v1", docs["v1"])], board="b")
        new, old = row(engine, "a"), row(engine, "b")
        assert differences(engine) == 0
        engine.dispose()
    assert new["latency_p99_s"] == docs["v2"]["performance"]["p99"]
    assert [new[f"latency_{p}_ci_{end}_s"] for p in ("p50", "p90", "p99") for end in ("low", "high")] \
        == [latency[p]["ci_s"][i] for p in ("p50", "p90", "p99") for i in (0, 1)]
    assert new["latency_p90_early_stopping_s"] == 0.00123
    assert old["latency_p99_s"] is not None  # the performance table's, from the upgraded document
    assert all(old[c] is None for c in STATS if c != "latency_p99_s")


def test_version_6s_columns_keep_their_rows_up_and_down(models_dir):
    docs = documents(models_dir)
    with throwaway_database(schema=False) as url:
        url = sqlalchemy_url(url)
        upgrade(url, revision="0014")
        engine = create_engine(url)
        load_documents(engine, [("v2", docs["v2"])], board="a")
        load_documents(engine, [("v1", docs["v1"])], board="b")

        def rows(columns: str) -> list[tuple]:
            with engine.connect() as connection:
                return sorted(map(tuple, connection.execute(text(f"SELECT {columns} FROM scoreboard"))), key=repr)

        with engine.connect() as connection:
            columns = ", ".join(connection.execute(text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'scoreboard' "
                "ORDER BY ordinal_position")).scalars())
            frontier = connection.execute(text("SELECT count(*) FROM energy_frontier")).scalar_one()
        at_0014 = rows(columns)
        upgrade(url, revision="0015")
        assert rows(columns) == at_0014 and differences(engine) == 0
        assert rows("latency_p90_early_stopping_s") == [(pytest.approx(0.00123),), (None,)]  # (by repr)
        with engine.begin() as connection:
            command.downgrade(alembic_config(url, connection), "0014")
        assert rows("*") == at_0014 and differences(engine) == 0
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM energy_frontier")).scalar_one() == frontier
        engine.dispose()


def with_samples(perf: dict, model: str, samples: list[float]) -> dict:
    """``perf`` as a run of ``model`` (its identity) that timed ``samples``."""
    document = copy.deepcopy(perf)
    m = get_model(model)
    document["context"]["model"].update(id=m.id, width=m.width, resolution=m.resolution, macs=m.macs, params=m.params)
    document["performance"].update(statistics(samples, 1), samples=samples, repetitions=len(samples),
                                   quality=assess(samples), latency=latency_statistics(samples))
    return document


def test_requestflow_scoreboard_ranks_by_the_latency_statistic_asked(models_dir, run_cli):
    perf, _ = templates(models_dir)
    steady = with_samples(perf, "mobilenet-v1-0.5-160", [0.002] * 20)  # median 2 ms, p90 2 ms
    tailed = with_samples(perf, "mobilenet-v1-0.25-128", [0.001] * 16 + [0.005] * 4)  # median 1 ms, p90 5 ms
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        load_documents(engine, [("s", steady), ("t", tailed)], board="a")
        engine.dispose()
        order = {}
        for stat in (None, "median", "p90"):
            code, stdout, _ = run_cli("scoreboard", "--format", "json", "--db", url,
                                      *(["--latency-stat", stat] if stat else []))
            assert code == 0
            order[stat] = [row["model"] for row in json.loads(stdout)]
    assert order["median"] == ["mobilenet-v1-0.25-128", "mobilenet-v1-0.5-160"]
    assert order["p90"] == ["mobilenet-v1-0.5-160", "mobilenet-v1-0.25-128"]
    assert order[None] == sorted(order[None])  # by model, as before
