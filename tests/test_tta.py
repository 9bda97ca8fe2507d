"""The update rule of every built-in TTA method on a tiny BatchNorm model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness.kinds import AdaptContext
from harness_plugins import tta

K = 4
CTX = AdaptContext(num_classes=K)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, K))
    bn = model[1]
    bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0]))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.1]))
    return model.eval()


def batch(seed: int = 1, n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def build(name: str, **params):
    method = {m.name: m for m in tta.METHODS}[name]
    return method.create(CTX, **params).adapt(tiny_model(), CTX)


def state(adapter) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": v.clone() for k, m in adapter.modules.items() for n, v in m.state_dict().items()}


def entropy(logits: torch.Tensor) -> float:
    return float(tta.softmax_entropy(logits).mean())


def test_source_is_the_model_in_eval_mode_and_never_changes():
    model, x = tiny_model(), batch()
    adapter = tta.SOURCE.create(CTX).adapt(model, CTX)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(adapter(x), expected)
    assert torch.allclose(adapter(batch(2)), model(batch(2)))
    assert torch.allclose(adapter(x), expected)


def test_bn_adapt_normalises_with_the_test_batch_statistics():
    model, x = tiny_model(), batch()
    adapter = tta.BN_ADAPT.create(CTX).adapt(model, CTX)
    with torch.no_grad():
        h = model[0](x)
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        bn = model[1]
        h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        expected = model[5](model[4](model[3](model[2](h))))
    assert torch.allclose(adapter(x), expected, atol=1e-5)
    # prior N mixes the source statistics in: mu = N/(N+n) mu_s + n/(N+n) mu_t
    n, prior = len(x), 48.0
    mixed = tta.BN_ADAPT.create(CTX, prior=prior).adapt(model, CTX)
    with torch.no_grad():
        h = model[0](x)
        a = prior / (prior + n)
        mu = a * bn.running_mean + (1 - a) * h.mean((0, 2, 3))
        var = a * bn.running_var + (1 - a) * h.var((0, 2, 3), unbiased=False)
        h = (h - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        expected = model[5](model[4](model[3](model[2](h))))
    assert torch.allclose(mixed(x), expected, atol=1e-5)
    # the caller's model keeps its BatchNorm and statistics
    assert isinstance(model[1], nn.BatchNorm2d) and torch.allclose(model[1].running_mean, torch.tensor([0.1, -0.2, 0.3]))


def test_tent_step_changes_only_bn_affine_and_lowers_entropy():
    adapter = build("tent", optimizer="sgd", lr=0.5)
    x = batch()
    before = state(adapter)
    out = adapter(x)
    with torch.no_grad():
        fresh = build("tent", optimizer="sgd", lr=0.5).model(x)
    assert torch.allclose(out, fresh)  # returns the prediction before the update
    after = state(adapter)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.1.weight", "model.1.bias"}
    with torch.no_grad():
        assert entropy(adapter.model(x)) < entropy(out)


@pytest.mark.parametrize("name", ["source", "bn_adapt", "tent", "eata", "sar", "rmt", "cotta", "tent_filtered"])
def test_reset_restores_the_initial_state_exactly(name):
    params = {"n_aug": 2} if name == "cotta" else {}
    if name in ("eata", "sar"):
        params["lr"] = 0.1
    adapter = build(name, **params)
    initial = state(adapter)
    x0 = batch(7)
    first = adapter(x0).clone()
    for seed in range(3):
        adapter(batch(seed))
    adapter.reset()
    assert all(torch.equal(initial[k], v) for k, v in state(adapter).items())
    assert torch.allclose(adapter(x0), first, atol=1e-6)  # same prediction as a fresh adapter


def test_adapters_never_modify_the_callers_model():
    model = tiny_model()
    reference = copy.deepcopy(model.state_dict())
    for m in tta.METHODS:
        params = {"n_aug": 2} if m.name == "cotta" else {}
        adapter = m.create(CTX, **params).adapt(model, CTX)
        adapter(batch())
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def hand_logits() -> torch.Tensor:
    """Row 0: confident (low entropy); row 1: uniform (entropy ln K); row 2: fairly confident."""
    return torch.tensor([[8.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])


def test_sar_filter_excludes_high_entropy_samples_and_recovers():
    adapter = build("sar")
    assert math.isclose(adapter.e0, 0.4 * math.log(K))
    ent = tta.softmax_entropy(hand_logits())
    assert ent[0] < adapter.e0 < ent[1]
    assert adapter.select(hand_logits()).tolist() == [True, False, bool(ent[2] < adapter.e0)]
    # recovery: an entropy-loss EMA below the reset constant restores the source state
    eager = build("sar", lr=0.1, reset_constant=100.0)
    initial = state(eager)
    eager.e0 = 100.0  # let every sample through
    eager(batch())
    assert eager.recoveries == 1 and eager.ema is None
    assert all(torch.equal(initial[k], v) for k, v in state(eager).items())
    # without recovery, one SAM step changes only the BN affine parameters
    plain = build("sar", lr=0.1, reset_constant=0.0)
    plain.e0 = 100.0
    before = state(plain)
    plain(batch())
    after = state(plain)
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"model.1.weight", "model.1.bias"}


def test_eata_reliability_and_redundancy_filters_and_weights():
    adapter = build("eata")
    assert math.isclose(adapter.e0, 0.4 * math.log(K))
    logits = hand_logits()
    keep, ent = adapter.select(logits)
    assert keep.tolist() == (ent < adapter.e0).tolist() and keep[0] and not keep[1]
    # the moving average now holds these predictions: the same confident samples are redundant
    assert adapter.probs is not None
    keep2, _ = adapter.select(logits)
    assert not keep2.any()
    # a sample whose prediction is orthogonal to the moving average is not redundant
    other = torch.tensor([[0.0, 0.0, 0.0, 9.0]])
    keep3, _ = adapter.select(other)
    assert keep3.tolist() == [True]
    adapter.reset()
    assert adapter.probs is None


def test_tent_filtered_excludes_samples_whose_confidence_dropped():
    initial = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    now = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    # 0: class-0 probability rose -> kept; 1: class-1 probability fell -> dropped;
    # 2: the initially predicted class 0 lost probability to class 1 -> dropped
    assert tta.TentFilteredAdapter.select(now, initial).tolist() == [True, False, False]
    assert tta.TentFilteredAdapter.select(initial, initial).all()  # unchanged confidence is kept
    adapter = build("tent_filtered", optimizer="sgd", lr=0.5)
    adapter(batch())
    assert adapter.last_selected.all()  # first batch: the model is still the initial one
    before = state(adapter)
    adapter(batch(2))
    assert 0 < int(adapter.last_selected.sum()) <= len(adapter.last_selected)
    assert not torch.equal(before["model.1.weight"], state(adapter)["model.1.weight"])


def test_cotta_restoration_limits_and_teacher_ema():
    x = batch()
    keep_all = build("cotta", rst=1.0, n_aug=2)
    source = {k: v.clone() for k, v in keep_all.student.state_dict().items()}
    keep_all(x)
    student = keep_all.student.state_dict()
    assert all(torch.equal(source[k], student[k]) for k in source)  # p = 1: every weight restored
    never = build("cotta", rst=0.0, n_aug=2, momentum=0.5)
    teacher0 = {n: p.clone() for n, p in never.teacher.named_parameters()}
    never(x)
    assert any(not torch.equal(source[n], p) for n, p in never.student.named_parameters())  # p = 0: it adapted
    for n, p in never.teacher.named_parameters():  # teacher = 0.5 teacher + 0.5 student
        assert torch.allclose(p, 0.5 * teacher0[n] + 0.5 * dict(never.student.named_parameters())[n], atol=1e-6)
    # the augmentation-averaged pseudo-label is used exactly when the anchor is unconfident
    for ap, drawn in ((0.0, False), (1.0, True)):
        adapter = build("cotta", ap=ap, rst=0.0, n_aug=2)
        state0 = adapter.generator.get_state()
        adapter(x)
        assert (not torch.equal(adapter.generator.get_state(), state0)) == drawn


def test_rmt_symmetric_cross_entropy_and_teacher_update():
    s, t = torch.tensor([[2.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    p, q = s.softmax(1), t.softmax(1)
    expected = -0.5 * (q * p.log()).sum() - 0.5 * (p * q.log()).sum()
    assert torch.allclose(tta.symmetric_cross_entropy(s, t), expected.view(1))
    assert torch.allclose(tta.symmetric_cross_entropy(s, t), tta.symmetric_cross_entropy(t, s))
    adapter = build("rmt", momentum=0.9)
    teacher0 = {n: p.clone() for n, p in adapter.teacher.named_parameters()}
    x = batch()
    with torch.no_grad():
        ensemble = adapter.student(x) + adapter.teacher(x)
    assert torch.allclose(adapter(x), ensemble, atol=1e-6)  # prediction: student + teacher (before the update)
    student = dict(adapter.student.named_parameters())
    assert any(not torch.equal(teacher0[n], student[n]) for n in teacher0)  # all student parameters adapt
    for n, p in adapter.teacher.named_parameters():
        assert torch.allclose(p, 0.9 * teacher0[n] + 0.1 * student[n], atol=1e-6)
