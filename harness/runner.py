"""The coordinator: skip stored runs, execute the rest, write result files, keep the database in step.

A run that raises is stored as `failed` with its traceback and the grid goes on; a run whose
loss stops being finite is stored as `diverged`. Ctrl-C stops after storing what finished;
running the same command again resumes, because completed runs are found by their run id.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, RunDiverged
from harness.spec import RunSpec
from harness.store import ResultStore
from harness.suite import RunContext, Suite


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
        method = catalog.methods.get(dict(m)["name"])
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


def execute(spec: RunSpec, suite: Suite, catalog: Any, *, cache_dir: Path, device: str, hook: Any, data_memo: dict[str, Any]) -> dict[str, Any]:
    """Run one spec and return its result record (never raises for a method's own failure)."""
    started, t0 = _now(), time.perf_counter()
    status, error, metrics, series, info = "ok", None, {}, {}, {}

    def report_epoch(epoch: int, epochs: int, loss: float) -> None:
        hook.harness_run_progress(spec=spec, epoch=epoch, epochs=epochs, train_loss=loss)

    ctx = RunContext(spec=spec, catalog=catalog, cache_dir=cache_dir, device=device, report_epoch=report_epoch, data_memo=data_memo)
    try:
        out = suite.run(ctx)
        metrics = {name: {"value": value, "higher_is_better": suite.metric(name).higher_is_better} for name, value in out.metrics.items()}
        series, info = out.series, out.info
    except RunDiverged as exc:
        status, error = "diverged", str(exc)
    except HarnessError:
        raise  # a user error (e.g. unreachable hub) stops the grid with its message
    except Exception:
        status, error = "failed", traceback.format_exc()
    return {
        "schema": 1,
        "run_id": spec.run_id,
        "spec": spec.canonical(),
        "entry": spec.entry,
        "variant": spec.variant_label,
        "primary_metric": suite.primary,
        "primary_higher_is_better": suite.metric(suite.primary).higher_is_better,
        "status": status,
        "error": error,
        "metrics": metrics,
        "series": series,
        "info": info,
        "started_at": started,
        "finished_at": _now(),
        "duration_s": time.perf_counter() - t0,
        "provenance": provenance(catalog, suite, spec, device),
    }


@dataclass
class GridReport:
    requested: int
    cached: int
    stored: int
    failed: int
    interrupted: bool
    problems: list[str]


def run_grid(catalog: Any, suite: Suite, specs: list[RunSpec], store: ResultStore, *, device: str) -> GridReport:
    hook = catalog.pm.hook
    # result files written by an earlier, interrupted invocation reach the database first
    sync = store.sync()
    done = store.done_ids()
    todo = [s for s in specs if s.run_id not in done]
    hook.harness_grid_start(specs=todo, cached=len(specs) - len(todo))
    stored = failed = 0
    interrupted = False
    data_memo: dict[str, Any] = {}
    cache_dir = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    try:
        for spec in todo:
            hook.harness_run_start(spec=spec)
            record = execute(spec, suite, catalog, cache_dir=cache_dir, device=device, hook=hook, data_memo=data_memo)
            store.write(record)  # from here on the run is safe, whatever happens next
            stored += 1
            failed += record["status"] != "ok"
            store.sync([record])
            hook.harness_run_end(spec=spec, result=record)
    except KeyboardInterrupt:
        interrupted = True
        store.sync()  # a result file written just before the interrupt still reaches the database
        print(f"\ninterrupted: {stored} run(s) of this grid stored; run the same command again to resume", file=sys.stderr)
    hook.harness_grid_end(stored=stored, failed=failed)
    return GridReport(len(specs), len(specs) - len(todo), stored, failed, interrupted, sync.problems)
