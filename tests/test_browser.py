"""The published site in a real browser: headless Chromium opens it from file:// with no network.

Needs `/usr/bin/chromium` and the `playwright` Python package (no `playwright install`: the
system Chromium is used). Skipped with the reason when either is missing. A screenshot of a
leaderboard page is kept in test-artifacts/suite-page.png (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import deque
from pathlib import Path

import pytest

from harness.catalog import load_catalog
from harness.hookspecs import hookimpl
from harness.kinds import Method
from harness.site import method_page, publish
from harness.store import ResultStore
from harness.testing import fake_record, offline_environ, run_cli

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SCRIPT = "<script>alert(1)</script>"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="browser tests need /usr/bin/chromium (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package (pip install playwright)")


class InjectingPlugin:
    @hookimpl
    def harness_register_methods(self, register):
        register(Method(name="sneaky", kind="loss", build=lambda ctx: None, summary=SCRIPT, paper=SCRIPT, url="javascript:alert(2)"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site published from a small real long-tail run, plus a hostile entry name and plugin."""
    tmp = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in offline_environ(tmp).items():
            mp.setenv(key, value)
        mp.delenv("HARNESS_PLUGINS", raising=False)
        mp.delenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        results = tmp / "results"
        code, _, err = run_cli("run", "suite=long_tail", "method=ce,focal,balanced_softmax", "seeds=2", "epochs=2", f"results={results}")
        assert code == 0, err
        store = ResultStore(results)
        store.write(fake_record(entry=SCRIPT, seed=0, value=0.5))
        store.sync()
        out = tmp / "site"
        publish(results, out, catalog=load_catalog(plugins=((InjectingPlugin(), "injecting"),)))
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page that records every request and fails the test on any dialog (alert/confirm)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.requests = []
    page.dialogs = []
    page.errors = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))

    def on_dialog(dialog):
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    assert not page.dialogs, f"a dialog opened: {page.dialogs}"
    assert not page.errors, f"script errors: {page.errors}"
    assert all(url.startswith("file://") for url in page.requests), [u for u in page.requests if not u.startswith("file://")]
    context.close()


def long_tail_version() -> str:
    """The installed long_tail card's version: the site's pages are named and labelled with it."""
    from harness.catalog import load_catalog

    return str(load_catalog().suites.get("long_tail").version)


def board_file(site: Path) -> Path:
    (board,) = [p for p in site.glob(f"board-long-tail-v{long_tail_version()}-tiny-ratio-100-*.html") if "balanced_softmax" in p.read_text()]
    return board


def test_every_link_from_the_index_resolves_and_loads(site, page):
    seen, queue = set(), deque([site / "index.html"])
    while queue:
        path = queue.popleft()
        if path in seen:
            continue
        seen.add(path)
        assert path.is_file(), f"missing page {path}"
        page.goto(path.as_uri())
        assert page.title() and page.locator("h1").count() == 1, path
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            if href.startswith(("http://", "https://")):
                continue
            target = (path.parent / href.split("#")[0]).resolve()
            assert site.resolve() in target.parents, f"{path.name} links outside the site: {href}"
            if target.suffix == ".html":
                queue.append(target)
            else:
                assert target.is_file(), f"{path.name} links to missing {href}"
    # the crawl reached every page: suites, boards, methods with results and every run
    names = {p.name for p in seen}
    assert names >= {p.name for p in site.glob("run-*.html")} | {p.name for p in site.glob("board-*.html")}
    assert any(n.startswith("suite-long-tail") for n in names)
    # stylesheet and script came from disk
    assert any(u.endswith("assets/style.css") for u in page.requests) and any(u.endswith("assets/sort.js") for u in page.requests)


def column(page, index: int) -> list[str]:
    return page.eval_on_selector_all("table.sortable.leaderboard tbody tr", f"rows => rows.map(r => r.cells[{index}].innerText.trim())")


def test_clicking_a_header_sorts_the_rows(site, page):
    page.goto(board_file(site).as_uri())
    headers = page.eval_on_selector_all("table.sortable.leaderboard thead th", "ths => ths.map(t => t.innerText.trim())")
    method_col, top1_col = headers.index("method"), next(i for i, h in enumerate(headers) if h.startswith("top1"))
    before = [m.replace(" (baseline)", "") for m in column(page, method_col)]
    assert sorted(before) == ["balanced_softmax", "ce", "focal"]
    page.locator("table.sortable.leaderboard thead th").nth(method_col).click()
    after = [m.replace(" (baseline)", "") for m in column(page, method_col)]
    assert after == ["balanced_softmax", "ce", "focal"]
    page.locator("table.sortable.leaderboard thead th").nth(method_col).click()  # descending: the rows really move, whatever the rank order was
    assert [m.replace(" (baseline)", "") for m in column(page, method_col)] == ["focal", "ce", "balanced_softmax"]
    page.locator("table.sortable.leaderboard thead th").nth(top1_col).click()
    means = [float(v.split("±")[0]) for v in column(page, top1_col)]
    assert means == sorted(means)
    assert page.locator("table.sortable.leaderboard thead th").nth(top1_col).get_attribute("aria-sort") == "ascending"


def rendered_charts(page):
    page.wait_for_function("document.querySelectorAll('div.chart').length > 0 && "
                           "Array.from(document.querySelectorAll('div.chart')).every(c => c.hasAttribute('data-rendered') || c.hasAttribute('data-error'))")
    assert page.locator("div.chart[data-error]").count() == 0, page.locator("div.chart[data-error]").first.get_attribute("data-error")
    return page.locator("div.chart")


VISIBLE_LINES = "el => Array.from(el.querySelectorAll('g.mark-line path')).filter(p => p.getAttribute('opacity') !== '0').length"


def test_plots_are_drawn_offline_and_readable(site, page):
    page.goto(board_file(site).as_uri())
    charts = rendered_charts(page)
    titles = [charts.nth(i).get_attribute("data-title") for i in range(charts.count())]
    assert titles[:2] == ["per-class accuracy by class frequency", "test_top1_per_epoch"] and "train_loss" in titles
    for i in range(charts.count()):
        box = charts.nth(i).locator("svg").first.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, titles[i]
        assert charts.nth(i).locator("g.mark-line path").count() == 3, titles[i]  # one line per entry, drawn or not
        assert charts.nth(i).locator("g.role-legend-symbol path").count() == 3, titles[i]  # every entry in the legend
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "suite-page.png"), full_page=True)


def test_a_chart_shows_the_leaders_and_the_baseline_and_the_legend_toggles_entries(site, page):
    page.goto(board_file(site).as_uri())
    chart = rendered_charts(page).nth(1)  # test_top1_per_epoch
    spec = json.loads(page.locator(f"#{chart.get_attribute('data-spec')}").text_content())
    shown = [v["entry"] for v in spec["layer"][0]["params"][0]["value"]]
    leaders = [c.strip() for c in page.eval_on_selector_all(
        "table.leaderboard tbody tr", "rows => rows.filter(r => r.cells[0].innerText.trim() === '1').map(r => r.cells[1].innerText)")]
    assert sorted(shown) == sorted({*leaders, "ce"})  # the leaders (rank 1) and the baseline
    assert chart.evaluate(VISIBLE_LINES) == len(shown)
    labels = chart.locator("g.role-legend-label text")
    index = [labels.nth(i).text_content() for i in range(labels.count())].index(shown[0])
    labels.nth(index).click()
    page.wait_for_timeout(300)
    assert chart.evaluate(VISIBLE_LINES) == len(shown) - 1  # hidden on a click
    labels.nth(index).click()
    page.wait_for_timeout(300)
    assert chart.evaluate(VISIBLE_LINES) == len(shown)  # and shown again
    point = chart.locator("g.mark-symbol path").first.bounding_box()
    page.mouse.move(point["x"] + point["width"] / 2, point["y"] + point["height"] / 2)
    page.wait_for_selector("#vg-tooltip-element.visible")
    tip = page.locator("#vg-tooltip-element").inner_text()
    assert "entry" in tip and "seed" in tip and any(name in tip for name in shown)


def test_injected_names_render_as_text(site, page):
    page.goto((site / "index.html").as_uri())
    assert SCRIPT in page.locator("main").inner_text()  # the database entry, shown as text
    page.goto((site / method_page("sneaky")).as_uri())
    text = page.locator("main").inner_text()
    assert text.count(SCRIPT) == 2 and "javascript:alert(2)" in text
    assert page.locator("a[href^='javascript']").count() == 0
    assert page.locator("script").count() == 1  # only the sort script
    page.goto((site / method_page(SCRIPT)).as_uri())
    assert f"method {SCRIPT}" in page.locator("h1").inner_text()
    assert re.search(r"^method-script-alert-1-script-[0-9a-f]{8}\.html$", method_page(SCRIPT))


def test_site_works_when_copied_elsewhere(site, page, tmp_path):
    """No absolute paths: a copy of the folder (e.g. on a static host) works the same."""
    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    page.goto((copy / "index.html").as_uri())
    page.locator("a", has_text=f"v{long_tail_version()} · scale=tiny · ratio=100").first.click()
    page.wait_for_load_state()
    assert page.url.startswith(copy.as_uri()) and rendered_charts(page).count() >= 2
    assert page.evaluate("getComputedStyle(document.querySelector('header.top')).backgroundColor") == "rgb(29, 35, 48)"  # CSS loaded
