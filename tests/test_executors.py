"""Execution: worker processes, Ray, time limits, dead workers, concurrent commands."""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import ResultStore
from harness.testing import offline_environ, run_cli

# one torch thread in every process: a sum split over another number of threads rounds differently
GRID = ("run", "suite=long_tail", "epochs=2", "method=ce,focal", "seeds=2", "threads=1")


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


@pytest.mark.parametrize(("arg", "fragment"), [("jobs=0", "bad value 0 for jobs"), ("executor=spark", "one of local, ray, slurm"), ("timeout=-1", "bad value -1.0 for timeout"), ("address=auto", "needs executor=ray")])
def test_bad_execution_options_fail_before_training(tmp_path, arg, fragment):
    code, _, err = run_cli(*GRID, arg, f"results={tmp_path}")
    assert code == 2 and fragment in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# workers die with their coordinator; the time limit starts with the run; held runs are explained
# ---------------------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    """Ended (a zombie nobody reaped counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def _wait_gone(pids: list[int], seconds: float = 60) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


COORDINATOR = r"""
import sys, time
from pathlib import Path
from harness.executors import LocalPool
from harness.runner import ExecOptions
pool = LocalPool(ExecOptions(jobs=2), catalog=None, suite=None, device="cpu", cache_dir=Path(sys.argv[1]))
workers = [pool._start(i) for i in range(2)]
print(" ".join(str(w["proc"].pid) for w in workers), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_workers_die_with_a_coordinator_killed_with_sigkill(tmp_path):
    coordinator = subprocess.Popen([sys.executable, "-c", COORDINATOR, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in coordinator.stdout.readline().split()]
    try:
        assert len(workers) == 2
        time.sleep(5)  # let them load the catalog and block on their task pipe, as idle workers do
        assert not any(_gone(p) for p in workers)
        coordinator.kill()
        coordinator.wait()
        assert _wait_gone(workers) == []
    finally:
        coordinator.kill()
        for pid in workers:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


WATCHED = r"""
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import os; from harness.executors import _watch_parent; print(os.getpid(), flush=True); _watch_parent(os.getppid())"], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_the_parent_watchdog_ends_a_worker_without_help_from_the_kernel(tmp_path):
    """The portable fallback alone (no prctl): a process whose parent exits ends itself."""
    parent = subprocess.run([sys.executable, "-c", WATCHED], capture_output=True, text=True, timeout=120)
    pid = int(parent.stdout.strip())
    try:
        assert _wait_gone([pid]) == []
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


STARTUP_S, RUN_S = 6.0, 0.5


def slow_starting_worker(index, tasks, events, threads, device, cache_dir, compile_model=False, parent_pid=None, jobs=1):
    """A pool worker whose start-up (imports, catalog, CUDA context) takes longer than the time limit."""
    from harness.executors import die_with_parent
    from harness.spec import RunSpec

    if parent_pid is not None:
        die_with_parent(parent_pid)
    time.sleep(STARTUP_S)
    while (item := tasks.get()) is not None:
        run_id = RunSpec.from_canonical(item).run_id
        events.put(("started", index, run_id))
        time.sleep(RUN_S)
        events.put(("done", index, run_id, {"run_id": run_id, "status": "ok"}))


def test_the_time_limit_counts_from_the_start_of_the_run_not_of_the_worker(tmp_path, monkeypatch):
    from harness import executors
    from harness.runner import ExecOptions, Sink
    from harness.spec import RunSpec
    from harness.testing import fake_record

    class SlowStartPool(executors.LocalPool):
        worker = staticmethod(slow_starting_worker)

    monkeypatch.setattr(executors, "make_record", lambda spec, suite, catalog, *, status, error, **kw: {"run_id": spec.run_id, "status": status, "error": error})
    specs = [RunSpec.from_canonical(fake_record(seed=s)["spec"]) for s in range(2)]
    finished = {}
    sink = Sink(started=lambda spec: None, progress=lambda *a: None, finished=lambda spec, record: finished.setdefault(spec.run_id, record))
    pool = SlowStartPool(ExecOptions(jobs=1, timeout_s=3), catalog=None, suite=None, device="cpu", cache_dir=tmp_path)
    pool.run(specs, sink)
    assert [finished[s.run_id]["status"] for s in specs] == ["ok", "ok"]  # 6 s of start-up, 0.5 s runs, a 3 s limit


def never_ending_worker(index, tasks, events, threads, device, cache_dir, compile_model=False, parent_pid=None, jobs=1):
    from harness.executors import die_with_parent
    from harness.spec import RunSpec

    die_with_parent(parent_pid)
    item = tasks.get()
    events.put(("started", index, RunSpec.from_canonical(item).run_id))
    time.sleep(600)


def test_a_started_run_past_its_limit_is_still_stopped(tmp_path, monkeypatch):
    from harness import executors
    from harness.runner import ExecOptions, Sink
    from harness.spec import RunSpec
    from harness.testing import fake_record

    class HangingPool(executors.LocalPool):
        worker = staticmethod(never_ending_worker)

    monkeypatch.setattr(executors, "make_record", lambda spec, suite, catalog, *, status, error, **kw: {"run_id": spec.run_id, "status": status, "error": error})
    spec = RunSpec.from_canonical(fake_record()["spec"])
    finished = {}
    sink = Sink(started=lambda spec: None, progress=lambda *a: None, finished=lambda spec, record: finished.setdefault(spec.run_id, record))
    HangingPool(ExecOptions(jobs=1, timeout_s=1), catalog=None, suite=None, device="cpu", cache_dir=tmp_path).run([spec], sink)
    assert finished[spec.run_id]["status"] == "timeout" and "time limit of 1 s" in finished[spec.run_id]["error"]


def test_a_run_held_by_another_host_says_who_holds_it_and_how_to_take_it_over(tmp_path):
    from harness.runner import wait_for_other_holders
    from harness.spec import RunSpec
    from harness.testing import fake_record

    store = ResultStore(tmp_path)
    spec = RunSpec.from_canonical(fake_record()["spec"])
    claim = tmp_path / "runs" / spec.run_id / ".claim"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "since": time.time() - 600}))
    said = []

    def say(text):
        said.append(text)
        claim.unlink()  # the user takes the way out the message offers

    wait_for_other_holders(store, {spec.run_id: spec}, say=say)
    (text,) = said
    assert "process 4242 on host gpu-node-7" in text and "10 min ago" in text and "ce seed=0" in text
    assert f"rm {claim}" in text and "expire 24 h after they were made" in text
    assert store.claim(spec.run_id)  # and the run is ours


def test_a_run_held_by_a_live_process_here_is_waited_for_with_its_holder_named(tmp_path):
    from harness.runner import wait_for_other_holders
    from harness.spec import RunSpec
    from harness.testing import fake_record

    holder = subprocess.Popen([sys.executable, "-c", f"from harness.store import ResultStore; import time; ResultStore({str(tmp_path)!r}).claim({'0' * 16!r}); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        spec = RunSpec.from_canonical(fake_record()["spec"])
        said = []

        def say(text):
            said.append(text)
            holder.kill()  # the other command ends (or is killed): its claim goes stale

        wait_for_other_holders(ResultStore(tmp_path), {"0" * 16: spec}, say=say)
        assert f"process {holder.pid} on this host" in said[0] and "expire" not in said[0]
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------
# SLURM through submitit (its local executor stands in for a cluster)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_slurm_executor_runs_each_run_as_a_job_and_stores_it_once(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    for key, value in offline_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    results = tmp_path / "results"
    args = ("run", "suite=long_tail", "method=ce,focal", "seeds=1", "epochs=1", f"results={results}", "executor=slurm", "slurm_cluster=local",
            "slurm_time=10", "slurm_cpus_per_task=1")
    code, _, err = run_cli(*args)
    assert code == 0, err
    records, problems = ResultStore(results).scan()
    assert not problems and sorted(r["entry"] for r in records.values()) == ["ce", "focal"]
    assert all(r["status"] == "ok" and r.get("predictions") for r in records.values())  # predictions came back from the job with the record
    assert all((results / "runs" / rid / "predictions.parquet").is_file() for rid in records)
    logs = list((results / "slurm").glob("*_log.out"))
    assert len(logs) == 2  # one job per run, its log kept in the results folder's slurm/
    code, _, err = run_cli(*args)
    assert code == 0 and "2 run(s) already stored, skipped" in err  # nothing is submitted again
    assert len(list((results / "slurm").glob("*_log.out"))) == 2


def test_slurm_keys_need_executor_slurm_and_a_cluster(tmp_path):
    code, _, err = run_cli("run", "suite=long_tail", "method=ce", "slurm_partition=gpu", f"results={tmp_path}")
    assert code == 2 and "slurm_partition= configures SLURM jobs; it needs executor=slurm" in err
    code, _, err = run_cli("run", "suite=long_tail", "method=ce", "seeds=1", "epochs=1", "executor=slurm", f"results={tmp_path}")
    if importlib.util.find_spec("submitit") is None:
        assert code == 2 and "pip install 'harness-bench[slurm]'" in err
    elif shutil.which("srun") is None:
        assert code == 2 and "slurm_cluster=local" in err  # no silent fallback to local processes
