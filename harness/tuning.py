"""Tuned versus default: choose each method's configuration on the validation split, never on test.

`harness run ... tune=N` runs every entry at its default configuration and at N configurations
drawn from its methods' declared search distributions (harness.params). On the leaderboard the
configurations of one entry — the same methods with different hyper-parameters — form a tuning
group; its tuned row is the configuration with the best mean *validation* metric over seeds, and
carries that configuration's test numbers. The selection reads nothing but the validation
metric, so a change to test results cannot change which configuration is chosen
(tests/test_tuning.py corrupts the test metric to check it).

The budget of a tuned row is the number of configurations it chose among (the default counted);
rows chosen among different budgets are marked, since more draws buy a better validation score.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_SETTINGS = re.compile(r"\[[^\]]*\]")
TUNED_SUFFIX = " (tuned)"


def base_entry(label: str) -> str:
    """`focal[gamma=1.5]+mixup[alpha=0.4]` -> `focal+mixup`: the entry without its changed settings
    (a method version such as `@2` stays: versions are different methods, never one tuning group)."""
    return _SETTINGS.sub("", label)


def validation_metric_for(primary: str, declared: str | None = None) -> str:
    """The metric configurations are chosen on: the suite's declared validation metric, else
    `val_<primary>` (the convention the built-in suites follow)."""
    return declared or f"val_{primary}"


@dataclass(frozen=True)
class Selection:
    """One tuning group's choice: `selected` (an entry label) had the best mean `metric` among `budget` configurations."""

    base: str
    selected: str
    budget: int
    metric: str
    value: float

    @property
    def label(self) -> str:
        return self.base + TUNED_SUFFIX


def select(validation: dict[str, float | None], higher_is_better: bool, metric: str) -> dict[str, Selection]:
    """Per tuning group with two or more configurations that report `metric`: the configuration
    with its best mean. `validation` maps entry label -> mean validation metric (None or NaN when
    missing: such a configuration is not a candidate). Ties go to the default configuration,
    then to the first label in sort order, so the choice is deterministic."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for label, value in validation.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        groups.setdefault(base_entry(label), []).append((label, float(value)))
    out = {}
    for base, candidates in groups.items():
        if len(candidates) < 2:
            continue
        sign = -1.0 if higher_is_better else 1.0
        label, value = min(candidates, key=lambda c: (sign * c[1], c[0] != base, c[0]))
        out[base] = Selection(base, label, len(candidates), metric, value)
    return out


def budgets_note(selections: list[Selection]) -> str:
    """A warning when a board's tuned rows chose among different numbers of configurations ('' otherwise)."""
    budgets = sorted({s.budget for s in selections})
    if len(budgets) < 2:
        return ""
    return (f"tuned rows chose among different budgets ({', '.join(map(str, budgets))} configurations): "
            "a larger budget buys a better validation score, so compare them with care (†)")


def describe(selection: Selection, budgets_differ: bool) -> str:
    """`focal[gamma=1.5] of 9 by val_top1` (with † when the board's budgets differ)."""
    mark = " †" if budgets_differ else ""
    return f"{selection.selected} of {selection.budget} by {selection.metric}{mark}"


def note(selections: list[Selection]) -> str:
    """The footnote under a board with tuned rows."""
    if not selections:
        return ""
    metric = selections[0].metric
    text = (f"(tuned) = of an entry's configurations (default + tune= draws), the one with the best mean {metric} "
            "over seeds — chosen on the validation split only; its test numbers are shown")
    extra = budgets_note(selections)
    return text + ("\n" + extra if extra else "")


def as_record(selection: Selection | None) -> dict[str, Any]:
    if selection is None:
        return {"tuned_from": None, "tuning_budget": None, "tuning_metric": None}
    return {"tuned_from": selection.selected, "tuning_budget": selection.budget, "tuning_metric": selection.metric}
