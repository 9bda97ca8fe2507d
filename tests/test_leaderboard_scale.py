"""The leaderboard's fast path against straightforward reference computations.

`build_boards` groups runs by hashes of their protocol and entry, aggregates every metric and the
per-seed primary metric in one query, computes intervals with arrays, and lays tables out without
tabulate. Each test here recomputes what a board shows the plain way (per run, in Python, or with
scipy) on small random stores with ties, missing and repeated seeds, failed and diverged runs,
NULL and NaN metrics, several suites, versions, scales and variants, and tuned
entries, and checks the board agrees.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import duckdb
import numpy as np
import pytest

from harness import leaderboard, stats
from harness.leaderboard import build_boards, render, text_table
from harness.store import _DDL, SAFE_DUCKDB_CONFIG

METRICS = {  # name -> (position, higher is better) for the "long_tail" suite; "other" uses err as its primary
    "top1": (0, True), "val_top1": (1, True), "few_shot": (2, True), "ece": (3, False),
}
ENTRIES = ("ce", "m0", "focal", "focal[gamma=1.5]", "focal[gamma=3]", "ldam", "tie_a", "tie_b", "solo")
RUN_COLUMNS = ("run_id", "suite", "suite_version", "scale", "variant", "entry", "seed", "dataset", "model", "recipe_id", "primary_metric",
               "primary_higher_is_better", "status", "spec", "provenance", "record_digest", "baseline")


def _value(rng: random.Random) -> float | None:
    r = rng.random()
    if r < 0.04:
        return None
    if r < 0.07:
        return math.nan  # not stored by harness itself, but a database may hold it: the mean and std are undefined
    return round(rng.random(), 2)  # two decimals: equal values and equal means happen


def random_store(seed: int) -> tuple[duckdb.DuckDBPyConnection, list[dict], list[tuple]]:
    """An in-memory results database of a few hundred runs, and the runs and metric rows it holds."""
    rng = random.Random(seed)
    runs: list[dict] = []
    metric_rows: list[tuple] = []
    protocols = [(suite, version, scale, variant, dataset) for suite in ("long_tail", "other") for version in ("1", "2") for scale in ("tiny", "small")
                 for variant in ("ratio=10", "ratio=100") for dataset in ("mnist5k", None)]
    for suite, version, scale, variant, dataset in rng.sample(protocols, 6):
        primary, hib = ("top1", True) if suite == "long_tail" else ("err", False)
        for entry in rng.sample(ENTRIES, rng.randint(3, len(ENTRIES))):
            for run_seed in rng.sample(range(6), rng.randint(1, 6)):  # missing seeds
                for _ in range(rng.choice((1, 1, 1, 2))):  # now and then two runs of one seed
                    status = rng.choices(("ok", "failed", "diverged", "timeout"), (0.8, 0.08, 0.08, 0.04))[0]
                    run_id = f"{len(runs):016x}"
                    runs.append({"run_id": run_id, "suite": suite, "suite_version": version, "scale": scale, "variant": variant, "entry": entry,
                                 "seed": run_seed, "dataset": dataset, "model": "small_cnn", "recipe_id": "r1", "primary_metric": primary,
                                 "primary_higher_is_better": hib, "status": status, "spec": "{}", "provenance": "{}", "record_digest": run_id,
                                 "baseline": "ce" if suite == "long_tail" else "m0"})
                    if status != "ok":
                        continue
                    names = {**METRICS, **({"err": (0, False)} if suite == "other" else {})}
                    if suite == "other":
                        names.pop("top1")
                    shared = _value(rng)
                    for name, (position, metric_hib) in names.items():
                        if rng.random() < 0.05:
                            continue  # a run without this metric
                        value = shared if entry.startswith("tie_") else _value(rng)  # tie_a and tie_b: the same values
                        metric_rows.append((run_id, name, value, metric_hib, position))
    con = duckdb.connect(":memory:", config=SAFE_DUCKDB_CONFIG)
    con.execute(_DDL)
    con.executemany(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                    [[r[c] for c in RUN_COLUMNS] for r in runs])
    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", metric_rows)
    return con, runs, metric_rows


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """What SQL's avg and stddev_samp give, up to rounding: None for no values, NaN where a value is."""
    if not values:
        return None, None
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    with np.errstate(all="ignore"):
        mean = float(np.mean(np.array(values, dtype=np.longdouble)))
        std = float(np.std(np.array(values, dtype=np.longdouble), ddof=1)) if len(values) > 1 else None
    return mean, std


def _clean(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def reference(runs: list[dict], metric_rows: list[tuple]) -> dict[tuple, dict]:
    """Per (protocol, entry): run counts, each metric's mean, std, n and interval, and the per-seed primary metric."""
    out: dict[tuple, dict] = defaultdict(lambda: {"ok": 0, "not_ok": 0, "diverged": 0, "metrics": defaultdict(list), "seeds": defaultdict(list)})
    by_run = {r["run_id"]: r for r in runs}
    for r in runs:
        ref = out[(r["suite"], r["suite_version"], r["scale"], r["variant"], r["dataset"], r["model"], r["recipe_id"], r["entry"])]
        ref["ok" if r["status"] == "ok" else "not_ok"] += 1
        ref["diverged"] += r["status"] == "diverged"
    for run_id, name, value, _, _ in metric_rows:
        r = by_run[run_id]
        ref = out[(r["suite"], r["suite_version"], r["scale"], r["variant"], r["dataset"], r["model"], r["recipe_id"], r["entry"])]
        ref["metrics"][name].append(value)
        if name == r["primary_metric"] and value is not None:
            ref["seeds"][r["seed"]].append(value)
    for ref in out.values():
        summaries = {}
        for name, values in ref["metrics"].items():
            present = [v for v in values if v is not None]
            mean, std = _mean_std(present)
            mean, std = _clean(mean), _clean(std)
            interval = stats.confidence_interval(mean, std, len(present))
            summaries[name] = {"mean": mean, "std": std, "n": len(present), "ci_low": interval.low if interval else None,
                               "ci_high": interval.high if interval else None}
        ref["metrics"] = summaries
        seeds = {seed: _mean_std(values)[0] for seed, values in ref["seeds"].items()}
        ref["seeds"] = {seed: v for seed, v in seeds.items() if not math.isnan(v)}
    return out


@pytest.mark.parametrize("seed", range(6))
def test_boards_agree_with_a_per_run_reference(seed):
    con, runs, metric_rows = random_store(seed)
    expected = reference(runs, metric_rows)
    boards = build_boards(con, baselines={"long_tail": "ce", "other": "m0"})
    assert {(*b.protocol.values(), e.method) for b in boards for e in b.entries if e.tuned is None} == set(expected)
    for board in boards:
        key = tuple(board.protocol.values())
        for e in board.entries:
            if e.tuned is not None:
                continue
            ref = expected[(*key, e.method)]
            assert (e.ok, e.not_ok, e.diverged) == (ref["ok"], ref["not_ok"], ref["diverged"])
            assert set(e.metrics) == set(ref["metrics"])
            assert list(e.metrics) == sorted(e.metrics, key=lambda n: (METRICS.get(n, (0,))[0], n))  # the suite's metric order
            for name, m in e.metrics.items():
                r = ref["metrics"][name]
                assert m["n"] == r["n"] and m["higher_is_better"] == (name not in ("ece", "err"))
                assert all(_close(m[k], r[k]) for k in ("mean", "std", "ci_low", "ci_high")), (name, m, r)
            assert set(e.seeds) == set(ref["seeds"]) and all(_close(e.seeds[s], ref["seeds"][s]) for s in e.seeds)


@pytest.mark.parametrize("seed", range(6))
def test_tests_ranks_and_tuned_rows_agree_with_the_plain_definitions(seed):
    from scipy.stats import ttest_rel

    con, _, _ = random_store(seed)
    for board in build_boards(con, baselines={"long_tail": "ce", "other": "m0"}):
        entries = sorted(board.entries, key=lambda e: e.method)
        base = next((e for e in entries if e.method == board.baseline), None)
        compared = [e for e in entries if e is not base and e.seeds] if base else []
        for e in compared:
            seeds = sorted(set(e.seeds) & set(base.seeds))
            a, b = [e.seeds[s] for s in seeds], [base.seeds[s] for s in seeds]
            test = e.baseline_test
            assert test.n_pairs == len(seeds)
            diffs = [x - y for x, y in zip(a, b)]
            if len(seeds) >= 2 and all(map(math.isfinite, diffs)) and len(set(diffs)) > 1:
                assert test.p == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-6, abs=1e-12)
        assert [e.p_corrected for e in compared] == stats.correct_p_values([e.baseline_test.p for e in compared], board.correction)
        scored = [e for e in entries if e.primary_mean is not None]
        if scored:
            ranks = stats.rank_groups([(e.primary_mean, e.interval) for e in scored], higher_is_better=scored[0].higher_is_better)
            assert [e.rank for e in scored] == ranks
        by_name = {e.method: e for e in entries}
        for sel in board.selections:
            tuned, chosen = by_name[sel.label], by_name[sel.selected]
            assert tuned.metrics == chosen.metrics and tuned.seeds == chosen.seeds and tuned.tuned == sel
            group = [e for e in entries if e.tuned is None and leaderboard.tuning.base_entry(e.method) == sel.base]
            means = {e.method: (e.metrics.get("val_top1") or {}).get("mean") for e in group}
            assert leaderboard.tuning.select(means, True, "val_top1")[sel.base] == sel


def test_every_format_renders_and_tables_match_tabulate():
    from tabulate import tabulate

    con, _, _ = random_store(7)
    boards = build_boards(con, baselines={"long_tail": "ce", "other": "m0"})
    for board in boards:
        headers, rows = leaderboard._rows(board)
        for fmt in ("simple", "github"):
            assert text_table(rows, headers, fmt) == tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    for fmt in leaderboard.FORMATS:
        assert render(boards, fmt)


def test_text_table_matches_tabulate_on_awkward_cells():
    from tabulate import tabulate

    rng = random.Random(0)
    pool = ["", " padded ", "x", "0.1234 ± 0.0100", None, 3, -1, "a b", "long " * 5, "τ", "two\nlines", "tab\there", 2.5]
    for _ in range(200):
        width = rng.randint(1, 5)
        headers = [rng.choice(["rank", "method", "h", "a much longer heading", "↑ top1"]) for _ in range(width)]
        rows = [[rng.choice(pool) for _ in range(width)] for _ in range(rng.randint(1, 4))]
        for fmt in ("simple", "github"):
            assert text_table(rows, headers, fmt) == tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def test_colliding_entry_hashes_fall_back_to_another_salt():
    con, _, _ = random_store(3)
    expected = render(build_boards(con, baselines={"long_tail": "ce", "other": "m0"}), "json")

    class FirstHashesCollide:
        """A connection whose first status query gives every group the same id."""

        def __init__(self) -> None:
            self.salts: list[str] = []

        def execute(self, sql: str, params: list | None = None):
            result = con.execute(sql, params or [])
            if "AS group_id, hash(" in sql and "count(*) FILTER" in sql:
                self.salts.append(sql)
                if len(self.salts) == 1:
                    rows = [(*row[:13], 42, row[14]) for row in result.fetchall()]
                    return type("Result", (), {"fetchall": lambda self: rows})()
            return result

    wrapped = FirstHashesCollide()
    assert render(build_boards(wrapped, baselines={"long_tail": "ce", "other": "m0"}), "json") == expected
    assert len(wrapped.salts) == 2  # the second salt told the entries apart


def test_confidence_intervals_equal_the_scalar_function_bit_for_bit():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.random(300), [np.nan, 1e308, -0.0, 5.0]])
    stds = np.concatenate([rng.random(300) * 10.0 ** rng.integers(-8, 8, 300), [0.1, 1e308, np.nan, 0.0]])
    ns = np.concatenate([rng.integers(0, 40, 300), [5, 2, 3, 1]])
    low, high = stats.confidence_intervals(means, stds, ns)
    for mean, std, n, lo, hi in zip(means.tolist(), stds.tolist(), ns.tolist(), low.tolist(), high.tolist()):
        interval = stats.confidence_interval(None if math.isnan(mean) else mean, None if math.isnan(std) else std, n)
        if interval is None:
            assert math.isnan(lo) and math.isnan(hi)
        else:
            assert (lo, hi) == (interval.low, interval.high)


def _paired_t_test_by_definition(entry: dict[int, float], baseline: dict[int, float]) -> stats.PairedTest:
    """The paired t-test written out: sorted matching seeds, differences, their mean and sd, and scipy's t distribution."""
    diffs = [entry[s] - baseline[s] for s in sorted(set(entry) & set(baseline))]
    if not diffs:
        return stats.PairedTest(0, None, None, None)
    if not all(math.isfinite(d) for d in diffs):
        return stats.PairedTest(len(diffs), None, None, None)
    try:
        mean, sd = stats.mean_std(diffs)
    except OverflowError:
        return stats.PairedTest(len(diffs), None, None, None)
    if sd is None:
        return stats.PairedTest(1, mean, None, None)
    if sd == 0.0:
        return stats.PairedTest(len(diffs), mean, 0.0, 1.0) if mean == 0.0 else stats.PairedTest(len(diffs), mean, math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(len(diffs)))
    return stats.PairedTest(len(diffs), mean, t, stats.t_two_sided_p(t, len(diffs) - 1))


def test_paired_t_tests_equal_the_definition_bit_for_bit():
    rng = random.Random(1)
    baseline = {s: rng.random() for s in (4, 0, 2, 1, 3)}  # inserted out of order
    entries = []
    for _ in range(300):
        seeds = rng.sample(range(7), rng.randint(0, 7))
        entries.append({s: rng.choice((rng.random(), round(rng.random(), 1), baseline.get(s, 0.5) + 0.25)) for s in seeds})
    entries += [dict(reversed(list(baseline.items()))), {s: v + 0.1 for s, v in baseline.items()}, {0: 1e308, 1: -1e308, 2: 0.5}, {3: 0.5}, {}]
    tests = stats.paired_t_tests(entries, baseline)
    assert tests == [_paired_t_test_by_definition(e, baseline) for e in entries]
    assert tests[-3] == stats.PairedTest(3, None, None, None)  # squared deviations beyond the float range: no test rather than an error
