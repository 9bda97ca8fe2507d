"""`harness publish`: the static site's content, escaping, file names and determinism (no browser)."""

from __future__ import annotations

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


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path / "results")
    values = {"ce": [0.60, 0.62, 0.64], "focal": [0.70, 0.71, 0.72], "evil": [0.5, 0.55, 0.45]}
    for entry, vals in values.items():
        for seed, v in enumerate(vals):
            store.write(
                with_series(
                    fake_record(entry=entry, seed=seed, value=v, extra={"few_shot": v / 2}),
                    per_class_accuracy=[v + 0.1, v, v - 0.1], class_counts=[100.0, 10.0, 1.0], test_top1_per_epoch=[v / 2, v],
                )
            )
    store.write(fake_record(entry="focal", seed=3, status="failed"))
    store.write(fake_record(entry="focal", seed=4, status="diverged"))
    store.write(fake_record(entry=SCRIPT, seed=0, value=0.9))  # a name straight in the database
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
            assert [m for m in re.findall(r"<script[^>]*>", text)] == ['<script src="assets/sort.js">'], name
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
        assert re.fullmatch(r"[a-z0-9-]+\.html|assets/(style\.css|sort\.js)|\.harness-site", name), name
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
    protocol = {"suite": "long_tail", "suite_version": "1", "scale": "tiny", "variant": "ratio=100", "dataset": "mnist5k", "model": "small_cnn"}
    (board,) = [n for n in site_files(out) if n.startswith("board-long-tail-v1-tiny-ratio-100")]
    page = read(out, board)
    assert board == board_page({**protocol, "recipe_id": re.search(r"recipe</th><td>([0-9a-f]{8})", page).group(1)})
    assert "Student t" in page and "Protocol card: <a" in page and "long_tail v1</a> (version 1)" in page
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
    assert "&quot;epochs&quot;: 2" in index  # the stored recipe stands in for the card
    ghost = read(out, method_page("ghost_method"))
    assert "is not installed here" in ghost and "ghost_suite v1" in ghost
    focal = read(out, method_page("focal"))
    assert "Lin et al." in focal and "gamma" in focal and "harness-bench" in focal and "long_tail v1" in focal


def test_publish_command(results, tmp_path):
    out = tmp_path / "site"
    code, stdout, err = run_cli("publish", f"results={results}", f"out={out}")
    assert code == 0, err
    assert "published" in stdout and (out / "index.html").is_file()
    code, _, err = run_cli("publish", f"results={results}", "format=html")
    assert code == 2 and "does not take format" in err
    code, _, err = run_cli("publish", f"results={tmp_path / 'nothing'}", f"out={tmp_path / 'x'}")
    assert code == 2 and "no results database" in err
