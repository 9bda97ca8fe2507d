"""`harness publish`: the static site's content, escaping, file names and determinism (no browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.catalog import load_catalog
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import Method
from harness.params import Param
from harness.site import MARKER, board_page, method_page, publish, slug
from harness.store import ResultStore
from harness.testing import fake_record, run_cli

SCRIPT = "<script>alert(1)</script>"
SCRIPTS = ('<script src="assets/sort.js">', '<script src="assets/vega.js">', '<script src="assets/plots.js">')


class EvilPlugin:
    """A plugin whose every free-text field tries to inject markup."""

    @hookimpl
    def harness_register_methods(self, register):
        register(
            Method(
                name="evil", kind="loss", build=lambda ctx: None, summary=SCRIPT, paper="<img src=x onerror=alert(2)>",
                url="javascript:alert(3)", params=(Param("mode", str, "<b>bold</b>", "doc <i>x</i>"),),
            )
        )


def evil_catalog():
    return load_catalog(plugins=((EvilPlugin(), "evil-plugin"),))


def with_series(record, **series):
    record["series"] = {**record["series"], **series}
    return record


LT = {"version": "3", "variant": {"ratio": 100, "test_dist": "uniform"}}  # the installed long_tail card's version and axes


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path / "results")
    values = {"ce": [0.60, 0.62, 0.64], "focal": [0.70, 0.71, 0.72], "evil": [0.5, 0.55, 0.45]}
    for entry, vals in values.items():
        for seed, v in enumerate(vals):
            store.write(
                with_series(
                    fake_record(entry=entry, seed=seed, value=v, extra={"few_shot": v / 2}, **LT),
                    per_class_accuracy=[v + 0.1, v, v - 0.1], class_counts=[100.0, 10.0, 1.0], test_top1_per_epoch=[v / 2, v],
                )
            )
    store.write(fake_record(entry="focal", seed=3, status="failed", **LT))
    store.write(fake_record(entry="focal", seed=4, status="diverged", **LT))
    store.write(fake_record(entry=SCRIPT, seed=0, value=0.9, **LT))  # a name straight in the database
    store.write(fake_record(entry="ghost_method", seed=0, value=0.3, suite="ghost_suite"))  # suite not installed
    store.sync()
    return store.root


def site_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def read(out: Path, name: str) -> str:
    return (out / name).read_text(encoding="utf-8")


def test_two_publishes_of_the_same_database_are_byte_identical(results, tmp_path):
    catalog = evil_catalog()
    publish(results, tmp_path / "a", catalog=catalog)
    publish(results, tmp_path / "b", catalog=catalog)
    a, b = site_files(tmp_path / "a"), site_files(tmp_path / "b")
    assert a == b and len(a) > 10
    publish(results, tmp_path / "a", catalog=catalog)  # publishing again replaces the earlier site
    assert site_files(tmp_path / "a") == a


def test_publish_refuses_a_folder_it_did_not_write(results, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(HarnessError, match="not written by `harness publish`"):
        publish(results, other, catalog=evil_catalog())
    assert (other / "notes.txt").read_text() == "keep me"


def test_plugin_and_database_strings_are_escaped(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    for name, data in site_files(out).items():
        if name.endswith(".html"):
            text = data.decode()
            assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold" not in text, name
            assert 'href="javascript:' not in text, name
            for tag in re.findall(r"<script[^>]*>", text):  # the site's own scripts, and chart data that is not run
                assert tag in SCRIPTS or re.fullmatch(r'<script type="application/json" class="chart-spec" id="chart-\d+">', tag), (name, tag)
            for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', text, re.S):
                assert "<" not in block and json.loads(block)["$schema"].startswith("https://vega.github.io/schema/vega-lite/"), name
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    method = read(out, method_page("evil"))
    assert escaped in method and "&lt;img src=x onerror=alert(2)&gt;" in method
    assert "javascript:alert(3)" in method  # shown as text, not a link
    assert "&lt;b&gt;bold&lt;/b&gt;" in method and "doc &lt;i&gt;x&lt;/i&gt;" in method
    assert escaped in read(out, "index.html")  # the database entry leads its board
    assert escaped in read(out, method_page(SCRIPT))  # a method known only from the database


def test_file_names_are_safe_slugs(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    for name in site_files(out):
        assert re.fullmatch(r"[a-z0-9-]+\.(html|csv|parquet)|assets/(style\.css|sort\.js|plots\.js|vega\.js)|\.harness-site", name), name
    assert (out / MARKER).is_file()
    for hostile in ("../../etc/passwd", "a/b", SCRIPT, "..", ""):
        assert re.fullmatch(r"method-[a-z0-9-]+-[0-9a-f]{8}\.html", slug(hostile, "method"))
    assert slug("A b", "method") != slug("a-b", "method")  # the hash keeps look-alike names apart


def test_every_local_link_resolves(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    for name, data in site_files(out).items():
        if not name.endswith(".html"):
            continue
        for href in re.findall(r'(?:href|src)="([^"]+)"', data.decode()):
            if href.startswith(("http://", "https://")):
                continue
            assert (out / href).is_file(), f"{name} links to missing {href}"


def test_board_page_has_statistics_runs_and_plots(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    protocol = {"suite": "long_tail", "suite_version": "3", "scale": "tiny", "variant": "ratio=100,test_dist=uniform", "dataset": "mnist5k", "model": "small_cnn"}
    (board,) = [n for n in site_files(out) if n.startswith("board-long-tail-v3-tiny-ratio-100") and n.endswith(".html")]
    page = read(out, board)
    assert board == board_page({**protocol, "recipe_id": re.search(r"recipe</th><td>([0-9a-f]{8})", page).group(1)})
    assert "Student t" in page and "Protocol card: <a" in page and "long_tail v3</a> (version 3)" in page
    assert "[0.6852, 0.7348]" in page  # focal's 95% CI
    assert "0.008 ▲ (n=3)" in page and "+0.0900" in page and "p vs ce (t, Holm)" in page  # paired test against ce, Holm over 2
    assert "Failed and diverged runs (2)" in page and "diverged" in page
    assert page.count('class="chart"') == 3  # per-class plot, test_top1_per_epoch, curve
    assert "per-class accuracy by class frequency" in page and "(log scale)" in page
    assert page.index("test_top1_per_epoch") < page.index(">curve<")  # per-epoch curves come first
    assert 'table class="sortable leaderboard"' in page and "top1 ↑" in page and "few_shot ↑" in page


def test_uninstalled_suites_and_methods_still_get_pages(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    index = read(out, "index.html")
    assert "The protocol card is unavailable: suite <code>ghost_suite</code> is not installed here" in index
    assert "&#34;epochs&#34;: 2" in index  # the stored recipe stands in for the card
    ghost = read(out, method_page("ghost_method"))
    assert "is not installed here" in ghost and "ghost_suite v1" in ghost
    focal = read(out, method_page("focal"))
    assert "Lin et al." in focal and "gamma" in focal and "harness-bench" in focal and "long_tail v3" in focal


def test_publish_command(results, tmp_path):
    out = tmp_path / "site"
    code, stdout, err = run_cli("publish", f"results={results}", f"out={out}")
    assert code == 0, err
    assert "published" in stdout and (out / "index.html").is_file()
    code, _, err = run_cli("publish", f"results={results}", "format=html")
    assert code == 2 and "does not take format" in err
    code, _, err = run_cli("publish", f"results={tmp_path / 'nothing'}", f"out={tmp_path / 'x'}")
    assert code == 2 and "no results database" in err


# ---------------------------------------------------------------------------------------------
# drill-down, hyper-parameters, downloads, charts and the size of pages
# ---------------------------------------------------------------------------------------------


def chart_specs(page: str) -> dict[str, dict]:
    """The chart specifications of a page by chart title."""
    titles = re.findall(r'<div class="chart"[^>]*data-title="([^"]*)" data-spec="(chart-\d+)"', page)
    blocks = dict(re.findall(r'<script type="application/json" class="chart-spec" id="(chart-\d+)">(.*?)</script>', page, re.S))
    return {title: json.loads(blocks[spec]) for title, spec in titles}


def board_html(out: Path) -> str:
    (board,) = [n for n in site_files(out) if n.startswith("board-long-tail-v3-tiny-ratio-100") and n.endswith(".html")]
    return read(out, board)


def test_each_board_can_be_downloaded_as_csv_and_parquet(results, tmp_path):
    import pandas as pd

    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    page = board_html(out)
    csv_name, parquet_name = re.search(r'href="(board-[a-z0-9-]+\.csv)"', page).group(1), re.search(r'href="(board-[a-z0-9-]+\.parquet)"', page).group(1)
    board = pd.read_csv(out / csv_name)
    assert sorted(board["method"]) == sorted(["ce", "focal", "evil", SCRIPT])
    assert board.loc[board.method == "focal", "top1_mean"].iloc[0] == pytest.approx(0.71)
    typed = pd.read_parquet(out / parquet_name)
    assert list(typed.columns) == list(board.columns) and typed.loc[typed.method == "focal", "top1_mean"].iloc[0] == pytest.approx(0.71)
    every = pd.read_parquet(out / "leaderboards.parquet")
    assert set(every["suite"]) == {"long_tail", "ghost_suite"}


def test_entries_drill_down_to_their_runs_and_show_their_hyper_parameters(tmp_path):
    store = ResultStore(tmp_path / "results")
    for seed, value in enumerate((0.6, 0.62)):
        store.write(fake_record(entry="ce", seed=seed, value=value, **LT))
        record = fake_record(entry="focal", seed=seed, value=value + 0.1, **LT)
        record["spec"]["methods"][0].update(params={"gamma": 1.0}, changed={"gamma": 1.0})
        from harness.spec import RunSpec

        spec = RunSpec.from_canonical(record["spec"])
        record.update(run_id=spec.run_id, spec=spec.canonical(), entry=spec.entry)
        store.write(record)
    store.sync()
    out = tmp_path / "site"
    publish(store.root, out, catalog=load_catalog())
    page = board_html(out)
    assert "non-default hyper-parameters" in page and "focal.gamma=1.0" in page and ">defaults<" in page
    entry = re.search(r'<a href="(entry-[a-z0-9-]+\.html)">focal\[gamma=1\.0\]</a>', page).group(1)
    detail = read(out, entry)
    assert "<td>gamma</td><td>1.0</td><td>2.0</td>" in detail and ">set<" in detail  # the paper's default beside the value used
    assert len(re.findall(r'href="run-[a-z0-9-]+\.html"', detail)) == 2  # both seeds' runs


def test_charts_draw_the_leaders_and_the_baseline_first_and_name_every_entry(results, tmp_path):
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    specs = chart_specs(board_html(out))
    assert list(specs)[:2] == ["per-class accuracy by class frequency", "test_top1_per_epoch"]
    spec = specs["test_top1_per_epoch"]
    selection = spec["layer"][0]["params"][0]
    assert selection["bind"] == "legend" and [v["entry"] for v in selection["value"]] == [SCRIPT, "ce"]  # the leader (0.9) and the baseline
    assert sorted(spec["layer"][0]["encoding"]["color"]["scale"]["domain"]) == sorted(["ce", "focal", "evil", SCRIPT])
    tooltip = [t["field"] for t in spec["layer"][1]["encoding"]["tooltip"]]
    assert tooltip == ["entry", "seed", "x", "value"]
    seeds = {(r["entry"], r["seed"]) for r in spec["data"]["values"]}
    assert ("focal", 2) in seeds  # every seed is a point
    altair = pytest.importorskip("altair")
    for chart in specs.values():
        altair.LayerChart.from_dict(chart)  # valid Vega-Lite (altair checks it against the schema)


def test_a_million_point_series_makes_a_small_page(tmp_path):
    store = ResultStore(tmp_path / "results")
    record = fake_record(entry="ce", seed=0, value=0.5, **LT)
    record["series"]["step_loss"] = [1.0 / (1 + i) for i in range(1_000_000)]
    store.write(record)
    store.sync()
    out = tmp_path / "site"
    publish(store.root, out, catalog=load_catalog())
    run = read(out, next(n for n in site_files(out) if n.startswith("run-")))
    assert len(run) < 500_000 and len(board_html(out)) < 500_000
    spec = chart_specs(run)["step_loss"]
    assert len(spec["data"]["values"]) == 2000 and "2000 bucket means" in run


def test_series_are_reduced_as_they_are_read_across_fetches(monkeypatch):
    import duckdb

    from harness import plots, site

    con = duckdb.connect()
    con.execute("CREATE TABLE series (run_id VARCHAR, name VARCHAR, idx INTEGER, value DOUBLE)")
    long = [float(i % 97) for i in range(5003)]
    long[11] = long[4000] = None  # stored as null
    rows = [("a", "long", i, v) for i, v in enumerate(long) if i != 10]  # index 10 not stored at all
    long[10] = None
    rows += [("a", "short", 0, 1.0), ("a", "short", 2, 3.0), ("b", "long", 0, 2.0)]
    con.executemany("INSERT INTO series VALUES (?, ?, ?, ?)", rows)
    monkeypatch.setattr(site, "SERIES_FETCH", 7)  # series that span many fetched slices
    series = site.load_series(con)
    reduced = series["a"]["long"]
    assert reduced.length == 5003 and reduced.reduced and len(reduced.ys) == plots.MAX_POINTS
    assert (reduced.xs, reduced.ys) == plots.downsample(long)[:2]  # the same buckets as the whole series would give
    assert series["a"]["short"] == plots.Series([0.0, 1.0, 2.0], [1.0, None, 3.0], 3)  # a gap stays a gap
    assert series["b"]["long"] == plots.Series([0.0], [2.0], 1)


def test_a_chart_of_many_runs_shares_a_bounded_number_of_points(monkeypatch):
    from harness import plots, site

    monkeypatch.setattr(plots, "MAX_CHART_POINTS", 600)
    per_entry = [(f"m{e}", [(seed, {"loss": plots.reduce([1.0 / (1 + i + seed) for i in range(200)])}) for seed in range(3)]) for e in range(4)]
    (chart,) = site.series_charts(per_entry, epochs=None, shown=["m0"])
    values = chart.spec["data"]["values"]
    assert len(values) == 600  # 12 runs share 600 points: 50 bucket means each
    assert {(v["entry"], v["seed"]) for v in values} == {(f"m{e}", s) for e in range(4) for s in range(3)}  # every run is still drawn
    assert "200 values per run, drawn as 50 bucket means" in chart.caption
    first = [v for v in values if (v["entry"], v["seed"]) == ("m0", 0)]
    assert first[0]["x"] == pytest.approx(1.5) and first[0]["value"] == pytest.approx(round((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, 6))


def test_a_failed_publish_leaves_the_earlier_site_and_no_staging_folder(results, tmp_path, monkeypatch):
    from harness import site

    catalog = evil_catalog()
    out = tmp_path / "site"
    publish(results, out, catalog=catalog)
    before = site_files(out)

    def broken(self):
        raise RuntimeError("rendering failed half-way")

    monkeypatch.setattr(site.Site, "aggregate", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        publish(results, out, catalog=catalog)
    assert site_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_chart_of_thousands_of_runs_draws_each_entry_as_its_mean_over_seeds(monkeypatch):
    from harness import plots, site

    monkeypatch.setattr(plots, "MAX_CHART_POINTS", 100)  # 12 runs would get 8 points each: too few to draw every run
    curve = {seed: [1.0 / (1 + i + seed) for i in range(200)] for seed in range(3)}
    per_entry = [(f"m{e}", [(seed, {"loss": plots.reduce([v * (e + 1) for v in curve[seed]])}) for seed in range(3)]) for e in range(4)]
    (chart,) = site.series_charts(per_entry, epochs=None, shown=["m0"])
    values = chart.spec["data"]["values"]
    assert len(values) == 100 and {v["seed"] for v in values} == {"mean of 3"}  # 4 entries x 25 points
    assert "12 runs: each entry drawn as the mean over its seeds" in chart.caption
    m1 = [v for v in values if v["entry"] == "m1"]
    expected = sum(sum(2 * v for v in curve[seed][:8]) / 8 for seed in range(3)) / 3  # bucket 0: indexes 0..7, entry m1 doubles
    assert m1[0]["x"] == pytest.approx(3.5) and m1[0]["value"] == pytest.approx(round(expected, 6))


def test_a_board_row_links_a_bounded_number_of_runs_and_the_entry_page_links_them_all(results, tmp_path, monkeypatch):
    from harness import site

    monkeypatch.setattr(site, "MAX_RUN_LINKS", 2)
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    board = board_html(out)
    focal_row = next(row for row in board.split("<tr") if ">focal</a>" in row)
    assert len(re.findall(r'href="run-', focal_row)) == 2 and "… all 5 runs" in focal_row  # 3 ok, 1 failed, 1 diverged
    (entry,) = [n for n in site_files(out) if n.startswith("entry-long-tail-focal-") and n.endswith(".html")]
    assert len(set(re.findall(r'href="(run-[^"]+)"', read(out, entry)))) == 5


def test_an_entry_page_lists_a_bounded_number_of_runs_and_says_where_the_rest_are(results, tmp_path, monkeypatch):
    from harness import site

    monkeypatch.setattr(site, "MAX_ENTRY_RUNS", 2)
    out = tmp_path / "site"
    publish(results, out, catalog=evil_catalog())
    (entry,) = [n for n in site_files(out) if n.startswith("entry-long-tail-focal-") and n.endswith(".html")]
    page = read(out, entry)
    assert len(set(re.findall(r'href="(run-[^"]+)"', page))) == 2  # the first 2 of 5 by seed
    assert "The first 2 of its 5 runs by seed" in page
    assert "seed 1" in page and "seed 2" not in page  # the curves drawn are those of the runs listed (seed 2 is ok too)
    assert len([n for n in site_files(out) if n.startswith("run-")]) >= 5  # every run still has its page
