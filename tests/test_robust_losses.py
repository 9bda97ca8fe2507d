"""Tests of the noise-robust losses: hand-computed values, limiting cases, per-sample state.

Reference values are written out with `math` on small examples, never with the torch code
under test, so a wrong formula in plugins/robust_losses.py fails here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import harness.kinds.loss as kind_loss
from harness.catalog import load_catalog
from harness.kinds import Loss, LossContext
from harness_plugins import losses as base_losses
from harness_plugins import robust_losses as R

NAMES = ("mae", "gce", "sce", "nce_rce", "bootstrap_soft", "bootstrap_hard", "elr", "ldr_kl", "aldr_kl")
SOFT = tuple(n for n in NAMES if n != "aldr_kl")

ROW = [2.0, 0.5, -1.0]


def ctx(k: int = 3, n: int = 8) -> LossContext:
    return LossContext(num_classes=k, class_counts=tuple([n // k] * k), dataset_size=n, epochs=10)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def y(labels) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.int64)


def idx(n: int) -> torch.Tensor:
    return torch.arange(n)


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def ce(row: list[float], target: int) -> float:
    return -math.log(softmax(row)[target])


def methods() -> dict:
    found = []
    R.harness_register_methods(register=found.append)
    base_losses.harness_register_methods(register=found.append)
    return {m.name: m for m in found}


def build(name: str, c: LossContext | None = None, **hp) -> Loss:
    return methods()[name].create(c or ctx(), **hp)


def value(loss: Loss, rows, targets, index=None) -> float:
    logits = t(rows)
    return loss(logits, targets, idx(len(rows)) if index is None else index).item()


def rand_logits(n: int, k: int, seed: int) -> torch.Tensor:
    return 3 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# mae, gce
# ---------------------------------------------------------------------------------------------


def test_mae_hand_value():
    p = softmax(ROW)
    expected = (2 * (1 - p[0]) + 2 * (1 - p[2])) / 2
    assert value(build("mae"), [ROW, ROW], y([0, 2])) == pytest.approx(expected, rel=1e-6)
    # the L1 distance between one-hot and p equals 2(1 - p_y)
    assert sum(abs((1.0 if k == 1 else 0.0) - p[k]) for k in range(3)) == pytest.approx(2 * (1 - p[1]))


def test_gce_hand_value():
    p = softmax(ROW)
    q = 0.7
    assert value(build("gce", q=q), [ROW], y([1])) == pytest.approx((1 - p[1] ** q) / q, rel=1e-6)


def test_gce_limits():
    logits = rand_logits(6, 4, 0).tolist()
    targets = y([0, 1, 2, 3, 0, 1])
    c = ctx(4)
    ce_value = sum(ce(r, int(lab)) for r, lab in zip(logits, targets, strict=True)) / 6
    assert value(build("gce", c, q=1e-4), logits, targets) == pytest.approx(ce_value, rel=2e-3)  # q -> 0: CE
    assert value(build("gce", c, q=1.0), logits, targets) == pytest.approx(value(build("mae", c), logits, targets) / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# sce, nce_rce
# ---------------------------------------------------------------------------------------------


def test_sce_hand_value():
    p = softmax(ROW)
    alpha, beta, a = 0.1, 1.0, -4.0
    # RCE = -sum_k p_k log q_k with q one-hot at 2: log 1 = 0 for k = 2, log 0 := A for the others
    rce = -(p[0] * a + p[1] * a + p[2] * 0.0)
    expected = alpha * ce(ROW, 2) + beta * rce
    assert value(build("sce"), [ROW], y([2])) == pytest.approx(expected, rel=1e-6)


def test_sce_beta0_is_alpha_ce():
    logits = rand_logits(5, 3, 1).tolist()
    targets = y([0, 1, 2, 0, 1])
    ce_value = sum(ce(r, int(lab)) for r, lab in zip(logits, targets, strict=True)) / 5
    assert value(build("sce", alpha=0.3, beta=0.0), logits, targets) == pytest.approx(0.3 * ce_value, rel=1e-6)


def test_nce_rce_hand_value():
    p = softmax(ROW)
    logs = [math.log(v) for v in p]
    nce = logs[0] / sum(logs)
    rce = 4.0 * (1 - p[0])
    assert value(build("nce_rce"), [ROW], y([0])) == pytest.approx(nce + rce, rel=1e-6)


def test_nce_limits():
    nce_only = build("nce_rce", alpha=1.0, beta=0.0)
    assert value(nce_only, [[30.0, 0.0, 0.0]], y([0])) == pytest.approx(0.0, abs=1e-6)  # perfect prediction
    assert value(nce_only, [[0.0, 0.0, 0.0]], y([1])) == pytest.approx(1 / 3, rel=1e-6)  # uniform: 1/K
    assert value(nce_only, [[30.0, 0.0, 0.0]], y([1])) == pytest.approx(0.5, rel=1e-3)  # p_1 = p_2 -> 0: log p_1 / (2 log p_1)


# ---------------------------------------------------------------------------------------------
# bootstrapping
# ---------------------------------------------------------------------------------------------


def test_bootstrap_soft_hand_value():
    p = softmax(ROW)
    beta = 0.95
    target = [beta * (1.0 if k == 1 else 0.0) + (1 - beta) * p[k] for k in range(3)]
    expected = -sum(target[k] * math.log(p[k]) for k in range(3))
    assert value(build("bootstrap_soft"), [ROW], y([1])) == pytest.approx(expected, rel=1e-6)


def test_bootstrap_hard_hand_value():
    p = softmax(ROW)  # argmax is class 0
    beta = 0.8
    expected = -(beta * math.log(p[2]) + (1 - beta) * math.log(p[0]))
    assert value(build("bootstrap_hard"), [ROW], y([2])) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["bootstrap_soft", "bootstrap_hard"])
def test_bootstrap_beta1_is_ce(name):
    logits = rand_logits(4, 3, 2).tolist()
    targets = y([2, 1, 0, 2])
    ce_value = sum(ce(r, int(lab)) for r, lab in zip(logits, targets, strict=True)) / 4
    assert value(build(name, beta=1.0), logits, targets) == pytest.approx(ce_value, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# elr
# ---------------------------------------------------------------------------------------------


def test_elr_lambda0_is_ce():
    logits = rand_logits(4, 3, 3).tolist()
    targets = y([0, 1, 2, 1])
    ce_value = sum(ce(r, int(lab)) for r, lab in zip(logits, targets, strict=True)) / 4
    assert value(build("elr", lam=0.0), logits, targets) == pytest.approx(ce_value, rel=1e-6)


def test_elr_targets_after_one_update_and_loss():
    beta, lam = 0.7, 3.0
    loss = build("elr", ctx(3, n=5), beta=beta, lam=lam)
    rows = [ROW, [0.0, 0.0, 40.0]]  # the second row's p clamps at 1e-4 / 1 - 1e-4
    got = value(loss, rows, y([0, 1]), index=torch.tensor([3, 1]))
    clamped = []
    for r in rows:
        clamped.append([min(max(v, 1e-4), 1 - 1e-4) for v in softmax(r)])
    expected_targets = [[(1 - beta) * v / sum(c) for v in c] for c in clamped]  # t starts at 0
    assert loss.targets[3].tolist() == pytest.approx(expected_targets[0], rel=1e-5)
    assert loss.targets[1].tolist() == pytest.approx(expected_targets[1], rel=1e-5)
    assert loss.targets[0].tolist() == [0.0, 0.0, 0.0]  # untouched
    reg = sum(math.log(1 - sum(a * b for a, b in zip(tt, c, strict=True))) for tt, c in zip(expected_targets, clamped, strict=True)) / 2
    expected = (ce(rows[0], 0) + ce(rows[1], 1)) / 2 + lam * reg
    assert got == pytest.approx(expected, rel=1e-5)
    # a second visit averages: t <- beta t + (1 - beta) p
    loss(t([ROW]), y([0]), torch.tensor([3]))
    second = [beta * a + (1 - beta) * b / sum(clamped[0]) for a, b in zip(expected_targets[0], clamped[0], strict=True)]
    assert loss.targets[3].tolist() == pytest.approx(second, rel=1e-5)


def test_elr_skips_appended_copies():
    loss = build("elr", ctx(3, n=4), lam=3.0)
    rows = [ROW, [1.0, 1.0, 1.0]]
    got = value(loss, rows, y([0, 2]), index=torch.tensor([2, -1]))
    assert loss.targets[[0, 1, 3]].abs().sum().item() == 0.0
    p = [min(max(v, 1e-4), 1 - 1e-4) for v in softmax(ROW)]
    tt = [0.3 * v / sum(p) for v in p]
    expected = (ce(rows[0], 0) + ce(rows[1], 2)) / 2 + 3.0 * math.log(1 - sum(a * b for a, b in zip(tt, p, strict=True)))
    assert got == pytest.approx(expected, rel=1e-5)
    # only copies: cross-entropy alone
    only = value(loss, [ROW], y([1]), index=torch.tensor([-1]))
    assert only == pytest.approx(ce(ROW, 1), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# ldr_kl, aldr_kl
# ---------------------------------------------------------------------------------------------


def ldr_scores(row: list[float]) -> list[float]:
    sp = [math.log1p(math.exp(v)) for v in row]
    mean = sum(sp) / len(sp)
    return [v / mean for v in sp]


def ldr_d(row: list[float], target: int, margin: float, normalize: bool = True) -> list[float]:
    s = ldr_scores(row) if normalize else row
    return [(margin if k != target else 0.0) + s[k] - s[target] for k in range(len(row))]


def ldr(d: list[float], lam: float) -> float:
    return lam * math.log(sum(math.exp(v / lam) for v in d) / len(d))


def test_ldr_kl_hand_value():
    d = ldr_d(ROW, 1, margin=1.0)
    assert value(build("ldr_kl"), [ROW], y([1])) == pytest.approx(ldr(d, 1.0), rel=1e-6)
    d2 = ldr_d(ROW, 2, margin=0.5)
    assert value(build("ldr_kl", lam=0.3, margin=0.5), [ROW], y([2])) == pytest.approx(ldr(d2, 0.3), rel=1e-6)


def test_ldr_kl_limits():
    d = ldr_d(ROW, 2, margin=1.0)
    # lam -> infinity: the uniform label distribution, the mean of d (a symmetric, MAE-like loss)
    assert value(build("ldr_kl", lam=1e5), [ROW], y([2])) == pytest.approx(sum(d) / 3, rel=1e-4)
    # lam -> 0: the worst case, max_k d_k (the Crammer-Singer hinge)
    assert value(build("ldr_kl", lam=1e-3), [ROW], y([2])) == pytest.approx(max(d), abs=1e-2)
    # lam = 1, no margin, raw logits: cross-entropy - log K
    got = value(build("ldr_kl", lam=1.0, margin=0.0, normalize=False), [ROW], y([1]))
    assert got == pytest.approx(ce(ROW, 1) - math.log(3), rel=1e-6)


def test_aldr_kl_first_step_hand_value():
    lam0, alpha, k = 1.0, 2.0, 3
    loss = build("aldr_kl", ctx(3, n=4), lam0=lam0, alpha=alpha)
    got = value(loss, [ROW], y([0]), index=torch.tensor([2]))
    d = ldr_d(ROW, 0, margin=1.0)
    w = softmax([v / lam0 for v in d])  # worst-case label distribution at the stored lam (lam0 at first)
    kl = sum(wi * math.log(k * wi) for wi in w)
    lam = lam0 * (1 - kl / (alpha * math.log(k)))
    expected = ldr(d, lam) - alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2
    assert got == pytest.approx(expected, rel=1e-5)
    assert loss.lambdas[2].item() == pytest.approx(lam, rel=1e-5)
    assert loss.lambdas[[0, 1, 3]].tolist() == [lam0] * 3
    assert lam0 * (1 - 1 / alpha) <= lam <= lam0


def test_aldr_kl_appended_copies_use_lam0():
    loss = build("aldr_kl", ctx(3, n=4))
    got = value(loss, [ROW], y([1]), index=torch.tensor([-1]))
    assert got == pytest.approx(ldr(ldr_d(ROW, 1, 1.0), 1.0), rel=1e-6)
    assert loss.lambdas.tolist() == [1.0] * 4


def test_aldr_kl_refuses_soft_targets():
    loss = build("aldr_kl")
    assert loss.accepts_soft_targets is False
    with pytest.raises(ValueError, match="soft"):
        loss(t([ROW]), t([[0.5, 0.5, 0.0]]), idx(1))


# ---------------------------------------------------------------------------------------------
# every loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOFT)
def test_one_hot_soft_targets_match_int_targets(name):
    c = ctx(4, n=16)
    logits = rand_logits(16, 4, 4)
    targets = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(5))
    hard = build(name, c)(logits, targets, idx(16))
    soft = build(name, c)(logits, nn.functional.one_hot(targets, 4).float(), idx(16))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)


@pytest.mark.parametrize("name", [n for n in SOFT if n not in ("bootstrap_soft", "bootstrap_hard", "elr")])
def test_soft_targets_are_the_expected_loss(name):
    c = ctx(3)
    logits = rand_logits(2, 3, 6)
    mix = build(name, c)(logits, t([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]]), idx(2)).item()
    a = build(name, c)(logits, y([0, 1]), idx(2)).item()
    b = build(name, c)(logits, y([2, 1]), idx(2)).item()
    # first row mixes labels 0 and 2, second is hard label 1 in both
    assert mix == pytest.approx(0.25 * a + 0.75 * b, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_gradients_for_extreme_logits(name):
    logits = t([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0], [-60.0, 60.0, 1.0]]).requires_grad_()
    out = build(name, ctx(3, n=3))(logits, y([1, 2, 0]), idx(3))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_accepts_half_precision_logits(name):
    out = build(name)(t([ROW]).half(), y([0]), idx(1))
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_registered_methods_are_complete_and_build_with_defaults():
    catalog = load_catalog(autoload=False, plugins=((kind_loss, "kind_loss"), (R, "robust_losses")))
    info = catalog.plugins["robust_losses"]
    assert info.ok, info.error
    assert catalog.methods.names() == [*NAMES, "coteaching", "nested_coteaching"]  # two networks: tests/test_training_methods.py, tests/test_nested_coteaching.py
    for name in NAMES:
        m = catalog.methods.get(name)
        assert m.kind == "loss"
        assert m.summary.strip() and m.paper.strip() and m.url.startswith("https://")
        for p in m.params:
            assert p.doc.strip(), f"{name}.{p.name} has no doc"
        loss = m.build(ctx(3, n=4), **{p.name: p.default for p in m.params})
        assert isinstance(loss, Loss)
        loss.start_epoch(0)
        out = loss(t([ROW, ROW]), y([0, 2]), idx(2))
        assert out.dim() == 0 and torch.isfinite(out)


def test_paper_defaults():
    defaults = {n: {p.name: p.default for p in m.params} for n, m in methods().items()}
    assert defaults["gce"] == {"q": 0.7}
    assert defaults["sce"] == {"alpha": 0.1, "beta": 1.0, "log_zero": -4.0}
    assert defaults["bootstrap_soft"] == {"beta": 0.95}
    assert defaults["bootstrap_hard"] == {"beta": 0.8}
    assert defaults["elr"] == {"beta": 0.7, "lam": 3.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", NAMES)
def test_state_on_ctx_device(name):
    c = LossContext(num_classes=3, class_counts=(1, 1, 2), dataset_size=4, epochs=10, device="cuda")
    loss = build(name, c)
    assert all(b.device.type == "cuda" for b in loss.buffers())
    got = loss(t([ROW, ROW]).cuda(), y([0, 2]).cuda(), idx(2).cuda()).item()
    assert got == pytest.approx(build(name, ctx(3, n=4))(t([ROW, ROW]), y([0, 2]), idx(2)).item(), rel=1e-4)
