"""Executors: where the runs of a grid train. All report to the coordinator through a `Sink`;
only the coordinator writes result files and the database.

- `InProcess`: one run after another in this process (jobs=1, no time limit): no start-up cost.
- `LocalPool`: `jobs` worker processes (spawned, torch threads split between them; on a
  multi-GPU machine worker i uses GPU i mod n). The coordinator watches them: a run past its
  time limit (counted from when the run starts in its worker, so worker start-up does not count)
  has its worker killed and is stored as `timeout`; a worker that dies mid-run (OOM killer,
  SIGKILL) is replaced and its run tried again, up to `retries` times, then stored as `failed`.
  Workers die with their coordinator, even when it is killed with SIGKILL.
- `Ray`: one Ray task per run on a Ray cluster (`address=auto`, `ray://...`, or a local cluster).
- `Slurm`: one SLURM job per run, submitted as a job array through submitit (`executor=slurm`,
  `slurm_partition=...`); `slurm_cluster=local` runs the same jobs as local processes (tests,
  a machine without SLURM).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runner import ExecOptions, Sink, _now, execute, make_record
from harness.spec import RunSpec
from harness.suite import Suite


def make_executor(options: ExecOptions, *, catalog: Any, suite: Suite, device: str, cache_dir: Path) -> Any:
    if options.executor == "slurm":
        return SlurmExecutor(options, catalog=catalog, suite=suite, device=device, cache_dir=cache_dir)
    if options.executor == "ray":
        return RayExecutor(options, catalog=catalog, suite=suite, device=device, cache_dir=cache_dir)
    if options.jobs == 1 and options.timeout_s is None:
        return InProcess(catalog=catalog, suite=suite, device=device, cache_dir=cache_dir, compile_model=options.compile_model, threads=options.threads)
    # a time limit needs a process that can be killed from outside, even for jobs=1
    return LocalPool(options, catalog=catalog, suite=suite, device=device, cache_dir=cache_dir)


class _SinkHook:
    """Stands in for the plugin hook relay inside a worker: forwards epoch progress."""

    def __init__(self, report: Any):
        self.report = report

    def harness_run_progress(self, spec: RunSpec, epoch: int, epochs: int, train_loss: float) -> None:
        self.report(spec, epoch, epochs, train_loss)


class InProcess:
    def __init__(self, *, catalog: Any, suite: Suite, device: str, cache_dir: Path, compile_model: bool = False, threads: int | None = None):
        self.catalog, self.suite, self.device, self.cache_dir, self.compile_model = catalog, suite, device, cache_dir, compile_model
        self.threads = threads

    def run(self, specs: list[RunSpec], sink: Sink) -> None:
        from harness.cpu import apply_thread_budget

        memo: dict[str, Any] = {}
        hook = _SinkHook(sink.progress)
        for spec in specs:
            if not sink.claim(spec):
                continue
            apply_thread_budget(jobs=1, requested=self.threads)  # neighbours come and go: sized per run
            sink.started(spec)
            record = execute(spec, self.suite, self.catalog, cache_dir=self.cache_dir, device=self.device, hook=hook, data_memo=memo, compile_model=self.compile_model)
            sink.finished(spec, record)


# ---------------------------------------------------------------------------------------------
# local worker processes
# ---------------------------------------------------------------------------------------------


def _worker_device(device: str, index: int) -> str:
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        return f"cuda:{index % count}" if count > 1 else device
    return device


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_WATCH_S = 1.0


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` (its coordinator) ends, however it ends.

    Without this, a coordinator killed with SIGKILL leaves its workers blocked on their task
    pipe forever, each holding its memory. On Linux the kernel sends SIGKILL when the parent
    goes (prctl PR_SET_PDEATHSIG); everywhere, a daemon thread notices that the process was
    re-parented and exits."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    if os.getppid() != parent_pid:  # the parent died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="harness-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_WATCH_S)
    os._exit(1)


def _pool_worker(index: int, tasks: Any, events: Any, threads: int | None, device: str, cache_dir: str, compile_model: bool = False,
                 parent_pid: int | None = None, jobs: int = 1) -> None:
    """A worker process: load the catalog once, then train the specs it is sent. It reports
    "started" when a run begins (the time limit counts from then), then "done" with its record.
    `threads` (None: sized per run from the CPUs free for the grid's `jobs` workers)."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    from harness.catalog import load_catalog
    from harness.cpu import apply_thread_budget
    from harness.errors import HarnessError as UserError

    catalog = load_catalog()
    memo: dict[str, Any] = {}
    device = _worker_device(device, index)
    while True:
        item = tasks.get()
        if item is None:
            return
        spec = RunSpec.from_canonical(item)
        apply_thread_budget(jobs=jobs, requested=threads)
        hook = _SinkHook(lambda s, e, n, loss: events.put(("progress", index, s.run_id, e, n, loss)))
        events.put(("started", index, spec.run_id))
        try:
            suite = catalog.suites.get(spec.suite)
            record = execute(spec, suite, catalog, cache_dir=Path(cache_dir), device=device, hook=hook, data_memo=memo, compile_model=compile_model)
        except UserError as exc:
            events.put(("user_error", index, spec.run_id, str(exc)))
            continue
        events.put(("done", index, spec.run_id, record))


class LocalPool:
    POLL_S = 0.1
    START_LIMIT_S = 600.0  # with a time limit: a worker that has not begun its run by then is stuck in start-up
    worker = staticmethod(_pool_worker)  # the body of each worker process

    def __init__(self, options: ExecOptions, *, catalog: Any, suite: Suite, device: str, cache_dir: Path):
        self.options, self.catalog, self.suite, self.device, self.cache_dir = options, catalog, suite, device, cache_dir
        self.ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        self.events = self.ctx.Queue()
        self.threads = options.threads  # None: each worker sizes its threads per run

    def _start(self, index: int) -> dict[str, Any]:
        tasks = self.ctx.Queue()
        args = (index, tasks, self.events, self.threads, self.device, str(self.cache_dir), self.options.compile_model, os.getpid(), self.options.jobs)
        proc = self.ctx.Process(target=self.worker, args=args, daemon=True)
        proc.start()
        # since: when the run started in the worker (None until it says so; start-up is not timed)
        return {"proc": proc, "tasks": tasks, "spec": None, "since": None, "sent": 0.0}

    def run(self, specs: list[RunSpec], sink: Sink) -> None:
        if not specs:
            return
        pending = list(specs)
        attempts: dict[str, int] = {}
        by_id = {s.run_id: s for s in specs}
        workers = [self._start(i) for i in range(min(self.options.jobs, len(specs)))]
        remaining = len(specs)
        try:
            while remaining:
                for w in workers:  # hand out work
                    while w["spec"] is None and pending and not sink.claim(pending[0]):
                        pending.pop(0)  # another process trains it
                        remaining -= 1
                    if w["spec"] is None and pending:
                        spec = pending.pop(0)
                        attempts[spec.run_id] = attempts.get(spec.run_id, 0) + 1
                        w["spec"], w["since"], w["sent"] = spec, None, time.monotonic()
                        w["tasks"].put(spec.canonical())
                        sink.assigned(spec, w["proc"].pid)
                        sink.started(spec)
                try:
                    event = self.events.get(timeout=self.POLL_S)
                except queue.Empty:
                    event = None
                if event is not None:
                    kind, index, run_id = event[:3]
                    current = workers[index]["spec"]
                    if current is None or current.run_id != run_id:
                        pass  # from a worker that was killed and replaced since: its run is settled
                    elif kind == "started":
                        workers[index]["since"] = time.monotonic()
                    elif kind == "progress":
                        sink.progress(by_id[run_id], *event[3:])
                    elif kind == "user_error":
                        raise HarnessError(event[3])
                    elif kind == "done":
                        workers[index]["spec"] = None
                        sink.finished(by_id[run_id], event[3])
                        remaining -= 1
                for i, w in enumerate(workers):  # watch for deaths and time limits
                    spec = w["spec"]
                    if spec is None:
                        continue
                    elapsed = time.monotonic() - (w["since"] if w["since"] is not None else w["sent"])
                    if not w["proc"].is_alive():
                        code = w["proc"].exitcode
                        workers[i] = self._start(i)
                        if attempts[spec.run_id] <= self.options.retries:
                            pending.insert(0, spec)
                            continue
                        error = f"the worker process died during the run (exit code {code}); tried {attempts[spec.run_id]} time(s) (retries={self.options.retries})"
                        sink.finished(spec, make_record(spec, self.suite, self.catalog, status="failed", error=error, started=_now(), duration_s=elapsed, device=self.device))
                        remaining -= 1
                    elif self.options.timeout_s is not None and elapsed > (self.options.timeout_s if w["since"] is not None else self.START_LIMIT_S + self.options.timeout_s):
                        w["proc"].kill()
                        w["proc"].join()
                        workers[i] = self._start(i)
                        error = f"the run exceeded its time limit of {self.options.timeout_s:g} s and was stopped"
                        if w["since"] is None:
                            error = f"the worker process had not started the run {elapsed:.0f} s after it was sent (stuck in start-up?) and was stopped"
                        sink.finished(spec, make_record(spec, self.suite, self.catalog, status="timeout", error=error, started=_now(), duration_s=elapsed, device=self.device))
                        remaining -= 1
        finally:
            for w in workers:
                if w["proc"].is_alive():
                    if w["spec"] is None:
                        w["tasks"].put(None)
                    else:
                        w["proc"].kill()
            for w in workers:
                w["proc"].join(timeout=5)
                if w["proc"].is_alive():
                    w["proc"].kill()


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------

_RAY_CATALOG: Any = None


def _ray_execute(spec_json: dict[str, Any], cache_dir: str, device: str, compile_model: bool = False) -> dict[str, Any]:
    """The body of one Ray task; the catalog is loaded once per Ray worker process."""
    global _RAY_CATALOG
    import torch

    torch.set_num_threads(1)
    from harness.catalog import load_catalog

    if _RAY_CATALOG is None:
        _RAY_CATALOG = load_catalog()
    spec = RunSpec.from_canonical(spec_json)
    suite = _RAY_CATALOG.suites.get(spec.suite)
    return execute(spec, suite, _RAY_CATALOG, cache_dir=Path(cache_dir), device=device, hook=_SinkHook(lambda *a: None), data_memo={}, compile_model=compile_model)


class RayExecutor:
    def __init__(self, options: ExecOptions, *, catalog: Any, suite: Suite, device: str, cache_dir: Path):
        self.options, self.catalog, self.suite, self.device, self.cache_dir = options, catalog, suite, device, cache_dir

    def run(self, specs: list[RunSpec], sink: Sink) -> None:
        try:
            import ray
        except ImportError:
            raise HarnessError("executor=ray needs Ray, which is not installed: pip install 'harness-bench[ray]' (or pip install ray)") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started_here = not ray.is_initialized()
        if started_here:
            try:
                if self.options.address:
                    ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # ConnectionError and Ray's own errors
                raise HarnessError(f"could not connect to the Ray cluster at {self.options.address or 'a new local cluster'}: {exc}") from None
        try:
            self._run(ray, specs, sink)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, specs: list[RunSpec], sink: Sink) -> None:
        # a GPU run asks Ray for a GPU, which also makes Ray set CUDA_VISIBLE_DEVICES for the task
        gpus = 1 if self.device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=self.options.retries)(_ray_execute)
        slots = self.options.jobs if self.options.jobs > 1 else max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending = list(specs)
        running: dict[Any, tuple[RunSpec, float]] = {}
        while pending or running:
            while pending and len(running) < slots:  # at most `slots` in flight, so submitted = running
                spec = pending.pop(0)
                if not sink.claim(spec):
                    continue
                running[remote.remote(spec.canonical(), str(self.cache_dir), self.device, self.options.compile_model)] = (spec, time.monotonic())
                sink.started(spec)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                spec, since = running.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # the task's worker died past its retries, or Ray failed
                    record = make_record(spec, self.suite, self.catalog, status="failed", error=f"Ray task failed: {type(exc).__name__}: {exc}", started=_now(), duration_s=time.monotonic() - since, device=self.device)
                sink.finished(spec, record)
            if self.options.timeout_s is not None:
                for ref, (spec, since) in list(running.items()):
                    if time.monotonic() - since > self.options.timeout_s:
                        ray.cancel(ref, force=True)
                        running.pop(ref)
                        error = f"the run exceeded its time limit of {self.options.timeout_s:g} s and was stopped"
                        sink.finished(spec, make_record(spec, self.suite, self.catalog, status="timeout", error=error, started=_now(), duration_s=time.monotonic() - since, device=self.device))


# ---------------------------------------------------------------------------------------------
# SLURM (submitit)
# ---------------------------------------------------------------------------------------------

SLURM_DEFAULT_TIME_MIN = 24 * 60  # submitit's own default (5 min) would end most runs; a grid's time limit overrides it
SLURM_POLL_S = 2.0


def _slurm_execute(spec_json: dict[str, Any], cache_dir: str, requested_device: str, compile_model: bool = False, threads: int | None = None) -> dict[str, Any]:
    """The body of one SLURM job: the device is resolved on the compute node (a login node without a
    GPU must not decide it), the catalog loaded in the job."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from harness.catalog import load_catalog
    from harness.engine import resolve_device

    catalog = load_catalog()
    spec = RunSpec.from_canonical(spec_json)
    suite = catalog.suites.get(spec.suite)
    return execute(spec, suite, catalog, cache_dir=Path(cache_dir), device=resolve_device(requested_device), hook=_SinkHook(lambda *a: None),
                   data_memo={}, compile_model=compile_model)


def check_slurm(params: dict[str, Any]) -> None:
    """Fail before anything trains when SLURM jobs cannot be submitted from here."""
    try:
        import submitit
    except ImportError:
        raise HarnessError("executor=slurm needs submitit, which is not installed: pip install 'harness-bench[slurm]' (or pip install submitit)") from None
    if params.get("cluster", "slurm") == "slurm" and submitit.SlurmExecutor.affinity() < 0:
        raise HarnessError("executor=slurm found no SLURM here (no srun/sbatch on the PATH); run on a SLURM login node, or slurm_cluster=local to run the jobs as local processes")


class SlurmExecutor:
    """One SLURM job per run, submitted in one job array (submitit); the coordinator polls the jobs
    and stores each record as it arrives. A job that ended without a result (node failure,
    preemption) is submitted again up to `retries` times; one stopped at its time limit is stored
    as `timeout`. No per-epoch progress comes back from the jobs.

    submitit keeps each job's submission, log and result in `slurm_folder` (pickles that the jobs
    and this coordinator write and read): keep that folder private to you."""

    def __init__(self, options: ExecOptions, *, catalog: Any, suite: Suite, device: str, cache_dir: Path):
        self.options, self.catalog, self.suite, self.device, self.cache_dir = options, catalog, suite, device, cache_dir
        self.params = dict(options.slurm)

    def _executor(self) -> Any:
        try:
            import submitit
        except ImportError:
            raise HarnessError("executor=slurm needs submitit, which is not installed: pip install 'harness-bench[slurm]' (or pip install submitit)") from None
        folder = Path(self.params.get("folder") or "harness-slurm")
        cluster = self.params.get("cluster", "slurm")  # never a silent fallback to local processes: that is slurm_cluster=local
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        except Exception as exc:  # e.g. cluster=slurm on a machine without sbatch
            raise HarnessError(f"cannot submit SLURM jobs ({exc}); run on a machine with SLURM (sbatch), or slurm_cluster=local to run the jobs here") from None
        time_min = self.params.get("time_min")
        if time_min is None:
            time_min = SLURM_DEFAULT_TIME_MIN if self.options.timeout_s is None else max(1, -(-int(self.options.timeout_s) // 60))
        settings: dict[str, Any] = {"name": "harness", "timeout_min": int(time_min), "tasks_per_node": 1, "nodes": 1}
        for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
            if self.params.get(key) is not None:
                settings[key] = self.params[key]
        for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
            if self.params.get(key) is not None:
                settings[f"slurm_{key}"] = self.params[key]
        executor.update_parameters(**settings)
        return executor

    def _submit(self, executor: Any, specs: list[RunSpec]) -> list[Any]:
        requested = self.params.get("device") or self.device
        threads = self.params.get("cpus_per_task")
        with executor.batch():
            jobs = [executor.submit(_slurm_execute, s.canonical(), str(self.cache_dir), requested, self.options.compile_model, threads) for s in specs]
        return jobs

    def run(self, specs: list[RunSpec], sink: Sink) -> None:
        claimed = [s for s in specs if sink.claim(s)]
        if not claimed:
            return
        executor = self._executor()
        attempts = {s.run_id: 1 for s in claimed}
        running = list(zip(self._submit(executor, claimed), claimed))
        since = {s.run_id: time.monotonic() for s in claimed}
        for spec in claimed:
            sink.started(spec)
        while running:
            still, again = [], []
            for job, spec in running:
                if not job.done():
                    still.append((job, spec))
                    continue
                try:
                    record = job.result()
                except Exception as exc:  # the job ended without a record: its process died, or SLURM stopped it
                    state = str(getattr(job, "state", "") or "")
                    text = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
                    if "TIMEOUT" in state.upper() or "timed out" in text.lower():
                        record = make_record(spec, self.suite, self.catalog, status="timeout", error=f"the SLURM job {job.job_id} reached its time limit ({state}): {text}",
                                             started=_now(), duration_s=time.monotonic() - since[spec.run_id], device=self.device)
                    elif attempts[spec.run_id] <= self.options.retries:
                        attempts[spec.run_id] += 1
                        again.append(spec)
                        continue
                    else:
                        record = make_record(spec, self.suite, self.catalog, status="failed",
                                             error=f"the SLURM job {job.job_id} ended without a result (state {state or 'unknown'}); tried {attempts[spec.run_id]} time(s): {text}",
                                             started=_now(), duration_s=time.monotonic() - since[spec.run_id], device=self.device)
                sink.finished(spec, record)
            if again:
                still += list(zip(self._submit(executor, again), again))
            running = still
            if running:
                time.sleep(SLURM_POLL_S if executor.cluster == "slurm" else 0.2)
