"""`harness reproduce`: the headline table, the comparison, and the command end to end (shrunken, offline)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.catalog import load_catalog
from harness.corruptions import BENCHMARK_CORRUPTIONS
from harness.reported import Reported
from harness.reproduce import SHRUNK_MARK, Headline, compare, headlines, render
from harness.spec import build_grid
from harness.testing import run_cli


def stored(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/result.json"))]


# ---------------------------------------------------------------------------------------------
# the table of headline settings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["long_tail", "ood"])
def test_every_reported_entry_and_metric_exists_in_the_suites_grid(suite):
    catalog = load_catalog()
    for headline in headlines(catalog, suite):
        suite_obj, specs = build_grid(catalog, headline.overrides(seeds=1, shrink=False))
        assert {s.scale for s in specs} == {"paper"}
        entries = {s.entry for s in specs}
        metrics = {m.name for m in suite_obj.metrics}
        for r in headline.reported:
            assert r.entry in entries, (r.entry, entries)
            assert r.metric in metrics
            assert r.source and (r.value is None or 0 < r.value < 1)
            if r.value is None and not r.per_corruption:
                assert "unverified" in r.source or "not found" in r.source  # a missing number says so


def test_reported_numbers_are_the_papers_converted_to_harness_units():
    catalog = load_catalog()
    lt = {r.entry: r for r in headlines(catalog, "long_tail")[0].reported}
    assert lt["ce"].value == pytest.approx(1 - 0.2964) and "29.64" in lt["ce"].source  # error -> top-1 accuracy
    assert lt["ldam_drw"].value == pytest.approx(1 - 0.2297) and "22.97" in lt["ldam_drw"].source
    ood = {r.entry: r for r in headlines(catalog, "ood")[0].reported}
    # the transcribed per-corruption errors average to the means the README prints
    for entry, printed in (("ce+source", 0.435), ("ce+bn_adapt", 0.204), ("ce+tent", 0.186)):
        values = [v for _, v in ood[entry].per_corruption]
        assert len(values) == 15 and statistics.fmean(values) == pytest.approx(printed, abs=0.0005)
        assert not ood[entry].comparable  # the suite's protocol is not the README's


# ---------------------------------------------------------------------------------------------
# the comparison on hand-made records
# ---------------------------------------------------------------------------------------------


def _record(value: float | None, status: str = "ok", **extra) -> dict:
    return {"status": status, "metrics": {"top1": {"value": value}}, **extra}


def test_compare_means_over_ok_seeds_and_judges_the_tolerance():
    headline = Headline("long_tail", "t", ("ce", "focal"), reported=(
        Reported("ce", "top1", 0.70, "paper A", 0.015),
        Reported("focal", "top1", 0.70, "paper B", 0.015),
        Reported("ce", "top1", None, "paper C, unverified", 0.015),
    ))
    specs = [SimpleNamespace(entry=e, run_id=f"{e}{i}") for e in ("ce", "focal") for i in range(3)]
    records = {
        "ce0": _record(0.69), "ce1": _record(0.71), "ce2": _record(0.70),  # mean 0.70, std 0.01
        "focal0": _record(0.60), "focal1": _record(None, status="diverged"),  # focal2 has no record
    }
    ce, focal, unknown = compare(headline, specs, records)
    assert ce.values == [0.69, 0.71, 0.70] and ce.mean == pytest.approx(0.70) and ce.std == pytest.approx(0.01)
    assert ce.difference == pytest.approx(0.0) and ce.verdict(shrink=False) == "yes"
    assert focal.values == [0.60] and focal.runs == 3 and focal.not_ok == 2 and focal.std is None
    assert focal.difference == pytest.approx(-0.10) and focal.verdict(shrink=False) == "no"
    assert unknown.verdict(shrink=False) == "n/a (no reported number)"
    assert ce.verdict(shrink=True) == "n/a (shrunken)"
    text = render([ce, focal, unknown], shrink=False)
    assert "0.7000 ± 0.0100" in text and "+0.0000" in text and "-0.1000" in text and "1/3 (2 not ok)" in text
    assert "[1] paper A" in text and "[3] paper C, unverified" in text and SHRUNK_MARK not in text


def test_per_corruption_numbers_are_compared_over_the_shared_corruptions():
    headline = Headline("ood", "t", ("tent",), reported=(
        Reported("ce+tent", "err_s5", None, "readme", 0.02, comparable=False, note="differs",
                 per_corruption=(("fog", 0.10), ("snow", 0.30), ("contrast", 0.20))),
    ))
    record = {"status": "ok", "metrics": {"err_s5": {"value": 0.5}},
              "info": {"corruptions": ["fog", "saturate", "contrast"]}, "series": {"err_s5_per_corruption": [0.2, 0.9, 0.4]}}
    (row,) = compare(headline, [SimpleNamespace(entry="ce+tent", run_id="r")], {"r": record})
    assert row.shared == ("fog", "contrast")
    assert row.values == [pytest.approx(0.3)]  # (0.2 + 0.4) / 2: saturate is not in the paper's list
    assert row.reported_value == pytest.approx(0.15)  # (0.10 + 0.20) / 2: snow is not in the run
    assert row.verdict(shrink=False) == "n/a (protocol differs)"
    assert "compared over the 2 corruptions both cover" in render([row], shrink=False)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def test_reproduce_long_tail_shrunken_end_to_end_offline(tmp_path):
    results = f"results={tmp_path}"
    code, out, err = run_cli("reproduce", "long_tail", "shrink=true", "seeds=1", results)
    assert code == 0, err
    assert SHRUNK_MARK in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in {"ce", "ldam_drw", "balanced_softmax"}}
    assert set(lines) == {"ce", "ldam_drw", "balanced_softmax"}
    assert "0.7036" in lines["ce"] and "0.7703" in lines["ldam_drw"] and "n/a (shrunken)" in lines["ce"]
    records = stored(tmp_path)
    assert sorted(r["entry"] for r in records) == ["balanced_softmax", "ce", "ldam_drw"]
    assert all(r["status"] == "ok" and r["spec"]["scale"] == "paper" and r["spec"]["recipe"]["dataset"] == "digits" for r in records)
    top1 = {r["entry"]: r["metrics"]["top1"]["value"] for r in records}
    assert f"{top1['ce']:.4f}" in lines["ce"]  # the table shows the stored metric
    # again: everything is stored, nothing trains, the same table
    code, out2, err2 = run_cli("reproduce", "long_tail", "shrink=true", "seeds=1", results)
    assert code == 0 and "already stored" in err2 and "training" not in err2
    assert out2 == out


def test_reproduce_ood_shrunken_end_to_end_offline(tmp_path):
    code, out, err = run_cli("reproduce", "ood", "shrink=true", "seeds=1", f"results={tmp_path}")
    assert code == 0, err
    assert SHRUNK_MARK in out and "ce+tent" in out and "ce+sar" in out
    # scale=paper streams CIFAR-10-C's 15 corruptions (the ood suite, version 2): all of the README's
    shared = [c for c in BENCHMARK_CORRUPTIONS if c in dict(headlines(load_catalog(), "ood")[0].reported[0].per_corruption)]
    assert f"compared over the {len(shared)} corruptions both cover" in out
    assert "note: protocol differs" in out
    assert sorted(r["entry"] for r in stored(tmp_path)) == ["ce+bn_adapt", "ce+sar", "ce+source", "ce+tent"]


def test_reproduce_without_shrink_offline_fails_in_one_line_before_training(tmp_path):
    code, out, err = run_cli("reproduce", "long_tail", f"results={tmp_path}")
    assert code == 2 and out == ""
    message = err.strip()
    assert message.startswith("harness: error: reproduce long_tail: the paper's data set cifar10 is not cached")
    assert "HF_HUB_OFFLINE is set" in message and "shrink=true" in message and "\n" not in message
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/result.json"))


def test_reproduce_argument_errors():
    code, _, err = run_cli("reproduce", "continual", "shrink=true")
    assert code == 2 and "suite 'continual' declares no published numbers at scale=paper" in err and "long_tail, ood" in err
    code, _, err = run_cli("reproduce", "long_tail", "ratio=10")
    assert code == 2 and "does not take ratio" in err
    code, _, err = run_cli("reproduce", "long_tail", "shrink=maybe")
    assert code == 2 and "shrink" in err
