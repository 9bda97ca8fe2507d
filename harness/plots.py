"""The published site's charts as Vega-Lite specifications (rendered in the reader's browser by
Vega-Embed, from the site's own copy of the Vega libraries: no network).

A board's chart shows every entry but draws only the leaders and the baseline at first; a click
on an entry in the legend shows or hides it, and hovering a point names its entry, seed and value.
Each point is one seed's value; each line is the mean over seeds. Series longer than
`MAX_POINTS` are averaged into `MAX_POINTS` consecutive buckets before they are drawn, so a run
that stores a million-point curve still makes a page of a few hundred kilobytes.

Specifications are plain JSON built here in a fixed order (no generated names or counters), so the
same results give the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"  # an identifier only: nothing is fetched
MAX_POINTS = 2000  # per series and seed
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


def series_rows(per_entry: list[tuple[str, list[tuple[int, dict[str, list[float | None]]]]]], name: str, *, first: int) -> tuple[list[dict[str, Any]], bool]:
    """Rows (entry, seed, x, value) of one series over every entry and seed; whether any was downsampled."""
    rows, reduced = [], False
    for entry, runs in per_entry:
        for seed, series in runs:
            if name not in series:
                continue
            xs, ys, cut = downsample(series[name])
            reduced |= cut
            rows += [{"entry": entry, "seed": seed, "x": x + first, "value": _number(v)} for x, v in zip(xs, ys) if _number(v) is not None]
    return rows, reduced


def per_class_rows(per_entry: list[tuple[str, list[tuple[int, dict[str, list[float | None]]]]]], acc: str, counts: str) -> list[dict[str, Any]]:
    """Rows (entry, seed, x = training images of the class, value = its test accuracy)."""
    rows = []
    for entry, runs in per_entry:
        for seed, series in runs:
            if acc in series and counts in series:
                for a, c in zip(series[acc], series[counts]):
                    if _number(a) is not None and c is not None and c > 0:
                        rows.append({"entry": entry, "seed": seed, "x": float(c), "value": _number(a)})
    return rows


def spec_json(spec: dict[str, Any]) -> str:
    """JSON for a `<script type="application/json">` block: `<`, `>` and `&` escaped, so no name
    inside can end the block or open a tag."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
