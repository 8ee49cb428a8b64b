"""Regression detection, in the real PostgreSQL server (a throwaway database per test).

The detector's statistics are tested on GENERATED timings (``tests/generated_runs.py``): documents with the
structure of a real run of the runner (``requestflow run``, tflite, mobilenet-v1-0.25-128, performance, 200 timed
runs) whose samples are drawn, seeded, from a known distribution. The history is 4 such runs at 0.98-1.02 times one
level, loaded as separate sweeps; a run at 1.2x that level is a 20% regression and must be found, runs at the
same level (other seeds) must be silent. Both hold or fail the same way on every machine: two REAL runs minutes apart
differ by the machine's drift, which on a shared machine passes the detector's 5% minimum effect (CI of 5e27afd:
6.2%), so they are no ground truth for a 20% step or for "the same level".

``TestRealRuns`` keeps the detector on real runner output, with an effect far above any drift: a real run made 3x
slower is found against a history of 4 real runs.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from requestflow.cli import main
from requestflow.errors import UserError
from requestflow.results import regressions
from requestflow.results.database import check, sqlalchemy_url
from requestflow.results.query import read_only
from requestflow.results.stats import SLOWER, compare_samples
from tests.asgi import html_get, page_app
from tests.databases import throwaway_database
from tests.generated_runs import (
    LEVEL,
    at,
    generated,
    generated_history,
    latencies,
    load_history,
    load_sweep,
    samples_of,
    with_samples,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "mobilenet-v1-0.25-128"
WEIGHTS = "mobilenet_v1_0.25_128_quant.tflite"
HISTORY_RUNS = 4  # real runs: TestRealRuns' history; one more real run is the "new" one
REPETITIONS = 200
CPU = str(max(os.sched_getaffinity(0)))  # one CPU, one thread: the history's noise is the machine's, not scheduling


# -- real documents and what the tests do to them ------------------------------------------------------------------
def record(models_dir: Path, out: Path, mode: str = "performance") -> dict:
    """One real run of ``requestflow run`` (this checkout's CLI, in this process): its result document."""
    args = ["run", "--backend", "tflite", "--model", MODEL, "--mode", mode, "--weights", str(models_dir / WEIGHTS),
            "--offline", "--quiet", "--out", str(out)]
    args += (["--repetitions", str(REPETITIONS), "--warmup", "20", "--threads", "1", "--cpus", CPU]
             if mode == "performance" else ["--limit", "20"])
    assert main(args) == 0
    return json.loads(out.read_text())


def record_history(models_dir: Path, folder: Path) -> dict:
    """``runs``: HISTORY_RUNS + 1 real performance documents, recorded one after the other; ``accuracy``: one real
    accuracy document."""
    record(models_dir, folder / "warm-up.json")  # the first run in this process pays its imports' first calls
    return {"runs": [record(models_dir, folder / f"performance-{i}.json") for i in range(HISTORY_RUNS + 1)],
            "accuracy": record(models_dir, folder / "accuracy.json", mode="accuracy")}


def scaled(document: dict, factor: float) -> dict:
    """A copy whose every latency sample (and statistic) is ``factor`` times the original's."""
    copied = copy.deepcopy(document)
    p = copied["performance"]
    p["samples"] = [s * factor for s in p["samples"]]
    for key in ("min", "median", "mean", "p90", "p99", "max", "stdev"):
        if p.get(key) is not None:
            p[key] *= factor
    p["throughput_ips"] /= factor
    return copied


def less_accurate(document: dict) -> dict:
    """A copy where one image that was right (top-1 and top-5) is now wrong: top-1 and top-5 each one image lower."""
    copied = copy.deepcopy(document)
    prediction = next(p for p in copied["predictions"] if p["top5"][0][0] == p["label"])
    taken = {c for c, _ in prediction["top5"]}
    prediction["top5"][0][0] = next(c for c in range(1000) if c not in taken)
    a = copied["accuracy"]
    a["correct_top1"] -= 1
    a["correct_top5"] -= 1
    a["top1"], a["top5"] = a["correct_top1"] / a["n"], a["correct_top5"] / a["n"]
    return copied


def planted(template: dict, factor: float, hours: float, seed: int = 100) -> dict:
    """A generated run ``factor`` times the history's level, ``hours`` after the history began (the history's 4
    runs are at hours 0-3)."""
    return generated(template, LEVEL * factor, seed=seed, hours=hours)


def count(engine, table: str) -> int:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


# -- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(models_dir, tmp_path_factory) -> dict:
    return record_history(models_dir, tmp_path_factory.mktemp("recorded"))


@pytest.fixture(scope="module")
def template(recorded) -> dict:
    """The real performance document every generated one is a copy of (its samples replaced)."""
    return recorded["runs"][0]


@pytest.fixture(scope="module")
def history(template) -> list[dict]:
    """4 generated runs at LEVEL x (1.00, 1.02, 0.98, 1.01), an hour apart."""
    return generated_history(template)


@pytest.fixture
def database():
    with throwaway_database() as url:
        yield url


@pytest.fixture
def store(database):
    engine = create_engine(sqlalchemy_url(database))
    yield engine
    engine.dispose()


# -- the tests -----------------------------------------------------------------------------------------------------
class TestRealRuns:
    """Real runner output. Only effects far above the machine's drift are asserted here (see the module's doc)."""

    def test_the_recorded_runs_are_real_runner_output(self, recorded):
        runs = recorded["runs"]
        assert len(runs) == HISTORY_RUNS + 1
        assert all(len(r["performance"]["samples"]) == REPETITIONS and r["status"] == "ok" for r in runs)
        assert len({r["started_at"] for r in runs}) == len(runs)  # five separate runs, in order
        assert [r["started_at"] for r in runs] == sorted(r["started_at"] for r in runs)
        assert len({json.dumps(r["performance"]["samples"]) for r in runs}) == len(runs)  # real, different noise

    def test_a_real_run_made_three_times_slower_is_found_against_a_real_history(self, store, recorded):
        """The new real run with every sample x3, after 4 real runs. Runs of the same code minutes apart differ by
        a few percent, by tens of percent on a busy machine; the detector raises its threshold to the history's own
        run-to-run spread, and x3 stays found unless real runs of unchanged code differ by about 3x (a slowdown
        that large is tests/results/test_replay.py's deliberate interference, not drift)."""
        runs, new_run = recorded["runs"][:HISTORY_RUNS], recorded["runs"][HISTORY_RUNS]
        history = [load_sweep(store, f"real-{i + 1}", run)[0] for i, run in enumerate(runs)]
        (result_id,) = load_sweep(store, "real-planted", scaled(new_run, 3.0))  # recorded after the others
        report = regressions.detect(store, "real-planted")
        assert (report.checked, report.stored, len(report.findings)) == (1, 1, 1), report.summary()
        finding = report.findings[0]
        assert (finding.metric, finding.change, finding.result_id) == ("latency", "slower", result_id)
        assert sorted(finding.baseline_result_ids) == sorted(history)
        assert finding.old_value == pytest.approx(float(np.median(samples_of(*runs))))
        assert finding.new_value == pytest.approx(3 * float(np.median(new_run["performance"]["samples"])))
        assert 1.5 < finding.ratio < 6  # 3x, give or take the drift between the real runs (up to 2x either way)


class TestLatency:
    def test_a_planted_twenty_percent_regression_is_found(self, store, history, template):
        history_ids = load_history(store, history)
        new = planted(template, 1.2, hours=10)
        (planted_id,) = load_sweep(store, "planted", new)
        report = regressions.detect(store, "planted")
        assert (report.checked, report.stored, len(report.findings)) == (1, 1, 1)
        finding = report.findings[0]
        assert (finding.metric, finding.change, finding.sweep, finding.result_id) == ("latency", "slower", "planted",
                                                                                      planted_id)
        assert finding.ratio == pytest.approx(1.2, rel=0.02) and finding.p_value < 1e-10
        assert sorted(finding.baseline_result_ids) == sorted(history_ids)
        assert (finding.n_old, finding.n_new) == (len(history) * REPETITIONS, REPETITIONS)
        assert finding.old_value == pytest.approx(float(np.median(samples_of(*history))))
        assert finding.new_value == pytest.approx(float(np.median(new["performance"]["samples"])))
        assert not finding.acknowledged and report.unacknowledged == [finding]
        line = finding.describe()
        assert line.startswith(f"#{finding.id} local: {MODEL} tflite") and "latency slower, median" in line
        assert f" -> {finding.new_value * 1e3:.4g} ms" in line and "p = " in line
        assert "requestflow regressions ack ID" in report.summary()

    def test_runs_at_the_same_level_are_silent(self, store, history, template):
        load_history(store, history)
        for seed in range(5):  # five more nights at the history's level, other noise: nothing to report
            sweep = f"same-{seed}"
            load_sweep(store, sweep, generated(template, LEVEL, seed=seed, hours=10 + seed))
            report = regressions.detect(store, sweep)
            assert (report.checked, report.unchanged, report.findings) == (1, 1, []), report.summary()
        # and against this same history (now with the silent runs in it), a 20% step is still found
        load_sweep(store, "planted", planted(template, 1.2, hours=20))
        assert [f.change for f in regressions.detect(store, "planted").findings] == ["slower"]
        assert count(store, "regression_detections") == 1

    def test_a_step_within_the_historys_own_run_to_run_spread_is_silent(self, store, template):
        # runs of unchanged code 8% apart: a 6.5% step is over the 5% minimum effect and significant, but no more
        # than the history already varies: silent; 20% is over both: found
        noisy = generated_history(template, levels=(0.92, 1.00, 1.08, 1.00))
        load_history(store, noisy)
        step = planted(template, 1.065, hours=10)
        assert compare_samples(samples_of(*noisy), step["performance"]["samples"]).verdict == SLOWER  # 5% alone
        load_sweep(store, "within", step)
        assert regressions.detect(store, "within").findings == []
        load_sweep(store, "beyond", planted(template, 1.2, hours=11))
        assert [f.change for f in regressions.detect(store, "beyond").findings] == ["slower"]

    def test_a_moved_median_without_a_significant_shift_is_silent(self, store, history, template):
        # 105 runs at 1.2x the level and 95 at 0.6x: the median is 14% up, but the samples as a whole are not
        # shifted (Mann-Whitney p about 0.26): both conditions are needed, a ratio of medians alone is not a change
        mixed = latencies(105, LEVEL * 1.2, seed=7) + latencies(95, LEVEL * 0.6, seed=8)
        new = at(with_samples(template, np.random.default_rng(9).permutation(mixed).tolist()), 10)
        verdict = compare_samples(samples_of(*history), new["performance"]["samples"])
        assert verdict.ratio > 1.1 and verdict.p_value > 0.1  # what this test is about
        load_history(store, history)
        load_sweep(store, "mixed", new)
        report = regressions.detect(store, "mixed")
        assert (report.checked, report.findings) == (1, []), report.summary()

    def test_a_speedup_is_recorded_only_when_asked(self, store, history, template):
        load_history(store, history)
        load_sweep(store, "faster", planted(template, 0.7, hours=10))
        assert regressions.detect(store, "faster").findings == []
        assert [f.change for f in regressions.detect(store, "faster", report_faster=True).findings] == ["faster"]

    def test_a_point_without_history_is_reported_as_such(self, store, history):
        load_sweep(store, "first", history[0])
        report = regressions.detect(store, "first")
        assert report.checked == 0 and report.findings == []
        assert report.no_history == [f"local: {MODEL} tflite uint8 performance (threads 1): latency"]

    def test_results_of_the_same_sweep_are_not_each_others_history(self, store, history, template):
        load_sweep(store, "one-sweep", history[0], planted(template, 1.2, hours=10))
        assert regressions.detect(store, "one-sweep").checked == 0


class TestAccuracy:
    def test_any_change_of_top1_or_top5_is_found_and_an_equal_result_is_not(self, store, recorded):
        accuracy = recorded["accuracy"]
        (old,) = load_sweep(store, "acc-1", accuracy)
        load_sweep(store, "acc-2", at(accuracy, 10))
        assert regressions.detect(store, "acc-2").findings == []
        (new,) = load_sweep(store, "acc-3", at(less_accurate(accuracy), 20))
        report = regressions.detect(store, "acc-3")
        a, n = accuracy["accuracy"], accuracy["accuracy"]["n"]
        assert [(f.metric, f.change, f.old_value, f.new_value, f.n_new, f.p_value) for f in report.findings] == [
            ("top1", "lower", a["top1"], (a["correct_top1"] - 1) / n, n, None),
            ("top5", "lower", a["top5"], (a["correct_top5"] - 1) / n, n, None)]
        assert all(f.result_id == new and len(f.baseline_result_ids) == 1 for f in report.findings)
        assert report.findings[0].baseline_result_ids != [old]  # the latest earlier result: acc-2's
        assert "top1 lower, 0." in report.findings[0].describe()


class TestAcknowledging:
    def test_an_acknowledged_step_stops_alerting_and_a_further_step_alerts_again(self, store, history, template):
        load_history(store, history)
        load_sweep(store, "step", planted(template, 1.2, hours=10))
        (finding,) = regressions.detect(store, "step").findings
        ack = regressions.acknowledge(store, finding.id, "XNNPACK disabled on purpose", by="tester")
        assert (ack.acknowledged, ack.silenced, ack.still_open) == ([finding.id], [], [])
        assert regressions.list_regressions(store)[1] == []
        columns, rows = regressions.list_regressions(store, include_acknowledged=True)
        row = dict(zip(columns, rows[0], strict=True))
        assert (row["id"], row["acknowledged"], row["ack_reason"]) == (finding.id, True, "XNNPACK disabled on purpose")
        again = regressions.detect(store, "step")  # detecting again: the same change, now acknowledged
        assert (again.checked, again.stored, [(f.id, f.acknowledged) for f in again.findings]) == (
            1, 0, [(finding.id, True)]) and again.unacknowledged == []

        # the next night at the new level (other noise): the same step, compared from the acknowledged result on:
        # silent
        (again_id,) = load_sweep(store, "step-again", planted(template, 1.2, hours=20, seed=101))
        report = regressions.detect(store, "step-again")
        assert (report.checked, report.findings) == (1, [])
        # another 20% on top of the accepted level: a new step, found
        load_sweep(store, "further", planted(template, 1.44, hours=30, seed=102))
        (further,) = regressions.detect(store, "further").findings
        assert further.change == "slower" and further.ratio == pytest.approx(1.2, rel=0.02)
        assert sorted(further.baseline_result_ids) == [finding.result_id, again_id] and not further.acknowledged

    def test_acknowledging_silences_later_detections_of_the_same_step_but_not_a_further_one(self, store, history,
                                                                                          template):
        load_history(store, history)
        found = {}
        # three nights detected before anyone acknowledges: two at +20%, then one at +44%; each is compared with
        # the clean history (an unacknowledged regression is never a baseline)
        for hours, sweep, seed, factor in ((10, "n1", 100, 1.2), (20, "n2", 101, 1.2), (30, "n3", 102, 1.44)):
            load_sweep(store, sweep, planted(template, factor, hours, seed))
            (found[sweep],) = regressions.detect(store, sweep).findings
        assert found["n2"].baseline_result_ids == found["n1"].baseline_result_ids
        ack = regressions.acknowledge(store, found["n1"].id, "new TFLite release", by="tester")
        assert (ack.acknowledged, ack.silenced, ack.still_open) == ([found["n1"].id], [found["n2"].id],
                                                                    [found["n3"].id])
        _, open_rows = regressions.list_regressions(store, columns=("id",))
        assert open_rows == [(found["n3"].id,)]
        assert "later regressions of the same step" in ack.summary() and "still open" in ack.summary()

    @pytest.mark.parametrize("regression_id, reason, message", [
        (999999, "why", "no regression #999999"),
        (None, "   ", "a reason is needed"),
        ("7", "why", "a regression id is a whole number"),
    ])
    def test_bad_acknowledgements_are_refused_and_store_nothing(self, store, history, template, regression_id,
                                                                 reason, message):
        load_history(store, history)
        load_sweep(store, "planted", planted(template, 1.2, hours=10))
        (finding,) = regressions.detect(store, "planted").findings
        with pytest.raises(UserError, match=message):
            regressions.acknowledge(store, finding.id if regression_id is None else regression_id, reason)
        assert count(store, "regression_acks") == 0

    def test_acknowledging_twice_names_the_first_acknowledgement(self, store, history, template):
        load_history(store, history)
        load_sweep(store, "planted", planted(template, 1.2, hours=10))
        (finding,) = regressions.detect(store, "planted").findings
        regressions.acknowledge(store, finding.id, "expected", by="alice")
        with pytest.raises(UserError, match=rf"#{finding.id} is already acknowledged \(ack #\d+ by alice .*expected"):
            regressions.acknowledge(store, finding.id, "again")
        assert count(store, "regression_acks") == 1


class TestStoring:
    def test_detecting_twice_stores_nothing_new(self, store, history, template):
        load_history(store, history)
        load_sweep(store, "planted", planted(template, 1.2, hours=10))
        first = regressions.detect(store, "planted")
        with store.connect() as connection:
            before = connection.execute(text("SELECT * FROM regression_detections ORDER BY id")).all()
        second = regressions.detect(store, "planted")
        with store.connect() as connection:
            after = connection.execute(text("SELECT * FROM regression_detections ORDER BY id")).all()
        assert (first.stored, second.stored) == (1, 0) and before == after and len(after) == 1
        assert [f.id for f in second.findings] == [f.id for f in first.findings]
        assert first.findings[0].new and not second.findings[0].new

    def test_a_failure_midway_stores_nothing(self, store, recorded, history, template, monkeypatch):
        load_history(store, history)
        load_sweep(store, "two", planted(template, 1.2, hours=10), less_accurate(at(recorded["accuracy"], 10)))
        load_sweep(store, "acc-history", at(recorded["accuracy"], 5))
        real = regressions.compare
        calls = []

        def fails_the_second_time(*args, **kwargs):
            calls.append(args[2])
            if len(calls) == 2:
                raise RuntimeError("connection lost")
            return real(*args, **kwargs)

        monkeypatch.setattr(regressions, "compare", fails_the_second_time)
        with pytest.raises(RuntimeError, match="connection lost"):
            regressions.detect(store, "two")
        assert count(store, "regression_detections") == 0
        monkeypatch.setattr(regressions, "compare", real)
        assert {f.metric for f in regressions.detect(store, "two").findings} == {"latency", "top1", "top5"}

    def test_the_view_names_everything_and_the_schema_has_no_drift(self, store, database, history, template):
        check(sqlalchemy_url(database))
        load_history(store, history)
        load_sweep(store, "planted", planted(template, 1.2, hours=10))
        regressions.detect(store, "planted")
        columns, rows = read_only(store, "SELECT board, model, backend, variant, precision, mode, threads, metric, "
                                         "change, sweep, acknowledged, library FROM regressions")
        row = dict(zip(columns, rows[0], strict=True))
        assert json.loads(row.pop("variant")) == template["context"]["backend"]["variant"]
        assert row == {"board": "local", "model": MODEL, "backend": "tflite", "precision": "uint8",
                       "mode": "performance", "threads": 1, "metric": "latency", "change": "slower",
                       "sweep": "planted", "acknowledged": False, "library": template["context"]["backend"]["library"]}


class TestBadInput:
    def test_an_unknown_sweep_is_named_with_the_latest_ones(self, store, history):
        load_history(store, history)
        with pytest.raises(UserError, match=r"no sweep 'nightly-42' in the results store; the latest: history-4, "):
            regressions.detect(store, "nightly-42")
        with pytest.raises(UserError, match="no sweep 'nightly-42'"):
            regressions.list_regressions(store, "nightly-42")
        assert count(store, "regression_detections") == 0

    @pytest.mark.parametrize("kwargs, message", [
        ({"window": 0}, "window must be a whole number of results >= 1"),
        ({"alpha": 0}, "alpha must be between 0 and 1"),
        ({"min_effect": -1}, "min_effect must be a fraction >= 0"),
    ])
    def test_bad_settings_are_named(self, store, kwargs, message):
        with pytest.raises(UserError, match=message):
            regressions.detect(store, "any", **kwargs)


class TestTheCommands:
    def test_detect_list_and_acknowledge(self, run_cli, store, database, history, template, tmp_path):
        load_history(store, history)
        path = tmp_path / "planted.json"
        path.write_text(json.dumps(planted(template, 1.2, hours=10)))
        assert run_cli("load", path, "--sweep", "nightly-7", "--db", database)[0] == 0

        code, out, _ = run_cli("regressions", "detect", "--sweep", "nightly-7", "--db", database)
        assert code == 1 and "1 regression(s) (1 new), 1 unacknowledged" in out and "latency slower" in out
        code, out, _ = run_cli("regressions", "detect", "--sweep", "nightly-7", "--format", "json", "--db", database)
        report = json.loads(out)
        assert code == 1 and report["stored"] == 0 and report["findings"][0]["change"] == "slower"
        regression_id = report["findings"][0]["id"]

        code, out, _ = run_cli("regressions", "--format", "csv", "--db", database)
        assert code == 0 and out.splitlines()[0].startswith("id,board,model,backend,variant,precision,mode")
        assert out.splitlines()[1].startswith(f"{regression_id},local,{MODEL},tflite,")
        code, out, _ = run_cli("regressions", "--sweep", "nightly-7", "--format", "json", "--db", database)
        assert [r["id"] for r in json.loads(out)] == [regression_id]

        code, out, _ = run_cli("regressions", "ack", regression_id, "--reason", "expected: new delegate", "--by",
                               "bob", "--db", database)
        assert code == 0 and f"regression #{regression_id} acknowledged" in out
        assert run_cli("regressions", "--db", database)[1].strip().endswith("(0 rows)")
        code, out, _ = run_cli("regressions", "--all", "--format", "json", "--db", database)
        assert json.loads(out)[0]["ack_reason"] == "expected: new delegate"
        code, out, _ = run_cli("regressions", "--db", database, "detect", "--sweep", "nightly-7")  # --db first
        assert code == 0 and "0 unacknowledged" in out

    @pytest.mark.parametrize("argv, message", [
        (["regressions", "detect", "--sweep", "nope"], "no sweep 'nope' in the results store"),
        (["regressions", "detect"], "the following arguments are required: --sweep"),
        (["regressions", "detect", "--sweep", "x", "--alpha", "1.5"], "alpha must be between 0 and 1"),
        (["regressions", "ack", "12"], "the following arguments are required: --reason"),
        (["regressions", "ack", "twelve", "--reason", "r"], "argument ID: invalid int value: 'twelve'"),
        (["regressions", "ack", "12", "--reason", "r"], "no regression #12"),
        (["regressions", "--sweep", "nope"], "no sweep 'nope'"),
        (["regressions", "silence"], "invalid choice: 'silence'"),
    ])
    def test_bad_input_is_one_clear_line(self, run_cli, database, argv, message):
        code, out, err = run_cli(*argv, "--db", database)
        assert code == 2 and message in err and err.startswith("requestflow: error: ") and "Traceback" not in err
        assert err.count("\n") == 1


class TestTheScoreboardPage:
    @pytest.fixture
    def page(self, monkeypatch, store):
        """The plugin's app in this process on ``store`` (tests/asgi.py)."""
        return page_app(monkeypatch, store)

    def test_unacknowledged_regressions_are_listed_until_acknowledged(self, page, store, history, template):
        load_history(store, history)
        load_sweep(store, "planted", planted(template, 1.2, hours=10))
        (finding,) = regressions.detect(store, "planted").findings
        status, html = html_get(page, "/scoreboard/")
        assert status == 200
        section = html[html.index('<section id="regressions"'):]
        section = section[:section.index("</section>")]
        assert "1</span> unacknowledged regression(s)" in section
        assert f'data-regression-id="{finding.id}"' in section and f'data-point-id="{finding.point_id}"' in section
        assert ">slower<" in section and f"{finding.old_value * 1e3:.4g} ms -&gt; {finding.new_value * 1e3:.4g} ms" \
            in section and ">planted<" in section
        status, html = html_get(page, "/scoreboard/?backend=tf")  # a selection without the point: not listed
        assert status == 200 and "No unacknowledged regression among these points" in html
        regressions.acknowledge(store, finding.id, "expected", by="tester")
        status, html = html_get(page, "/scoreboard/")
        assert status == 200 and "No unacknowledged regression among these points" in html
        assert f'data-regression-id="{finding.id}"' not in html
