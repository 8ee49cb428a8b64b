"""Results measured on runtime specs (issue #17) in the store, on the real PostgreSQL server: real runner documents
stored as LiteRT 1.4.0 and 2.3.0 runs (``context.backend.runtime``, as a runtime spec's runner records it) beside
the board's default runner's. Each runtime is a point of its own; a sweep's tally names each point with its spec
(what the sweep's summary matches its planned points against); the version report pairs the two versions."""

from __future__ import annotations

import copy

from requestflow.board.catalogue import point_label
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from requestflow.results.sweeps import sweep_tally
from requestflow.results.version_report import version_report
from tests.results import test_results

documents = test_results.documents  # real runner documents (a session fixture of that module)
database, store = test_results.database, test_results.store
SPECS = {"1.4.0": "ai-edge-litert==1.4.0", "2.3.0": "ai-edge-litert==2.3.0"}
MODEL = "mobilenet-v1-0.25-128"


def on_runtime(document: dict, version: str) -> dict:
    out = copy.deepcopy(document)
    out["context"]["backend"].update(version=version, runtime=SPECS[version])
    return out


def test_two_runtimes_are_two_points_counted_by_the_sweep_and_paired_by_the_report(store, documents):
    perf, acc = documents["perf_tflite"], documents["acc_tflite"]
    assert "runtime" not in perf["context"]["backend"]  # this installation is no runtime spec's runner
    load_documents(store, [(f"{kind}-{version}", on_runtime(document, version)) for version in SPECS
                           for kind, document in (("perf", perf), ("acc", acc))] + [("default", perf)],
                   board="rpi", sweep="sweep-1")
    _, points = read_only(store, "SELECT p.identity->'library_build'->>'runtime', count(*) FROM points p "
                                 "GROUP BY 1 ORDER BY 1")
    assert points == [(SPECS["1.4.0"], 2), (SPECS["2.3.0"], 2), (None, 1)]

    ok = sorted(entry["point"] for entry in sweep_tally(store, "sweep-1")["rpi"]["ok"])
    planned = [{"model": MODEL, "backend": "tflite", "mode": mode, "runtime": spec}
               for mode in ("performance", "accuracy") for spec in [*SPECS.values(), None] if mode == "performance"
               or spec]
    assert ok == sorted(point_label(p) for p in planned)

    report = version_report(store, "rpi", "1.4.0", "2.3.0", backend="tflite")
    assert [(r.model, r.mode) for r in report.rows] == [(MODEL, "accuracy"), (MODEL, "performance")]
    accuracy, performance = report.rows
    assert (accuracy.images, accuracy.top1_delta, accuracy.broken, accuracy.fixed) == (
        len(acc["predictions"]), 0, [], [])
    assert performance.latency == "no significant difference" and performance.ratio == 1.0
