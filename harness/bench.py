"""`harness bench`: the speed and memory targets, measured side by side in one run.

Each benchmark times the harness and its reference alternately (interleaved, so drift in machine
load hits both), `repeats` times, and reports medians and their ratio against the target:

| name        | harness                                  | reference                                   | target        |
|-------------|------------------------------------------|---------------------------------------------|---------------|
| engine      | `harness.engine.train` on long-tail data | a minimal hand-written PyTorch loop          | ratio <= 1.05 |
| pipeline    | tensor-resident batches + batched crop/flip | DataLoader + per-sample torchvision transforms | >= 5x faster |
| sweep       | 12-run grid with jobs=2                  | the same grid with jobs=1                    | >= 1.7x faster|
| cache       | re-running a completed 30-run grid       | -                                            | < 1 s         |
| leaderboard | query + render over 1,000,000 metric rows | -                                           | < 0.5 s       |
| startup     | `harness --help`, `harness list suites`  | -                                            | --help < 0.3 s|
| store       | `harness collect` of N result files      | `harness list suites` (loading the plugins)  | < 5 s, < 300 MB|
| store       | `harness run` in a folder of N runs, until training starts | the same in an empty folder | < 3 s |
| store       | `harness publish` of N runs, one with a 10^6-point series | -                        | pages < 1 MB  |

The store rows run whole commands in fresh processes and report their peak memory (the sum of the
peak resident sets of the command's processes, sampled from /proc); N is `runs=N` (default `STORE_RUNS`; the targets are stated for 20,000).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = ("engine", "pipeline", "sweep", "cache", "leaderboard", "startup", "store")
STORE_RUNS = 2000  # N of the store benchmarks by default: quick; `runs=20000` measures the stated targets


@dataclass
class Row:
    name: str
    what: str
    harness_s: float
    reference_s: float | None
    ratio_text: str
    target: str
    met: bool
    peak_mb: float | None = None  # the harness command's peak resident memory, where measured


def _median_times(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Run the callables alternately `repeats` times; median seconds of each."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _harness_cmd(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "harness", *args], check=True, capture_output=True, env=env)


# ---------------------------------------------------------------------------------------------
# engine overhead
# ---------------------------------------------------------------------------------------------


def bench_engine(repeats: int) -> Row:
    import torch

    from harness.data import LoadOptions, load_mnist5k, long_tail_indices
    from harness.engine import Normalizer, train
    from harness.kinds.loss import Loss
    from harness.models import FastCNN

    data = load_mnist5k(LoadOptions(cache_dir=Path(tempfile.gettempdir())))
    keep = long_tail_indices(data.train_y, 10, 100)
    x, y = data.train_x[keep], data.train_y[keep]
    recipe = {"epochs": 5, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 1}
    normalizer = Normalizer.fit(x)

    class CE(Loss):
        def forward(self, logits, targets, index):
            return torch.nn.functional.cross_entropy(logits, targets)

    def with_harness() -> None:
        torch.manual_seed(0)
        train(FastCNN(10, 1, 28), x, y, recipe=recipe, parts=[CE()], normalizer=normalizer, seed=0, device="cpu")

    def by_hand() -> None:  # the same work, written the shortest way
        torch.manual_seed(0)
        model = FastCNN(10, 1, 28)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        g = torch.Generator().manual_seed(0)
        steps = recipe["epochs"] * -(-len(y) // 128)
        xf = (x.float() / 255 - normalizer.mean) / normalizer.std
        step = 0
        for _ in range(recipe["epochs"]):
            model.train()
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), 128):
                idx = perm[i : i + 128]
                for group in opt.param_groups:
                    group["lr"] = 0.05 * min((step + 1) / 8, (steps - step) / max(1, steps - 8))
                loss = torch.nn.functional.cross_entropy(model(xf[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1

    with_harness()  # warm-up
    h, ref = _median_times([with_harness, by_hand], repeats)
    return Row("engine", "train 5 epochs, long-tail MNIST (988 images)", h, ref, f"{h / ref:.3f}", "ratio <= 1.05", h / ref <= 1.05)


# ---------------------------------------------------------------------------------------------
# input pipeline
# ---------------------------------------------------------------------------------------------


def bench_pipeline(repeats: int) -> Row:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    from harness.data import LoadOptions, load_mnist5k
    from harness.engine import Normalizer, crop_flip

    data = load_mnist5k(LoadOptions(cache_dir=Path(tempfile.gettempdir())))
    x, y = data.train_x, data.train_y
    normalizer = Normalizer.fit(x)
    mean, std = float(normalizer.mean.flatten()[0]), float(normalizer.std.flatten()[0])
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.RandomCrop(28, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(), v2.Normalize([mean], [std])])

    class PerSample(Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return transform(x[i]), y[i]

    def tensor_resident() -> None:
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = perm[i : i + 128]
            crop_flip(normalizer(x[idx]), g)
            y[idx]

    def dataloader() -> None:
        for _xb, _yb in DataLoader(PerSample(), batch_size=128, shuffle=True, num_workers=0):
            pass

    h, ref = _median_times([tensor_resident, dataloader], repeats)
    return Row("pipeline", "one epoch of 4000 images: normalise + crop + flip", h, ref, f"{ref / h:.1f}x faster", ">= 5x faster", ref / h >= 5)


# ---------------------------------------------------------------------------------------------
# sweep scaling, cache, start-up (whole commands)
# ---------------------------------------------------------------------------------------------


def bench_sweep(repeats: int) -> Row:
    grid = ("run", "suite=long_tail", "method=ce,focal,balanced_softmax,logit_adjustment", "seeds=3", "epochs=4")
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    counter = iter(range(10**6))

    def run(jobs: int) -> Callable[[], None]:
        return lambda: _harness_cmd(*grid, f"jobs={jobs}", f"results={tmp / str(next(counter))}")

    try:
        two, one = _median_times([run(2), run(1)], max(1, repeats // 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cores = os.cpu_count()
    return Row("sweep", f"12-run grid, jobs=2 vs jobs=1 ({cores} cores)", two, one, f"{one / two:.2f}x faster", ">= 1.7x faster", one / two >= 1.7)


def bench_cache(repeats: int) -> Row:
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    grid = ("run", "suite=long_tail", "method=ce,focal,balanced_softmax,logit_adjustment,label_smoothing", "seeds=3", "ratio=10,100", "epochs=1", f"results={tmp}")
    try:
        _harness_cmd(*grid, "jobs=2")
        (h,) = _median_times([lambda: _harness_cmd(*grid)], repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Row("cache", "re-run a completed 30-run grid (whole command)", h, None, "-", "< 1 s", h < 1)


def bench_startup(repeats: int) -> list[Row]:
    help_s, list_s = _median_times([lambda: _harness_cmd("--help"), lambda: _harness_cmd("list", "suites")], repeats)
    return [
        Row("startup", "harness --help", help_s, None, "-", "< 0.3 s", help_s < 0.3),
        Row("startup", "harness list suites", list_s, None, "-", "(reported)", True),
    ]


# ---------------------------------------------------------------------------------------------
# leaderboard at scale
# ---------------------------------------------------------------------------------------------


def _synthetic_store(root: Path, metric_rows: int) -> None:
    """A results database with `metric_rows` metric rows: 5 metrics per run, 10 seeds per entry."""
    import numpy as np
    import pandas as pd

    from harness.store import ResultStore

    store = ResultStore(root)
    con = store.connect()
    runs = metric_rows // 5
    rng = np.random.default_rng(0)
    ids = [f"{i:016x}" for i in range(runs)]
    entries = [f"method_{i // 10 % 2000}" for i in range(runs)]
    variants = [f"ratio={(10, 50, 100, 200)[i // 20000 % 4]}" for i in range(runs)]
    run_df = pd.DataFrame({
        "run_id": ids, "suite": "long_tail", "suite_version": "1", "scale": "tiny", "variant": variants, "entry": entries,
        "seed": [i % 10 for i in range(runs)], "dataset": "mnist5k", "model": "small_cnn", "recipe_id": "bench000",
        "primary_metric": "top1", "primary_higher_is_better": True, "status": "ok", "error": None,
        "started_at": pd.Timestamp("2026-01-01"), "finished_at": pd.Timestamp("2026-01-01"), "duration_s": 1.0,
        "spec": "{}", "provenance": "{}", "info": "{}", "record_digest": ids, "baseline": "method_0",
    })
    names = ["top1", "many_shot", "medium_shot", "few_shot", "ece"]
    metric_df = pd.DataFrame({
        "run_id": np.repeat(ids, 5), "name": names * runs, "value": rng.random(runs * 5),
        "higher_is_better": [n != "ece" for n in names] * runs, "position": list(range(5)) * runs,
    })
    con.register("r", run_df)
    con.register("m", metric_df)
    con.execute("INSERT INTO runs SELECT * FROM r")
    con.execute("INSERT INTO metrics SELECT * FROM m")
    con.close()


def bench_leaderboard(repeats: int) -> Row:
    from harness.leaderboard import build_boards, render
    from harness.store import ResultStore

    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    try:
        _synthetic_store(tmp, 1_000_000)
        store = ResultStore(tmp)

        def query_and_render() -> None:
            con = store.connect(read_only=True)
            try:
                render(build_boards(con, suite="long_tail"), "table")
            finally:
                con.close()

        (h,) = _median_times([query_and_render], repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Row("leaderboard", "query + render, 1,000,000 metric rows (2,000 entries x 4 variants)", h, None, "-", "< 0.5 s", h < 0.5)


# ---------------------------------------------------------------------------------------------
# the store at scale (whole commands)
# ---------------------------------------------------------------------------------------------

LONG_SERIES = 1_000_000  # points of the one long series the publish benchmark stores
MAX_PAGE_BYTES = 1_000_000


def _stored_runs(root: Path, runs: range, *, long_series: bool = False) -> None:
    """Store valid runs numbered `runs` in a results folder (10 entries x seeds of the installed
    long_tail card) and sync its database; with `long_series`, each stores a 10^6-point series."""
    from harness.catalog import load_catalog
    from harness.store import BATCH, ResultStore
    from harness.testing import fake_record

    version = str(load_catalog().suites.get("long_tail").version)  # records of the installed card, as a user's would be
    entries = ("ce", "focal", "ldam", "balanced_softmax", "logit_adjustment", "ce+mixup", "focal+mixup", "ldam+cutmix", "ce+randaugment", "ce+cutout")
    store = ResultStore(root)
    for start in range(runs.start, runs.stop, BATCH):
        records = []
        for i in range(start, min(runs.stop, start + BATCH)):
            r = fake_record(entry=entries[i % 10], seed=i // 10, value=(i % 997) / 997, extra={"ece": (i % 13) / 100}, version=version,
                            variant={"ratio": 100, "test_dist": "uniform"})
            r["metrics"]["ece"]["higher_is_better"] = False  # as the card says, with its baseline: a collect stores them unchanged
            r["baseline"] = "ce"
            r["series"] = {"test_top1_per_epoch": [(i % 997) / 997 * (e + 1) / 10 for e in range(10)]}
            if long_series:
                r["series"]["step_loss"] = [1.0 / (1 + k) for k in range(LONG_SERIES)]
            records.append((r, None))
        store.write_many(records)
        store.sync(store.written_records())


def _descendants(pid: int) -> list[int]:
    """A process and every process under it (Linux /proc; [pid] elsewhere)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return found


def _peak_kb(pid: int) -> int | None:
    """The peak resident memory (kB) of a process's own address space so far (VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), None)
    except OSError:
        return None


class _TreeMemory:
    """Samples, every 20 ms until stopped, the peak resident memory of each process of a command's
    tree. Their sum bounds the command's peak from above. (A process's own `ru_maxrss` cannot be
    used: Linux carries the parent's resident size across fork and exec into it, so a command
    started by this benchmark process would be charged this process's memory.)"""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peaks, self.done = pid, {}, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.is_set():
            for p in _descendants(self.pid):
                kb = _peak_kb(p)
                if kb is not None:
                    self.peaks[p] = max(self.peaks.get(p, 0), kb)
            self.done.wait(0.02)

    def stop(self) -> float | None:
        """MB: the sum of the sampled per-process peaks (None where /proc is not there)."""
        self.done.set()
        self.thread.join()
        return sum(self.peaks.values()) / 1024 if self.peaks else None


def _timed_command(args: list[str], *, until: str | None = None) -> tuple[float, float]:
    """(seconds, peak resident MB) of `harness ARGS` in a fresh process: the MB are the sum of the
    peaks of its processes (it and those it starts; see _TreeMemory). With `until`: the seconds
    until a line of its output contains that text; the command is then interrupted (Ctrl-C)."""
    import signal

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    memory = _TreeMemory(proc.pid)
    seconds, tail = None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail[-20:], line]
        if until is not None and until in line:
            seconds = time.perf_counter() - t0
            proc.send_signal(signal.SIGINT)
            break
    proc.stdout.read()
    sampled = memory.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if seconds is None:
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or until is not None:
            raise RuntimeError(f"`harness {' '.join(args)}` {'exited' if until is None else f'ended before printing {until!r}'} "
                               f"(status {proc.returncode}):\n{''.join(tail)}")
    return seconds, sampled if sampled is not None else usage.ru_maxrss / 1024  # ru_maxrss (kB on Linux) where /proc is missing


def _median_commands(commands: list[Callable[[], tuple[float, float]]], repeats: int) -> list[tuple[float, float]]:
    """Commands run alternately `repeats` times: (median seconds, largest peak MB) of each."""
    seen: list[list[tuple[float, float]]] = [[] for _ in commands]
    for _ in range(repeats):
        for i, command in enumerate(commands):
            seen[i].append(command())
    return [(statistics.median(s for s, _ in runs), max(m for _, m in runs)) for runs in seen]


def bench_store(repeats: int, n: int = STORE_RUNS) -> list[Row]:
    """`harness collect` of n result files, `harness run` starting in a folder of n runs, and
    `harness publish` of n runs (one with a 10^6-point series): whole commands, fresh processes."""
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    repeats = max(1, repeats // 2)  # whole commands over thousands of files: fewer repeats
    counter = iter(range(10**6))
    try:
        source = tmp / "stored"
        _stored_runs(source, range(n))
        collect_fresh = lambda: _timed_command(["collect", str(source), f"results={tmp / f'target{next(counter)}'}"])  # noqa: E731
        plugins_only = lambda: _timed_command(["list", "suites"])  # noqa: E731
        plugins_only()  # as any `harness run` does, it leaves the suite cards' memo that collect reads instead of loading plugins
        (collect_s, collect_mb), (floor_s, _) = _median_commands([collect_fresh, plugins_only], repeats)
        # a seed no repeat used before: a run that finished before the interrupt reached it is stored, and would not train again
        grid = lambda: ["run", "suite=long_tail", "method=ce", f"seed={10**6 + next(counter)}", "epochs=1"]  # noqa: E731
        empty = tmp / "empty"
        in_store = lambda: _timed_command([*grid(), f"results={source}"], until="training ")  # noqa: E731
        in_empty = lambda: _timed_command([*grid(), f"results={empty / str(next(counter))}"], until="training ")  # noqa: E731
        (start_s, start_mb), (empty_s, _) = _median_commands([in_store, in_empty], repeats)
        _stored_runs(source, range(n, n + 1), long_series=True)
        site = tmp / "site"
        (publish_s, publish_mb), = _median_commands([lambda: _timed_command(["publish", f"results={source}", f"out={site}"])], 1)
        largest, largest_page = max((p.stat().st_size, p.name.split("-")[0]) for p in site.glob("*.html"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        Row("store", f"harness collect of {n:,} result files, suite cards from their memo (reference: loading the plugins)", collect_s, floor_s, f"{collect_s / floor_s:.2f}",
            "< 5 s, < 300 MB", collect_s < 5 and collect_mb < 300, collect_mb),
        Row("store", f"harness run in a folder of {n:,} runs, until training starts (reference: an empty folder)", start_s, empty_s,
            f"{start_s / empty_s:.2f}", "< 3 s", start_s < 3, start_mb),
        Row("store", f"harness publish of {n + 1:,} runs, one with a {LONG_SERIES:,}-point series (largest page {largest / 1e3:,.0f} kB, {'an' if largest_page[0] in 'aeiou' else 'a'} {largest_page} page)", publish_s, None, "-",
            f"pages < {MAX_PAGE_BYTES / 1e6:g} MB", largest < MAX_PAGE_BYTES, publish_mb),
    ]


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def run_benchmarks(only: list[str], repeats: int, progress: Callable[[str], None], *, store_runs: int = STORE_RUNS) -> list[Row]:
    rows: list[Row] = []
    for name in only:
        progress(f"bench {name} ...")
        if name == "store":
            rows.extend(bench_store(repeats, store_runs))
            continue
        result = {"engine": bench_engine, "pipeline": bench_pipeline, "sweep": bench_sweep, "cache": bench_cache, "leaderboard": bench_leaderboard, "startup": bench_startup}[name](repeats)
        rows.extend(result if isinstance(result, list) else [result])
    return rows


def render_rows(rows: list[Row], fmt: str = "table") -> str:
    from tabulate import tabulate

    table = [
        [r.name, r.what, f"{r.harness_s:.3f}", "-" if r.reference_s is None else f"{r.reference_s:.3f}", r.ratio_text,
         "-" if r.peak_mb is None else f"{r.peak_mb:.0f}", r.target, "yes" if r.met else "NO"]
        for r in rows
    ]
    headers = ["benchmark", "what", "harness (s, median)", "reference (s, median)", "ratio", "peak MB", "target", "met"]
    return tabulate(table, headers=headers, tablefmt="github" if fmt == "markdown" else "simple")


def machine_description() -> str:
    import platform

    import torch

    return f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} (threads {torch.get_num_threads()})"
