"""Emulated points never share a Pareto frontier with measured ones (issue #15): not with the published HiKey960
reference points, not with a real board's, even when their (meaningless, qemu's) latency beats every measured one
and they sit on the same board as real measurements. Checked on the ``pareto_frontier`` view and on the frontier the
scoreboard page draws (``requestflow.results.plot.frontier``), for the same store: the published reference, a real
board ``local`` with one measured point and one emulated, and an emulated-only board ``arm64``."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import create_engine

from requestflow.board import quality
from requestflow.board.emulation import SETTING
from requestflow.board.runner import RunConfig, run, statistics
from requestflow.board.schema import validate_document
from requestflow.results.database import sqlalchemy_url
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from requestflow.results.reference import DEFAULT_BOARD, import_reference
from tests.databases import throwaway_database

MODEL, WEIGHTS = "mobilenet-v1-0.25-128", "mobilenet_v1_0.25_128_quant.tflite"
COLUMNS = "board, point_id, quality, latency_median_s, top1"


def _rows(engine, sql: str) -> list[dict]:
    columns, rows = read_only(engine, sql)
    return [dict(zip(columns, row, strict=True)) for row in rows]


@pytest.fixture(scope="module")
def documents(models_dir) -> dict[str, dict]:
    """A measured tflite point of this machine (performance and accuracy), and the same configuration on 2 threads
    run as emulated (``$REQUESTFLOW_EMULATED``), its latency made 1,000 times faster than the measured one and
    faster than every published HiKey960 point."""
    weights = [str(models_dir / WEIGHTS)]

    def performance(threads: int) -> dict:
        document = run(RunConfig(model=MODEL, backend="tflite", repetitions=8, warmup=1, threads=threads,
                                 progress=False, weights=weights))
        assert document["status"] == "ok"
        return document

    real = performance(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SETTING, "qemu-user")
        emulated = performance(2)
        emulated_accuracy = run(RunConfig(model=MODEL, backend="tflite", mode="accuracy", limit=5, threads=2,
                                          progress=False, weights=weights))
    p = emulated["performance"]
    p.update(statistics([s * 1e-3 * real["performance"]["median"] / p["median"] for s in p["samples"]],
                        p["batch_size"]))
    p["quality"] = quality.assess(p["samples"], emulated=emulated["machine"]["emulated"])
    accuracy = run(RunConfig(model=MODEL, backend="tflite", mode="accuracy", limit=5, progress=False,
                             weights=weights))
    out = {"real": real, "accuracy": accuracy, "emulated": emulated, "emulated accuracy": emulated_accuracy}
    for document in out.values():
        validate_document(document)
    assert p["quality"]["verdict"] == "EMULATED"
    return out


@pytest.fixture(scope="module")
def store(data_dir, documents):
    """(engine, the frontier before any emulated point was loaded)."""
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        try:
            import_reference(engine, data_dir / "request-asplos18" / "hikey960-mobilenets.csv")
            load_documents(engine, [(n, documents[n]) for n in ("real", "accuracy")], "local", sweep="measured")
            before = _rows(engine, f"SELECT {COLUMNS} FROM pareto_frontier WHERE latency_stat = 'median' "
                                     "ORDER BY board, point_id")
            load_documents(engine, [(n, copy.deepcopy(documents[n])) for n in ("emulated", "emulated accuracy")],
                           "local", sweep="emulated")
            load_documents(engine, [(n, copy.deepcopy(documents[n])) for n in ("emulated", "emulated accuracy")],
                           "arm64", sweep="emulated")
            yield engine, before
        finally:
            engine.dispose()


def test_the_emulated_points_are_on_the_scoreboard_and_faster_than_every_measured_point(store):
    engine, _ = store
    rows = _rows(engine, f"SELECT {COLUMNS} FROM scoreboard WHERE latency_median_s IS NOT NULL")
    emulated = [r for r in rows if r["quality"] == "EMULATED"]
    measured = [r for r in rows if r["quality"] != "EMULATED"]
    assert sorted(r["board"] for r in emulated) == ["arm64", "local"]
    assert any(r["board"] == DEFAULT_BOARD for r in measured) and any(r["board"] == "local" for r in measured)
    assert max(r["latency_median_s"] for r in emulated) < min(r["latency_median_s"] for r in measured)
    assert all(r["top1"] is not None for r in emulated)  # they would dominate, were they allowed on a frontier


def test_the_view_keeps_every_frontier_as_it_was_without_them(store):
    engine, before = store
    after = _rows(engine, f"SELECT {COLUMNS} FROM pareto_frontier WHERE latency_stat = 'median' "
                                     "ORDER BY board, point_id")
    assert after == before
    assert {r["board"] for r in after} == {DEFAULT_BOARD, "local"}  # arm64 holds only emulated points: none
    assert not any(r["quality"] == "EMULATED" for r in after)


def test_the_pages_frontier_is_the_views(store):
    from requestflow.results.plot import frontier

    engine, before = store
    rows = _rows(engine, "SELECT * FROM scoreboard")
    drawn = frontier(rows, "latency_median_s", "top1")
    emulated = {r["point_id"] for r in rows if r["quality"] == "EMULATED"}
    assert emulated and not drawn & emulated
    assert drawn == {r["point_id"] for r in before}
