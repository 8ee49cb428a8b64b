"""The results store on the real PostgreSQL server (127.0.0.1:5432), each test session in a database of its own."""

from __future__ import annotations

import copy
import json
import os
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from requestflow.board.catalogue import get_model
from requestflow.board.runner import RunConfig, run
from requestflow.errors import UserError
from requestflow.results.database import check, head_revision, sqlalchemy_url, upgrade
from requestflow.results.identity import point_id
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.databases import throwaway_database

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sql", "migrations", "versions")
TABLES = ("boards", "platform_snapshots", "library_builds", "models", "weights", "datasets", "sweeps", "points",
          "results", "performance", "samples", "accuracy", "predictions", "errors")


@pytest.fixture
def database(request):
    """A new database on the real server, dropped afterwards: its SQLAlchemy URL. Empty, unless the test uses
    ``store`` too (directly or through another fixture): then it is the store's, a copy of the session's migrated
    template (tests/databases.py) instead of a migration per test."""
    with throwaway_database(schema="store" in request.fixturenames) as url:
        yield sqlalchemy_url(url)


@pytest.fixture
def store(database):
    upgrade(database)  # a copy of the template is at the head: one query
    engine = create_engine(database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def documents(models_dir) -> dict[str, dict]:
    """Real runner documents: performance and accuracy of two configurations, and a failed run."""
    quant = str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    h5 = str(models_dir / "mobilenet_v1_0.25_224.h5")
    out = {
        "perf_tflite": run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=[quant],
                                     repetitions=15, warmup=2, progress=False)),
        "acc_tflite": run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", mode="accuracy",
                                    weights=[quant], limit=40, progress=False)),
        "perf_tf": run(RunConfig(model="mobilenet-v1-0.25-224", backend="tf", weights=[h5], repetitions=5,
                                 progress=False)),
        "acc_tf": run(RunConfig(model="mobilenet-v1-0.25-224", backend="tf", mode="accuracy", weights=[h5],
                                limit=40, progress=False)),
    }
    failed = copy.deepcopy(out["perf_tflite"])
    failed.update(status="failed", error={"type": "RuntimeError", "message": "board fell over"})
    failed.pop("performance")
    failed["started_at"] = "2026-01-01T00:00:00.000+00:00"
    out["failed"] = failed
    return out


def counts(engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def scoreboard_rows(engine, where: str = "") -> list[dict]:
    columns, rows = read_only(engine, f"SELECT * FROM scoreboard {where} ORDER BY model, backend")
    return [dict(zip(columns, row, strict=True)) for row in rows]


class TestTheSchema:
    def test_migrations_upgrade_an_empty_database_with_no_drift(self, database):
        upgrade(database)
        check(database)  # raises on any difference between the models and the migrations
        engine = create_engine(database)
        with engine.connect() as connection:
            views = set(connection.execute(text(
                "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'")).scalars())
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            materialized = set(connection.execute(text("SELECT matviewname FROM pg_matviews")).scalars())
            scoreboard = connection.execute(text("SELECT relkind FROM pg_class WHERE oid = 'scoreboard'::regclass"))
            scoreboard = scoreboard.scalar_one()
        engine.dispose()
        # the scoreboard is a table kept equal to scoreboard_live (migration 0013)
        assert views == {"scoreboard_live", "pareto_frontier", "energy_frontier", "regressions"}
        assert materialized == set()
        assert scoreboard == "r"
        assert version == head_revision()

    def test_upgrading_twice_is_harmless(self, database):
        upgrade(database)
        upgrade(database)
        check(database)

    def test_a_database_at_the_head_is_not_migrated_again_and_an_older_one_is(self, database, monkeypatch):
        import alembic.command

        upgrade(database)
        assert head_revision() == max(f for f in os.listdir(MIGRATIONS) if f.endswith(".py"))[:4]
        calls = []
        real_upgrade, real_downgrade = alembic.command.upgrade, alembic.command.downgrade
        monkeypatch.setattr(alembic.command, "upgrade", lambda *args, **kwargs: calls.append(args[1]))
        upgrade(database)  # at the head: one query, no Alembic
        assert calls == []
        monkeypatch.setattr(alembic.command, "upgrade", real_upgrade)
        engine = create_engine(database)
        with engine.begin() as connection:
            from requestflow.results.database import alembic_config
            real_downgrade(alembic_config(database, connection), "0008")
        upgrade(database, engine=engine)  # an engine of the caller's: used, and left open
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
        engine.dispose()
        check(database)


class TestLoading:
    def test_scoreboard_rows_match_the_documents_field_by_field(self, store, documents):
        load_documents(store, [(k, documents[k]) for k in ("perf_tflite", "acc_tflite", "perf_tf", "acc_tf")],
                       board="hikey-1", sweep="manual__2026-11-28")
        rows = scoreboard_rows(store)
        assert len(rows) == 2
        for row, perf, acc in ((rows[0], documents["perf_tflite"], documents["acc_tflite"]),
                               (rows[1], documents["perf_tf"], documents["acc_tf"])):
            context, p, a = perf["context"], perf["performance"], acc["accuracy"]
            model = get_model(context["model"]["id"])
            assert row["board"] == "hikey-1" and row["sweep"] == "manual__2026-11-28"
            assert row["model"] == model.id and row["width"] == model.width and row["resolution"] == model.resolution
            assert row["backend"] == context["backend"]["name"]
            assert json.loads(row["variant"]) == context["backend"]["variant"]
            assert row["library_version"] == context["backend"]["version"]
            assert row["precision"] == context["precision"]
            assert row["macs"] == model.macs
            assert row["model_size_bytes"] == model.params * (4 if context["precision"] == "fp32" else 1)
            assert (row["latency_min_s"], row["latency_median_s"], row["latency_p90_s"]) == (p["min"], p["median"],
                                                                                              p["p90"])
            assert row["throughput_ips"] == pytest.approx(p["throughput_ips"])
            assert (row["top1"], row["top5"], row["image_count"]) == (a["top1"], a["top5"], a["n"])
            assert row["random_weights"] is False
            assert row["point_id"] == point_id("hikey-1", context)
            assert row["energy_est_j"] is None and row["cost_per_million_images_usd"] is None  # no board data yet
            # the runner's verdict on the measurement (tests/results/test_quality.py checks what it says)
            assert row["quality"] == p["quality"]["verdict"] and row["quality_reasons"] == p["quality"]["reasons"]

    def test_raw_samples_and_predictions_are_kept_exactly(self, store, documents):
        load_documents(store, [("a", documents["perf_tflite"]), ("b", documents["acc_tflite"])], board="b")
        _, samples = read_only(store, "SELECT seconds FROM samples ORDER BY i")
        assert [s for (s,) in samples] == documents["perf_tflite"]["performance"]["samples"]
        _, predictions = read_only(store, "SELECT image, label, top5, scores FROM predictions ORDER BY image")
        expected = sorted(documents["acc_tflite"]["predictions"], key=lambda p: p["file"])
        assert [(i, label, top5) for i, label, top5, _ in predictions] == [
            (p["file"], p["label"], [c for c, _ in p["top5"]]) for p in expected]
        assert predictions[0][3] == pytest.approx([s for _, s in expected[0]["top5"]], rel=1e-6)

    def test_nothing_of_the_document_is_lost(self, store, documents):
        load_documents(store, [("a", documents["perf_tflite"])], board="b")
        _, rows = read_only(store, "SELECT document FROM results")
        stored = rows[0][0]
        original = copy.deepcopy(documents["perf_tflite"])
        original["performance"].pop("samples")  # kept row by row in samples
        assert stored == json.loads(json.dumps(original))

    def test_loading_the_same_documents_twice_changes_nothing(self, store, documents):
        batch = [(k, v) for k, v in documents.items()]
        first = load_documents(store, batch, board="b", sweep="s1")
        before = counts(store)
        second = load_documents(store, batch, board="b", sweep="s1")
        assert len(first.loaded) == 5 and second.loaded == [] and len(second.unchanged) == 5
        assert counts(store) == before

    def test_a_failed_result_is_stored_with_its_error_and_stays_off_the_scoreboard(self, store, documents):
        load_documents(store, [("f", documents["failed"])], board="b")
        _, rows = read_only(store, "SELECT e.type, e.message, r.status FROM errors e "
                                   "JOIN results r ON r.id = e.result_id")
        assert rows == [("RuntimeError", "board fell over", "failed")]
        assert scoreboard_rows(store) == []

    def test_twenty_concurrent_loads_of_overlapping_documents_end_with_no_duplicates(self, store, documents):
        names = list(documents)
        errors = []

        def work(i: int):
            try:
                chosen = [(n, documents[n]) for n in names[i % 3:] + names[: i % 3]][: 3 + i % 3]
                load_documents(store, chosen, board="farm", sweep=f"sweep-{i % 2}")
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        c = counts(store)
        # the failed run is another result of perf_tflite's point
        assert c["results"] == 5 and c["points"] == 4 and c["boards"] == 1 and c["models"] == 2
        assert c["samples"] == 15 + 5 and c["errors"] == 1
        # the materialized scoreboard ends equal to the live view: every load refreshed it
        _, stale = read_only(store, "(SELECT * FROM scoreboard EXCEPT SELECT * FROM scoreboard_live) UNION ALL "
                                    "(SELECT * FROM scoreboard_live EXCEPT SELECT * FROM scoreboard)")
        assert stale == []
        assert c["predictions"] == 80

    def test_a_load_waiting_for_another_to_commit_refreshes_with_its_rows(self, store, documents):
        """Load A has refreshed the scoreboard and not committed yet; load B, of another point, waits for it. B's
        REFRESH must see A's rows once A commits: a REFRESH whose snapshot was taken before it waited would publish
        a scoreboard without them, and B commits last (seen in CI: a sweep's point missing from the scoreboard)."""
        from requestflow.results.load import load_one, refresh_scoreboard, upsert_board

        document = documents["perf_tflite"]
        # its library build, model, weights and dataset stored and committed: loads A and B below share no new row,
        # so that B gets as far as its REFRESH while A has not committed (as two boards' points of known configs)
        load_documents(store, [("0.json", document)], board="board-0")
        a = store.connect()
        transaction = a.begin()
        load_one(a, document, "board-a", upsert_board(a, "board-a"), None)
        refresh_scoreboard(a)
        errors: list[Exception] = []

        def load_b():
            try:
                load_documents(store, [("b.json", document)], board="board-b")
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        thread = threading.Thread(target=load_b)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            with store.connect() as watcher:
                while True:
                    waiting = watcher.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'")).scalar()
                    watcher.rollback()  # pg_stat_activity is a snapshot per transaction
                    if waiting:
                        break
                    assert time.monotonic() < deadline, f"load B never waited for load A: {errors}"
                    time.sleep(0.02)
        finally:
            transaction.commit()
            a.close()
            thread.join(60)
        assert errors == []
        assert sorted(row["board"] for row in scoreboard_rows(store)) == ["board-0", "board-a", "board-b"]


class TestBadDocumentsAreRefusedWhole:
    @pytest.mark.parametrize("damage, message", [
        (lambda d: d.update(schema_version=7), "unknown schema_version 7"),
        (lambda d: d["performance"].update(median="fast"), r"field performance/median: 'fast' is not of type"),
        (lambda d: d.pop("context"), "'context' is a required property"),
        (lambda d: d["context"]["weights"].update(sha256="xyz"), "field context/weights/sha256"),
    ])
    def test_a_bad_document_leaves_the_database_unchanged(self, store, documents, damage, message):
        load_documents(store, [("good", documents["acc_tf"])], board="b")
        before = counts(store)
        bad = copy.deepcopy(documents["perf_tf"])
        damage(bad)
        with pytest.raises(UserError, match=f"bad.json: .*{message}"):
            load_documents(store, [("fine.json", documents["perf_tflite"]), ("bad.json", bad)], board="b")
        assert counts(store) == before

    @pytest.mark.parametrize("damage, message", [
        (lambda p: p[7].update(label=1000), "field predictions/7/label: 1000 is not a class"),
        (lambda p: p[3].pop("top5"), "field predictions/3: 'top5' is a required property"),
        (lambda p: p[0]["top5"].append([1, 0.5, 9]), r"field predictions/0/top5: expected 1 to 5"),
        (lambda p: p[2].update(top5=[["cat", 0.9]]), r"field predictions/2/top5/0: expected \[class 0..999"),
        (lambda p: p.__setitem__(5, "x"), "field predictions/5: 'x' is not of type 'object'"),
    ])
    def test_a_bad_prediction_is_named_and_nothing_is_written(self, store, documents, damage, message):
        bad = copy.deepcopy(documents["acc_tflite"])
        damage(bad["predictions"])
        with pytest.raises(UserError, match=f"bad.json: {message}"):
            load_documents(store, [("bad.json", bad)], board="b")
        assert set(counts(store).values()) == {0}

    def test_a_failure_midway_rolls_everything_back(self, store, documents, monkeypatch):
        from requestflow.results import load

        calls = {"n": 0}
        real = load.load_one

        def second_one_fails(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("connection lost")
            return real(*args, **kwargs)

        monkeypatch.setattr(load, "load_one", second_one_fails)
        with pytest.raises(RuntimeError):
            load_documents(store, [("a", documents["perf_tf"]), ("b", documents["acc_tf"])], board="b")
        assert set(counts(store).values()) == {0}

    def test_the_cli_names_a_truncated_file_and_writes_nothing(self, run_cli, store, database, documents, tmp_path):
        truncated = tmp_path / "truncated.json"
        truncated.write_text(json.dumps(documents["perf_tf"])[:500])
        good = tmp_path / "good.json"
        good.write_text(json.dumps(documents["acc_tf"]))
        code, _, stderr = run_cli("load", good, truncated, "--db", database)
        assert code == 2 and "truncated.json: not valid JSON" in stderr and "Traceback" not in stderr
        assert set(counts(store).values()) == {0}


def synthetic_pair(template_perf: dict, template_acc: dict, model_id: str, backend: str, median: float, top1: float,
                   random: bool = False) -> list[tuple[str, dict]]:
    """A performance and an accuracy document of one configuration with chosen median latency and top-1."""
    model = get_model(model_id)
    out = []
    for template, mode in ((template_perf, "performance"), (template_acc, "accuracy")):
        document = copy.deepcopy(template)
        context = document["context"]
        context["model"].update(id=model.id, width=model.width, resolution=model.resolution, macs=model.macs,
                                params=model.params)
        context["backend"]["name"] = backend
        context["weights"].update(sha256=("0" if random else "a") * 63 + str(len(model_id) % 10), random=random)
        if mode == "performance":
            document["performance"].update(min=median, median=median, p90=median, samples=[median] * 3, n=3)
        else:
            document["accuracy"].update(top1=top1)
        out.append((f"{model_id}-{backend}-{mode}", document))
    return out


class TestThePerformanceOfTheViews:
    def test_pareto_frontier_equals_a_frontier_computed_by_hand(self, store, documents):
        perf, acc = documents["perf_tflite"], documents["acc_tflite"]
        #            model                     backend   median  top-1
        points = [("mobilenet-v1-0.25-128", "tflite", 0.001, 0.40),   # fastest: frontier
                  ("mobilenet-v1-0.25-160", "tflite", 0.002, 0.50),   # frontier
                  ("mobilenet-v1-0.25-192", "tflite", 0.002, 0.50),   # ties the previous exactly: frontier too
                  ("mobilenet-v1-0.25-224", "tflite", 0.002, 0.45),   # as fast, less accurate: beaten
                  ("mobilenet-v1-0.5-128", "tflite", 0.003, 0.50),    # slower, as accurate: beaten
                  ("mobilenet-v1-0.5-160", "tflite", 0.004, 0.65),    # frontier
                  ("mobilenet-v1-0.5-192", "tflite", 0.005, 0.60),    # beaten
                  ("mobilenet-v1-1.0-224", "tflite", 0.010, 0.72)]    # frontier
        batch = [pair for p in points for pair in synthetic_pair(perf, acc, *p)]
        # random weights, faster and more accurate than everything: takes no part
        batch += synthetic_pair(perf, acc, "mobilenet-v1-0.75-128", "tflite", 0.0001, 0.99, random=True)
        load_documents(store, batch, board="b")

        def dominated(a, b):
            return b[2] <= a[2] and b[3] >= a[3] and (b[2] < a[2] or b[3] > a[3])

        by_hand = {p[0] for p in points if not any(dominated(p, q) for q in points)}
        _, rows = read_only(store, "SELECT model FROM pareto_frontier WHERE latency_stat = 'median'")
        assert {model for (model,) in rows} == by_hand == {
            "mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160", "mobilenet-v1-0.25-192", "mobilenet-v1-0.5-160",
            "mobilenet-v1-1.0-224"}
        _, random_rows = read_only(store, "SELECT random_weights FROM scoreboard WHERE model = 'mobilenet-v1-0.75-128'")
        assert random_rows == [(True,)]

    def test_the_frontier_is_per_board(self, store, documents):
        perf, acc = documents["perf_tflite"], documents["acc_tflite"]
        load_documents(store, synthetic_pair(perf, acc, "mobilenet-v1-0.25-128", "tflite", 0.001, 0.40), board="x")
        load_documents(store, synthetic_pair(perf, acc, "mobilenet-v1-0.5-128", "tflite", 0.0005, 0.60), board="y")
        _, rows = read_only(store, "SELECT board, model FROM pareto_frontier WHERE latency_stat = 'median' "
                                          "ORDER BY board")
        assert rows == [("x", "mobilenet-v1-0.25-128"), ("y", "mobilenet-v1-0.5-128")]

    def test_energy_and_cost_use_the_boards_figures(self, store, documents):
        load_documents(store, [("p", documents["perf_tf"])], board="jetson")
        from requestflow.results.boards import set_board

        set_board(store, "jetson", peak_power_w=10, price_usd=946.73, service_life_years=3)
        row = scoreboard_rows(store)[0]
        median = documents["perf_tf"]["performance"]["median"]
        assert row["energy_est_j"] == pytest.approx(10 * median)
        assert row["energy_kind"].startswith("upper bound")
        assert float(row["cost_per_million_images_usd"]) == pytest.approx(
            946.73 / (3 * 365.25 * 86400) * median * 1e6)


class TestTheCommands:
    def test_load_scoreboard_and_sql(self, run_cli, database, documents, tmp_path):
        files = []
        for name in ("perf_tflite", "acc_tflite"):
            files.append(tmp_path / f"{name}.json")
            files[-1].write_text(json.dumps(documents[name]))
        code, stdout, _ = run_cli("load", *files, "--board", "rk3399", "--sweep", "nightly-1", "--db", database)
        assert code == 0 and "loaded 2 new result(s), 0 already stored" in stdout
        code, stdout, _ = run_cli("scoreboard", "--format", "json", "--db", database)
        rows = json.loads(stdout)
        assert [(r["board"], r["model"], r["top1"]) for r in rows] == [
            ("rk3399", "mobilenet-v1-0.25-128", documents["acc_tflite"]["accuracy"]["top1"])]
        # the CPU's ISA extensions beside each row, from its result's machine block (issue #20)
        assert rows[0]["isa"] == (documents["perf_tflite"]["machine"]["isa"] or {}).get("summary")
        code, stdout, _ = run_cli("sql", "SELECT count(*) AS n FROM samples", "--format", "csv", "--db", database)
        assert stdout.splitlines() == ["n", "15"]

    def test_board_figures_feed_the_energy_and_cost_columns(self, run_cli, database, documents, tmp_path):
        path = tmp_path / "p.json"
        path.write_text(json.dumps(documents["perf_tf"]))
        run_cli("load", path, "--board", "hikey960", "--db", database)
        code, stdout, _ = run_cli("board", "hikey960", "--price-usd", "239", "--price-date", "2017-06-01",
                                  "--peak-power-w", "12", "--db", database)
        assert code == 0 and "239.00" in stdout and "2017-06-01" in stdout
        code, stdout, _ = run_cli("sql", "SELECT energy_est_j, cost_per_million_images_usd FROM scoreboard",
                                  "--format", "json", "--db", database)
        row = json.loads(stdout)[0]
        median = documents["perf_tf"]["performance"]["median"]
        assert row["energy_est_j"] == pytest.approx(12 * median)
        assert float(row["cost_per_million_images_usd"]) == pytest.approx(239 / (3 * 365.25 * 86400) * median * 1e6)

    @pytest.mark.parametrize("option, value, message", [
        ("--service-life-years", "0", "must be positive"), ("--price-usd", "-5", "must not be negative"),
        ("--price-date", "2017-13-01", "expected YYYY-MM-DD")])
    def test_bad_board_figures_are_refused(self, run_cli, database, option, value, message):
        code, _, stderr = run_cli("board", "b", option, value, "--db", database)
        assert code == 2 and message in stderr

    def test_sql_is_read_only_even_with_several_statements(self, run_cli, database, documents, tmp_path):
        path = tmp_path / "p.json"
        path.write_text(json.dumps(documents["perf_tf"]))
        run_cli("load", path, "--db", database)
        code, _, stderr = run_cli("sql", "DELETE FROM samples", "--db", database)
        assert code == 2 and "read-only transaction" in stderr
        code, _, stderr = run_cli("sql", "COMMIT; DELETE FROM samples", "--db", database)
        assert code == 2 and "cannot insert multiple commands" in stderr
        code, stdout, _ = run_cli("sql", "SELECT count(*) FROM samples", "--format", "csv", "--db", database)
        assert stdout.splitlines()[1] == "5"

    def test_a_database_that_cannot_be_reached_is_one_clear_line(self, run_cli, tmp_path):
        code, _, stderr = run_cli("scoreboard", "--db", "postgresql://postgres:secret@127.0.0.1:1/nowhere")
        assert code == 2
        assert stderr.startswith("requestflow: error: cannot use the results database") and "secret" not in stderr

    def test_a_non_postgresql_url_is_refused(self, run_cli):
        code, _, stderr = run_cli("scoreboard", "--db", "sqlite:///x.db")
        assert code == 2 and "PostgreSQL only" in stderr


class TestTheEmbeddedDefault:
    def test_with_no_database_configured_the_embedded_postgresql_is_started_and_used(self, run_cli, documents,
                                                                                      tmp_path, monkeypatch):
        from requestflow.results.embedded import stop

        monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
        monkeypatch.delenv("REQUESTFLOW_DATABASE_URL", raising=False)
        monkeypatch.delenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", raising=False)
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        path = tmp_path / "p.json"
        path.write_text(json.dumps(documents["perf_tf"]))
        try:
            code, stdout, _ = run_cli("db", "url")
            assert code == 0 and "(embedded PostgreSQL)" in stdout and str(tmp_path / "state") in stdout.replace(
                "%2F", "/")
            assert run_cli("load", path)[0] == 0
            code, stdout, _ = run_cli("sql", "SELECT version()", "--format", "csv")
            assert "PostgreSQL 18" in stdout
            code, stdout, _ = run_cli("scoreboard", "--format", "csv")
            assert "mobilenet-v1-0.25-224" in stdout
        finally:
            assert stop() is True


class TestWhereTheDatabaseIs:
    @pytest.fixture(autouse=True)
    def _clean(self, monkeypatch):
        for name in ("REQUESTFLOW_DATABASE_URL", "AIRFLOW_CONN_REQUESTFLOW_RESULTS"):
            monkeypatch.delenv(name, raising=False)

    def test_an_explicit_url_wins(self, monkeypatch):
        from requestflow.results.database import resolve_url

        monkeypatch.setenv("REQUESTFLOW_DATABASE_URL", "postgresql://env@h/e")
        assert resolve_url("postgres://cli@h:5433/c") == ("postgresql+psycopg://cli@h:5433/c", "--db")
        assert resolve_url(None) == ("postgresql+psycopg://env@h/e", "REQUESTFLOW_DATABASE_URL")

    @pytest.mark.parametrize("value", [
        "postgres://rf:s3cret@db.example:5432/results",
        json.dumps({"conn_type": "postgres", "host": "db.example", "login": "rf", "password": "s3cret",
                    "schema": "results", "port": 5432}),
    ])
    def test_the_airflow_connection_in_uri_or_json_form(self, monkeypatch, value):
        from requestflow.results.database import resolve_url

        monkeypatch.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", value)
        assert resolve_url(None) == ("postgresql+psycopg://rf:s3cret@db.example:5432/results",
                                     "Airflow Connection requestflow_results")


class TestWhatSweepsStore:
    def test_identify_gives_the_point_id_that_a_run_stores(self, models_dir, documents):
        from requestflow.board.runner import Runner

        runner = Runner(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", repetitions=3, progress=False,
                                  weights=[str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")]))
        runner.prepare()
        assert point_id("b", runner.identify()) == point_id("b", documents["perf_tflite"]["context"])
        other = Runner(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", threads=7, progress=False,
                                 weights=[str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")]))
        other.prepare()
        assert point_id("b", other.identify()) != point_id("b", documents["perf_tflite"]["context"])

    def test_resume_finds_successful_results_only(self, store, documents):
        from requestflow.results.sweeps import stored_ok

        pid = point_id("b1", documents["perf_tflite"]["context"])
        load_documents(store, [("failed", documents["failed"])], "b1", "sweep-1")
        assert stored_ok(store, pid) is None
        report = load_documents(store, [("ok", documents["perf_tflite"])], "b1", "sweep-1")
        assert stored_ok(store, pid) == report.result_ids[0]
        assert stored_ok(store, point_id("b2", documents["perf_tflite"]["context"])) is None  # another board

    def test_a_sweeps_tally_counts_results_and_failures_without_a_document(self, store, documents):
        from requestflow.results.sweeps import record_failure, sweep_tally

        load_documents(store, [("ok", documents["perf_tflite"]), ("acc", documents["acc_tflite"]),
                               ("failed", documents["failed"])], "b1", "sweep-1")
        record_failure(store, "sweep-1", "mobilenets_sweep", "b2",
                       {"model": "mobilenet-v1-0.5-160", "backend": "tf", "mode": "accuracy"},
                       "BoardUnreachable", "board b2 unreachable after 3 attempts", attempts=3)
        record_failure(store, "sweep-2", None, "b1", {"model": "x", "backend": "y", "mode": "z"}, "E", "m", 1)
        assert sweep_tally(store, "sweep-1") == {
            "b1": {"ok": [{"point": "mobilenet-v1-0.25-128 tflite accuracy", "error": None},
                          {"point": "mobilenet-v1-0.25-128 tflite performance", "error": None}],
                   "failed": [{"point": "mobilenet-v1-0.25-128 tflite performance",
                               "error": "RuntimeError: board fell over"}],
                   "no_result": []},
            "b2": {"ok": [], "failed": [], "no_result": [{
                "point": "mobilenet-v1-0.5-160 tf accuracy",
                "error": "BoardUnreachable: board b2 unreachable after 3 attempts"}]}}

    def test_clock_reports_and_platforms_are_kept_per_board(self, store):
        from requestflow.results.boards import record_platform
        from requestflow.results.sweeps import record_sweep_info

        record_sweep_info(store, "sweep-1", "mobilenets_sweep", "b1", "clocks_pin", {"cpus": [{"cpu": 0}]})
        record_sweep_info(store, "sweep-1", "mobilenets_sweep", "b2", "clocks_pin", {"reason": "no cpufreq"})
        record_sweep_info(store, "sweep-1", "mobilenets_sweep", "b1", "clocks_restore", {"cpus": []})
        record_platform(store, "b1", "ssh", {"arch": "aarch64", "known_board": {"id": "hikey960"}})
        record_platform(store, "b1", "ssh", {"arch": "aarch64", "known_board": {"id": "hikey960", "v": 2}})
        with store.connect() as connection:
            info = connection.execute(text("SELECT info FROM sweeps WHERE run_id = 'sweep-1'")).scalar_one()
            board = connection.execute(text("SELECT kind, info FROM boards WHERE name = 'b1'")).one()
        assert info == {"boards": {"b1": {"clocks_pin": {"cpus": [{"cpu": 0}]}, "clocks_restore": {"cpus": []}},
                                   "b2": {"clocks_pin": {"reason": "no cpufreq"}}}}
        assert board.kind == "ssh" and board.info["platform"]["known_board"] == {"id": "hikey960", "v": 2}
        assert "provisioned_at" in board.info
