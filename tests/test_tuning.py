"""Tuned versus default: selection on the validation metric alone (harness.tuning, leaderboard rows)."""

from __future__ import annotations

import json

import pytest

from harness import tuning
from harness.leaderboard import build_boards, render
from harness.store import ResultStore
from harness.testing import fake_record


def test_base_entry_strips_settings_but_keeps_versions():
    assert tuning.base_entry("focal[gamma=1.5]+mixup[alpha=0.4]") == "focal+mixup"
    assert tuning.base_entry("rankmixup@2[weight=0.2]") == "rankmixup@2"
    assert tuning.base_entry("ce") == "ce"


def test_select_takes_the_best_validation_mean_per_group():
    means = {"focal": 0.70, "focal[gamma=1]": 0.74, "focal[gamma=4]": 0.72, "ce": 0.6, "ldam": None, "ldam[max_m=0.2]": 0.8}
    chosen = tuning.select(means, higher_is_better=True, metric="val_top1")
    assert set(chosen) == {"focal"}  # ce has one configuration; ldam has one with a validation value
    assert chosen["focal"].selected == "focal[gamma=1]" and chosen["focal"].budget == 3 and chosen["focal"].value == pytest.approx(0.74)
    lower = tuning.select({"a": 0.3, "a[x=1]": 0.2}, higher_is_better=False, metric="val_loss")
    assert lower["a"].selected == "a[x=1]"


def test_ties_go_to_the_default_configuration():
    chosen = tuning.select({"focal[gamma=0.5]": 0.7, "focal": 0.7, "focal[gamma=9]": 0.7}, True, "val_top1")
    assert chosen["focal"].selected == "focal"


def _write_group(store, val: dict[str, list[float]], test: dict[str, list[float]]):
    for label, vals in val.items():
        changed = {}
        if "[" in label:
            name, _, rest = label.partition("[")
            key, _, value = rest.rstrip("]").partition("=")
            changed = {name: {key: float(value)}}
        for seed, v in enumerate(vals):
            store.write(fake_record(entry=label.partition("[")[0], seed=seed, value=test[label][seed], extra={"val_top1": v}, changed=changed))
    store.sync()


def _board(store, **kw):
    con = store.connect(read_only=True)
    try:
        (board,) = build_boards(con, baselines={"long_tail": "ce"}, **kw)
    finally:
        con.close()
    return board


VAL = {"ce": [0.60, 0.61, 0.62], "focal": [0.70, 0.70, 0.71], "focal[gamma=1.0]": [0.75, 0.76, 0.74], "focal[gamma=4.0]": [0.72, 0.71, 0.73]}
TEST = {"ce": [0.58, 0.60, 0.61], "focal": [0.68, 0.69, 0.70], "focal[gamma=1.0]": [0.71, 0.72, 0.73], "focal[gamma=4.0]": [0.80, 0.81, 0.82]}


def test_tuned_row_carries_the_selected_configurations_test_numbers(tmp_path):
    store = ResultStore(tmp_path)
    _write_group(store, VAL, TEST)
    board = _board(store)
    by_name = {e.method: e for e in board.entries}
    tuned = by_name["focal (tuned)"]
    # gamma=4 has the best *test* score (0.81) but gamma=1 the best validation score (0.75): validation decides
    assert tuned.tuned.selected == "focal[gamma=1.0]" and tuned.tuned.budget == 3
    assert tuned.metrics["top1"]["mean"] == pytest.approx(0.72)
    assert tuned.seeds == by_name["focal[gamma=1.0]"].seeds
    assert tuned.baseline_test is not None and tuned.baseline_test.mean_diff == pytest.approx(0.72 - 0.59666666, abs=1e-6)
    assert board.tuning_text(by_name["focal"]) == "default" and board.tuning_text(by_name["ce"]) == "-"
    text = render([board], "table")
    assert "focal[gamma=1.0] of 3 by val_top1" in text and "chosen on the validation split only" in text
    record = next(r for r in json.loads(render([board], "json")) if r["method"] == "focal (tuned)")
    assert record["tuned_from"] == "focal[gamma=1.0]" and record["tuning_budget"] == 3


def test_rows_tuned_keeps_default_and_tuned_rows_only(tmp_path):
    store = ResultStore(tmp_path)
    _write_group(store, VAL, TEST)
    names = {e.method for e in _board(store, rows="tuned").entries}
    assert names == {"ce", "focal", "focal (tuned)"}
    with pytest.raises(ValueError, match="unknown rows"):
        _board(store, rows="best")


def test_corrupting_the_test_split_does_not_change_the_selection(tmp_path):
    clean, corrupt = ResultStore(tmp_path / "clean"), ResultStore(tmp_path / "corrupt")
    _write_group(clean, VAL, TEST)
    broken = {label: [1.0 - v for v in values] for label, values in TEST.items()}  # every test number changed, ordering reversed
    _write_group(corrupt, VAL, broken)
    a, b = _board(clean), _board(corrupt)
    assert [s.selected for s in a.selections] == [s.selected for s in b.selections] == ["focal[gamma=1.0]"]
    # ... while changing the validation split does change it
    moved = dict(VAL, **{"focal[gamma=4.0]": [0.9, 0.9, 0.9]})
    other = ResultStore(tmp_path / "other")
    _write_group(other, moved, TEST)
    assert [s.selected for s in _board(other).selections] == ["focal[gamma=4.0]"]


def test_different_budgets_are_marked(tmp_path):
    store = ResultStore(tmp_path)
    val = {**VAL, "ldam": [0.7, 0.7, 0.7], "ldam[max_m=0.2]": [0.71, 0.71, 0.71]}
    test = {**TEST, "ldam": [0.7, 0.7, 0.7], "ldam[max_m=0.2]": [0.7, 0.7, 0.7]}
    _write_group(store, val, test)
    board = _board(store)
    assert sorted(s.budget for s in board.selections) == [2, 3]
    text = render([board], "markdown")
    assert "different budgets (2, 3 configurations)" in text and "ldam[max_m=0.2] of 2 by val_top1 †" in text


def test_no_tuned_rows_without_a_validation_metric(tmp_path):
    store = ResultStore(tmp_path)
    for label, vals in TEST.items():
        changed = {}
        if "[" in label:
            changed = {"focal": {"gamma": float(label.split("=")[1].rstrip("]"))}}
        for seed, v in enumerate(vals):
            store.write(fake_record(entry=label.partition("[")[0], seed=seed, value=v, changed=changed))
    store.sync()
    board = _board(store)
    assert board.selections == [] and not any(e.tuned for e in board.entries)
    assert "tuning" not in render([board], "table").splitlines()[2]
