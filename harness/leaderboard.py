"""Leaderboards: SQL aggregation over stored runs, ranking, and rendering (table, markdown, csv, json).

A leaderboard table holds runs of one protocol only: the same suite, suite version, scale,
variant, dataset, model and recipe. Results of different protocols are never ranked together.
Per entry: mean and sample standard deviation over seeds, n, and how many runs failed or
diverged (counted, never silently dropped). Rank: 1 + the number of entries with a strictly
better mean primary metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_KEYS = ("suite", "suite_version", "scale", "variant", "dataset", "model", "recipe_id")
FORMATS = ("table", "markdown", "csv", "json")

_METRICS_SQL = """
SELECT r.suite, r.suite_version, r.scale, r.variant, r.dataset, r.model, r.recipe_id, r.entry,
       r.primary_metric, r.primary_higher_is_better,
       m.name AS metric, bool_and(m.higher_is_better) AS higher_is_better,
       avg(m.value) AS mean, stddev_samp(m.value) AS std, count(m.value) AS n, min(m.position) AS position
FROM runs r JOIN metrics m USING (run_id)
WHERE r.status = 'ok' {where}
GROUP BY ALL
"""

_STATUS_SQL = """
SELECT suite, suite_version, scale, variant, dataset, model, recipe_id, entry, primary_metric, primary_higher_is_better,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       count(*) FILTER (WHERE status <> 'ok') AS not_ok
FROM runs r WHERE true {where}
GROUP BY ALL
"""


@dataclass
class Entry:
    method: str
    primary: str
    higher_is_better: bool
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> mean, std, n, higher_is_better
    ok: int = 0
    not_ok: int = 0
    rank: int | None = None

    @property
    def primary_mean(self) -> float | None:
        m = self.metrics.get(self.primary)
        return m["mean"] if m and m["mean"] is not None else None


@dataclass
class Board:
    protocol: dict[str, Any]
    entries: list[Entry]

    @property
    def title(self) -> str:
        p = self.protocol
        return f"{p['suite']} v{p['suite_version']} | scale={p['scale']} | {p['variant']} | {p['dataset']} / {p['model']} | recipe {p['recipe_id']}"


def _clean(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def build_boards(con: Any, *, suite: str | None = None, scale: str | None = None, variant: str | None = None) -> list[Board]:
    where, params = "", []
    for column, value in (("suite", suite), ("scale", scale), ("variant", variant)):
        if value is not None:
            where += f" AND r.{column} = ?"
            params.append(value)
    boards: dict[tuple, dict[str, Entry]] = {}
    for row in con.execute(_STATUS_SQL.format(where=where), params).fetchall():
        key, (entry, primary, hib, ok, not_ok) = tuple(row[:7]), row[7:]
        boards.setdefault(key, {})[entry] = Entry(entry, primary, bool(hib), ok=ok, not_ok=not_ok)
    rows = con.execute(_METRICS_SQL.format(where=where), params).fetchall()
    for row in sorted(rows, key=lambda r: r[15]):  # the suite's metric order
        key, entry, metric, hib, mean, std, n = tuple(row[:7]), row[7], row[10], row[11], row[12], row[13], row[14]
        boards[key][entry].metrics[metric] = {"mean": _clean(mean), "std": _clean(std), "n": n, "higher_is_better": bool(hib)}
    out = []
    for key in sorted(boards, key=lambda k: tuple(str(x) for x in k)):
        entries = list(boards[key].values())
        _rank(entries)
        entries.sort(key=lambda e: (e.rank is None, e.rank or 0, e.method))
        out.append(Board(dict(zip(PROTOCOL_KEYS, key)), entries))
    return out


def _rank(entries: list[Entry]) -> None:
    scored = [e for e in entries if e.primary_mean is not None]
    for e in scored:
        sign = 1 if e.higher_is_better else -1
        e.rank = 1 + sum(1 for o in scored if sign * o.primary_mean > sign * e.primary_mean)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _metric_order(board: Board) -> list[str]:
    names: list[str] = []
    for e in board.entries:
        for name in e.metrics:
            if name not in names:
                names.append(name)
    primary = board.entries[0].primary if board.entries else None
    return sorted(names, key=lambda n: (n != primary, names.index(n)))


def _cell(m: dict[str, Any] | None) -> str:
    if not m or m["mean"] is None:
        return "-"
    return f"{m['mean']:.4f} ± {m['std']:.4f}" if m["std"] is not None else f"{m['mean']:.4f}"


def _rows(board: Board) -> tuple[list[str], list[list[Any]]]:
    metrics = _metric_order(board)
    arrows = {}
    for e in board.entries:
        for name, m in e.metrics.items():
            arrows[name] = "↑" if m["higher_is_better"] else "↓"
    headers = ["rank", "method", *(f"{n} {arrows.get(n, '')}".strip() for n in metrics), "n", "failed"]
    rows = [[e.rank if e.rank is not None else "-", e.method, *(_cell(e.metrics.get(n)) for n in metrics), e.ok, e.not_ok] for e in board.entries]
    return headers, rows


def to_records(boards: list[Board]) -> list[dict[str, Any]]:
    """One object per leaderboard row (entry), keyed on the primary metric, with all metrics."""
    out = []
    for b in boards:
        for e in b.entries:
            p = e.metrics.get(e.primary, {})
            out.append(
                {
                    **b.protocol,
                    "method": e.method,
                    "metric": e.primary,
                    "higher_is_better": e.higher_is_better,
                    "mean": p.get("mean"),
                    "std": p.get("std"),
                    "n": p.get("n", 0),
                    "rank": e.rank,
                    "failed": e.not_ok,
                    "metrics": e.metrics,
                }
            )
    return out


def render(boards: list[Board], fmt: str = "table") -> str:
    from tabulate import tabulate

    if fmt == "json":
        return json.dumps(to_records(boards), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        metric_names: list[str] = []
        for b in boards:
            for name in _metric_order(b):
                if name not in metric_names:
                    metric_names.append(name)
        writer = csv.writer(buf)
        writer.writerow([*PROTOCOL_KEYS, "rank", "method", "n", "failed", *(f"{n}_{s}" for n in metric_names for s in ("mean", "std"))])
        for b in boards:
            for e in b.entries:
                values = []
                for n in metric_names:
                    m = e.metrics.get(n, {})
                    values += [m.get("mean"), m.get("std")]
                writer.writerow([*(b.protocol[k] for k in PROTOCOL_KEYS), e.rank, e.method, e.ok, e.not_ok, *("" if v is None else v for v in values)])
        return buf.getvalue()
    tablefmt = {"table": "simple", "markdown": "github"}[fmt]
    parts = []
    for b in boards:
        headers, rows = _rows(b)
        heading = f"### {b.title}" if fmt == "markdown" else b.title
        note = "mean ± std over seeds (n = runs with status ok); rank by the first metric; failed = failed or diverged runs"
        parts.append(f"{heading}\n\n{tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)}\n\n{note}\n")
    return "\n".join(parts)
