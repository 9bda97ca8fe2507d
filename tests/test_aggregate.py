"""`harness leaderboard aggregate`: one ranking across boards, each statistic against scipy or a hand-computed case."""

from __future__ import annotations

import json

import pytest
from scipy import stats as scipy_stats

from harness.aggregate import TAUS, aggregate, render
from harness.leaderboard import build_boards
from harness.store import ResultStore
from harness.testing import fake_record, run_cli

BASELINES = {"long_tail": "ce"}
# ratio -> method -> mean; each method runs 3 seeds at mean - 0.01, mean, mean + 0.01
MEANS = {
    10: {"ce": 0.50, "a": 0.60, "b": 0.55, "c": 0.52},  # ranks a 1, b 2, c 3, ce 4
    50: {"ce": 0.50, "a": 0.58, "b": 0.60, "c": 0.45},  # b 1, a 2, ce 3, c 4
    100: {"ce": 0.40, "a": 0.50, "b": 0.45, "c": 0.42},  # a 1, b 2, c 3, ce 4
    200: {"ce": 0.30, "a": 0.35, "b": 0.33, "c": 0.36},  # c 1, a 2, b 3, ce 4
}


def write_board(store, means, *, higher_is_better=True, suite="long_tail", variant=None, baseline="ce"):
    for entry, mean in means.items():
        for seed, offset in enumerate((-0.01, 0.0, 0.01)):
            record = fake_record(entry=entry, seed=seed, value=round(mean + offset, 4), suite=suite, variant=variant, higher_is_better=higher_is_better)
            record["baseline"] = baseline  # as a run records its suite's baseline
            store.write(record)


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results")
    for ratio, means in MEANS.items():
        write_board(store, means, variant={"ratio": ratio})
    store.sync()
    return store


def boards_of(store, **kw):
    con = store.connect(read_only=True)
    try:
        return build_boards(con, baselines=kw.pop("baselines", BASELINES), **kw)
    finally:
        con.close()


def by_method(agg):
    return {s.method: s for s in agg.methods}


def test_average_ranks_friedman_and_critical_difference(store):
    agg = aggregate(boards_of(store))
    s = by_method(agg)
    assert [m.method for m in agg.methods] == ["a", "b", "c", "ce"]
    assert [s[m].avg_rank for m in ("a", "b", "c", "ce")] == [1.5, 2.0, 2.75, 3.75]
    assert all(s[m].boards == 4 and s[m].friedman_rank == s[m].avg_rank for m in s)  # every method on every board
    # the boards x methods table against scipy, and the hand formula:
    # 12N/(k(k+1)) (sum R^2 - k(k+1)^2/4) = 12*4/20 * (27.875 - 25) = 6.9
    table = [[MEANS[r][m] for m in ("a", "b", "c", "ce")] for r in sorted(MEANS)]
    ref = scipy_stats.friedmanchisquare(*zip(*table))
    assert agg.friedman.statistic == pytest.approx(ref.statistic) == pytest.approx(6.9)
    assert agg.friedman.p == pytest.approx(ref.pvalue) and (agg.friedman.methods, agg.friedman.boards) == (4, 4)
    # Demšar's q_0.05 for k = 4 is 2.569: CD = 2.569 * sqrt(4*5 / (6*4))
    assert agg.critical_difference == pytest.approx(2.569 * (20 / 24) ** 0.5, abs=1e-3)
    assert agg.friedman_methods == ["a", "b", "c", "ce"] and "CD = " in agg.friedman_note


def test_normalised_iqm_interval_and_profile(store):
    s = by_method(aggregate(boards_of(store)))
    # a's normalised runs: ratio 10 and 100 [.9 1 1.1] (a is best), ratio 50 [.7 .8 .9] (b best at .60),
    # ratio 200 [.667 .833 1] (c best at .36): 12 runs, trim 3 each end -> mean(.833, .9, .9, .9, 1, 1)
    assert s["a"].iqm == pytest.approx((0.05 / 0.06 + 0.9 * 3 + 1 + 1) / 6)
    assert s["a"].iqm_low <= s["a"].iqm <= s["a"].iqm_high and s["a"].normalised_boards == 4
    assert s["ce"].iqm == pytest.approx(0.0, abs=1e-12)  # the baseline's runs sit symmetrically around 0
    # board means normalised: a 1, .8, 1, .833; c .2, -.5, .2, 1
    profile = dict(zip(TAUS, s["a"].profile))
    assert profile[0.5] == 1.0 and profile[0.9] == 0.5 and profile[1.0] == 0.5 and profile[-1.0] == 1.0
    c = dict(zip(TAUS, s["c"].profile))
    assert c[-0.6] == 1.0 and c[0.0] == 0.75 and c[0.5] == 0.25 and c[1.0] == 0.25


def test_probability_of_improvement_on_a_hand_made_case(store):
    s = by_method(aggregate(boards_of(store)))
    # c vs ce per board: ratio 10 and 100 c [.51 .52 .53] vs ce [.49 .50 .51]: 8 wins and a tie of 9 pairs -> 8.5/9;
    # ratio 50 c below every ce run -> 0; ratio 200 c above every ce run -> 1
    assert s["c"].p_improvement == pytest.approx((8.5 / 9 + 0 + 8.5 / 9 + 1) / 4) and s["c"].improvement_boards == 4
    assert s["a"].p_improvement == 1.0 and s["ce"].p_improvement is None


def test_bootstrap_is_reproducible_and_independent_of_other_methods(store, tmp_path):
    first, second = aggregate(boards_of(store)), aggregate(boards_of(store))
    assert render(first, "json") == render(second, "json")
    more = ResultStore(tmp_path / "more")  # the same boards and a method that is never best
    for ratio, means in MEANS.items():
        write_board(more, {**means, "z": 0.1}, variant={"ratio": ratio})
    more.sync()
    again = by_method(aggregate(boards_of(more)))["a"]
    assert (again.iqm_low, again.iqm_high) == (by_method(first)["a"].iqm_low, by_method(first)["a"].iqm_high)


def test_lower_is_better_boards_normalise_by_direction(tmp_path):
    store = ResultStore(tmp_path)
    write_board(store, {"ce": 0.5, "a": 0.3, "b": 0.4}, higher_is_better=False)
    store.sync()
    agg = aggregate(boards_of(store))
    s = by_method(agg)
    assert [m.method for m in agg.methods] == ["a", "b", "ce"]  # lowest error ranks first
    # (0.4 - 0.5) / (0.3 - 0.5) = 0.5; b's runs .39 .40 .41 -> .55 .5 .45
    assert s["b"].iqm == pytest.approx(0.5) and s["a"].iqm == pytest.approx(1.0)
    assert s["a"].p_improvement == 1.0 and s["b"].p_improvement == 1.0  # lower error beats the baseline


def test_boards_without_a_usable_baseline_are_left_out_with_a_note(tmp_path):
    store = ResultStore(tmp_path)
    write_board(store, {"ce": 0.5, "a": 0.6}, variant={"ratio": 10})
    write_board(store, {"ce": 0.7, "a": 0.6}, variant={"ratio": 50})  # the baseline is the best entry
    write_board(store, {"x": 0.7, "a": 0.6}, suite="ghost_suite", baseline=None)  # no baseline entry
    write_board(store, {"a": 0.6}, variant={"ratio": 5})  # one entry ranks nothing
    store.sync()
    agg = aggregate(boards_of(store))
    assert len(agg.tasks) == 3 and len(agg.normalised_tasks) == 1
    notes = "\n".join(agg.notes)
    assert "ratio=5" in notes and "fewer than 2 entries" in notes
    assert "ratio=50" in notes and "the baseline ce is the best entry" in notes
    assert "ghost_suite" in notes and "no baseline entry" in notes
    a = by_method(agg)["a"]
    assert a.boards == 3 and a.normalised_boards == 1 and a.iqm == pytest.approx(1.0)
    # the probability of improvement needs no normalisation: it counts the board the baseline wins
    assert a.improvement_boards == 2 and a.p_improvement == pytest.approx(0.5)
    assert agg.friedman is None and "not computed" in agg.friedman_note  # x and the baseline are not on every board
    table = render(agg)
    assert "left out of the normalised statistics" in table and "(score − baseline) / (best entry − baseline)" in table


def test_render_formats(store):
    agg = aggregate(boards_of(store))
    table = render(agg, "table")
    assert table.startswith("aggregate over 4 board(s) of 1 suite(s) (long_tail)") and "Friedman test over the 4 methods" in table
    md = render(agg, "markdown")
    assert md.startswith("### aggregate") and "| method" in md and "- avg rank" in md
    data = json.loads(render(agg, "json"))
    assert data["friedman"]["critical_difference"] == pytest.approx(agg.critical_difference)
    assert [m["method"] for m in data["methods"]] == ["a", "b", "c", "ce"] and len(data["methods"][0]["profile"]) == len(TAUS)
    assert all(b["normalised"] for b in data["boards"]) and "best entry" in data["normalisation"]


def test_aggregate_command(store, tmp_path):
    code, out, err = run_cli("leaderboard", "aggregate", f"results={store.root}")
    assert code == 0, err
    assert "aggregate over 4 board(s)" in out and "Friedman test" in out
    code, out, err = run_cli("leaderboard", "aggregate", f"results={store.root}", "format=json")
    assert code == 0 and json.loads(out)["friedman"]["methods"] == 4
    code, _, err = run_cli("leaderboard", "aggregate", f"results={store.root}", "format=csv")
    assert code == 2 and "table, markdown, json" in err
    code, _, err = run_cli("leaderboard", "aggregate", f"results={store.root}", "correction=bh")
    assert code == 2 and "does not take correction" in err
    code, _, err = run_cli("leaderboard", "aggregate", f"results={tmp_path / 'empty'}")
    assert code == 2 and "no results database" in err
    code, _, err = run_cli("leaderboard", "aggregate", f"results={store.root}", "suite=noisy_labels")
    assert code == 2 and "no stored runs for suite=noisy_labels" in err
