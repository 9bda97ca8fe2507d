"""⊥Grad (`perpgrad`, plugins/optimizers.py): the projection by hand, per tensor and global."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.seams import TrainContext
from harness_plugins import optimizers as O


def ctx():
    return TrainContext(2, (1, 1), 2, 1)


def step_with(params, grads, optimizer):
    def step(recomputed=False):
        optimizer.zero_grad()
        loss = sum((g * p).sum() for p, g in zip(params, grads))  # d loss / d p = g
        loss.backward()
        return loss.detach()

    return step


def test_projection_and_rescaling_by_hand():
    # w = (3, 4), g = (1, 0): w.g / w.w = 3/25, g_perp = (16/25, -12/25), |g_perp| = 4/5, rescaled to |g| = 1: (0.8, -0.6)
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = torch.optim.SGD([w], lr=0.1)
    O.PERPGRAD.create(ctx()).update(step_with([w], [torch.tensor([1.0, 0.0])], optimizer), optimizer)
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.08, 4.0 + 0.06]), atol=1e-6)


def test_without_rescaling_the_step_is_the_plain_projection():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = torch.optim.SGD([w], lr=0.1)
    O.PERPGRAD.create(ctx(), rescale=False).update(step_with([w], [torch.tensor([1.0, 0.0])], optimizer), optimizer)
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.1 * 16 / 25, 4.0 + 0.1 * 12 / 25]), atol=1e-6)


def test_the_gradient_the_optimiser_sees_is_orthogonal_to_the_weights_and_keeps_its_norm():
    g = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4, generator=g)), nn.Parameter(torch.randn(5, generator=g))]
    grads = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.0)  # no move: only the projected gradients are left to read
    O.PERPGRAD.create(ctx()).update(step_with(params, grads, optimizer), optimizer)
    for w, p, original in zip(before, params, grads):
        assert abs(float((w * p.grad).sum())) < 1e-5
        assert math.isclose(float(p.grad.norm()), float(original.norm()), rel_tol=1e-5)


def test_global_scope_projects_all_parameters_as_one_vector_by_hand():
    # w1 = (1, 0), w2 = (0, 1), g1 = (1, 0), g2 = (0, 0).
    # per tensor: g1 is parallel to w1, so nothing is left; global: w = (1,0,0,1), g = (1,0,0,0),
    # g_perp = g - (1/2) w = (1/2, 0, 0, -1/2), rescaled to norm 1: (1, 0, 0, -1) / sqrt 2
    def run(scope):
        w1, w2 = nn.Parameter(torch.tensor([1.0, 0.0])), nn.Parameter(torch.tensor([0.0, 1.0]))
        optimizer = torch.optim.SGD([w1, w2], lr=1.0)
        O.PERPGRAD.create(ctx(), scope=scope).update(step_with([w1, w2], [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])], optimizer), optimizer)
        return w1.detach(), w2.detach()

    w1, w2 = run("tensor")
    assert torch.allclose(w1, torch.tensor([1.0, 0.0])) and torch.allclose(w2, torch.tensor([0.0, 1.0]))
    w1, w2 = run("global")
    r = 1 / math.sqrt(2)
    assert torch.allclose(w1, torch.tensor([1.0 - r, 0.0]), atol=1e-6) and torch.allclose(w2, torch.tensor([0.0, 1.0 + r]), atol=1e-6)


def test_a_zero_tensor_keeps_its_gradient():
    b = nn.Parameter(torch.zeros(2))  # a bias at initialisation: w.w = 0
    optimizer = torch.optim.SGD([b], lr=1.0)
    O.PERPGRAD.create(ctx()).update(step_with([b], [torch.tensor([0.5, -1.0])], optimizer), optimizer)
    assert torch.allclose(b.detach(), torch.tensor([-0.5, 1.0]))
