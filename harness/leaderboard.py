"""Leaderboards: SQL aggregation over stored runs, statistics, ranking, and rendering (table, markdown, csv, json).

A leaderboard table holds runs of one protocol only: the same suite, suite version, scale,
variant, dataset, model and recipe. Results of different protocols are never ranked together.
Per entry: mean and sample standard deviation over seeds, n, the 95% Student t confidence
interval of the mean, a paired test against the suite's baseline on matching seeds (t-test by
default, `test=wilcoxon` for the signed-rank test) whose p-values are corrected for the board's
multiple comparisons (Holm by default, `correction=bh|none`; the "beats the baseline" mark uses
the corrected p), and how many runs failed or diverged (counted, never silently dropped). Rank:
the rank group of `harness.stats.rank_groups` — entries whose intervals overlap the group
leader's share a rank (statistically tied), so noise does not decide an ordering. Definitions:
harness/stats.py.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from harness import stats, tuning

PROTOCOL_KEYS = ("suite", "suite_version", "scale", "variant", "dataset", "model", "recipe_id")
FORMATS = ("table", "markdown", "csv", "json")
ROWS = ("all", "tuned")  # every configuration, or per tuning group only its default and its tuned row

_ENTRY_KEY = "r.suite, r.suite_version, r.scale, r.variant, r.dataset, r.model, r.recipe_id, r.entry"
# Runs are grouped by 64-bit hashes of their protocol and entry (entry_id) and of those plus the primary metric
# (group_id), computed once per run before the join with `metrics`: a join and aggregation over a million metric rows
# carrying ten text columns costs several times one carrying an integer. `_entries` checks the hashes are distinct.
_ENTRY_ID = "hash(" + _ENTRY_KEY + ", {salt})"
_GROUP_ID = "hash(" + _ENTRY_KEY + ", r.primary_metric, r.primary_higher_is_better, {salt})"

_STATUS_SQL = """
SELECT *, """ + _GROUP_ID + " AS group_id, " + _ENTRY_ID + """ AS entry_id
FROM (
    SELECT suite, suite_version, scale, variant, dataset, model, recipe_id, entry, primary_metric, primary_higher_is_better,
           count(*) FILTER (WHERE status = 'ok') AS ok,
           count(*) FILTER (WHERE status <> 'ok') AS not_ok,
           count(*) FILTER (WHERE status = 'diverged') AS diverged
    FROM runs r WHERE true {where}
    GROUP BY ALL
) r
"""

# MATERIALIZED: otherwise the optimizer computes the hashes after the join, once per metric row
_OK_RUNS = """
WITH r AS MATERIALIZED (
    SELECT r.run_id, r.seed, r.primary_metric, """ + _GROUP_ID + " AS group_id, " + _ENTRY_ID + """ AS entry_id
    FROM runs r WHERE r.status = 'ok' {where}
)
"""

# Per (entry, metric): mean, sample std and n over the entry's ok runs (kind 0), an entry's metrics together in the
# suite's order; per (entry, seed): the primary metric, averaged over that seed's runs, which paired tests compare
# (kind 1). One join of runs with metrics for both.
_AGGREGATES_SQL = _OK_RUNS + """,
j AS MATERIALIZED (
    SELECT r.group_id, r.entry_id, r.seed, m.name = r.primary_metric AS is_primary, m.name, m.value, m.higher_is_better, m.position
    FROM r JOIN metrics m USING (run_id)
)
SELECT 0 AS kind, entry_id, group_id, name AS metric, NULL::INTEGER AS seed, bool_and(higher_is_better) AS higher_is_better,
       avg(value) AS mean, stddev_samp(value) AS std, count(value) AS n, min(position) AS position
FROM j GROUP BY entry_id, group_id, name
UNION ALL
SELECT 1, entry_id, NULL, NULL, seed, NULL, avg(value), NULL, NULL, NULL
FROM j WHERE is_primary AND value IS NOT NULL GROUP BY entry_id, seed
ORDER BY kind, entry_id, position, metric, group_id, seed
"""

# the tests a board offers: the seed-level tests of harness.stats, and McNemar's test on stored per-sample predictions
BOARD_TESTS = (*stats.TESTS, "mcnemar")
PREDICTION_SPLIT = "test"  # the split whose stored predictions McNemar's test and the seed disagreement use
TEST_NAMES = {
    "t": "paired t-test",
    "wilcoxon": f"Wilcoxon signed-rank test (needs ≥ {stats.MIN_WILCOXON_PAIRS} pairs)",
    "mcnemar": "exact McNemar test of per-sample correctness on the stored test predictions, discordant samples pooled over "
    "the matched seeds (treats each seed's samples as independent pairs; entries without stored predictions get none)",
}
CORRECTION_NAMES = {
    "holm": "Holm-adjusted over the board's comparisons with the baseline (family-wise error rate)",
    "bh": "Benjamini–Hochberg-adjusted over the board's comparisons with the baseline (false discovery rate)",
    "none": "not corrected for the board's multiple comparisons",
}
CORRECTION_LABELS = {"holm": "Holm", "bh": "BH", "none": "raw"}


def stats_note(test: str = "t", correction: str = "holm") -> str:
    """The footnote under a board: every statistic in its table, with the test and correction used."""
    return (
        "mean ± std (sample) over seeds; n = runs with status ok; 95% CI = Student t interval mean ± t(0.975, n-1)·std/√n "
        f"('-' for n = 1); Δ = mean paired difference of the primary metric from the suite's baseline on matching seeds "
        f"(pairs = seeds both ran); p = two-sided {TEST_NAMES[test]}, {CORRECTION_NAMES[correction]}; "
        f"▲/▼ = better/worse than the baseline at p < {stats.ALPHA:g} after that correction (uncorrected p in csv/json); "
        "rank = rank group: sorted by mean, an entry shares the rank of the group leader "
        "whose CI its CI overlaps (statistically tied); failed = runs not ok (diverged included), diverged = of which diverged"
    )


STATS_NOTE = stats_note()


@dataclass
class Entry:
    method: str
    primary: str
    higher_is_better: bool
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> mean, std, n, ci_low, ci_high, higher_is_better
    ok: int = 0
    not_ok: int = 0  # failed, timed out or diverged
    diverged: int = 0
    rank: int | None = None  # rank group (see harness.stats.rank_groups)
    seeds: dict[int, float] = field(default_factory=dict)  # seed -> primary metric
    baseline_test: stats.PairedTest | None = None  # None for the baseline itself or when there is none
    p_corrected: float | None = None  # baseline_test.p after the board's multiple-comparison correction
    reported: Any = None  # a published number for this entry at this board's setting (harness.reported.Reported)
    # share of test samples whose predicted class differs between two seeds, mean over seed pairs (stored predictions)
    seed_disagreement: float | None = None
    disagreement_pairs: int = 0  # the seed pairs it averages
    tuned: tuning.Selection | None = None  # set on a tuned row: the configuration it stands for (harness.tuning)

    @property
    def diff_vs_reported(self) -> float | None:
        value = self.reported.headline_value if self.reported is not None else None
        mean = self.primary_mean
        return None if value is None or mean is None else mean - value

    @property
    def primary_mean(self) -> float | None:
        m = self.metrics.get(self.primary)
        return m["mean"] if m and m["mean"] is not None else None

    @property
    def interval(self) -> stats.Interval | None:
        m = self.metrics.get(self.primary)
        if not m or m.get("ci_low") is None:
            return None
        return stats.Interval(m["ci_low"], m["ci_high"])

    @property
    def versus_baseline(self) -> str | None:
        """'better' or 'worse' when the corrected p < ALPHA (by the sign of Δ and the metric's
        direction), 'tied' when not, None without a test."""
        test = self.baseline_test
        if test is None or self.p_corrected is None or test.mean_diff is None:
            return None
        if self.p_corrected >= stats.ALPHA or test.mean_diff == 0:
            return "tied"
        return "better" if (test.mean_diff > 0) == self.higher_is_better else "worse"

    @property
    def beats_baseline(self) -> bool | None:
        verdict = self.versus_baseline
        return None if verdict is None else verdict == "better"


@dataclass
class Board:
    protocol: dict[str, Any]
    entries: list[Entry]
    baseline: str | None = None  # the suite's baseline entry name (None if the suite is not installed)
    test: str = "t"  # the paired test against the baseline (harness.stats.TESTS)
    correction: str = "holm"  # the multiple-comparison correction of its p-values (harness.stats.CORRECTIONS)
    selections: list[tuning.Selection] = field(default_factory=list)  # its tuning groups' choices (harness.tuning)

    def tuning_text(self, e: Entry) -> str:
        """The tuning column: what a tuned row chose among, 'default' for its group's default row."""
        if e.tuned is not None:
            return tuning.describe(e.tuned, bool(tuning.budgets_note(self.selections)))
        if any(s.base == e.method for s in self.selections):
            return "default"
        return "-"

    @property
    def title(self) -> str:
        p = self.protocol
        return f"{p['suite']} v{p['suite_version']} | scale={p['scale']} | {p['variant']} | {p['dataset']} / {p['model']} | recipe {p['recipe_id']}"

    @property
    def has_baseline(self) -> bool:
        return self.baseline is not None and any(e.method == self.baseline and e.seeds for e in self.entries)


def _clean(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def installed_baselines() -> dict[str, str]:
    """Suite name -> baseline entry, from the installed suites (a suite not installed has none)."""
    from harness.catalog import load_catalog

    return {s.name: s.baseline for s in load_catalog().suites}


def build_boards(
    con: Any, *, suite: str | None = None, scale: str | None = None, variant: str | None = None, baselines: dict[str, str] | None = None,
    test: str = "t", correction: str = "holm", rows: str = "all", validation_metrics: dict[str, str] | None = None,
) -> list[Board]:
    """Every protocol's leaderboard. `baselines` maps suite -> baseline entry (default: what the
    runs recorded; the installed suites' only for suites whose runs recorded none). `test` and
    `correction` choose the paired test against the baseline and its multiple-comparison correction.
    Entries run at several configurations (`tune=N`, or a sweep) get a tuned row each: the
    configuration chosen on the validation metric (`validation_metrics`: suite -> metric, default
    `val_<primary>`; harness.tuning); `rows="tuned"` keeps of such a group only its default and tuned rows."""
    if rows not in ROWS:
        raise ValueError(f"unknown rows {rows!r}; expected one of {', '.join(ROWS)}")
    if test not in BOARD_TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(BOARD_TESTS)}")
    if correction not in stats.CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of {', '.join(stats.CORRECTIONS)}")
    if baselines is None:
        try:
            baselines = dict(con.execute("SELECT suite, min(baseline) FROM runs WHERE baseline IS NOT NULL GROUP BY suite").fetchall())
        except duckdb.Error:  # a database from before runs recorded their baseline (opened read-only)
            baselines = {}
        missing = {r[0] for r in con.execute("SELECT DISTINCT suite FROM runs").fetchall()} - set(baselines)
        if missing:
            baselines = {**installed_baselines(), **baselines}
    where, params = "", []
    for column, value in (("suite", suite), ("scale", scale), ("variant", variant)):
        if value is not None:
            where += f" AND r.{column} = ?"
            params.append(value)
    boards, groups, entry_ids, salt = _entries(con, where, params)
    _attach_aggregates(con.execute(_AGGREGATES_SQL.format(where=where, salt=salt), params).fetchnumpy(), groups, entry_ids)
    has_predictions = _has_predictions(con)
    if has_predictions:
        for row in con.execute(_DISAGREEMENT_SQL.format(where=where), [PREDICTION_SPLIT, *params]).fetchall():
            key, entry, pairs, share = tuple(row[:7]), row[7], row[8], row[9]
            if key in boards and entry in boards[key]:
                boards[key][entry].seed_disagreement, boards[key][entry].disagreement_pairs = _clean(share), int(pairs)
    out = []
    for key in sorted(boards, key=lambda k: tuple(str(x) for x in k)):
        entries, selections = _with_tuned_rows(list(boards[key].values()), (validation_metrics or {}).get(key[0]), rows)
        entries.sort(key=lambda e: e.method)
        board = Board(dict(zip(PROTOCOL_KEYS, key)), entries, baselines.get(key[0]), test=test, correction=correction, selections=selections)
        _rank(entries)
        if test == "mcnemar":
            _mcnemar_with_baseline(con, board, has_predictions)
        else:
            _compare_with_baseline(board)
        entries.sort(key=lambda e: (e.rank is None, e.rank or 0, _best_first(e), e.method))
        out.append(board)
    return out


_HASH_SALTS = (0, 1, 2, 3)  # a collision of 64-bit hashes among the entries is astronomically unlikely; another salt resolves it


def _entries(con: Any, where: str, params: list[Any]) -> tuple[dict[tuple, dict[str, Entry]], dict[int, Entry], dict[int, Entry], int]:
    """Every protocol's entries with their run counts (protocol -> entry name -> Entry), the same
    entries by group_id and by entry_id (see _ENTRY_ID), and the salt that keeps those ids distinct."""
    for salt in _HASH_SALTS:
        rows = con.execute(_STATUS_SQL.format(where=where, salt=salt), params).fetchall()
        boards: dict[tuple, dict[str, Entry]] = {}
        groups: dict[int, Entry] = {}
        entry_ids: dict[int, Entry] = {}
        for row in rows:
            key, (entry, primary, hib, ok, not_ok, diverged, group_id, entry_id) = row[:7], row[7:]
            groups[group_id] = entry_ids[entry_id] = boards.setdefault(key, {})[entry] = Entry(entry, primary, bool(hib), ok=ok, not_ok=not_ok, diverged=diverged)
        names = sum(map(len, boards.values()))
        if len(groups) == len(rows) and len(entry_ids) == names:  # each row is a distinct group, each name a distinct entry
            break
    else:  # four independent collisions of 64-bit hashes
        raise RuntimeError("leaderboard entries could not be told apart by their hashes")
    if len(rows) > names:  # an entry's runs name two primary metrics: its later row replaced the earlier
        groups = {row[13]: boards[row[:7]][row[7]] for row in rows}
        entry_ids = {row[14]: boards[row[:7]][row[7]] for row in rows}
    return boards, groups, entry_ids, salt


def _column(values: Any) -> np.ndarray:
    """A fetched numeric column as a float array, NULL as NaN."""
    return np.ma.filled(np.ma.asarray(values, dtype=float), np.nan)


def _attach_aggregates(columns: dict[str, Any], groups: dict[int, Entry], entry_ids: dict[int, Entry]) -> None:
    """The rows of _AGGREGATES_SQL into their entries: each metric's summary with its confidence
    interval (kind 0), then each seed's primary metric (kind 1). Both come ordered by entry, so an
    entry's dictionaries lie together in memory (rendering thousands of rows reads them entry by entry)."""
    split = int(np.count_nonzero(np.ma.getdata(columns["kind"]) == 0))
    means = _column(columns["mean"])
    mean, std, n = means[:split], _column(columns["std"][:split]), np.ma.getdata(columns["n"][:split]).astype(np.int64)
    low, high = stats.confidence_intervals(mean, std, n)
    rows = zip(np.ma.getdata(columns["group_id"][:split]).tolist(), columns["metric"][:split].tolist(),
               np.ma.getdata(columns["higher_is_better"][:split]).tolist(), _optional(mean), _optional(std), n.tolist(), _optional(low), _optional(high))
    metrics_of = {group_id: e.metrics for group_id, e in groups.items()}
    for group_id, metric, hib, mean_value, std_value, count, ci_low, ci_high in rows:
        metrics_of[group_id][metric] = {"mean": mean_value, "std": std_value, "n": count, "ci_low": ci_low, "ci_high": ci_high, "higher_is_better": hib}
    keep = ~np.isnan(means[split:])  # a NaN primary metric is no seed to compare
    ids, seeds, values = np.ma.getdata(columns["entry_id"][split:])[keep], np.ma.getdata(columns["seed"][split:])[keep], means[split:][keep]
    seed_list, value_list = seeds.astype(np.int64).tolist(), values.tolist()
    for entry_id, a, b in _runs_of(ids):
        entry_ids[entry_id].seeds.update(zip(seed_list[a:b], value_list[a:b]))


def _runs_of(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(id, start, stop) of each run of equal ids in an array."""
    if not len(ids):
        return []
    starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
    return list(zip(ids[starts[:-1]].tolist(), starts, starts[1:]))


def _optional(values: np.ndarray) -> list[float | None]:
    """A float array as a list, NaN as None."""
    return [None if x != x else x for x in values.tolist()]


# per entry: the share of test samples whose predictions differ between two of its seeds, over all seed pairs
_DISAGREEMENT_SQL = """
WITH p AS (
    SELECT r.suite, r.suite_version, r.scale, r.variant, r.dataset, r.model, r.recipe_id, r.entry, r.seed, p.idx, p.pred
    FROM runs r JOIN predictions p USING (run_id)
    WHERE r.status = 'ok' AND p.split = ? {where}
)
SELECT a.suite, a.suite_version, a.scale, a.variant, a.dataset, a.model, a.recipe_id, a.entry,
       count(DISTINCT (a.seed, b.seed)) AS pairs, avg(CAST(a.pred <> b.pred AS DOUBLE)) AS disagreement
FROM p a JOIN p b ON a.suite = b.suite AND a.suite_version = b.suite_version AND a.scale = b.scale AND a.variant = b.variant
    AND a.dataset IS NOT DISTINCT FROM b.dataset AND a.model IS NOT DISTINCT FROM b.model AND a.recipe_id = b.recipe_id
    AND a.entry = b.entry AND a.idx = b.idx AND a.seed < b.seed
GROUP BY ALL
"""

# per entry and matched seed: the samples only it gets right (b) and only the baseline gets right (c)
_MCNEMAR_SQL = """
WITH p AS (
    SELECT r.entry, r.seed, p.idx, p.pred = p.label AS correct
    FROM runs r JOIN predictions p USING (run_id)
    WHERE r.status = 'ok' AND p.split = ? AND r.suite = ? AND r.suite_version = ? AND r.scale = ? AND r.variant = ?
      AND r.dataset IS NOT DISTINCT FROM ? AND r.model IS NOT DISTINCT FROM ? AND r.recipe_id = ?
)
SELECT e.entry, count(DISTINCT e.seed) AS seeds,
       count(*) FILTER (WHERE e.correct AND NOT b.correct) AS only_entry,
       count(*) FILTER (WHERE b.correct AND NOT e.correct) AS only_baseline
FROM p e JOIN p b ON b.entry = ? AND e.seed = b.seed AND e.idx = b.idx
WHERE e.entry <> ?
GROUP BY e.entry
"""


def _with_tuned_rows(entries: list[Entry], declared: str | None, rows: str) -> tuple[list[Entry], list[tuning.Selection]]:
    """The board's entries plus one tuned row per tuning group (harness.tuning.select on the
    validation metric's means alone); with rows="tuned", a group's other configurations are left out."""
    if not entries:
        return entries, []
    metric = tuning.validation_metric_for(entries[0].primary, declared)
    means = {e.method: (e.metrics.get(metric) or {}).get("mean") for e in entries}
    hib = next((e.metrics[metric]["higher_is_better"] for e in entries if metric in e.metrics), True)
    selections = sorted(tuning.select(means, hib, metric).values(), key=lambda s: s.base)
    if not selections:
        return entries, []
    by_label = {e.method: e for e in entries}
    tuned = []
    for sel in selections:
        chosen = by_label[sel.selected]
        tuned.append(Entry(sel.label, chosen.primary, chosen.higher_is_better, metrics=dict(chosen.metrics), ok=chosen.ok, not_ok=chosen.not_ok,
                           diverged=chosen.diverged, seeds=dict(chosen.seeds), seed_disagreement=chosen.seed_disagreement,
                           disagreement_pairs=chosen.disagreement_pairs, tuned=sel))
    if rows == "tuned":
        grouped = {s.base for s in selections}
        entries = [e for e in entries if tuning.base_entry(e.method) not in grouped or e.method == tuning.base_entry(e.method)]
    return [*entries, *tuned], selections


def _has_predictions(con: Any) -> bool:
    """Whether the database holds per-sample predictions (a database from before it could has no such table)."""
    try:
        return con.execute("SELECT count(*) > 0 FROM (SELECT 1 FROM predictions LIMIT 1)").fetchone()[0]
    except duckdb.Error:
        return False


def _mcnemar_with_baseline(con: Any, board: Board, has_predictions: bool) -> None:
    """McNemar's test of each entry against the baseline on their stored test predictions (pooled
    over matched seeds); Δ is still the mean paired difference of the primary metric."""
    base = next((e for e in board.entries if e.method == board.baseline), None)
    if base is None:
        return
    counts: dict[str, tuple[int, int, int]] = {}
    if has_predictions:
        p = board.protocol
        rows = con.execute(_MCNEMAR_SQL, [PREDICTION_SPLIT, *(p[k] for k in PROTOCOL_KEYS), base.method, base.method]).fetchall()
        counts = {entry: (int(seeds), int(b), int(c)) for entry, seeds, b, c in rows}
    compared = [e for e in board.entries if e is not base and e.seeds]
    for e in compared:
        diffs = [e.seeds[s] - base.seeds[s] for s in sorted(set(e.seeds) & set(base.seeds))]
        mean = math.fsum(diffs) / len(diffs) if diffs else None
        if e.method not in counts:
            e.baseline_test = stats.PairedTest(0, mean, None, None, "mcnemar")
            continue
        seeds, b, c = counts[e.method]
        test = stats.mcnemar_test([True] * b + [False] * c, [False] * b + [True] * c)
        e.baseline_test = stats.PairedTest(seeds, mean, test.statistic, test.p, "mcnemar")
    corrected = stats.correct_p_values([e.baseline_test.p for e in compared], board.correction)
    for e, p_value in zip(compared, corrected):
        e.p_corrected = p_value


def attach_reported(boards: list[Board], reported: dict[str, list[Any]]) -> None:
    """Put on each row the published number (harness.reported.collect_reported) that applies to its
    board's setting and entry, for the board's primary metric."""
    for board in boards:
        for e in board.entries:
            for r in reported.get(board.protocol["suite"], ()):
                if r.metric == e.primary and r.headline_value is not None and r.applies_to(board.protocol, e.method):
                    e.reported = r
                    break


def _best_first(e: Entry) -> float:
    mean = e.primary_mean or 0.0
    return -mean if e.higher_is_better else mean


def _rank(entries: list[Entry]) -> None:
    scored, items = [], []
    for e in entries:  # Entry.primary_mean and Entry.interval, read once
        m = e.metrics.get(e.primary)
        if m and m["mean"] is not None:
            scored.append(e)
            items.append((m["mean"], None if m.get("ci_low") is None else stats.Interval(m["ci_low"], m["ci_high"])))
    if not scored:
        return
    ranks = stats.rank_groups(items, higher_is_better=scored[0].higher_is_better)
    for e, rank in zip(scored, ranks):
        e.rank = rank


def _compare_with_baseline(board: Board) -> None:
    base = next((e for e in board.entries if e.method == board.baseline), None)
    if base is None:
        return
    compared = [e for e in board.entries if e is not base and e.seeds]
    for e, test in zip(compared, stats.paired_tests([e.seeds for e in compared], base.seeds, board.test)):
        e.baseline_test = test
    # the board's comparisons with its baseline are one family
    corrected = stats.correct_p_values([e.baseline_test.p for e in compared], board.correction)
    for e, p in zip(compared, corrected):
        e.p_corrected = p


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _metric_order(board: Board) -> list[str]:
    """The board's metrics in order of first appearance down its entries, the primary metric first."""
    names = list(dict.fromkeys(itertools.chain.from_iterable(e.metrics for e in board.entries)))
    primary = board.entries[0].primary if board.entries else None
    return sorted(names, key=lambda n: n != primary)  # stable: the others keep their order


def fmt_value(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cell(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    mean, std = m["mean"], m["std"]
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def ci_text(m: dict[str, Any] | None) -> str:
    if not m or m.get("ci_low") is None:
        return "-"
    return f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


MARKS = {"better": " ▲", "worse": " ▼"}


def comparison_text(board: Board, e: Entry) -> tuple[str, str]:
    """(Δ vs baseline, corrected p-value with its mark and the number of pairs) as shown in tables."""
    if board.baseline is None:
        return "-", "-"
    if e.method == board.baseline:
        return "baseline", "baseline"
    test = e.baseline_test
    if test is None or test.mean_diff is None:
        return "-", "-"
    delta = f"{test.mean_diff:+.4f}"
    if test.n_pairs == 0:  # McNemar without stored predictions of both: Δ only
        return delta, "- (no predictions)"
    return delta, f"{fmt_p(e.p_corrected)}{MARKS.get(e.versus_baseline or '', '')} (n={test.n_pairs})"


def p_header(board: Board) -> str:
    """The p column's heading: against whom, by which test, with which correction."""
    return f"p vs {board.baseline or 'baseline'} ({board.test}, {CORRECTION_LABELS[board.correction]})"


def _rows(board: Board) -> tuple[list[str], list[list[Any]]]:
    metrics = _metric_order(board)
    arrows: dict[str, str] = {}  # a metric's direction as its last entry records it
    for e in reversed(board.entries):
        for name, m in e.metrics.items():
            if name not in arrows:
                arrows[name] = "↑" if m["higher_is_better"] else "↓"
        if len(arrows) == len(metrics):
            break
    primary = metrics[0] if metrics else None
    base = board.baseline or "baseline"
    headers = ["rank", "method", *(f"{n} {arrows.get(n, '')}".strip() for n in metrics[:1]), "95% CI", f"Δ vs {base}", p_header(board)]
    headers += [*(f"{n} {arrows.get(n, '')}".strip() for n in metrics[1:]), "n", "failed", "diverged"]
    with_reported = any(e.reported is not None for e in board.entries)
    if with_reported:
        headers[6:6] = ["reported", "Δ reported"]
    with_disagreement = has_disagreement(board)
    if with_disagreement:
        headers.append("seed disagreement")
    if board.selections:
        headers.insert(2, "tuning")
    rows = []
    others = metrics[1:]
    for e in board.entries:
        delta, p = comparison_text(board, e)
        if primary:
            m = e.metrics.get(primary)
            row = [e.rank if e.rank is not None else "-", e.method, _cell(m), ci_text(m), delta, p]
        else:
            row = [e.rank if e.rank is not None else "-", e.method, "-", delta, p]
        row += [_cell(e.metrics.get(n)) for n in others]
        row += (e.ok, e.not_ok, e.diverged)
        if with_reported:
            r = e.reported
            marker = "" if r is None or r.comparable else " *"
            reported_text = "-" if r is None else fmt_value(r.headline_value) + marker
            diff = e.diff_vs_reported
            row[6:6] = [reported_text, "-" if diff is None else f"{diff:+.4f}"]
        if with_disagreement:
            row.append(disagreement_text(e))
        if board.selections:
            row.insert(2, board.tuning_text(e))
        rows.append(row)
    return headers, rows


def disagreement_text(e: Entry) -> str:
    """The share of test samples two seeds of an entry predict differently, with how many seed pairs."""
    return "-" if e.seed_disagreement is None else f"{e.seed_disagreement:.4f} ({e.disagreement_pairs} pair{'s' if e.disagreement_pairs != 1 else ''})"


DISAGREEMENT_NOTE = (
    "seed disagreement = share of test samples whose predicted class differs between two seeds of the entry, "
    "mean over its seed pairs (from the stored per-sample predictions)"
)


def has_disagreement(board: Board) -> bool:
    return any(e.seed_disagreement is not None for e in board.entries)


def reported_note(board: Board) -> str:
    """The sources of a board's reported numbers, numbered as they appear."""
    lines = []
    for e in board.entries:
        r = e.reported
        if r is None:
            continue
        text = f"reported for {e.method}: {r.source}"
        if not r.comparable:
            text += f" (* protocol differs: {r.note})" if r.note else " (* protocol differs)"
        lines.append(text)
    return "\n".join(lines)


def to_records(boards: list[Board]) -> list[dict[str, Any]]:
    """One object per leaderboard row (entry), keyed on the primary metric, with all metrics."""
    out = []
    for b in boards:
        for e in b.entries:
            p = e.metrics.get(e.primary, {})
            test = e.baseline_test
            out.append(
                {
                    **b.protocol,
                    "method": e.method,
                    "metric": e.primary,
                    "higher_is_better": e.higher_is_better,
                    "mean": p.get("mean"),
                    "std": p.get("std"),
                    "n": p.get("n", 0),
                    "ci_low": p.get("ci_low"),
                    "ci_high": p.get("ci_high"),
                    "rank": e.rank,
                    "baseline": b.baseline,
                    "diff_vs_baseline": test.mean_diff if test else None,
                    "p_vs_baseline": test.p if test else None,
                    "test": b.test,
                    "correction": b.correction,
                    "p_vs_baseline_corrected": e.p_corrected,
                    "beats_baseline": e.beats_baseline,
                    "n_pairs": test.n_pairs if test else 0,
                    "failed": e.not_ok,
                    "diverged": e.diverged,
                    "seeds": {str(k): v for k, v in sorted(e.seeds.items())},
                    "reported": e.reported.headline_value if e.reported is not None else None,
                    "reported_source": e.reported.source if e.reported is not None else None,
                    "reported_comparable": e.reported.comparable if e.reported is not None else None,
                    "diff_vs_reported": e.diff_vs_reported,
                    "seed_disagreement": e.seed_disagreement,
                    **tuning.as_record(e.tuned),
                    "metrics": e.metrics,
                }
            )
    return out


def finite_or_null(value: Any) -> Any:
    """JSON has no NaN or Infinity (a mean of values near 1e308 overflows): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# filters on a suite's own axes (`harness leaderboard setting=episodic`)
# ---------------------------------------------------------------------------------------------


def variant_axes(label: str) -> dict[str, str]:
    """`"noise=sym,rate=0.5"` -> `{"noise": "sym", "rate": "0.5"}` (the label `RunSpec.variant_label` writes)."""
    if label == "default":
        return {}
    pairs = (part.partition("=") for part in label.split(","))
    return {key: value for key, sep, value in pairs if sep}


def _same_value(stored: str, wanted: str) -> bool:
    if stored == wanted or stored.lower() == wanted.lower():
        return True
    try:
        return float(stored) == float(wanted)  # ratio=100 matches 100.0, rate=.5 matches 0.5
    except ValueError:
        return False


def axes_match(label: str, wanted: dict[str, list[str]]) -> bool:
    """Whether a board's variant has, for every wanted axis, one of the wanted values."""
    axes = variant_axes(label)
    return all(key in axes and any(_same_value(axes[key], v) for v in values) for key, values in wanted.items())


_UNSAFE_CELL = ("\n", "\r", "\x1b", "\t")  # multi-line, ANSI-coloured or tabbed text: left to tabulate's own handling


@functools.cache
def _wide_chars() -> bool:
    """Whether tabulate measures text with wcwidth (wide and combining characters) rather than len."""
    import importlib.util

    return importlib.util.find_spec("wcwidth") is not None


def text_table(rows: list[list[Any]], headers: list[str], tablefmt: str) -> str:
    """What `tabulate(rows, headers, tablefmt, disable_numparse=True)` gives for the "simple" and
    "github" formats (every column left-aligned text, cells stripped), written directly: a board
    of thousands of entries is laid out in a few milliseconds instead of tabulate's per-cell type
    inference. Text tabulate treats specially (several lines, ANSI codes, tabs, or non-ASCII
    where it measures width with wcwidth) goes to tabulate itself."""
    cells = [["" if v is None else str(v).strip() for v in row] for row in rows]
    text = "".join(headers) + "".join(itertools.chain.from_iterable(cells))  # a character is in a cell iff it is in their concatenation
    if (tablefmt not in ("simple", "github") or not cells or any(len(row) != len(headers) for row in cells)
            or any(ch in text for ch in _UNSAFE_CELL) or (_wide_chars() and not text.isascii())):
        from tabulate import tabulate

        return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
    widths = [max(len(h) + 2, *map(len, column)) for h, column in zip(headers, zip(*cells))]  # + 2: tabulate's minimum padding of a header
    if tablefmt == "simple":
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [line.format(*headers).rstrip(), "  ".join("-" * w for w in widths)]
        lines += [line.format(*row).rstrip() for row in cells]
    else:
        line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
        lines = [line.format(*headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [line.format(*row) for row in cells]
    return "\n".join(lines)


def render(boards: list[Board], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(finite_or_null(to_records(boards)), indent=2, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        metric_names: list[str] = []
        for b in boards:
            for name in _metric_order(b):
                if name not in metric_names:
                    metric_names.append(name)
        writer = csv.writer(buf)
        extra = ("ci_low", "ci_high", "baseline", "diff_vs_baseline", "p_vs_baseline", "n_pairs", "test", "correction", "p_vs_baseline_corrected", "beats_baseline",
                 "reported", "diff_vs_reported", "seed_disagreement", "tuned_from", "tuning_budget")
        writer.writerow([*PROTOCOL_KEYS, "rank", "method", "n", "failed", "diverged", *extra, *(f"{n}_{s}" for n in metric_names for s in ("mean", "std"))])
        for record, (b, e) in zip(to_records(boards), ((board, e) for board in boards for e in board.entries)):
            values = []
            for n in metric_names:
                m = e.metrics.get(n, {})
                values += [m.get("mean"), m.get("std")]
            values = [*(record[k] for k in extra), *values]
            writer.writerow([*(b.protocol[k] for k in PROTOCOL_KEYS), e.rank, e.method, e.ok, e.not_ok, e.diverged, *("" if v is None else v for v in values)])
        return buf.getvalue()
    tablefmt = {"table": "simple", "markdown": "github"}[fmt]
    parts = []
    for b in boards:
        headers, rows = _rows(b)
        heading = f"### {b.title}" if fmt == "markdown" else b.title
        note = stats_note(b.test, b.correction)
        sources = reported_note(b)
        if sources:
            note += "\n" + sources
        if has_disagreement(b):
            note += "\n" + DISAGREEMENT_NOTE
        if b.selections:
            note += "\n" + tuning.note(b.selections)
        parts.append(f"{heading}\n\n{text_table(rows, headers, tablefmt)}\n\n{note}\n")
    return "\n".join(parts)
