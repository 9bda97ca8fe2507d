"""SLA+SD (`sla_sd`, plugins/augmentations.py): the self-distillation terms by hand, the two-headed
model, and training through the engine."""

from __future__ import annotations

import math

import pytest
import torch

from harness.engine import Normalizer, predict, train
from harness.kinds.augmentation import AugmentContext
from harness.models import SmallCNN
from harness.seams import Batch, Outputs, TrainContext
from harness_plugins import augmentations as A
from harness_plugins import losses as L


def sd(k=2, **hp):
    return A.SLA_SD.create(AugmentContext(k, 1), **hp)


def test_aggregation_is_slas_test_time_aggregation():
    torch.manual_seed(0)
    net = SmallCNN(3 * 4, 1, 8, width=4)
    sla = A.SLAModel(net, 3).eval()
    x = torch.randn(5, 1, 8, 8)
    joint = net(A.rotations(x))
    assert torch.allclose(A.aggregate_rotations(joint, 3), sla(x), atol=1e-6)


def test_distillation_terms_by_hand():
    # B = 1, K = 2: rows r = 0..3 are the rotations; joint label k * 4 + r
    joint = torch.zeros(4, 8)
    for r in range(4):
        joint[r, 0 * 4 + r] = 2.0  # class 0, own rotation: 2
        joint[r, 1 * 4 + r] = float(r)  # class 1, own rotation: r
    single = torch.tensor([[0.5, -0.5], [9.0, 9.0], [9.0, 9.0], [9.0, 9.0]])  # only row 0 (unrotated) counts
    y = torch.tensor([1 * 4 + 0, 1 * 4 + 1, 1 * 4 + 2, 1 * 4 + 3])  # class 1
    agg = [2.0, 1.5]  # mean_r of joint[r, k*4+r]
    p = [math.exp(a) / (math.exp(agg[0]) + math.exp(agg[1])) for a in agg]
    q = [math.exp(s) / (math.exp(0.5) + math.exp(-0.5)) for s in (0.5, -0.5)]
    ce = -math.log(q[1])
    kl = sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    assert float(sd(beta=1.0).distillation_loss(joint, single, y)) == pytest.approx(ce + kl, rel=1e-5)
    assert float(sd(beta=0.0).distillation_loss(joint, single, y)) == pytest.approx(kl, rel=1e-5)
    # temperature T: T^2 KL(softmax(agg / T) || softmax(single / T))
    t = 2.0
    pt = [math.exp(a / t) / sum(math.exp(b / t) for b in agg) for a in agg]
    qt = [math.exp(s / t) / (math.exp(0.5 / t) + math.exp(-0.5 / t)) for s in (0.5, -0.5)]
    klt = sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(pt, qt))
    assert float(sd(beta=0.0, temperature=t).distillation_loss(joint, single, y)) == pytest.approx(t * t * klt, rel=1e-5)


def test_the_aggregate_is_a_constant_target():
    joint = torch.randn(4, 8, requires_grad=True)
    single = torch.randn(4, 2, requires_grad=True)
    sd(beta=0.0).distillation_loss(joint, single, torch.tensor([0, 1, 2, 3])).backward()
    assert joint.grad is None or float(joint.grad.abs().sum()) == 0.0
    assert float(single.grad[:1].abs().sum()) > 0 and float(single.grad[1:].abs().sum()) == 0.0


def test_two_headed_model_trains_and_predicts_with_the_single_head_in_one_pass():
    torch.manual_seed(0)
    aug = sd(k=4)
    model = aug.shape_model(SmallCNN(4, 1, 12, width=4), TrainContext(4, (16,) * 4, 64, 2))
    x = torch.randint(0, 255, (64, 1, 12, 12), dtype=torch.uint8)
    y = torch.arange(64) % 4
    normalizer = Normalizer.fit(x)
    single_before = model.single.weight.detach().clone()
    loss = L.CE.create(TrainContext(16, (16,) * 16, 64, 2))  # the objective trains the 4 x 4 joint labels
    train(model, x, y, recipe={"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
          parts=[aug, loss], normalizer=normalizer, seed=0, device="cpu")
    assert not torch.equal(single_before, model.single.weight)
    logits = predict(model, x, normalizer=normalizer, device="cpu")
    model.eval()
    with torch.no_grad():
        expected = model.single(model.net(normalizer(x)))
    assert logits.shape == (64, 4) and torch.allclose(logits, expected, atol=1e-5)
    model.train()
    joint, heads = model.forward_heads(normalizer(x[:2]))
    assert joint.shape == (2, 16) and heads["single"].shape == (2, 4)


def test_extra_loss_reads_the_single_head_of_the_batchs_outputs():
    aug = sd(k=2)
    joint, single = torch.randn(8, 8), torch.randn(8, 2)
    batch = Batch(torch.zeros(8, 1, 2, 2), torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]), torch.arange(8))
    out = Outputs(joint, heads={"single": single})
    assert torch.allclose(aug.extra_loss(batch, out), aug.distillation_loss(joint, single, batch.y))
