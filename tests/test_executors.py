"""Execution: worker processes, Ray, time limits, dead workers, concurrent commands."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import ResultStore
from harness.testing import run_cli

GRID = ("run", "suite=long_tail", "epochs=2", "method=ce,focal", "seeds=2")


def stored(results: Path) -> dict[str, tuple[str, str, float | None]]:
    con = ResultStore(results).connect(read_only=True)
    try:
        rows = con.execute(
            "SELECT r.run_id, r.entry, r.status, m.value FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id AND m.name = 'top1'"
        ).fetchall()
    finally:
        con.close()
    return {rid: (entry, status, value) for rid, entry, status, value in rows}


def test_two_workers_give_the_same_results_as_one(tmp_path):
    assert run_cli(*GRID, f"results={tmp_path / 'one'}")[0] == 0
    code, _, err = run_cli(*GRID, "jobs=2", f"results={tmp_path / 'two'}")
    assert code == 0, err
    one, two = stored(tmp_path / "one"), stored(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 4
    for rid in one:  # deterministic per seed, whichever process trains the run
        assert one[rid] == pytest.approx(two[rid])


def test_a_run_past_its_time_limit_is_stopped_and_stored_as_timeout(tmp_path):
    t0 = time.perf_counter()
    code, _out, err = run_cli("run", "suite=long_tail", "method=ce", "seeds=1", "epochs=500", "timeout=2", f"results={tmp_path}")
    assert code == 0, err
    assert time.perf_counter() - t0 < 120
    ((_entry, status, value),) = stored(tmp_path).values()
    assert status == "timeout" and value is None
    assert "exceeded its time limit of 2 s" in err


def _claims(results: Path) -> list[dict]:
    out = []
    for path in results.glob("runs/*/.claim"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    return out


def _kill_first_worker(results: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        pids = [c["worker_pid"] for c in _claims(results) if c.get("worker_pid")]
        if pids:
            time.sleep(0.5)  # let the worker get into the run
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("no worker was seen")


@pytest.mark.parametrize(("retries", "status"), [(1, "ok"), (0, "failed")])
def test_a_killed_worker_is_retried_then_stored_as_failed(tmp_path, retries, status):
    args = ["run", "suite=long_tail", "method=ce", "seeds=1", "epochs=8", "jobs=1", "timeout=300", f"retries={retries}", f"results={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_first_worker(tmp_path, proc)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ((_entry, got, _),) = stored(tmp_path).values()
    assert got == status
    if status == "failed":
        assert "worker process died" in err


def test_two_commands_on_one_folder_store_every_run_exactly_once(tmp_path):
    args = [sys.executable, "-m", "harness", "run", "suite=long_tail", "epochs=3", "method=ce,focal,balanced_softmax", "seeds=2", f"results={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    a = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    b = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, err_a = a.communicate(timeout=300)
    _, err_b = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    runs = stored(tmp_path)
    assert len(runs) == 6 and all(s == "ok" for _, s, _ in runs.values())
    trained = [line for err in (err_a, err_b) for line in err.splitlines() if " ok top1=" in line]
    labels = [line.split("] ", 1)[1].split(" ok ")[0] for line in trained]
    assert sorted(labels) == sorted(set(labels)) and len(labels) == 6  # no run trained twice
    assert not list(tmp_path.glob("runs/*/.claim"))


def test_a_stale_claim_of_a_killed_process_is_taken_over(tmp_path):
    store = ResultStore(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "runs" / "abc").mkdir(parents=True)
    (tmp_path / "runs" / "abc" / ".claim").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": 0}))
    assert store.claim("abc")
    other = ResultStore(tmp_path)
    (tmp_path / "runs" / "abd").mkdir()
    (tmp_path / "runs" / "abd" / ".claim").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "since": time.time()}))
    assert not other.claim("abd")  # a live process holds it


def test_ray_executor_on_a_local_cluster(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert run_cli(*GRID, f"results={tmp_path / 'local'}")[0] == 0
    code, _out, err = run_cli(*GRID, "executor=ray", f"results={tmp_path / 'ray'}")
    assert code == 0, err
    local, ray = stored(tmp_path / "local"), stored(tmp_path / "ray")
    assert local.keys() == ray.keys()
    for rid in local:
        assert local[rid] == pytest.approx(ray[rid])


def test_missing_ray_says_how_to_install_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = run_cli(*GRID, "executor=ray", f"results={tmp_path}")
    assert code == 2 and "pip install 'harness-bench[ray]'" in err


@pytest.mark.parametrize(("arg", "fragment"), [("jobs=0", "bad value 0 for jobs"), ("executor=slurm", "one of local, ray"), ("timeout=-1", "bad value -1.0 for timeout"), ("address=auto", "needs executor=ray")])
def test_bad_execution_options_fail_before_training(tmp_path, arg, fragment):
    code, _, err = run_cli(*GRID, arg, f"results={tmp_path}")
    assert code == 2 and fragment in err
    assert not (tmp_path / "runs").exists()
