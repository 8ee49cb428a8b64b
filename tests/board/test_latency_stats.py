"""Latency statistics (requestflow.board.latency_stats): percentile confidence intervals, MLPerf LoadGen's
early-stopping estimate checked against LoadGen's documented numbers, and the run profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from requestflow.board import latency_stats as ls
from requestflow.board.rank_stats import median_ci_rank
from requestflow.errors import UserError


class TestEarlyStoppingIsLoadGens:
    def test_the_minimum_query_counts_loadgen_documents(self):
        # LoadGen SingleStream: "Need to process at least h_min + 1 queries for early stopping", h_min =
        # find_min_passing(1, percentile, 0, 0.99): 64 for the 90th percentile, 662 for the 99th; and for t = 0 at
        # p99, ceil(log(0.01) / log(0.99)) = 459
        assert ls.min_passing(1, 0.9) + 1 == 64
        assert ls.min_passing(1, 0.99) + 1 == 662
        assert ls.min_passing(0, 0.99) == 459
        assert ls.min_passing(0, 0.9) == math.ceil(math.log(0.01) / math.log(0.9))

    def test_min_passing_is_the_first_h_whose_binomial_tail_is_below_one_percent(self):
        for t in (1, 2, 5, 20, 100):
            h = ls.min_passing(t, 0.9)
            assert ls.binomial_cdf(t, h + t, 0.1) < 0.01 <= ls.binomial_cdf(t, h - 1 + t, 0.1)

    def test_too_few_runs_give_no_estimate_and_64_give_the_highest(self):
        samples = np.arange(1.0, 64.0)
        assert ls.early_stopping(samples)["value"] is None
        assert "needs at least 64" in ls.early_stopping(samples)["detail"]
        samples = np.arange(1.0, 65.0)
        estimate = ls.early_stopping(samples)
        assert estimate["met"] and estimate["value"] == 64.0 and estimate["discarded"] == 0

    def test_the_estimate_discards_as_many_highest_runs_as_loadgens_loop(self):
        rng = np.random.default_rng(1)
        samples = rng.lognormal(0, 0.3, 5000)
        estimate = ls.early_stopping(samples)
        t = 1  # LoadGen: for i in 2..n: if n < min_passing(i) + i: t = i - 1; break
        for i in range(2, samples.size + 1):
            if samples.size < ls.min_passing(i, 0.9) + i:
                t = i - 1
                break
        assert estimate["discarded"] == t - 1
        assert estimate["value"] == np.sort(samples)[samples.size - t]
        assert estimate["value"] > ls.percentile(samples, 0.9)

    def test_the_estimate_bounds_the_true_p90_with_99_percent_confidence(self):
        rng = np.random.default_rng(2)
        true_p90 = math.exp(0.3 * 1.2815515655446004)  # lognormal(0, 0.3)
        below = [ls.early_stopping(rng.lognormal(0, 0.3, 200))["value"] >= true_p90 for _ in range(1000)]
        assert np.mean(below) >= 0.985


class TestPercentileIntervals:
    def test_the_median_interval_is_the_quality_verdicts(self):
        for n in range(1, 400):
            lower, upper = ls.quantile_ci_ranks(n, 0.5)
            rank = median_ci_rank(n)
            assert lower == rank and upper == (None if rank is None else n + 1 - rank)

    def test_the_binomial_cdf_is_exact(self):
        for n in (1, 7, 30):
            for p in (0.1, 0.5, 0.99):
                for k in range(n + 1):
                    exact = sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k + 1))
                    assert ls.binomial_cdf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-15)
                    assert ls.binomial_cdfs(n, p)[k] == pytest.approx(exact, rel=1e-9, abs=1e-15)

    @pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
    def test_intervals_cover_the_true_percentile_at_least_95_percent_of_the_time(self, q):
        rng = np.random.default_rng(3)
        true = float(np.exp(0.4 * {0.5: 0.0, 0.9: 1.2815515655446004, 0.99: 2.3263478740408408}[q]))
        covered = 0
        for _ in range(1000):
            low, high = ls.quantile_ci(rng.lognormal(0, 0.4, 600), q)
            covered += low <= true <= high
        assert covered / 1000 >= 0.94

    def test_a_side_no_order_statistic_bounds_is_null(self):
        samples = np.linspace(1, 2, 20)
        statistics = ls.latency_statistics(samples)
        assert statistics["p99"]["ci_s"][1] is None and statistics["p90"]["ci_s"][1] is None
        assert statistics["p50"]["ci_s"][0] <= statistics["p50"]["value"] <= statistics["p50"]["ci_s"][1]
        assert ls.latency_statistics([0.001])["p50"]["ci_s"] == [None, None]

    def test_values_are_the_runners_percentiles(self):
        samples = np.random.default_rng(4).gamma(2.0, 1.0, 333)
        statistics = ls.latency_statistics(samples)
        for name, q in ls.PERCENTILES.items():
            assert statistics[name]["value"] == float(np.percentile(samples, q * 100))

    def test_a_valid_profiles_sixty_thousand_runs_get_both_estimates(self):
        statistics = ls.latency_statistics(np.random.default_rng(5).lognormal(0, 0.3, 60_000))
        assert statistics["early_stopping"]["p90"]["met"] and statistics["early_stopping"]["p99"]["met"]

    def test_bad_samples_are_refused(self):
        for bad in ([], [float("nan")], [[1.0]]):
            with pytest.raises(ValueError):
                ls.latency_statistics(bad)


class TestProfiles:
    def test_quick_is_todays_defaults_and_valid_what_mlperf_asks(self):
        assert ls.profile_settings(None, None, None, None) == {"name": "quick", "min_repetitions": 20, "warmup": 3,
                                                                 "min_duration_s": 0.0}
        assert ls.profile_settings("valid", None, None, None) == {"name": "valid", "min_repetitions": 64,
                                                                    "warmup": 3, "min_duration_s": 60.0}

    def test_settings_below_a_profiles_minima_are_recorded_as_custom(self):
        assert ls.profile_settings("valid", 10, None, None)["name"] == "custom"
        assert ls.profile_settings("valid", None, None, 5)["name"] == "custom"
        assert ls.profile_settings("valid", 100, 10, 90)["name"] == "valid"
        assert ls.profile_settings(None, 50, None, None)["name"] == "custom"
        with pytest.raises(UserError, match="unknown profile 'slow'"):
            ls.profile_settings("slow", None, None, None)
        with pytest.raises(UserError, match="--min-duration-s must be a number >= 0"):
            ls.profile_settings(None, None, None, -1)
