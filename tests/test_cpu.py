"""The thread budget: the CPUs this process may use, minus busy neighbours, shared among workers."""

from __future__ import annotations

from harness.cpu import cgroup_cpu_limit, running_elsewhere, thread_budget


def test_a_busy_neighbour_on_two_cores_leaves_one_thread_and_alone_both_are_used():
    assert thread_budget(cpus=2, others=0) == 2
    assert thread_budget(cpus=2, others=1) == 1
    assert thread_budget(cpus=2, others=5) == 1  # never fewer than one
    assert thread_budget(cpus=8, others=0, jobs=4) == 2  # shared among the grid's workers
    assert thread_budget(cpus=8, others=3, jobs=4) == 2  # its own three sibling workers are not neighbours
    assert thread_budget(cpus=2, others=2, jobs=2) == 1  # the sibling plus one neighbour
    assert thread_budget(cpus=8, others=0, requested=3) == 3  # threads= overrides


def test_cgroup_quotas_of_both_versions_are_read(tmp_path):
    own = tmp_path / "proc-cgroup"
    own.write_text("0::/job/step\n")
    (tmp_path / "job" / "step").mkdir(parents=True)
    (tmp_path / "job" / "step" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, own) == 1.5
    (tmp_path / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, own) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "missing") == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1, tmp_path / "missing") is None


def test_running_processes_are_read_from_loadavg_without_counting_the_reader(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.50 0.40 0.30 3/412 12345\n")
    assert running_elsewhere(samples=2, pause_s=0, loadavg=loadavg) == 2
    assert running_elsewhere(loadavg=tmp_path / "missing") == 0


def test_the_threads_key_sets_each_runs_threads_and_is_not_part_of_its_identity(tmp_path):
    import json

    import torch

    from harness.testing import run_cli

    before = torch.get_num_threads()
    try:
        code, _, err = run_cli("run", "suite=long_tail", "epochs=1", "method=ce", "seeds=1", "threads=1", f"results={tmp_path}")
        assert code == 0, err
        (result,) = (tmp_path / "runs").glob("*/result.json")
        assert json.loads(result.read_text())["provenance"]["device"].endswith("1 threads)")
        code, _, err = run_cli("run", "suite=long_tail", "epochs=1", "method=ce", "seeds=1", "threads=2", f"results={tmp_path}")
        assert code == 0 and "1 run(s) already stored" in err  # the same run: threads= says how, not what
        code, _, err = run_cli("run", "suite=long_tail", "method=ce", "threads=0", f"results={tmp_path}")
        assert code == 2 and "threads" in err
    finally:
        torch.set_num_threads(before)
