"""Continual-learning strategies: each update against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.kinds import Strategy, StrategyContext, Task
from harness_plugins.strategies import (
    EWC,
    EWC_METHOD,
    L2,
    METHODS,
    Joint,
    LwF,
    Naive,
    Replay,
    Reservoir,
    diagonal_fisher,
    distillation,
)


def _ctx(**kw) -> StrategyContext:
    return StrategyContext(num_classes=kw.pop("num_classes", 3), num_tasks=2, epochs=1, batch_size=4, normalize=lambda z: z.float() / 255, **kw)


def _task(i: int, classes: tuple[int, ...], n: int = 6) -> Task:
    g = torch.Generator().manual_seed(i)
    y = torch.tensor([classes[j % len(classes)] for j in range(n)])
    return Task(i, torch.randint(0, 256, (n, 1, 2, 2), generator=g, dtype=torch.uint8), y, classes)


def test_every_strategy_is_registered_with_a_paper():
    names = {m.name for m in METHODS}
    assert names == {"naive", "joint", "replay", "ewc", "l2", "lwf"}
    assert all(m.kind == "strategy" and m.paper for m in METHODS)


def test_naive_sees_the_current_task_and_joint_every_task_so_far():
    tasks = [_task(0, (0,)), _task(1, (1,)), _task(2, (2,))]
    assert Naive(_ctx()).train_tasks(tasks) == tasks[-1:]
    assert Strategy().train_tasks(tasks) == tasks[-1:]
    assert Joint(_ctx()).train_tasks(tasks) == tasks
    assert Joint(_ctx()).train_tasks(tasks[:1]) == tasks[:1]


def test_diagonal_fisher_of_a_linear_softmax_model_matches_the_hand_computation():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    fisher = diagonal_fisher(model, x)
    # d log p_c / dW = (e_c - p) x^T, d log p_c / db = e_c - p; F = mean_n sum_c p_c (grad)^2
    expect_w, expect_b = torch.zeros(3, 2), torch.zeros(3)
    with torch.no_grad():
        for xn in x:
            p = model(xn).softmax(-1)
            for c in range(3):
                e = torch.zeros(3)
                e[c] = 1
                expect_w += p[c] * torch.outer(e - p, xn) ** 2
                expect_b += p[c] * (e - p) ** 2
    assert torch.allclose(fisher["weight"], expect_w / 2, atol=1e-6)
    assert torch.allclose(fisher["bias"], expect_b / 2, atol=1e-6)


def test_ewc_penalty_is_half_lambda_fisher_weighted_squared_distance():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ewc = EWC(_ctx(), lam=10.0, fisher_samples=100)
    task = Task(0, torch.randint(0, 256, (5, 4), dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 0]), (0, 1))
    ewc.after_task(model, task)
    fisher = diagonal_fisher(model, task.x.float() / 255)
    anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert ewc.penalty(model, torch.zeros(1, 4), torch.zeros(1, 3)).item() == pytest.approx(0.0)
    with torch.no_grad():
        model.weight.add_(0.5)
        model.bias.sub_(1.0)
    expected = 0.5 * 10.0 * sum(float((fisher[k] * (p - anchor[k]) ** 2).sum()) for k, p in model.named_parameters())
    assert ewc.penalty(model, torch.zeros(1, 4), torch.zeros(1, 3)).item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0
    assert EWC_METHOD.create(_ctx()).penalty(model, torch.zeros(1, 4), torch.zeros(1, 3)) is None  # no past task yet


def test_l2_penalty_value():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.0)
    l2 = L2(_ctx(), lam=0.4)
    assert l2.penalty(model, torch.zeros(1, 2), torch.zeros(1, 1)) is None
    l2.after_task(model, _task(0, (0,)))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0]]))  # moved by (1, -2)
        model.bias.fill_(3.0)  # moved by 3
    # 0.4 / 2 * (1 + 4 + 9) = 2.8
    assert l2.penalty(model, torch.zeros(1, 2), torch.zeros(1, 1)).item() == pytest.approx(2.8)


def test_lwf_distillation_value_on_the_old_classes():
    new = torch.tensor([[1.0, 0.0, 5.0]])
    old = torch.tensor([[0.0, 2.0, -1.0]])
    # T = 2 over classes {0, 1}: q = softmax([0, 1]), r = softmax([0.5, 0])
    q = [1 / (1 + math.e), math.e / (1 + math.e)]
    r = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    expected = -(q[0] * math.log(r[0]) + q[1] * math.log(r[1]))
    assert distillation(new[:, :2], old[:, :2], 2.0).item() == pytest.approx(expected, rel=1e-6)

    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, 0.0]]))  # logits of x=(1, 0) = old
    lwf = LwF(_ctx(), alpha=1.0, temperature=2.0)
    lwf.before_task(model, _task(0, (0, 1)))
    assert lwf.penalty(model, torch.tensor([[1.0, 0.0]]), new) is None  # first task: nothing to distil
    lwf.after_task(model, _task(0, (0, 1)))
    lwf.before_task(model, _task(1, (2,)))
    with torch.no_grad():
        model.weight.zero_()  # the current model changes; the frozen copy must not
    value = lwf.penalty(model, torch.tensor([[1.0, 0.0]]), new)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_reservoir_never_exceeds_its_size_and_keeps_the_first_samples_until_full():
    res = Reservoir(5, seed=0)
    res.add(torch.arange(3).view(3, 1), torch.arange(3))
    assert len(res) == 3 and res.y[:3].tolist() == [0, 1, 2]
    for start in range(3, 200, 7):
        res.add(torch.arange(start, start + 7).view(7, 1), torch.arange(start, start + 7))
        assert len(res) == 5 and res.x.shape[0] == 5
    assert len(set(res.y.tolist())) == 5  # distinct samples


def test_reservoir_keeps_every_sample_with_equal_probability():
    # 2000 independent streams of 100 samples into a buffer of 10: each sample is kept with
    # probability 10/100; a chi-square test of the 100 inclusion counts (df 99) at the 0.001 level.
    n, size, reps = 100, 10, 2000
    hits = torch.zeros(n)
    for rep in range(reps):
        res = Reservoir(size, seed=rep)
        for start in range(0, n, 16):  # offered in batches of 16
            ids = torch.arange(start, min(n, start + 16))
            res.add(ids.view(-1, 1), ids)
        hits[res.y] += 1
    expected = reps * size / n
    chi2 = float(((hits - expected) ** 2 / expected).sum())
    assert chi2 < 148.2  # chi-square(99) 0.999 quantile
    assert hits.sum() == reps * size


def test_replay_appends_an_equal_batch_from_the_buffer_after_the_first_task():
    replay = Replay(_ctx(num_classes=3), memory=4)
    x, y = torch.zeros(3, 1, 2, 2), torch.tensor([2, 2, 2])
    g = torch.Generator().manual_seed(0)
    assert replay.batch(x, y, g)[0] is x  # empty buffer: unchanged
    replay.after_task(nn.Identity(), _task(0, (0, 1), n=10))
    assert len(replay.buffer) == 4
    bx, by = replay.batch(x, y, g)
    assert bx.shape == (6, 1, 2, 2) and set(by[3:].tolist()) <= {0, 1}
    soft = torch.full((3, 3), 1 / 3)
    _, sy = replay.batch(x, soft, g)
    assert sy.shape == (6, 3) and torch.allclose(sy.sum(1), torch.ones(6))
