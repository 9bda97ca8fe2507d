"""Statistics for leaderboards: intervals, paired tests, multiple-comparison corrections, rank groups,
and the statistics that compare methods across many boards. Distributions and tests come from scipy.

Definitions used on every leaderboard:

- **95% confidence interval** of a mean over n seeds: mean ± t(0.975, n-1) · s / √n, with s the
  sample standard deviation (Student t interval). Undefined (None, shown "-") for n < 2.
- **Paired comparison with the baseline**: over the seeds both entries ran (matching seeds
  only), d_i = entry_i - baseline_i.
  - `t` (default): t = mean(d) / (sd(d) / √n); two-sided p-value from the t distribution with n-1
    degrees of freedom (`scipy.stats.t`; the same as `scipy.stats.ttest_rel`). Undefined for fewer than 2 pairs. If every d_i
    is equal, sd(d) = 0: p = 1 when they are all 0, else p = 0 (the t statistic is infinite).
  - `wilcoxon`: two-sided Wilcoxon signed-rank test of the d_i (`scipy.stats.wilcoxon`, zero
    differences dropped, exact distribution when there are no ties). Only for n ≥ 6 pairs: with
    5 pairs the smallest two-sided p is 2/2^5 = 0.0625, so the test could never reject at 5%.
    p = 1 when every d_i is 0.
- **Multiple comparisons**: the p-values of one board's entries against its baseline are one
  family. `holm` (default): Holm's step-down adjustment, p_(i) → max over j ≤ i of
  min(1, (m - j + 1) · p_(j)) for the sorted p-values (Holm 1979; controls the family-wise error
  rate). `bh`: Benjamini–Hochberg (1995), controls the false discovery rate
  (`scipy.stats.false_discovery_control`). `none`: the raw p-values. m counts the entries with a
  defined p.
- **Rank groups** (`rank_groups`): entries sorted best mean first; the first entry leads group
  1; each following entry joins the current group when its interval overlaps the *leader's*
  interval, otherwise it starts (and leads) the next group. Rank = group number. Entries whose
  interval is undefined (one seed) count as the point [mean, mean]. So a shared rank means
  "not separated by the 95% intervals", and ranks never decrease down the sorted table.
- **McNemar's test** (`mcnemar_test`) compares two classifiers on the same test samples from
  their per-sample correctness: b = samples only the entry gets right, c = only the baseline;
  exact two-sided binomial test of b against Binomial(b + c, 1/2) (Edwards' continuity-corrected
  chi-square with `exact=False`). The store keeps no per-sample predictions yet, so no board
  uses it; it is here for when runs store them.

Across boards (Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR
2006; Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
NeurIPS 2021, as implemented in their `rliable` library):

- **Average rank**: each board ranks its methods 1 = best (ties share the average rank,
  `scipy.stats.rankdata`); a method's average rank is the mean over boards.
- **Friedman test** (`scipy.stats.friedmanchisquare`) on a complete boards × methods table (k ≥ 3
  methods, N ≥ 2 boards); **Nemenyi critical difference** CD = q_α · √(k(k+1) / (6N)), with q_α the
  studentized range quantile for k groups and infinite degrees of freedom divided by √2 (Demšar's
  Table 5: q_0.05 = 1.960, 2.343, 2.569, ... for k = 2, 3, 4, ...). Two methods whose average ranks
  differ by less than CD are not significantly different.
- **IQM**: the interquartile mean, the 25% trimmed mean of all runs pooled over tasks
  (`scipy.stats.trim_mean(x, 0.25)`, as rliable's `aggregate_iqm`).
- **Stratified bootstrap interval**: resample the runs of each task with replacement (the same
  number of runs per task, tasks kept), recompute the statistic, and take the 2.5 and 97.5
  percentiles of the replicates (rliable's `StratifiedBootstrap` with the percentile method).
- **Probability of improvement** P(X > Y): for each task the Mann–Whitney probability
  U / (n_x · n_y) that a run of X beats a run of Y (a tie counts 1/2), averaged over tasks
  (rliable's `probability_of_improvement`).
- **Performance profile**: for each τ of a grid, the fraction of tasks whose mean score is ≥ τ.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special as _special


class _LazyScipyStats:
    """scipy.stats, imported on first use: it takes most of a second to import, and a leaderboard
    needs only the t distribution (scipy.special.stdtr/stdtrit, what scipy.stats.t computes with)."""

    def __getattr__(self, name: str) -> object:
        from scipy import stats

        return getattr(stats, name)


_scipy_stats = _LazyScipyStats()

CONFIDENCE = 0.95
ALPHA = 0.05  # the significance level of "beats the baseline" marks and the Nemenyi CD
TESTS = ("t", "wilcoxon")
CORRECTIONS = ("holm", "bh", "none")
MIN_WILCOXON_PAIRS = 6

# ---------------------------------------------------------------------------------------------
# the t distribution
# ---------------------------------------------------------------------------------------------


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for T ~ Student t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return float(2.0 * _special.stdtr(df, -abs(t)))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for T ~ Student t with `df` degrees of freedom."""
    return float(_special.stdtr(df, t))


@lru_cache(maxsize=256)
def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value t((1 + confidence) / 2, df)."""
    return float(_special.stdtrit(df, (1.0 + confidence) / 2.0))


# ---------------------------------------------------------------------------------------------
# summaries of one entry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def confidence_interval(mean: float | None, std: float | None, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """Student t interval of a mean from its sample std and n; None when n < 2 or undefined."""
    if mean is None or std is None or n < 2:
        return None
    half = t_critical(n - 1, confidence) * std / math.sqrt(n)
    return Interval(mean - half, mean + half)


def confidence_intervals(means: np.ndarray, stds: np.ndarray, ns: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """`confidence_interval` of many means at once: arrays of the low and high bounds, NaN where
    it is None (a NaN mean or std, or n < 2). The same operations in the same order, so every bound
    equals the one-at-a-time function's to the last bit."""
    means, stds, ns = np.asarray(means, dtype=float), np.asarray(stds, dtype=float), np.asarray(ns, dtype=np.int64)
    low, high = np.full(means.shape, np.nan), np.full(means.shape, np.nan)
    defined = ~np.isnan(means) & ~np.isnan(stds) & (ns >= 2)
    if defined.any():
        n = ns[defined]
        distinct, which = np.unique(n, return_inverse=True)
        critical = np.array([t_critical(int(k) - 1, confidence) for k in distinct])[which]
        with np.errstate(all="ignore"):  # overflowing values give inf bounds, as math does
            half = critical * stds[defined] / np.sqrt(n.astype(float))
            low[defined], high[defined] = means[defined] - half, means[defined] + half
    return low, high


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    if not values:
        raise ValueError("mean of no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


# ---------------------------------------------------------------------------------------------
# paired tests against the baseline
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    n_pairs: int
    mean_diff: float | None  # mean of (entry - baseline) over the pairs
    statistic: float | None  # t, or Wilcoxon's W (the smaller signed-rank sum)
    p: float | None  # two-sided, uncorrected; None when the test is undefined for these pairs
    test: str = "t"


def _differences(entry: Mapping[int, float], baseline: Mapping[int, float]) -> list[float]:
    return [entry[s] - baseline[s] for s in sorted(set(entry) & set(baseline))]


def paired_t_test(entry: Mapping[int, float], baseline: Mapping[int, float]) -> PairedTest:
    """Two-sided paired t-test of entry vs baseline over the seeds both hold (see module doc)."""
    return paired_t_tests([entry], baseline)[0]


def paired_t_tests(entries: Sequence[Mapping[int, float]], baseline: Mapping[int, float]) -> list[PairedTest]:
    """`paired_t_test` of each entry against one baseline, with one vectorised call for the p-values
    (a board may hold thousands of entries; scipy's per-call overhead would dominate)."""
    out: list[PairedTest | None] = []
    pending: list[tuple[int, float, float, int]] = []  # (index, mean, t, df)
    base_seeds, base_order = baseline.keys(), sorted(baseline)
    base_values = [baseline[s] for s in base_order]
    for entry in entries:
        if entry.keys() == base_seeds:  # the differences of `_differences`, without its set and sort per entry
            diffs = list(map(operator.sub, map(entry.__getitem__, base_order), base_values))
        else:
            diffs = _differences(entry, baseline)
        n = len(diffs)
        if not n:
            out.append(PairedTest(0, None, None, None))
            continue
        if not all(map(math.isfinite, diffs)):  # values so large that their differences overflow: no test
            out.append(PairedTest(n, None, None, None))
            continue
        try:  # mean_std, written out: a board may hold thousands of entries
            mean = math.fsum(diffs) / n
            sd = math.sqrt(math.fsum([(d - mean) ** 2 for d in diffs]) / (n - 1)) if n > 1 else None
        except OverflowError:  # nor when their sum or squared deviations do
            out.append(PairedTest(n, None, None, None))
            continue
        if sd is None:
            out.append(PairedTest(1, mean, None, None))
        elif sd == 0.0:  # every difference equal: the limits stated in the module doc
            out.append(PairedTest(n, mean, 0.0, 1.0) if mean == 0.0 else PairedTest(n, mean, math.copysign(math.inf, mean), 0.0))
        else:
            out.append(None)
            pending.append((len(out) - 1, mean, mean / (sd / math.sqrt(n)), n - 1))
    if pending:
        t = np.array([p[2] for p in pending])
        p_values = 2.0 * _special.stdtr(np.array([p[3] for p in pending]), -np.abs(t))
        for (i, mean, t_value, df), p in zip(pending, p_values.tolist()):
            out[i] = PairedTest(df + 1, mean, t_value, p)
    return out  # type: ignore[return-value]


def paired_wilcoxon_test(entry: Mapping[int, float], baseline: Mapping[int, float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of entry vs baseline on matching seeds; p is None for
    fewer than `MIN_WILCOXON_PAIRS` pairs (see module doc)."""
    diffs = _differences(entry, baseline)
    if not all(math.isfinite(d) for d in diffs):  # overflowing differences: no test (as for the t-test)
        return PairedTest(len(diffs), None, None, None, "wilcoxon")
    mean = math.fsum(diffs) / len(diffs) if diffs else None
    if len(diffs) < MIN_WILCOXON_PAIRS:
        return PairedTest(len(diffs), mean, None, None, "wilcoxon")
    if all(d == 0.0 for d in diffs):
        return PairedTest(len(diffs), mean, 0.0, 1.0, "wilcoxon")
    result = _scipy_stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
    return PairedTest(len(diffs), mean, float(result.statistic), float(result.pvalue), "wilcoxon")


def paired_test(entry: Mapping[int, float], baseline: Mapping[int, float], test: str = "t") -> PairedTest:
    """The paired test named `test` (one of `TESTS`)."""
    return paired_tests([entry], baseline, test)[0]


def paired_tests(entries: Sequence[Mapping[int, float]], baseline: Mapping[int, float], test: str = "t") -> list[PairedTest]:
    """The paired test named `test` of each entry against one baseline."""
    if test == "t":
        return paired_t_tests(entries, baseline)
    if test == "wilcoxon":
        return [paired_wilcoxon_test(entry, baseline) for entry in entries]
    raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")


# ---------------------------------------------------------------------------------------------
# multiple comparisons
# ---------------------------------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (see module doc)."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))  # monotone: never below an earlier step
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in the input order."""
    if not p_values:
        return []
    return [float(p) for p in _scipy_stats.false_discovery_control(np.asarray(p_values, dtype=float), method="bh")]


def correct_p_values(p_values: Sequence[float | None], correction: str = "holm") -> list[float | None]:
    """Adjust the defined p-values of one family by `correction` (one of `CORRECTIONS`); None (or NaN) becomes None."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")
    defined = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    values = [float(p_values[i]) for i in defined]  # type: ignore[arg-type]
    adjusted = {"holm": holm, "bh": benjamini_hochberg, "none": list}[correction](values)
    out: list[float | None] = [None] * len(p_values)
    for i, p in zip(defined, adjusted):
        out[i] = p
    return out


# ---------------------------------------------------------------------------------------------
# per-sample predictions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemarTest:
    only_entry: int  # b: samples the entry classifies correctly and the baseline does not
    only_baseline: int  # c: the other way round
    statistic: float  # b for the exact test; the corrected chi-square otherwise
    p: float  # two-sided


def mcnemar_test(entry_correct: Sequence[bool], baseline_correct: Sequence[bool], *, exact: bool = True) -> McNemarTest:
    """McNemar's test of two classifiers' per-sample correctness on the same samples (module doc)."""
    if len(entry_correct) != len(baseline_correct):
        raise ValueError(f"McNemar's test pairs samples: got {len(entry_correct)} and {len(baseline_correct)} predictions")
    a, b = np.asarray(entry_correct, dtype=bool), np.asarray(baseline_correct, dtype=bool)
    only_entry, only_baseline = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_entry + only_baseline
    if discordant == 0:  # the classifiers agree on every sample: no evidence either way
        return McNemarTest(0, 0, 0.0, 1.0)
    if exact:
        p = _scipy_stats.binomtest(only_entry, discordant, 0.5).pvalue
        return McNemarTest(only_entry, only_baseline, float(only_entry), float(p))
    chi2 = (abs(only_entry - only_baseline) - 1.0) ** 2 / discordant
    return McNemarTest(only_entry, only_baseline, chi2, float(_scipy_stats.chi2.sf(chi2, 1)))


# ---------------------------------------------------------------------------------------------
# rank groups within one board
# ---------------------------------------------------------------------------------------------


def rank_groups(items: Sequence[tuple[float, Interval | None]], *, higher_is_better: bool = True) -> list[int]:
    """Rank group (1-based) of each `(mean, interval)` item, in the items' order (see module doc).

    Ties in the mean keep the items' order, so pass items in a stable order (e.g. by name).
    """
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(len(items)), key=lambda i: sign * items[i][0])
    ranks = [0] * len(items)
    group, leader = 0, None
    for i in order:
        mean, interval = items[i]
        interval = interval or Interval(mean, mean)
        if leader is None or not interval.overlaps(leader):
            group, leader = group + 1, interval
        ranks[i] = group
    return ranks


# ---------------------------------------------------------------------------------------------
# across boards: ranks, Friedman, Nemenyi
# ---------------------------------------------------------------------------------------------


def board_ranks(scores: Sequence[float], *, higher_is_better: bool = True) -> list[float]:
    """Ranks 1 = best of one board's scores; tied scores share the average of their ranks."""
    sign = -1.0 if higher_is_better else 1.0
    return [float(r) for r in _scipy_stats.rankdata([sign * s for s in scores], method="average")]


@dataclass(frozen=True)
class FriedmanTest:
    methods: int  # k
    boards: int  # N
    statistic: float  # the Friedman chi-square (ties corrected, as scipy computes it)
    p: float


def friedman_test(table: Sequence[Sequence[float]]) -> FriedmanTest:
    """Friedman test of a complete boards × methods table of scores (rows: boards).

    The statistic depends only on each row's ranks, so the direction of the scores does not matter.
    """
    data = np.asarray(table, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 3:
        raise ValueError(f"the Friedman test needs at least 2 boards and 3 methods, got a {data.shape} table")
    result = _scipy_stats.friedmanchisquare(*data.T)
    return FriedmanTest(data.shape[1], data.shape[0], float(result.statistic), float(result.pvalue))


@lru_cache(maxsize=128)
def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """q_α of the Nemenyi test: the studentized range quantile for k groups, infinite df, over √2."""
    if k < 2:
        raise ValueError(f"the Nemenyi test compares at least 2 methods, got {k}")
    return float(_scipy_stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)


def nemenyi_critical_difference(k: int, n_boards: int, alpha: float = ALPHA) -> float:
    """CD = q_α · √(k(k+1) / (6N)) for k methods ranked on N boards (Demšar 2006, Sec. 3.2.2)."""
    if n_boards < 1:
        raise ValueError(f"the critical difference needs at least one board, got {n_boards}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_boards))


# ---------------------------------------------------------------------------------------------
# across boards: IQM, stratified bootstrap, probability of improvement, performance profiles
# ---------------------------------------------------------------------------------------------


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the 25% trimmed mean (scipy trims int(0.25 n) values from each end)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("the IQM of no values")
    return float(_scipy_stats.trim_mean(data, 0.25, axis=None))


def stratified_bootstrap_interval(
    strata: Sequence[Sequence[float]], statistic: Callable[[np.ndarray], np.ndarray] | None = None, *,
    reps: int = 2000, confidence: float = CONFIDENCE, seed: int = 0,
) -> Interval:
    """Percentile interval of `statistic` over the pooled runs, resampling runs within each stratum.

    `statistic` maps a (reps, runs) array to one value per row (default: the IQM of each row).
    The same seed gives the same interval.
    """
    arrays = [np.asarray(s, dtype=float) for s in strata if len(s)]
    if not arrays:
        raise ValueError("a bootstrap needs at least one run")
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays], axis=1)
    if statistic is None:
        values = _scipy_stats.trim_mean(resampled, 0.25, axis=1)
    else:
        values = np.asarray(statistic(resampled), dtype=float)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return Interval(float(low), float(high))


def probability_of_improvement(x_by_task: Sequence[Sequence[float]], y_by_task: Sequence[Sequence[float]]) -> float:
    """P(X > Y): the Mann–Whitney probability that a run of X beats a run of Y, averaged over tasks.

    Both lists hold one sequence of run scores (higher is better) per task, in the same task order.
    """
    if len(x_by_task) != len(y_by_task) or not x_by_task:
        raise ValueError(f"probability of improvement needs the same tasks for both, got {len(x_by_task)} and {len(y_by_task)}")
    per_task = []
    for x, y in zip(x_by_task, y_by_task):
        if not len(x) or not len(y):
            raise ValueError("probability of improvement needs at least one run of each on every task")
        u = _scipy_stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").statistic
        per_task.append(float(u) / (len(x) * len(y)))
    return math.fsum(per_task) / len(per_task)


def performance_profile(task_scores: Sequence[float], taus: Sequence[float]) -> list[float]:
    """For each τ, the fraction of tasks whose score is ≥ τ."""
    scores = np.asarray(task_scores, dtype=float)
    if scores.size == 0:
        raise ValueError("a performance profile needs at least one task")
    return [float(np.mean(scores >= tau)) for tau in taus]
