"""The coordinator: skip stored runs, execute the rest, write result files, keep the database in step.

A run that raises is stored as `failed` with its traceback and the grid goes on; a run whose
loss stops being finite is stored as `diverged`. Ctrl-C stops after storing what finished;
running the same command again resumes, because completed runs are found by their run id.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, RunDiverged
from harness.predictions import PAYLOAD_KEY as PREDICTIONS_PAYLOAD
from harness.predictions import encode as encode_predictions
from harness.spec import RunSpec
from harness.store import CLAIM_TTL_OTHER_HOST_S, ClaimHolder, ResultStore
from harness.suite import RunContext, Suite


@dataclass(frozen=True)
class ExecOptions:
    """How a grid is executed: `jobs` local worker processes (or Ray tasks), a per-run time
    limit, and how often a run whose worker process died is tried again."""

    executor: str = "local"  # local | ray | slurm
    jobs: int = 1
    timeout_s: float | None = None
    retries: int = 1
    address: str | None = None  # Ray cluster address (auto, ray://host:port); None starts a local cluster
    compile_model: bool = False  # torch.compile the training forward pass
    threads: int | None = None  # torch threads per run; None: sized per run (harness.cpu.thread_budget)
    # executor=slurm: submitit's parameters (partition, time_min, gpus_per_node, cpus_per_task, mem_gb, account,
    # qos, constraint, array_parallelism, folder, cluster, device); see harness.executors.SlurmExecutor
    slurm: tuple[tuple[str, Any], ...] = ()


@dataclass
class Sink:
    """Where an executor reports: a run started, progressed an epoch, finished (with its record)."""

    started: Callable[[RunSpec], None]
    progress: Callable[[RunSpec, int, int, float], None]
    finished: Callable[[RunSpec, dict[str, Any]], None]
    claim: Callable[[RunSpec], bool] = lambda spec: True  # False: another process trains it; skip
    assigned: Callable[[RunSpec, int], Any] = lambda spec, pid: None  # a worker process took the run


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


@cache
def _git_commit(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(catalog: Any, suite: Suite, spec: RunSpec, device: str) -> dict[str, Any]:
    import torch

    import harness

    plugins = {suite.plugin: suite.plugin_version}
    for m in spec.methods:
        method = catalog.methods.get(m.name)
        plugins[method.plugin] = method.plugin_version
    recipe = spec.recipe_dict()
    for obj in (catalog.dataset(recipe["dataset"]), catalog.model(recipe["model"])):
        plugins[obj.plugin] = obj.plugin_version
    return {
        "harness_version": harness.__version__,
        "harness_git_commit": _git_commit(str(Path(harness.__file__).resolve().parent)),
        "plugins": dict(sorted(plugins.items())),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "hostname": socket.gethostname(),
    }


def make_record(spec: RunSpec, suite: Suite, catalog: Any, *, status: str, error: str | None, started: str, duration_s: float, device: str,
                metrics: dict[str, float] | None = None, series: dict[str, list[float]] | None = None, info: dict[str, Any] | None = None,
                predictions: tuple[dict[str, Any], bytes] | None = None) -> dict[str, Any]:
    """The result record of a run, in the schema `harness.store` validates. `predictions`: the
    (summary, file bytes) of `harness.predictions.encode`; the bytes travel with the record under
    `PREDICTIONS_PAYLOAD` until the coordinator writes them beside the result file."""
    extra = {} if predictions is None else {"predictions": predictions[0], PREDICTIONS_PAYLOAD: predictions[1]}
    return {
        **extra,
        "schema": 1,
        "run_id": spec.run_id,
        "spec": spec.canonical(),
        "entry": spec.entry,
        "variant": spec.variant_label,
        "primary_metric": suite.primary,
        "primary_higher_is_better": suite.metric(suite.primary).higher_is_better,
        "baseline": suite.baseline,
        "status": status,
        "error": error,
        "metrics": {name: {"value": value, "higher_is_better": suite.metric(name).higher_is_better} for name, value in (metrics or {}).items()},
        "series": series or {},
        "info": info or {},
        "started_at": started,
        "finished_at": _now(),
        "duration_s": duration_s,
        "provenance": provenance(catalog, suite, spec, device),
    }


def execute(spec: RunSpec, suite: Suite, catalog: Any, *, cache_dir: Path, device: str, hook: Any, data_memo: dict[str, Any], compile_model: bool = False) -> dict[str, Any]:
    """Run one spec and return its result record (never raises for a method's own failure)."""
    started, t0 = _now(), time.perf_counter()

    def report_epoch(epoch: int, epochs: int, loss: float) -> None:
        hook.harness_run_progress(spec=spec, epoch=epoch, epochs=epochs, train_loss=loss)

    ctx = RunContext(spec=spec, catalog=catalog, cache_dir=cache_dir, device=device, report_epoch=report_epoch, data_memo=data_memo, compile_model=compile_model)
    try:
        out = suite.run(ctx)
    except RunDiverged as exc:
        return make_record(spec, suite, catalog, status="diverged", error=str(exc), started=started, duration_s=time.perf_counter() - t0, device=device)
    except HarnessError:
        raise  # a user error (e.g. unreachable hub) stops the grid with its message
    except Exception:
        return make_record(spec, suite, catalog, status="failed", error=traceback.format_exc(), started=started, duration_s=time.perf_counter() - t0, device=device)
    try:  # a suite's malformed predictions fail its run, like any other bug in the suite
        predictions = encode_predictions(out.predictions) if out.predictions else None
    except Exception:
        return make_record(spec, suite, catalog, status="failed", error=traceback.format_exc(), started=started, duration_s=time.perf_counter() - t0, device=device)
    return make_record(spec, suite, catalog, status="ok", error=None, started=started, duration_s=time.perf_counter() - t0, device=device,
                       metrics=out.metrics, series=out.series, info=out.info, predictions=predictions)


@dataclass
class GridReport:
    requested: int
    cached: int
    stored: int
    failed: int
    interrupted: bool
    problems: list[str]


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while results are stored, then raise it: without this, DuckDB turns a
    SIGINT that lands mid-query into its own exception and the store is left half-updated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


WAIT_POLL_S = 0.5


def wait_for_other_holders(store: ResultStore, held: dict[str, RunSpec], *, say: Callable[[str], None] | None = None) -> None:
    """Wait while live processes of other commands (or hosts) hold these runs' claims and their
    results have not appeared. Says who holds them (process, host, since when) and the way out:
    a claim whose process is gone for good (e.g. its machine went down) can be deleted, and this
    command then takes the run over. Said again whenever the set of holding processes changes."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    told: frozenset[tuple[int | None, str]] = frozenset()
    while True:
        holders = {}
        for rid in held:
            holder = None if store.has_result(rid) else store.claim_holder(rid)
            if holder is not None:
                holders[rid] = holder
        if not holders:
            return
        current = frozenset((h.pid, h.host) for h in holders.values())
        if current != told:
            told = current
            say(_holders_text(store, held, holders))
        time.sleep(WAIT_POLL_S)


def _holders_text(store: ResultStore, held: dict[str, RunSpec], holders: dict[str, ClaimHolder]) -> str:
    by_holder: dict[tuple[int | None, str], tuple[ClaimHolder, list[str]]] = {}
    for rid, holder in holders.items():
        by_holder.setdefault((holder.pid, holder.host), (holder, []))[1].append(rid)
    lines = [f"waiting for {len(holders)} run(s) that another harness process holds:"]
    for holder, rids in by_holder.values():
        names = ", ".join(f"{held[r].entry} seed={held[r].seed}" for r in rids[:4]) + (f" and {len(rids) - 4} more" if len(rids) > 4 else "")
        lines.append(f"  {holder.describe()}: {names}")
        if len(rids) <= 5:
            files = " ".join(str(store.claim_file(r)) for r in rids)
        else:  # every claim file of that process
            files = f"$(grep -l '\"pid\": {holder.pid}, \"host\": \"{holder.host}\"' {store.runs_dir}/*/.claim)"
        expiry = "" if holder.host == socket.gethostname() else f"; otherwise its claims expire {CLAIM_TTL_OTHER_HOST_S // 3600} h after they were made"
        lines.append(f"  if that process is gone for good (e.g. its machine went down), delete its claim file(s) and this command takes the run(s) over{expiry}: rm {files}")
    return "\n".join(lines)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def run_grid(catalog: Any, suite: Suite, specs: list[RunSpec], store: ResultStore, *, device: str, options: ExecOptions | None = None) -> GridReport:
    """Train the runs of `specs` that are not stored yet and store each result as it arrives.

    A run is claimed just before it starts; one that another harness process holds is left to
    it, and this command waits for its result, so two commands on one results folder share the
    work and store every run exactly once.
    """
    from harness.executors import make_executor

    options = options or ExecOptions()
    hook = catalog.pm.hook
    # result files written by an earlier, interrupted invocation reach the database first
    sync = store.sync()
    done = sync.done_ids()  # from the sync's own listing: a folder of thousands of runs is listed once
    todo = [s for s in specs if s.run_id not in done]
    cached = len(specs) - len(todo)
    hook.harness_grid_start(specs=todo, cached=cached)
    counts = {"stored": 0, "failed": 0}
    held_elsewhere: dict[str, RunSpec] = {}
    mine: set[str] = set()

    grid_started = time.time()

    def claim(spec: RunSpec) -> bool:
        if spec.run_id in mine:  # a retry of our own run
            return True
        if not store.claim(spec.run_id):
            held_elsewhere[spec.run_id] = spec
            return False
        if store.result_mtime(spec.run_id) >= grid_started:  # another process stored it meanwhile
            store.release(spec.run_id)
            return False
        mine.add(spec.run_id)
        return True

    def finished(spec: RunSpec, record: dict[str, Any]) -> None:
        payload = record.pop(PREDICTIONS_PAYLOAD, None)  # written beside the result file, not into it
        with _ctrl_c_deferred():  # a result file and its database row are stored together
            store.write(record, predictions=payload)
            store.release(spec.run_id)
            counts["stored"] += 1
            counts["failed"] += record["status"] != "ok"
            store.sync([record])
        hook.harness_run_end(spec=spec, result=record)

    sink = Sink(
        started=lambda spec: hook.harness_run_start(spec=spec),
        progress=lambda spec, e, n, loss: hook.harness_run_progress(spec=spec, epoch=e, epochs=n, train_loss=loss),
        finished=finished,
        claim=claim,
        assigned=lambda spec, pid: store.claim(spec.run_id, worker_pid=pid, update=True),
    )
    interrupted = False
    executor = make_executor(options, catalog=catalog, suite=suite, device=device, cache_dir=default_cache_dir())
    try:
        executor.run(todo, sink)
        for _ in range(3):  # runs held by another command: wait for them, take over any it abandons
            if not held_elsewhere:
                break
            wait_for_other_holders(store, held_elsewhere)
            abandoned = [s for rid, s in held_elsewhere.items() if not store.has_result(rid)]
            held_elsewhere.clear()
            executor.run(abandoned, sink)
        store.sync()  # what the other process stored reaches this command's view as well
    except KeyboardInterrupt:
        interrupted = True
        with _ctrl_c_deferred():
            store.sync()  # a result file written just before the interrupt still reaches the database
        print(f"\ninterrupted: {counts['stored']} run(s) of this grid stored; run the same command again to resume", file=sys.stderr)
    finally:
        for rid in mine:
            store.release(rid)
    hook.harness_grid_end(stored=counts["stored"], failed=counts["failed"])
    return GridReport(len(specs), cached, counts["stored"], counts["failed"], interrupted, sync.problems)
