"""Scoreboard version 5 and pareto_frontier version 6 (migration 0012, issue #17): an accuracy belongs to its image
set, on the real PostgreSQL server.

- The issue's sequence, with real runner documents: tf's top-1 of 0.500 on 500 images, then a 20-image check sweep
  (tf and armcl on 20 images) leaves the 500-image row intact; the armcl row is checked against tf on the same 20
  images; the default view (the page, ``requestflow plot``) shows each configuration on its largest image set; a
  frontier never compares rows of two image sets.
- On data where every configuration has one image set (tests/results/test_scoreboard_v4.py's cases), version 5
  gives version 4's rows, column for column, but the variant's label.
- Variant labels for every backend, as the page shows them.
- Migration 0012 goes down to version 4 and up again with no drift.
"""

from __future__ import annotations

import copy
import hashlib

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from requestflow.board.catalogue import get_model
from requestflow.results import scoreboard_data
from requestflow.results.database import alembic_config, check, head_revision, sqlalchemy_url, upgrade
from requestflow.results.load import load_documents
from requestflow.results.plot import frontier
from requestflow.results.query import read_only
from tests.databases import throwaway_database
from tests.results import test_results, test_scoreboard_v4

documents = test_results.documents  # real runner documents (a session fixture of that module)
database, store = test_results.database, test_results.store
MODEL = "mobilenet-v1-0.25-128"


def as_run(template: dict, backend: str, *, images: int | None = None, top1: float | None = None,
           median: float | None = None, day: int = 1, variant: dict | None = None) -> tuple[str, dict]:
    """A copy of a real document of tf's 0.25_224 as another run: model 0.25_128, ``backend``, on ``images`` images
    (their own file list) with ``top1``, or timed at ``median``, started on December ``day``."""
    document = copy.deepcopy(template)
    context = document["context"]
    model = get_model(MODEL)
    context["model"].update(id=model.id, width=model.width, resolution=model.resolution, macs=model.macs,
                            params=model.params)
    context["backend"]["name"] = backend
    if variant is not None:
        context["backend"]["variant"] = variant
    document["started_at"] = f"2026-12-{day:02d}T10:00:00.000+00:00"
    document["finished_at"] = f"2026-12-{day:02d}T10:05:00.000+00:00"
    if images is not None:
        context["dataset"].update(image_count=images,
                                  file_list_sha256=hashlib.sha256(f"{images} images".encode()).hexdigest())
        document["accuracy"].update(n=images, top1=top1)
    if median is not None:
        document["performance"].update(min=median, median=median, p90=median, samples=[median] * 5, n=5)
    return f"{backend} {images or 'perf'} {day}", document


def rows(engine, where: str = "", relation: str = "scoreboard") -> list[dict]:
    columns, found = read_only(engine, f"SELECT * FROM {relation} {where} ORDER BY backend, image_count")
    return [dict(zip(columns, row, strict=True)) for row in found]


@pytest.fixture
def check_sweep(store, documents):
    """The README's demo (tf 0.25_128 on 500 images: top-1 0.500, and its latency), then a 20-image check sweep of
    tf and armcl, armcl faster than tf and better than tf's 500-image figure on its 20 images."""
    acc, perf = documents["acc_tf"], documents["perf_tf"]
    load_documents(store, [as_run(acc, "tf", images=500, top1=0.5, day=1), as_run(perf, "tf", median=0.004, day=1)],
                   board="local", sweep="demo")
    load_documents(store, [as_run(acc, "tf", images=20, top1=0.45, day=2),
                           as_run(acc, "armcl", images=20, top1=0.55, day=2),
                           as_run(perf, "armcl", median=0.002, day=2)], board="local", sweep="check")
    return store


class TestAccuracyBelongsToItsImageSet:
    def test_a_20_image_check_leaves_the_500_image_row_intact(self, check_sweep):
        tf = rows(check_sweep, "WHERE backend = 'tf'")
        assert [(r["image_count"], r["top1"]) for r in tf] == [(20, 0.45), (500, 0.5)]
        assert [r["largest_image_set"] for r in tf] == [False, True]
        # both rows show the same performance point, beside each of its configuration's accuracies
        assert tf[0]["point_id"] == tf[1]["point_id"] == tf[0]["performance_point_id"]
        assert tf[0]["latency_median_s"] == tf[1]["latency_median_s"] == 0.004
        assert tf[0]["accuracy_point_id"] != tf[1]["accuracy_point_id"]

    def test_the_armcl_check_compares_with_tf_on_the_same_images(self, check_sweep):
        (armcl,) = rows(check_sweep, "WHERE backend = 'armcl'")
        assert (armcl["image_count"], armcl["reference_top1"], armcl["accuracy_check"]) == (20, 0.45, "ok")
        assert armcl["accuracy_delta"] == pytest.approx(0.10)

    def test_the_default_view_shows_each_configuration_on_its_largest_image_set(self, check_sweep):
        shown = scoreboard_data.read_rows(check_sweep)
        assert sorted((r["backend"], r["image_count"], r["top1"]) for r in shown) == [("armcl", 20, 0.55),
                                                                                      ("tf", 500, 0.5)]
        chosen = scoreboard_data.read_rows(check_sweep, {"images": ["20"]})
        assert sorted((r["backend"], r["top1"]) for r in chosen) == [("armcl", 0.55), ("tf", 0.45)]
        assert scoreboard_data.Selection().describe() == "all points, each on its largest image set"

    def test_a_frontier_never_mixes_image_sets(self, check_sweep):
        _, on = read_only(check_sweep, "SELECT backend, image_count FROM pareto_frontier "
                                             "WHERE latency_stat = 'median' ORDER BY 1, 2")
        # mixed, armcl (faster, 0.55 on 20 images) would beat tf's 0.50 on 500; within 20 images tf's 0.45 is beaten
        assert on == [("armcl", 20), ("tf", 500)]
        shown = scoreboard_data.read_rows(check_sweep)
        by_id = {(r["backend"], r["image_count"]): r["point_id"] for r in shown}
        assert frontier(shown, "latency_median_s", "top1") == {by_id["armcl", 20], by_id["tf", 500]}
        # axes without an accuracy compare the board's rows whatever their images: armcl alone is faster and cheaper
        assert frontier(shown, "latency_median_s", "model_size_bytes") == {by_id["armcl", 20]}

    def test_the_point_page_shows_the_chosen_image_set(self, check_sweep):
        tf_point = rows(check_sweep, "WHERE backend = 'tf'")[0]["point_id"]
        assert scoreboard_data.read_point(check_sweep, tf_point)["row"]["image_count"] == 500
        assert scoreboard_data.read_point(check_sweep, tf_point, ["20"])["row"]["image_count"] == 20

    def test_the_materialized_scoreboard_equals_its_live_definition(self, check_sweep):
        _, stale = read_only(check_sweep, "(SELECT * FROM scoreboard EXCEPT SELECT * FROM scoreboard_live) UNION ALL "
                                          "(SELECT * FROM scoreboard_live EXCEPT SELECT * FROM scoreboard)")
        assert stale == []

    def test_a_newer_result_on_the_same_image_set_replaces_the_older(self, check_sweep, documents):
        load_documents(check_sweep, [as_run(documents["acc_tf"], "tf", images=500, top1=0.51, day=3)], board="local")
        tf = rows(check_sweep, "WHERE backend = 'tf'")
        assert [(r["image_count"], r["top1"]) for r in tf] == [(20, 0.45), (500, 0.51)]


class TestTensorFlowCompilers:
    @pytest.mark.parametrize("xla_top1, check", [(0.5, "ok"), (0.48, "FLAGGED")])
    def test_tf_with_xla_is_checked_against_tf_as_a_graph(self, store, documents, xla_top1, check):
        graph, xla = ({"graph": "tf.function", "jit_compile": jit} for jit in (False, True))
        acc = documents["acc_tf"]
        load_documents(store, [as_run(acc, "tf", images=500, top1=0.5, day=1, variant=graph),
                               as_run(acc, "tf", images=500, top1=xla_top1, day=2, variant=xla)], board="local")
        by_label = {r["variant_label"]: r for r in rows(store)}
        assert (by_label["graph"]["accuracy_check"], by_label["graph"]["reference_top1"]) == ("reference", 0.5)
        # the XLA row is newer, and a tf row: still not the reference
        assert (by_label["XLA"]["accuracy_check"], by_label["XLA"]["reference_top1"]) == (check, 0.5)


class TestVariantLabels:
    @pytest.mark.parametrize("backend, variant, label", [
        ("tf", {"graph": "tf.function", "jit_compile": False}, "graph"),
        ("tf", {"graph": "tf.function", "jit_compile": True}, "XLA"),
        ("tflite", {"delegate": "default (XNNPACK)", "pieces": 1, "exported_from_canonical": False}, "XNNPACK"),
        ("armcl", {"target": "CL", "layout": "NHWC", "conv_method": "DEFAULT", "tuner": "NONE"},
         "CL/NHWC/DEFAULT/NONE"),
        ("armcl", {"target": "NEON", "layout": "NCHW", "conv_method": "GEMM", "tuner": "NONE",
                   "conv_methods_sha256": "abcdef0123" + "0" * 54}, "NEON/NCHW/GEMM/NONE/methods:abcdef01"),
        ("tf", {}, "default"),
    ])
    def test_each_backends_variant_has_the_label_the_page_shows(self, store, documents, backend, variant, label):
        from requestflow.board.catalogue import variant_label

        load_documents(store, [as_run(documents["perf_tf"], backend, median=0.003, variant=variant)], board="b")
        (row,) = rows(store)
        assert row["variant_label"] == label
        assert scoreboard_data.variant_labels(store) == {row["variant"]: label}
        if backend == "armcl":  # the CLI's own label of a point (sweep task names) agrees
            assert variant_label(variant) == label

    def test_two_variants_with_one_label_are_told_apart(self, store, documents):
        for pieces in (1, 2):
            variant = {"delegate": "default (XNNPACK)", "pieces": pieces, "exported_from_canonical": True}
            load_documents(store, [as_run(documents["perf_tf"], "tflite", median=0.003, variant=variant)], board="b")
        labels = scoreboard_data.variant_labels(store)
        assert len(set(labels.values())) == 2 and all(v.startswith("XNNPACK {") for v in labels.values())


class TestVersion5OnVersion4sCases:
    def test_with_one_image_set_per_configuration_version_5_gives_version_4s_rows(self):
        with throwaway_database() as url:
            engine = create_engine(sqlalchemy_url(url))
            with engine.begin() as connection:
                test_scoreboard_v4.seed(connection)
                test_scoreboard_v4.create_v3(connection, "scoreboard_v4", 4)
                test_scoreboard_v4.create_v3(connection, "scoreboard_v5", 5)  # the live one is version 6 (0014)
            with engine.connect() as connection:
                columns_v4, v4 = test_scoreboard_v4.rows(connection, "scoreboard_v4")
                columns_v5, v5 = test_scoreboard_v4.rows(connection, "scoreboard_v5")
            engine.dispose()
        assert [c for c in columns_v5 if c not in ("image_set", "largest_image_set")] == columns_v4
        assert len(v5) == len(v4) == len(test_scoreboard_v4.EXPECTED)
        for old, new in zip(v4, v5, strict=True):
            new = dict(zip(columns_v5, new, strict=True))
            assert new.pop("largest_image_set") is True and new.pop("variant_label") == "default"
            assert new.pop("image_set") is None or new["top1"] is not None
            old = dict(zip(columns_v4, old, strict=True))
            assert old.pop("variant_label") == ""
            assert new == old


class TestMigration0012:
    def test_down_to_version_4_and_up_again(self, store, documents):
        url = store.url.render_as_string(hide_password=False)
        load_documents(store, [as_run(documents["acc_tf"], "tf", images=500, top1=0.5, day=1),
                               as_run(documents["acc_tf"], "tf", images=20, top1=0.45, day=2)], board="local")
        with store.begin() as connection:
            command.downgrade(alembic_config(url, connection), "0011")
        with store.connect() as connection:
            (row,) = connection.execute(text("SELECT image_count, top1 FROM scoreboard")).all()
            assert tuple(row) == (20, 0.45)  # version 4: the latest whatever its images (the issue's bug)
            assert "largest_image_set" not in connection.execute(text(
                "SELECT pg_get_viewdef('pareto_frontier')")).scalar_one()
        upgrade(url)
        check(url)
        with store.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
            assert sorted(tuple(r) for r in connection.execute(text("SELECT image_count, top1 FROM scoreboard"))) == [
                (20, 0.45), (500, 0.5)]
