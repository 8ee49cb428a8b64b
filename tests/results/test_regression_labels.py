"""Regressions name a point's variant by the scoreboard's label (issue #17's readable variants): the detection's
report, ``requestflow regressions`` and the scoreboard page's regression section say ``CL/NHWC/GEMM/NONE``,
``graph``, ``XLA``, ``XNNPACK`` as ``requestflow scoreboard`` and the page do, never ``conv_method=GEMM, ...``.

``regression_compare.variant_text`` is the scoreboard view's ``variant_label`` rule in Python; it is checked against
the view itself on stored points of every backend's variants (a real TFLite document made into each).
"""

from __future__ import annotations

import json
from pathlib import Path

from requestflow.results import regressions
from requestflow.results.query import read_only
from requestflow.results.regression_compare import variant_text
from tests.asgi import html_get, page_app
from tests.generated_runs import HISTORY_LEVELS, LEVEL, at, latencies, load_history, load_sweep, with_samples
from tests.results import test_regressions
from tests.scoreboard_seed import Seed, armcl_variant, documents, templates

ROOT = Path(__file__).resolve().parents[2]
database, store = test_regressions.database, test_regressions.store  # fixtures: a throwaway results store
MODEL = "mobilenet-v1-0.25-128"
GEMM = armcl_variant("GEMM")
# one seed per variant the scoreboard labels (performance only): armcl's, with a conv methods file, tf's graph and
# XLA, tflite's default delegate, another delegate without parentheses and two pieces
VARIANTS = {
    "CL/NHWC/GEMM/NONE": ("armcl", "fp32", GEMM),
    "CL/NHWC/DIRECT/NONE/methods:0123abcd": ("armcl", "fp32", {**armcl_variant("DIRECT"),
                                                               "conv_methods_sha256": "0123abcd" + "9" * 56}),
    "graph": ("tf", "fp32", {"graph": "tf.function", "jit_compile": False}),
    "XLA": ("tf", "fp32", {"graph": "tf.function", "jit_compile": True}),
    "XNNPACK": ("tflite", "uint8", {"delegate": "default (XNNPACK)", "pieces": 1, "exported_from_canonical": False}),
    "gpu": ("tflite", "uint8", {"delegate": "gpu", "pieces": 2, "exported_from_canonical": False}),
}


def performance_document(models_dir: Path, backend: str, precision: str, variant: dict) -> dict:
    """A real TFLite performance document made into a point of ``backend`` with ``variant`` (scoreboard_seed's)."""
    seed = Seed("local", MODEL, backend, precision, LEVEL, None, variant=variant)
    ((_, document),) = documents(seed, *templates(models_dir))
    return document


def test_the_label_is_the_scoreboards_for_every_variant(store, models_dir):
    load_sweep(store, "labels", *(performance_document(models_dir, *spec) for spec in VARIANTS.values()))
    _, rows = read_only(store, "SELECT variant, variant_label FROM scoreboard ORDER BY variant_label")
    assert sorted(label for _, label in rows) == sorted(VARIANTS)
    assert [(variant_text(variant), label) for variant, label in rows] == [(label, label) for _, label in rows]
    # the scoreboard's 'default' (an empty variant) says nothing more than the backend: left out, as before
    assert variant_text("{}") == variant_text(None) == ""
    assert variant_text('{"threads_hint": 2}') == "threads_hint=2"  # no label: its keys, as the page's JSON


def test_a_regression_names_its_variant_by_the_label_in_the_report_the_command_and_the_page(
        store, database, models_dir, monkeypatch, run_cli):
    template = performance_document(models_dir, *VARIANTS["CL/NHWC/GEMM/NONE"])
    timed = [at(with_samples(template, latencies(200, LEVEL * factor, seed=1000 + i)), hours=i)
             for i, factor in enumerate(HISTORY_LEVELS)]
    load_history(store, timed)
    load_sweep(store, "planted", at(with_samples(template, latencies(200, LEVEL * 1.2, seed=100)), hours=10))

    report = regressions.detect(store, "planted")
    (finding,) = report.findings
    _, ((label,),) = read_only(store, "SELECT DISTINCT variant_label FROM scoreboard")
    assert label == "CL/NHWC/GEMM/NONE"
    assert f"armcl [{label}] fp32 performance" in finding.describe() and f"[{label}]" in report.summary()
    assert "conv_method=" not in report.summary()

    code, out, err = run_cli("regressions", "--db", database)
    assert code == 0, err
    header, _, line = out.splitlines()[:3]
    assert header.split()[4] == "variant" and f" {label} " in line and "conv_method" not in out
    code, out, _ = run_cli("regressions", "--format", "json", "--db", database)
    assert [row["variant"] for row in json.loads(out)] == [label]

    status, html = html_get(page_app(monkeypatch, store), "/scoreboard/")
    section = html[html.index('<section id="regressions"'):]
    section = section[:section.index("</section>")]
    assert status == 200 and f'data-regression-id="{finding.id}"' in section
    assert f'armcl <span class="variant">{label}</span>' in section and "conv_method" not in section
