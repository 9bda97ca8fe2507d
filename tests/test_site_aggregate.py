"""The published site's aggregate page (one ranking across boards) and its critical-difference diagram."""

from __future__ import annotations

import re

import pytest

from harness.catalog import load_catalog
from harness.site import AGGREGATE_PAGE, publish, svg_cd_diagram
from harness.store import ResultStore
from harness.testing import fake_record

MEANS = {
    10: {"ce": 0.50, "focal": 0.60, "ldam": 0.55, "mixup": 0.52},
    50: {"ce": 0.50, "focal": 0.58, "ldam": 0.60, "mixup": 0.45},
    100: {"ce": 0.40, "focal": 0.50, "ldam": 0.45, "mixup": 0.42},
}


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path / "results")
    for ratio, means in MEANS.items():
        for entry, mean in means.items():
            for seed, offset in enumerate((-0.01, 0.0, 0.01)):
                record = fake_record(entry=entry, seed=seed, value=round(mean + offset, 4), variant={"ratio": ratio})
                record["baseline"] = "ce"
                store.write(record)
    store.write(fake_record(entry="ghost_method", seed=0, value=0.3, suite="ghost_suite"))
    store.write(fake_record(entry="other", seed=0, value=0.2, suite="ghost_suite"))
    store.sync()
    return store.root


def test_aggregate_page_is_linked_and_states_its_statistics(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=load_catalog())
    index = (out / "index.html").read_text(encoding="utf-8")
    assert f'href="{AGGREGATE_PAGE}"' in index
    page = (out / AGGREGATE_PAGE).read_text(encoding="utf-8")
    assert "(score − baseline) / (best entry − baseline)" in page  # the normalisation, stated
    assert "ghost_suite" in page and "no baseline entry" in page  # a board left out, with the reason
    # no method is on the ghost board and the long-tail boards alike: no complete table for the Friedman test
    assert "not computed" in page and "narrow the boards with suite= or scale=" in page
    assert 'table class="sortable"' in page and "IQM (normalised)" in page and "P(&gt; baseline)" in page
    assert page.count('class="chart"') == 1  # the performance profiles (no CD diagram without a Friedman test)
    assert "Agarwal et al., NeurIPS 2021" in page


def test_aggregate_page_draws_the_cd_diagram_when_every_method_is_on_every_board(results, tmp_path):
    store = ResultStore(results)
    for path in store.result_paths():
        if "ghost" in path.read_text():
            path.unlink()
    store.db_path.unlink()
    store.sync()  # the database again, from the remaining result files
    out = tmp_path / "site"
    publish(results, out, catalog=load_catalog())
    page = (out / AGGREGATE_PAGE).read_text(encoding="utf-8")
    assert "Friedman test over the 4 methods ranked on all 3 boards" in page
    assert 'class="chart cd-diagram"' in page and "CD = " in page
    # focal ranks 1, 2, 1 -> 1.33; ldam 2, 1, 2 -> 1.67; mixup 3, 4, 3 -> 3.33; ce 4, 3, 4 -> 3.67
    assert re.search(r"focal \(1\.33\)", page) and "ldam (1.67)" in page and "ce (3.67)" in page


def test_cd_diagram_joins_methods_within_the_critical_difference():
    ranks = [("d", 3.2), ("a", 1.0), ("c", 3.0), ("b", 1.5)]
    svg = svg_cd_diagram(ranks, 1.0, title="t")
    # a-b (0.5 apart) and c-d (0.2) are groups; b-c (1.5) is not
    assert svg.count('class="cd-group"') == 2
    labels = re.findall(r">([a-d]) \(\d\.\d\d\)</text>", svg)
    assert labels == ["a", "b", "c", "d"]  # best first, whatever the input order
    assert 'text-anchor="end" dominant-baseline="middle">a (1.00)' in svg  # the better half is labelled on the left
    assert 'text-anchor="start" dominant-baseline="middle">d (3.20)' in svg
    assert svg_cd_diagram(ranks, 2.5, title="t").count('class="cd-group"') == 1  # one group holds all four
    assert svg_cd_diagram(ranks, 0.1, title="t").count('class="cd-group"') == 0
    assert svg_cd_diagram(ranks, 1.0, title="t") == svg  # deterministic
    assert svg_cd_diagram([("a", 1.0)], 1.0, title="t") == ""
    assert "&lt;b&gt;" in svg_cd_diagram([("<b>", 1.0), ("x", 2.0)], 1.0, title="t")  # names are escaped
