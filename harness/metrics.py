"""Classification metrics shared by suites: accuracy, per-class accuracy, shot groups, ECE, and
out-of-distribution detection (AUROC, FPR at 95% TPR, AUPR over MSP, max-logit and energy scores)."""

from __future__ import annotations

import itertools
import math

import torch


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def per_class_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy on each class's test samples (NaN for a class with no test sample)."""
    correct = (logits.argmax(1) == y).float()
    hits = torch.zeros(num_classes).index_add_(0, y, correct)
    counts = torch.bincount(y, minlength=num_classes).float()
    return [float(h / c) if c else float("nan") for h, c in zip(hits, counts)]


def shot_group_accuracy(class_acc: list[float], train_counts: list[int], many_above: float, few_below: float) -> dict[str, float]:
    """Mean per-class accuracy over many- (count > many_above), medium- and few-shot (count < few_below) classes.

    A group with no class is NaN (e.g. no few-shot class at a mild imbalance ratio).
    """
    groups: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for acc, count in zip(class_acc, train_counts):
        group = "many" if count > many_above else "few" if count < few_below else "medium"
        groups[group].append(acc)
    return {g: (sum(v) / len(v) if v else float("nan")) for g, v in groups.items()}


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al., On Calibration of Modern Neural Networks, ICML 2017):
    sum over bins of |B|/n * |accuracy(B) - confidence(B)|."""
    probs = logits.float().softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return float(ece)


# ---------------------------------------------------------------------------------------------
# detection metrics (in-distribution = positive class, higher score = more in-distribution)
# ---------------------------------------------------------------------------------------------


def auroc(score_in: torch.Tensor, score_out: torch.Tensor) -> float:
    """Area under the ROC curve = P(s_in > s_out) + 0.5 P(s_in = s_out) (Mann-Whitney U / n_in n_out)."""
    s_in, s_out = score_in.double().flatten(), score_out.double().flatten()
    if not len(s_in) or not len(s_out):
        return float("nan")
    allv = torch.cat([s_in, s_out])
    # average ranks with ties
    order = torch.argsort(allv, stable=True)
    sorted_v = allv[order]
    ranks = torch.empty_like(allv)
    _uniq, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks[order] = avg[inverse]
    n1, n2 = len(s_in), len(s_out)
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n2))


def fpr_at_tpr(score_in: torch.Tensor, score_out: torch.Tensor, tpr: float = 0.95) -> float:
    """False-positive rate on OOD at the largest threshold t whose TPR (in-distribution s >= t) is >= `tpr`."""
    s_in, s_out = score_in.double().flatten(), score_out.double().flatten()
    if not len(s_in) or not len(s_out):
        return float("nan")
    desc = torch.sort(s_in, descending=True).values
    k = max(1, math.ceil(tpr * len(desc) - 1e-9))
    threshold = desc[k - 1]
    return float((s_out >= threshold).double().mean())


def aupr(score_pos: torch.Tensor, score_neg: torch.Tensor) -> float:
    """Average precision with `score_pos` the positives: sum over distinct thresholds of
    (R_n - R_{n-1}) P_n (scikit-learn's `average_precision_score`; no interpolation)."""
    pos, neg = score_pos.double().flatten(), score_neg.double().flatten()
    if not len(pos):
        return float("nan")
    scores = torch.cat([pos, neg])
    labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order]
    tp, fp = torch.cumsum(labels, 0), torch.cumsum(1 - labels, 0)
    last = torch.ones_like(scores, dtype=torch.bool)  # last index of each tie group
    last[:-1] = scores[1:] != scores[:-1]
    tp, fp = tp[last], fp[last]
    precision, recall = tp / (tp + fp), tp / len(pos)
    prev = torch.cat([torch.zeros(1, dtype=recall.dtype), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def ood_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Higher = more in-distribution: maximum softmax probability (Hendrycks & Gimpel 2017),
    max logit (Hendrycks et al. 2022), negative energy logsumexp(z) (Liu et al. 2020, T = 1)."""
    z = logits.float()
    return {"msp": z.softmax(1).max(1).values, "maxlogit": z.max(1).values, "energy": torch.logsumexp(z, 1)}


def detection_metrics(logits_in: torch.Tensor, logits_out: torch.Tensor) -> dict[str, float]:
    s_in, s_out = ood_scores(logits_in), ood_scores(logits_out)
    out: dict[str, float] = {}
    for name in s_in:
        out[f"auroc_{name}"] = auroc(s_in[name], s_out[name])
        out[f"fpr95_{name}"] = fpr_at_tpr(s_in[name], s_out[name], 0.95)
        out[f"aupr_{name}"] = aupr(s_in[name], s_out[name])
    return out


# ---------------------------------------------------------------------------------------------
# calibration and selective-prediction metrics of a predictive distribution
# (pass the log-probabilities of a calibrated distribution as `logits`: softmax(log p) = p)
# ---------------------------------------------------------------------------------------------


def negative_log_likelihood(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over samples of -log softmax(z)_y (nats); inf where a true class gets probability 0."""
    if not len(y):
        return float("nan")
    logp = torch.log_softmax(logits.double(), 1)
    return float(-logp.gather(1, y.long().view(-1, 1)).mean())


def brier_score(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Multiclass Brier score (Brier 1950): mean over samples of sum_k (p_k - [y = k])^2, in [0, 2]."""
    if not len(y):
        return float("nan")
    p = torch.softmax(logits.double(), 1)
    onehot = torch.zeros_like(p).scatter_(1, y.long().view(-1, 1), 1.0)
    return float((p - onehot).pow(2).sum(1).mean())


def risk_coverage_curve(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Selective risk at coverage k/n, k = 1..n: the error rate of the k samples with the highest
    maximum softmax probability. Samples of equal confidence are one group: inside it the risk is
    the expectation over the orders it could be taken in (so the curve does not depend on how the
    sort breaks ties)."""
    conf, pred = torch.softmax(logits.double(), 1).max(1)
    wrong = (pred != y).double()
    order = torch.argsort(conf, descending=True, stable=True)
    conf, wrong = conf[order], wrong[order]
    _, counts = torch.unique_consecutive(conf, return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(counts)), counts)
    errors_in_group = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, group, wrong)
    errors_before = torch.cumsum(errors_in_group, 0) - errors_in_group
    first = torch.cumsum(counts, 0) - counts  # position of each group's first sample
    within = torch.arange(len(conf)) - first[group] + 1  # 1..m inside a group of m
    expected_errors = errors_before[group] + within * errors_in_group[group] / counts[group]
    return expected_errors / torch.arange(1, len(conf) + 1, dtype=torch.float64)


def aurc(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the risk-coverage curve of the maximum softmax probability (Geifman, Uziel &
    El-Yaniv, Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers, ICLR 2019):
    (1/n) sum_k risk(k/n). Lower is better; a perfect ranking of errors gives its minimum."""
    if not len(y):
        return float("nan")
    return float(risk_coverage_curve(logits, y).mean())
