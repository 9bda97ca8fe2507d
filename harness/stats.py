"""Statistics for leaderboards: Student t intervals, paired t-tests and rank groups.

Pure Python (no scipy): the Student t distribution comes from the regularized incomplete beta
function, evaluated by its continued fraction with the modified Lentz method (Numerical
Recipes, 3rd ed., Sec. 6.4). Accurate to ~1e-12 for the degrees of freedom seeds give.

Definitions used on every leaderboard:

- **95% confidence interval** of a mean over n seeds: mean ± t(0.975, n-1) · s / √n, with s the
  sample standard deviation (Student t interval). Undefined (None, shown "-") for n < 2.
- **Paired comparison with the baseline**: over the seeds both entries ran (matching seeds
  only), d_i = entry_i - baseline_i; t = mean(d) / (sd(d) / √n); two-sided p-value from the t
  distribution with n-1 degrees of freedom. Undefined for fewer than 2 pairs. If every d_i is
  equal, sd(d) = 0: p = 1 when they are all 0, else p = 0 (the t statistic is infinite).
- **Rank groups** (`rank_groups`): entries sorted best mean first; the first entry leads group
  1; each following entry joins the current group when its interval overlaps the *leader's*
  interval, otherwise it starts (and leads) the next group. Rank = group number. Entries whose
  interval is undefined (one seed) count as the point [mean, mean]. So a shared rank means
  "not separated by the 95% intervals", and ranks never decrease down the sorted table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95

# ---------------------------------------------------------------------------------------------
# the t distribution
# ---------------------------------------------------------------------------------------------

_EPS = 1e-15
_FPMIN = 1e-300
_MAX_ITER = 10_000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        # even step
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        h *= d * c
        # odd step
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    return _betainc(a, b, x, 1.0 - x)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b) given both x and y = 1 - x (a caller that knows y exactly keeps its precision)."""
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    # the continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for T ~ Student t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    t2 = t * t
    return _betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for T ~ Student t with `df` degrees of freedom."""
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on `t_cdf`: slow-ish but exact and deterministic)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


_QUANTILE_MEMO: dict[tuple[float, int], float] = {}


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value t((1 + confidence) / 2, df), memoised."""
    key = (confidence, df)
    if key not in _QUANTILE_MEMO:
        _QUANTILE_MEMO[key] = t_quantile((1.0 + confidence) / 2.0, df)
    return _QUANTILE_MEMO[key]


# ---------------------------------------------------------------------------------------------
# summaries and tests
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


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    if not values:
        raise ValueError("mean of no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class PairedTest:
    n_pairs: int
    mean_diff: float | None  # mean of (entry - baseline) over the pairs
    t: float | None
    p: float | None  # two-sided; None for fewer than 2 pairs


def paired_t_test(entry: dict[int, float], baseline: dict[int, float]) -> PairedTest:
    """Two-sided paired t-test of entry vs baseline over the seeds both hold (see module doc)."""
    seeds = sorted(set(entry) & set(baseline))
    diffs = [entry[s] - baseline[s] for s in seeds]
    if not diffs:
        return PairedTest(0, None, None, None)
    mean, sd = mean_std(diffs)
    if sd is None:
        return PairedTest(1, mean, None, None)
    if sd == 0.0:
        if mean == 0.0:
            return PairedTest(len(diffs), mean, 0.0, 1.0)
        return PairedTest(len(diffs), mean, math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(len(diffs)))
    return PairedTest(len(diffs), mean, t, t_two_sided_p(t, len(diffs) - 1))


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
