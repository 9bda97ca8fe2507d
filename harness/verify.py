"""`harness verify`: compare stored results with declared regression targets; non-zero exit on drift.

A targets file (JSON; `benchmarks/regression_targets.json` is the committed one) declares, per
board (suite, scale, variant, and optionally suite version, dataset, model and recipe id), the
primary metric's mean over given seeds for each entry and a tolerance:

    {"schema": 1, "about": "...", "boards": [
      {"suite": "long_tail", "scale": "tiny", "variant": "ratio=100,test_dist=uniform", "suite_version": "3",
       "dataset": "mnist5k", "model": "fast_cnn3", "recipe_id": "c95a6dae", "metric": "top1",
       "seeds": [0, 1, 2], "entries": {"ce": {"mean": 0.756, "tolerance": 0.026}, ...}}]}

An entry drifts when |stored mean − target mean| > tolerance, when a target seed has no ok run,
or when the board itself moved (no stored board, a different suite version, dataset, model,
recipe or primary metric). Entries stored but not declared are listed, not failed.

`write_targets` makes such a file from stored boards. Its tolerance for an entry is
K · √(2/n) · max(s, median s of the board) (at least `MIN_TOLERANCE`): the difference of two
independent means of n seeds has standard deviation √(2/n)·σ, so a re-run that moves like a new
draw of seeds (a different machine, thread count or library version) stays inside K = 3 of
them; the board's median s stands in for an entry whose few seeds happen to agree closely.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.leaderboard import Board

SCHEMA = 1
DEFAULT_TARGETS = Path("benchmarks") / "regression_targets.json"
K_SIGMA = 3.0
MIN_TOLERANCE = 0.005
REQUIRED_KEYS = ("suite", "scale", "variant")
OPTIONAL_KEYS = ("suite_version", "dataset", "model", "recipe_id")


@dataclass
class Check:
    board: str  # a short label of the target board
    entry: str
    target: float | None
    tolerance: float | None
    stored: float | None
    n: int  # seeds averaged
    problem: str | None  # None when within tolerance

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def delta(self) -> float | None:
        return None if self.stored is None or self.target is None else self.stored - self.target


@dataclass
class VerifyReport:
    checks: list[Check]
    uncovered: list[str]  # "board: entry" stored but not declared

    @property
    def drifted(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# ---------------------------------------------------------------------------------------------
# the targets file
# ---------------------------------------------------------------------------------------------


def load_targets(path: Path) -> list[dict[str, Any]]:
    """The target boards of a targets file, validated (a HarnessError says what is wrong where)."""
    if not path.is_file():
        raise HarnessError(f"no targets file {path}; give targets=FILE (e.g. {DEFAULT_TARGETS}, written by `harness verify write=FILE`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"the targets file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("boards"), list):
        raise HarnessError(f"the targets file {path} must be an object with \"schema\": {SCHEMA} and a list \"boards\"")
    for i, board in enumerate(data["boards"]):
        where = f"{path}: boards[{i}]"
        if not isinstance(board, dict):
            raise HarnessError(f"{where} must be an object")
        missing = [k for k in (*REQUIRED_KEYS, "entries") if k not in board]
        if missing:
            raise HarnessError(f"{where} lacks {', '.join(missing)}; each board needs {', '.join(REQUIRED_KEYS)} and entries")
        if "seeds" in board and not (isinstance(board["seeds"], list) and all(isinstance(s, int) for s in board["seeds"]) and board["seeds"]):
            raise HarnessError(f"{where}.seeds must be a non-empty list of integers, got {board['seeds']!r}")
        if not isinstance(board["entries"], dict) or not board["entries"]:
            raise HarnessError(f"{where}.entries must map entry names to {{\"mean\": number, \"tolerance\": number}}")
        for name, target in board["entries"].items():
            ok = isinstance(target, dict) and all(
                isinstance(target.get(k), (int, float)) and not isinstance(target.get(k), bool) and math.isfinite(target[k]) for k in ("mean", "tolerance")
            )
            if not ok or target["tolerance"] < 0:
                raise HarnessError(f"{where}.entries.{name} must be {{\"mean\": number, \"tolerance\": number >= 0}}, got {target!r}")
    return data["boards"]


def board_label(target: dict[str, Any]) -> str:
    return f"{target['suite']} {target['scale']} {target['variant']}"


def write_targets(boards: list[Board], path: Path, *, about: str | None = None) -> int:
    """Write a targets file for `boards` (see the module doc for the tolerance); return the entries written."""
    out, written = [], 0
    for b in boards:
        entries = [e for e in b.entries if len(e.seeds) >= 2]
        if not entries:
            continue
        seeds = sorted(set.intersection(*(set(e.seeds) for e in entries)))
        if len(seeds) < 2:
            raise HarnessError(f"{b.title}: fewer than 2 seeds shared by every entry; run more seeds before writing targets")
        spreads = {e.method: statistics.stdev([e.seeds[s] for s in seeds]) for e in entries}
        typical = statistics.median(spreads.values())
        factor = K_SIGMA * math.sqrt(2.0 / len(seeds))
        targets = {}
        for e in sorted(entries, key=lambda e: e.method):
            mean = math.fsum(e.seeds[s] for s in seeds) / len(seeds)
            tolerance = max(MIN_TOLERANCE, factor * max(spreads[e.method], typical))
            targets[e.method] = {"mean": round(mean, 6), "tolerance": round(tolerance, 4), "std": round(spreads[e.method], 6)}
        out.append({**{k: b.protocol[k] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS)}, "metric": entries[0].primary, "seeds": seeds, "entries": targets})
        written += len(targets)
    if not out:
        raise HarnessError("no stored board has an entry with 2 or more ok seeds to write targets from")
    rule = f"tolerance = max({MIN_TOLERANCE}, {K_SIGMA:g} * sqrt(2/n) * max(std, the board's median std)), n = seeds"
    data = {"schema": SCHEMA, "about": about or f"regression targets: mean of the primary metric over the listed seeds; {rule}", "tolerance_rule": rule, "boards": out}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return written


# ---------------------------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------------------------


def _protocol_difference(target: dict[str, Any], board: Board) -> list[str]:
    return [f"{k} {target[k]} → {board.protocol[k]}" for k in OPTIONAL_KEYS if k in target and str(target[k]) != str(board.protocol[k])]


def verify(boards: list[Board], targets: list[dict[str, Any]]) -> VerifyReport:
    """Check every target entry against the stored `boards` (see the module doc)."""
    checks: list[Check] = []
    covered: set[tuple[str, str]] = set()
    for target in targets:
        label = board_label(target)
        candidates = [b for b in boards if all(str(b.protocol[k]) == str(target[k]) for k in REQUIRED_KEYS)]
        matching = [b for b in candidates if not _protocol_difference(target, b)]
        board, problem = None, None
        if not candidates:
            problem = f"no stored runs for suite={target['suite']} scale={target['scale']} variant {target['variant']}"
        elif not matching:
            diffs = "; ".join(", ".join(_protocol_difference(target, b)) for b in candidates)
            problem = f"the protocol moved: {diffs}"
        elif len(matching) > 1:
            problem = f"{len(matching)} stored boards match; add suite_version, dataset, model and recipe_id to the target"
        else:
            board = matching[0]
            primary = board.entries[0].primary if board.entries else None
            if "metric" in target and primary is not None and target["metric"] != primary:
                problem, board = f"the primary metric moved: {target['metric']} → {primary}", None
        if board is None:
            checks.extend(Check(label, name, t["mean"], t["tolerance"], None, 0, problem) for name, t in sorted(target["entries"].items()))
            continue
        entries = {e.method: e for e in board.entries}
        for name in sorted(target["entries"]):
            t = target["entries"][name]
            covered.add((id(board), name))
            checks.append(_check_entry(label, name, t, entries.get(name), target.get("seeds")))
    uncovered = sorted(
        f"{b.title}: {e.method}" for b in boards for e in b.entries
        if (id(b), e.method) not in covered and any(id(b) == key for key, _ in covered)
    )
    return VerifyReport(checks, uncovered)


def _check_entry(label: str, name: str, target: dict[str, Any], entry: Any, seeds: list[int] | None) -> Check:
    mean, tolerance = float(target["mean"]), float(target["tolerance"])
    if entry is None or not entry.seeds:
        return Check(label, name, mean, tolerance, None, 0, "no ok run stored")
    wanted = seeds if seeds is not None else sorted(entry.seeds)
    missing = [s for s in wanted if s not in entry.seeds]
    values = [entry.seeds[s] for s in wanted if s in entry.seeds]
    stored = math.fsum(values) / len(values) if values else None
    if missing:
        return Check(label, name, mean, tolerance, stored, len(values), f"seed(s) {', '.join(map(str, missing))} have no ok run")
    # a relative epsilon keeps a value that sits exactly on the edge (as written to the file) inside
    drift = abs(stored - mean) > tolerance + 1e-9 * max(1.0, abs(mean))
    return Check(label, name, mean, tolerance, stored, len(values), f"moved by {stored - mean:+.4f} (tolerance ±{tolerance:.4f})" if drift else None)


def _signed(x: float | None) -> str:
    if x is None:
        return "-"
    text = f"{x:+.4f}"
    return "+0.0000" if float(text) == 0 else text


def render(report: VerifyReport) -> str:
    from tabulate import tabulate

    def row(c: Check) -> list[str]:
        f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        return [c.board, c.entry, f(c.target), "-" if c.tolerance is None else f"±{c.tolerance:.4f}", f(c.stored),
                _signed(c.delta), str(c.n), "ok" if c.ok else f"DRIFT: {c.problem}"]

    headers = ["board", "entry", "target", "tolerance", "stored", "Δ", "seeds", "status"]
    drifted = report.drifted
    parts = []
    within = [c for c in report.checks if c.ok]
    if within:
        parts.append(f"{len(within)} of {len(report.checks)} target(s) within tolerance:\n\n" + tabulate([row(c) for c in within], headers=headers, tablefmt="simple", disable_numparse=True))
    if drifted:  # last, so what moved is what a terminal shows
        parts.append(f"{len(drifted)} of {len(report.checks)} target(s) moved:\n\n" + tabulate([row(c) for c in drifted], headers=headers, tablefmt="simple", disable_numparse=True))
    if report.uncovered:
        parts.append("stored but without a target (not checked): " + ", ".join(report.uncovered))
    parts.append(f"verify: {'DRIFT' if drifted else 'ok'}: {len(report.checks) - len(drifted)} within tolerance, {len(drifted)} moved")
    return "\n\n".join(parts)
