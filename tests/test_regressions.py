"""Regression detection on real recorded samples, in the real PostgreSQL server (a throwaway database per test).

The history is built from real runs of the runner (``requestflow run``, tflite, mobilenet-v1-0.25-128, performance,
200 timed runs each), loaded as separate sweeps. A copy of another real run with every sample multiplied by 1.2
(re-timed, so its document hashes anew) is a planted 20% regression: it must be found; the real run itself, and
resamplings of the history's own samples, are the same noise: nothing must be found.
"""

from __future__ import annotations

import copy
import datetime as dt
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
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.databases import throwaway_database

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mobilenet-v1-0.25-128"
WEIGHTS = "mobilenet_v1_0.25_128_quant.tflite"
HISTORY_RUNS = 4  # loaded as sweeps history-1 .. history-4; one more real run is the "new" one
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


def retimed(document: dict, after: dict, minutes: float) -> dict:
    """A copy of ``document`` that started ``minutes`` after ``after`` started (a new document: a new hash)."""
    copied = copy.deepcopy(document)
    start, end = (dt.datetime.fromisoformat(document[k]) for k in ("started_at", "finished_at"))
    new_start = dt.datetime.fromisoformat(after["started_at"]) + dt.timedelta(minutes=minutes)
    copied["started_at"] = new_start.isoformat(timespec="milliseconds")
    copied["finished_at"] = (new_start + (end - start)).isoformat(timespec="milliseconds")
    return copied


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


def resampled(documents: list[dict], seed: int, like: dict) -> dict:
    """A copy of ``like`` whose samples are drawn (with replacement) from the samples of ``documents``: the same
    noise, no change."""
    pooled = np.array([s for d in documents for s in d["performance"]["samples"]])
    copied = copy.deepcopy(like)
    samples = np.random.default_rng(seed).choice(pooled, size=len(like["performance"]["samples"]))
    copied["performance"].update(samples=samples.tolist(), median=float(np.median(samples)),
                                 min=float(samples.min()), max=float(samples.max()), mean=float(samples.mean()))
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


def load_sweep(engine, sweep: str, *documents: dict) -> list[int]:
    report = load_documents(engine, [(f"{sweep}-{i}", d) for i, d in enumerate(documents)], board="local",
                            sweep=sweep)
    assert len(report.loaded) == len(documents)
    return report.result_ids


def load_history(engine, recorded: dict) -> list[int]:
    """The first HISTORY_RUNS real runs as sweeps history-1 .. history-N; their result ids."""
    return [load_sweep(engine, f"history-{i + 1}", run)[0] for i, run in enumerate(recorded["runs"][:HISTORY_RUNS])]


def count(engine, table: str) -> int:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


# -- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(models_dir, tmp_path_factory) -> dict:
    return record_history(models_dir, tmp_path_factory.mktemp("recorded"))


@pytest.fixture
def database():
    with throwaway_database() as url:
        yield url


@pytest.fixture
def store(database):
    engine = create_engine(sqlalchemy_url(database))
    yield engine
    engine.dispose()


@pytest.fixture
def new_run(recorded) -> dict:
    """The real run recorded after the history's: the next night's result, as it was measured."""
    return recorded["runs"][HISTORY_RUNS]


# -- the tests -----------------------------------------------------------------------------------------------------
class TestTheRecordedNoise:
    def test_the_history_is_real_runner_output(self, recorded):
        runs = recorded["runs"]
        assert len(runs) == HISTORY_RUNS + 1
        assert all(len(r["performance"]["samples"]) == REPETITIONS and r["status"] == "ok" for r in runs)
        assert len({r["started_at"] for r in runs}) == len(runs)  # five separate runs, in order
        assert [r["started_at"] for r in runs] == sorted(r["started_at"] for r in runs)
        assert len({json.dumps(r["performance"]["samples"]) for r in runs}) == len(runs)  # real, different noise


class TestLatency:
    def test_a_planted_twenty_percent_regression_is_found(self, store, recorded, new_run):
        history = load_history(store, recorded)
        (planted,) = load_sweep(store, "planted", retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
        report = regressions.detect(store, "planted")
        assert (report.checked, report.stored, len(report.findings)) == (1, 1, 1)
        finding = report.findings[0]
        assert (finding.metric, finding.change, finding.sweep, finding.result_id) == ("latency", "slower", "planted",
                                                                                      planted)
        assert 1.15 < finding.ratio < 1.25 and finding.p_value < 1e-10
        assert sorted(finding.baseline_result_ids) == sorted(history)
        assert (finding.n_old, finding.n_new) == (HISTORY_RUNS * REPETITIONS, REPETITIONS)
        pooled = [s for r in recorded["runs"][:HISTORY_RUNS] for s in r["performance"]["samples"]]
        assert finding.old_value == pytest.approx(float(np.median(pooled)))
        assert finding.new_value == pytest.approx(float(np.median(new_run["performance"]["samples"])) * 1.2)
        assert not finding.acknowledged and report.unacknowledged == [finding]
        line = finding.describe()
        assert line.startswith(f"#{finding.id} local: {MODEL} tflite") and "latency slower, median" in line
        assert f" -> {finding.new_value * 1e3:.4g} ms" in line and "p = " in line
        assert "requestflow regressions ack ID" in report.summary()

    def test_the_real_next_run_and_resamplings_of_the_noise_are_silent(self, store, recorded, new_run):
        load_history(store, recorded)
        last = recorded["runs"][-1]
        load_sweep(store, "rerun", retimed(new_run, last, 10))  # the real run, unaltered
        report = regressions.detect(store, "rerun")
        assert (report.checked, report.unchanged, report.findings) == (1, 1, []), report.summary()
        history = recorded["runs"][:HISTORY_RUNS]
        for seed in range(5):
            sweep = f"resampled-{seed}"
            load_sweep(store, sweep, retimed(resampled(history, seed, new_run), last, 20 + seed))
            report = regressions.detect(store, sweep)
            assert (report.checked, report.findings) == (1, []), report.summary()
        # and against this same history (now with the silent runs in it), the planted copy is still found
        load_sweep(store, "planted", retimed(scaled(new_run, 1.2), last, 60))
        assert [f.change for f in regressions.detect(store, "planted").findings] == ["slower"]
        assert count(store, "regression_detections") == 1

    def test_a_speedup_is_recorded_only_when_asked(self, store, recorded, new_run):
        load_history(store, recorded)
        load_sweep(store, "faster", retimed(scaled(new_run, 0.7), recorded["runs"][-1], 10))
        assert regressions.detect(store, "faster").findings == []
        assert [f.change for f in regressions.detect(store, "faster", report_faster=True).findings] == ["faster"]

    def test_a_point_without_history_is_reported_as_such(self, store, recorded):
        load_sweep(store, "first", recorded["runs"][0])
        report = regressions.detect(store, "first")
        assert report.checked == 0 and report.findings == []
        assert report.no_history == [f"local: {MODEL} tflite uint8 performance (threads 1): latency"]

    def test_results_of_the_same_sweep_are_not_each_others_history(self, store, recorded, new_run):
        load_sweep(store, "one-sweep", recorded["runs"][0], retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
        assert regressions.detect(store, "one-sweep").checked == 0


class TestAccuracy:
    def test_any_change_of_top1_or_top5_is_found_and_an_equal_result_is_not(self, store, recorded):
        accuracy = recorded["accuracy"]
        (old,) = load_sweep(store, "acc-1", accuracy)
        load_sweep(store, "acc-2", retimed(accuracy, accuracy, 10))
        assert regressions.detect(store, "acc-2").findings == []
        (new,) = load_sweep(store, "acc-3", retimed(less_accurate(accuracy), accuracy, 20))
        report = regressions.detect(store, "acc-3")
        a, n = accuracy["accuracy"], accuracy["accuracy"]["n"]
        assert [(f.metric, f.change, f.old_value, f.new_value, f.n_new, f.p_value) for f in report.findings] == [
            ("top1", "lower", a["top1"], (a["correct_top1"] - 1) / n, n, None),
            ("top5", "lower", a["top5"], (a["correct_top5"] - 1) / n, n, None)]
        assert all(f.result_id == new and len(f.baseline_result_ids) == 1 for f in report.findings)
        assert report.findings[0].baseline_result_ids != [old]  # the latest earlier result: acc-2's
        assert "top1 lower, 0." in report.findings[0].describe()


class TestAcknowledging:
    def test_an_acknowledged_step_stops_alerting_and_a_further_step_alerts_again(self, store, recorded, new_run):
        load_history(store, recorded)
        last = recorded["runs"][-1]
        load_sweep(store, "step", retimed(scaled(new_run, 1.2), last, 10))
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

        # the next night at the new level: the same step, compared from the acknowledged result on: silent. Its
        # samples are drawn from the acknowledged run's own (the same level and noise): another real run scaled by
        # 1.2 is not "the same level" (CI of 5e27afd: two real runs 6.2% apart, over the 5% minimum effect)
        load_sweep(store, "step-again", retimed(scaled(resampled([new_run], 0, new_run), 1.2), last, 20))
        report = regressions.detect(store, "step-again")
        assert (report.checked, report.findings) == (1, [])
        # another 20% on top of the accepted level: a new step, found
        load_sweep(store, "further", retimed(scaled(new_run, 1.44), last, 30))
        (further,) = regressions.detect(store, "further").findings
        assert further.change == "slower" and 1.15 < further.ratio < 1.25 and not further.acknowledged

    def test_acknowledging_silences_later_detections_of_the_same_step_but_not_a_further_one(self, store, recorded,
                                                                                          new_run):
        load_history(store, recorded)
        last = recorded["runs"][-1]
        found = {}
        # three nights detected before anyone acknowledges: two at +20%, then one at +44%; each is compared with
        # the clean history (an unacknowledged regression is never a baseline)
        for minutes, sweep, doc, factor in ((10, "n1", new_run, 1.2), (20, "n2", recorded["runs"][1], 1.2),
                                            (30, "n3", recorded["runs"][2], 1.44)):
            load_sweep(store, sweep, retimed(scaled(doc, factor), last, minutes))
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
    def test_bad_acknowledgements_are_refused_and_store_nothing(self, store, recorded, new_run, regression_id,
                                                                 reason, message):
        load_history(store, recorded)
        load_sweep(store, "planted", retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
        (finding,) = regressions.detect(store, "planted").findings
        with pytest.raises(UserError, match=message):
            regressions.acknowledge(store, finding.id if regression_id is None else regression_id, reason)
        assert count(store, "regression_acks") == 0

    def test_acknowledging_twice_names_the_first_acknowledgement(self, store, recorded, new_run):
        load_history(store, recorded)
        load_sweep(store, "planted", retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
        (finding,) = regressions.detect(store, "planted").findings
        regressions.acknowledge(store, finding.id, "expected", by="alice")
        with pytest.raises(UserError, match=rf"#{finding.id} is already acknowledged \(ack #\d+ by alice .*expected"):
            regressions.acknowledge(store, finding.id, "again")
        assert count(store, "regression_acks") == 1


class TestStoring:
    def test_detecting_twice_stores_nothing_new(self, store, recorded, new_run):
        load_history(store, recorded)
        load_sweep(store, "planted", retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
        first = regressions.detect(store, "planted")
        with store.connect() as connection:
            before = connection.execute(text("SELECT * FROM regression_detections ORDER BY id")).all()
        second = regressions.detect(store, "planted")
        with store.connect() as connection:
            after = connection.execute(text("SELECT * FROM regression_detections ORDER BY id")).all()
        assert (first.stored, second.stored) == (1, 0) and before == after and len(after) == 1
        assert [f.id for f in second.findings] == [f.id for f in first.findings]
        assert first.findings[0].new and not second.findings[0].new

    def test_a_failure_midway_stores_nothing(self, store, recorded, new_run, monkeypatch):
        load_history(store, recorded)
        last = recorded["runs"][-1]
        load_sweep(store, "two", retimed(scaled(new_run, 1.2), last, 10), less_accurate(retimed(
            recorded["accuracy"], last, 10)))
        load_sweep(store, "acc-history", retimed(recorded["accuracy"], last, 5))
        real = regressions._compare
        calls = []

        def fails_the_second_time(*args, **kwargs):
            calls.append(args[2])
            if len(calls) == 2:
                raise RuntimeError("connection lost")
            return real(*args, **kwargs)

        monkeypatch.setattr(regressions, "_compare", fails_the_second_time)
        with pytest.raises(RuntimeError, match="connection lost"):
            regressions.detect(store, "two")
        assert count(store, "regression_detections") == 0
        monkeypatch.setattr(regressions, "_compare", real)
        assert {f.metric for f in regressions.detect(store, "two").findings} == {"latency", "top1", "top5"}

    def test_the_view_names_everything_and_the_schema_has_no_drift(self, store, database, recorded, new_run):
        check(sqlalchemy_url(database))
        load_history(store, recorded)
        load_sweep(store, "planted", retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
        regressions.detect(store, "planted")
        columns, rows = read_only(store, "SELECT board, model, backend, variant, precision, mode, threads, metric, "
                                         "change, sweep, acknowledged, library FROM regressions")
        row = dict(zip(columns, rows[0], strict=True))
        assert json.loads(row.pop("variant")) == new_run["context"]["backend"]["variant"]
        assert row == {"board": "local", "model": MODEL, "backend": "tflite", "precision": "uint8",
                       "mode": "performance", "threads": 1, "metric": "latency", "change": "slower",
                       "sweep": "planted", "acknowledged": False, "library": new_run["context"]["backend"]["library"]}


class TestBadInput:
    def test_an_unknown_sweep_is_named_with_the_latest_ones(self, store, recorded):
        load_history(store, recorded)
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
    def test_detect_list_and_acknowledge(self, run_cli, store, database, recorded, new_run, tmp_path):
        load_history(store, recorded)
        planted = tmp_path / "planted.json"
        planted.write_text(json.dumps(retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10)))
        assert run_cli("load", planted, "--sweep", "nightly-7", "--db", database)[0] == 0

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
        """The plugin's app in this process on ``store``, with Airflow's login check replaced by a fixed user (the
        real login is tests/test_scoreboard_page.py's subject)."""
        monkeypatch.syspath_prepend(str(ROOT / "plugins"))
        from requestflow_scoreboard import app as app_module
        from requestflow_scoreboard import auth

        async def authenticate(request):
            return "tester"

        monkeypatch.setattr(auth, "authenticate", authenticate)
        monkeypatch.setattr(auth, "authorize", lambda user: None)
        monkeypatch.setattr(app_module, "_engine", store)
        return app_module.create_app()

    def test_unacknowledged_regressions_are_listed_until_acknowledged(self, page, store, recorded, new_run):
        load_history(store, recorded)
        load_sweep(store, "planted", retimed(scaled(new_run, 1.2), recorded["runs"][-1], 10))
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


def html_get(app, path: str) -> tuple[int, str]:
    """One GET through the ASGI app, in this process: (status, body text)."""
    import asyncio

    path, _, query = path.partition("?")
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"accept", b"text/html")], "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body").decode()
