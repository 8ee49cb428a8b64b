"""Scoreboard version 4 (migration 0009) gives version 3's rows, on the real PostgreSQL server.

Version 4 computes tf's reference top-1 by a window instead of a self-join and reads each result's document once
(``sql/views/scoreboard.v4.sql``); nothing a reader sees may change. A store is seeded row by row in SQL with the
cases where the two could part: several tf results for the same weights, precision and images (a point's older
result, tf on other boards, two tf results that started at the same instant), a non-tf result newer than every tf
one, the same weights at another precision, other image counts and another dataset with the same count, weights
with no tf result, two accuracy points of one configuration, performance-only and accuracy-only points, newer failed
runs, random weights, a FLAGGED accuracy, measurement verdicts (VALID, FLAGGED with reasons, none, null), the
backend's notes in both documents of a row (the same note twice, two notes in reverse order), a board's own
caveats, results without a sweep, and documents large enough to be TOASTed. SQL rather than ``load_documents``:
every case, ties in ``started_at`` included, is exactly the one meant (the other tests load real documents into
the same view).

- version 4 and version 3 (``sql/views/scoreboard.v{3,4}.sql`` created under other names in the same database: the
  head is version 5 since migration 0012, tests/results/test_scoreboard_v5.py) give the same rows, column for
  column;
- reference_top1 and accuracy_check are what the cases mean, written out by hand here;
- migration 0009 goes down to 0008 (version 3 back, the same rows) and up again with no drift.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from requestflow.board.catalogue import get_model
from requestflow.results.database import alembic_config, check, head_revision, sqlalchemy_url, upgrade
from tests.databases import throwaway_database

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ROOT / "sql" / "views"
START = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)
MODEL = "mobilenet-v1-0.5-160"
POCL = "zz: CL device is PoCL on the CPU, behind the OpenCL shim"
NEON = "aa: NEON result not verified on this machine"
BOARD_CAVEAT = "figures published by the vendor, not measured here"


def sha(*parts) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def document(backend: str, *, quality=..., performance=..., device_note=None, untested=None, large=False) -> dict:
    """A result document with what the scoreboard reads of it: performance.quality and context.backend's notes.
    ``quality=...``: no verdict (a document older than verdicts); ``performance=None``: a JSON null there."""
    notes = {k: v for k, v in (("device_note", device_note), ("untested", untested)) if v is not None}
    out: dict = {"status": "ok", "context": {"backend": {"name": backend, **notes}}}
    if performance is not ...:
        out["performance"] = performance
    elif quality is not ...:
        out["performance"] = {"median": 0.01, "quality": quality}
    if large:  # incompressible enough to be stored out of line (TOAST), as real documents are
        out["machine"] = {"padding": "".join(sha("padding", i) for i in range(160))}
    return out


class Seeder:
    """Rows of the results store, written directly; ``key`` names a configuration (its accuracy_key)."""

    def __init__(self, connection):
        self.c = connection
        self.ids: dict[str, int] = {}
        self.point_ids: dict[str, str] = {}  # key -> points.point_id of the row the scoreboard shows

    def one(self, sql: str, **values):
        return self.c.execute(text(sql), values).scalar_one()

    def setup(self) -> None:
        for name, caveats in (("b1", None), ("b2", [BOARD_CAVEAT]), ("b3", None)):
            info = json.dumps({"caveats": caveats} if caveats else {})
            self.ids[name] = self.one("INSERT INTO boards (name, kind, price_usd, peak_power_w, info) VALUES "
                                      "(:name, 'ssh', 100, 5, CAST(:info AS jsonb)) RETURNING id", name=name, info=info)
            self.ids[f"snapshot-{name}"] = self.one(
                "INSERT INTO platform_snapshots (board_id, sha256, machine) VALUES (:b, :sha, '{}') RETURNING id",
                b=self.ids[name], sha=sha("snapshot", name))
        for backend in ("tf", "tflite", "armcl"):
            self.ids[backend] = self.one("INSERT INTO library_builds (sha256, backend, library, version) VALUES "
                                         "(:sha, :backend, :backend, '1.0') RETURNING id",
                                         sha=sha("build", backend), backend=backend)
        model = get_model(MODEL)
        self.c.execute(text("INSERT INTO models (id, width, resolution, macs, params) VALUES (:id, :w, :r, :m, :p)"),
                       {"id": model.id, "w": model.width, "r": model.resolution, "m": model.macs, "p": model.params})
        for name, random in (("W", False), ("V", False), ("R", True)):
            self.c.execute(text("INSERT INTO weights (sha256, format, random) VALUES (:sha, 'h5', :random)"),
                           {"sha": sha("weights", name), "random": random})
        for name, synthetic, count in (("synthetic", True, None), ("d1", False, 500), ("d2", False, 500)):
            self.ids[name] = self.one("INSERT INTO datasets (sha256, synthetic, image_count) VALUES "
                                      "(:sha, :synthetic, :count) RETURNING id",
                                      sha=name if synthetic else sha("dataset", name), synthetic=synthetic,
                                      count=count)
        for name in ("s1", "s2"):
            self.ids[name] = self.one("INSERT INTO sweeps (run_id) VALUES (:name) RETURNING id", name=name)

    def point(self, key: str, mode: str, board: str, backend: str, weights: str, precision: str,
              dataset: str = "d1", threads: int = 1, variant: dict | None = None) -> int:
        point_id = sha("point", key, mode, threads)
        self.point_ids.setdefault(key, point_id)
        return self.one(
            "INSERT INTO points (point_id, accuracy_key, board_id, library_build_id, model_id, weights_sha256, "
            "dataset_id, backend, variant, precision, mode, batch_size, threads, cpu_affinity, preprocessing, "
            "identity) VALUES (:point_id, :key, :board, :build, :model, :weights, :dataset, :backend, "
            "CAST(:variant AS jsonb), :precision, :mode, 1, :threads, ARRAY[0], '{}', '{}') RETURNING id",
            point_id=point_id, key=sha("accuracy_key", key), board=self.ids[board], build=self.ids[backend],
            model=MODEL, weights=sha("weights", weights),
            dataset=self.ids["synthetic" if mode == "performance" else dataset], backend=backend,
            variant=json.dumps(variant or {}), precision=precision, mode=mode, threads=threads)

    def result(self, point: int, board: str, minute: float, doc: dict, *, status: str = "ok",
               sweep: str | None = "s1", median: float | None = None, top1: float | None = None,
               images: int = 500) -> int:
        started = START + dt.timedelta(minutes=minute)
        result_id = self.one(
            "INSERT INTO results (document_sha256, point_id, sweep_id, snapshot_id, status, started_at, finished_at, "
            "schema_version, requestflow_version, document) VALUES (:sha, :point, :sweep, :snapshot, :status, "
            ":started, :started, 1, '0.1.0', CAST(:doc AS jsonb)) RETURNING id",
            sha=sha("document", point, minute, status, json.dumps(doc)), point=point,
            sweep=self.ids[sweep] if sweep else None, snapshot=self.ids[f"snapshot-{board}"], status=status,
            started=started, doc=json.dumps(doc))
        if status != "ok":
            self.c.execute(text("INSERT INTO errors (result_id, type, message) VALUES (:r, 'RuntimeError', 'x')"),
                           {"r": result_id})
        elif median is not None:
            self.c.execute(text("INSERT INTO performance (result_id, n, min_s, median_s, mean_s, p90_s, p99_s, "
                                "stdev_s, throughput_ips) VALUES (:r, 20, :m, :m, :m, :m, :m, 0, 1 / :m)"),
                           {"r": result_id, "m": median})
        elif top1 is not None:
            self.c.execute(text("INSERT INTO accuracy (result_id, n, top1, top5, failed_count) "
                                "VALUES (:r, :n, :top1, 0.9, 0)"), {"r": result_id, "n": images, "top1": top1})
        return result_id

    def accuracy(self, key: str, board: str, backend: str, weights: str, precision: str, minute: float,
                 top1: float, *, images: int = 500, dataset: str = "d1", threads: int = 1, **doc) -> int:
        point = self.point(key, "accuracy", board, backend, weights, precision, dataset, threads)
        self.result(point, board, minute, document(backend, **doc), top1=top1, images=images)
        return point

    def performance(self, key: str, board: str, backend: str, weights: str, precision: str, minute: float,
                    median: float, *, sweep: str | None = "s1", **doc) -> int:
        point = self.point(key, "performance", board, backend, weights, precision)
        self.result(point, board, minute, document(backend, **doc), median=median, sweep=sweep)
        return point


# key -> (reference_top1, accuracy_check): what each case means, by hand
EXPECTED = {
    "tf-b1": (0.715, "reference"),  # tf itself: the reference is the latest tf row, here tf-b3's
    "tf-b2": (0.715, "reference"),
    "tf-b3": (0.715, "reference"),  # started with tf-b2, a later result id: the latest
    "tflite-fp32": (0.715, "ok"),
    "armcl-newer": (0.715, "FLAGGED"),  # newer than every tf row, and 6.5 points below
    "tflite-uint8": (None, None),  # same weights, another precision
    "tflite-50": (0.74, "ok"),  # 50 images: tf on 50 images
    "tf-50": (0.74, "reference"),
    "armcl-20": (None, None),  # 20 images: no tf on 20
    "tflite-d2": (None, None),  # another dataset of 500 images
    "tflite-V": (None, None),  # weights never run on tf
    "armcl-V": (None, None),
    "two-accuracy-points": (0.715, "FLAGGED"),  # the later of its two accuracy points: 0.66
    "random": (None, None),
    "perf-only": (None, None),
    "perf-only-null": (None, None),
}


def seed(connection) -> dict[str, str]:
    """The cases; key -> the point_id the scoreboard shows for it."""
    s = Seeder(connection)
    s.setup()
    # tf on b1: an older result, the current one, and a newer failed run
    tf_b1 = s.accuracy("tf-b1", "b1", "tf", "W", "fp32", 10, 0.60)
    s.result(tf_b1, "b1", 20, document("tf", large=True), top1=0.72)
    s.result(tf_b1, "b1", 100, document("tf"), status="failed")
    s.performance("tf-b1", "b1", "tf", "W", "fp32", 21, 0.030, performance={"median": 0.03, "quality": None})
    s.accuracy("tf-b2", "b2", "tf", "W", "fp32", 30, 0.71)
    s.accuracy("tf-b3", "b3", "tf", "W", "fp32", 30, 0.715)  # same instant as tf-b2, inserted after it
    s.accuracy("tflite-fp32", "b1", "tflite", "W", "fp32", 40, 0.71, large=True)
    perf = s.performance("tflite-fp32", "b1", "tflite", "W", "fp32", 41, 0.004, quality={"verdict": "VALID",
                                                                                      "reasons": []})
    s.result(perf, "b1", 200, document("tflite"), status="failed")
    s.accuracy("armcl-newer", "b1", "armcl", "W", "fp32", 90, 0.65, device_note=POCL, untested=NEON)
    s.performance("armcl-newer", "b1", "armcl", "W", "fp32", 91, 0.012, device_note=POCL, large=True,
                  quality={"verdict": "FLAGGED", "reasons": ["bimodal latency", "the CPU clock moved"]})
    s.accuracy("tflite-uint8", "b1", "tflite", "W", "uint8", 40, 0.69)
    s.performance("tflite-uint8", "b1", "tflite", "W", "uint8", 41, 0.002, sweep=None)
    s.accuracy("tflite-50", "b1", "tflite", "W", "fp32", 45, 0.74, images=50)
    s.accuracy("tf-50", "b2", "tf", "W", "fp32", 44, 0.74, images=50)
    s.accuracy("armcl-20", "b3", "armcl", "W", "fp32", 46, 0.60, images=20, device_note=POCL)
    s.accuracy("tflite-d2", "b1", "tflite", "W", "fp32", 47, 0.71, dataset="d2")
    s.accuracy("tflite-V", "b1", "tflite", "V", "fp32", 48, 0.70)
    s.accuracy("armcl-V", "b2", "armcl", "V", "fp32", 49, 0.70, untested=NEON)
    s.performance("armcl-V", "b2", "armcl", "V", "fp32", 50, 0.020, sweep="s2")
    s.accuracy("two-accuracy-points", "b1", "tflite", "W", "fp32", 50, 0.70, threads=1)
    s.accuracy("two-accuracy-points", "b1", "tflite", "W", "fp32", 60, 0.66, threads=2)
    s.performance("two-accuracy-points", "b1", "tflite", "W", "fp32", 61, 0.003)
    s.accuracy("random", "b1", "tflite", "R", "fp32", 70, 0.001)
    s.performance("random", "b1", "tflite", "R", "fp32", 71, 0.001)
    older = s.performance("perf-only", "b2", "tflite", "V", "uint8", 5, 0.009)
    s.result(older, "b2", 15, document("tflite", quality={"verdict": "VALID"}), median=0.008)
    s.performance("perf-only-null", "b3", "tf", "V", "fp32", 5, 0.05, performance=None, sweep=None)
    # the scoreboard shows the performance point's id when there is one: the key's first point is not always it
    rows = connection.execute(text(
        "SELECT accuracy_key, point_id FROM points WHERE mode = 'performance' OR accuracy_key NOT IN "
        "(SELECT accuracy_key FROM points WHERE mode = 'performance') ORDER BY id")).all()
    by_key = {sha("accuracy_key", k): k for k in s.point_ids}
    shown: dict[str, str] = {}
    for accuracy_key, point_id in rows:
        shown.setdefault(by_key[accuracy_key], point_id)
    return shown


def rows(connection, relation: str) -> tuple[list[str], list[tuple]]:
    result = connection.execute(text(f"SELECT * FROM {relation} ORDER BY point_id"))
    return list(result.keys()), [tuple(row) for row in result]


def create_v3(connection, name: str = "scoreboard_v3", version: int = 3) -> None:
    sql = (VIEWS / f"scoreboard.v{version}.sql").read_text()
    assert "CREATE VIEW scoreboard_live AS" in sql
    connection.execute(text(sql.replace("CREATE VIEW scoreboard_live AS", f"CREATE VIEW {name} AS")))


def live_definition(connection) -> str:
    return connection.execute(text("SELECT pg_get_viewdef('scoreboard_live')")).scalar_one()


@pytest.fixture(scope="module")
def store():
    """A database at head with the cases: (engine, key -> point_id)."""
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        with engine.begin() as connection:
            shown = seed(connection)
            create_v3(connection)
            create_v3(connection, "scoreboard_v4", 4)
            connection.execute(text("SELECT refresh_scoreboard()"))
        yield engine, shown
        engine.dispose()


class TestVersion4GivesVersion3sRows:
    def test_version_4_reads_the_reference_by_a_window(self, store):
        engine, _ = store
        with engine.connect() as connection:
            definition = connection.execute(text("SELECT pg_get_viewdef('scoreboard_v4')")).scalar_one()
        assert "first_value" in definition and "tf_reference" not in definition

    def test_version_4_equals_version_3_row_for_row(self, store):
        engine, shown = store
        with engine.connect() as connection:
            columns_v3, v3 = rows(connection, "scoreboard_v3")
            columns_v4, v4 = rows(connection, "scoreboard_v4")
        assert columns_v4 == columns_v3
        assert len(v3) == len(shown) == len(EXPECTED)
        for old, new in zip(v3, v4, strict=True):
            assert dict(zip(columns_v4, new, strict=True)) == dict(zip(columns_v3, old, strict=True))
        assert v4 == v3

    def test_the_references_are_what_the_cases_mean(self, store):
        engine, shown = store
        with engine.connect() as connection:
            got = {row.point_id: (row.reference_top1, row.accuracy_check) for row in connection.execute(text(
                "SELECT point_id, reference_top1, accuracy_check FROM scoreboard_v4"))}
        assert {key: got[point_id] for key, point_id in shown.items()} == EXPECTED

    def test_caveats_verdicts_and_sweeps(self, store):
        engine, shown = store
        with engine.connect() as connection:
            got = {row.point_id: row for row in connection.execute(text(
                "SELECT point_id, caveats, quality, quality_reasons, sweep, top1, latency_median_s "
                "FROM scoreboard_v4"))}
        flagged = got[shown["armcl-newer"]]
        assert flagged.caveats == [NEON, POCL, "accuracy 6.5 points below tf on the same weights (0.6500 vs 0.7150)"]
        assert (flagged.quality, flagged.quality_reasons) == ("FLAGGED", ["bimodal latency", "the CPU clock moved"])
        assert got[shown["armcl-V"]].caveats == [BOARD_CAVEAT, NEON] and got[shown["armcl-V"]].sweep == "s2"
        assert got[shown["armcl-20"]].caveats == [POCL]
        assert (got[shown["tflite-fp32"]].quality, got[shown["tflite-fp32"]].quality_reasons) == ("VALID", [])
        assert got[shown["tflite-fp32"]].latency_median_s == 0.004  # the newer failed run is not shown
        assert (got[shown["perf-only"]].quality, got[shown["perf-only"]].quality_reasons) == ("VALID", [])
        assert got[shown["perf-only"]].latency_median_s == 0.008 and got[shown["perf-only"]].top1 is None
        for key in ("tf-b1", "perf-only-null", "tflite-uint8"):
            assert got[shown[key]].quality is None and got[shown[key]].quality_reasons is None
        assert got[shown["tf-b1"]].top1 == 0.72 and got[shown["tf-b1"]].caveats == []
        assert got[shown["tflite-uint8"]].sweep == "s1"  # its performance result has none: the accuracy one's
        assert got[shown["perf-only-null"]].sweep is None
        assert got[shown["two-accuracy-points"]].top1 == 0.66


class TestMigration0009:
    def test_down_to_0008_gives_version_3_with_the_same_rows_and_up_again(self):
        with throwaway_database() as url:
            url = sqlalchemy_url(url)
            engine = create_engine(url)
            with engine.begin() as connection:
                seed(connection)
                connection.execute(text("SELECT refresh_scoreboard()"))
            with engine.connect() as connection:
                at_head = rows(connection, "scoreboard"), rows(connection, "pareto_frontier")
            with engine.begin() as connection:  # version 4 (and pareto_frontier version 5): before 0012
                command.downgrade(alembic_config(url, connection), "0011")
            with engine.connect() as connection:
                at_v4 = rows(connection, "scoreboard"), rows(connection, "pareto_frontier")
            with engine.begin() as connection:
                command.downgrade(alembic_config(url, connection), "0008")
            with engine.connect() as connection:
                assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0008"
                assert "tf_reference" in live_definition(connection)
                # the downgrade rebuilt the materialized scoreboard from version 3: the same rows
                assert (rows(connection, "scoreboard"), rows(connection, "pareto_frontier")) == at_v4
                assert rows(connection, "scoreboard_live") == at_v4[0]
            upgrade(url)
            check(url)
            with engine.connect() as connection:
                version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
                assert version == head_revision()
                assert "tf_reference" not in live_definition(connection)
                assert (rows(connection, "scoreboard"), rows(connection, "pareto_frontier")) == at_head
                indexes = set(connection.execute(text(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'scoreboard'")).scalars())
            assert indexes == {"ux_scoreboard_point_image_set", "ix_scoreboard_board_latency", "ix_scoreboard_sweep",
                               "ix_scoreboard_reference_group", "ix_scoreboard_references",
                               "ix_scoreboard_frontier",  # the table of 0013
                               "ix_scoreboard_frontier_p90"}  # and pareto_frontier v7's (0016)
            engine.dispose()
