"""Leaderboard aggregation, ranking and rendering over stored runs."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from harness.leaderboard import build_boards, render
from harness.store import ResultStore
from harness.testing import fake_record


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path)
    values = {"ce": [0.60, 0.62, 0.64], "focal": [0.70, 0.71, 0.72], "ldam": [0.70, 0.70, 0.71]}
    for entry, vals in values.items():
        for seed, v in enumerate(vals):
            store.write(fake_record(entry=entry, seed=seed, value=v, extra={"few_shot": v / 2}))
    store.write(fake_record(entry="ldam", seed=3, status="failed"))
    store.write(fake_record(entry="broken", seed=0, status="diverged"))
    store.write(fake_record(entry="ce", seed=0, value=0.99, variant={"ratio": 10}))  # another protocol
    store.write(fake_record(entry="ce", seed=0, value=0.99, version="2"))  # another suite version
    store.sync()
    return store


def boards(store, **kw):
    con = store.connect(read_only=True)
    try:
        return build_boards(con, **kw)
    finally:
        con.close()


def test_protocols_are_never_mixed(store):
    titles = [b.title for b in boards(store)]
    assert len(titles) == 3
    assert sum("ratio=100" in t and " v1 " in t for t in titles) == 1


def test_mean_std_n_rank_and_failures(store):
    (board,) = [b for b in boards(store) if b.protocol["variant"] == "ratio=100" and b.protocol["suite_version"] == "1"]
    by_name = {e.method: e for e in board.entries}
    focal = by_name["focal"].metrics["top1"]
    assert focal["mean"] == pytest.approx(0.71) and focal["std"] == pytest.approx(statistics.stdev([0.70, 0.71, 0.72])) and focal["n"] == 3
    assert [e.method for e in board.entries] == ["focal", "ldam", "ce", "broken"]
    # focal's 95% CI [0.685, 0.735] overlaps ldam's [0.689, 0.718]: tied; ce's [0.570, 0.670] is below both
    assert [e.rank for e in board.entries] == [1, 1, 2, None]
    assert by_name["ldam"].ok == 3 and by_name["ldam"].not_ok == 1 and by_name["ldam"].diverged == 0
    assert by_name["broken"].ok == 0 and by_name["broken"].not_ok == 1 and by_name["broken"].diverged == 1


def test_confidence_interval_and_paired_test_against_the_baseline(store):
    (board,) = [b for b in boards(store, variant="ratio=100") if b.protocol["suite_version"] == "1"]
    assert board.baseline == "ce"  # the installed long_tail suite's baseline
    by_name = {e.method: e for e in board.entries}
    focal = by_name["focal"].metrics["top1"]
    half = 4.302652729749464 * 0.01 / 3**0.5  # t(0.975, 2) * s / sqrt(n)
    assert focal["ci_low"] == pytest.approx(0.71 - half) and focal["ci_high"] == pytest.approx(0.71 + half)
    # focal - ce per seed: 0.10, 0.09, 0.08 -> mean 0.09, sd 0.01, t = 15.588, df 2 -> p = 0.00409
    test = by_name["focal"].baseline_test
    assert test.n_pairs == 3 and test.mean_diff == pytest.approx(0.09) and test.p == pytest.approx(0.004090, abs=2e-6)
    assert by_name["ce"].baseline_test is None and by_name["broken"].baseline_test is None
    # ldam has a failed 4th seed: only the 3 ok seeds pair with ce
    assert by_name["ldam"].baseline_test.n_pairs == 3


def test_pairs_use_matching_seeds_only(tmp_path):
    store = ResultStore(tmp_path)
    for seed, v in ((0, 0.5), (1, 0.6), (2, 0.7)):
        store.write(fake_record(entry="ce", seed=seed, value=v))
    for seed, v in ((1, 0.65), (2, 0.76), (7, 0.1)):  # seed 7 has no ce partner
        store.write(fake_record(entry="focal", seed=seed, value=v))
    store.sync()
    (board,) = boards(store, baselines={"long_tail": "ce"})
    test = next(e for e in board.entries if e.method == "focal").baseline_test
    assert test.n_pairs == 2 and test.mean_diff == pytest.approx(0.055)
    (board,) = boards(store, baselines={})  # an uninstalled suite: no baseline, no p-values
    assert board.baseline is None and all(e.baseline_test is None for e in board.entries)
    assert "p vs baseline" in render([board], "table")


def test_lower_is_better_ranks_ascending_and_ties_share_a_rank(tmp_path):
    store = ResultStore(tmp_path)
    for entry, v in (("a", 0.3), ("b", 0.1), ("c", 0.3)):
        store.write(fake_record(entry=entry, value=v, higher_is_better=False))
    store.sync()
    (board,) = boards(store)
    assert [(e.method, e.rank) for e in board.entries] == [("b", 1), ("a", 2), ("c", 2)]


def test_json_has_one_object_per_row_with_the_required_fields(store):
    rows = json.loads(render(boards(store, variant="ratio=100"), "json"))
    assert {"suite", "variant", "method", "metric", "mean", "std", "n", "rank"} <= set(rows[0])
    focal = next(r for r in rows if r["method"] == "focal" and r["suite_version"] == "1")
    assert focal["metric"] == "top1" and focal["rank"] == 1 and focal["n"] == 3
    assert focal["ci_low"] < 0.71 < focal["ci_high"] and focal["baseline"] == "ce" and focal["n_pairs"] == 3
    assert focal["p_vs_baseline"] == pytest.approx(0.00409, abs=1e-5) and focal["diverged"] == 0
    ce = next(r for r in rows if r["method"] == "ce" and r["suite_version"] == "1")
    assert ce["p_vs_baseline"] is None and ce["rank"] == 2
    assert focal["metrics"]["few_shot"]["mean"] == pytest.approx(0.355)


def test_csv_markdown_and_table(store):
    selected = boards(store, variant="ratio=100")
    rows = list(csv.DictReader(io.StringIO(render(selected, "csv"))))
    assert float(next(r for r in rows if r["method"] == "focal" and r["suite_version"] == "1")["top1_mean"]) == pytest.approx(0.71)
    focal = next(r for r in rows if r["method"] == "focal" and r["suite_version"] == "1")
    assert float(focal["p_vs_baseline"]) == pytest.approx(0.00409, abs=1e-5) and focal["n_pairs"] == "3" and focal["ci_low"]
    md = render(selected, "markdown")
    assert "| rank" in md and "0.7100 ± 0.0100" in md and md.startswith("### long_tail v1")
    # focal's p 0.00409 and ldam's 0.0110 are one family: Holm doubles the smaller, keeps the larger
    assert "[0.6852, 0.7348]" in md and "0.008 ▲ (n=3)" in md and "0.011 ▲ (n=3)" in md and "+0.0900" in md and "Student t" in md
    assert "p vs ce (t, Holm)" in md and "Holm-adjusted" in md
    table = render(selected, "table")
    assert "top1 ↑" in table and "|" not in table.splitlines()[2]
    assert table.index("top1") < table.index("few_shot")  # primary metric first


def test_reported_numbers_show_beside_the_reproduced_ones_where_their_setting_applies():
    from harness.leaderboard import Board, Entry, attach_reported, render
    from harness.reported import Reported

    protocol = {"suite": "long_tail", "suite_version": "2", "scale": "paper", "variant": "ratio=100,test_dist=uniform", "dataset": "cifar10",
                "model": "resnet32", "recipe_id": "r"}
    ce = Entry("ce", "top1", True, metrics={"top1": {"mean": 0.70, "std": 0.01, "n": 3, "ci_low": 0.68, "ci_high": 0.72, "higher_is_better": True}})
    focal = Entry("focal", "top1", True, metrics={"top1": {"mean": 0.71, "std": 0.01, "n": 3, "ci_low": 0.69, "ci_high": 0.73, "higher_is_better": True}})
    paper = Reported("ce", "top1", 0.7036, "Cao et al. 2019, Table 2", suite="long_tail", scale="paper", axes=(("ratio", "100"),), recipe=(("dataset", "cifar10"),))
    elsewhere = Reported("focal", "top1", 0.5, "another setting", suite="long_tail", scale="paper", axes=(("ratio", "10"),))
    boards = [Board(protocol, [ce, focal], "ce")]
    attach_reported(boards, {"long_tail": [paper, elsewhere]})
    assert ce.reported is paper and focal.reported is None  # ratio=10 is not this board's setting
    assert ce.diff_vs_reported == pytest.approx(0.70 - 0.7036)
    table = render(boards, "table")
    assert "reported" in table and "0.7036" in table and "-0.0036" in table and "Cao et al. 2019, Table 2" in table
    tiny = [Board({**protocol, "scale": "tiny"}, [Entry("ce", "top1", True)], "ce")]
    attach_reported(tiny, {"long_tail": [paper]})
    assert tiny[0].entries[0].reported is None and "reported" not in render(tiny, "table")
