"""A fully stored grid answers from its memo without loading plugins (harness.grid_memo)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from harness import cli, grid_memo
from harness.catalog import load_catalog
from harness.reported import Reported
from harness.testing import run_cli

FAST = ("suite=long_tail", "epochs=1", "method=ce", "seeds=1")


def test_a_rerun_prints_the_same_board_without_loading_plugins(tmp_path, monkeypatch):
    results = f"results={tmp_path}"
    code, first, err = run_cli("run", *FAST, results)
    assert code == 0, err
    assert len(list((tmp_path / grid_memo.FOLDER).glob("*.json"))) == 1

    def no_plugins():
        raise AssertionError("the memo should have answered")

    monkeypatch.setattr(cli, "_load_catalog", no_plugins)
    monkeypatch.setattr("harness.catalog.load_catalog", no_plugins)
    code, again, err = run_cli("run", *FAST, "jobs=2", "threads=1", results)  # execution keys do not change the grid
    assert code == 0 and again == first and "1 run(s) already stored, skipped" in err


def test_the_memo_path_does_not_import_torch(tmp_path):
    assert run_cli("run", *FAST, f"results={tmp_path}")[0] == 0
    code = ("import sys; from harness.cli import main; rc = main(['run', *sys.argv[1:]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code, *FAST, f"results={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("NO-TORCH 0"), out.stderr


def test_a_missing_result_falls_back_to_resolving_and_training(tmp_path):
    results = f"results={tmp_path}"
    assert run_cli("run", *FAST, results)[0] == 0
    for path in (tmp_path / "runs").glob("*/result.json"):
        path.unlink()
    code, _, err = run_cli("run", *FAST, results)
    assert code == 0 and "training 1 run(s)" in err


def test_other_grid_keys_or_plugin_code_give_another_memo(monkeypatch, tmp_path):
    fp = grid_memo.plugin_fingerprint()
    assert grid_memo.grid_key({"suite": "long_tail", "jobs": "2", "format": "json"}, fp) == grid_memo.grid_key({"suite": "long_tail"}, fp)
    assert grid_memo.grid_key({"suite": "long_tail", "seeds": "2"}, fp) != grid_memo.grid_key({"suite": "long_tail"}, fp)
    monkeypatch.setenv("HARNESS_PLUGINS", "losses")
    assert grid_memo.plugin_fingerprint() != fp

    # a plugin package's file changing (size or mtime) changes the fingerprint, found without importing it
    package = tmp_path / "memo_fake_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "methods.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = SimpleNamespace(name="fake", value="memo_fake_plugin.methods", dist=None)
    monkeypatch.setattr(grid_memo, "entry_points", lambda group: [fake])
    before = grid_memo.plugin_fingerprint()
    (package / "methods.py").write_text("X = 22\n")
    assert grid_memo.plugin_fingerprint() != before
    assert "memo_fake_plugin" not in sys.modules


def test_in_process_plugins_are_never_memoised(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_load_catalog", lambda: load_catalog(plugins=((object(), "in-process"),)))
    assert run_cli("run", *FAST, f"results={tmp_path}")[0] == 0
    assert not list((tmp_path / grid_memo.FOLDER).glob("*.json"))


REPORTED = Reported("ce", "top1", 0.5, "a paper, Table 1", tolerance=0.01, axes=(("ratio", "100"),), per_corruption=(("noise", 0.4),))


def test_memo_round_trip_and_refusal_of_anything_else(tmp_path):
    memo = grid_memo.GridMemo("long_tail", "tiny", ("ratio=100",), ("0123456789abcdef",), "val_top1", (REPORTED,))
    assert grid_memo.GridMemo.from_json(memo.to_json()) == memo
    data = json.loads(memo.to_json())
    for bad in ({**data, "run_ids": ["../../etc"]}, {**data, "schema": 99}, {**data, "reported": [{"entry": "ce", "code": "x"}]},
                {**data, "reported": [{**data["reported"][0], "value": "0.5"}]}, [1, 2]):
        with pytest.raises(ValueError):
            grid_memo.GridMemo.from_json(json.dumps(bad))
    grid_memo.write(tmp_path, "k", memo)
    assert grid_memo.read(tmp_path, "k") == memo
    grid_memo.memo_path(tmp_path, "k").write_text("{not json")
    assert grid_memo.read(tmp_path, "k") is None  # a cache: unreadable means "resolve again", never an error
