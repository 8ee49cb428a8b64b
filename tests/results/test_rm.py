"""``requestflow rm`` (requestflow.results.remove) on the real PostgreSQL server: what goes, what stays, the views
after it, the refusals, the confirmation, and a load running at the same time."""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
from sqlalchemy import text

from requestflow.errors import UserError
from requestflow.results import remove
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.results import test_results
from tests.results.test_results import counts

documents = test_results.documents  # real runner documents (a session fixture of that module)
database, store = test_results.database, test_results.store


def stale(engine) -> list:
    """Rows where the materialized scoreboard and its live definition differ (none when it was refreshed)."""
    return read_only(engine, "(SELECT * FROM scoreboard EXCEPT SELECT * FROM scoreboard_live) UNION ALL "
                             "(SELECT * FROM scoreboard_live EXCEPT SELECT * FROM scoreboard)")[1]


def boards_on_scoreboard(engine) -> list[str]:
    return sorted(board for (board,) in read_only(engine, "SELECT board FROM scoreboard")[1])


def older(document: dict, day: str) -> dict:
    """The same run, started and finished on another day (another document, another result of the same point)."""
    out = copy.deepcopy(document)
    out["started_at"], out["finished_at"] = f"{day}T10:00:00.000+00:00", f"{day}T10:01:00.000+00:00"
    return out


@pytest.fixture
def seeded(store, documents):
    """Board a: tflite's performance and accuracy (sweep s1) and an older performance run; board b: tf's pair
    (sweep s2), a point failure of s2."""
    from requestflow.results.sweeps import record_failure

    load_documents(store, [("p", documents["perf_tflite"]), ("a", documents["acc_tflite"])], board="a", sweep="s1")
    load_documents(store, [("old", older(documents["perf_tflite"], "2026-01-02"))], board="a")
    load_documents(store, [("p", documents["perf_tf"]), ("a", documents["acc_tf"])], board="b", sweep="s2")
    record_failure(store, "s2", None, "b", {"model": "mobilenet-v1-0.5-128", "backend": "tf", "mode": "performance"},
                   "RuntimeError", "board fell over", 3)
    return store


class TestWhatGoes:
    def test_a_board_filter_removes_its_results_samples_and_predictions_and_nothing_else(self, seeded, documents):
        before = counts(seeded)
        planned = remove.plan(seeded, {"board": ["a"]})
        tflite_samples = len(documents["perf_tflite"]["performance"]["samples"])
        assert planned.counts["results"] == 3 and planned.counts["samples"] == 2 * tflite_samples
        assert planned.counts["predictions"] == len(documents["acc_tflite"]["predictions"]) == 40
        assert planned.counts["point_failures"] == 0
        assert counts(seeded) == before  # planning writes nothing
        removed = remove.remove(seeded, planned)
        assert removed == planned.counts
        after = counts(seeded)
        assert after["results"] == before["results"] - 3
        assert after["samples"] == before["samples"] - 2 * tflite_samples
        assert after["predictions"] == before["predictions"] - 40
        assert after["performance"] == before["performance"] - 2 and after["accuracy"] == before["accuracy"] - 1
        assert after["points"] == before["points"] and after["boards"] == before["boards"]  # identities stay
        assert boards_on_scoreboard(seeded) == ["b"] and stale(seeded) == []
        assert read_only(seeded, "SELECT count(*) FROM pareto_frontier WHERE board = 'a'")[1] == [(0,)]

    def test_before_removes_only_the_older_results(self, seeded, documents):
        planned = remove.plan(seeded, {"board": ["a"], "before": ["2026-02-01"]})
        assert planned.counts["results"] == 1
        remove.remove(seeded, planned)
        _, rows = read_only(seeded, "SELECT started_at::date::text FROM results r JOIN points p ON p.id = r.point_id "
                                    "JOIN boards b ON b.id = p.board_id WHERE b.name = 'a' ORDER BY 1")
        assert "2026-01-02" not in {d for (d,) in rows} and len(rows) == 2
        assert boards_on_scoreboard(seeded) == ["a", "b"] and stale(seeded) == []

    def test_a_sweep_filter_takes_its_point_failures_too(self, seeded):
        planned = remove.plan(seeded, {"sweep": ["s2"]})
        assert (planned.counts["results"], planned.counts["point_failures"]) == (2, 1)
        remove.remove(seeded, planned)
        assert counts(seeded)["results"] == 3
        assert read_only(seeded, "SELECT count(*) FROM point_failures")[1] == [(0,)]
        assert boards_on_scoreboard(seeded) == ["a"]

    def test_a_filter_a_failure_does_not_record_leaves_the_failures(self, seeded):
        planned = remove.plan(seeded, {"sweep": ["s2"], "precision": ["fp32"]})
        assert (planned.counts["results"], planned.counts["point_failures"]) == (2, 0)

    def test_filters_combine_and_a_model_filter_spares_other_models(self, seeded):
        planned = remove.plan(seeded, {"board": ["a", "b"], "model": ["mobilenet-v1-0.25-224"], "mode": ["accuracy"]})
        assert planned.counts["results"] == 1 and planned.counts["predictions"] == 40
        remove.remove(seeded, planned)
        _, rows = read_only(seeded, "SELECT board, top1 FROM scoreboard ORDER BY board")
        assert rows[0][1] is not None and rows[1] == ("b", None)  # b's tf row lost its accuracy only

    def test_the_results_of_a_read_only_reference_board_are_kept_and_named(self, store, documents):
        load_documents(store, [("p", documents["perf_tf"])], board="published",
                       reference={"kind": "reference", "read_only": True, "info": {"sha256": "f" * 64}})
        planned = remove.plan(store, {"backend": ["tf"]})
        assert planned.empty and planned.kept_read_only == {"published": 1}
        assert "kept: 1 result(s) of the read-only reference board published" in planned.describe()

    def test_a_regression_acknowledged_on_a_removed_result_is_unacknowledged_again(self, seeded):
        with seeded.begin() as connection:
            a_result, newer = connection.execute(text(
                "SELECT r.id FROM results r JOIN points p ON p.id = r.point_id JOIN boards b ON b.id = p.board_id "
                "WHERE b.name = 'a' AND p.mode = 'performance' ORDER BY r.started_at")).scalars().all()
            point = connection.execute(text("SELECT point_id FROM results WHERE id = :r"), {"r": a_result}).scalar()
            ack = connection.execute(text(
                "INSERT INTO regression_acks (point_id, metric, result_id, reason, acknowledged_by) "
                "VALUES (:p, 'latency', :r, 'new kernel', 'me') RETURNING id"), {"p": point, "r": a_result}).scalar()
            for result in (a_result, newer):
                connection.execute(text(
                    "INSERT INTO regression_detections (point_id, result_id, metric, change, baseline_result_ids, "
                    "old_value, new_value, ack_id) VALUES (:p, :r, 'latency', 'slower', '{}', 1, 2, :a)"),
                    {"p": point, "r": result, "a": ack})
        planned = remove.plan(seeded, {"board": ["a"], "before": ["2026-02-01"]})
        assert planned.counts["regression_acks"] == 1 and planned.counts["regression_detections"] == 1
        assert planned.counts[remove.REACKED] == 1
        remove.remove(seeded, planned)
        _, rows = read_only(seeded, "SELECT result_id, ack_id FROM regression_detections")
        assert rows == [(newer, None)]


class TestRefusals:
    def test_no_filter_is_refused_before_anything(self, seeded):
        before = counts(seeded)
        with pytest.raises(UserError, match="needs at least one filter"):
            remove.plan(seeded, {"board": [], "before": None})
        assert counts(seeded) == before

    @pytest.mark.parametrize("filters, message", [
        ({"before": ["yesterday"]}, "--before 'yesterday': expected a date"),
        ({"colour": ["red"]}, "unknown rm filter 'colour'"),
        ({"since": ["2026-03-01"], "before": ["2026-02-01"]}, "is not before"),
    ])
    def test_bad_filters_are_named(self, seeded, filters, message):
        with pytest.raises(UserError, match=message):
            remove.plan(seeded, filters)

    def test_the_cli_without_a_filter_says_so_and_removes_nothing(self, run_cli, seeded, database):
        before = counts(seeded)
        code, _, stderr = run_cli("rm", "--yes", "--db", database)
        assert code == 2 and "needs at least one filter" in stderr and "Traceback" not in stderr
        assert counts(seeded) == before


class TestTheCommand:
    def test_dry_run_prints_the_counts_per_table_and_removes_nothing(self, run_cli, seeded, database):
        before = counts(seeded)
        code, stdout, _ = run_cli("rm", "--board", "a", "--dry-run", "--db", database)
        assert code == 0 and stdout.startswith("would remove:")
        lines = {line.split()[0]: line.split()[-1] for line in stdout.splitlines()[1:]}
        assert lines["results"] == "3" and lines["predictions"] == "40" and lines["point_failures"] == "0"
        assert counts(seeded) == before

    def test_without_a_terminal_it_refuses_unless_yes(self, run_cli, seeded, database, monkeypatch):
        monkeypatch.setattr("sys.stdin.isatty", lambda: False)
        before = counts(seeded)
        code, _, stderr = run_cli("rm", "--board", "a", "--db", database)
        assert code == 2 and "stdin is not a terminal: give --yes" in stderr
        assert counts(seeded) == before
        code, stdout, _ = run_cli("rm", "--board", "a", "--yes", "--db", database)
        assert code == 0 and "removed 3 result(s)" in stdout and "40 predictions" in stdout
        assert counts(seeded)["results"] == before["results"] - 3

    @pytest.mark.parametrize("answer, removed", [("n", False), ("", False), ("y", True)])
    def test_on_a_terminal_it_asks(self, run_cli, seeded, database, monkeypatch, answer, removed):
        monkeypatch.setattr("sys.stdin.isatty", lambda: True)
        asked = []
        monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
        before = counts(seeded)["results"]
        code, stdout, _ = run_cli("rm", "--sweep", "s2", "--db", database)
        assert asked == ["remove 2 result(s) and 1 point failure(s)? [y/N] "]
        assert (code, counts(seeded)["results"]) == ((0, before - 2) if removed else (1, before))
        assert ("nothing removed" in stdout) != removed

    def test_nothing_matching_is_said(self, run_cli, seeded, database):
        code, stdout, _ = run_cli("rm", "--board", "nowhere", "--yes", "--db", database)
        assert code == 0 and "nothing to remove" in stdout


class TestConcurrentLoads:
    def test_a_load_committing_while_rm_runs_is_on_the_scoreboard(self, seeded, documents, monkeypatch):
        """rm has deleted and updated the scoreboard but not committed; a load of another board waits for the
        scoreboard's lock. After both commit, the loaded result is stored and on the scoreboard, and the removed
        board is not."""
        hold, errors = threading.Event(), []
        real_update = remove.update_scoreboard

        def update_then_hold(connection, keys):
            real_update(connection, keys)
            assert hold.wait(60)

        monkeypatch.setattr(remove, "update_scoreboard", update_then_hold)
        planned = remove.plan(seeded, {"board": ["a"]})

        def run_rm():
            try:
                remove.remove(seeded, planned)
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        rm_thread = threading.Thread(target=run_rm)
        rm_thread.start()
        load_errors: list[Exception] = []

        def load_c():
            try:
                load_documents(seeded, [("c", documents["perf_tflite"]), ("c2", documents["acc_tflite"])], board="c")
            except Exception as exc:  # noqa: BLE001 - asserted below
                load_errors.append(exc)

        try:
            deadline = time.monotonic() + 30
            with seeded.connect() as watcher:  # rm holds the lock once it waits on `hold`
                while not watcher.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                               "AND granted")).scalar():
                    watcher.rollback()
                    assert time.monotonic() < deadline and not errors, errors
                    time.sleep(0.02)
            loader = threading.Thread(target=load_c)
            loader.start()
            with seeded.connect() as watcher:  # the load waits for rm's lock
                while not watcher.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                               "current_database() AND wait_event_type = 'Lock'")).scalar():
                    watcher.rollback()
                    assert time.monotonic() < deadline and not load_errors, load_errors
                    time.sleep(0.02)
        finally:
            hold.set()
            rm_thread.join(60)
        loader.join(60)
        assert errors == [] and load_errors == []
        assert boards_on_scoreboard(seeded) == ["b", "c"] and stale(seeded) == []
        _, rows = read_only(seeded, "SELECT count(*) FROM results r JOIN points p ON p.id = r.point_id "
                                    "JOIN boards b ON b.id = p.board_id WHERE b.name = 'c'")
        assert rows == [(2,)]

    def test_a_result_loaded_after_the_plan_is_not_removed_with_it(self, seeded, documents):
        planned = remove.plan(seeded, {"board": ["a"]})
        load_documents(seeded, [("new", older(documents["perf_tflite"], "2026-03-03"))], board="a")
        removed = remove.remove(seeded, planned)
        assert removed["results"] == 3
        _, rows = read_only(seeded, "SELECT board, sweep FROM scoreboard ORDER BY board")
        assert rows == [("a", None), ("b", "s2")]  # the new result, kept: what was counted is what went
        assert json.loads(json.dumps(stale(seeded))) == []
