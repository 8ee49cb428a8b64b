"""The measurement verdict (``requestflow.board.quality``): each check on synthetic samples whose properties are
known, then end to end on real runner output.

- Synthetic: the seed's HiKey960 pattern (runs alternating between 60-80 ms and 240-270 ms) is FLAGGED as bimodal;
  quiet lognormal noise is VALID; wide unimodal noise and a few outliers are never called bimodal; a latency still
  falling after the warm-up, or rising, is a trend (the same samples shuffled are not); a CPU clock that moved or a
  board that warmed up is flagged, a board without cpufreq or thermal zones is "unknown", not flagged; 5 samples are
  too few for a 95% interval of the median; the interval's ranks are the textbook ones and it covers the median.
- Real: ``requestflow run --backend tflite`` of mobilenet-v1-0.25-128 writes a schema-valid document whose
  ``performance.quality`` is the verdict on its own samples; loaded into a throwaway database, the scoreboard, the
  CLI, the page and the sweep summary show it. A copy of that run with its samples replaced by the bimodal pattern
  (statistics and verdict recomputed; the loader hashes it anew) shows FLAGGED with its reasons everywhere, and
  stays on the Pareto frontier; a copy without a verdict (an older document) loads with quality NULL; migration
  0008 goes down to 0007 and back up without losing a row.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re

import numpy as np
import pytest
from sqlalchemy import create_engine

from requestflow.board import quality, rank_stats
from requestflow.board.quality import FLAGGED, VALID, assess
from requestflow.board.runner import pin_process, statistics
from requestflow.board.schema import validate_document
from requestflow.cli import main
from requestflow.errors import UserError
from requestflow.results.database import alembic_config, check, sqlalchemy_url, upgrade
from requestflow.results.identity import point_id
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.databases import throwaway_database
from tests.scoreboard_app import logged_in_client

MODEL = "mobilenet-v1-0.25-128"
WEIGHTS = "mobilenet_v1_0.25_128_quant.tflite"
CPU = str(max(os.sched_getaffinity(0)))
SWEEP = "manual__quality"
CHECKS = ["variation", "bimodality", "trend", "clocks", "temperature", "repetitions"]


# -- synthetic samples with known properties -----------------------------------------------------------------------
def seed_pattern(n: int = 40, seed: int = 1, alternate: bool = True) -> np.ndarray:
    """The seed's HiKey960 runs: 60-80 ms and 240-270 ms, strictly alternating or each run picking at random."""
    rng = np.random.default_rng(seed)
    slow = np.arange(n) % 2 == 1 if alternate else rng.random(n) < 0.5
    return np.where(slow, rng.uniform(0.240, 0.270, n), rng.uniform(0.060, 0.080, n))


def lognormal(n: int, sigma: float, seed: int = 2, median: float = 0.010) -> np.ndarray:
    return median * np.exp(np.random.default_rng(seed).normal(0.0, sigma, n))


def snapshot(khz: dict | None = None, celsius: dict | None = None) -> dict:
    """An environment snapshot as ``machine.snapshot_frequencies_and_temperatures`` writes it."""
    return {"cur_khz": {str(k): v for k, v in (khz or {}).items()}, "temperatures": dict(celsius or {})}


def failing(verdict: dict) -> list[str]:
    return [name for name, check in verdict["checks"].items() if not check["ok"]]


class TestBimodality:
    def test_the_seed_alternation_between_60_80_and_240_270_ms_is_flagged(self):
        verdict = assess(seed_pattern())
        assert verdict["verdict"] == FLAGGED and "bimodality" in failing(verdict)
        check = verdict["checks"]["bimodality"]
        assert check["low_fraction"] == 0.5
        assert 0.060 <= check["low_centre_s"] <= 0.080 and 0.240 <= check["high_centre_s"] <= 0.270
        assert check["value"] == pytest.approx(check["high_centre_s"] / check["low_centre_s"])
        assert check["sarle"] > 5 / 9  # Sarle's coefficient agrees, though it does not decide
        reason = next(r for r in verdict["reasons"] if r.startswith("bimodal latency"))
        assert "50% of the runs around" in reason and "ms" in reason
        assert verdict["checks"]["trend"]["ok"]  # alternating is not drifting

    @pytest.mark.parametrize("seed", range(5))
    def test_runs_that_pick_a_regime_at_random_are_flagged_too(self, seed):
        assert "bimodality" in failing(assess(seed_pattern(n=60, seed=seed, alternate=False)))

    @pytest.mark.parametrize("seed", range(10))
    def test_wide_unimodal_noise_is_not_bimodal(self, seed):
        rng = np.random.default_rng(100 + seed)
        for samples in (lognormal(200, 0.3, seed), lognormal(30, 0.2, seed), 0.01 * rng.gamma(2.0, 1.0, 200),
                        0.01 + rng.exponential(0.003, 100), rng.uniform(0.01, 0.03, 100)):
            check = quality.bimodality(samples)
            assert check["ok"], check["detail"]

    def test_a_few_outliers_are_not_a_second_mode(self):
        samples = lognormal(200, 0.01)
        samples[[17, 80, 141, 150, 199]] *= 5  # 2.5% of the runs five times slower
        verdict = assess(samples)
        assert verdict["checks"]["bimodality"]["ok"] and verdict["checks"]["variation"]["ok"]
        assert verdict["verdict"] == VALID
        # stdev / mean sees them (and is recorded), the robust spread does not
        assert verdict["checks"]["variation"]["stdev_over_mean"] > 0.3 > verdict["checks"]["variation"]["value"]

    def test_two_modes_of_a_few_percent_difference_are_not_flagged(self):
        samples = np.where(np.arange(100) % 2 == 0, 0.0100, 0.0110) * np.exp(
            np.random.default_rng(5).normal(0, 0.001, 100))
        assert quality.bimodality(samples)["ok"]  # 1.1x apart: below the 1.5x that matters

    def test_the_sarle_coefficient_of_normal_data_is_about_one_third(self):
        samples = np.random.default_rng(3).normal(10.0, 1.0, 5000)
        assert quality.sarle_coefficient(samples) == pytest.approx(1 / 3, abs=0.03)
        assert quality.sarle_coefficient(np.ones(10)) is None and quality.sarle_coefficient(np.ones(3)) is None


class TestVariation:
    def test_quiet_lognormal_noise_is_valid_on_every_check(self):
        verdict = assess(lognormal(200, 0.01), snapshot({0: 1800000, 1: 1800000}, {"soc": 41.0}),
                         snapshot({0: 1800000, 1: 1800000}, {"soc": 42.5}), cpus=[0, 1])
        assert verdict["verdict"] == VALID and verdict["reasons"] == [] and failing(verdict) == []
        assert list(verdict["checks"]) == CHECKS
        assert verdict["checks"]["variation"]["value"] == pytest.approx(0.01, rel=0.25)
        assert verdict["checks"]["clocks"]["value"] == 0 and verdict["checks"]["temperature"]["value"] == 1.5
        assert verdict["method"] == quality.METHOD and verdict["limits"]["robust_cv"] == 0.05

    def test_a_spread_above_five_percent_is_flagged(self):
        verdict = assess(lognormal(400, 0.10))
        assert "variation" in failing(verdict) and "bimodality" not in failing(verdict)
        assert verdict["checks"]["variation"]["value"] == pytest.approx(0.10, rel=0.2)
        assert any(r.startswith("latency spread too wide: robust CV") for r in verdict["reasons"])


class TestTrend:
    def warming_up(self, n: int = 120) -> np.ndarray:
        """Latency that still falls after the warm-up: 40% slower at first, decaying over ~30 runs."""
        index = np.arange(n)
        return 0.010 * (1 + 0.4 * np.exp(-index / 30)) * np.exp(np.random.default_rng(4).normal(0, 0.01, n))

    def test_a_decaying_warm_up_is_flagged(self):
        verdict = assess(self.warming_up())
        check = verdict["checks"]["trend"]
        assert not check["ok"] and check["value"] < -0.05 and check["spearman_rho"] < -0.5 and check["p_value"] < 0.01
        assert any("still falling after the warm-up" in r and "too few warm-up runs" in r for r in verdict["reasons"])

    def test_a_rising_latency_is_flagged_as_throttling_or_interference(self):
        check = quality.trend(self.warming_up()[::-1].copy())
        assert not check["ok"] and check["value"] > 0.05 and "rising during the run" in check["detail"]

    def test_the_same_samples_in_random_order_have_no_trend(self):
        shuffled = np.random.default_rng(6).permutation(self.warming_up())
        assert quality.trend(shuffled)["ok"]

    def test_a_significant_but_tiny_drift_is_not_flagged(self):
        samples = 0.010 * (1 + 0.01 * np.linspace(0, 1, 500)) * np.exp(np.random.default_rng(7).normal(0, 0.001, 500))
        check = quality.trend(samples)
        assert check["p_value"] < 0.01 and abs(check["value"]) < 0.05 and check["ok"]  # the 5% effect floor

    def test_too_few_samples_are_unknown(self):
        check = quality.trend(np.linspace(0.02, 0.01, 9))
        assert check["ok"] and check["value"] is None and check["detail"].startswith("unknown")

    def test_spearman_on_a_textbook_example_and_ties(self):
        rho, p = rank_stats.spearman(np.arange(1.0, 11.0), np.array([2, 1, 4, 3, 6, 5, 8, 7, 10, 9], float))
        assert rho == pytest.approx(1 - 6 * 10 / (10 * 99)) and p < 0.01
        assert rank_stats.ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
        assert rank_stats.spearman(np.arange(5.0), np.ones(5)) == (None, None)


class TestEnvironment:
    def test_a_cpu_clock_that_changed_is_flagged(self):
        verdict = assess(lognormal(200, 0.01), snapshot({0: 1800000, 4: 2362000}), snapshot({0: 1800000, 4: 1844000}),
                         cpus=[0, 4])
        assert verdict["verdict"] == FLAGGED and failing(verdict) == ["clocks"]
        assert verdict["checks"]["clocks"]["changed_cpus"] == [4]
        assert verdict["reasons"] == ["CPU clocks changed during the run (cpu4 2362 -> 1844 MHz): not pinned? "
                                      "(requestflow clocks pin)"]

    def test_only_the_runs_own_cpus_count(self):
        check = quality.clocks(snapshot({0: 1800000, 4: 2362000}), snapshot({0: 1800000, 4: 903000}), cpus=[0])
        assert check["ok"] and check["value"] == 0

    def test_a_board_without_cpufreq_or_thermal_zones_is_unknown_not_flagged(self):
        unreadable = snapshot({0: None, 1: None}, {})
        verdict = assess(lognormal(200, 0.01), unreadable, unreadable)
        for name in ("clocks", "temperature"):
            check = verdict["checks"][name]
            assert check["ok"] and check["value"] is None and check["detail"].startswith("unknown")
        assert verdict["verdict"] == VALID
        assert assess(lognormal(200, 0.01))["verdict"] == VALID  # no snapshots at all

    def test_a_temperature_rise_above_five_degrees_is_flagged(self):
        check = quality.temperature(snapshot(celsius={"cpu": 45.0, "gpu": 40.0}),
                                    snapshot(celsius={"cpu": 46.0, "gpu": 48.5}))
        assert not check["ok"] and check["value"] == 8.5 and check["zone"] == "gpu"
        assert "temperature rose 8.5 °C" in check["detail"]
        assert quality.temperature(snapshot(celsius={"cpu": 45.0}), snapshot(celsius={"cpu": 50.0}))["ok"]


class TestRepetitions:
    def test_five_samples_are_too_few(self):
        verdict = assess([0.0100, 0.0101, 0.0099, 0.0100, 0.0102])
        assert verdict["verdict"] == FLAGGED and failing(verdict) == ["repetitions"]
        assert verdict["reasons"] == ["too few repetitions: 5 sample(s) cannot give a 95% confidence interval of the "
                                      "median (at least 6 needed)"]

    def test_six_quiet_samples_are_enough(self):
        check = quality.repetitions(np.array([0.0100, 0.0101, 0.0099, 0.0100, 0.0102, 0.0100]))
        assert check["ok"] and check["ci_s"] == [0.0099, 0.0102]  # n = 6: the interval is [min, max]

    def test_the_interval_ranks_are_the_textbook_ones(self):
        # 95% intervals of the median: n=6 [x1, x6], n=20 [x6, x15], n=100 [x40, x61]
        assert [rank_stats.median_ci_rank(n) for n in (1, 5, 6, 20, 100)] == [None, None, 1, 6, 40]
        assert rank_stats.smallest_n_for_ci(0.95) == 6 and rank_stats.smallest_n_for_ci(0.99) == 8

    def test_the_interval_covers_the_true_median_at_least_95_percent_of_the_time(self):
        rng = np.random.default_rng(8)
        covered = 0
        for _ in range(2000):
            low, high = quality.repetitions(0.01 * np.exp(rng.normal(0, 0.05, 20)))["ci_s"]
            covered += low <= 0.01 <= high
        assert covered / 2000 >= 0.94

    def test_a_noisy_short_run_is_told_how_many_repetitions_would_do(self):
        check = quality.repetitions(lognormal(20, 0.10))
        assert not check["ok"] and check["value"] > 0.025
        wanted = int(re.search(r"about (\d+) would do", check["detail"]).group(1))
        assert wanted == math.ceil(20 * (check["value"] / 0.025) ** 2) and wanted > 20


class TestTheVerdictIsJson:
    @pytest.mark.parametrize("samples", [[0.01], [0.01] * 50, [0.0] * 10, [1e-9, 1.0, 1e-9, 1.0] * 10])
    def test_edge_cases_give_plain_json_and_follow_the_schema(self, samples):
        verdict = assess(samples, snapshot({0: 0}), snapshot({0: 1000}))
        json.dumps(verdict, allow_nan=False)  # PostgreSQL's jsonb refuses NaN
        assert (verdict["verdict"] == FLAGGED) == bool(verdict["reasons"])

    def test_no_samples_is_an_error(self):
        with pytest.raises(ValueError):
            assess([])


# -- real runner documents -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(models_dir, tmp_path_factory) -> dict:
    """``requestflow run --backend tflite`` of mobilenet-v1-0.25-128, performance, one thread on one CPU."""
    out = tmp_path_factory.mktemp("quality") / "performance.json"
    saved = os.sched_getaffinity(0)
    try:
        assert main(["run", "--backend", "tflite", "--model", MODEL, "--weights", str(models_dir / WEIGHTS),
                     "--repetitions", "60", "--warmup", "10", "--threads", "1", "--cpus", CPU, "--offline", "--quiet",
                     "--out", str(out)]) == 0
    finally:  # --cpus pinned every thread of this process; the test-wide restore runs per test, after this fixture
        pin_process(sorted(saved))
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def accuracy(models_dir) -> dict:
    from requestflow.board.runner import RunConfig, run

    document = run(RunConfig(model=MODEL, backend="tflite", mode="accuracy", weights=[str(models_dir / WEIGHTS)],
                             limit=10, progress=False))
    assert document["status"] == "ok"
    return document


def with_samples(document: dict, samples) -> dict:
    """A copy of a real document timed as ``samples``: statistics and verdict recomputed as the runner does (the
    loader hashes the changed document anew)."""
    copied = copy.deepcopy(document)
    p = copied["performance"]
    p.update(statistics([float(s) for s in samples], p["batch_size"]))
    p["quality"] = assess(p["samples"], copied["environment"]["before"], copied["environment"]["after"],
                          cpus=copied["context"]["cpu_affinity"])
    return copied


@pytest.fixture(scope="module")
def documents(real, accuracy) -> dict:
    flagged = with_samples(real, seed_pattern(n=len(real["performance"]["samples"])))
    old = copy.deepcopy(real)
    del old["performance"]["quality"]  # as the runner wrote it before verdicts existed
    return {"real": real, "flagged": flagged, "old": old, "accuracy": accuracy}


# board of each document: the flagged copy is the same configuration as the real run, so it gets a board of its own
BOARDS = {"real": "local", "flagged": "flaky", "accuracy": "flaky", "old": "old"}


@pytest.fixture(scope="module")
def store(documents):
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        for name, document in documents.items():
            load_documents(engine, [(name, document)], BOARDS[name], sweep=SWEEP)
        ids = {name: point_id(BOARDS[name], documents[name]["context"]) for name in ("real", "flagged", "old")}
        yield engine, url, ids
        engine.dispose()


def row_of(engine, board: str) -> dict:
    columns, rows = read_only(engine, "SELECT * FROM scoreboard WHERE board = %(b)s", {"b": board})
    assert len(rows) == 1
    return dict(zip(columns, rows[0], strict=True))


class TestARealRun:
    def test_its_document_is_valid_and_carries_the_verdict_on_its_own_samples(self, real):
        validate_document(real)
        verdict = real["performance"]["quality"]
        assert list(verdict["checks"]) == [*CHECKS, "calibration"] and verdict["verdict"] in (VALID, FLAGGED)
        assert (verdict["verdict"] == FLAGGED) == bool(verdict["reasons"])
        assert verdict["reasons"] == [c["detail"] for c in verdict["checks"].values() if not c["ok"]]
        environment = real["environment"]
        # recomputed from the document alone, the verdict is the same: it is the verdict of these samples
        assert assess(real["performance"]["samples"], environment["before"], environment["after"],
                      cpus=real["context"]["cpu_affinity"], calibration=real["performance"]["calibration"]) == verdict
        assert verdict["checks"]["repetitions"]["n"] == 60
        for name, key in (("clocks", "cur_khz"), ("temperature", "temperatures")):
            readable = any(isinstance(v, int | float) for v in environment["before"][key].values())
            if not readable:  # this machine may have no cpufreq or thermal zones: unknown, never a flag
                assert verdict["checks"][name]["value"] is None and verdict["checks"][name]["ok"]

    def test_the_bimodal_copy_and_the_old_copy_are_valid_documents(self, documents):
        validate_document(documents["flagged"])
        validate_document(documents["old"])  # the verdict is optional: older documents still validate
        flagged = documents["flagged"]["performance"]["quality"]
        assert flagged["verdict"] == FLAGGED and "bimodality" in failing(flagged)

    @pytest.mark.parametrize(("damage", "message"), [
        (lambda q: q.update(verdict="VALID", reasons=["something"]), "performance/quality/reasons"),
        (lambda q: q.update(verdict="FLAGGED", reasons=[]), "performance/quality/reasons"),
        (lambda q: q.update(verdict="MAYBE"), "performance/quality/verdict"),
        (lambda q: q["checks"]["trend"].pop("ok"), "'ok' is a required property"),
    ])
    def test_an_inconsistent_verdict_is_refused(self, documents, damage, message):
        bad = copy.deepcopy(documents["flagged"])
        damage(bad["performance"]["quality"])
        with pytest.raises(UserError, match=message):
            validate_document(bad)


class TestTheStore:
    def test_the_scoreboard_rows_show_each_verdict(self, store, documents):
        engine, _, _ = store
        real = row_of(engine, "local")
        assert real["quality"] == documents["real"]["performance"]["quality"]["verdict"]
        assert real["quality_reasons"] == documents["real"]["performance"]["quality"]["reasons"]
        flaky = row_of(engine, "flaky")
        assert flaky["quality"] == FLAGGED and flaky["top1"] == documents["accuracy"]["accuracy"]["top1"]
        assert flaky["quality_reasons"] == documents["flagged"]["performance"]["quality"]["reasons"]
        assert any(r.startswith("bimodal latency") for r in flaky["quality_reasons"])
        old = row_of(engine, "old")
        assert old["quality"] is None and old["quality_reasons"] is None
        assert old["latency_median_s"] == documents["old"]["performance"]["median"]

    def test_a_flagged_point_stays_on_the_pareto_frontier(self, store):
        engine, _, ids = store
        _, rows = read_only(engine, "SELECT point_id, quality, quality_reasons FROM pareto_frontier "
                                    "WHERE board = 'flaky' AND latency_stat = 'median'")
        assert [(p, q) for p, q, _ in rows] == [(ids["flagged"], FLAGGED)] and rows[0][2]

    def test_the_cli_scoreboard_shows_the_verdict_and_its_reasons(self, store, run_cli):
        _, url, _ = store
        code, stdout, _ = run_cli("scoreboard", "--board", "flaky", "--format", "json", "--db", url)
        (row,) = json.loads(stdout)
        assert code == 0 and row["quality"] == FLAGGED and any("bimodal latency" in r for r in row["quality_reasons"])
        code, stdout, _ = run_cli("scoreboard", "--board", "flaky", "--db", url)
        header, _, line = stdout.splitlines()[:3]
        assert "quality" in header.split() and " FLAGGED " in line and "; " in line and "bimodal latency" in line

    def test_the_sweep_summary_prints_flagged_latencies_with_their_reasons(self, store, capsys):
        from operators.sweep_tasks import print_flagged_latencies

        engine, _, _ = store
        lines = print_flagged_latencies(engine, SWEEP)
        printed = capsys.readouterr().out.splitlines()
        _, flagged_rows = read_only(engine, "SELECT board FROM scoreboard WHERE sweep = %(s)s AND quality = 'FLAGGED'",
                                    {"s": SWEEP})
        assert printed == lines and len(lines) == len(flagged_rows) >= 1
        line = next(line for line in lines if line.startswith("LATENCY FLAGGED: flaky "))
        assert f"{MODEL} tflite XNNPACK uint8, 1 thread(s): median" in line and "bimodal latency" in line
        assert print_flagged_latencies(engine, "another sweep") == []

    def test_migration_0008_goes_down_and_up_without_losing_a_row(self, documents):
        from alembic import command

        with throwaway_database() as url:
            engine = create_engine(sqlalchemy_url(url))
            load_documents(engine, [(n, documents[n]) for n in ("real", "flagged")], "b1")
            before = read_only(engine, "SELECT point_id, latency_median_s FROM scoreboard ORDER BY point_id")[1]
            with engine.begin() as connection:
                command.downgrade(alembic_config(sqlalchemy_url(url), connection), "0007")
            columns, rows = read_only(engine, "SELECT * FROM scoreboard ORDER BY point_id")
            assert "quality" not in columns and len(rows) == len(before) == 1  # same configuration, one board
            upgrade(sqlalchemy_url(url))
            check(sqlalchemy_url(url))
            columns, rows = read_only(engine, "SELECT point_id, latency_median_s, quality FROM scoreboard "
                                              "ORDER BY point_id")
            assert [r[:2] for r in rows] == before and rows[0][2] in (VALID, FLAGGED)
            engine.dispose()


class TestThePage:
    def test_the_table_marks_the_flagged_point(self, store, monkeypatch):
        engine, _, ids = store
        with logged_in_client(monkeypatch, engine) as client:
            response = client.get("/scoreboard/?board=flaky")
        assert response.status_code == 200
        assert re.search(r'id="count-flagged">1<', response.text)
        row = re.search(rf'<tr data-point-id="{ids["flagged"]}" data-quality="FLAGGED".*?</tr>', response.text, re.S)
        assert row and '<td data-column="quality" data-value="FLAGGED">FLAGGED</td>' in row.group(0)
        assert "bimodal latency" in row.group(0) and 'id="quality-legend"' in response.text

    def test_the_flagged_points_page_gives_its_reasons_and_checks(self, store, documents, monkeypatch):
        engine, _, ids = store
        with logged_in_client(monkeypatch, engine) as client:
            response = client.get(f"/scoreboard/point/{ids['flagged']}")
        assert response.status_code == 200
        section = re.search(r'<section id="quality" class="quality flagged">.*?</section>', response.text, re.S)
        assert section, "no flagged quality section"
        assert '<span class="verdict quality-flagged">FLAGGED</span>' in section.group(0)
        reasons = re.findall(r"<li>(.*?)</li>", section.group(0), re.S)
        expected = documents["flagged"]["performance"]["quality"]["reasons"]
        assert len(reasons) == len(expected) and any(r.startswith("bimodal latency") for r in reasons)
        assert re.search(r'<tr data-check="bimodality" class="flagged"><th>bimodality</th>', section.group(0))

    def test_the_real_and_the_old_points_pages(self, store, documents, monkeypatch):
        engine, _, ids = store
        verdict = documents["real"]["performance"]["quality"]["verdict"]
        with logged_in_client(monkeypatch, engine) as client:
            real = client.get(f"/scoreboard/point/{ids['real']}").text
            old = client.get(f"/scoreboard/point/{ids['old']}").text
        assert f'<section id="quality" class="quality {verdict.lower()}">' in real
        assert re.findall(r'<tr data-check="(\w+)"', real) == [*CHECKS, "calibration"]  # the runner's order
        assert '<section id="quality" class="quality none">' in old
        assert "measured before the runner gave verdicts" in old
