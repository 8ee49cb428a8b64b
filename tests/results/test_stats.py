"""requestflow.results.stats against published values (SciPy's and R's documented examples) and values worked out
by hand in the comments, then compare_samples' verdicts and its refusals of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from requestflow.errors import UserError
from requestflow.results.stats import (
    compare_samples,
    hodges_lehmann,
    mann_whitney_u,
    rank_average,
    run_to_run_spread,
)

# scipy.stats.mannwhitneyu's documented example (Conover, "Practical Nonparametric Statistics"): ages of males and
# females at a degree; the docs print U1 = 17, exact p = 0.1111111111111111, asymptotic p = 0.11134688653314041.
MALES = [19, 22, 16, 29, 24]
FEMALES = [20, 11, 17, 12]

# R's ?wilcox.test two-sample example (Hollander & Wolfe, permeability constants of the human chorioamnion):
# wilcox.test(x, y, alternative = "g") gives W = 35, p-value = 0.1272 (exact);
# with exact = FALSE, correct = FALSE: W = 35, p-value = 0.1103.
AT_TERM = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
WEEKS_12_26 = [1.15, 0.88, 0.90, 0.74, 1.21]


class TestTheRanks:
    def test_tied_values_share_their_average_rank(self):
        ranks, ties = rank_average(np.array([3.0, 1.0, 2.0, 2.0, 2.0, 5.0]))
        # sorted: 1 (rank 1), 2 2 2 (ranks 2, 3, 4 -> 3 each), 3 (rank 5), 5 (rank 6)
        assert ranks.tolist() == [5.0, 1.0, 3.0, 3.0, 3.0, 6.0]
        assert sorted(ties.tolist()) == [1, 1, 1, 3]


class TestMannWhitneyAgainstPublishedValues:
    def test_scipys_example_exact(self):
        result = mann_whitney_u(MALES, FEMALES)
        assert result.u == 17.0 and result.method == "exact"
        assert result.p_value == pytest.approx(0.1111111111111111, rel=1e-12)

    def test_scipys_example_with_the_normal_approximation(self):
        result = mann_whitney_u(MALES, FEMALES, method="asymptotic")
        assert result.u == 17.0 and result.method == "asymptotic"
        assert result.p_value == pytest.approx(0.11134688653314041, rel=1e-9)
        # z = (|17 - 10| - 0.5) / sqrt(5 * 4 * 10 / 12)
        assert result.z == pytest.approx(6.5 / math.sqrt(200 / 12), rel=1e-12)

    def test_rs_example_one_sided_exact(self):
        result = mann_whitney_u(AT_TERM, WEEKS_12_26, alternative="greater")
        assert result.u == 35.0 and result.method == "exact"
        assert round(result.p_value, 4) == 0.1272

    def test_rs_example_one_sided_large_sample_without_continuity_correction(self):
        result = mann_whitney_u(AT_TERM, WEEKS_12_26, alternative="greater", method="asymptotic", continuity=False)
        assert round(result.p_value, 4) == 0.1103

    def test_the_exact_distribution_of_complete_separation(self):
        # [1, 2, 3] vs [4, 5, 6]: U = 0 is 1 arrangement of C(6, 3) = 20, so two-sided p = 2 / 20
        result = mann_whitney_u([1, 2, 3], [4, 5, 6])
        assert (result.u, result.p_value, result.method) == (0.0, pytest.approx(0.1, rel=1e-12), "exact")
        assert mann_whitney_u([1, 2, 3], [4, 5, 6], alternative="less").p_value == pytest.approx(0.05, rel=1e-12)
        assert mann_whitney_u([1, 2, 3], [4, 5, 6], alternative="greater").p_value == pytest.approx(1.0)
        # R: wilcox.test(c(1,2,3), c(4,5,6), exact = FALSE) gives p-value = 0.08086
        assert round(mann_whitney_u([1, 2, 3], [4, 5, 6], method="asymptotic").p_value, 5) == 0.08086

    def test_ties_correct_the_variance(self):
        # x = [1, 2, 2], y = [2, 3, 4]: ranks 1 | 3 3 3 | 5 6, so R_x = 1 + 3 + 3 = 7 and U_x = 7 - 6 = 1.
        # mean 9/2; variance 3*3/12 * ((6 + 1) - (3^3 - 3) / (6 * 5)) = 0.75 * 6.2 = 4.65 (4.6667 without ties);
        # z = (|1 - 4.5| - 0.5) / sqrt(4.65) = 1.391217; p = 2 * (1 - Phi(z)) = 0.164160
        result = mann_whitney_u([1, 2, 2], [2, 3, 4])
        assert result.method == "asymptotic"  # ties: never exact
        assert result.u == 1.0
        assert result.z == pytest.approx(-3 / math.sqrt(4.65), rel=1e-12)
        assert result.p_value == pytest.approx(math.erfc(3 / math.sqrt(4.65) / math.sqrt(2)), rel=1e-12)
        assert round(result.p_value, 6) == 0.164160

    def test_the_test_is_symmetric_and_identical_samples_give_p_one(self):
        a, b = [3.1, 1.2, 4.7, 1.5, 5.9, 9.2], [2.6, 5.3, 5.8, 9.7, 9.3, 2.4, 3.8]
        assert mann_whitney_u(a, b).p_value == pytest.approx(mann_whitney_u(b, a).p_value)
        assert mann_whitney_u(a, b).u + mann_whitney_u(b, a).u == len(a) * len(b)
        assert mann_whitney_u([2.0] * 30, [2.0] * 40).p_value == 1.0

    def test_the_exact_and_asymptotic_p_values_converge(self):
        rng = np.random.default_rng(7)
        x, y = rng.normal(0, 1, 8), rng.normal(0.8, 1, 60)
        exact = mann_whitney_u(x, y, method="exact").p_value
        normal = mann_whitney_u(x, y, method="asymptotic").p_value
        assert exact == pytest.approx(normal, abs=0.01)

    @pytest.mark.parametrize("kwargs, message", [
        ({"alternative": "bigger"}, "alternative 'bigger'"),
        ({"method": "permutation"}, "method 'permutation'"),
    ])
    def test_unknown_options_are_named(self, kwargs, message):
        with pytest.raises(UserError, match=message):
            mann_whitney_u([1, 2], [3, 4], **kwargs)

    def test_an_exact_p_value_with_ties_is_refused(self):
        with pytest.raises(UserError, match="without ties"):
            mann_whitney_u([1, 2, 2], [2, 3], method="exact")


class TestTheEffectSize:
    def test_hodges_lehmann_is_the_median_of_pairwise_differences(self):
        # differences new - old: 4-1, 4-2, 4-3, 5-1, ... = 3 2 1 4 3 2 5 4 3 -> median 3
        assert hodges_lehmann([1, 2, 3], [4, 5, 6]) == 3.0
        assert hodges_lehmann([10, 20], [11, 21, 31]) == 6.0  # 1 -9 11 1 21 11 -> sorted -9 1 1 11 11 21

    def test_run_to_run_spread_is_the_largest_distance_of_a_runs_median_from_the_pooled_median(self):
        assert run_to_run_spread([[1.0, 1.0, 1.0]]) == 0.0
        # pooled median of the 6 values is 1.0; the runs' medians 1.0 and 1.1 -> 10%
        assert run_to_run_spread([[0.9, 1.0, 1.0], [1.0, 1.1, 1.2]]) == pytest.approx(0.1)


class TestCompareSamples:
    @pytest.fixture(scope="class")
    def noise(self):
        rng = np.random.default_rng(2026)
        return 0.5e-3 * (1 + rng.gamma(2.0, 0.02, 2000))  # ~0.52 ms, right-skewed like real latencies

    def test_a_twenty_percent_slowdown_is_slower(self, noise):
        verdict = compare_samples(noise[:1000], noise[1000:1200] * 1.2)
        assert verdict.verdict == "slower" and verdict.changed and verdict.significant
        assert verdict.ratio == pytest.approx(1.2, rel=0.02) and verdict.p_value < 1e-20
        assert (verdict.n_old, verdict.n_new) == (1000, 200)
        assert verdict.shift == pytest.approx(0.2 * verdict.median_old, rel=0.15)

    def test_a_speedup_is_faster(self, noise):
        assert compare_samples(noise[:1000], noise[1000:1200] / 1.3).verdict == "faster"

    def test_the_same_noise_is_no_difference(self, noise):
        verdict = compare_samples(noise[:1000], noise[1000:1200])
        assert verdict.verdict == "no significant difference" and not verdict.changed
        assert verdict.p_value > 0.01

    def test_a_significant_but_small_change_is_below_the_minimum_effect(self, noise):
        verdict = compare_samples(noise[:1000], noise[1000:2000] * 1.02)
        assert verdict.significant and abs(verdict.ratio - 1.02) < 0.01
        assert verdict.verdict == "no significant difference"
        assert compare_samples(noise[:1000], noise[1000:2000] * 1.02, min_effect=0.01).verdict == "slower"

    def test_a_large_change_on_too_few_samples_is_not_significant(self):
        # 3 vs 3 samples can never reach p < 0.01 (the smallest two-sided exact p is 0.1)
        verdict = compare_samples([1.0, 1.1, 1.2], [2.0, 2.1, 2.2])
        assert verdict.ratio == pytest.approx(2.1 / 1.1) and verdict.p_value == pytest.approx(0.1)
        assert verdict.verdict == "no significant difference"

    def test_it_describes_itself_in_one_line(self, noise):
        line = compare_samples(noise[:1000], noise[1000:1200] * 1.2).describe()
        assert line.startswith("slower: median 0.5") and " ms (x1.19" in line and line.endswith("n = 1000 vs 200")

    @pytest.mark.parametrize("old, new, kwargs, message", [
        ([], [1.0], {}, "old: no samples"),
        ([1.0], [float("nan"), 1.0], {}, r"new: 1 of 2 values are not finite"),
        ([1.0, -2.0], [1.0], {}, "old: timings must be positive; 1 are not"),
        ([1.0], ["fast"], {}, "new: expected numbers"),
        ([[1.0, 2.0]], [1.0], {}, "old: expected a flat list"),
        ([1.0], [1.0], {"alpha": 1.5}, "alpha must be between 0 and 1"),
        ([1.0], [1.0], {"min_effect": -0.1}, "min_effect must be a fraction >= 0"),
    ])
    def test_bad_input_is_named(self, old, new, kwargs, message):
        with pytest.raises(UserError, match=message):
            compare_samples(old, new, **kwargs)
