"""`harness publish`: a self-contained static leaderboard site from a results database.

Pages (flat in the output folder, so every link is a plain relative file name):

- `index.html`: every suite in the database with its protocol card, its leaderboards (one per
  protocol: suite version, scale, variant, dataset, model, recipe) with their leaders, and every
  method;
- `suite-*.html`: a suite's card and its leaderboards;
- `board-*.html`: one protocol's leaderboard: a sortable table with the statistics of
  `harness.leaderboard` (95% Student t intervals, paired t-tests against the baseline with
  Holm-corrected p-values, rank groups), failed and diverged runs, and the plots (inline SVG drawn here: per-class accuracy by
  training-class frequency where a run stores `per_class_accuracy` and `class_counts`, and every
  other stored series as a curve per entry, mean over seeds);
- `method-*.html`: a method's card (from the installed plugins) and all its results;
- `run-*.html`: one run's spec, provenance, metrics and curves;
- `aggregate.html`: one ranking of every method across all boards (`harness.aggregate`: average
  rank, Friedman test, Nemenyi critical difference with its diagram, IQM of normalised scores
  with stratified bootstrap intervals, probability of improvement, performance profiles).

The page template and the assets (CSS, the table-sorting script) live in the repository's
`leaderboard/` folder. Nothing is fetched from the network: no CDN, no web fonts.

Safety: every string that comes from a plugin or the database is HTML-escaped, only http(s)
URLs become links, and file names are slugs plus a hash of the name, so no name can point a
file outside the output folder. Determinism: the same database gives byte-identical files
(sorted iteration, fixed float formats, no generation timestamp).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import shutil
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.errors import HarnessError
from harness.leaderboard import (
    CORRECTION_NAMES,
    PROTOCOL_KEYS,
    TEST_NAMES,
    Board,
    Entry,
    _metric_order,
    build_boards,
    ci_text,
    comparison_text,
    p_header,
)

ASSETS = ("style.css", "sort.js")
AGGREGATE_PAGE = "aggregate.html"
TEMPLATE = "page.html"
MARKER = ".harness-site"  # marks a folder `harness publish` wrote, so it may replace it
MARKER_TEXT = "This folder was written by `harness publish`; publishing again replaces its contents.\n"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
DASHES = ("", "6 3", "2 3")
PER_CLASS, CLASS_COUNTS = "per_class_accuracy", "class_counts"


# ---------------------------------------------------------------------------------------------
# assets and file names
# ---------------------------------------------------------------------------------------------


def assets_dir() -> Path:
    """The folder holding the template and assets: installed as package data, or the checkout's."""
    import harness

    here = Path(harness.__file__).resolve().parent
    for candidate in (here / "site_assets", here.parent / "leaderboard"):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise HarnessError(
        f"the leaderboard templates are missing (looked for {here / 'site_assets'} and {here.parent / 'leaderboard'}); "
        "reinstall harness-bench"
    )


def slug(name: str, prefix: str, *, identity: str | None = None) -> str:
    """A safe, unique file name for `name`: readable part + a hash of `identity` (default: the name).

    Only [a-z0-9-] survive, so no name can contain '/', '..' or characters a static host mangles.
    """
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "x"
    digest = hashlib.sha256((name if identity is None else identity).encode("utf-8")).hexdigest()[:8]
    return f"{prefix}-{readable}-{digest}.html"


def suite_page(suite: str) -> str:
    return slug(suite, "suite")


def method_page(method: str) -> str:
    return slug(method, "method")


def run_page(run_id: str) -> str:
    return slug(run_id, "run")


def board_page(protocol: dict[str, Any]) -> str:
    p = protocol
    return slug(f"{p['suite']} v{p['suite_version']} {p['scale']} {p['variant']}", "board", identity=json.dumps([str(p[k]) for k in PROTOCOL_KEYS]))


# ---------------------------------------------------------------------------------------------
# html helpers
# ---------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def link(href: str, text: str) -> str:
    """A link to one of our own pages (href is a generated file name); `text` is escaped here."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def external_link(url: str, text: str | None = None) -> str:
    """A link only for http(s) URLs; anything else (javascript:, data:, relative) is plain text."""
    parsed = urlparse(url.strip()) if url else None
    if parsed and parsed.scheme in ("http", "https") and parsed.netloc:
        return f'<a href="{esc(url.strip())}" rel="noopener noreferrer">{esc(text or url)}</a>'
    return esc(text or url or "-")


def markdown(text: str) -> str:
    """The little markdown cards use: paragraphs, `- ` lists, **bold** and `code` (escaped first)."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if lines and all(line.lstrip().startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{_inline(line.lstrip()[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        elif block.strip():
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def kv_table(rows: Iterable[tuple[str, str]]) -> str:
    """Rows of (label, html): labels are ours, values are already-escaped html."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, sortable: bool = False, cls: str = "") -> str:
    """Headers are escaped here; each cell is html (a `<td ...>` string or plain escaped html)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    return f'<div class="table-wrap"><table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def num_cell(text: str, sort_value: float | int | None, extra: str = "") -> str:
    sort = "-" if sort_value is None else _num(sort_value)
    return f'<td class="num{extra}" data-sort="{sort}">{esc(text)}</td>'


def _num(x: float | int) -> str:
    return str(x) if isinstance(x, int) else repr(float(x))


def pretty_json(value: Any) -> str:
    return f"<pre>{esc(json.dumps(value, indent=2, sort_keys=True))}</pre>"


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# inline SVG charts
# ---------------------------------------------------------------------------------------------


@dataclass
class Line:
    label: str
    color: str
    dash: str
    points: list[tuple[float, float | None]]  # a None y breaks the line
    markers: bool = False


def _nice_step(span: float, count: int = 5, integer: bool = False) -> float:
    raw = span / count
    if integer and raw <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10) if integer and magnitude == 1 else (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _linear_ticks(lo: float, hi: float, integer: bool = False) -> tuple[float, float, list[float], int]:
    if hi - lo < 1e-12:
        pad = 1.0 if integer else (abs(lo) * 0.05 or 0.5)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, integer=integer)
    start, stop = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks, i = [], 0
    while start + i * step <= stop + step * 1e-9:
        ticks.append(start + i * step)
        i += 1
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0)
    return start, stop, ticks, digits


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    lo, hi = lo / 1.3, hi * 1.3
    mantissas = (1,) if math.log10(hi / lo) > 4 else (1, 2, 5)
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in mantissas:
            t = m * 10.0**e
            if lo <= t <= hi:
                ticks.append(t)
    return lo, hi, ticks


def _tick_label(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return "0" if float(text) == 0 else text


def svg_chart(
    lines: list[Line], *, title: str, x_label: str, y_label: str, log_x: bool = False, integer_x: bool = False, width: int = 560, height: int = 320
) -> str:
    """A line chart as inline SVG (deterministic: fixed coordinate precision, input order)."""
    left, right, top, bottom = 58, 16, 26, 46
    pts = [(x, y) for line in lines for x, y in line.points if y is not None and math.isfinite(y) and math.isfinite(x) and (x > 0 or not log_x)]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if log_x:
        x_lo, x_hi, x_ticks = _log_ticks(min(xs), max(xs))
        fx = lambda x: left + (math.log10(x) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo)) * (width - left - right)  # noqa: E731
        x_labels = [f"{t:g}" for t in x_ticks]
    else:
        x_lo, x_hi, x_ticks, x_digits = _linear_ticks(min(xs), max(xs), integer=integer_x)
        fx = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)  # noqa: E731
        x_labels = [_tick_label(t, x_digits) for t in x_ticks]
    y_lo, y_hi, y_ticks, y_digits = _linear_ticks(min(ys), max(ys))
    fy = lambda y: top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom)  # noqa: E731
    c = lambda v: f"{v:.1f}"  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" font-family="system-ui, sans-serif" font-size="11">',
        f"<title>{esc(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#ffffff" stroke="#c9ced8"/>',
        f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="12" font-weight="600">{esc(title)}</text>',
    ]
    for t, label in zip(y_ticks, (_tick_label(t, y_digits) for t in y_ticks)):
        y = c(fy(t))
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y}" y2="{y}" stroke="#eceff4"/>')
        parts.append(f'<text x="{left - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">{esc(label)}</text>')
    for t, label in zip(x_ticks, x_labels):
        x = c(fx(t))
        parts.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{height - bottom}" stroke="#eceff4"/>')
        parts.append(f'<text x="{x}" y="{height - bottom + 15}" text-anchor="middle">{esc(label)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 8}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2:.1f}" text-anchor="middle" transform="rotate(-90 14 {(top + height - bottom) / 2:.1f})">{esc(y_label)}</text>')
    for line in lines:
        dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
        segments: list[list[str]] = [[]]
        marks = []
        for x, y in line.points:
            if y is None or not math.isfinite(y) or (log_x and x <= 0):
                segments.append([])
                continue
            segments[-1].append(f"{c(fx(x))},{c(fy(y))}")
            if line.markers or len(line.points) == 1:
                marks.append(f'<circle cx="{c(fx(x))}" cy="{c(fy(y))}" r="3" fill="{line.color}"><title>{esc(line.label)}: ({x:g}, {y:.4f})</title></circle>')
        parts.append(f'<g class="series"><title>{esc(line.label)}</title>')
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline fill="none" stroke="{line.color}" stroke-width="2"{dash} points="{" ".join(seg)}"/>')
        parts.extend(marks)
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def figure(svg: str, lines: list[Line], caption: str) -> str:
    if not svg:
        return ""
    legend = "".join(
        f'<li><span class="swatch" style="background:{line.color}"></span>{esc(line.label)}{" (" + esc(line.dash.replace(" ", "-")) + " dashes)" if line.dash else ""}</li>'
        for line in lines
    )
    return f'<figure>{svg}<figcaption>{esc(caption)}<ul class="legend">{legend}</ul></figcaption></figure>'


def svg_cd_diagram(ranks: list[tuple[str, float]], cd: float, *, title: str, width: int = 720) -> str:
    """A critical-difference diagram (Demšar 2006, Fig. 1) as inline SVG: the rank axis (1 = best, at
    the left), each method's average rank with its name (better half on the left, the rest on the
    right), a bar of length CD, and a thick line under every maximal group of methods whose ranks lie
    within CD of each other (not significantly different). Deterministic: fixed precision, input order
    broken by name."""
    if len(ranks) < 2:
        return ""
    items = sorted(ranks, key=lambda r: (r[1], r[0]))
    k = len(items)
    left, right, top, row_h = 190, width - 190, 52, 17
    fx = lambda r: left + (r - 1) / max(k - 1, 1) * (right - left)  # noqa: E731
    c = lambda v: f"{v:.1f}"  # noqa: E731
    # maximal runs of consecutive (sorted) methods spanning less than CD
    groups, last_end = [], -1
    for i in range(k):
        j = i
        while j + 1 < k and items[j + 1][1] - items[i][1] < cd:
            j += 1
        if j > i and j > last_end:
            groups.append((i, j))
            last_end = j
    first_row = top + 16 + 7 * len(groups)
    half = (k + 1) // 2
    height = first_row + row_h * max(half, k - half) + 10
    bar_end = min(1 + cd, k)  # a CD wider than the whole axis: every method ties
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart cd-diagram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" font-family="system-ui, sans-serif" font-size="11">',
        f"<title>{esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="14" text-anchor="middle" font-size="12" font-weight="600">{esc(title)}</text>',
        # the CD bar, from rank 1
        f'<line x1="{c(fx(1))}" x2="{c(fx(bar_end))}" y1="26" y2="26" stroke="#1d2330" stroke-width="2"/>',
        f'<line x1="{c(fx(1))}" x2="{c(fx(1))}" y1="22" y2="30" stroke="#1d2330"/><line x1="{c(fx(bar_end))}" x2="{c(fx(bar_end))}" y1="22" y2="30" stroke="#1d2330"/>',
        f'<text x="{c(fx(bar_end) + 6)}" y="29">CD = {cd:.2f}{" (wider than the axis)" if bar_end < 1 + cd else ""}</text>',
        f'<line x1="{left}" x2="{right}" y1="{top}" y2="{top}" stroke="#1d2330"/>',
    ]
    for r in range(1, k + 1):
        parts.append(f'<line x1="{c(fx(r))}" x2="{c(fx(r))}" y1="{top - 5}" y2="{top}" stroke="#1d2330"/>')
        parts.append(f'<text x="{c(fx(r))}" y="{top - 8}" text-anchor="middle">{r}</text>')
    for g, (i, j) in enumerate(groups):
        y = top + 10 + 7 * g
        parts.append(f'<line class="cd-group" x1="{c(fx(items[i][1]) - 4)}" x2="{c(fx(items[j][1]) + 4)}" y1="{y}" y2="{y}" stroke="#d62728" stroke-width="3" stroke-linecap="round"/>')
    for n, (name, rank) in enumerate(items):
        on_left = n < half
        y = first_row + row_h * (n if on_left else k - 1 - n)
        end = left - 10 if on_left else right + 10
        label = f"{name} ({rank:.2f})"
        parts.append(
            f'<g class="cd-method"><title>{esc(label)}</title>'
            f'<polyline fill="none" stroke="#5b6475" points="{c(fx(rank))},{top} {c(fx(rank))},{y} {end},{y}"/>'
            f'<circle cx="{c(fx(rank))}" cy="{top}" r="2.5" fill="#1d2330"/>'
            f'<text x="{end - 4 if on_left else end + 4}" y="{y}" text-anchor="{"end" if on_left else "start"}" dominant-baseline="middle">{esc(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _mean_curve(curves: list[list[float | None]]) -> list[float | None]:
    """Index-wise mean over seeds, ignoring missing values."""
    length = max((len(c) for c in curves), default=0)
    out: list[float | None] = []
    for i in range(length):
        values = [c[i] for c in curves if i < len(c) and c[i] is not None]
        out.append(math.fsum(values) / len(values) if values else None)
    return out


def _x_label(name: str, length: int, epochs: Any) -> tuple[str, int]:
    """Per-epoch series are drawn against epochs 1..E; other series against their index."""
    if name.endswith("_per_epoch") or (isinstance(epochs, int) and length == epochs):
        return "epoch", 1
    return "index", 0


def series_plots(per_entry: list[tuple[str, list[dict[str, list[float | None]]]]], *, epochs: Any, markers: bool = False) -> list[str]:
    """Plots for a list of (label, [series dict of each seed]): the per-class plot, then every series."""
    colors = {label: (PALETTE[i % len(PALETTE)], DASHES[(i // len(PALETTE)) % len(DASHES)]) for i, (label, _) in enumerate(per_entry)}
    names = sorted({name for _, runs in per_entry for series in runs for name in series})
    figures = []
    if PER_CLASS in names and CLASS_COUNTS in names:
        lines = []
        for label, runs in per_entry:
            acc = _mean_curve([s[PER_CLASS] for s in runs if PER_CLASS in s and CLASS_COUNTS in s])
            counts = _mean_curve([s[CLASS_COUNTS] for s in runs if PER_CLASS in s and CLASS_COUNTS in s])
            points = sorted(((x, y) for x, y in zip(counts, acc) if x is not None), key=lambda p: p[0])
            if points:
                lines.append(Line(label, *colors[label], points, markers=True))
        svg = svg_chart(lines, title="per-class accuracy by class frequency", x_label="training images of the class (log scale)", y_label="per-class test accuracy", log_x=True)
        figures.append(figure(svg, lines, "Each point is one class: x its training-set count, y its test accuracy (mean over seeds)."))
        names = [n for n in names if n not in (PER_CLASS, CLASS_COUNTS)]
    names.sort(key=lambda n: (not n.endswith("_per_epoch"), n))
    for name in names:
        lines = []
        for label, runs in per_entry:
            curve = _mean_curve([s[name] for s in runs if name in s])
            if curve:
                x_label, first = _x_label(name, len(curve), epochs)
                lines.append(Line(label, *colors[label], [(i + first, y) for i, y in enumerate(curve)], markers=markers))
        if lines:
            x_label, _ = _x_label(name, len(lines[0].points), epochs)
            svg = svg_chart(lines, title=name, x_label=x_label, y_label=name, integer_x=True)
            figures.append(figure(svg, lines, f"{name}: mean over seeds" if len(per_entry) > 1 or any(len(r) > 1 for _, r in per_entry) else name))
    return [f for f in figures if f]


# ---------------------------------------------------------------------------------------------
# what the database and the catalog know
# ---------------------------------------------------------------------------------------------

_RUN_COLUMNS = (
    "run_id", "suite", "suite_version", "scale", "variant", "dataset", "model", "recipe_id", "entry", "seed", "primary_metric",
    "status", "error", "started_at", "finished_at", "duration_s", "spec", "provenance", "info",
)


@dataclass
class SiteData:
    runs: dict[str, dict[str, Any]]  # run id -> row (spec, provenance, info parsed)
    metrics: dict[str, list[tuple[str, float | None, bool]]]  # run id -> (name, value, higher_is_better) in suite order
    series: dict[str, dict[str, list[float | None]]]
    boards: list[Board]
    suites: dict[str, Any]  # installed Suite objects by name
    methods: dict[str, Any]  # installed Method objects by name
    board_runs: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)  # protocol key -> runs

    def protocol_key(self, row: dict[str, Any]) -> tuple:
        return tuple(row[k] for k in PROTOCOL_KEYS)


def load_site_data(con: Any, catalog: Any) -> SiteData:
    suites = {s.name: s for s in catalog.suites} if catalog is not None else {}
    methods = {m.name: m for m in catalog.methods} if catalog is not None else {}
    runs = {}
    for row in con.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs ORDER BY run_id").fetchall():
        r = dict(zip(_RUN_COLUMNS, row))
        for key in ("spec", "provenance", "info"):
            r[key] = json.loads(r[key]) if r[key] else {}
        runs[r["run_id"]] = r
    metrics: dict[str, list[tuple[str, float | None, bool]]] = defaultdict(list)
    for run_id, name, value, hib, _ in con.execute("SELECT run_id, name, value, higher_is_better, position FROM metrics ORDER BY run_id, position, name").fetchall():
        metrics[run_id].append((name, value, bool(hib)))
    series: dict[str, dict[str, list[float | None]]] = defaultdict(dict)
    for run_id, name, idx, value in con.execute("SELECT run_id, name, idx, value FROM series ORDER BY run_id, name, idx").fetchall():
        values = series[run_id].setdefault(name, [])
        values.extend([None] * (idx - len(values)))
        values.append(value)
    boards = build_boards(con, baselines={name: s.baseline for name, s in suites.items()})
    data = SiteData(runs, dict(metrics), dict(series), boards, suites, methods)
    for r in runs.values():
        data.board_runs.setdefault(data.protocol_key(r), []).append(r)
    return data


def run_methods(run: dict[str, Any]) -> list[str]:
    return [m["name"] for m in run["spec"].get("methods", []) if isinstance(m, dict) and "name" in m]


def board_key(board: Board) -> tuple:
    return tuple(board.protocol[k] for k in PROTOCOL_KEYS)


# ---------------------------------------------------------------------------------------------
# page parts
# ---------------------------------------------------------------------------------------------

def stats_html(test: str = "t", correction: str = "holm") -> str:
    """The footnote of the site's boards (the published boards use the defaults)."""
    return (
    "<p class=\"note\">Per entry: mean ± sample standard deviation over seeds (n = runs with status ok). "
    "<strong>95% CI</strong>: Student t interval of the mean, mean ± t<sub>0.975, n-1</sub>·s/√n; undefined (-) for n = 1. "
    "<strong>Δ vs baseline</strong>: mean paired difference of the primary metric from the suite's baseline on matching "
    f"seeds (pairs = seeds both ran); <strong>p vs baseline</strong>: two-sided {esc(TEST_NAMES[test])}, {esc(CORRECTION_NAMES[correction])}; "
    "▲/▼: better/worse than the baseline at p &lt; 0.05 after that correction. <strong>Rank</strong> is a rank group: entries sorted by mean, the first "
    "leads group 1, each next entry joins the current group if its CI overlaps the group leader's CI, else it leads a "
    "new group, so entries sharing a rank are statistically tied (an entry with one seed counts as the point at its "
    "mean). <strong>failed</strong>: runs not ok (diverged included); <strong>diverged</strong>: of which diverged. "
    "Click a column header to sort.</p>"
    )


STATS_HTML = stats_html()


def suite_card(data: SiteData, suite: str, versions: list[str]) -> str:
    """The protocol card of an installed suite, or what the database knows of one not installed."""
    s = data.suites.get(suite)
    if s is None:
        runs = sorted((r for r in data.runs.values() if r["suite"] == suite), key=lambda r: (str(r["suite_version"]), str(r["scale"]), r["run_id"]))
        recipes = {}
        for r in runs:
            recipes.setdefault((r["suite_version"], r["scale"], r["recipe_id"]), r["spec"].get("recipe", {}))
        parts = [f'<p class="warn">The protocol card is unavailable: suite <code>{esc(suite)}</code> is not installed here. What the database knows:</p>']
        for (version, scale, rid), recipe in sorted(recipes.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            parts.append(f"<h3>version {esc(version)}, scale={esc(scale)}, recipe {esc(rid)}</h3>{pretty_json(recipe)}")
        return '<div class="card">' + "".join(parts) + "</div>"
    primary = s.metric(s.primary)
    rows = [
        ("summary", esc(s.summary)),
        ("version", esc(s.version) + ("" if versions == [s.version] else f' <span class="muted">(the database holds version(s) {esc(", ".join(versions))})</span>')),
        ("ranks", esc(", ".join(s.ranks))),
        ("baseline", link(method_page(s.baseline), s.baseline)),
        ("primary metric", f"{esc(s.primary)} ({'higher' if primary.higher_is_better else 'lower'} is better)"),
        ("variant axes", esc(", ".join(f"{a.name} (default {a.default!r}): {a.doc}" for a in s.axes)) or "-"),
        ("plugin", esc(f"{s.plugin} {s.plugin_version}")),
    ]
    metric_rows = [(esc(m.name), "↑ higher is better" if m.higher_is_better else "↓ lower is better", esc(m.doc)) for m in s.metrics]
    recipe_rows = []
    for scale in sorted(s.scales):
        recipe = s.scales[scale]
        fields = ", ".join(f"{k}={v}" for k, v in recipe.as_dict().items())
        recipe_rows.append((esc(scale), esc(fields), esc(recipe.source or "-")))
    return (
        '<div class="card">'
        + kv_table(rows)
        + "<h3>Metrics</h3>" + table(["metric", "direction", "definition"], metric_rows)
        + "<h3>Recipes</h3>" + table(["scale", "recipe", "source"], recipe_rows)
        + (f"<h3>Protocol</h3>{markdown(s.card)}" if s.card else "")
        + "</div>"
    )


def leaders(board: Board) -> str:
    tops = [e for e in board.entries if e.rank == 1]
    if not tops:
        return "-"
    return ", ".join(f"{entry_html(board, e, None)} ({fmt(e.primary_mean)})" for e in tops)


def entry_html(board: Board, e: Entry, data: SiteData | None) -> str:
    """The entry name, linked to its method page(s)."""
    names = sorted({m for r in (data.board_runs.get(board_key(board), []) if data else []) if r["entry"] == e.method for m in run_methods(r)})
    if not names and "+" not in e.method and "[" not in e.method:
        names = [e.method]
    if names == [e.method]:
        return link(method_page(e.method), e.method)
    if not names:
        return esc(e.method)
    return esc(e.method) + ' <span class="muted">(' + ", ".join(link(method_page(n), n) for n in names) + ")</span>"


def boards_table(data: SiteData, boards: list[Board]) -> str:
    rows = []
    for b in boards:
        p = b.protocol
        runs = data.board_runs.get(board_key(b), [])
        ok = sum(1 for r in runs if r["status"] == "ok")
        rows.append(
            [
                link(board_page(p), f"v{p['suite_version']} · scale={p['scale']} · {p['variant']}"),
                esc(f"{p['dataset']} / {p['model']}"),
                esc(p["recipe_id"]),
                leaders(b),
                num_cell(str(len(b.entries)), len(b.entries)),
                num_cell(f"{ok} ok / {len(runs)}", len(runs)),
            ]
        )
    return table(["leaderboard (protocol)", "data / model", "recipe", "leader (rank 1)", "methods", "runs"], rows)


def board_table(data: SiteData, board: Board) -> str:
    metrics = _metric_order(board)
    runs = data.board_runs.get(board_key(board), [])
    direction = {}
    for e in board.entries:
        for name, m in e.metrics.items():
            direction[name] = m["higher_is_better"]
    base = board.baseline or "baseline"
    head = ["rank", "method"]
    if metrics:
        head += [f"{metrics[0]} {'↑' if direction[metrics[0]] else '↓'}", "95% CI", f"Δ vs {base}", p_header(board)]
    head += [f"{n} {'↑' if direction[n] else '↓'}" for n in metrics[1:]] + ["n", "failed", "diverged", "runs (by seed)"]
    rows = []
    for e in board.entries:
        row = [num_cell(str(e.rank) if e.rank is not None else "-", e.rank), f'<td class="method">{entry_html(board, e, data)}</td>']
        if metrics:
            m = e.metrics.get(metrics[0]) or {}
            delta, p = comparison_text(board, e)
            test = e.baseline_test
            row += [
                num_cell(_mean_std(m), m.get("mean")),
                num_cell(ci_text(m), m.get("ci_low")),
                num_cell(delta, test.mean_diff if test and test.n_pairs else None),
                num_cell(p, e.p_corrected),
            ]
        for n in metrics[1:]:
            m = e.metrics.get(n) or {}
            row.append(num_cell(_mean_std(m), m.get("mean")))
        row += [num_cell(str(e.ok), e.ok), num_cell(str(e.not_ok), e.not_ok), num_cell(str(e.diverged), e.diverged)]
        entry_runs = sorted((r for r in runs if r["entry"] == e.method), key=lambda r: (r["seed"], r["run_id"]))
        row.append(" ".join(link(run_page(r["run_id"]), f"s{r['seed']}" + ("" if r["status"] == "ok" else f" ({r['status']})")) for r in entry_runs))
        classes = [f"rank-{'odd' if (e.rank or 0) % 2 else 'even'}"] + (["baseline"] if e.method == board.baseline else [])
        rows.append((f'<tr class="{" ".join(classes)}">', row))
    head_html = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join(tr + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for tr, row in rows)
    return f'<div class="table-wrap"><table class="sortable leaderboard"><thead><tr>{head_html}</tr></thead><tbody>{body}</tbody></table></div>'


def _mean_std(m: dict[str, Any]) -> str:
    if not m or m.get("mean") is None:
        return "-"
    return f"{m['mean']:.4f} ± {m['std']:.4f}" if m.get("std") is not None else f"{m['mean']:.4f}"


def failed_runs_html(runs: list[dict[str, Any]]) -> str:
    bad = sorted((r for r in runs if r["status"] != "ok"), key=lambda r: (r["entry"], r["seed"], r["run_id"]))
    if not bad:
        return ""
    rows = [
        [link(run_page(r["run_id"]), r["run_id"]), esc(r["entry"]), esc(r["seed"]), f'<span class="status-{esc(r["status"])}">{esc(r["status"])}</span>', esc(_first_line(r["error"]))]
        for r in bad
    ]
    return f"<h2>Failed and diverged runs ({len(bad)})</h2>" + table(["run", "method", "seed", "status", "error"], rows)


def _first_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "-"


def card_version_note(data: SiteData, protocol: dict[str, Any]) -> str:
    s = data.suites.get(protocol["suite"])
    card = link(suite_page(protocol["suite"]), f"{protocol['suite']} v{protocol['suite_version']}")
    if s is None:
        return f'<p class="warn">Protocol card: {card} — unavailable (the suite is not installed here); the recipe below is what the runs stored.</p>'
    if s.version != protocol["suite_version"]:
        return f'<p class="warn">Protocol card: {card}. The installed card is version {esc(s.version)}; this table is version {esc(protocol["suite_version"])}, whose card may differ.</p>'
    return f"<p>Protocol card: {card} (version {esc(s.version)}).</p>"


# ---------------------------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------------------------


class Site:
    def __init__(self, data: SiteData, template: string.Template):
        self.data = data
        self.template = template
        self.pages: dict[str, str] = {}

    def page(self, name: str, title: str, body: str, crumbs: list[tuple[str, str]] = ()) -> None:
        crumb_html = " / ".join(link(href, text) for href, text in crumbs)
        self.pages[name] = self.template.substitute(title=esc(title), body=body, crumbs=crumb_html)

    # -- the whole site ---------------------------------------------------------------------------
    def build(self) -> dict[str, str]:
        d = self.data
        suites = sorted({r["suite"] for r in d.runs.values()})
        boards_by_suite: dict[str, list[Board]] = defaultdict(list)
        for b in d.boards:
            boards_by_suite[b.protocol["suite"]].append(b)
        self.index(suites, boards_by_suite)
        for suite in suites:
            self.suite(suite, boards_by_suite[suite])
        for b in d.boards:
            self.board(b)
        for name in sorted(set(d.methods) | {m for r in d.runs.values() for m in run_methods(r)}):
            self.method(name)
        for run in d.runs.values():
            self.run(run)
        self.aggregate()
        return self.pages

    def _versions(self, suite: str) -> list[str]:
        return sorted({str(r["suite_version"]) for r in self.data.runs.values() if r["suite"] == suite})

    def index(self, suites: list[str], boards_by_suite: dict[str, list[Board]]) -> None:
        d = self.data
        runs = list(d.runs.values())
        methods = sorted(set(d.methods) | {m for r in runs for m in run_methods(r)})
        body = [
            f"<p>{len(suites)} suite(s), {len(d.boards)} leaderboard(s), {len(methods)} method(s), {len(runs)} run(s) "
            f"({sum(r['status'] == 'ok' for r in runs)} ok, {sum(r['status'] == 'diverged' for r in runs)} diverged, "
            f"{sum(r['status'] not in ('ok', 'diverged') for r in runs)} failed or timed out).</p>",
            STATS_HTML,
            f"<p>{link(AGGREGATE_PAGE, 'Across suites')}: one ranking of every method over all {len(d.boards)} leaderboard(s) "
            "(average rank, Friedman test and critical-difference diagram, IQM of normalised scores, probability of "
            "improvement over the baseline, performance profiles).</p>",
        ]
        if not suites:
            body.append('<p class="warn">The database holds no runs yet.</p>')
        for suite in suites:
            suite_runs = [r for r in runs if r["suite"] == suite]
            entries = {r["entry"] for r in suite_runs}
            body.append(f'<section class="suite"><h2>{link(suite_page(suite), suite)}</h2>')
            body.append(f"<p>{len(entries)} method(s) · {len(suite_runs)} run(s) · versions {esc(', '.join(self._versions(suite)))}</p>")
            body.append("<h3>Leaderboards</h3>" + boards_table(d, boards_by_suite[suite]))
            body.append("<h3>Protocol card</h3>" + suite_card(d, suite, self._versions(suite)))
            body.append("</section>")
        rows = []
        for name in methods:
            m = d.methods.get(name)
            rows.append([link(method_page(name), name), esc(m.kind if m else "-"), esc(m.summary if m else "not installed"), esc(f"{m.plugin} {m.plugin_version}" if m else "-")])
        body.append("<h2>Methods</h2>" + table(["method", "kind", "summary", "plugin"], rows, sortable=True))
        self.page("index.html", "harness leaderboards", "\n".join(body))

    def suite(self, suite: str, boards: list[Board]) -> None:
        d = self.data
        body = [
            "<h2>Leaderboards</h2>",
            "<p>One table per protocol: suite version, scale, variant, dataset, model and recipe. Results of different protocols are never ranked together.</p>",
            boards_table(d, boards),
            "<h2>Protocol card</h2>",
            suite_card(d, suite, self._versions(suite)),
        ]
        self.page(suite_page(suite), f"suite {suite}", "\n".join(body))

    def board(self, b: Board) -> None:
        d = self.data
        p = b.protocol
        runs = d.board_runs.get(board_key(b), [])
        recipe = next((r["spec"].get("recipe") for r in sorted(runs, key=lambda r: r["run_id"])), {})
        protocol_rows = [
            ("suite", link(suite_page(p["suite"]), p["suite"]) + f" version {esc(p['suite_version'])}"),
            ("scale", esc(p["scale"])), ("variant", esc(p["variant"])), ("dataset / model", esc(f"{p['dataset']} / {p['model']}")),
            ("recipe", esc(p["recipe_id"]) + f" <code>{esc(json.dumps(recipe, sort_keys=True))}</code>"),
            ("baseline", link(method_page(b.baseline), b.baseline) if b.baseline else "none (suite not installed)"),
        ]
        ok_runs: dict[str, list[dict[str, list[float | None]]]] = defaultdict(list)
        for r in sorted(runs, key=lambda r: (r["seed"], r["run_id"])):
            if r["status"] == "ok":
                ok_runs[r["entry"]].append(d.series.get(r["run_id"], {}))
        per_entry = [(e.method, ok_runs[e.method]) for e in b.entries if ok_runs.get(e.method)]
        plots = series_plots(per_entry, epochs=recipe.get("epochs") if isinstance(recipe, dict) else None)
        body = [
            card_version_note(d, p),
            kv_table(protocol_rows),
            "<h2>Leaderboard</h2>",
            board_table(d, b),
            STATS_HTML,
            failed_runs_html(runs),
            "<h2>Plots</h2>",
            f'<div class="plots">{"".join(plots)}</div>' if plots else '<p class="muted">No stored series to plot.</p>',
        ]
        title = f"{p['suite']} v{p['suite_version']} · scale={p['scale']} · {p['variant']}"
        self.page(board_page(p), title, "\n".join(body), [(suite_page(p["suite"]), p["suite"])])

    def method(self, name: str) -> None:
        d = self.data
        m = d.methods.get(name)
        body = []
        if m is not None:
            rows = [
                ("kind", esc(m.kind)), ("summary", esc(m.summary)), ("paper", esc(m.paper) or "-"),
                ("url", external_link(m.url) if m.url else "-"), ("method version", esc(m.version)),
                ("plugin package", esc(f"{m.plugin} {m.plugin_version}")),
            ]
            body.append(kv_table(rows))
            params = [
                [esc(p.name), esc(p.type_name), esc(repr(p.default)), esc(p.describe_valid()), esc(p.doc)]
                for p in m.params
            ]
            body.append("<h2>Hyper-parameters</h2>" + (table(["name", "type", "default", "valid", "doc"], params) if params else "<p>none</p>"))
        else:
            seen = sorted(
                {json.dumps({k: v for k, v in spec_m.items() if k in ("kind", "version", "params")}, sort_keys=True)
                 for r in d.runs.values() for spec_m in r["spec"].get("methods", []) if isinstance(spec_m, dict) and spec_m.get("name") == name}
            )
            body.append(f'<p class="warn">Method <code>{esc(name)}</code> is not installed here: no summary, paper or plugin information. What the stored runs say:</p>')
            body.extend(pretty_json(json.loads(s)) for s in seen)
        rows = []
        for b in d.boards:
            runs = d.board_runs.get(board_key(b), [])
            for e in b.entries:
                if not any(r["entry"] == e.method and name in run_methods(r) for r in runs):
                    continue
                pm = e.metrics.get(e.primary) or {}
                delta, pv = comparison_text(b, e)
                rows.append(
                    [
                        link(suite_page(b.protocol["suite"]), f"{b.protocol['suite']} v{b.protocol['suite_version']}"),
                        link(board_page(b.protocol), f"scale={b.protocol['scale']} · {b.protocol['variant']} · {b.protocol['dataset']}/{b.protocol['model']} · {b.protocol['recipe_id']}"),
                        esc(e.method), num_cell(str(e.rank) if e.rank is not None else "-", e.rank), esc(e.primary),
                        num_cell(_mean_std(pm), pm.get("mean")), num_cell(ci_text(pm), pm.get("ci_low")),
                        esc(delta), esc(pv), num_cell(str(e.ok), e.ok), num_cell(str(e.not_ok), e.not_ok),
                    ]
                )
        body.append("<h2>Results</h2>")
        body.append(table(["suite", "leaderboard", "entry", "rank", "metric", "mean ± std", "95% CI", "Δ vs baseline", "p vs baseline (corrected)", "n", "failed"], rows, sortable=True) if rows else "<p>No stored results.</p>")
        self.page(method_page(name), f"method {name}", "\n".join(body))

    def run(self, r: dict[str, Any]) -> None:
        d = self.data
        key = d.protocol_key(r)
        board = next((b for b in d.boards if board_key(b) == key), None)
        methods = run_methods(r)
        rows = [
            ("run id", esc(r["run_id"])),
            ("status", f'<span class="status-{esc(r["status"])}">{esc(r["status"])}</span>'),
            ("suite", link(suite_page(r["suite"]), r["suite"]) + f" version {esc(r['suite_version'])}"),
            ("leaderboard", link(board_page(board.protocol), f"scale={r['scale']} · {r['variant']}") if board else "-"),
            ("entry", esc(r["entry"]) + (" (" + ", ".join(link(method_page(n), n) for n in methods) + ")" if methods else "")),
            ("seed", esc(r["seed"])), ("dataset / model", esc(f"{r['dataset']} / {r['model']}")),
            ("duration", "-" if r["duration_s"] is None else esc(f"{r['duration_s']:.1f} s")),
            ("started / finished", esc(f"{r['started_at'] or '-'} / {r['finished_at'] or '-'}")),
        ]
        body = [kv_table(rows)]
        if r["error"]:
            body.append(f"<h2>Error</h2><pre>{esc(r['error'])}</pre>")
        metric_rows = [[esc(n), num_cell(fmt(v, 6), v), "↑ higher" if hib else "↓ lower"] for n, v, hib in d.metrics.get(r["run_id"], [])]
        if metric_rows:
            body.append("<h2>Metrics</h2>" + table(["metric", "value", "better"], metric_rows))
        series = d.series.get(r["run_id"], {})
        plots = series_plots([(r["entry"], [series])], epochs=r["spec"].get("recipe", {}).get("epochs"), markers=True) if series else []
        if plots:
            body.append("<h2>Curves</h2>" + f'<div class="plots">{"".join(plots)}</div>')
        body.append("<h2>Spec</h2>" + pretty_json(r["spec"]))
        body.append("<h2>Provenance</h2>" + pretty_json(r["provenance"]))
        if r["info"]:
            body.append("<h2>Info</h2>" + pretty_json(r["info"]))
        crumbs = [(suite_page(r["suite"]), r["suite"])] + ([(board_page(board.protocol), f"{r['scale']} · {r['variant']}")] if board else [])
        self.page(run_page(r["run_id"]), f"run {r['run_id']}", "\n".join(body), crumbs)

    def aggregate(self) -> None:
        """One ranking across every board (harness.aggregate), with its diagrams."""
        from harness import aggregate as agg_mod

        d = self.data
        agg = agg_mod.aggregate(d.boards)
        body = [f"<p>{esc(agg_mod.headline(agg))}.</p>", f'<p class="note"><strong>Score normalisation</strong>: {esc(agg_mod.NORMALISATION_NOTE)}.</p>']
        if agg.notes:
            body.append('<div class="warn"><p>Left out:</p><ul>' + "".join(f"<li>{esc(n)}</li>" for n in agg.notes) + "</ul></div>")
        rows = []
        for s in agg.methods:
            rows.append([
                f'<td class="method">{link(method_page(s.method), s.method) if "+" not in s.method else esc(s.method)}</td>',
                num_cell(str(s.boards), s.boards), num_cell(f"{s.avg_rank:.2f}", s.avg_rank),
                num_cell(agg_mod._fmt(s.friedman_rank, 2), s.friedman_rank), num_cell(agg_mod._fmt(s.iqm), s.iqm),
                num_cell(agg_mod.interval_text(s), s.iqm_low),
                num_cell("-" if s.p_improvement is None else f"{s.p_improvement:.2f} ({s.improvement_boards})", s.p_improvement),
                *(num_cell(agg_mod._fmt(agg_mod.profile_at(s, t), 2), agg_mod.profile_at(s, t)) for t in agg_mod.TABLE_TAUS),
            ])
        headers = ["method", "boards", "avg rank", "Friedman rank", "IQM (normalised)", "95% CI (stratified bootstrap)", "P(> baseline) (boards)", *(f"profile τ={t:g}" for t in agg_mod.TABLE_TAUS)]
        body.append("<h2>Ranking</h2>" + (table(headers, rows, sortable=True) if rows else "<p>No board ranks two entries yet.</p>"))
        body.append("<h2>Critical-difference diagram</h2>" + f"<p>{esc(agg.friedman_note)}</p>")
        if agg.critical_difference is not None:
            ranks = [(s.method, s.friedman_rank) for s in agg.methods if s.friedman_rank is not None]
            svg = svg_cd_diagram(ranks, agg.critical_difference, title=f"average ranks on {agg.friedman.boards} boards (1 = best)")
            body.append(f"<figure>{svg}<figcaption>{esc('Each method at its average rank over the boards that rank all of them; a red line joins methods whose ranks differ by less than the critical difference (not significantly different, Nemenyi test at α = 0.05).')}</figcaption></figure>")
        profiled = [s for s in agg.methods if s.profile is not None]
        if profiled:
            lines = [Line(s.method, PALETTE[i % len(PALETTE)], DASHES[(i // len(PALETTE)) % len(DASHES)], list(zip(agg.taus, s.profile)), markers=True) for i, s in enumerate(profiled)]
            svg = svg_chart(lines, title="performance profiles", x_label="τ (normalised score: 0 = baseline, 1 = best entry)", y_label="fraction of boards with score ≥ τ")
            caption = "For each τ, the fraction of a method's boards on which its mean normalised score is at least τ."
            body.append("<h2>Performance profiles</h2>" + f'<div class="plots">{figure(svg, lines, caption)}</div>')
        board_rows = [
            [link(board_page(t.protocol), t.title), esc(t.baseline or "-"), "yes" if t.span is not None else esc(f"no: {t.left_out}")]
            for t in agg.tasks
        ]
        body.append("<h2>Boards</h2>" + table(["leaderboard", "baseline", "in the normalised statistics"], board_rows))
        body.append('<p class="note">' + "<br>".join(esc(n) for n in agg_mod.footnote(agg)) + "</p>")
        self.page(AGGREGATE_PAGE, "across suites: one ranking of every method", "\n".join(body))


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------


@dataclass
class PublishReport:
    out: Path
    pages: int
    runs: int


def _prepare_out(out: Path) -> None:
    """Create `out`, or empty it if an earlier publish wrote it; never touch another folder's files."""
    if out.exists() and not out.is_dir():
        raise HarnessError(f"out={out} is a file; give a folder for the site")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise HarnessError(f"out={out} exists and was not written by `harness publish`; choose an empty or new folder")
        for child in sorted(out.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def render_site(con: Any, catalog: Any) -> dict[str, bytes]:
    """Every file of the site by relative path (pure: the same database gives the same bytes)."""
    src = assets_dir()
    template = string.Template((src / TEMPLATE).read_text(encoding="utf-8"))
    pages = Site(load_site_data(con, catalog), template).build()
    files = {name: text.encode("utf-8") for name, text in pages.items()}
    for asset in ASSETS:
        files[f"assets/{asset}"] = (src / asset).read_bytes()
    files[MARKER] = MARKER_TEXT.encode("utf-8")
    return files


def publish(results: Path, out: Path, *, catalog: Any = None) -> PublishReport:
    """Write the site for the results folder `results` into `out` (see the module doc)."""
    from harness.store import ResultStore

    store = ResultStore(results)  # a missing or unreadable database is built from the result files, with warnings
    if catalog is None:
        from harness.catalog import load_catalog

        catalog = load_catalog()
    con = store.connect(read_only=True)
    try:
        files = render_site(con, catalog)
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()
    out = Path(out)
    _prepare_out(out)
    root = out.resolve()
    for rel in sorted(files):
        path = (out / rel).resolve()
        if root not in path.parents:  # file names are generated slugs; this cannot happen, so fail loudly
            raise HarnessError(f"refusing to write {rel!r} outside {out}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return PublishReport(out=out, pages=sum(1 for f in files if f.endswith(".html")), runs=runs)
