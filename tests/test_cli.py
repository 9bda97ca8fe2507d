"""End to end through the `harness` command: run, cache, resume, leaderboard, list, show, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import cli
from harness.catalog import load_catalog
from harness.hookspecs import hookimpl
from harness.kinds import Loss, Method
from harness.store import ResultStore
from harness.testing import run_cli

FAST = ("suite=long_tail", "epochs=2")


def stored(results: Path) -> list[dict]:
    store = ResultStore(results)
    con = store.connect(read_only=True)
    try:
        rows = con.execute("SELECT run_id, entry, seed, status, error FROM runs ORDER BY entry, seed").fetchall()
    finally:
        con.close()
    return [dict(zip(("run_id", "entry", "seed", "status", "error"), r)) for r in rows]


def test_run_stores_every_run_prints_the_leaderboard_and_caches(tmp_path):
    results = f"results={tmp_path}"
    code, out, err = run_cli("run", *FAST, "method=ce,balanced_softmax", "seeds=2", results)
    assert code == 0, err
    assert "long_tail v3 | scale=tiny | ratio=100,test_dist=uniform | mnist5k / fast_cnn3" in out
    assert "balanced_softmax" in out and "top1 ↑" in out and "ece ↓" in out
    runs = stored(tmp_path)
    assert [(r["entry"], r["seed"], r["status"]) for r in runs] == [("balanced_softmax", 0, "ok"), ("balanced_softmax", 1, "ok"), ("ce", 0, "ok"), ("ce", 1, "ok")]
    assert len(list((tmp_path / "runs").glob("*/result.json"))) == 4

    code, out2, err2 = run_cli("run", *FAST, "method=ce,balanced_softmax", "seeds=2", results)
    assert code == 0 and "4 run(s) already stored, skipped" in err2 and "training" not in err2
    assert out2 == out  # same table from the same stored results
    assert len(stored(tmp_path)) == 4

    # a larger grid trains only what is new
    code, _, err3 = run_cli("run", *FAST, "method=ce,balanced_softmax", "seeds=3", results)
    assert code == 0 and "4 run(s) already stored" in err3 and "training 2 run(s)" in err3
    assert len(stored(tmp_path)) == 6


def test_leaderboard_formats_show_and_list(tmp_path):
    results = f"results={tmp_path}"
    assert run_cli("run", *FAST, "method=ce,focal", "seeds=2", results)[0] == 0
    code, out, _ = run_cli("leaderboard", "suite=long_tail", "format=json", results)
    rows = json.loads(out)
    assert code == 0 and {r["method"] for r in rows} == {"ce", "focal"}
    assert all({"suite", "variant", "method", "metric", "mean", "std", "n", "rank"} <= set(r) for r in rows)
    assert all(r["n"] == 2 and r["metric"] == "top1" for r in rows)
    assert sorted(r["rank"] for r in rows) in ([1, 2], [1, 1])
    code, out, _ = run_cli("leaderboard", "suite=long_tail", "format=markdown", results)
    assert code == 0 and out.startswith("### long_tail v3") and "| rank" in out
    code, out, _ = run_cli("leaderboard", "format=csv", results)
    assert code == 0 and out.splitlines()[0].startswith("suite,suite_version,scale,variant")

    run_id = stored(tmp_path)[0]["run_id"]
    code, out, _ = run_cli("show", run_id[:8], results)
    assert code == 0 and f"run {run_id}" in out and '"suite": "long_tail"' in out
    assert "top1" in out and '"torch":' in out and "per_class_accuracy" in out and "harness-bench" in out

    code, out, _ = run_cli("list")
    assert code == 0 and all(s in out for s in ("methods:", "suites:", "datasets:", "models:"))
    assert "gamma: float = 2.0" in out and "Lin et al." in out and "harness-bench 0.1.0" in out
    code, out, _ = run_cli("list", "methods", "ldam*")
    assert code == 0 and "ldam_drw" in out and "focal" not in out
    code, out, _ = run_cli("plugins")
    assert code == 0 and "harness_plugins.losses" in out and "ldam_drw" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("run", "suite=long_tial"), "did you mean 'long_tail'"),
        (("run", "suite=long_tail", "method=focla"), "did you mean 'focal'"),
        (("run", "suite=long_tail", "ratio=abc"), "bad value 'abc' for ratio"),
        (("run", "suite=long_tail", "colour=red"), "unknown key 'colour'"),
        (("run", "suite=long_tail", "format=xml"), "expected one of table, markdown, csv, json"),
        (("leaderboard", "suite=long_tail", "format=xml"), "expected one of table, markdown, csv, json"),
        (("show", "0123456789abcdef"), "no stored run with id"),
        (("leaderboard", "suite=long_tail"), "no results database"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path, args, fragment):
    code, _out, err = run_cli(*args, f"results={tmp_path}")
    assert code == 2 and fragment in err and "Traceback" not in err


def test_an_unreachable_hub_is_reported_at_once(tmp_path):
    t0 = time.perf_counter()
    code, _, err = run_cli("run", "suite=long_tail", "dataset=cifar10", "method=ce", "seeds=1", f"results={tmp_path}")
    assert code == 2 and "hub" in err.lower() and "dataset=mnist5k" in err
    assert time.perf_counter() - t0 < 20  # generous: it must not retry for a minute
    assert not list(tmp_path.glob("runs/*/result.json"))


class Exploding(Loss):
    def forward(self, logits, targets, index):
        raise RuntimeError("bug inside the plugin")


class GoesNaN(Loss):
    def forward(self, logits, targets, index):
        return torch.nn.functional.cross_entropy(logits, targets) * float("inf")


class BadMethods:
    @hookimpl
    def harness_register_methods(self, register):
        register(Method("explodes", "loss", lambda ctx: Exploding(), "raises", "test fixture"))
        register(Method("goes_nan", "loss", lambda ctx: GoesNaN(), "infinite loss", "test fixture"))


def test_a_raising_method_is_stored_as_failed_a_nan_one_as_diverged_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_load_catalog", lambda: load_catalog(plugins=((BadMethods(), "bad-methods"),)))
    code, out, err = run_cli("run", *FAST, "method=explodes,goes_nan,ce", "seeds=1", f"results={tmp_path}")
    assert code == 0
    by_entry = {r["entry"]: r for r in stored(tmp_path)}
    assert by_entry["ce"]["status"] == "ok"
    assert by_entry["explodes"]["status"] == "failed" and "RuntimeError: bug inside the plugin" in by_entry["explodes"]["error"]
    assert by_entry["goes_nan"]["status"] == "diverged" and "epoch 1 of 2" in by_entry["goes_nan"]["error"]
    assert "bug inside the plugin" in err  # the progress line says why
    # failed and diverged entries are shown, not dropped
    assert "explodes" in out and "goes_nan" in out


def test_a_corrupt_database_fails_clearly_and_loses_no_result(tmp_path):
    assert run_cli("run", *FAST, "method=ce", "seeds=1", f"results={tmp_path}")[0] == 0
    db = tmp_path / "harness.duckdb"
    db.write_bytes(b"garbage" * 100)
    code, _, err = run_cli("run", *FAST, "method=ce", "seeds=1", f"results={tmp_path}")
    assert code == 2 and "cannot open the results database" in err and "harness collect" in err
    assert len(list(tmp_path.glob("runs/*/result.json"))) == 1
    db.unlink()
    code, out, _ = run_cli("collect", str(tmp_path), f"results={tmp_path}")
    assert code == 0 and "1 run(s) ingested" in out


def _harness(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_minus_9_then_resume_loses_and_duplicates_nothing(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ("run", "suite=long_tail", "epochs=3", "method=ce,focal,balanced_softmax", "seeds=2", f"results={tmp_path}")
    proc = _harness(*args, env=env)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("runs/*/result.json"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name for p in tmp_path.glob("runs/*/result.json")}
    assert 2 <= len(done_before) < 6, "the kill should land mid-grid"

    proc = _harness(*args, env=env)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"{len(done_before)} run(s) already stored" in err
    runs = stored(tmp_path)
    assert len(runs) == 6 and len({r["run_id"] for r in runs}) == 6
    assert done_before <= {r["run_id"] for r in runs}
    assert all(r["status"] == "ok" for r in runs)
    assert not list(tmp_path.glob("runs/*/.*.tmp"))


def test_ctrl_c_stores_finished_runs_and_says_how_to_resume(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = _harness("run", "suite=long_tail", "epochs=3", "method=ce,focal", "seeds=3", f"results={tmp_path}", env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/result.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "run the same command again to resume" in err
    assert len(stored(tmp_path)) == len(list(tmp_path.glob("runs/*/result.json"))) >= 1


def test_device_must_be_one_torch_knows(tmp_path):
    code, _, err = run_cli("run", *FAST, "method=ce", "seeds=1", "device=tpu", f"results={tmp_path}")
    assert code == 2 and "bad value 'tpu' for device: expected auto, cpu, cuda, cuda:N or mps" in err
    assert not list(tmp_path.glob("runs/*/result.json"))


def test_every_data_set_of_the_grid_is_reachable_before_the_first_run_trains(tmp_path):
    code, _, err = run_cli("run", *FAST, "dataset=mnist5k,cifar10", "method=ce", "seeds=1", f"results={tmp_path}")
    assert code == 2 and "cifar10" in err and "hub" in err.lower()
    assert not list(tmp_path.glob("runs/*/result.json"))  # mnist5k was not trained first
