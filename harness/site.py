"""`harness publish`: a self-contained static leaderboard site from a results database.

Pages (flat in the output folder, so every link is a plain relative file name), each rendered from
a Jinja2 template in the repository's `leaderboard/` folder (installed as `harness.site_assets`):

- `index.html`: every suite in the database with its protocol card, its leaderboards (one per
  protocol: suite version, scale, variant, dataset, model, recipe) with their leaders, every
  method, and the leaderboards of every board as CSV and Parquet;
- `suite-*.html`: a suite's card and its leaderboards;
- `board-*.html`: one protocol's leaderboard: a sortable table with the statistics of
  `harness.leaderboard` (95% Student t intervals, paired t-tests against the baseline with
  Holm-corrected p-values, rank groups; McNemar's test and the seed disagreement where runs
  stored per-sample predictions; published numbers beside reproduced ones), each entry's
  non-default hyper-parameters, failed and diverged runs, the board as CSV and Parquet
  (`board-*.csv`, `board-*.parquet`), and its charts (`harness.plots`: per-class accuracy by
  training-class frequency, every stored series per entry and seed; the leaders and the baseline
  drawn first, the legend toggles entries, hovering names entry, seed and value);
- `entry-*.html`: one entry of one board: its hyper-parameters (defaults and the ones set), its
  runs by seed with every metric, and its curves per seed;
- `method-*.html`: a method's card (from the installed plugins) and all its results;
- `run-*.html`: one run's spec, provenance, metrics and curves (long series downsampled, long
  texts cut, so a page stays small);
- `aggregate.html`: one ranking of every method across all boards (`harness.aggregate`: average
  rank, Friedman test, Nemenyi critical difference with its diagram, IQM of normalised scores
  with stratified bootstrap intervals, probability of improvement, performance profiles).

Nothing is fetched from the network: the charts are Vega-Lite, drawn by the site's own copy of
Vega, Vega-Lite and Vega-Embed (`assets/vega.js`, bundled by vl-convert-python), no CDN, no fonts.

Safety: templates autoescape every string that comes from a plugin or the database; chart data
sits in `<script type="application/json">` blocks with `<`, `>` and `&` escaped; only http(s)
URLs become links; file names are slugs plus a hash of the name, so no name can point a file
outside the output folder. Determinism: the same database gives byte-identical files (sorted
iteration, fixed float formats, no generation timestamp).
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from markupsafe import Markup

from harness import plots
from harness.errors import HarnessError
from harness.leaderboard import (
    CORRECTION_NAMES,
    DISAGREEMENT_NOTE,
    PROTOCOL_KEYS,
    TEST_NAMES,
    Board,
    Entry,
    _metric_order,
    build_boards,
    ci_text,
    comparison_text,
    disagreement_text,
    has_disagreement,
    p_header,
)

ASSETS = ("style.css", "sort.js", "plots.js")
VEGA_ASSET = "vega.js"
AGGREGATE_PAGE = "aggregate.html"
TEMPLATES = ("base.html", "macros.html", "index.html", "suite.html", "board.html", "entry.html", "method.html", "run.html", "aggregate.html")
MARKER = ".harness-site"  # marks a folder `harness publish` wrote, so it may replace it
MARKER_TEXT = "This folder was written by `harness publish`; publishing again replaces its contents.\n"
PER_CLASS, CLASS_COUNTS = "per_class_accuracy", "class_counts"
MAX_TEXT = 20_000  # characters of a run's info, error or provenance shown on its page
SHOWN_LEADERS = 5  # entries of rank 1 drawn at first in a board's charts (with the baseline)
MAX_RUN_LINKS = 30  # runs linked from a board's row (its entry page lists more)
MAX_ENTRY_RUNS = 200  # runs listed on an entry page (by seed; every run keeps its own page): a page of 20,000 seeds stays small
ALL_BOARDS = "leaderboards"


# ---------------------------------------------------------------------------------------------
# assets and file names
# ---------------------------------------------------------------------------------------------


def assets_dir() -> Path:
    """The folder holding the templates and assets: installed as package data, or the checkout's."""
    import harness

    here = Path(harness.__file__).resolve().parent
    for candidate in (here / "site_assets", here.parent / "leaderboard"):
        if (candidate / "base.html").is_file():
            return candidate
    raise HarnessError(
        f"the leaderboard templates are missing (looked for {here / 'site_assets'} and {here.parent / 'leaderboard'}); "
        "reinstall harness-bench"
    )


@functools.lru_cache(maxsize=1)
def vega_bundle() -> bytes:
    """Vega, Vega-Lite and Vega-Embed as one classic script (vl-convert-python bundles them offline;
    wrapped in a function so that its top-level names stay its own)."""
    try:
        import vl_convert
    except ImportError:
        raise HarnessError("publishing the site's charts needs vl-convert-python (pip install vl-convert-python), which bundles Vega offline") from None
    return ("/* Vega " + vl_convert.get_vega_version() + ", Vega-Lite, Vega-Embed " + vl_convert.get_vega_embed_version()
            + " (BSD-3-Clause), bundled by vl-convert-python */\n(function () {\n" + vl_convert.javascript_bundle() + "\n})();\n").encode("utf-8")


def slug(name: str, prefix: str, *, identity: str | None = None, ext: str = "html") -> str:
    """A safe, unique file name for `name`: readable part + a hash of `identity` (default: the name).

    Only [a-z0-9-] survive, so no name can contain '/', '..' or characters a static host mangles.
    """
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "x"
    digest = hashlib.sha256((name if identity is None else identity).encode("utf-8")).hexdigest()[:8]
    return f"{prefix}-{readable}-{digest}.{ext}"


def suite_page(suite: str) -> str:
    return slug(suite, "suite")


def method_page(method: str) -> str:
    return slug(method, "method")


def run_page(run_id: str) -> str:
    return slug(run_id, "run")


def _protocol_identity(p: dict[str, Any]) -> str:
    return json.dumps([str(p[k]) for k in PROTOCOL_KEYS])


def board_page(protocol: dict[str, Any], ext: str = "html") -> str:
    p = protocol
    return slug(f"{p['suite']} v{p['suite_version']} {p['scale']} {p['variant']}", "board", identity=_protocol_identity(p), ext=ext)


def entry_page(protocol: dict[str, Any], entry: str) -> str:
    return slug(f"{protocol['suite']} {entry}", "entry", identity=json.dumps([_protocol_identity(protocol), entry]))


# ---------------------------------------------------------------------------------------------
# what templates get: cells of tables (every string escaped by the templates)
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    text: Any = ""
    href: str | None = None
    sort: str = "-"  # data-sort of a numeric cell
    numeric: bool = False
    cls: str = ""
    title: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # several links (text, if any, before them)
    sep: str = ", "
    html: Markup | None = None  # markup made here from escaped parts (a card, a diagram)


@dataclass
class Row:
    cells: list[Cell]
    cls: str = ""


def num(text: str, sort_value: float | int | None, cls: str = "num", title: str = "") -> Cell:
    return Cell(text, sort="-" if sort_value is None else (str(sort_value) if isinstance(sort_value, int) else repr(float(sort_value))),
                numeric=True, cls=cls, title=title)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def external(url: str, text: str | None = None) -> Cell:
    """A link only for http(s) URLs; anything else (javascript:, data:, relative) is plain text."""
    parsed = urlparse(url.strip()) if url else None
    if parsed and parsed.scheme in ("http", "https") and parsed.netloc:
        return Cell(text or url.strip(), href=url.strip())
    return Cell(text or url or "-")


def markdown(text: str) -> Markup:
    """The little markdown cards use: paragraphs, `- ` lists, **bold** and `code` (escaped first)."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if lines and all(line.lstrip().startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{_inline(line.lstrip()[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        elif block.strip():
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return Markup("\n".join(out))


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def pretty_json(value: Any, limit: int = MAX_TEXT) -> str:
    return cut(json.dumps(value, indent=2, sort_keys=True), limit)


def cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters not shown; `harness show RUN_ID` prints all)"


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# the critical-difference diagram (a diagram of its own, drawn here as SVG)
# ---------------------------------------------------------------------------------------------


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
    series: dict[str, dict[str, plots.Series]]  # run id -> name -> the series as drawn (reduced to plots.MAX_POINTS)
    boards: list[Board]
    suites: dict[str, Any]  # installed Suite objects by name
    methods: dict[str, Any]  # installed Method objects by name
    board_runs: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)  # protocol key -> runs
    mcnemar: dict[tuple, dict[str, str]] = field(default_factory=dict)  # protocol key -> entry -> McNemar p text (runs with predictions)

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
    series = load_series(con)
    baselines = {name: s.baseline for name, s in suites.items()}
    boards = build_boards(con, baselines=baselines)
    if catalog is not None:
        from harness.leaderboard import attach_reported
        from harness.reported import collect_reported

        attach_reported(boards, collect_reported(catalog))
    data = SiteData(runs, dict(metrics), dict(series), boards, suites, methods)
    for r in runs.values():
        data.board_runs.setdefault(data.protocol_key(r), []).append(r)
    if any(has_disagreement(b) for b in boards):  # some runs stored predictions: McNemar's test beside the t-test
        for b in build_boards(con, baselines=baselines, test="mcnemar"):
            data.mcnemar[board_key(b)] = {e.method: comparison_text(b, e)[1] for e in b.entries}
    return data


SERIES_FETCH = 100_000  # series rows read at a time


def load_series(con: Any) -> dict[str, dict[str, plots.Series]]:
    """Every stored series, reduced to plots.MAX_POINTS as it is read, a slice of rows at a time:
    the short ones in one sorted pass, each long one on its own, folded into its buckets as its
    rows arrive. Memory holds the reduced series and one slice of rows, never a long series whole."""
    series: dict[str, dict[str, plots.Series]] = defaultdict(dict)
    limit = plots.MAX_POINTS
    current: tuple[str, str] | None = None
    values: list[float | None] = []

    def finish() -> None:
        if current is not None:
            series[current[0]][current[1]] = plots.reduce(values)

    short = ("SELECT run_id, name, idx, value FROM series WHERE (run_id, name) IN "
             "(SELECT (run_id, name) FROM series GROUP BY run_id, name HAVING max(idx) < ?) ORDER BY run_id, name, idx")
    cursor = con.execute(short, [limit])
    while rows := cursor.fetchmany(SERIES_FETCH):
        for run_id, name, idx, value in rows:
            if (run_id, name) != current:
                finish()
                current, values = (run_id, name), []
            values.extend([None] * (idx - len(values)))
            values.append(value)
    finish()
    long = con.execute("SELECT run_id, name, max(idx) + 1 FROM series GROUP BY run_id, name HAVING max(idx) >= ? ORDER BY run_id, name", [limit]).fetchall()
    for run_id, name, length in long:
        cursor = con.execute("SELECT idx, value FROM series WHERE run_id = ? AND name = ? ORDER BY idx", [run_id, name])
        series[run_id][name] = plots.reduce_stream(_rows(cursor), length, limit)
    return dict(series)


def _rows(cursor: Any) -> Any:
    while rows := cursor.fetchmany(SERIES_FETCH):
        yield from rows


def run_methods(run: dict[str, Any]) -> list[str]:
    return [m["name"] for m in run["spec"].get("methods", []) if isinstance(m, dict) and "name" in m]


def board_key(board: Board) -> tuple:
    return tuple(board.protocol[k] for k in PROTOCOL_KEYS)


def changed_params(run: dict[str, Any]) -> list[str]:
    """`method.param=value` for each hyper-parameter the run's spec sets away from its default."""
    out = []
    for m in run["spec"].get("methods", []):
        if isinstance(m, dict) and isinstance(m.get("changed"), dict):
            out += [f"{m.get('name')}.{k}={v}" for k, v in sorted(m["changed"].items())]
    return out


# ---------------------------------------------------------------------------------------------
# page parts as data
# ---------------------------------------------------------------------------------------------


def suite_card(data: SiteData, suite: str, versions: list[str]) -> dict[str, Any]:
    """The protocol card of an installed suite, or what the database knows of one not installed."""
    s = data.suites.get(suite)
    if s is None:
        runs = sorted((r for r in data.runs.values() if r["suite"] == suite), key=lambda r: (str(r["suite_version"]), str(r["scale"]), r["run_id"]))
        recipes: dict[tuple, Any] = {}
        for r in runs:
            recipes.setdefault((r["suite_version"], r["scale"], r["recipe_id"]), r["spec"].get("recipe", {}))
        return {"installed": False, "name": suite, "recipes": [
            (f"version {v}, scale={sc}, recipe {rid}", pretty_json(recipe)) for (v, sc, rid), recipe in sorted(recipes.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
        ]}
    primary = s.metric(s.primary)
    version = Cell(s.version + ("" if versions == [s.version] else f" (the database holds version(s) {', '.join(versions)})"))
    facts = [
        ("summary", Cell(s.summary)), ("version", version), ("ranks", Cell(", ".join(s.ranks))),
        ("baseline", Cell(s.baseline, href=method_page(s.baseline))),
        ("primary metric", Cell(f"{s.primary} ({'higher' if primary.higher_is_better else 'lower'} is better)")),
        ("variant axes", Cell(", ".join(f"{a.name} (default {a.default!r}): {a.doc}" for a in s.axes) or "-")),
        ("plugin", Cell(f"{s.plugin} {s.plugin_version}")),
    ]
    metrics = [Row([Cell(m.name), Cell("↑ higher is better" if m.higher_is_better else "↓ lower is better"), Cell(m.doc)]) for m in s.metrics]
    recipes = [Row([Cell(scale), Cell(", ".join(f"{k}={v}" for k, v in s.scales[scale].as_dict().items())), Cell(s.scales[scale].source or "-")])
               for scale in sorted(s.scales)]
    return {"installed": True, "facts": facts, "metrics": metrics, "recipes": recipes, "protocol": markdown(s.card) if s.card else None}


def runs_of(e: Entry) -> str:
    """The stored entry whose runs a row shows: a tuned row's selected configuration, else the row itself."""
    return e.tuned.selected if e.tuned is not None else e.method


def entry_cell(data: SiteData, board: Board, e: Entry, cls: str = "") -> Cell:
    """The entry name linked to its entry page (runs, hyper-parameters, curves), then links to the method pages of a combination."""
    names = sorted({m for r in data.board_runs.get(board_key(board), []) if r["entry"] == runs_of(e) for m in run_methods(r)})
    if not names and "+" not in e.method and "[" not in e.method:
        names = [e.method]
    links = [] if names == [e.method] else [(method_page(n), n) for n in names]  # an entry of one method: its entry page links the method
    parts = Markup(", ").join(Markup('<a href="{}">{}</a>').format(href, text) for href, text in links)
    more = Markup(' <span class="muted">({})</span>').format(parts) if links else Markup("")
    return Cell(html=Markup('<a href="{}">{}</a>').format(entry_page(board.protocol, runs_of(e)), e.method) + more, cls=cls)


def leaders(data: SiteData, board: Board) -> Cell:
    tops = [e for e in board.entries if e.rank == 1]
    if not tops:
        return Cell("-")
    return Cell(links=[(entry_page(board.protocol, runs_of(e)), f"{e.method} ({fmt(e.primary_mean)})") for e in tops])


def boards_rows(data: SiteData, boards: list[Board]) -> list[Row]:
    rows = []
    for b in boards:
        p = b.protocol
        runs = data.board_runs.get(board_key(b), [])
        ok = sum(1 for r in runs if r["status"] == "ok")
        rows.append(Row([
            Cell(f"v{p['suite_version']} · scale={p['scale']} · {p['variant']}", href=board_page(p)), Cell(f"{p['dataset']} / {p['model']}"),
            Cell(p["recipe_id"]), leaders(data, b), num(str(len(b.entries)), len(b.entries)), num(f"{ok} ok / {len(runs)}", len(runs)),
        ]))
    return rows


BOARDS_HEADERS = ["leaderboard (protocol)", "data / model", "recipe", "leader (rank 1)", "methods", "runs"]


def _mean_std(m: dict[str, Any]) -> str:
    if not m or m.get("mean") is None:
        return "-"
    return f"{m['mean']:.4f} ± {m['std']:.4f}" if m.get("std") is not None else f"{m['mean']:.4f}"


def board_table(data: SiteData, board: Board) -> tuple[list[str], list[Row], list[str]]:
    """(headers, rows, notes) of a board's leaderboard table."""
    metrics = _metric_order(board)
    runs = data.board_runs.get(board_key(board), [])
    direction = {name: m["higher_is_better"] for e in board.entries for name, m in e.metrics.items()}
    base = board.baseline or "baseline"
    head = ["rank", "method"]
    with_reported = any(e.reported is not None for e in board.entries)
    mcnemar = data.mcnemar.get(board_key(board), {})
    with_mcnemar = any(v not in ("-", "- (no predictions)", "baseline") for v in mcnemar.values())
    if metrics:
        head += [f"{metrics[0]} {'↑' if direction[metrics[0]] else '↓'}", "95% CI", f"Δ vs {base}", p_header(board)]
        head += [f"p vs {base} (McNemar, {'Holm'})"] if with_mcnemar else []
        head += ["reported", "Δ reported"] if with_reported else []
    head += [f"{n} {'↑' if direction[n] else '↓'}" for n in metrics[1:]]
    with_disagreement = has_disagreement(board)
    head += ["seed disagreement"] if with_disagreement else []
    head += ["tuning"] if board.selections else []
    head += ["non-default hyper-parameters", "n", "failed", "diverged", "runs (by seed)"]
    rows = []
    for e in board.entries:
        entry_runs = sorted((r for r in runs if r["entry"] == runs_of(e)), key=lambda r: (r["seed"], r["run_id"]))
        cells = [num(str(e.rank) if e.rank is not None else "-", e.rank), entry_cell(data, board, e, cls="method")]
        if metrics:
            m = e.metrics.get(metrics[0]) or {}
            delta, p = comparison_text(board, e)
            test = e.baseline_test
            cells += [num(_mean_std(m), m.get("mean")), num(ci_text(m), m.get("ci_low")),
                      num(delta, test.mean_diff if test and test.n_pairs else None), num(p, e.p_corrected)]
            if with_mcnemar:
                cells.append(Cell(mcnemar.get(e.method, "-"), cls="num nowrap"))
            if with_reported:
                r = e.reported
                value = r.headline_value if r is not None else None
                text = "-" if r is None else f"{value:.4f}" + ("" if r.comparable else " *")
                title = "" if r is None else r.source + ("" if r.comparable else f" (protocol differs: {r.note})")
                diff = e.diff_vs_reported
                cells += [num(text, value, title=title), num("-" if diff is None else f"{diff:+.4f}", diff)]
        for n in metrics[1:]:
            m = e.metrics.get(n) or {}
            cells.append(num(_mean_std(m), m.get("mean")))
        if with_disagreement:
            cells.append(num(disagreement_text(e), e.seed_disagreement))
        if board.selections:
            cells.append(Cell(board.tuning_text(e), cls="" if e.tuned is not None else "muted"))
        params = sorted({p for r in entry_runs for p in changed_params(r)})
        cells.append(Cell(", ".join(params) if params else "defaults", cls="" if params else "muted"))
        cells += [num(str(e.ok), e.ok), num(str(e.not_ok), e.not_ok), num(str(e.diverged), e.diverged)]
        links = [(run_page(r["run_id"]), f"s{r['seed']}" + ("" if r["status"] == "ok" else f" ({r['status']})")) for r in entry_runs[:MAX_RUN_LINKS]]
        if len(entry_runs) > MAX_RUN_LINKS:  # the entry page lists them all; a board of thousands of seeds stays a small page
            links.append((entry_page(board.protocol, runs_of(e)), f"… all {len(entry_runs)} runs"))
        cells.append(Cell(links=links, sep=" "))
        classes = [f"rank-{'odd' if (e.rank or 0) % 2 else 'even'}"] + (["baseline"] if e.method == board.baseline else [])
        rows.append(Row(cells, " ".join(classes)))
    notes = []
    if with_mcnemar:
        notes.append(f"p vs {base} (McNemar): {TEST_NAMES['mcnemar']}; Holm-adjusted over the board's comparisons.")
    if with_disagreement:
        notes.append(DISAGREEMENT_NOTE[0].upper() + DISAGREEMENT_NOTE[1:] + ".")
    from harness.leaderboard import reported_note

    sources = reported_note(board)
    if sources:
        notes += sources.splitlines()
    if board.selections:
        from harness import tuning

        notes += tuning.note(board.selections).splitlines()
    return head, rows, notes


def failed_rows(runs: list[dict[str, Any]]) -> list[Row]:
    bad = sorted((r for r in runs if r["status"] != "ok"), key=lambda r: (r["entry"], r["seed"], r["run_id"]))
    return [Row([Cell(r["run_id"], href=run_page(r["run_id"])), Cell(r["entry"]), Cell(r["seed"]), Cell(r["status"], cls=f"status-{r['status']}"),
                 Cell(_first_line(r["error"]))]) for r in bad]


def _first_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "-"


def version_note(data: SiteData, protocol: dict[str, Any]) -> dict[str, Any]:
    s = data.suites.get(protocol["suite"])
    note = {"href": suite_page(protocol["suite"]), "text": f"{protocol['suite']} v{protocol['suite_version']}", "version": protocol["suite_version"]}
    if s is None:
        return {**note, "state": "missing"}
    return {**note, "state": "same" if s.version == protocol["suite_version"] else "differs", "installed": s.version}


# ---------------------------------------------------------------------------------------------
# charts
# ---------------------------------------------------------------------------------------------


@dataclass
class Chart:
    title: str
    caption: str
    spec: dict[str, Any]
    spec_id: str = ""


def _x_axis(name: str, length: int, epochs: Any) -> tuple[str, int]:
    """Per-epoch series are drawn against epochs 1..E; other series against their index."""
    if name.endswith("_per_epoch") or (isinstance(epochs, int) and length == epochs):
        return "epoch", 1
    return "index", 0


def series_charts(per_entry: plots.PerEntry, *, epochs: Any, shown: list[str]) -> list[Chart]:
    """The per-class chart, then one chart per stored series (per-epoch curves first)."""
    entries = [label for label, _ in per_entry]
    shown = [e for e in shown if e in entries] or entries[:SHOWN_LEADERS]
    names = sorted({name for _, runs in per_entry for _, series in runs for name in series})
    several = sum(len(runs) for _, runs in per_entry) > 1
    out = []
    if PER_CLASS in names and CLASS_COUNTS in names:
        rows = plots.per_class_rows(per_entry, PER_CLASS, CLASS_COUNTS)
        if rows:
            spec = plots.line_chart(rows, entries=entries, shown=shown, x_title="training images of the class (log scale)", y_title="per-class test accuracy", log_x=True)
            out.append(Chart("per-class accuracy by class frequency", "Each point is one class of one seed: x its training-set count (log scale), "
                             "y its test accuracy; the line is the mean over seeds.", spec))
        names = [n for n in names if n not in (PER_CLASS, CLASS_COUNTS)]
    names.sort(key=lambda n: (not n.endswith("_per_epoch"), n))
    for name in names:
        length = max((s[name].length for _, runs in per_entry for _, s in runs if name in s), default=0)
        x_title, first = _x_axis(name, length, epochs)
        rows, reduction = plots.series_rows(per_entry, name, first=first)
        if not rows:
            continue
        spec = plots.line_chart(rows, entries=entries, shown=shown, x_title=x_title, y_title=name, integer_x=not reduction, mean_line=several)
        caption = f"{name}: " + ("mean over seeds (line) and each seed (points)" if several else "the stored values")
        if reduction:
            caption += f"; {reduction}"
        out.append(Chart(name, caption, spec))
    return out


# ---------------------------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------------------------


class Site:
    """Renders the pages and downloads one at a time, handing each to `emit(relative path, bytes)`
    as soon as it is made, so memory holds one page, never the whole site."""

    def __init__(self, data: SiteData, env: Any, emit: Callable[[str, bytes], None]):
        self.data = data
        self.env = env
        self.emit = emit
        self.pages = 0

    def page(self, file_name: str, template: str, title: str, crumbs: list[tuple[str, str]] = (), charts: list[Chart] = (), **context: Any) -> None:
        specs = []
        for i, chart in enumerate(charts):
            chart.spec_id = f"chart-{i}"
            specs.append({"id": chart.spec_id, "json": Markup(plots.spec_json(chart.spec))})  # escaped for a script block by spec_json
        text = self.env.get_template(template).render(
            title=title, crumbs=list(crumbs), chart_specs=specs, charts=list(charts), test_name=TEST_NAMES["t"], correction_name=CORRECTION_NAMES["holm"], **context,
        )
        self.emit(file_name, text.encode("utf-8"))
        self.pages += 1

    # -- the whole site ---------------------------------------------------------------------------
    def build(self) -> int:
        """Emit every page and download; the number of pages."""
        d = self.data
        suites = sorted({r["suite"] for r in d.runs.values()})
        boards_by_suite: dict[str, list[Board]] = defaultdict(list)
        for b in d.boards:
            boards_by_suite[b.protocol["suite"]].append(b)
        self.downloads()
        self.index(suites, boards_by_suite)
        for suite in suites:
            self.suite(suite, boards_by_suite[suite])
        for b in d.boards:
            self.board(b)
            for e in b.entries:
                if e.tuned is None:  # a tuned row links to the page of the configuration it selected
                    self.entry(b, e)
        for name in sorted(set(d.methods) | {m for r in d.runs.values() for m in run_methods(r)}):
            self.method(name)
        for run in d.runs.values():
            self.run(run)
        self.aggregate()
        return self.pages

    def downloads(self) -> None:
        from harness.tables import leaderboard_csv, leaderboard_frame, parquet_bytes

        for b in self.data.boards:
            self.emit(board_page(b.protocol, "csv"), leaderboard_csv([b]))
            self.emit(board_page(b.protocol, "parquet"), parquet_bytes(leaderboard_frame([b])))
        self.emit(f"{ALL_BOARDS}.csv", leaderboard_csv(self.data.boards) if self.data.boards else b"")
        self.emit(f"{ALL_BOARDS}.parquet", parquet_bytes(leaderboard_frame(self.data.boards)))

    def _versions(self, suite: str) -> list[str]:
        return sorted({str(r["suite_version"]) for r in self.data.runs.values() if r["suite"] == suite})

    def index(self, suites: list[str], boards_by_suite: dict[str, list[Board]]) -> None:
        d = self.data
        runs = list(d.runs.values())
        methods = sorted(set(d.methods) | {m for r in runs for m in run_methods(r)})
        summary = (f"{len(suites)} suite(s), {len(d.boards)} leaderboard(s), {len(methods)} method(s), {len(runs)} run(s) "
                   f"({sum(r['status'] == 'ok' for r in runs)} ok, {sum(r['status'] == 'diverged' for r in runs)} diverged, "
                   f"{sum(r['status'] not in ('ok', 'diverged') for r in runs)} failed or timed out).")
        suite_parts = []
        for suite in suites:
            suite_runs = [r for r in runs if r["suite"] == suite]
            suite_parts.append({
                "name": suite, "href": suite_page(suite), "boards": boards_rows(d, boards_by_suite[suite]), "card": suite_card(d, suite, self._versions(suite)),
                "summary": f"{len({r['entry'] for r in suite_runs})} method(s) · {len(suite_runs)} run(s) · versions {', '.join(self._versions(suite))}",
            })
        method_rows = []
        for name in methods:
            m = d.methods.get(name)
            method_rows.append(Row([Cell(name, href=method_page(name)), Cell(m.kind if m else "-"), Cell(m.summary if m else "not installed"),
                                    Cell(f"{m.plugin} {m.plugin_version}" if m else "-")]))
        self.page("index.html", "index.html", "harness leaderboards", summary=summary, aggregate_page=AGGREGATE_PAGE, board_count=len(d.boards),
                  suites=suite_parts, boards_headers=BOARDS_HEADERS, methods=method_rows,
                  downloads=[(f"{ALL_BOARDS}.csv", "every leaderboard (CSV)"), (f"{ALL_BOARDS}.parquet", "every leaderboard (Parquet)")])

    def suite(self, suite: str, boards: list[Board]) -> None:
        self.page(suite_page(suite), "suite.html", f"suite {suite}", boards=boards_rows(self.data, boards), boards_headers=BOARDS_HEADERS,
                  card=suite_card(self.data, suite, self._versions(suite)))

    def _per_entry(self, board: Board, entries: list[str]) -> plots.PerEntry:
        runs = self.data.board_runs.get(board_key(board), [])
        by_entry: dict[str, list[tuple[int, dict[str, plots.Series]]]] = defaultdict(list)
        for r in sorted(runs, key=lambda r: (r["seed"], r["run_id"])):
            if r["status"] == "ok" and r["entry"] in entries:
                by_entry[r["entry"]].append((r["seed"], self.data.series.get(r["run_id"], {})))
        return [(e, by_entry[e]) for e in entries if by_entry.get(e)]

    def board(self, b: Board) -> None:
        d = self.data
        p = b.protocol
        runs = d.board_runs.get(board_key(b), [])
        recipe = next((r["spec"].get("recipe") for r in sorted(runs, key=lambda r: r["run_id"])), {})
        protocol = [
            ("suite", Cell(html=Markup('<a href="{}">{}</a> version {}').format(suite_page(p["suite"]), p["suite"], p["suite_version"]))),
            ("scale", Cell(p["scale"])), ("variant", Cell(p["variant"])), ("dataset / model", Cell(f"{p['dataset']} / {p['model']}")),
            ("recipe", Cell(html=Markup("{} <code>{}</code>").format(p["recipe_id"], json.dumps(recipe, sort_keys=True)))),
            ("baseline", Cell(b.baseline, href=method_page(b.baseline)) if b.baseline else Cell("none (suite not installed)")),
        ]
        headers, rows, notes = board_table(d, b)
        entries = [e.method for e in b.entries]
        shown = [e.method for e in b.entries if e.rank == 1][:SHOWN_LEADERS] + ([b.baseline] if b.baseline in entries else [])
        charts = series_charts(self._per_entry(b, entries), epochs=recipe.get("epochs") if isinstance(recipe, dict) else None, shown=list(dict.fromkeys(shown)))
        title = f"{p['suite']} v{p['suite_version']} · scale={p['scale']} · {p['variant']}"
        self.page(board_page(p), "board.html", title, [(suite_page(p["suite"]), p["suite"])], charts, version_note=version_note(d, p), protocol=protocol,
                  headers=headers, rows=rows, notes=notes, failed=failed_rows(runs),
                  downloads=[(board_page(p, "csv"), "this leaderboard (CSV)"), (board_page(p, "parquet"), "(Parquet)")])

    def entry(self, b: Board, e: Entry) -> None:
        d = self.data
        p = b.protocol
        runs = sorted((r for r in d.board_runs.get(board_key(b), []) if r["entry"] == e.method), key=lambda r: (r["seed"], r["run_id"]))
        pm = e.metrics.get(e.primary) or {}
        delta, pv = comparison_text(b, e)
        facts = [
            ("leaderboard", Cell(f"{p['suite']} v{p['suite_version']} · scale={p['scale']} · {p['variant']}", href=board_page(p))),
            ("rank", Cell(str(e.rank) if e.rank is not None else "-")),
            (e.primary, Cell(f"{_mean_std(pm)}  95% CI {ci_text(pm)}")),
            (f"vs {b.baseline or 'baseline'}", Cell(f"Δ {delta}, p {pv}")),
            ("seed disagreement", Cell(disagreement_text(e))),
            ("methods", Cell(links=[(method_page(n), n) for n in sorted({m for r in runs for m in run_methods(r)})])),
        ]
        params, seen = [], set()
        for r in runs:
            for m in r["spec"].get("methods", []):
                if not isinstance(m, dict) or m.get("name") in seen:
                    continue
                seen.add(m.get("name"))
                installed = d.methods.get(m.get("name"))
                defaults = {q.name: q.default for q in installed.params} if installed else {}
                changed = m.get("changed") if isinstance(m.get("changed"), dict) else {}
                for k, v in sorted((m.get("params") or {}).items()):
                    params.append(Row([Cell(m.get("name")), Cell(k), Cell(repr(v)), Cell(repr(defaults[k]) if k in defaults else "-"),
                                       Cell("set" if k in changed else "default", cls="" if k in changed else "muted")], "rank-odd" if k in changed else ""))
        metric_names = _metric_order(b)
        run_rows = []
        runs_note = (f"The first {MAX_ENTRY_RUNS} of its {len(runs):,} runs by seed; each run has its own page (run-<run id>.html), and "
                     f"`harness.runs()` in Python lists them all." if len(runs) > MAX_ENTRY_RUNS else "")
        for r in runs[:MAX_ENTRY_RUNS]:
            values = {n: v for n, v, _ in d.metrics.get(r["run_id"], [])}
            run_rows.append(Row([Cell(r["run_id"], href=run_page(r["run_id"])), num(str(r["seed"]), r["seed"]), Cell(r["status"], cls=f"status-{r['status']}"),
                                 *(num(fmt(values.get(n)), values.get(n)) for n in metric_names),
                                 num("-" if r["duration_s"] is None else f"{r['duration_s']:.1f} s", r["duration_s"])]))
        per_seed = self._per_entry(b, [e.method])
        listed = {r["seed"] for r in runs[:MAX_ENTRY_RUNS]}  # the curves of the runs the page lists
        charts = series_charts([(f"seed {seed}", [(seed, s)]) for seed, s in per_seed[0][1] if seed in listed] if per_seed else [],
                               epochs=(runs[0]["spec"].get("recipe", {}).get("epochs") if runs else None),
                               shown=[f"seed {r['seed']}" for r in runs[:MAX_ENTRY_RUNS]])
        self.page(entry_page(p, e.method), "entry.html", f"{e.method} on {p['suite']} · {p['variant']}",
                  [(suite_page(p["suite"]), p["suite"]), (board_page(p), f"{p['scale']} · {p['variant']}")], charts,
                  facts=facts, params=params, run_headers=["run", "seed", "status", *metric_names, "duration"], runs=run_rows, runs_note=runs_note)

    def method(self, name: str) -> None:
        d = self.data
        m = d.methods.get(name)
        context: dict[str, Any] = {"method_name": name, "installed": m is not None, "facts": [], "params": [], "seen": []}
        if m is not None:
            context["facts"] = [
                ("kind", Cell(m.kind)), ("summary", Cell(m.summary)), ("paper", Cell(m.paper or "-")), ("url", external(m.url) if m.url else Cell("-")),
                ("method version", Cell(m.version)), ("plugin package", Cell(f"{m.plugin} {m.plugin_version}")),
            ]
            context["params"] = [Row([Cell(q.name), Cell(q.type_name), Cell(repr(q.default)), Cell(q.describe_valid()), Cell(q.search.describe() if q.search else "-"), Cell(q.doc)])
                                 for q in m.params]
        else:
            context["seen"] = [json.dumps(json.loads(s), indent=2, sort_keys=True) for s in sorted(
                {json.dumps({k: v for k, v in spec_m.items() if k in ("kind", "version", "params")}, sort_keys=True)
                 for r in d.runs.values() for spec_m in r["spec"].get("methods", []) if isinstance(spec_m, dict) and spec_m.get("name") == name}
            )]
        rows = []
        for b in d.boards:
            runs = d.board_runs.get(board_key(b), [])
            for e in b.entries:
                if e.tuned is not None or not any(r["entry"] == e.method and name in run_methods(r) for r in runs):
                    continue
                pm = e.metrics.get(e.primary) or {}
                delta, pv = comparison_text(b, e)
                p = b.protocol
                rows.append(Row([
                    Cell(f"{p['suite']} v{p['suite_version']}", href=suite_page(p["suite"])),
                    Cell(f"scale={p['scale']} · {p['variant']} · {p['dataset']}/{p['model']} · {p['recipe_id']}", href=board_page(p)),
                    Cell(e.method, href=entry_page(p, e.method)), num(str(e.rank) if e.rank is not None else "-", e.rank), Cell(e.primary),
                    num(_mean_std(pm), pm.get("mean")), num(ci_text(pm), pm.get("ci_low")), Cell(delta), Cell(pv), num(str(e.ok), e.ok), num(str(e.not_ok), e.not_ok),
                ]))
        headers = ["suite", "leaderboard", "entry", "rank", "metric", "mean ± std", "95% CI", "Δ vs baseline", "p vs baseline (corrected)", "n", "failed"]
        self.page(method_page(name), "method.html", f"method {name}", results=rows, results_headers=headers, **context)

    def run(self, r: dict[str, Any]) -> None:
        d = self.data
        key = d.protocol_key(r)
        board = next((b for b in d.boards if board_key(b) == key), None)
        methods = run_methods(r)
        entry = Cell(r["entry"], href=entry_page(board.protocol, r["entry"])) if board and any(e.method == r["entry"] for e in board.entries) else Cell(r["entry"])
        facts = [
            ("run id", Cell(r["run_id"])), ("status", Cell(html=Markup('<span class="status-{0}">{0}</span>').format(r["status"]))),
            ("suite", Cell(html=Markup('<a href="{}">{}</a> version {}').format(suite_page(r["suite"]), r["suite"], r["suite_version"]))),
            ("leaderboard", Cell(f"scale={r['scale']} · {r['variant']}", href=board_page(board.protocol)) if board else Cell("-")),
            ("entry", entry), ("methods", Cell(links=[(method_page(n), n) for n in methods]) if methods else Cell("-")),
            ("non-default hyper-parameters", Cell(", ".join(changed_params(r)) or "defaults")),
            ("seed", Cell(r["seed"])), ("dataset / model", Cell(f"{r['dataset']} / {r['model']}")),
            ("duration", Cell("-" if r["duration_s"] is None else f"{r['duration_s']:.1f} s")),
            ("started / finished", Cell(f"{r['started_at'] or '-'} / {r['finished_at'] or '-'}")),
        ]
        metrics = [Row([Cell(n), num(fmt(v, 6), v), Cell("↑ higher" if hib else "↓ lower")]) for n, v, hib in d.metrics.get(r["run_id"], [])]
        series = d.series.get(r["run_id"], {})
        charts = series_charts([(r["entry"], [(r["seed"], series)])], epochs=r["spec"].get("recipe", {}).get("epochs"), shown=[r["entry"]]) if series else []
        crumbs = [(suite_page(r["suite"]), r["suite"])] + ([(board_page(board.protocol), f"{r['scale']} · {r['variant']}")] if board else [])
        self.page(run_page(r["run_id"]), "run.html", f"run {r['run_id']}", crumbs, charts, facts=facts, error=cut(r["error"]) if r["error"] else None,
                  metrics=metrics, spec=pretty_json(r["spec"]), provenance=pretty_json(r["provenance"]), info=pretty_json(r["info"]) if r["info"] else None)

    def aggregate(self) -> None:
        """One ranking across every board (harness.aggregate), with its diagrams."""
        from harness import aggregate as agg_mod

        d = self.data
        agg = agg_mod.aggregate(d.boards)
        ranking = []
        for s in agg.methods:
            ranking.append(Row([
                Cell(s.method, href=method_page(s.method) if "+" not in s.method else None, cls="method"),
                num(str(s.boards), s.boards), num(f"{s.avg_rank:.2f}", s.avg_rank),
                num(agg_mod._fmt(s.friedman_rank, 2), s.friedman_rank), num(agg_mod._fmt(s.iqm), s.iqm),
                num(agg_mod.interval_text(s), s.iqm_low),
                num("-" if s.p_improvement is None else f"{s.p_improvement:.2f} ({s.improvement_boards})", s.p_improvement),
                *(num(agg_mod._fmt(agg_mod.profile_at(s, t), 2), agg_mod.profile_at(s, t)) for t in agg_mod.TABLE_TAUS),
            ]))
        headers = ["method", "boards", "avg rank", "Friedman rank", "IQM (normalised)", "95% CI (stratified bootstrap)", "P(> baseline) (boards)", *(f"profile τ={t:g}" for t in agg_mod.TABLE_TAUS)]
        cd_svg = None
        if agg.critical_difference is not None:
            ranks = [(s.method, s.friedman_rank) for s in agg.methods if s.friedman_rank is not None]
            cd_svg = Markup(svg_cd_diagram(ranks, agg.critical_difference, title=f"average ranks on {agg.friedman.boards} boards (1 = best)"))  # escaped inside
        charts = []
        profiled = [s for s in agg.methods if s.profile is not None]
        if profiled:
            rows = [{"entry": s.method, "seed": "-", "x": round(float(t), 6), "value": round(float(v), 6)} for s in profiled for t, v in zip(agg.taus, s.profile)]
            names = [s.method for s in profiled]
            spec = plots.line_chart(rows, entries=names, shown=names[:SHOWN_LEADERS], x_title="τ (normalised score: 0 = baseline, 1 = best entry)",
                                    y_title="fraction of boards with score ≥ τ", mean_line=False)
            charts.append(Chart("performance profiles", "For each τ, the fraction of a method's boards on which its mean normalised score is at least τ "
                                "(the best five by average rank drawn first; the legend shows or hides a method).", spec))
        boards = [Row([Cell(t.title, href=board_page(t.protocol)), Cell(t.baseline or "-"), Cell("yes" if t.span is not None else f"no: {t.left_out}")]) for t in agg.tasks]
        self.page(AGGREGATE_PAGE, "aggregate.html", "across suites: one ranking of every method", charts=charts, headline=agg_mod.headline(agg),
                  normalisation=agg_mod.NORMALISATION_NOTE, left_out=agg.notes, ranking=ranking, ranking_headers=headers, friedman_note=agg.friedman_note,
                  cd_svg=cd_svg, boards=boards, footnote=agg_mod.footnote(agg))


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------


@dataclass
class PublishReport:
    out: Path
    pages: int
    runs: int


def _check_out(out: Path) -> None:
    """Refuse an `out` that is a file, or a folder that an earlier publish did not write."""
    if out.exists() and not out.is_dir():
        raise HarnessError(f"out={out} is a file; give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise HarnessError(f"out={out} exists and was not written by `harness publish`; choose an empty or new folder")


def _replace_contents(out: Path, staged: Path) -> None:
    """Empty `out` (an earlier publish's folder, or a new one) and move the staged site into it."""
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for child in sorted(out.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in sorted(staged.iterdir()):
        os.replace(child, out / child.name)


def environment(src: Path) -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(src)), autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False, keep_trailing_newline=True,
    )


def render_site(con: Any, catalog: Any, emit: Callable[[str, bytes], None] | None = None) -> dict[str, bytes]:
    """Every file of the site by relative path (pure: the same database gives the same bytes).
    With `emit`, each file is handed to it as it is made and nothing is kept (the dict is empty)."""
    files: dict[str, bytes] = {}
    emit = emit or files.__setitem__
    src = assets_dir()
    Site(load_site_data(con, catalog), environment(src), emit).build()
    for asset in ASSETS:
        emit(f"assets/{asset}", (src / asset).read_bytes())
    emit(f"assets/{VEGA_ASSET}", vega_bundle())
    emit(MARKER, MARKER_TEXT.encode("utf-8"))
    return files


def publish(results: Path, out: Path, *, catalog: Any = None) -> PublishReport:
    """Write the site for the results folder `results` into `out` (see the module doc).

    Pages are written as they are rendered into a staging folder beside `out`, which replaces
    `out`'s contents only once the whole site is made: memory holds one page at a time, and a
    publish that fails leaves the earlier site as it was."""
    from harness.store import ResultStore

    out = Path(out)
    _check_out(out)
    store = ResultStore(results)  # a missing or unreadable database is built from the result files, with warnings
    if catalog is None:
        from harness.catalog import load_catalog

        catalog = load_catalog()
    staged = out.parent / f".{out.name}.publishing-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    root = staged.resolve()
    pages = 0

    def write(rel: str, data: bytes) -> None:
        nonlocal pages
        path = (staged / rel).resolve()
        if root not in path.parents:  # file names are generated slugs; this cannot happen, so fail loudly
            raise HarnessError(f"refusing to write {rel!r} outside {out}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        pages += rel.endswith(".html")

    try:
        con = store.connect(read_only=True)
        try:
            render_site(con, catalog, emit=write)
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        finally:
            con.close()
        _replace_contents(out, staged)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return PublishReport(out=out, pages=pages, runs=runs)
