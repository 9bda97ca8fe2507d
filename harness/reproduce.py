"""`harness reproduce SUITE`: the literature's headline numbers, trained again at `scale=paper`.

The numbers are data the suites (and methods) declare (`Suite.reported`, harness.reported): per
setting, the entries papers report, each number with its source (paper, table, row, the number as
printed) converted to the harness metric's units, and a tolerance. `reproduce` builds every
setting's grid with `harness.spec.build_grid` and trains it with `harness.runner.run_grid` (the
same progress display, resume and result store as `harness run`), then reads the stored metrics
and sets mean ± standard deviation over seeds beside the reported number.

A reported number is only comparable when the harness protocol is the paper's. Where it is not
(the OOD suite trains its source model on 6 of CIFAR-10's 10 classes and generates its
corruptions), the row says so and is not judged. `shrink=true` swaps the paper recipe for a tiny
one (8 x 8 digits, one epoch, a small CNN) that runs in seconds on a CPU: a test of the path,
marked "shrunken: not comparable".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.reported import Reported, collect_reported

SHRUNK_MARK = "shrunken: not comparable"


@dataclass(frozen=True)
class Headline:
    """One reported setting of a suite: its method entries, axes, numbers, and its shrunken recipe."""

    suite: str
    title: str
    methods: tuple[str, ...]
    axes: tuple[tuple[str, str], ...] = ()
    reported: tuple[Reported, ...] = ()
    shrunk: tuple[tuple[str, str], ...] = ()  # recipe overrides of shrink=true

    def overrides(self, *, seeds: int, shrink: bool) -> dict[str, str]:
        out = {"suite": self.suite, "scale": "paper", "method": ",".join(self.methods), "seeds": str(seeds), **dict(self.axes)}
        if shrink:
            out.update(self.shrunk)
        return out


# --- the settings: the published numbers the installed suites and methods declare ---------------

SHRUNK = (("dataset", "digits"), ("model", "fast_cnn"), ("epochs", "1"), ("batch_size", "64"), ("warmup_epochs", "0"))


def headlines(catalog: Any, suite: str) -> tuple[Headline, ...]:
    """The settings of `suite` with published numbers (harness.reported.collect_reported), one
    headline per (setting, scale, axes, data set and model), in declaration order."""
    if suite not in catalog.suites:
        from harness.errors import UnknownNameError

        raise UnknownNameError("suite", suite, catalog.suites.names())
    groups: dict[tuple, list[Reported]] = {}
    for r in collect_reported(catalog).get(suite, []):
        groups.setdefault((r.setting, r.scale, r.axes, r.recipe), []).append(r)
    out = []
    for (setting, scale, axes, recipe), numbers in groups.items():
        if scale != "paper":
            continue
        out.append(Headline(suite, setting, tuple(dict.fromkeys(r.entry for r in numbers)), axes=(*axes, *recipe), reported=tuple(numbers), shrunk=SHRUNK))
    if not out:
        have = [s.name for s in catalog.suites if any(r.scale == "paper" for r in collect_reported(catalog).get(s.name, []))]
        raise HarnessError(f"suite {suite!r} declares no published numbers at scale=paper; `harness reproduce` can run {', '.join(have) or 'none'}")
    return tuple(out)


# --- the comparison ---------------------------------------------------------------------------


@dataclass
class Row:
    headline: Headline
    reported: Reported
    values: list[float] = field(default_factory=list)  # the reproduced metric, one per ok run
    runs: int = 0  # runs of the entry in the grid
    not_ok: int = 0  # runs stored as failed, diverged or timed out
    reported_value: float | None = None  # the reported number, averaged over the shared corruptions where per-corruption
    shared: tuple[str, ...] = ()  # the corruptions both cover (per-corruption rows)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def difference(self) -> float | None:
        if self.mean is None or self.reported_value is None:
            return None
        return self.mean - self.reported_value

    def verdict(self, shrink: bool) -> str:
        if shrink:
            return "n/a (shrunken)"
        if self.reported_value is None:
            return "n/a (no reported number)"
        if not self.reported.comparable:
            return "n/a (protocol differs)"
        if self.mean is None or self.reported.tolerance is None:
            return "n/a (no ok run)" if self.mean is None else "n/a"
        return "yes" if abs(self.difference) <= self.reported.tolerance + 1e-12 else "no"


def _metric_of(record: dict[str, Any], reported: Reported) -> tuple[float | None, tuple[str, ...]]:
    """The record's value of the reported metric; for per-corruption numbers the mean over the
    corruptions both the run and the paper cover (and which those are)."""
    if reported.per_corruption:
        names = record.get("info", {}).get("corruptions") or []
        errors = record.get("series", {}).get("err_s5_per_corruption") or []
        theirs = dict(reported.per_corruption)
        shared = tuple(c for c in names if c in theirs)
        values = [v for c, v in zip(names, errors) if c in theirs and v is not None and math.isfinite(v)]
        if not shared or len(values) != len(shared):
            return None, shared
        return statistics.fmean(values), shared
    metric = record.get("metrics", {}).get(reported.metric)
    value = None if metric is None else metric.get("value")
    return (float(value) if value is not None and math.isfinite(value) else None), ()


def compare(headline: Headline, specs: list[Any], records: dict[str, dict[str, Any]]) -> list[Row]:
    """One row per reported number: the stored runs of its entry among `specs`, against the paper."""
    rows = []
    for reported in headline.reported:
        row = Row(headline, reported, reported_value=reported.value)
        for spec in specs:
            if spec.entry != reported.entry:
                continue
            row.runs += 1
            record = records.get(spec.run_id)
            if record is None or record.get("status") != "ok":
                row.not_ok += 1
                continue
            value, shared = _metric_of(record, reported)
            if value is not None:
                row.values.append(value)
                row.shared = shared
        if reported.per_corruption and row.shared:
            theirs = dict(reported.per_corruption)
            row.reported_value = statistics.fmean(theirs[c] for c in row.shared)
        rows.append(row)
    return rows


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    if signed and abs(x) < 5e-5:
        x = 0.0  # no "-0.0000"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def render(rows: list[Row], *, shrink: bool) -> str:
    """The reproduction table, its sources as numbered notes, and what each verdict means."""
    from tabulate import tabulate

    sources: list[str] = []
    notes: list[str] = []
    table = []
    for row in rows:
        r = row.reported
        note = r.source
        if row.shared:
            note += f"; compared over the {len(row.shared)} corruptions both cover"
        if note not in sources:
            sources.append(note)
        if r.note and r.note not in notes:
            notes.append(r.note)
        reproduced = "-" if row.mean is None else f"{row.mean:.4f} ± {row.std:.4f}" if row.std is not None else f"{row.mean:.4f}"
        runs = f"{len(row.values)}/{row.runs}" + (f" ({row.not_ok} not ok)" if row.not_ok else "")
        table.append([r.entry, r.metric, reproduced, runs, _fmt(row.reported_value), _fmt(row.difference, signed=True),
                      _fmt(r.tolerance), row.verdict(shrink), f"[{sources.index(note) + 1}]"])
    headers = ["method", "metric", "reproduced (mean ± std)", "seeds ok", "reported", "difference", "tolerance", "within", "source"]
    titles = list(dict.fromkeys(f"{row.headline.suite}: {row.headline.title}" for row in rows))
    lines = []
    if shrink:
        lines.append(f"*** {SHRUNK_MARK}: a tiny recipe (8 x 8 digits, 1 epoch, a small CNN) stands in for the paper's ***")
    lines += [*titles, "", tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True), ""]
    lines += [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


# --- running ------------------------------------------------------------------------------------


def check_data(catalog: Any, suite: str, specs: list[Any], cache_dir: Any, *, shrink: bool) -> None:
    """Load every data set the grid trains on before anything trains: one line if one cannot be reached."""
    from harness.data import LoadOptions, probe_hub
    from harness.errors import HubUnreachable

    hint = "" if shrink else "; `shrink=true` runs a tiny stand-in recipe offline (not comparable)"
    for name in dict.fromkeys(s.recipe_dict()["dataset"] for s in specs):
        try:
            catalog.dataset(name).load(LoadOptions(cache_dir=cache_dir / "datasets"))
        except HubUnreachable:
            reason = probe_hub() or "it did not answer"
            raise HarnessError(
                f"reproduce {suite}: the paper's data set {name} is not cached in {cache_dir / 'datasets'} and the Hugging Face hub "
                f"cannot be reached ({reason}); run once with the hub reachable{hint}"
            ) from None
        except HarnessError as exc:
            raise HarnessError(f"reproduce {suite}: the paper's data set {name} cannot be loaded: {exc}{hint}") from None


@dataclass
class Reproduction:
    rows: list[Row]
    problems: list[str]
    interrupted: bool


def reproduce(catalog: Any, suite: str, *, seeds: int, shrink: bool, store: Any, device: str, options: Any = None) -> Reproduction:
    """Build and train every headline setting of `suite` (skipping stored runs), then compare."""
    from harness.runner import default_cache_dir, run_grid
    from harness.spec import build_grid
    from harness.store import CorruptResult, read_result

    grids = []
    for headline in headlines(catalog, suite):
        suite_obj, specs = build_grid(catalog, headline.overrides(seeds=seeds, shrink=shrink))
        grids.append((headline, suite_obj, specs))
    for _, _, specs in grids:
        check_data(catalog, suite, specs, default_cache_dir(), shrink=shrink)
    problems: list[str] = []
    rows: list[Row] = []
    for headline, suite_obj, specs in grids:
        report = run_grid(catalog, suite_obj, specs, store, device=device, options=options)
        problems += report.problems
        if report.interrupted:
            return Reproduction(rows, problems, True)
        records = {}
        for spec in specs:
            path = store.runs_dir / spec.run_id / "result.json"
            try:
                records[spec.run_id] = read_result(path)
            except (CorruptResult, OSError, HarnessError):
                continue  # counted as not ok in the table
        rows += compare(headline, specs, records)
    return Reproduction(rows, problems, False)
