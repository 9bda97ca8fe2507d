"""Poly-1 against values computed by hand, then harness's conformance kit (a pytest fixture)."""

import math

import torch

from harness.kinds.loss import LossContext

from harness_poly1 import POLY1


def make(epsilon=1.0, k=4):
    ctx = LossContext(num_classes=k, class_counts=(10,) * k, dataset_size=10 * k, epochs=1)
    return POLY1.build(ctx, epsilon=epsilon)


def test_value_by_hand_at_equal_logits():
    # equal logits: p_t = 1/K, so L = log K + epsilon * (1 - 1/K)
    loss = make(epsilon=2.0, k=4)
    value = loss(torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.arange(3))
    assert math.isclose(value.item(), math.log(4) + 2.0 * (1 - 1 / 4), rel_tol=1e-6)


def test_value_by_hand_at_unequal_logits():
    # logits (log 3, 0): p = (3/4, 1/4). Target 0: CE = log(4/3), 1 - p_t = 1/4; target 1: CE = log 4, 1 - p_t = 3/4
    loss = make(epsilon=1.0, k=2)
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    value = loss(logits, torch.tensor([0, 1]), torch.arange(2))
    expected = ((math.log(4 / 3) + 0.25) + (math.log(4.0) + 0.75)) / 2
    assert math.isclose(value.item(), expected, rel_tol=1e-6)


def test_epsilon_zero_is_cross_entropy():
    logits, y = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 4, 1, 1, 2, 3])
    value = make(epsilon=0.0, k=5)(logits, y, torch.arange(6))
    assert torch.allclose(value, torch.nn.functional.cross_entropy(logits, y))


def test_one_hot_soft_targets_equal_hard_targets():
    loss = make()
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    hard = loss(logits, y, torch.arange(5))
    soft = loss(logits, torch.nn.functional.one_hot(y, 4).float(), torch.arange(5))
    assert torch.allclose(hard, soft)


def test_conforms(harness_check_method):
    harness_check_method(POLY1)
