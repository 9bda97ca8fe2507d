"""The leaderboard statistics: t distribution, intervals, paired tests and rank groups."""

from __future__ import annotations

import math

import pytest

from harness.stats import (
    Interval,
    betainc,
    confidence_interval,
    mean_std,
    paired_t_test,
    rank_groups,
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


@pytest.mark.parametrize(("a", "b", "x", "expected"), [
    (1, 1, 0.3, 0.3),  # uniform
    (3, 1, 0.4, 0.4**3),  # I_x(a, 1) = x^a
    (1, 4, 0.2, 1 - 0.8**4),  # I_x(1, b) = 1 - (1-x)^b
    (7.5, 7.5, 0.5, 0.5),  # symmetry
    (0.5, 0.5, 0.25, 2 / math.pi * math.asin(0.5)),  # arcsine distribution
])
def test_incomplete_beta_closed_forms(a, b, x, expected):
    assert betainc(a, b, x) == pytest.approx(expected, abs=1e-13)


def test_incomplete_beta_agrees_with_scipy_where_installed():
    special = pytest.importorskip("scipy.special")
    for a, b, x in [(0.5, 0.5, 0.01), (2, 30, 0.05), (50, 0.5, 0.99), (15, 0.5, 0.7), (0.1, 0.1, 0.5)]:
        assert betainc(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-10, abs=1e-14)


def test_betainc_rejects_bad_arguments():
    with pytest.raises(ValueError, match="a > 0"):
        betainc(0, 1, 0.5)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        betainc(1, 1, 1.5)


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
    assert test.t == pytest.approx(2.634930197, abs=1e-8) and test.p == pytest.approx(0.0779943264, abs=1e-8)


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
