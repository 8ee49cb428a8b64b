"""The scoreboard as a table maintained per configuration (migration 0013, issue #20): after every way the store
changes (loads in any order and at once, newer and older results, tf references appearing on another board, board
figures, ``requestflow rm``, archive import) it equals ``scoreboard_live`` row for row, and a change rewrites only
the rows it changes. The writer maintains it through ``scoreboard_update`` and cannot write it otherwise. An
upgrade of a store made at 0012 keeps its rows, and so does the downgrade."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from requestflow.results import remove, roles
from requestflow.results.archive_export import export
from requestflow.results.archive_import import import_archive
from requestflow.results.boards import set_board
from requestflow.results.database import alembic_config, sqlalchemy_url, upgrade
from requestflow.results.load import load_documents, load_one, upsert_board
from tests.databases import throwaway_database
from tests.scoreboard_seed import Seed, documents, templates

XLA = {"graph": "tf.function", "jit_compile": True}
# one reference group (0.25_128, fp32 weights, 500 images) on three boards, with an XLA tf row that is no reference,
# the same configurations on 50 images, and configurations with no reference at all
SEEDS = (
    Seed("a", "mobilenet-v1-0.25-128", "tf", "fp32", 0.0030, 0.400),
    Seed("b", "mobilenet-v1-0.25-128", "tflite", "fp32", 0.0020, 0.380),
    Seed("c", "mobilenet-v1-0.25-128", "tf", "fp32", 0.0040, 0.410, variant=XLA),
    Seed("c", "mobilenet-v1-0.25-128", "tf", "fp32", 0.0035, 0.395),
    Seed("b", "mobilenet-v1-0.25-128", "tflite", "fp32", 0.0020, 0.360, images=50),
    Seed("a", "mobilenet-v1-0.25-128", "tf", "fp32", 0.0030, 0.350, images=50),
    Seed("b", "mobilenet-v1-0.5-160", "tflite", "uint8", 0.0050, 0.580),
    Seed("a", "mobilenet-v1-0.5-160", "tf", "fp32", 0.0090, None),
    Seed("c", "mobilenet-v1-0.5-160", "tf", "fp32", None, 0.590),
)
DIFFERENCES = ("SELECT count(*) FROM ((TABLE scoreboard EXCEPT ALL TABLE scoreboard_live) UNION ALL "
               "(TABLE scoreboard_live EXCEPT ALL TABLE scoreboard)) d")


def differences(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text(DIFFERENCES)).scalar_one()


def version(seed: Seed, n: int, templates_pair) -> list[tuple[str, dict]]:
    """The documents of ``seed``'s ``n``-th measurement: other figures, started ``n`` hours later."""
    changed = dataclasses.replace(
        seed, median_s=seed.median_s and seed.median_s * (1 + 0.1 * n), top1=seed.top1 and seed.top1 + 0.01 * n)
    out = []
    for source, document in documents(changed, *templates_pair):
        for field in ("started_at", "finished_at"):
            document[field] = (dt.datetime.fromisoformat(document[field]) + dt.timedelta(hours=n)).isoformat()
        out.append((f"{source} #{n}", document))
    return out


def row_versions(engine, board: str) -> dict[tuple, str]:
    """(point_id, image_set) -> the row version (xmin) of ``board``'s scoreboard rows: it changes when a row is
    written again."""
    with engine.connect() as connection:
        return {(p, i): x for p, i, x in connection.execute(text(
            "SELECT point_id, image_set, xmin::text FROM scoreboard WHERE board = :b"), {"b": board})}


@pytest.fixture(scope="module")
def pair(models_dir):
    return templates(models_dir)


@pytest.fixture
def owner():
    with throwaway_database() as url:
        yield sqlalchemy_url(url)


class TestTheTableEqualsTheLiveView:
    def test_after_loads_in_any_order_and_at_once_as_the_writer_and_after_rm_and_board_figures(self, owner, pair):
        writer = roles.writer_engine(owner)
        loads = [(seed.board, docs) for seed in SEEDS for n in range(3) for docs in [version(seed, n, pair)]]
        random.Random(20).shuffle(loads)  # older results after newer ones, references before their rows...
        for board, docs in loads[:14]:
            load_documents(writer, docs, board=board)
            assert differences(writer) == 0, (board, [source for source, _ in docs])
        errors: list[Exception] = []

        def work(part: list) -> None:
            try:
                for board, docs in part:
                    load_documents(writer, docs, board=board, sweep=f"sweep-{board}")
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(loads[14 + i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and differences(writer) == 0
        with writer.connect() as connection:
            rows = connection.execute(text("SELECT count(*), count(reference_top1) FROM scoreboard")).one()
        assert rows == (len(SEEDS), 7)  # 0.25_128's rows on 500 and 50 images, and c's 0.5_160 tf (its own)

        set_board(writer, "b", price_usd=80, service_life_years=2, peak_power_w=6.5)
        assert differences(writer) == 0
        with writer.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM scoreboard WHERE board = 'b' AND "
                                           "energy_est_j = 6.5 * latency_median_s")).scalar_one() == 3
        remove.remove(writer, remove.plan(writer, {"board": ["a"]}))  # tf's references of board b's rows go
        assert differences(writer) == 0
        with writer.connect() as connection:
            assert connection.execute(text("SELECT board, image_count, reference_top1 FROM scoreboard "
                                           "WHERE board = 'b' AND precision = 'fp32' ORDER BY 2")).all() \
                == [("b", 50, None), ("b", 500, pytest.approx(0.415))]  # c's graph tf, its latest (n = 2)
        writer.dispose()


class TestOnlyWhatChangedIsWritten:
    def test_a_load_rewrites_its_configurations_rows_and_those_whose_reference_it_changes(self, owner, pair):
        engine = create_engine(owner)
        for seed in SEEDS:
            load_documents(engine, version(seed, 0, pair), board=seed.board)
        before = {board: row_versions(engine, board) for board in "abc"}
        xla = SEEDS[2]
        load_documents(engine, version(xla, 1, pair), board="c")  # not a reference: nothing else moves
        assert row_versions(engine, "a") == before["a"] and row_versions(engine, "b") == before["b"]
        after_c = row_versions(engine, "c")
        assert sum(after_c[k] != v for k, v in before["c"].items()) == 1
        load_documents(engine, version(SEEDS[0], 1, pair), board="a")  # a newer tf reference: 500 images, 0.41
        b = row_versions(engine, "b")
        moved = {k for k, v in before["b"].items() if b[k] != v}
        # b's 0.25_128 tflite configuration (checked against 0.41 on 500 images: its rows are computed together,
        # the 50-image one too), not its 0.5_160 one
        assert len(moved) == 2 and len({point for point, _ in moved}) == 1 and differences(engine) == 0
        assert row_versions(engine, "c") != after_c  # c's rows of that group (the XLA and the graph rows)
        engine.dispose()


class TestArchiveImport:
    def test_an_import_and_an_import_changing_a_boards_figures_keep_it_equal(self, owner, pair, tmp_path):
        source = create_engine(owner)
        for seed in SEEDS:
            load_documents(source, version(seed, 0, pair), board=seed.board)
        set_board(source, "b", price_usd=100, service_life_years=3)
        export(source, tmp_path / "one.zip")
        set_board(source, "b", price_usd=50)
        export(source, tmp_path / "two.zip")
        source.dispose()
        with throwaway_database() as url:
            target = create_engine(sqlalchemy_url(url))
            import_archive(target, tmp_path / "one.zip")
            assert differences(target) == 0
            report = import_archive(target, tmp_path / "two.zip", update_boards=True)
            assert report.boards_updated == ["b"] and differences(target) == 0
            with target.connect() as connection:
                costs = connection.execute(text("SELECT cost_per_million_images_usd / latency_median_s "
                                                "FROM scoreboard WHERE board = 'b' AND latency_median_s > 0"))
                prices = [c * 3 * 365.25 * 86400 / 1e6 for c in costs.scalars()]
            assert len(prices) == 3 and prices == [pytest.approx(50)] * 3  # 100 in the first archive
            target.dispose()


class TestPrivileges:
    def test_the_writer_maintains_it_only_through_its_function_and_the_reader_not_at_all(self, owner):
        engine = create_engine(owner)
        with engine.connect() as connection:
            assert connection.execute(text(
                "SELECT has_table_privilege('requestflow_writer', 'scoreboard', 'SELECT'), "
                "has_table_privilege('requestflow_writer', 'scoreboard', 'INSERT, UPDATE, DELETE, TRUNCATE'), "
                "has_function_privilege('requestflow_writer', 'scoreboard_update(text[])', 'EXECUTE'), "
                "has_function_privilege('requestflow_reader', 'scoreboard_update(text[])', 'EXECUTE'), "
                "has_function_privilege('public', 'scoreboard_update(text[])', 'EXECUTE')")).one() \
                == (True, False, True, False, False)
        engine.dispose()
        writer = roles.writer_engine(owner)
        with pytest.raises(Exception, match="permission denied for table scoreboard"), writer.begin() as connection:
            connection.execute(text("DELETE FROM scoreboard"))
        writer.dispose()
        reader = roles.reader_engine(owner)
        with pytest.raises(Exception, match="permission denied for function scoreboard_update"), \
                reader.begin() as connection:
            connection.execute(text("SELECT scoreboard_update(ARRAY['x'])"))
        reader.dispose()


class TestMigration0013:
    def test_an_upgrade_from_0012_keeps_every_row_and_so_does_the_downgrade(self, pair):
        with throwaway_database(schema=False) as url:
            url = sqlalchemy_url(url)
            upgrade(url, revision="0012")
            engine = create_engine(url)
            with engine.begin() as connection:  # loaded as the code of 0012 did: rows, then a REFRESH
                for seed in SEEDS:
                    board_id = upsert_board(connection, seed.board)
                    for _, document in version(seed, 0, pair):
                        load_one(connection, document, seed.board, board_id, None)
                connection.exec_driver_sql("REFRESH MATERIALIZED VIEW scoreboard")

            def rows() -> tuple[list, list]:
                with engine.connect() as connection:
                    return tuple(sorted(map(tuple, connection.execute(text(f"SELECT * FROM {view}"))), key=repr)
                                 for view in ("scoreboard", "pareto_frontier"))

            at_0012 = rows()
            assert len(at_0012[0]) == len(SEEDS) and at_0012[1]
            upgrade(url, revision="0013")  # (later revisions add columns: test_scoreboard_energy.py)
            assert rows() == at_0012 and differences(engine) == 0
            with engine.begin() as connection:
                command.downgrade(alembic_config(url, connection), "0012")
            with engine.connect() as connection:
                assert connection.execute(text("SELECT count(*) FROM pg_matviews WHERE matviewname = 'scoreboard' "
                                               "UNION ALL SELECT count(*) FROM pg_proc "
                                               "WHERE proname = 'scoreboard_update'")).scalars().all() == [1, 0]
            assert rows() == at_0012
            upgrade(url, revision="0013")
            assert rows() == at_0012
            engine.dispose()
