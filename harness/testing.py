"""Helpers for tests of harness and of plugin packages: offline settings, CLI calls, records."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def offline_environ(tmp: Path) -> dict[str, str]:
    """Variables that keep every Hugging Face call off the network (a hub call would hang ~30 s)."""
    return {**OFFLINE_ENV, "HF_HOME": str(tmp / "hf-home"), "HARNESS_CACHE": str(tmp / "harness-cache")}


@contextlib.contextmanager
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


def run_cli(*args: str) -> tuple[int, str, str]:
    """Call `harness ARGS...` in this process; return (exit code, stdout, stderr)."""
    from harness.cli import main

    with captured() as (out, err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def fake_record(
    *, entry: str = "ce", seed: int = 0, value: float | None = 0.5, status: str = "ok", variant: dict[str, Any] | None = None,
    suite: str = "long_tail", version: str = "1", scale: str = "tiny", higher_is_better: bool = True, extra: dict[str, float] | None = None,
    changed: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A valid result record for store and leaderboard tests (its run id is its spec's hash).
    `changed` maps a method of the entry to its non-default hyper-parameters (the entry becomes `focal[gamma=1.5]`)."""
    from harness.spec import RunSpec

    changed = changed or {}
    methods = [{"name": name, "kind": "loss" if i == 0 else "augmentation", "version": "1", "params": dict(changed.get(name, {})), "changed": dict(changed.get(name, {}))}
               for i, name in enumerate(entry.split("+"))]
    spec = RunSpec.from_canonical(
        {"suite": suite, "suite_version": version, "scale": scale, "variant": variant or {"ratio": 100}, "methods": methods, "seed": seed, "recipe": {"dataset": "mnist5k", "model": "small_cnn", "epochs": 2}}
    )
    metrics = {} if status != "ok" else {"top1": {"value": value, "higher_is_better": higher_is_better}, **{k: {"value": v, "higher_is_better": True} for k, v in (extra or {}).items()}}
    return {
        "schema": 1, "run_id": spec.run_id, "spec": spec.canonical(), "entry": spec.entry, "variant": spec.variant_label,
        "primary_metric": "top1", "primary_higher_is_better": higher_is_better, "status": status,
        "error": None if status == "ok" else "Traceback: boom", "metrics": metrics, "series": {"curve": [0.1, 0.2]},
        "info": {}, "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:00:01", "duration_s": 1.0,
        "provenance": {"harness_version": "test", "plugins": {}, "python": "3", "torch": "x", "device": "cpu", "hostname": os.uname().nodename},
    }
