"""The published ReQuEST-ASPLOS'18 HiKey960 results as a read-only reference board, on the real PostgreSQL server.

The CSV is read here independently (the csv module and a mapping written out in this file) and every stored figure
is checked against it; the reference board's Pareto frontier is compared with one computed by hand from the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re

import pytest
from sqlalchemy import create_engine, text

from requestflow.errors import UserError
from requestflow.results.boards import record_platform, set_board
from requestflow.results.database import sqlalchemy_url
from requestflow.results.document import check_document
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from requestflow.results.reference import VAL_TXT_SHA256, board_row, documents, import_reference
from requestflow.results.reference_csv import read_csv
from tests.databases import throwaway_database
from tests.scoreboard_app import logged_in_client

BOARD = "hikey960-request-asplos18"
TABLES = ("boards", "platform_snapshots", "library_builds", "models", "weights", "datasets", "points", "results",
          "performance", "samples", "accuracy", "predictions")
# the CSV's library column -> (backend, library version as stored), written out independently of reference.py
LIBRARY = {"17.12-48bc34ea": ("armcl", "17.12"), "18.01-f45d5a9b": ("armcl", "18.01"),
           "18.03-e40997bb": ("armcl", "18.03"), "request-d8f69c13": ("armcl", "request fork"),
           "tensorflow-1.7": ("tf", "1.7")}


@pytest.fixture(scope="module")
def csv_path(data_dir):
    return data_dir / "request-asplos18" / "hikey960-mobilenets.csv"


@pytest.fixture(scope="module")
def published(csv_path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def store(csv_path):
    """One import of the published CSV, shared by the module's tests (none of them changes the store)."""
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        report = import_reference(engine, csv_path)
        yield engine, url, report
        engine.dispose()


def counts(engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def rows_of(engine, sql: str, parameters: dict | None = None) -> list[dict]:
    columns, rows = read_only(engine, sql, parameters)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def key(backend: str, version: str, conv_method: str | None, model: str) -> tuple:
    return (backend, version, conv_method, model)


def published_key(row: dict) -> tuple:
    backend, version = LIBRARY[row["library"]]
    return key(backend, version, None if row["conv_method"] == "n/a" else row["conv_method"],
               f"mobilenet-v1-{row['width']}-{row['resolution']}")


def stored_key(row: dict) -> tuple:
    return key(row["backend"], row["library_version"], json.loads(row["variant"]).get("conv_method"), row["model"])


class TestThePublishedPoints:
    def test_all_144_points_are_on_the_scoreboard_with_the_published_figures(self, store, published):
        engine, _, report = store
        assert len(published) == 144 and report.rows == 144 and report.loaded == 288 and report.unchanged == 0
        stored = {stored_key(r): r for r in rows_of(engine, "SELECT * FROM scoreboard WHERE board = %(b)s",
                                                    {"b": BOARD})}
        assert len(stored) == 144
        for row in published:
            s = stored[published_key(row)]
            min_s = float(row["latency_min_ms"]) / 1e3
            # the one stored sample is the published minimum: every latency statistic of the point is it
            assert s["latency_min_s"] == s["latency_median_s"] == s["latency_p90_s"] == pytest.approx(min_s, abs=1e-12)
            assert (s["top1"], s["top5"]) == (float(row["top1"]), float(row["top5"]))
            # the TensorFlow rows' accuracy is over the 50,000 images (the CSV's README), the others' over 500
            assert s["image_count"] == (50_000 if row["library"] == "tensorflow-1.7" else int(row["accuracy_images"]))
            assert s["precision"] == "fp32" and s["batch_size"] == 1 and not s["random_weights"]
            assert s["library"] == ("tensorflow" if row["library"] == "tensorflow-1.7" else "arm_compute")

    def test_the_pareto_frontier_starts_at_9_9_ms_and_41_percent_with_the_request_fork_direct_0_25_128(
            self, store, published):
        engine, _, _ = store
        everything = rows_of(engine, "SELECT * FROM pareto_frontier WHERE board = %(b)s "
                                     "AND latency_stat = 'median' ORDER BY latency_median_s, top1 DESC", {"b": BOARD})
        # a frontier never mixes image sets: the ArmCL rows' 500 images, the TensorFlow rows' 50,000 (migration 0012)
        frontier = [r for r in everything if r["image_count"] == 500]
        first = frontier[0]
        assert stored_key(first) == ("armcl", "request fork", "DIRECT", "mobilenet-v1-0.25-128")
        assert first["latency_median_s"] == pytest.approx(0.0099, abs=1e-12) and first["top1"] == 0.41
        # the CSV's own row, read independently: 9.9 ms at 0.41 top-1, the fastest of all 144
        row = next(r for r in published if published_key(r) == stored_key(first))
        assert (row["latency_min_ms"], row["top1"]) == ("9.9", "0.41")
        assert min(float(r["latency_min_ms"]) for r in published) == 9.9
        # ... and it ends at the paper's most accurate point, request fork GEMM 1.0_224 at 48.6 ms ("under 50 ms")
        assert stored_key(frontier[-1]) == ("armcl", "request fork", "GEMM", "mobilenet-v1-1.0-224")
        assert frontier[-1]["latency_median_s"] == pytest.approx(0.0486, abs=1e-12)

        def beaten(p, q):  # q at least as good on (latency, top-1) and better on one
            lp, tp, lq, tq = float(p["latency_min_ms"]), float(p["top1"]), float(q["latency_min_ms"]), float(q["top1"])
            return lq <= lp and tq >= tp and (lq < lp or tq > tp)

        def images(p):
            return 50_000 if p["library"] == "tensorflow-1.7" else int(p["accuracy_images"])

        by_hand = {published_key(p) for p in published
                   if not any(beaten(p, q) for q in published if images(q) == images(p))}
        assert {stored_key(r) for r in everything} == by_hand
        assert {r["image_count"] for r in everything} == {500, 50_000}

    def test_every_document_is_schema_valid_and_says_what_it_is(self, store, csv_path, published):
        engine, _, _ = store
        rows, sha256 = read_csv(csv_path)
        docs = documents(csv_path, sha256, rows)
        assert len(docs) == 288
        for (_, document), row in zip(docs, [r for r in published for _ in range(2)], strict=True):
            check_document(document, "reference")  # written as schema version 1: upgraded, then validated
            context = document["context"]
            reference = context["reference"]
            assert reference["source"] == "hikey960-mobilenets.csv" and reference["sha256"] == sha256
            assert reference["row"] == row and "not a run of requestflow" in reference["what"]
            assert "command" not in document  # nothing here replays it
            if context["mode"] == "performance":
                p = document["performance"]
                assert p["n"] == 1 and p["samples"] == [float(row["latency_min_ms"]) / 1e3]
                assert (p["repetitions"], p["warmup"], context["repetitions"], context["warmup"]) == (50, 0, 50, 0)
                assert p["published"]["mean_s"] == float(row["latency_mean_ms"]) / 1e3
                assert p["published"]["center_s"] == float(row["latency_center_ms"]) / 1e3
            else:
                assert document["predictions"] == [] and document["accuracy"]["published_images"] == 500
        stored = rows_of(engine, "SELECT p.mode, r.repetitions, r.warmup, count(*) AS n FROM results r "
                                 "JOIN points p ON p.id = r.point_id GROUP BY 1, 2, 3 ORDER BY 1")
        assert stored == [{"mode": "accuracy", "repetitions": None, "warmup": None, "n": 144},
                          {"mode": "performance", "repetitions": 50, "warmup": 0, "n": 144}]

    def test_the_val_txt_described_is_the_shared_one(self, data_dir):
        assert hashlib.sha256((data_dir / "imagenet" / "val.txt").read_bytes()).hexdigest() == VAL_TXT_SHA256


class TestTheReferenceBoard:
    def test_it_is_read_only_with_its_source_paper_figures_and_caveats(self, store, csv_path):
        engine, _, _ = store
        (board,) = rows_of(engine, "SELECT * FROM boards WHERE name = %(b)s", {"b": BOARD})
        assert board["kind"] == "reference" and board["read_only"] is True
        assert (float(board["price_usd"]), str(board["price_date"]), board["peak_power_w"]) == (239, "2017-04-25", 4.5)
        info = board["info"]
        assert info["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
        assert info["source"] == str(csv_path) and info["source_name"] == "hikey960-mobilenets.csv"
        assert info["paper"]["doi"] == "10.1145/3229762.3229767" and "Multi-objective autotuning" in info["citation"]
        caveats = info["caveats"]
        assert all(isinstance(c, str) and c for c in caveats)
        text_ = " ".join(caveats)
        assert "MINIMUM over 50 runs without warm-up" in text_
        assert "first 500 ILSVRC2012 validation images" in text_ and "50,000" in text_

    def test_importing_twice_changes_nothing(self, store, csv_path):
        engine, _, _ = store
        before = counts(engine)
        report = import_reference(engine, csv_path)
        assert (report.loaded, report.unchanged) == (0, 288) and "already imported" in report.describe()
        # the loader's own idempotency, below the importer's shortcut: the same documents again add nothing
        rows, sha256 = read_csv(csv_path)
        again = load_documents(engine, documents(csv_path, sha256, rows), BOARD,
                               reference=board_row(csv_path, sha256, rows))
        assert (len(again.loaded), len(again.unchanged)) == (0, 288)
        assert counts(engine) == before

    def test_normal_loads_and_board_edits_are_refused(self, store, csv_path, run_cli, tmp_path):
        engine, url, _ = store
        before = counts(engine)
        rows, sha256 = read_csv(csv_path)
        document = documents(csv_path, sha256, rows)[0][1]
        with pytest.raises(UserError, match="read-only reference board: nothing can be loaded"):
            load_documents(engine, [("x.json", document)], BOARD)
        with pytest.raises(UserError, match="read-only reference board"):
            set_board(engine, BOARD, price_usd=1)
        with pytest.raises(UserError, match="read-only reference board"):
            record_platform(engine, BOARD, "ssh", {"arch": "aarch64"})
        other = {**board_row(csv_path, sha256, rows)}
        other["info"] = {**other["info"], "sha256": "0" * 64}  # another source's import into this board
        with pytest.raises(UserError, match="is not the reference board of"):
            load_documents(engine, [("x.json", document)], BOARD, reference=other)
        path = tmp_path / "doc.json"
        path.write_text(json.dumps(document))
        code, _, stderr = run_cli("load", path, "--board", BOARD, "--db", url)
        assert code == 2 and "read-only reference board" in stderr
        code, _, stderr = run_cli("board", BOARD, "--peak-power-w", "9", "--db", url)
        assert code == 2 and "read-only reference board" in stderr
        assert counts(engine) == before
        (board,) = rows_of(engine, "SELECT price_usd, peak_power_w, kind FROM boards WHERE name = %(b)s", {"b": BOARD})
        assert (float(board["price_usd"]), board["peak_power_w"], board["kind"]) == (239, 4.5, "reference")

    def test_a_measured_board_cannot_become_a_reference_board(self, store, csv_path):
        engine, _, _ = store
        set_board(engine, "hikey960", price_usd=239)
        before = counts(engine)
        with pytest.raises(UserError, match="'hikey960' already exists and is not the reference board"):
            import_reference(engine, csv_path, board="hikey960")
        assert counts(engine) == before
        assert rows_of(engine, "SELECT kind, read_only FROM boards WHERE name = 'hikey960'") == [
            {"kind": "local", "read_only": False}]


class TestTheCaveatsAreShown:
    def test_by_the_cli_beside_the_scoreboard_and_the_board(self, store, run_cli):
        _, url, _ = store
        code, stdout, _ = run_cli("scoreboard", "--board", BOARD, "--db", url)
        assert code == 0 and "(144 rows)" in stdout
        assert f"{BOARD} is a read-only reference board" in stdout and "MINIMUM over 50 runs without warm-up" in stdout
        code, stdout, stderr = run_cli("scoreboard", "--board", BOARD, "--format", "json", "--db", url)
        assert code == 0 and len(json.loads(stdout)) == 144  # stdout stays JSON: the caveats go to stderr
        assert "MINIMUM over 50 runs" in stderr
        code, stdout, _ = run_cli("board", BOARD, "--db", url)
        assert code == 0 and "reference" in stdout and "first 500 ILSVRC2012 validation images" in stdout
        code, stdout, _ = run_cli("scoreboard", "--board", "nowhere", "--db", url)
        assert code == 0 and "reference board" not in stdout

    def test_on_the_scoreboard_page_and_the_points_page(self, store, monkeypatch):
        engine, _, _ = store
        (fastest,) = rows_of(engine, "SELECT point_id FROM pareto_frontier WHERE board = %(b)s "
                                     "AND latency_stat = 'median' ORDER BY latency_median_s LIMIT 1", {"b": BOARD})
        with logged_in_client(monkeypatch, engine) as client:
            response = client.get(f"/scoreboard/?board={BOARD}")
            assert response.status_code == 200
            section = re.search(r'<section id="reference-boards".*?</section>', response.text, re.S).group(0)
            assert BOARD in section and "MINIMUM over 50 runs without warm-up" in section
            assert 'id="reference-boards"' not in client.get("/scoreboard/?board=nowhere").text
            page = client.get(f"/scoreboard/point/{fastest['point_id']}").text
            caveats = re.search(r'<section id="caveats".*?</section>', page, re.S).group(0)
            assert "read-only reference board" in caveats and "first 500 ILSVRC2012 validation images" in caveats
            assert "no per-image predictions (the published reference results have none)" in page


class TestTheCommand:
    def test_import_reference_from_the_shared_data_once_then_nothing(self, run_cli):
        with throwaway_database() as url:
            code, stdout, stderr = run_cli("import-reference", "--db", url)
            assert code == 0, stderr
            assert "144 published points" in stdout and "imported as 288 results into a read-only reference" in stdout
            assert "caveats:" in stdout and "MINIMUM over 50 runs" in stdout
            code, stdout, _ = run_cli("import-reference", "--db", url)
            assert code == 0 and "already imported: nothing changed" in stdout


def damaged(source, tmp_path, line: int, column: str | None = None, value: str | None = None,
            raw: str | None = None, name: str = "hikey960-damaged.csv"):
    """A copy of the CSV with one line changed: one column's value, or the whole line."""
    lines = source.read_text().splitlines()
    header = lines[0].split(",")
    if raw is not None:
        lines[line - 1] = raw
    else:
        cells = next(csv.reader([lines[line - 1]]))
        cells[header.index(column)] = value
        out = tmp_path / "row.csv"
        with open(out, "w", newline="") as handle:
            csv.writer(handle, lineterminator="").writerow(cells)
        lines[line - 1] = out.read_text()
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_CELLS = [
    (12, "latency_min_ms", "fast", "expected a number > 0"),
    (30, "latency_min_ms", "500", "expected at most latency_mean_ms"),
    (44, "top1", "1.7", "expected a fraction in 0..1"),
    (57, "library", "19.05-abcdef01", "expected one of 17.12-48bc34ea"),
    (70, "conv_method", "WINOGRAD", "expected GEMM or DIRECT"),
    (88, "width", "0.3", "expected 0.25, 0.5, 0.75 or 1.0"),
    (101, "price_usd", "199", "expected the board's one value, '239' as on line 2"),
    (120, "repetitions", "fifty", "expected a whole number >= 1"),
    (133, "price_date", "25/04/2017", "expected a date YYYY-MM-DD"),
]


class TestAMalformedCsvIsRefusedWholeNamingTheLineAndColumn:
    @pytest.mark.parametrize(("line", "column", "value", "message"), BAD_CELLS)
    def test_a_bad_cell(self, store, csv_path, tmp_path, line, column, value, message):
        engine, _, _ = store
        before = counts(engine)
        path = damaged(csv_path, tmp_path, line, column, value)
        with pytest.raises(UserError) as refused:
            import_reference(engine, path, board="broken")
        assert f"{path}:{line}: column {column!r}: {message}" in str(refused.value)
        assert counts(engine) == before
        assert rows_of(engine, "SELECT name FROM boards WHERE name = 'broken'") == []

    def test_a_short_line_a_duplicate_and_a_missing_column(self, store, csv_path, tmp_path):
        engine, _, _ = store
        before = counts(engine)
        lines = csv_path.read_text().splitlines()
        cases = [(damaged(csv_path, tmp_path, 20, raw=lines[19].rsplit(",", 3)[0], name="short.csv"),
                  "short.csv:20: 12 fields, expected 15"),
                 (damaged(csv_path, tmp_path, 145, raw=lines[2], name="twice.csv"),
                  "twice.csv:145: columns 'library', 'conv_method', 'width', 'resolution': the same configuration "
                  "as line 3"),
                 (damaged(csv_path, tmp_path, 1, raw=lines[0].replace(",top5,", ",top_5,"), name="header.csv"),
                  "header.csv:1: column 'top5' is missing")]
        for path, message in cases:
            with pytest.raises(UserError, match=re.escape(message)):
                import_reference(engine, path, board="broken")
        assert counts(engine) == before

    def test_the_cli_says_it_in_one_line(self, store, csv_path, tmp_path, run_cli):
        engine, url, _ = store
        before = counts(engine)
        path = damaged(csv_path, tmp_path, 12, "top5", "-0.1")
        code, stdout, stderr = run_cli("import-reference", path, "--board", "broken", "--db", url)
        assert code == 2 and stdout == "" and "Traceback" not in stderr
        assert stderr.strip().splitlines() == [
            f"requestflow: error: {path}:12: column 'top5': expected a number >= 0, got '-0.1'"]
        assert counts(engine) == before
