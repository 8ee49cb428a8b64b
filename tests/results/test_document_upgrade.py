"""Result documents of schema version 1 (before issue #19) still load: upgraded to version 2 for reading (latency
statistics, p90 and p99 recomputed from their raw samples; no energy, no cold start), kept and hashed as written, so
that loading them again, exporting and importing them give the same result."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import create_engine, text

from requestflow.board.latency_stats import latency_statistics
from requestflow.board.runner import RunConfig, run
from requestflow.results.database import sqlalchemy_url
from requestflow.results.document import check_document
from requestflow.results.identity import sha256_of
from requestflow.results.load import load_documents
from tests.databases import throwaway_database

V2_ONLY = ("energy", "cold_start")
V2_PERFORMANCE_ONLY = ("latency", "profile", "duration_s")


@pytest.fixture(scope="module")
def version_1() -> dict:
    """A performance document as requestflow wrote it before schema version 2."""
    document = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=["random"], repetitions=25,
                             warmup=1, progress=False))
    document["schema_version"] = 1
    for key in V2_ONLY:
        document.pop(key, None)
    for key in V2_PERFORMANCE_ONLY:
        document["performance"].pop(key)
    document["performance"]["p90"] = 123.0  # a p90 the upgrade must recompute from the samples
    return document


def test_a_version_1_document_is_upgraded_for_reading(version_1):
    written = copy.deepcopy(version_1)
    upgraded = check_document(version_1, "old.json")
    assert version_1 == written  # the document given is not changed
    assert upgraded["schema_version"] == 2
    assert upgraded["performance"]["latency"] == latency_statistics(version_1["performance"]["samples"])
    assert upgraded["performance"]["p90"] == upgraded["performance"]["latency"]["p90"]["value"] != 123.0
    assert not any(key in upgraded for key in V2_ONLY)


def test_a_failed_version_1_document_without_samples_loads_as_before(version_1):
    failed = {key: value for key, value in version_1.items() if key != "performance"}
    failed.update(status="failed", error={"type": "RuntimeError", "message": "board fell over"})
    assert check_document(failed, "failed.json")["schema_version"] == 2


def test_the_store_keeps_and_hashes_a_version_1_document_as_written(version_1, tmp_path):
    from requestflow.results.archive_export import export
    from requestflow.results.archive_import import import_archive

    with throwaway_database() as first, throwaway_database() as second:
        engine, other = create_engine(sqlalchemy_url(first)), create_engine(sqlalchemy_url(second))
        try:
            report = load_documents(engine, [("old.json", version_1)], "board-a")
            assert report.loaded == ["old.json"]
            assert load_documents(engine, [("old.json", version_1)], "board-a").unchanged == ["old.json"]
            with engine.connect() as connection:
                row = connection.execute(text(
                    "SELECT r.schema_version, r.document_sha256, r.document, p.p90_s FROM results r "
                    "JOIN performance p ON p.result_id = r.id")).one()
            assert row.schema_version == 1
            assert row.document_sha256 == sha256_of({"board": "board-a", "document": version_1})
            assert "latency" not in row.document["performance"]  # as written
            assert row.p90_s == check_document(version_1, "x")["performance"]["p90"]  # the upgrade's p90
            export(engine, tmp_path / "old.zip")
            import_archive(other, tmp_path / "old.zip")
            with other.connect() as connection:
                assert connection.execute(text("SELECT document_sha256 FROM results")).scalar_one() == \
                    row.document_sha256
        finally:
            engine.dispose()
            other.dispose()
