"""A progress display for a grid, built as an observer plugin on the run hooks.

On a terminal it redraws one status line (runs done / total, failures, the current run and its
epoch, ETA); elsewhere (CI logs, pipes) it prints one line per finished run.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from harness.hookspecs import hookimpl


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressDisplay:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.total = self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self.running: dict[str, tuple[str, float]] = {}  # run id -> (label, fraction of its epochs done)
        self.labels: dict[str, str] = {}

    def _eta(self) -> str:
        elapsed = time.perf_counter() - self.t0
        progress = self.done + sum(frac for _, frac in self.running.values())
        if progress <= 0:
            return "?"
        return _fmt_seconds(elapsed / progress * (self.total - progress))

    def _draw(self) -> None:
        if not self.live:
            return
        width = len(str(self.total))
        line = f"[{self.done:>{width}}/{self.total}]"
        if self.failed:
            line += f" {self.failed} failed"
        line += f" ETA {self._eta()}"
        for label, _ in self.running.values():
            line += f" | {label}"
        self.stream.write("\r\033[K" + line[:220])
        self.stream.flush()

    @hookimpl
    def harness_grid_start(self, specs: list[Any], cached: int) -> None:
        self.total, self.t0 = len(specs), time.perf_counter()
        if cached:
            self.stream.write(f"{cached} run(s) already stored, skipped\n")
        if self.total:
            self.stream.write(f"training {self.total} run(s)\n")
        self.stream.flush()

    @hookimpl
    def harness_run_start(self, spec: Any) -> None:
        self.labels[spec.run_id] = f"{spec.entry} {spec.variant_label} seed={spec.seed}"
        self.running[spec.run_id] = (self.labels[spec.run_id], 0.0)
        self._draw()

    @hookimpl
    def harness_run_progress(self, spec: Any, epoch: int, epochs: int, train_loss: float) -> None:
        self.running[spec.run_id] = (f"{self.labels.get(spec.run_id, spec.entry)} epoch {epoch}/{epochs} loss {train_loss:.3f}", epoch / max(1, epochs))
        self._draw()

    @hookimpl
    def harness_run_end(self, spec: Any, result: dict[str, Any]) -> None:
        self.done += 1
        self.running.pop(spec.run_id, None)
        self.failed += result["status"] != "ok"
        if not self.live or result["status"] != "ok":
            primary = result["metrics"].get(result["primary_metric"], {}).get("value")
            shown = f"{result['primary_metric']}={primary:.4f}" if isinstance(primary, float) else result["status"]
            prefix = "\r\033[K" if self.live else ""
            error = (result.get("error") or "").strip()
            detail = f" ({error.splitlines()[-1][:160]})" if result["status"] != "ok" and error else ""
            label = self.labels.get(spec.run_id, spec.entry)
            self.stream.write(f"{prefix}[{self.done}/{self.total}] {label} {result['status']} {shown} in {result['duration_s']:.1f}s{detail}\n")
        self._draw()

    @hookimpl
    def harness_grid_end(self, stored: int, failed: int) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        if self.total:
            self.stream.write(f"{stored} run(s) stored ({failed} not ok) in {_fmt_seconds(time.perf_counter() - self.t0)}\n")
        self.stream.flush()
