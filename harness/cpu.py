"""How many torch threads a run should use: the CPUs this process may really use, shared fairly.

Measured on 2 cores: a tiny run using 2 threads beside one other busy process slowed from ~1.0 s
to ~4.7 s (its threads wait on each other while the neighbour holds a core); with 1 thread it lost
nothing. So the budget is the CPUs this process may use (its affinity mask and its cgroup's CPU
quota), minus the other processes that are running right now, divided among the grid's workers;
`threads=N` overrides it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the platform has no masks)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_max(path: Path) -> float | bool | None:
    """A cgroup v2 `cpu.max` file as CPUs; None for "max" (no limit); False when absent or unreadable."""
    try:
        fields = path.read_text().split()
        if fields[0] == "max":
            return None
        return float(fields[0]) / float(fields[1])
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return False


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 `cpu.max` of its own cgroup, else of the
    root; v1 `cpu.cfs_quota_us / cpu.cfs_period_us`), or None when there is none."""
    paths = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, _, rel = line.partition("::")
            if rel and rel != "/":
                paths.append(root / rel.lstrip("/") / "cpu.max")
    except OSError:
        pass
    paths.append(root / "cpu.max")
    for path in paths:
        limit = _cpu_max(path)
        if limit is not False:
            return limit
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's quota (rounded down, >= 1)."""
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return cpus


def running_elsewhere(samples: int = 3, pause_s: float = 0.02, loadavg: Path = Path("/proc/loadavg")) -> int:
    """Processes running right now other than this one: the smallest of a few readings of the
    kernel's runnable count (the 4th field of /proc/loadavg, which counts the reader itself)."""
    counts = []
    for i in range(samples):
        try:
            running = int(loadavg.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(pause_s)
    return min(counts)


def thread_budget(*, jobs: int = 1, requested: int | None = None, others: int | None = None, cpus: int | None = None) -> int:
    """Torch threads for one run: `requested` if given, else the usable CPUs not taken by other
    running processes, shared among the grid's `jobs` workers (at least 1). `others` counts every
    other running process; the grid's own other workers (up to jobs - 1) are not neighbours."""
    if requested is not None:
        return max(1, int(requested))
    cpus = usable_cpus() if cpus is None else cpus
    others = running_elsewhere() if others is None else others
    neighbours = max(0, others - (jobs - 1))
    return max(1, (cpus - neighbours) // max(1, jobs))


def apply_thread_budget(*, jobs: int = 1, requested: int | None = None) -> int:
    """Set torch's intra-op threads to the budget; returns it (recorded in the run's provenance)."""
    import torch

    threads = thread_budget(jobs=jobs, requested=requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
