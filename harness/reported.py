"""Published numbers a suite or a method declares, and where they apply.

A `Reported` is a number a paper reports for one leaderboard entry and metric, converted to the
harness metric's units, with its source (paper, table, row, the number as printed) and the
setting it belongs to (scale, the suite's axis values, the data set and model). The leaderboard
shows it beside the reproduced mean on the boards of that setting; `harness reproduce` trains the
setting's entries at the paper recipe and judges the difference against `tolerance`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reported:
    """A number a paper reports for one harness entry and metric, in the metric's units.

    - `entry`: the leaderboard entry (e.g. "ldam_drw", or "ce+tent" for a suite that adds its
      baseline loss); it is also what `harness reproduce` passes as `method=`.
    - `value`: None when the source gave no usable figure (unverified).
    - `tolerance`: |reproduced mean - reported| within it counts as reproduced.
    - `comparable=False`: the harness protocol differs from the paper's (`note` says how); shown,
      not judged.
    - `per_corruption`: (corruption, value) pairs when the paper reports per corruption; a
      comparison then averages over the corruptions both cover.
    - Where it applies: `setting` (a title), `scale`, `axes` (the suite's axis values as on the
      command line), `recipe` (recipe values: `dataset`, `model`), and `suite` (needed when a
      method declares it; a suite's own numbers leave it empty).
    """

    entry: str
    metric: str
    value: float | None
    source: str
    tolerance: float | None = None
    comparable: bool = True
    note: str = ""
    per_corruption: tuple[tuple[str, float], ...] = ()
    setting: str = ""
    scale: str = "paper"
    axes: tuple[tuple[str, str], ...] = ()
    recipe: tuple[tuple[str, str], ...] = ()
    suite: str = ""

    @property
    def headline_value(self) -> float | None:
        """The number to show on a board: the value, else the mean over the reported corruptions."""
        if self.value is not None:
            return self.value
        if self.per_corruption:
            return statistics.fmean(v for _, v in self.per_corruption)
        return None

    def applies_to(self, protocol: dict[str, Any], entry: str) -> bool:
        """Whether this number belongs to a board's row: same suite, scale, entry, axis values and
        (where given) data set and model."""
        from harness.leaderboard import _same_value, variant_axes

        if protocol.get("suite") != self.suite or protocol.get("scale") != self.scale or entry != self.entry:
            return False
        axes = variant_axes(str(protocol.get("variant", "")))
        if not all(key in axes and _same_value(axes[key], value) for key, value in self.axes):
            return False
        return all(protocol.get(key) in (None, value) for key, value in self.recipe if key in ("dataset", "model"))


def collect_reported(catalog: Any) -> dict[str, list[Reported]]:
    """Suite name -> every number the installed suites and methods declare for it."""
    from dataclasses import replace

    out: dict[str, list[Reported]] = {}
    for suite in catalog.suites:
        out.setdefault(suite.name, []).extend(replace(r, suite=suite.name) for r in suite.reported)
    for method in catalog.methods:
        for r in method.reported:
            if r.suite:
                out.setdefault(r.suite, []).append(r)
    return out
