"""The leaderboard statistics: t distribution, intervals, paired tests, corrections, rank groups,
and the across-board statistics, each against scipy or a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness.stats import (
    Interval,
    benjamini_hochberg,
    board_ranks,
    confidence_interval,
    correct_p_values,
    friedman_test,
    holm,
    iqm,
    mcnemar_test,
    mean_std,
    nemenyi_critical_difference,
    nemenyi_q,
    paired_t_test,
    paired_test,
    paired_tests,
    paired_wilcoxon_test,
    performance_profile,
    probability_of_improvement,
    rank_groups,
    stratified_bootstrap_interval,
    t_cdf,
    t_critical,
    t_two_sided_p,
)

# two-sided 5% and 1% critical values from a printed t table
T_TABLE = [(12.706, 1, 0.05), (4.303, 2, 0.05), (2.776, 4, 0.05), (2.228, 10, 0.05), (2.045, 29, 0.05), (3.707, 6, 0.01), (9.925, 2, 0.01)]


@pytest.mark.parametrize(("t", "df", "p"), T_TABLE)
def test_two_sided_p_matches_t_table(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)
    assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)
    assert t_cdf(t, df) == pytest.approx(1 - p / 2, abs=1e-4) and t_cdf(-t, df) == pytest.approx(p / 2, abs=1e-4)


@pytest.mark.parametrize(("t", "df", "p"), T_TABLE)
def test_critical_value_inverts_the_cdf(t, df, p):
    assert t_critical(df, 1 - p) == pytest.approx(t, abs=2e-3)
    assert t_cdf(t_critical(df), df) == pytest.approx(0.975, abs=1e-12)


def test_t_distribution_limits():
    assert t_cdf(0.0, 3) == 0.5 and t_two_sided_p(0.0, 3) == 1.0
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, abs=1e-5)  # tends to the normal
    assert t_two_sided_p(math.inf, 3) == 0.0
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi


def test_confidence_interval_of_a_hand_computed_sample():
    mean, std = mean_std([1, 2, 3, 4, 5])
    assert mean == 3 and std == pytest.approx(math.sqrt(2.5))
    ci = confidence_interval(mean, std, 5)
    # 3 ± 2.7764 * 1.5811 / sqrt(5)
    assert ci.low == pytest.approx(1.0367568385, abs=1e-9) and ci.high == pytest.approx(4.9632431615, abs=1e-9)


def test_interval_is_undefined_for_one_seed():
    assert mean_std([0.7]) == (0.7, None)
    assert confidence_interval(0.7, None, 1) is None
    assert confidence_interval(0.7, 0.0, 1) is None


def test_paired_t_test_on_a_hand_example():
    entry = {0: 0.72, 1: 0.75, 2: 0.70, 3: 0.74, 5: 0.99}  # seed 5 has no baseline partner
    baseline = {0: 0.70, 1: 0.71, 2: 0.70, 3: 0.71, 9: 0.50}
    test = paired_t_test(entry, baseline)
    # d = .02 .04 0 .03: mean .0225, sd .017078, t = 2.6349, df 3
    assert test.n_pairs == 4 and test.mean_diff == pytest.approx(0.0225)
    assert test.statistic == pytest.approx(2.634930197, abs=1e-8) and test.p == pytest.approx(0.0779943264, abs=1e-8)


def test_paired_t_test_degenerate_cases():
    assert paired_t_test({0: 1.0}, {1: 1.0}).n_pairs == 0 and paired_t_test({0: 1.0}, {1: 1.0}).p is None
    one = paired_t_test({0: 0.9}, {0: 0.8})
    assert one.n_pairs == 1 and one.p is None and one.mean_diff == pytest.approx(0.1)
    assert paired_t_test({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}).p == 1.0  # identical: no difference at all
    assert paired_t_test({0: 0.75, 1: 0.875}, {0: 0.5, 1: 0.625}).p == 0.0  # same nonzero difference every seed


def test_rank_groups_follow_the_documented_rule():
    items = [
        (0.80, Interval(0.78, 0.82)),  # A leads group 1
        (0.79, Interval(0.77, 0.81)),  # B overlaps A -> 1
        (0.75, Interval(0.70, 0.80)),  # C overlaps A (0.80 >= 0.78) -> 1
        (0.70, Interval(0.69, 0.71)),  # D does not overlap A -> leads group 2
        (0.69, Interval(0.60, 0.79)),  # E overlaps D -> 2 (compared with its group's leader only)
        (0.50, None),  # F: one seed, the point 0.50 -> group 3
    ]
    assert rank_groups(items) == [1, 1, 1, 2, 2, 3]
    # the result is in the input order, whatever that is
    assert rank_groups(items[::-1]) == [3, 2, 2, 1, 1, 1]


def test_rank_groups_lower_is_better_and_point_intervals():
    items = [(0.30, None), (0.10, None), (0.30, None), (0.12, Interval(0.05, 0.19))]
    assert rank_groups(items, higher_is_better=False) == [2, 1, 2, 1]
    # separated intervals never tie; touching ones do
    assert rank_groups([(1.0, Interval(0.9, 1.1)), (0.7, Interval(0.6, 0.8))]) == [1, 2]
    assert rank_groups([(1.0, Interval(0.9, 1.1)), (0.8, Interval(0.7, 0.9))]) == [1, 1]
    assert rank_groups([]) == []


# ---------------------------------------------------------------------------------------------
# multiple comparisons
# ---------------------------------------------------------------------------------------------


def test_holm_on_hand_computed_cases():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06 for the last
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.1 * 3 = 0.3; 0.6 * 2 = 1.2 clipped to 1; 0.9 * 1 = 0.9 raised to the running max 1
    assert holm([0.6, 0.9, 0.1]) == pytest.approx([1.0, 1.0, 0.3])
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_benjamini_hochberg_on_hand_computed_cases():
    # sorted 0.005, 0.01, 0.03, 0.04 times m/i = 4, 2, 4/3, 1: 0.02, 0.02, 0.04, 0.04 (already monotone)
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # 0.01*4 = 0.04, 0.02*2 = 0.04, 0.03*4/3 = 0.04, 0.5: the step-up minimum keeps 0.04
    assert benjamini_hochberg([0.5, 0.03, 0.02, 0.01]) == pytest.approx([0.5, 0.04, 0.04, 0.04])
    # 0.01*3 = 0.03 but the next step 0.02*3/2 = 0.03 and 0.025*1 = 0.025 pulls both down to 0.025
    assert benjamini_hochberg([0.01, 0.02, 0.025]) == pytest.approx([0.025, 0.025, 0.025])


def test_bh_is_never_stricter_than_holm_and_none_keeps_raw_values():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = list(rng.uniform(0, 0.2, size=7))
        assert all(b <= h + 1e-15 for b, h in zip(benjamini_hochberg(p), holm(p)))
        assert all(h >= raw for h, raw in zip(holm(p), p))


def test_correct_p_values_skips_undefined_p_values():
    assert correct_p_values([None, 0.01, None, 0.04], "holm") == pytest.approx([None, 0.02, None, 0.04])
    assert correct_p_values([None, 0.01, None, 0.04], "bh") == pytest.approx([None, 0.02, None, 0.04])  # 0.01 * 2/1, 0.04 * 2/2
    assert correct_p_values([0.3, None], "none") == [0.3, None]
    assert correct_p_values([None, None], "holm") == [None, None]
    assert correct_p_values([math.nan, 0.01], "bh") == [None, 0.01]  # NaN is no p-value, not a member of the family
    with pytest.raises(ValueError, match="holm, bh, none"):
        correct_p_values([0.1], "bonferroni")


# ---------------------------------------------------------------------------------------------
# paired tests
# ---------------------------------------------------------------------------------------------


def test_paired_t_test_agrees_with_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.7, 0.02, 5), rng.normal(0.68, 0.02, 5)
    test = paired_t_test(dict(enumerate(a)), dict(enumerate(b)))
    ref = scipy_stats.ttest_rel(a, b)
    assert test.statistic == pytest.approx(ref.statistic) and test.p == pytest.approx(ref.pvalue) and test.test == "t"


def test_wilcoxon_on_a_hand_computed_case():
    # d = .10 .20 -.05 .30 .15 .12: |d| ranks 2 5 1 6 4 3, W- = 1 (the only negative), W+ = 20;
    # exact two-sided p = 2 * P(W <= 1) = 2 * 2/64 (the empty set and {1}) = 0.0625
    base = {s: 0.5 for s in range(6)}
    entry = {s: 0.5 + d for s, d in enumerate([0.10, 0.20, -0.05, 0.30, 0.15, 0.12])}
    test = paired_wilcoxon_test(entry, base)
    assert test.n_pairs == 6 and test.statistic == 1.0 and test.p == pytest.approx(0.0625) and test.test == "wilcoxon"
    # all six better: W = 0, p = 2/64, the smallest p six pairs can give
    assert paired_test({s: 1.0 + s for s in range(6)}, {s: float(s) for s in range(6)}, "wilcoxon").p == pytest.approx(0.03125)


def test_wilcoxon_needs_six_pairs_and_handles_no_difference():
    five = paired_wilcoxon_test({s: 1.0 for s in range(5)}, {s: 0.0 for s in range(5)})
    assert five.n_pairs == 5 and five.p is None and five.mean_diff == 1.0
    assert paired_wilcoxon_test({s: 0.3 for s in range(6)}, {s: 0.3 for s in range(6)}).p == 1.0
    with pytest.raises(ValueError, match="t, wilcoxon"):
        paired_test({0: 1.0}, {0: 1.0}, "sign")


def test_mcnemar_on_a_hand_computed_case():
    # b = 8 samples only the entry gets right, c = 2 only the baseline, 5 both, 5 neither
    entry = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 5
    base = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 5
    exact = mcnemar_test(entry, base)
    assert (exact.only_entry, exact.only_baseline) == (8, 2)
    assert exact.p == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 2 * P(X <= 2), X ~ Binomial(10, 1/2)
    approx = mcnemar_test(entry, base, exact=False)
    assert approx.statistic == pytest.approx(2.5)  # (|8 - 2| - 1)^2 / 10
    assert approx.p == pytest.approx(math.erfc(math.sqrt(2.5) / math.sqrt(2)))  # chi-square, 1 df
    assert mcnemar_test(base, entry).p == exact.p  # symmetric
    assert mcnemar_test([True, False], [True, False]).p == 1.0
    with pytest.raises(ValueError, match="pairs samples"):
        mcnemar_test([True], [True, False])


# ---------------------------------------------------------------------------------------------
# across boards
# ---------------------------------------------------------------------------------------------


def test_board_ranks_average_ties_and_follow_the_direction():
    assert board_ranks([0.9, 0.5, 0.7]) == [1.0, 3.0, 2.0]
    assert board_ranks([0.9, 0.5, 0.7], higher_is_better=False) == [3.0, 1.0, 2.0]
    assert board_ranks([0.5, 0.9, 0.5, 0.1]) == [2.5, 1.0, 2.5, 4.0]


def test_friedman_against_scipy_and_the_hand_formula():
    # A best everywhere; B second on 3 of 4 boards: average ranks 1, 2.25, 2.75
    table = [[0.9, 0.8, 0.7], [0.8, 0.6, 0.5], [0.7, 0.65, 0.6], [0.95, 0.5, 0.55]]
    test = friedman_test(table)
    ref = scipy_stats.friedmanchisquare(*np.asarray(table).T)
    assert test.statistic == pytest.approx(ref.statistic) and test.p == pytest.approx(ref.pvalue)
    # 12N / (k(k+1)) * (sum R_j^2 - k(k+1)^2 / 4) = 4 * (13.625 - 12) = 6.5; chi-square with 2 df: exp(-6.5/2)
    assert test.statistic == pytest.approx(6.5) and test.p == pytest.approx(math.exp(-3.25))
    assert (test.methods, test.boards) == (3, 4)
    with pytest.raises(ValueError, match="at least 2 boards and 3 methods"):
        friedman_test([[0.1, 0.2, 0.3]])


# Demšar (2006), Table 5(a): q_0.05 of the Nemenyi test for k = 2..10 classifiers
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]


@pytest.mark.parametrize(("k", "q"), list(zip(range(2, 11), DEMSAR_Q05)))
def test_nemenyi_q_matches_the_published_table(k, q):
    assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_nemenyi_critical_difference_of_demsars_example():
    # Demšar Sec. 3.2.4: 4 classifiers on 14 data sets, CD = 2.569 * sqrt(4 * 5 / (6 * 14)) = 1.25
    assert nemenyi_critical_difference(4, 14) == pytest.approx(1.25, abs=5e-3)
    assert nemenyi_critical_difference(4, 56) == pytest.approx(nemenyi_critical_difference(4, 14) / 2)


def test_iqm_on_hand_made_lists():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # mean of 3, 4, 5, 6
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == 4.5  # the outlier is trimmed
    assert iqm([4, 1, 3, 2]) == 2.5  # order does not matter
    assert iqm([0.3]) == 0.3
    with pytest.raises(ValueError):
        iqm([])


def test_stratified_bootstrap_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    strata = [list(rng.normal(m, 0.1, 5)) for m in (0.0, 0.5, 1.0)]
    interval = stratified_bootstrap_interval(strata, seed=7)
    point = iqm([x for s in strata for x in s])
    assert interval.low <= point <= interval.high and interval.low < interval.high
    assert stratified_bootstrap_interval(strata, seed=7) == interval
    assert stratified_bootstrap_interval(strata, seed=8) != interval
    # resampling stays within each stratum: the mean of two constant strata of 3 runs never moves
    fixed = stratified_bootstrap_interval([[0.0] * 3, [1.0] * 3], lambda x: x.mean(axis=1))
    assert (fixed.low, fixed.high) == (0.5, 0.5)


def test_probability_of_improvement_on_a_hand_made_case():
    # task 1: 3>1, 3<5, 4>1, 4<5 -> 2/4; task 2: 2=2 (1/2), 2>1, 2=2 (1/2), 2>1 -> 3/4; mean 0.625
    assert probability_of_improvement([[3, 4], [2, 2]], [[1, 5], [2, 1]]) == pytest.approx(0.625)
    assert probability_of_improvement([[1, 2, 3]], [[1, 2, 3]]) == pytest.approx(0.5)
    assert probability_of_improvement([[5, 6]], [[1, 2]]) == 1.0
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement([[1]], [])


def test_performance_profile_counts_scores_at_or_above_tau():
    assert performance_profile([0.2, 0.5, 1.0, -0.3], [0.0, 0.5, 1.0, 1.5]) == [0.75, 0.5, 0.25, 0.0]


def test_batched_t_tests_match_one_at_a_time_and_scipy():
    rng = np.random.default_rng(5)
    baseline = {s: float(v) for s, v in enumerate(rng.normal(0.5, 0.02, 5))}
    entries = [{s: float(v) for s, v in enumerate(rng.normal(0.52, 0.02, 5))} for _ in range(6)]
    entries += [{}, {0: 0.6}, {s: baseline[s] + 0.01 for s in range(5)}, dict(baseline)]  # none, one pair, ~constant, identical
    batch = paired_tests(entries, baseline)
    assert batch == [paired_t_test(e, baseline) for e in entries]
    for e, test in zip(entries[:6], batch):
        ref = scipy_stats.ttest_rel([e[s] for s in range(5)], [baseline[s] for s in range(5)])
        assert test.statistic == pytest.approx(ref.statistic) and test.p == pytest.approx(ref.pvalue)
    assert batch[6].p is None and batch[7].p is None and batch[8].p == pytest.approx(0.0, abs=1e-12) and batch[9].p == 1.0
    overflow = paired_t_test({0: 1e308, 1: -1e308}, {0: -1e308, 1: 1e308})  # differences overflow to ±inf
    assert overflow.n_pairs == 2 and overflow.p is None and overflow.mean_diff is None
