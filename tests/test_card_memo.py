"""collect and pull read the installed suite cards from a memo, without loading plugins (or torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import harness.catalog
from harness import card_memo
from harness.grid_memo import plugin_fingerprint
from harness.runner import default_cache_dir
from harness.store import ResultStore, read_result
from harness.testing import fake_record, run_cli


def _source_with_a_wrong_direction(root, version):
    record = fake_record(seed=0, version=version, variant={"ratio": 100, "test_dist": "uniform"}, extra={"ece": 0.1})
    ResultStore(root).write_many([(record, None)])  # says ece is higher-is-better; the card says lower
    return record


def test_a_command_that_loads_the_plugins_leaves_the_memo_and_collect_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    assert run_cli("list", "suites")[0] == 0
    path = card_memo.memo_path(default_cache_dir(), plugin_fingerprint())
    cards = {c.name: c for c in card_memo.read(default_cache_dir(), plugin_fingerprint())}
    installed = harness.catalog.load_catalog().suites.get("long_tail")
    assert path.is_file() and cards["long_tail"].version == str(installed.version) and cards["long_tail"].primary == installed.primary
    assert cards["long_tail"].metric("ece").higher_is_better is False

    record = _source_with_a_wrong_direction(tmp_path / "src", str(installed.version))

    def no_plugins(*args, **kwargs):
        raise AssertionError("collect loaded the plugins although the memo was there")

    monkeypatch.setattr(harness.catalog, "load_catalog", no_plugins)
    code, _, err = run_cli("collect", str(tmp_path / "src"), f"results={tmp_path / 'target'}")
    assert code == 0, err
    stored = read_result(tmp_path / "target" / "runs" / record["run_id"] / "result.json")
    assert stored["metrics"]["ece"]["higher_is_better"] is False and "direction differs" in err  # the card's word, from the memo


def test_collect_without_a_usable_memo_loads_the_plugins_and_leaves_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = card_memo.memo_path(default_cache_dir(), plugin_fingerprint())
    path.parent.mkdir(parents=True)
    installed = harness.catalog.load_catalog().suites.get("long_tail")
    for bad in ("{", json.dumps({"schema": 1, "plugins": "another fingerprint", "cards": []}),
                json.dumps({"schema": 1, "plugins": plugin_fingerprint(), "cards": [{"name": "long_tail", "version": "3", "primary": "top1",
                                                                                    "baseline": "ce", "metrics": [["top5", True]]}]})):
        path.write_text(bad)
        assert card_memo.read(default_cache_dir(), plugin_fingerprint()) is None  # unreadable, another plugin code's, or inconsistent
        path.unlink()
        path.write_text(bad)
        record = _source_with_a_wrong_direction(tmp_path / "src", str(installed.version))
        target = tmp_path / f"target{len(bad)}"
        code, _, err = run_cli("collect", str(tmp_path / "src"), f"results={target}")
        assert code == 0, err
        assert read_result(target / "runs" / record["run_id"] / "result.json")["metrics"]["ece"]["higher_is_better"] is False
        path.unlink()


def test_a_catalog_with_a_broken_plugin_leaves_no_memo(tmp_path):
    class Catalog:
        plugins = {"x": harness.catalog.PluginInfo("x", "x", "1", error="import failed")}
        suites = []

    card_memo.remember(Catalog(), tmp_path)
    assert not (tmp_path / card_memo.FOLDER).exists()  # its warning must come on every load, so the plugins load every time


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_collect_with_the_memo_does_not_import_torch(tmp_path):
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "harness", "list", "suites"], env=env, check=True, capture_output=True)
    installed = harness.catalog.load_catalog().suites.get("long_tail")
    _source_with_a_wrong_direction(tmp_path / "src", str(installed.version))
    code = ("import sys; from harness.cli import main; rc = main(['collect', sys.argv[1], 'results=' + sys.argv[2]]); "
            "print('torch' in sys.modules); raise SystemExit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src"), str(tmp_path / "target")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
