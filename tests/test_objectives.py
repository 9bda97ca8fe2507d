"""Objectives of plugins/objectives.py and plugins/loss_terms.py: values written out with `math`,
limiting cases that reduce to a known loss (through the engine, step for step), invariances."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from harness.engine import Normalizer, train
from harness.models import SmallCNN
from harness.seams import Batch, Outputs, TrainContext
from harness_plugins import loss_terms as T
from harness_plugins import losses as L
from harness_plugins import objectives as O
from harness_plugins import robust_losses as R

RECIPE = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0}


def ctx(k=3, n=30, seed=0):
    return TrainContext(k, (n // k,) * k, n, RECIPE["epochs"], seed=seed)


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, q * 6 : q * 6 + 6] += 150
    return x, y


def run(parts, seed=0):
    x, y = toy_data()
    torch.manual_seed(seed)
    model = SmallCNN(4, 1, 12, width=4)
    log = train(model, x, y, recipe=RECIPE, parts=parts, normalizer=Normalizer.fit(x), seed=seed, device="cpu")
    return model, log


def weights_close(a, b, atol=1e-6):
    return all(torch.allclose(p, q, atol=atol) for p, q in zip(a.parameters(), b.parameters()))


Z = [[2.0, -1.0, 0.5]]


# ---------------------------------------------------------------------------------------------
# stablemax
# ---------------------------------------------------------------------------------------------


def test_stablemax_value_by_hand():
    # s(2) = 3, s(-1) = 1/2, s(0.5) = 1.5: p = (3, 0.5, 1.5) / 5; label 1 -> -log(0.1)
    loss = O.STABLEMAX.create(ctx())
    value = loss(torch.tensor(Z), torch.tensor([1]), torch.arange(1))
    assert float(value) == pytest.approx(-math.log(0.5 / 5), rel=1e-6)
    soft = loss(torch.tensor(Z), torch.tensor([[0.5, 0.0, 0.5]]), torch.arange(1))
    assert float(soft) == pytest.approx(-0.5 * math.log(3 / 5) - 0.5 * math.log(1.5 / 5), rel=1e-6)


def test_stablemax_s_is_linear_above_zero_and_reciprocal_below():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 100.0])
    assert torch.allclose(O.stablemax_s(x), torch.tensor([1 / 4, 1 / 1.5, 1.0, 1.5, 101.0]))


def test_stablemax_predicts_log_stablemax_so_softmax_gives_its_probabilities():
    loss = O.STABLEMAX.create(ctx())
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    out = loss.predict(model, [torch.tensor(Z)])
    assert torch.allclose(F.softmax(out, dim=1), torch.tensor([[3 / 5, 0.5 / 5, 1.5 / 5]]), atol=1e-6)


def test_stablemax_gradients_stay_finite_where_softmax_collapses():
    # float32 softmax of a gap of 200 gives p_y = 1 exactly and a zero gradient (Softmax Collapse); StableMax keeps a gradient
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    O.STABLEMAX.create(ctx())(logits, torch.tensor([0]), torch.arange(1)).backward()
    assert bool(torch.isfinite(logits.grad).all()) and float(logits.grad.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------
# spherical_zloss
# ---------------------------------------------------------------------------------------------


def test_spherical_zloss_value_by_hand():
    # o = (2, -1, 0.5): mean 0.5, population variance (2.25 + 2.25 + 0) / 3 = 1.5; z_0 = 1.5 / sqrt(1.5)
    a, b = 0.5, 2.0
    loss = O.SPHERICAL_ZLOSS.create(ctx(), a=a, b=b)
    z0 = 1.5 / math.sqrt(1.5)
    expected = math.log1p(math.exp(a * (b - z0))) / a
    assert float(loss(torch.tensor(Z), torch.tensor([0]), torch.arange(1))) == pytest.approx(expected, rel=1e-5)


def test_spherical_zloss_is_shift_and_scale_invariant():
    loss = O.SPHERICAL_ZLOSS.create(ctx())
    z, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1])
    base = loss(z, y, torch.arange(5))
    assert float(loss(7.0 * z - 3.0, y, torch.arange(5))) == pytest.approx(float(base), rel=1e-5)
    assert float(loss(torch.zeros(1, 3), torch.tensor([0]), torch.arange(1))) == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-6)  # z = 0


# ---------------------------------------------------------------------------------------------
# comp_sum: Phi^tau(u) = log(1 + u) (tau = 1), ((1 + u)^(1 - tau) - 1) / (1 - tau) otherwise
# ---------------------------------------------------------------------------------------------


def phi_by_definition(u: float, tau: float) -> float:
    return math.log1p(u) if tau == 1.0 else ((1.0 + u) ** (1.0 - tau) - 1.0) / (1.0 - tau)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.3, 2.0, 3.0])
def test_comp_sum_matches_phi_tau_of_the_sum_of_exponentials(tau):
    z, label = Z[0], 2
    u = sum(math.exp(z[k] - z[label]) for k in range(3) if k != label)
    value = O.COMP_SUM.create(ctx(), tau=tau)(torch.tensor(Z), torch.tensor([label]), torch.arange(1))
    assert float(value) == pytest.approx(phi_by_definition(u, tau), rel=1e-5)


def test_comp_sum_closed_forms_sum_exponential_ce_and_mae():
    logits, y = torch.tensor(Z), torch.tensor([1])
    p = F.softmax(logits, dim=1)[0, 1].item()
    assert float(O.COMP_SUM.create(ctx(), tau=0.0)(logits, y, torch.arange(1))) == pytest.approx(1 / p - 1, rel=1e-5)  # sum-exponential
    assert float(O.COMP_SUM.create(ctx(), tau=1.0)(logits, y, torch.arange(1))) == pytest.approx(-math.log(p), rel=1e-6)  # logistic
    mae = R.MAE.create(ctx())(logits, y, torch.arange(1))  # 2 (1 - p_y)
    assert float(O.COMP_SUM.create(ctx(), tau=2.0)(logits, y, torch.arange(1))) == pytest.approx(float(mae) / 2, rel=1e-6)


def test_comp_sum_near_tau_one_tends_to_cross_entropy():
    logits, y = torch.tensor(Z), torch.tensor([1])
    ce = float(F.cross_entropy(logits, y))
    assert float(O.COMP_SUM.create(ctx(), tau=1.0 + 1e-4)(logits, y, torch.arange(1))) == pytest.approx(ce, rel=1e-3)


def test_comp_sum_tau_one_is_cross_entropy_step_for_step():
    ce, ce_log = run([L.CE.create(ctx(k=4))])
    comp, comp_log = run([O.COMP_SUM.create(ctx(k=4), tau=1.0)])
    assert weights_close(ce, comp) and comp_log.train_loss == pytest.approx(ce_log.train_loss, rel=1e-5)


def test_comp_sum_between_one_and_two_is_gce_step_for_step():
    # tau = 1 + q: (1 - p_y^q) / q, the generalized cross-entropy
    gce, gce_log = run([R.GCE.create(ctx(k=4), q=0.7)])
    comp, comp_log = run([O.COMP_SUM.create(ctx(k=4), tau=1.7)])
    assert weights_close(gce, comp) and comp_log.train_loss == pytest.approx(gce_log.train_loss, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# ensloss (one-vs-all)
# ---------------------------------------------------------------------------------------------


def test_ensloss_assigns_sorted_draws_by_margin_rank_with_the_tail_and_offset():
    loss = O.ENSLOSS.create(ctx(k=2))
    margins = torch.tensor([[3.0, -0.5], [0.2, 2.0]])
    draws = torch.tensor([-1.0, -0.6, -0.3, -0.1])  # ascending: the smallest margin gets -1
    g = loss.derivatives(margins, draws)
    # ranks: -0.5 -> -1.0, 0.2 -> -0.6, 2.0 -> -0.3 / 2, 3.0 -> -0.1 / 3 (margins above 1: divided by the margin)
    expected = torch.tensor([[-0.1 / 3, -1.0], [-0.6, -0.3 / 2.0]]) - 1e-6
    assert torch.allclose(g, expected)


def test_ensloss_draws_are_calibrated_derivatives():
    loss = O.ENSLOSS.create(ctx(k=3))
    draws = loss.draw(1000)
    assert bool((draws[1:] >= draws[:-1]).all()) and float(draws.min()) >= -1.0 and float(draws.max()) < 0.0


def test_ensloss_gradient_is_the_drawn_derivative_times_the_one_vs_all_sign():
    loss = O.ENSLOSS.create(ctx(k=3))
    logits = torch.tensor([[1.0, 0.0, -2.0], [0.5, 3.0, 0.1]], requires_grad=True)
    y = torch.tensor([0, 1])
    value = loss(logits, y, torch.arange(2))
    value.backward()
    sign = 2.0 * F.one_hot(y, 3).float() - 1.0
    g = loss.derivatives(sign * logits.detach(), loss.draws)
    assert torch.allclose(logits.grad, g * sign / 2)  # d/dz_ik of mean_i sum_k g_ik s_ik z_ik
    assert float(value.detach()) == pytest.approx(float((g * sign * logits.detach()).sum() / 2), rel=1e-6)


def test_ensloss_reuses_the_steps_draws_on_an_extra_pass():
    loss = O.ENSLOSS.create(ctx(k=3))
    batch = Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), torch.arange(2))
    loss.objective(batch, Outputs(torch.randn(2, 3)))
    first = loss.draws.clone()
    loss.objective(batch, Outputs(torch.randn(2, 3), recomputed=True))
    assert torch.equal(first, loss.draws)
    loss.objective(batch, Outputs(torch.randn(2, 3)))
    assert not torch.equal(first, loss.draws)


# ---------------------------------------------------------------------------------------------
# palm_zloss (kind loss_term)
# ---------------------------------------------------------------------------------------------


def test_palm_zloss_value_by_hand():
    term = T.PALM_ZLOSS.create(ctx())
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    out = term.extra_loss(Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), torch.arange(2)), Outputs(logits))
    assert float(out) == pytest.approx(1e-4 * (math.log(3) ** 2 + math.log(4) ** 2) / 2, rel=1e-6)


def test_palm_zloss_with_coef_zero_is_cross_entropy_step_for_step():
    ce, ce_log = run([L.CE.create(ctx(k=4))])
    both, both_log = run([L.CE.create(ctx(k=4)), T.PALM_ZLOSS.create(ctx(k=4), coef=0.0)])
    assert weights_close(ce, both, atol=0.0) and both_log.train_loss == ce_log.train_loss
    pulled, _ = run([L.CE.create(ctx(k=4)), T.PALM_ZLOSS.create(ctx(k=4), coef=1.0)])
    assert not weights_close(ce, pulled)
