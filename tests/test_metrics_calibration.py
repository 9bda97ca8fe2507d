"""Calibration metrics (harness.metrics): ECE, NLL, Brier score and AURC, each against a value
computed by hand and against a perfectly calibrated synthetic case (labels drawn from the
predicted distribution), where each must approach its calibrated value as n grows."""

from __future__ import annotations

import math

import pytest
import torch

from harness.metrics import aurc, brier_score, expected_calibration_error, negative_log_likelihood, risk_coverage_curve

LOG3 = math.log(3.0)


def test_values_by_hand():
    # p = softmax((log 3, 0)) = (3/4, 1/4)
    z, y = torch.tensor([[LOG3, 0.0]]), torch.tensor([0])
    assert negative_log_likelihood(z, y) == pytest.approx(-math.log(0.75))
    assert negative_log_likelihood(z, torch.tensor([1])) == pytest.approx(math.log(4.0))
    assert brier_score(z, y) == pytest.approx(0.25**2 + 0.25**2)  # (3/4 - 1)^2 + (1/4 - 0)^2
    assert brier_score(z, torch.tensor([1])) == pytest.approx(0.75**2 + 0.75**2)
    # two predictions of confidence 3/4, one right and one wrong: one bin, |1/2 - 3/4| = 1/4
    assert expected_calibration_error(torch.tensor([[LOG3, 0.0], [LOG3, 0.0]]), torch.tensor([0, 1])) == pytest.approx(0.25)


def test_aurc_by_hand_and_with_ties():
    # confidences 0.665 (right), 1/3 (wrong: the arg-max of a tie is class 0), 0.844 (wrong)
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    # by confidence: wrong, right, wrong -> risks 1/1, 1/2, 2/3
    assert risk_coverage_curve(z, y).tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert aurc(z, y) == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    # two samples of equal confidence, one right and one wrong: the expected risk at coverage 1/2 is
    # 1/2 whichever comes first, so the order of the inputs does not matter
    tied = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert aurc(tied, torch.tensor([0, 1])) == pytest.approx(0.5)
    assert aurc(tied, torch.tensor([1, 0])) == pytest.approx(0.5)
    # perfect ranking: every error less confident than every correct prediction
    ranked = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    assert aurc(ranked, torch.tensor([0, 0, 1])) == pytest.approx((0 + 0 + 1 / 3) / 3)


def test_empty_sets_are_undefined():
    z, y = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    assert all(math.isnan(f(z, y)) for f in (negative_log_likelihood, brier_score, aurc))


def calibrated_sample(n: int, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the softmax of those logits: perfectly calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).flatten()
    return z, y


def test_a_perfectly_calibrated_model_scores_its_expected_values():
    small, large = calibrated_sample(2_000), calibrated_sample(200_000)
    # ECE -> 0 as n grows (only sampling noise is left)
    assert expected_calibration_error(*large) < 0.01 < expected_calibration_error(*small)
    z, y = large
    p = torch.softmax(z, 1)
    # E[NLL] = mean entropy of p; E[Brier] = mean (1 - sum_k p_k^2); within 4 standard errors
    entropy = -(p * p.log()).sum(1)
    assert negative_log_likelihood(z, y) == pytest.approx(float(entropy.mean()), abs=4 * float(entropy.std()) / math.sqrt(len(y)) + 0.01)
    assert brier_score(z, y) == pytest.approx(float((1 - p.pow(2).sum(1)).mean()), abs=0.005)
    # E[AURC] = mean_k of the mean of (1 - confidence) over the k most confident samples
    conf = torch.sort(p.max(1).values, descending=True).values
    expected = (torch.cumsum(1 - conf, 0) / torch.arange(1, len(conf) + 1)).mean()
    assert aurc(z, y) == pytest.approx(float(expected), abs=0.005)


def test_a_miscalibrated_model_is_told_apart():
    # the same labels, logits three times too sharp: overconfident, so ECE, NLL and Brier rise
    z, y = calibrated_sample(50_000)
    assert expected_calibration_error(3 * z, y) > 0.1 > expected_calibration_error(z, y)
    assert negative_log_likelihood(3 * z, y) > negative_log_likelihood(z, y)
    assert brier_score(3 * z, y) > brier_score(z, y)
