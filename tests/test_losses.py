"""Tests of the built-in losses: hand-computed values, limiting cases, soft targets, edge cases.

Reference values are written out with `math` on small examples, never with the torch code
under test, so a wrong formula in plugins/losses.py fails here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import harness.kinds.loss as kind_loss
from harness.catalog import load_catalog
from harness.engine import Normalizer, predict
from harness.kinds import Loss, LossContext
from harness.models import SmallCNN, get_classifier
from harness_plugins import losses as L

NAMES = ("ce", "label_smoothing", "focal", "class_balanced", "ldam", "ldam_drw", "balanced_softmax", "logit_adjustment")

LOGITS = [[2.0, 0.5, -1.0]]
COUNTS = (100, 10, 1)


def ctx(counts=COUNTS, epochs=10) -> LossContext:
    return LossContext(num_classes=len(counts), class_counts=tuple(counts), dataset_size=sum(counts), epochs=epochs)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def y(labels) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.int64)


def idx(n: int) -> torch.Tensor:
    return torch.arange(n)


def log_softmax(row: list[float]) -> list[float]:
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def ce(row: list[float], target: int) -> float:
    return -log_softmax(row)[target]


def loss_of(loss: Loss, logits, targets) -> float:
    logits = t(logits)
    return loss(logits, targets, idx(logits.shape[0])).item()


def methods() -> dict:
    found = []
    L.harness_register_methods(register=found.append)
    return {m.name: m for m in found}


def build(name: str, c: LossContext | None = None, **hp) -> Loss:
    return methods()[name].create(c or ctx(), **hp)


# ---------------------------------------------------------------------------------------------
# ce
# ---------------------------------------------------------------------------------------------


def test_ce_hand_value():
    # -log(e^2 / (e^2 + e^0.5 + e^-1)) for target 0 and the same row with target 2: batch mean
    s = math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)
    expected = ((math.log(s) - 2.0) + (math.log(s) + 1.0)) / 2
    got = loss_of(build("ce"), LOGITS * 2, y([0, 2]))
    assert got == pytest.approx(expected, rel=1e-6)


def test_ce_soft_hand_value():
    s = math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)
    expected = -(0.7 * (2.0 - math.log(s)) + 0.3 * (0.5 - math.log(s)))
    assert loss_of(build("ce"), LOGITS, t([[0.7, 0.3, 0.0]])) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# label_smoothing
# ---------------------------------------------------------------------------------------------


def test_label_smoothing_hand_value():
    eps, k = 0.1, 3
    q = [1 - eps + eps / k, eps / k, eps / k]
    lp = log_softmax(LOGITS[0])
    expected = -sum(qi * li for qi, li in zip(q, lp, strict=True))
    assert loss_of(build("label_smoothing", eps=eps), LOGITS, y([0])) == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_soft_target_is_smoothed():
    eps = 0.3
    q = [(1 - eps) * 0.5 + eps / 3, (1 - eps) * 0.5 + eps / 3, eps / 3]
    lp = log_softmax(LOGITS[0])
    expected = -sum(qi * li for qi, li in zip(q, lp, strict=True))
    assert loss_of(build("label_smoothing", eps=eps), LOGITS, t([[0.5, 0.5, 0.0]])) == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_eps0_is_ce():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).tolist()
    targets = y([0, 1, 2, 3, 4, 0, 1, 2])
    c = ctx((5, 4, 3, 2, 1))
    assert loss_of(build("label_smoothing", c, eps=0.0), logits, targets) == pytest.approx(loss_of(build("ce", c), logits, targets), rel=1e-6)


def test_label_smoothing_matches_torch_reference():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    targets = y([0, 1, 2, 3, 0, 1])
    ref = nn.functional.cross_entropy(logits, targets, label_smoothing=0.2).item()
    assert build("label_smoothing", ctx((4, 3, 2, 1)), eps=0.2)(logits, targets, idx(6)).item() == pytest.approx(ref, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# focal
# ---------------------------------------------------------------------------------------------


def test_focal_hand_value():
    p0 = math.exp(log_softmax(LOGITS[0])[0])
    p1 = math.exp(log_softmax(LOGITS[0])[1])
    expected = (-((1 - p0) ** 2) * math.log(p0) - ((1 - p1) ** 2) * math.log(p1)) / 2
    assert loss_of(build("focal", gamma=2.0), LOGITS * 2, y([0, 1])) == pytest.approx(expected, rel=1e-6)


def test_focal_soft_hand_value():
    p = [math.exp(v) for v in log_softmax(LOGITS[0])]
    expected = -(0.6 * (1 - p[0]) ** 2 * math.log(p[0]) + 0.4 * (1 - p[2]) ** 2 * math.log(p[2]))
    assert loss_of(build("focal"), LOGITS, t([[0.6, 0.0, 0.4]])) == pytest.approx(expected, rel=1e-6)


def test_focal_gamma0_is_ce():
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(2)).tolist()
    targets = y([0, 1, 2, 0, 1, 2, 0, 0])
    assert loss_of(build("focal", gamma=0.0), logits, targets) == pytest.approx(loss_of(build("ce"), logits, targets), rel=1e-6)


def test_focal_is_smaller_than_ce_for_easy_examples():
    assert loss_of(build("focal", gamma=2.0), LOGITS, y([0])) < 0.1 * ce(LOGITS[0], 0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_finite_when_confident(gamma):
    logits = t([[80.0, -80.0, 0.0]]).requires_grad_()
    build("focal", gamma=gamma)(logits, y([0]), idx(1)).backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------
# class_balanced
# ---------------------------------------------------------------------------------------------


def cb_weights(counts, beta):
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def test_class_balanced_weights_hand_values():
    # beta = 0.9: E_n = (1 - 0.9^n) / 0.1 -> raw weights 1/E = [0.1/(1-0.9^100), 0.1/(1-0.9^10), 1.0]
    raw = [0.1 / (1 - 0.9**100), 0.1 / (1 - 0.9**10), 1.0]
    expected = [w * 3 / sum(raw) for w in raw]
    got = build("class_balanced", beta=0.9).weights.tolist()
    assert got == pytest.approx(expected, rel=1e-6)
    assert sum(got) == pytest.approx(3.0)
    assert got[2] > got[1] > got[0]  # the rare class weighs most


def test_class_balanced_hand_loss():
    w = cb_weights(COUNTS, 0.9)
    expected = (w[0] * ce(LOGITS[0], 0) + w[2] * ce(LOGITS[0], 2)) / 2  # batch mean of w_y * CE
    assert loss_of(build("class_balanced", beta=0.9), LOGITS * 2, y([0, 2])) == pytest.approx(expected, rel=1e-6)


def test_class_balanced_beta0_is_ce():
    loss = build("class_balanced", beta=0.0)
    assert loss.weights.tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert loss_of(loss, LOGITS * 3, y([0, 1, 2])) == pytest.approx(loss_of(build("ce"), LOGITS * 3, y([0, 1, 2])), rel=1e-6)


def test_class_balanced_beta1_is_inverse_frequency():
    raw = [1 / 100, 1 / 10, 1.0]
    expected = [w * 3 / sum(raw) for w in raw]
    assert build("class_balanced", beta=1.0).weights.tolist() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# ldam
# ---------------------------------------------------------------------------------------------

COS = [[0.5, 0.2, -0.3]]  # LDAM's logits are cosine similarities


def ldam_margins(counts, max_m):
    raw = [n ** -0.25 for n in counts]
    return [m * max_m / max(raw) for m in raw]


def ldam_ce(row, target, margins, s):
    shifted = [s * (v - (margins[target] if j == target else 0.0)) for j, v in enumerate(row)]
    return ce(shifted, target)


def test_ldam_margins():
    m = build("ldam", max_m=0.5).margins.tolist()
    # 100^-1/4, 10^-1/4, 1 scaled so the rarest (n = 1) class gets max_m
    assert m == pytest.approx([0.5 * 100**-0.25, 0.5 * 10**-0.25, 0.5], rel=1e-6)
    assert max(m) == pytest.approx(0.5) and m[2] == max(m)
    assert m[0] / m[1] == pytest.approx((10 / 100) ** 0.25, rel=1e-6)


def test_ldam_hand_value():
    margins = ldam_margins(COUNTS, 0.5)
    # target 1: z = 30 * [0.5, 0.2 - Delta_1, -0.3]
    s = 30.0
    z = [s * 0.5, s * (0.2 - margins[1]), s * -0.3]
    expected_1 = math.log(sum(math.exp(v) for v in z)) - z[1]
    expected_2 = ldam_ce(COS[0], 2, margins, s)
    got = loss_of(build("ldam", max_m=0.5, s=s), COS * 2, y([1, 2]))
    assert got == pytest.approx((expected_1 + expected_2) / 2, rel=1e-5)


def test_ldam_max_m0_s1_is_ce():
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(3)).tolist()
    targets = y([0, 1, 2, 2, 1, 0, 2, 2])
    assert loss_of(build("ldam", max_m=0.0, s=1.0), logits, targets) == pytest.approx(loss_of(build("ce"), logits, targets), rel=1e-6)


def test_ldam_soft_target_is_expected_loss():
    margins = ldam_margins(COUNTS, 0.5)
    expected = 0.25 * ldam_ce(COS[0], 0, margins, 30.0) + 0.75 * ldam_ce(COS[0], 2, margins, 30.0)
    got = loss_of(build("ldam"), COS, t([[0.25, 0.0, 0.75]]))
    assert got == pytest.approx(expected, rel=1e-5)


def test_ldam_soft_path_stable_for_extreme_logits():
    # one class dominating by hundreds of nats: leave-one-out log-sum-exp must stay finite
    logits = t([[40.0, -40.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, -50.0]]).requires_grad_()
    soft = t([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    loss = build("ldam")(logits, soft, idx(3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    hard = build("ldam")(logits[1:].detach(), y([2, 0]), idx(2))
    soft_rows = build("ldam")(logits[1:].detach(), soft[1:], idx(2))
    assert soft_rows.item() == pytest.approx(hard.item(), rel=1e-5)


def test_ldam_prepare_model_installs_cosine_head():
    torch.manual_seed(0)
    model = SmallCNN(10, 1, 28)
    old = get_classifier(model)
    loss = build("ldam", ctx(tuple(range(1, 11))))
    out_model = loss.prepare_model(model)
    assert out_model is model
    head = get_classifier(model)
    assert isinstance(head, L.NormedLinear) and head is not old
    assert head.in_features == old.in_features and head.out_features == 10
    x = torch.randn(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 10)
    assert (logits.abs() <= 1.0 + 1e-5).all()
    # they are cosines between the features and each class vector
    feats = model.features(x)
    cos = nn.functional.cosine_similarity(feats.unsqueeze(1), head.weight.unsqueeze(0), dim=2)
    assert torch.allclose(logits, cos, atol=1e-5)
    # a training step works end to end and reaches the new head
    value = loss(logits, y([0, 3, 9, 5]), idx(4))
    value.backward()
    assert torch.isfinite(value) and head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    # idempotent: preparing again keeps the same head
    loss.prepare_model(model)
    assert get_classifier(model) is head


# ---------------------------------------------------------------------------------------------
# ldam_drw
# ---------------------------------------------------------------------------------------------


def test_ldam_drw_weights_switch_at_drw_epoch():
    loss = build("ldam_drw", ctx(epochs=10), drw_fraction=0.8)
    assert loss.drw_epoch == 8
    loss.start_epoch(0)
    assert loss.weights.tolist() == [1.0, 1.0, 1.0]
    loss.start_epoch(7)
    assert loss.weights.tolist() == [1.0, 1.0, 1.0]
    loss.start_epoch(8)
    assert loss.weights.tolist() == pytest.approx(cb_weights(COUNTS, 0.9999), rel=1e-5)
    loss.start_epoch(9)
    assert loss.weights.tolist() == pytest.approx(cb_weights(COUNTS, 0.9999), rel=1e-5)


def test_ldam_drw_paper_schedule():
    assert build("ldam_drw", ctx(epochs=200)).drw_epoch == 160


def test_ldam_drw_loss_before_and_after():
    margins = ldam_margins(COUNTS, 0.5)
    l0, l2 = ldam_ce(COS[0], 0, margins, 30.0), ldam_ce(COS[0], 2, margins, 30.0)
    loss = build("ldam_drw", ctx(epochs=10))
    loss.start_epoch(0)
    assert loss_of(loss, COS * 2, y([0, 2])) == pytest.approx((l0 + l2) / 2, rel=1e-5)
    loss.start_epoch(9)
    w = cb_weights(COUNTS, 0.9999)
    # the reference code's F.cross_entropy(weight=w): a weighted mean
    expected = (w[0] * l0 + w[2] * l2) / (w[0] + w[2])
    assert loss_of(loss, COS * 2, y([0, 2])) == pytest.approx(expected, rel=1e-5)
    soft = t([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert loss_of(loss, COS * 2, soft) == pytest.approx(expected, rel=1e-5)


def test_ldam_drw_weights_move_with_module():
    names = {n for n, _ in build("ldam_drw").named_buffers()}
    assert {"margins", "weights", "drw_weights"} <= names


# ---------------------------------------------------------------------------------------------
# balanced_softmax and logit_adjustment
# ---------------------------------------------------------------------------------------------


def test_balanced_softmax_hand_value():
    row = [2.0 + math.log(100), 0.5 + math.log(10), -1.0 + math.log(1)]
    assert loss_of(build("balanced_softmax"), LOGITS, y([1])) == pytest.approx(ce(row, 1), rel=1e-6)


def test_balanced_softmax_equal_counts_is_ce():
    c = ctx((7, 7, 7))
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(4)).tolist()
    targets = y([0, 1, 2, 0, 1, 2])
    assert loss_of(build("balanced_softmax", c), logits, targets) == pytest.approx(loss_of(build("ce", c), logits, targets), rel=1e-6)


def test_logit_adjustment_hand_value():
    tau = 0.5
    prior = [100 / 111, 10 / 111, 1 / 111]
    row = [v + tau * math.log(p) for v, p in zip(LOGITS[0], prior, strict=True)]
    assert loss_of(build("logit_adjustment", tau=tau), LOGITS, y([2])) == pytest.approx(ce(row, 2), rel=1e-6)


def test_logit_adjustment_tau1_is_balanced_softmax():
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(5)).tolist()
    targets = y([0, 1, 2, 2, 2, 1, 0, 1])
    la = loss_of(build("logit_adjustment", tau=1.0), logits, targets)
    assert la == pytest.approx(loss_of(build("balanced_softmax"), logits, targets), rel=1e-6)


def test_logit_adjustment_tau0_is_ce():
    assert loss_of(build("logit_adjustment", tau=0.0), LOGITS, y([1])) == pytest.approx(ce(LOGITS[0], 1), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# every loss: soft targets, zero-count classes, registration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_one_hot_soft_targets_match_int_targets(name):
    c = ctx((50, 20, 5, 1))
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(16, 4, generator=gen)
    if name.startswith("ldam"):
        logits = logits.tanh()  # cosine-range logits, as the normalised head gives
    targets = torch.randint(0, 4, (16,), generator=gen)
    loss = build(name, c)
    loss.start_epoch(c.epochs - 1)  # ldam_drw: re-weighting active
    hard = loss(logits, targets, idx(16))
    soft = loss(logits, nn.functional.one_hot(targets, 4).float(), idx(16))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("soft", [False, True])
def test_zero_count_class_gives_finite_loss_and_gradients(name, soft):
    c = ctx((50, 0, 5))
    loss = build(name, c)
    for buf in loss.buffers():
        assert torch.isfinite(buf).all()
    for epoch in (0, c.epochs - 1):
        loss.start_epoch(epoch)
        logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(7)).requires_grad_()
        targets = y([0, 1, 2, 0, 2, 1])
        if soft:
            targets = 0.5 * nn.functional.one_hot(targets, 3).float() + 0.5 / 3
        value = loss(logits, targets, idx(6))
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_accepts_half_precision_logits(name):
    loss = build(name)
    value = loss(t(LOGITS).half(), y([0]), idx(1))
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_registered_methods_are_complete_and_build_with_defaults():
    catalog = load_catalog(autoload=False, plugins=((kind_loss, "kind_loss"), (L, "losses")))
    info = catalog.plugins["losses"]
    assert info.ok, info.error
    assert catalog.methods.names() == [*NAMES, "pskd", "sade"]  # the last two train beyond the logits (tests/test_training_methods.py)
    c = ctx()
    for name in NAMES:
        m = catalog.methods.get(name)
        assert m.kind == "loss"
        assert m.summary.strip() and m.paper.strip() and m.url.startswith("https://")
        defaults = {p.name: p.default for p in m.params}
        for p in m.params:
            assert p.doc.strip(), f"{name}.{p.name} has no doc"
        loss = m.build(c, **defaults)
        assert isinstance(loss, Loss)
        loss.start_epoch(0)
        value = loss(t(LOGITS * 2), y([0, 2]), idx(2))
        assert value.dim() == 0 and torch.isfinite(value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", NAMES)
def test_buffers_on_ctx_device(name):
    c = LossContext(num_classes=3, class_counts=COUNTS, dataset_size=111, epochs=10, device="cuda")
    loss = build(name, c)
    assert all(b.device.type == "cuda" for b in loss.buffers())
    loss.start_epoch(9)
    logits = t(LOGITS * 2).cuda()
    value = loss(logits, y([0, 2]).cuda(), idx(2).cuda())
    cpu = build(name).cpu()
    cpu.start_epoch(9)
    assert value.item() == pytest.approx(cpu(t(LOGITS * 2), y([0, 2]), idx(2)).item(), rel=1e-5)


def test_sade_test_time_aggregation_does_not_depend_on_the_prediction_batch_size():
    # the prediction batch is 256 on a CPU and 1024 on a GPU; the aggregation steps must not follow it
    torch.manual_seed(0)
    k = len(COUNTS)
    sade = L.SADE_METHOD.create(ctx(), tta_epochs=2)
    net = sade.shape_model(SmallCNN(k, 1, 12, width=4), ctx())
    x = torch.randint(0, 255, (300, 1, 12, 12), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    normalizer = Normalizer.fit(x)
    small = predict(net, x, normalizer=normalizer, device="cpu", batch_size=16, predictor=sade)
    small_weights = sade.weights
    large = predict(net, x, normalizer=normalizer, device="cpu", batch_size=1024, predictor=sade)
    assert sade.weights == pytest.approx(small_weights, abs=1e-6) and small_weights != pytest.approx([1 / 3] * 3, abs=1e-6)
    assert torch.allclose(small, large, atol=1e-5)
