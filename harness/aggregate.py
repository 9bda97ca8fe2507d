"""One ranking of methods across boards: `harness leaderboard aggregate` and the site's aggregate page.

Every board (one protocol: suite × version × scale × variant × dataset × model × recipe) is one
task. A method is an entry name; it takes part on the boards where it has at least one ok run.
Statistics (definitions and sources in harness/stats.py):

- **Average rank** over the boards a method appears on (1 = best on a board, ties averaged).
  Boards with fewer than two ranked entries rank nothing and are left out with a note.
- **Friedman test and Nemenyi critical difference** on the complete part of the table: the
  methods ranked on *every* board (re-ranked among themselves), since both need each method on
  each board. With fewer than 3 such methods or 2 boards they are not computed, with the reason.
- **Normalised score** of a run, per board: (score − baseline) / (best entry − baseline), with
  baseline and best the entries' means over seeds and "best" by the primary metric's direction;
  so the baseline scores 0 and the best entry 1 on every board, whatever the metric's direction.
  Boards without a baseline entry, or whose baseline is the best entry (a zero span), are left
  out of the normalised statistics with a note. The constants come from the full data and stay
  fixed in the bootstrap, as rliable's reference scores do.
- **IQM** of a method's normalised run scores pooled over its boards, with a 95% stratified
  bootstrap interval (runs resampled within each board; `BOOTSTRAP_REPS` replicates, a fixed seed
  per method, so the same database gives the same interval).
- **Probability of improvement** P(method > baseline): per board the Mann–Whitney probability
  that a run of the method beats a run of the board's baseline (direction-signed raw scores: the
  probability is rank-based, so it equals the one on normalised scores and also covers boards
  whose baseline is the best entry), averaged over the boards with both.
- **Performance profile**: for τ in `TAUS`, the fraction of a method's normalised boards on which
  its mean normalised score is ≥ τ: rliable's `average_score_distributions` (task means), with ≥
  where rliable counts > so that the best entry (exactly 1) counts at τ = 1. rliable's default
  profile pools runs instead of task means.

Sources checked: rliable's `rliable/metrics.py` (`aggregate_iqm` = `scipy.stats.trim_mean(scores,
0.25, axis=None)`; `probability_of_improvement` = per-task `mannwhitneyu(x, y, alternative="greater")`
statistic / (n_x · n_y), averaged) and `library.py` (`StratifiedBootstrap` resamples run indices
within each task; `get_interval_estimates` takes percentile intervals; it defaults to 50,000
replicates, here 2,000 keep a site build quick).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import stats
from harness.leaderboard import Board, Entry

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
TAUS = tuple(round(-1.0 + 0.1 * i, 1) for i in range(21))  # -1.0, -0.9, ..., 1.0
TABLE_TAUS = (0.0, 0.5, 1.0)  # the profile's points shown as table columns (json and the site show all)
FORMATS = ("table", "markdown", "json")

NORMALISATION_NOTE = (
    "normalised score, per board: (score − baseline) / (best entry − baseline), baseline and best = the entries' means "
    "over seeds, best by the primary metric's direction (higher_is_better), so the baseline is 0 and the best entry 1"
)


@dataclass
class BoardTask:
    """One board as a task of the aggregate."""

    title: str
    protocol: dict[str, Any]
    baseline: str | None
    higher_is_better: bool
    runs: dict[str, list[float]]  # method -> primary metric of each ok run (seed order)
    means: dict[str, float]
    ranks: dict[str, float]  # 1 = best, ties averaged
    span: tuple[float, float] | None = None  # (baseline mean, best mean) when normalisable
    left_out: str | None = None  # why the normalised statistics leave it out

    def normalised(self, method: str) -> list[float]:
        base, best = self.span  # type: ignore[misc]
        return [(x - base) / (best - base) for x in self.runs[method]]

    def normalised_mean(self, method: str) -> float:
        """The normalised mean over seeds (exactly 1 for the best entry, 0 for the baseline)."""
        base, best = self.span  # type: ignore[misc]
        return (self.means[method] - base) / (best - base)

    def signed(self, method: str) -> list[float]:
        """Run scores with higher = better, for the probability of improvement."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * x for x in self.runs[method]]


@dataclass
class MethodSummary:
    method: str
    boards: int  # boards it is ranked on
    avg_rank: float
    friedman_rank: float | None = None  # average rank among the Friedman set's methods, None outside it
    normalised_boards: int = 0
    iqm: float | None = None
    iqm_low: float | None = None
    iqm_high: float | None = None
    p_improvement: float | None = None  # P(method > the board's baseline), averaged over boards
    improvement_boards: int = 0
    profile: list[float] | None = None  # fraction of normalised boards with mean score ≥ τ, per τ in TAUS


@dataclass
class Aggregate:
    tasks: list[BoardTask]  # the boards that rank (≥ 2 entries)
    methods: list[MethodSummary]  # best average rank first
    friedman: stats.FriedmanTest | None = None
    friedman_methods: list[str] = field(default_factory=list)
    critical_difference: float | None = None
    friedman_note: str = ""
    notes: list[str] = field(default_factory=list)  # boards left out, and why
    taus: tuple[float, ...] = TAUS

    @property
    def normalised_tasks(self) -> list[BoardTask]:
        return [t for t in self.tasks if t.span is not None]


def _task(board: Board) -> BoardTask:
    ranked: list[Entry] = [
        e for e in board.entries if e.seeds and e.primary_mean is not None and all(math.isfinite(v) for v in e.seeds.values())
    ]
    hib = ranked[0].higher_is_better if ranked else True
    runs = {e.method: [e.seeds[s] for s in sorted(e.seeds)] for e in ranked}
    means = {e.method: math.fsum(v) / len(v) for e, v in ((e, runs[e.method]) for e in ranked)}
    names = sorted(means)
    ranks = dict(zip(names, stats.board_ranks([means[n] for n in names], higher_is_better=hib)))
    task = BoardTask(board.title, dict(board.protocol), board.baseline, hib, runs, means, ranks)
    if board.baseline is None or board.baseline not in means:
        task.left_out = f"no baseline entry ({board.baseline or 'the suite is not installed'}) with an ok run"
    else:
        base = means[board.baseline]
        best = max(means.values()) if hib else min(means.values())
        if best == base:
            task.left_out = f"the baseline {board.baseline} is the best entry, so there is no span to normalise by"
        else:
            task.span = (base, best)
    return task


def aggregate(boards: list[Board], *, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> Aggregate:
    """The across-board statistics of `boards` (see the module doc)."""
    notes: list[str] = []
    tasks = []
    for b in boards:
        task = _task(b)
        if len(task.means) < 2:
            notes.append(f"{b.title}: left out (fewer than 2 entries with an ok run rank nothing)")
            continue
        if task.left_out:
            notes.append(f"{b.title}: in the ranks, left out of the normalised statistics ({task.left_out})")
        tasks.append(task)
    methods = sorted({m for t in tasks for m in t.means})
    summaries = {}
    for m in methods:
        on = [t for t in tasks if m in t.ranks]
        summaries[m] = MethodSummary(m, len(on), math.fsum(t.ranks[m] for t in on) / len(on))
    result = Aggregate(tasks, [], notes=notes)
    _friedman(result, tasks, methods, summaries)
    for m in methods:
        # a seed of its own per method: its interval does not move when other methods are added
        _normalised_statistics(summaries[m], tasks, reps=reps, seed=seed ^ zlib.crc32(m.encode("utf-8")))
    result.methods = sorted(summaries.values(), key=lambda s: (s.avg_rank, s.method))
    return result


def _friedman(result: Aggregate, tasks: list[BoardTask], methods: list[str], summaries: dict[str, MethodSummary]) -> None:
    common = [m for m in methods if all(m in t.means for t in tasks)]
    result.friedman_methods = common
    if len(tasks) < 2 or len(common) < 3:
        result.friedman_note = (
            f"Friedman test and Nemenyi CD not computed: they need at least 3 methods ranked on every board and at least "
            f"2 boards; here {len(common)} method(s) are on all {len(tasks)} board(s)"
            + ("; narrow the boards with suite= or scale=" if len(tasks) >= 2 else "")
        )
        return
    table = []
    for t in tasks:
        sign = 1.0 if t.higher_is_better else -1.0
        table.append([sign * t.means[m] for m in common])
    result.friedman = stats.friedman_test(table)
    result.critical_difference = stats.nemenyi_critical_difference(len(common), len(tasks))
    ranks = [stats.board_ranks(row) for row in table]
    for j, m in enumerate(common):
        summaries[m].friedman_rank = math.fsum(r[j] for r in ranks) / len(ranks)
    f = result.friedman
    verdict = "the ranks differ" if f.p < stats.ALPHA else "no evidence that the ranks differ, so the Nemenyi comparisons are not warranted"
    result.friedman_note = (
        f"Friedman test over the {f.methods} methods ranked on all {f.boards} boards: chi² = {f.statistic:.3f}, "
        f"p = {_fmt_p(f.p)} ({verdict}); Nemenyi critical difference at α = {stats.ALPHA:g}: "
        f"CD = q_α·√(k(k+1)/(6N)) = {stats.nemenyi_q(f.methods):.3f}·√({f.methods}·{f.methods + 1}/(6·{f.boards})) = "
        f"{result.critical_difference:.3f}; two of these methods whose Friedman ranks differ by less than CD are not "
        "significantly different"
    )


def _normalised_statistics(s: MethodSummary, tasks: list[BoardTask], *, reps: int, seed: int) -> None:
    norm = [t for t in tasks if t.span is not None and s.method in t.runs]
    s.normalised_boards = len(norm)
    if norm:
        strata = [t.normalised(s.method) for t in norm]
        s.iqm = stats.iqm([x for runs in strata for x in runs])
        interval = stats.stratified_bootstrap_interval(strata, reps=reps, seed=seed)
        s.iqm_low, s.iqm_high = interval.low, interval.high
        s.profile = stats.performance_profile([t.normalised_mean(s.method) for t in norm], TAUS)
    vs = [t for t in tasks if t.baseline in t.runs and s.method in t.runs and s.method != t.baseline]
    s.improvement_boards = len(vs)
    if vs:
        s.p_improvement = stats.probability_of_improvement([t.signed(s.method) for t in vs], [t.signed(t.baseline) for t in vs])


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000" for a baseline's 0


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def interval_text(s: MethodSummary) -> str:
    return "-" if s.iqm_low is None else f"[{_fmt(s.iqm_low)}, {_fmt(s.iqm_high)}]"


def profile_at(s: MethodSummary, tau: float) -> float | None:
    return None if s.profile is None else s.profile[TAUS.index(tau)]


def headline(agg: Aggregate) -> str:
    suites = sorted({t.protocol["suite"] for t in agg.tasks})
    return (
        f"aggregate over {len(agg.tasks)} board(s) of {len(suites)} suite(s) ({', '.join(suites) or '-'}): "
        f"{len(agg.methods)} method(s); normalised statistics on {len(agg.normalised_tasks)} board(s)"
    )


def footnote(agg: Aggregate) -> list[str]:
    """What every column means, and what was left out (shared by the terminal and the site)."""
    return [
        "avg rank = mean over the boards a method is ranked on of its rank there (1 = best, ties averaged); boards = how many; "
        "methods ranked on different boards, or on boards of different sizes, are not comparable by it: the Friedman rank is; "
        "only ok runs count here (each board counts its failed and diverged runs)",
        "Friedman rank = average rank among the methods ranked on every board (the Friedman test's table)",
        NORMALISATION_NOTE,
        f"IQM = interquartile mean (25% trimmed mean) of a method's normalised run scores pooled over its boards; 95% CI = "
        f"stratified bootstrap (runs resampled within each board, {BOOTSTRAP_REPS} replicates, percentile interval); "
        "Agarwal et al., NeurIPS 2021, as rliable's aggregate_iqm and StratifiedBootstrap",
        "P(> baseline) = probability of improvement: per board, the Mann–Whitney probability that a run of the method beats "
        "a run of the board's baseline (ties count 1/2), averaged over the boards holding both (rliable's probability_of_improvement)",
        f"profile τ = fraction of the method's normalised boards on which its mean normalised score is ≥ τ (τ = {TAUS[0]:g} .. "
        f"{TAUS[-1]:g} in json and on the site)",
    ]


def records(agg: Aggregate) -> dict[str, Any]:
    return {
        "boards": [
            {**t.protocol, "title": t.title, "baseline": t.baseline, "higher_is_better": t.higher_is_better,
             "normalised": t.span is not None, "left_out_of_normalised": t.left_out,
             "baseline_mean": t.span[0] if t.span else None, "best_mean": t.span[1] if t.span else None}
            for t in agg.tasks
        ],
        "methods": [asdict(s) for s in agg.methods],
        "friedman": None if agg.friedman is None else {**asdict(agg.friedman), "methods_tested": agg.friedman_methods, "critical_difference": agg.critical_difference, "alpha": stats.ALPHA},
        "friedman_note": agg.friedman_note,
        "taus": list(agg.taus),
        "normalisation": NORMALISATION_NOTE,
        "bootstrap": {"reps": BOOTSTRAP_REPS, "seed": BOOTSTRAP_SEED, "confidence": stats.CONFIDENCE},
        "notes": agg.notes,
    }


def render(agg: Aggregate, fmt: str = "table") -> str:
    from tabulate import tabulate

    if fmt == "json":
        return json.dumps(records(agg), indent=2)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    headers = ["method", "boards", "avg rank", "Friedman rank", "IQM (norm.)", "95% CI", "P(> baseline) (boards)", *(f"profile τ={t:g}" for t in TABLE_TAUS)]
    rows = [
        [s.method, s.boards, f"{s.avg_rank:.2f}", _fmt(s.friedman_rank, 2), _fmt(s.iqm), interval_text(s),
         "-" if s.p_improvement is None else f"{s.p_improvement:.2f} ({s.improvement_boards})",
         *(_fmt(profile_at(s, t), 2) for t in TABLE_TAUS)]
        for s in agg.methods
    ]
    table = tabulate(rows, headers=headers, tablefmt={"table": "simple", "markdown": "github"}[fmt], disable_numparse=True)
    title = headline(agg)
    notes = [agg.friedman_note, *footnote(agg), *agg.notes]
    if fmt == "markdown":
        return f"### {title}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return f"{title}\n\n{table}\n\n" + "\n".join(notes) + "\n"
