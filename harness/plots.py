"""The published site's charts as Vega-Lite specifications (rendered in the reader's browser by
Vega-Embed, from the site's own copy of the Vega libraries: no network).

A board's chart shows every entry but draws only the leaders and the baseline at first; a click
on an entry in the legend shows or hides it, and hovering a point names its entry, seed and value.
Each point is one seed's value; each line is the mean over seeds. Series longer than
`MAX_POINTS` are averaged into `MAX_POINTS` consecutive buckets as they are read (`reduce`), so a
run that stores a million-point curve still makes a page of a few hundred kilobytes and the site
never holds the million points; a chart of many runs shares `MAX_CHART_POINTS` among them (each
run's curve averaged into fewer buckets, or, for thousands of runs, one mean curve per entry), so a
board of thousands of runs stays a bounded page.

Specifications are plain JSON built here in a fixed order (no generated names or counters), so the
same results give the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"  # an identifier only: nothing is fetched
MAX_POINTS = 2000  # per series and seed
MAX_CHART_POINTS = 10_000  # per chart, shared among its runs (a point is ~60 bytes of page: ~600 kB)
MIN_RUN_POINTS = 20  # below this share per run, a chart draws each entry's mean over seeds instead of every run
WIDTH, HEIGHT = 520, 300
SELECTION = "shown"


def downsample(values: Sequence[float | None], limit: int = MAX_POINTS) -> tuple[list[float], list[float | None], bool]:
    """(x, y, whether it was downsampled): x is the 0-based index, or the mean index of a bucket of
    consecutive values whose mean is y (missing values left out; a bucket of none is None)."""
    n = len(values)
    if n <= limit:
        return [float(i) for i in range(n)], list(values), False
    xs, ys = [], []
    for b in range(limit):
        lo, hi = b * n // limit, (b + 1) * n // limit
        chunk = [v for v in values[lo:hi] if v is not None and math.isfinite(v)]
        xs.append((lo + hi - 1) / 2)
        ys.append(math.fsum(chunk) / len(chunk) if chunk else None)
    return xs, ys, True


class Series(NamedTuple):
    """A stored series as it is drawn: x positions, values (bucket means where the series was
    longer than the limit it was reduced to) and the number of values stored."""

    xs: list[float]
    ys: list[float | None]
    length: int

    @property
    def reduced(self) -> bool:
        return len(self.ys) < self.length

    def limited(self, limit: int) -> Series:
        """At most `limit` points: consecutive points averaged (x and y) into `limit` buckets."""
        if len(self.ys) <= limit:
            return self
        _, xs, _ = downsample(self.xs, limit)  # a bucket's x: the mean of its points' x
        _, ys, _ = downsample(self.ys, limit)
        return Series([float(x) for x in xs], ys, self.length)


def reduce(values: Sequence[float | None], limit: int = MAX_POINTS) -> Series:
    """A stored series as drawn: at most `limit` points (see `downsample`)."""
    xs, ys, _ = downsample(values, limit)
    return Series(xs, ys, len(values))


def reduce_stream(rows: Iterable[tuple[int, float | None]], length: int, limit: int = MAX_POINTS) -> Series:
    """`reduce` of a series of `length` values given as (index, value) rows in index order (an
    index not given is a missing value), without holding more than one bucket of it."""
    if length <= limit:
        values: list[float | None] = [None] * length
        for idx, value in rows:
            values[idx] = value
        return reduce(values, limit)
    xs = [(b * length // limit + (b + 1) * length // limit - 1) / 2 for b in range(limit)]
    ys: list[float | None] = [None] * limit
    bucket, chunk = 0, []

    def close() -> None:
        ys[bucket] = math.fsum(chunk) / len(chunk) if chunk else None

    for idx, value in rows:
        b = ((idx + 1) * limit - 1) // length  # the bucket b with b*length//limit <= idx < (b+1)*length//limit
        if b != bucket:
            close()
            bucket, chunk = b, []
        if value is not None and math.isfinite(value):
            chunk.append(value)
    close()
    return Series(xs, ys, length)


def _number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _color(entries: list[str], shown: list[str]) -> dict[str, Any]:
    return {
        "field": "entry", "type": "nominal", "title": "entry (click to show or hide)",
        "scale": {"domain": entries, "scheme": "tableau20"},
        "legend": {"orient": "right", "labelLimit": 240, "symbolType": "stroke", "symbolStrokeWidth": 3},
    }


def _selection(shown: list[str]) -> dict[str, Any]:
    return {"name": SELECTION, "select": {"type": "point", "fields": ["entry"], "toggle": "true", "clear": False}, "bind": "legend",
            "value": [{"entry": e} for e in shown]}


def line_chart(rows: list[dict[str, Any]], *, entries: list[str], shown: list[str], x_title: str, y_title: str, log_x: bool = False,
               integer_x: bool = False, mean_line: bool = True) -> dict[str, Any]:
    """Points (one per seed) and a mean line per entry; rows have entry, seed, x, value."""
    x: dict[str, Any] = {"field": "x", "type": "quantitative", "title": x_title}
    if log_x:
        x["scale"] = {"type": "log"}
    steps = sorted({r["x"] for r in rows})
    if integer_x and len(steps) <= 30:  # one tick per epoch, none between
        x["axis"] = {"format": "d", "values": steps}
    y = {"field": "value", "type": "quantitative", "title": y_title, "scale": {"zero": False}}
    line = {
        "mark": {"type": "line", "strokeWidth": 2, "interpolate": "linear"},
        "params": [_selection(shown)],
        "encoding": {
            "x": x, "y": {**y, "aggregate": "mean"}, "color": _color(entries, shown),
            "opacity": {"condition": {"param": SELECTION, "value": 1, "empty": False}, "value": 0},
        },
    }
    points = {
        "mark": {"type": "point", "filled": True, "size": 36},
        "transform": [{"filter": {"param": SELECTION, "empty": False}}],
        "encoding": {
            "x": x, "y": y, "color": {**_color(entries, shown), "legend": None}, "opacity": {"value": 0.75},
            "tooltip": [{"field": "entry", "type": "nominal"}, {"field": "seed", "type": "ordinal"},
                        {"field": "x", "type": "quantitative", "title": x_title}, {"field": "value", "type": "quantitative", "format": ".4f", "title": y_title}],
        },
    }
    if not mean_line:  # one seed each: the line joins that seed's points
        line["encoding"]["y"] = y
    return {
        "$schema": SCHEMA, "width": WIDTH, "height": HEIGHT, "data": {"values": rows},
        "layer": [line, points], "config": {"font": "system-ui, sans-serif", "view": {"stroke": "#c9ced8"}},
    }


PerEntry = list[tuple[str, list[tuple[int, dict[str, Series]]]]]  # (entry, [(seed, its series by name)])


def series_rows(per_entry: PerEntry, name: str, *, first: int) -> tuple[list[dict[str, Any]], str]:
    """Rows (entry, seed, x, value) of one series over every entry and seed, within
    MAX_CHART_POINTS, and what the caption should say of any reduction ("" where none).

    Every run is drawn while the runs' points fit; otherwise their share of MAX_CHART_POINTS
    each, as long as that leaves a run MIN_RUN_POINTS; beyond that (thousands of runs), each
    entry is drawn as one curve, the mean over its seeds of their curves (bucket by bucket)."""
    curves = [(entry, seed, series[name]) for entry, runs in per_entry for seed, series in runs if name in series]
    if not curves:
        return [], ""
    length = max(c.length for _, _, c in curves)
    limit = MAX_CHART_POINTS // len(curves)
    if limit < MIN_RUN_POINTS and sum(len(c.ys) for _, _, c in curves) > MAX_CHART_POINTS:
        return _entry_mean_rows(curves, first, length)
    rows, drawn = [], 0
    for entry, seed, c in curves:
        c = c.limited(max(1, min(MAX_POINTS, limit)))
        if c.reduced:
            drawn = max(drawn, len(c.ys))
        rows += [{"entry": entry, "seed": seed, "x": x + first, "value": _number(v)} for x, v in zip(c.xs, c.ys) if _number(v) is not None]
    return rows, (f"{length} values per run, drawn as {drawn} bucket means" if drawn else "")


def _entry_mean_rows(curves: list[tuple[str, int, Series]], first: int, length: int) -> tuple[list[dict[str, Any]], str]:
    """One curve per entry: at each bucket, the mean over the entry's seeds of their bucket means."""
    by_entry: dict[str, list[Series]] = {}
    for entry, _, c in curves:
        by_entry.setdefault(entry, []).append(c)
    limit = max(1, min(MAX_POINTS, MAX_CHART_POINTS // len(by_entry)))
    rows = []
    for entry, seeds in by_entry.items():
        reduced = [c.limited(limit) for c in seeds]
        for i in range(max(len(c.ys) for c in reduced)):
            at = [c for c in reduced if i < len(c.ys)]
            ys = [c.ys[i] for c in at if c.ys[i] is not None and math.isfinite(c.ys[i])]
            if ys:
                x = math.fsum(c.xs[i] for c in at) / len(at)
                rows.append({"entry": entry, "seed": f"mean of {len(seeds)}", "x": x + first, "value": _number(math.fsum(ys) / len(ys))})
    return rows, f"{len(curves)} runs: each entry drawn as the mean over its seeds ({length} values per run, at most {limit} points per entry)"


def per_class_rows(per_entry: PerEntry, acc: str, counts: str) -> list[dict[str, Any]]:
    """Rows (entry, seed, x = training images of the class, value = its test accuracy)."""
    rows = []
    for entry, runs in per_entry:
        for seed, series in runs:
            if acc in series and counts in series:
                for a, c in zip(series[acc].ys, series[counts].ys):
                    if _number(a) is not None and c is not None and c > 0:
                        rows.append({"entry": entry, "seed": seed, "x": float(c), "value": _number(a)})
    return rows


def spec_json(spec: dict[str, Any]) -> str:
    """JSON for a `<script type="application/json">` block: `<`, `>` and `&` escaped, so no name
    inside can end the block or open a tag."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
