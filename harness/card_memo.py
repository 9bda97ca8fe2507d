"""The installed suite cards' facts as data, so commands that only store results need not load plugins.

`harness collect` and `harness pull` take each record's primary metric, metric directions and
baseline from the installed suite card of its (suite, version). Loading the cards means loading
every plugin, and with them torch: seconds and over 500 MB before the first file is read. Any
command that loads the catalog from the entry points (`harness run`, `list`, ...) leaves a memo of
those facts in the cache folder (`$HARNESS_CACHE/cards/<fingerprint>.json`), keyed by the same
fingerprint of the installed plugin code as `harness.grid_memo`; the next collect or pull with the
same plugin code reads the memo instead. The memo is a cache, read as data and checked field by
field: a missing, stale or unreadable one costs only loading the plugins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
FOLDER = "cards"
MAX_MEMO_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class MetricFacts:
    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class CardFacts:
    """What a stored record needs from its suite card: the attributes `harness.suite.Suite` has."""

    name: str
    version: str
    primary: str
    baseline: str | None
    metrics: tuple[MetricFacts, ...]

    def metric(self, name: str) -> MetricFacts:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"suite {self.name} v{self.version} has no metric {name!r}")


def facts_of(suites: Any) -> list[CardFacts]:
    return [
        CardFacts(s.name, str(s.version), s.primary, s.baseline, tuple(MetricFacts(m.name, bool(m.higher_is_better)) for m in s.metrics))
        for s in suites
    ]


def memo_path(cache: Path, fingerprint: str) -> Path:
    return cache / FOLDER / f"{fingerprint[:32]}.json"


def _parse(text: str, fingerprint: str) -> list[CardFacts]:
    """The cards of a memo; ValueError on anything that is not exactly what `write` stores."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("plugins") != fingerprint or not isinstance(data.get("cards"), list):
        raise ValueError("not a card memo of this schema and plugin code")
    cards = []
    for c in data["cards"]:
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("name", "version", "primary")):
            raise ValueError("bad card")
        if not (c.get("baseline") is None or isinstance(c["baseline"], str)) or not isinstance(c.get("metrics"), list):
            raise ValueError("bad baseline or metrics")
        metrics = []
        for m in c["metrics"]:
            if not (isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], bool)):
                raise ValueError("bad metric")
            metrics.append(MetricFacts(m[0], m[1]))
        if c["primary"] not in {m.name for m in metrics}:
            raise ValueError("the primary metric is not among the metrics")
        cards.append(CardFacts(c["name"], c["version"], c["primary"], c["baseline"], tuple(metrics)))
    return cards


def read(cache: Path, fingerprint: str) -> list[CardFacts] | None:
    """The memo's cards, or None when there is none or it is unreadable (a cache: never an error)."""
    path = memo_path(cache, fingerprint)
    try:
        if not path.is_file() or path.stat().st_size > MAX_MEMO_BYTES:
            return None
        return _parse(path.read_text(encoding="utf-8"), fingerprint)
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return None


def write(cache: Path, fingerprint: str, cards: list[CardFacts]) -> None:
    """Store the memo atomically (unless it is there already); a cache that cannot take it only loses the shortcut."""
    path = memo_path(cache, fingerprint)
    if path.is_file():
        return
    data = {"schema": SCHEMA, "plugins": fingerprint,
            "cards": [{"name": c.name, "version": c.version, "primary": c.primary, "baseline": c.baseline,
                       "metrics": [[m.name, m.higher_is_better] for m in c.metrics]} for c in cards]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def remember(catalog: Any, cache: Path) -> None:
    """Leave the memo of a catalog just loaded, when the fingerprint describes it: every plugin
    came through an entry point and none is broken (a broken one is warned about on every load)."""
    from harness.grid_memo import entry_points_only, plugin_fingerprint

    if entry_points_only(catalog) and all(p.ok for p in catalog.plugins.values()):
        write(cache, plugin_fingerprint(), facts_of(catalog.suites))


def installed_cards(cache: Path, load_catalog: Callable[[], Any]) -> list[CardFacts]:
    """The installed suite cards' facts: from the memo of this plugin code, else by `load_catalog()`
    (which leaves the memo for next time)."""
    from harness.grid_memo import plugin_fingerprint

    cards = read(cache, plugin_fingerprint())
    if cards is not None:
        return cards
    catalog = load_catalog()
    remember(catalog, cache)
    return facts_of(catalog.suites)
