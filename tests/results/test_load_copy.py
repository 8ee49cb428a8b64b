"""What ``load_one`` COPYs (formatted in COPY's text format by requestflow, not by psycopg): raw samples exactly,
and per-image predictions with file names holding COPY's special characters, labels, top-5 classes and their scores
rounded to float4 as PostgreSQL rounds them, five of them or fewer."""

from __future__ import annotations

import copy

import numpy as np
from sqlalchemy import create_engine, text

from requestflow.results.database import sqlalchemy_url
from requestflow.results.load import load_documents
from tests.databases import throwaway_database
from tests.scoreboard_seed import templates

NAMES = ("a\\b.JPEG", "tab\there.JPEG", "new\nline.JPEG", "cr\r.JPEG", "\\N", "quote'\"{},.JPEG", "é ü.JPEG",
         "plain.JPEG")


def test_samples_and_predictions_are_stored_exactly(models_dir):
    perf, acc = (copy.deepcopy(t) for t in templates(models_dir))
    perf["performance"]["samples"][0] = 1  # an integer in the JSON: a float8 like the others
    predictions = acc["predictions"][: len(NAMES)]
    for prediction, name in zip(predictions, NAMES, strict=True):
        prediction["file"] = name
    predictions[0]["top5"][0][1] = 0.1234567891234  # not a float4: rounded by the server
    predictions[1]["top5"] = predictions[1]["top5"][:2]  # fewer than five classes (the schema allows one to five)
    acc["predictions"] = predictions
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        load_documents(engine, [("p", perf), ("a", acc)], board="b")
        with engine.connect() as connection:
            samples = connection.execute(text("SELECT seconds FROM samples ORDER BY i")).scalars().all()
            stored = {row.image: row for row in connection.execute(text(
                "SELECT image, label, top5, scores FROM predictions"))}
        engine.dispose()
    assert samples == [float(s) for s in perf["performance"]["samples"]] and samples[0] == 1.0
    assert sorted(stored) == sorted(NAMES)
    for prediction in predictions:
        row = stored[prediction["file"]]
        assert row.label == prediction["label"] and row.top5 == [c for c, _ in prediction["top5"]]
        assert [np.float32(s) for s in row.scores] == [np.float32(s) for _, s in prediction["top5"]]
