"""Leaderboard p-values against the baseline: the paired test (t or Wilcoxon), the multiple-comparison
correction over a board (Holm, Benjamini–Hochberg or none), and the "beats the baseline" mark."""

from __future__ import annotations

import json

import pytest

from harness.leaderboard import build_boards, render
from harness.store import ResultStore
from harness.testing import fake_record, run_cli


@pytest.fixture
def store(tmp_path):
    """Three entries on one board: focal and ldam beat ce (raw p 0.0041 and 0.0110)."""
    store = ResultStore(tmp_path)
    values = {"ce": [0.60, 0.62, 0.64], "focal": [0.70, 0.71, 0.72], "ldam": [0.70, 0.70, 0.71]}
    for entry, vals in values.items():
        for seed, v in enumerate(vals):
            record = fake_record(entry=entry, seed=seed, value=v)
            record["baseline"] = "ce"  # as a run records its suite's baseline
            store.write(record)
    store.sync()
    return store


def boards(store, **kw):
    con = store.connect(read_only=True)
    try:
        return build_boards(con, baselines=kw.pop("baselines", {"long_tail": "ce"}), **kw)
    finally:
        con.close()


def test_p_values_are_holm_corrected_over_the_board_by_default(store):
    rows = json.loads(render(boards(store), "json"))
    focal = next(r for r in rows if r["method"] == "focal")
    ldam = next(r for r in rows if r["method"] == "ldam")
    # raw p: focal 0.004090 (d = .10 .09 .08: t = 15.59), ldam 0.011015 (d = .10 .08 .07: t = 9.449); 2 comparisons with ce
    assert ldam["p_vs_baseline"] == pytest.approx(0.011015, abs=2e-6)
    assert focal["p_vs_baseline_corrected"] == pytest.approx(2 * focal["p_vs_baseline"])
    assert ldam["p_vs_baseline_corrected"] == pytest.approx(ldam["p_vs_baseline"])
    assert focal["correction"] == "holm" and focal["test"] == "t" and focal["beats_baseline"] is True
    ce = next(r for r in rows if r["method"] == "ce")
    assert ce["p_vs_baseline_corrected"] is None and ce["beats_baseline"] is None


@pytest.fixture
def borderline(tmp_path):
    """Two entries whose raw p-values are just under 0.05: a better (p 0.0488), b worse (p 0.0444)."""
    store = ResultStore(tmp_path)
    for seed, (up, down) in enumerate(((0.02, 0.02), (0.03, 0.035), (0.045, 0.045))):
        store.write(fake_record(entry="ce", seed=seed, value=0.5))
        store.write(fake_record(entry="a", seed=seed, value=0.5 + up))
        store.write(fake_record(entry="b", seed=seed, value=0.5 - down))
    store.sync()
    return store


@pytest.mark.parametrize(("correction", "a_p", "b_p", "marked"), [
    ("none", 0.048810, 0.044363, True),  # raw: both significant
    ("holm", 2 * 0.044363, 2 * 0.044363, False),  # 0.0444 * 2; a's 0.0488 * 1 is raised to the running max
    ("bh", 0.048810, 0.048810, True),  # a: 0.0488 * 2/2; b: 0.0444 * 2/1 = 0.0887, stepped down to 0.0488
])
def test_the_beats_baseline_mark_follows_the_corrected_p(borderline, correction, a_p, b_p, marked):
    (board,) = boards(borderline, baselines={"long_tail": "ce"}, correction=correction)
    by_name = {e.method: e for e in board.entries}
    assert by_name["a"].p_corrected == pytest.approx(a_p, abs=2e-6) and by_name["b"].p_corrected == pytest.approx(b_p, abs=2e-6)
    assert by_name["a"].beats_baseline is marked and by_name["b"].beats_baseline is False
    assert by_name["b"].versus_baseline == ("worse" if marked else "tied")
    table = render([board], "table")
    rows = table.split("\n\n")[1]  # the table without the footnote, which explains the marks
    assert ("▲" in rows) is marked and ("▼" in rows) is marked
    label = {"none": "raw", "holm": "Holm", "bh": "BH"}[correction]
    assert f"p vs ce (t, {label})" in table
    note = {"none": "not corrected", "holm": "Holm-adjusted", "bh": "Benjamini–Hochberg-adjusted"}[correction]
    assert note in table


def test_wilcoxon_needs_six_matched_seeds(tmp_path, borderline):
    (board,) = boards(borderline, baselines={"long_tail": "ce"}, test="wilcoxon")
    a = next(e for e in board.entries if e.method == "a")
    assert a.baseline_test.test == "wilcoxon" and a.baseline_test.p is None and a.p_corrected is None
    assert "- (n=3)" in render([board], "table") and "Wilcoxon signed-rank test (needs ≥ 6 pairs)" in render([board], "table")
    store = ResultStore(tmp_path / "six")
    for seed in range(6):
        store.write(fake_record(entry="ce", seed=seed, value=0.5))
        store.write(fake_record(entry="a", seed=seed, value=0.6 + seed / 100))
    store.sync()
    (board,) = boards(store, baselines={"long_tail": "ce"}, test="wilcoxon")
    a = next(e for e in board.entries if e.method == "a")
    # six positive differences: W = 0, exact two-sided p = 2/64; one comparison, so Holm leaves it
    assert a.baseline_test.p == pytest.approx(0.03125) and a.p_corrected == pytest.approx(0.03125) and a.beats_baseline


def test_unknown_test_or_correction_is_refused(store):
    with pytest.raises(ValueError, match="t, wilcoxon"):
        boards(store, test="z")
    with pytest.raises(ValueError, match="holm, bh, none"):
        boards(store, correction="bonferroni")


def test_leaderboard_command_takes_test_and_correction(store):
    code, out, err = run_cli("leaderboard", f"results={store.root}", "correction=bh", "format=markdown")
    assert code == 0, err
    assert "p vs ce (t, BH)" in out and "Benjamini–Hochberg-adjusted" in out
    code, out, _ = run_cli("leaderboard", f"results={store.root}")
    assert "p vs ce (t, Holm)" in out and "0.008 ▲ (n=3)" in out  # Holm by default
    code, out, _ = run_cli("leaderboard", f"results={store.root}", "test=wilcoxon", "format=csv")
    assert code == 0 and ",wilcoxon,holm," in out
    code, _, err = run_cli("leaderboard", f"results={store.root}", "correction=bonferroni")
    assert code == 2 and "bad value 'bonferroni' for correction: expected one of holm, bh, none" in err
    code, _, err = run_cli("leaderboard", f"results={store.root}", "test=ttest")
    assert code == 2 and "expected one of t, wilcoxon" in err
