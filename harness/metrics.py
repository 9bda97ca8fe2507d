"""Classification metrics shared by suites: accuracy, per-class accuracy, shot groups, ECE."""

from __future__ import annotations

import itertools

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
