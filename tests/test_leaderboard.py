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
    assert [e.rank for e in board.entries] == [1, 2, 3, None]
    assert by_name["ldam"].ok == 3 and by_name["ldam"].not_ok == 1
    assert by_name["broken"].ok == 0 and by_name["broken"].not_ok == 1


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
    assert focal["metrics"]["few_shot"]["mean"] == pytest.approx(0.355)


def test_csv_markdown_and_table(store):
    selected = boards(store, variant="ratio=100")
    rows = list(csv.DictReader(io.StringIO(render(selected, "csv"))))
    assert float(next(r for r in rows if r["method"] == "focal" and r["suite_version"] == "1")["top1_mean"]) == pytest.approx(0.71)
    md = render(selected, "markdown")
    assert "| rank" in md and "0.7100 ± 0.0100" in md and md.startswith("### long_tail v1")
    table = render(selected, "table")
    assert "top1 ↑" in table and "|" not in table.splitlines()[2]
    assert table.index("top1") < table.index("few_shot")  # primary metric first
