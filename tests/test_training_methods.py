"""Methods that prove the training seam: SAM (owns the update), PS-KD (per-sample history),
Co-teaching (a peer network), SADE (heads and test-time aggregation), RankMixup (views)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.engine import AuxModel, Normalizer, predict, train
from harness.kinds.augmentation import AugmentContext
from harness.kinds.loss import LossContext
from harness.models import SmallCNN
from harness.seams import Batch, Outputs, TrainContext
from harness.training import peer_seed
from harness_plugins import augmentations as A
from harness_plugins import losses as L
from harness_plugins import optimizers as O
from harness_plugins import robust_losses as R

RECIPE = {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0}


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, q * 6 : q * 6 + 6] += 150
    return x, y


def ctx(n=64, k=4, epochs=RECIPE["epochs"], counts=None):
    return TrainContext(k, tuple(counts or (n // k,) * k), n, epochs)


def model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(4, 1, 12, width=4)


def run(parts, *, seed=0, net=None, aux=None, recipe=None):
    x, y = toy_data()
    m = net if net is not None else model(seed)
    log = train(m, x, y, recipe={**RECIPE, **(recipe or {})}, parts=parts, normalizer=Normalizer.fit(x), seed=seed, device="cpu", aux=aux)
    return m, log


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# sam
# ---------------------------------------------------------------------------------------------


def test_sam_with_rho_zero_is_sgd_step_for_step():
    ce = L.CE.create(ctx())
    sgd, sgd_log = run([ce])
    sam, sam_log = run([L.CE.create(ctx()), O.SAM.create(ctx(), rho=0.0)])
    assert same_weights(sgd, sam) and sgd_log.train_loss == sam_log.train_loss


def test_sam_takes_the_gradient_at_the_ascent_point_by_hand():
    # L(w) = sum(w^4) / 4: grad = w^3. w = (1, 2), rho = 0.5: g = (1, 8), e = 0.5 g / |g| = (1, 8) / (2 sqrt 65);
    # the step uses grad at w + e, and the weights come back to w before the SGD step (lr 0.1)
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([w], lr=0.1)

    def step(recomputed=False):
        optimizer.zero_grad()
        loss = (w**4).sum() / 4
        loss.backward()
        return loss.detach()

    loss = O.SAM.create(ctx(), rho=0.5).update(step, optimizer)
    e = torch.tensor([1.0, 8.0]) / (2 * math.sqrt(65))
    expected = torch.tensor([1.0, 2.0]) - 0.1 * (torch.tensor([1.0, 2.0]) + e) ** 3
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert float(loss) == pytest.approx((1 + 16) / 4)  # the reported loss is L(w), the first pass's


def test_adaptive_sam_scales_the_ball_by_the_weights():
    # ASAM: e = rho T^2 g / |T g| with T = |w|; w = (1, 2), g = w^3 = (1, 8): T g = (1, 16), T^2 g = (1, 32)
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([w], lr=0.1)

    def step(recomputed=False):
        optimizer.zero_grad()
        ((w**4).sum() / 4).backward()
        return torch.zeros(())

    O.SAM.create(ctx(), rho=0.5, adaptive=True).update(step, optimizer)
    e = 0.5 * torch.tensor([1.0, 32.0]) / math.sqrt(1 + 256)
    assert torch.allclose(w.detach(), torch.tensor([1.0, 2.0]) - 0.1 * (torch.tensor([1.0, 2.0]) + e) ** 3, atol=1e-6)


def test_sam_differs_from_sgd_when_rho_is_positive():
    sgd, _ = run([L.CE.create(ctx())])
    sam, _ = run([L.CE.create(ctx()), O.SAM.create(ctx())])
    assert not same_weights(sgd, sam)


# ---------------------------------------------------------------------------------------------
# pskd
# ---------------------------------------------------------------------------------------------


def test_pskd_with_alpha_zero_is_cross_entropy_step_for_step():
    ce, ce_log = run([L.CE.create(ctx())])
    pskd, pskd_log = run([L.PSKD.create(ctx(), alpha_T=0.0)])
    assert same_weights(ce, pskd)
    assert ce_log.train_loss == pytest.approx(pskd_log.train_loss, abs=1e-6)


def test_pskd_targets_mix_the_label_with_last_epochs_prediction_by_hand():
    loss = L.PSKD.create(ctx(n=4, k=2, epochs=4), alpha_T=0.8)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets, index = torch.tensor([0, 1]), torch.tensor([0, 3])
    loss.start_epoch(0)  # alpha_0 = 0.8 * 1/4 = 0.2, but the history starts as the labels: plain CE
    assert float(loss(logits, targets, index)) == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)
    recorded = F.softmax(logits, dim=1)
    assert torch.allclose(loss.history[index], recorded)
    loss.start_epoch(1)  # alpha_1 = 0.8 * 2/4 = 0.4
    new_logits = torch.tensor([[0.5, 0.5], [1.0, -1.0]])
    soft = 0.6 * F.one_hot(targets, 2).float() + 0.4 * recorded
    expected = -(soft * F.log_softmax(new_logits, dim=1)).sum(1).mean()
    assert float(loss(new_logits, targets, index)) == pytest.approx(float(expected), rel=1e-6)


def test_pskd_does_not_record_on_an_extra_pass_of_the_step():
    loss = L.PSKD.create(ctx(n=4, k=2), alpha_T=0.8)
    loss.start_epoch(1)
    batch = Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), torch.tensor([0, 1]))
    loss.objective(batch, Outputs(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), recomputed=True))
    assert float(loss.history.abs().sum()) == 0.0
    loss.objective(batch, Outputs(torch.tensor([[3.0, 0.0], [0.0, 3.0]])))
    assert float(loss.history.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------
# coteaching
# ---------------------------------------------------------------------------------------------


def test_coteaching_with_forget_rate_zero_is_two_independent_cross_entropy_runs():
    net, peer = model(0), model(peer_seed(0, "peer"))
    loss = R.COTEACHING.create(ctx(), forget_rate=0.0)
    run([loss], net=net, aux={"peer": AuxModel(peer, trainable=True)})
    alone, _ = run([L.CE.create(ctx())], net=model(0))
    peer_alone, _ = run([L.CE.create(ctx())], net=model(peer_seed(0, "peer")))
    assert same_weights(net, alone) and same_weights(peer, peer_alone)


def test_coteaching_trains_each_network_on_the_samples_its_peer_finds_easiest_by_hand():
    loss = R.COTEACHING.create(ctx(k=2), forget_rate=0.5, num_gradual=0)
    loss.start_epoch(0)
    assert loss.rate == 0.5
    targets = torch.tensor([0, 0, 0, 0])
    mine = torch.tensor([[4.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]], requires_grad=True)  # easiest: rows 0, 1
    peers = torch.tensor([[0.0, 5.0], [0.0, 1.0], [3.0, 0.0], [4.0, 0.0]], requires_grad=True)  # easiest: rows 3, 2
    value = loss.cross_update(mine, peers, targets)
    ce_mine = F.cross_entropy(mine[[2, 3]], targets[[2, 3]])  # the peer's picks
    ce_peer = F.cross_entropy(peers[[0, 1]], targets[[0, 1]])  # my picks
    assert float(value.detach()) == pytest.approx(float((ce_mine + ce_peer).detach()), rel=1e-6)


def test_coteaching_forget_rate_rises_linearly_over_num_gradual_epochs():
    assert [R.forget_rate_schedule(e, 0.4, 5, 1.0) for e in range(7)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


# ---------------------------------------------------------------------------------------------
# sade
# ---------------------------------------------------------------------------------------------


def test_inverse_prior_reverses_the_prior_in_rank_by_hand():
    # ranks (ascending): class 1 (0.1) 0, class 3 (0.1) 1, class 2 2, class 0 3; each class takes the
    # value of the reversed rank: class 0 the smallest, class 1 the largest
    assert torch.allclose(L.inverse_prior(torch.tensor([0.5, 0.1, 0.3, 0.1])), torch.tensor([0.1, 0.5, 0.1, 0.3]))
    assert torch.allclose(L.inverse_prior(torch.tensor([0.6, 0.1, 0.3])), torch.tensor([0.1, 0.6, 0.3]))


def test_sade_expert_losses_by_hand_and_on_a_balanced_prior():
    counts = (30, 10, 60)
    sade = L.SADE_METHOD.create(ctx(n=100, k=3, counts=counts))
    v = [torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[0.5, 0.5, 0.5]])]
    y = torch.tensor([1])
    prior = torch.tensor(counts, dtype=torch.float) / 100
    inverse = torch.tensor([0.3, 0.6, 0.1])  # ranks reversed: the rarest class (1) gets the largest value
    expected = (F.cross_entropy(v[0], y) + F.cross_entropy(v[1] + prior.log(), y)
                + F.cross_entropy(v[2] + prior.log() - 2.0 * inverse.log(), y))
    assert float(sade.expert_losses(*v, y)) == pytest.approx(float(expected), rel=1e-5)
    balanced = L.SADE_METHOD.create(ctx(n=90, k=3, counts=(30, 30, 30)))  # every expert's loss is plain CE
    assert float(balanced.expert_losses(*v, y)) == pytest.approx(sum(float(F.cross_entropy(z, y)) for z in v), rel=1e-5)


def test_sade_trains_three_experts_and_predicts_their_aggregate():
    sade = L.SADE_METHOD.create(ctx(), tta_epochs=0)
    net = sade.shape_model(model(0), ctx())
    run([sade], net=net)
    x, _ = toy_data()
    normalizer = Normalizer.fit(x)
    heads = net.forward_heads(normalizer(x[:8]))[1]
    assert sorted(heads) == ["expert0", "expert1", "expert2"] and not torch.allclose(heads["expert0"], heads["expert2"])
    equal = predict(net, x, normalizer=normalizer, device="cpu", predictor=sade)
    assert torch.allclose(equal, predict(net, x, normalizer=normalizer, device="cpu"), atol=1e-5)  # 1/3 each = model(x)
    learned = L.SADE_METHOD.create(ctx(), tta_epochs=3)
    a = predict(net, x, normalizer=normalizer, device="cpu", predictor=learned)
    b = predict(net, x, normalizer=normalizer, device="cpu", predictor=learned)
    assert torch.equal(a, b)  # the test-time views are seeded
    assert len(learned.weights) == 3 and sum(learned.weights) == pytest.approx(1.0) and learned.weights != [1 / 3] * 3


# ---------------------------------------------------------------------------------------------
# rankmixup v2: separate forward passes, the loss on the raw rows only
# ---------------------------------------------------------------------------------------------


def test_rankmixup_keeps_the_raw_batch_and_puts_the_mixes_in_a_view():
    aug = A.RANKMIXUP.create(AugmentContext(4, 1))
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % 4
    out = aug.transform(Batch(x, y, torch.arange(8)), torch.Generator().manual_seed(0))
    assert torch.equal(out.x, x) and torch.equal(out.y, y)
    view = out.views["rankmixup"]
    assert view.x.shape == (24, 1, 4, 4) and view.y.shape == (24, 4) and bool((view.index == -1).all())


def test_rankmixup_loss_sees_the_raw_rows_only():
    class Spy(L.CrossEntropy):
        rows = []

        def forward(self, logits, targets, index):
            self.rows.append(len(targets))
            return super().forward(logits, targets, index)

    spy = Spy(LossContext(4, (16,) * 4, 64, 1))
    run([A.RANKMIXUP.create(AugmentContext(4, 1)), spy], recipe={"epochs": 1})
    assert spy.rows and set(spy.rows) == {16}  # batches of 16 raw rows; the 48 mixed rows never reach the loss
