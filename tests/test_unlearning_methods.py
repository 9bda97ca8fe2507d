"""Each built-in unlearning method's update, on a tiny model and tiny data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.kinds import UnlearnContext
from harness_plugins import unlearning as U

K = 4


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, K))


def tiny_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 2, 4, generator=g), torch.randint(0, K, (n,), generator=g)


def ctx(**kw) -> UnlearnContext:
    return UnlearnContext(**{"num_classes": K, "epochs": 1, "lr": 0.1, "batch_size": 8, **kw})


def ce(model: nn.Module, data) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(data[0]), data[1]))


FORGET, RETAIN = tiny_data(8, 1), tiny_data(16, 2)


def test_every_method_registers_with_a_paper_and_an_lr_centre():
    names = [m.name for m in U.METHODS]
    assert names == ["retrain", "finetune", "ga", "rl", "l1_sparse", "salun", "npo", "scrub"]
    for m in U.METHODS:
        assert m.kind == "unlearning" and m.paper and m.url.startswith("https://")
        assert "lr" in {p.name for p in m.params}
        built = m.create(ctx())
        out = built.unlearn(tiny_model(), FORGET, RETAIN, ctx())
        assert isinstance(out, nn.Module)


def test_ga_increases_the_forget_loss_after_one_step():
    model = tiny_model()
    before = ce(model, FORGET)
    U.GradientAscent().unlearn(model, FORGET, RETAIN, ctx(batch_size=len(FORGET[1])))
    assert ce(model, FORGET) > before


def test_rl_labels_are_never_the_true_label_and_uniform_over_the_others():
    y = torch.randint(0, K, (4000,), generator=torch.Generator().manual_seed(0))
    r = U.random_other_labels(y, K, torch.Generator().manual_seed(1))
    assert (r != y).all() and r.min() >= 0 and r.max() < K
    counts = torch.bincount((r - y) % K, minlength=K)  # shifts 1..K-1, each ~1/3
    assert counts[0] == 0 and (counts[1:].float() / len(y) - 1 / (K - 1)).abs().max() < 0.03


def test_rl_trains_on_the_random_labels_plus_retain(monkeypatch):
    seen = {}

    def fake_fit(model, data, c, loss_fn, **kw):
        seen["data"], seen["mask"] = data, kw.get("mask")
        return model

    monkeypatch.setattr(U, "_fit", fake_fit)
    U.RandomLabels().unlearn(tiny_model(), FORGET, RETAIN, ctx())
    x, y = seen["data"]
    n = len(FORGET[1])
    assert torch.equal(x[:n], FORGET[0]) and (y[:n] != FORGET[1]).all()
    assert torch.equal(x[n:], RETAIN[0]) and torch.equal(y[n:], RETAIN[1]) and seen["mask"] is None


def test_finetune_only_sees_retain_data():
    model = tiny_model()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    U.FineTune().unlearn(model, FORGET, RETAIN, ctx(epochs=2))
    batch_rows = torch.cat(seen)
    assert len(batch_rows) == 2 * len(RETAIN[1])
    for row in batch_rows:
        assert (RETAIN[0] == row).flatten(1).all(1).any() and not (FORGET[0] == row).flatten(1).all(1).any()


def test_l1_penalty_and_its_linear_schedule():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.5, -2.0]]))
        model.bias.fill_(-0.5)
    with torch.no_grad():
        assert float(U.l1_penalty(model)) == pytest.approx(4.0)
    assert [U.l1_gamma(5e-4, e, 4) for e in range(4)] == pytest.approx([5e-4, 3.75e-4, 2.5e-4, 1.25e-4])


def test_l1_sparse_shrinks_the_weights_more_than_finetune():
    a, b = tiny_model(), tiny_model()
    c = ctx(epochs=3, lr=0.05)
    U.FineTune().unlearn(a, FORGET, RETAIN, c)
    U.L1Sparse(gamma=0.05).unlearn(b, FORGET, RETAIN, c)
    assert float(U.l1_penalty(b)) < float(U.l1_penalty(a))


def test_salun_mask_keeps_exactly_the_top_fraction_by_gradient_magnitude():
    model = tiny_model()
    c = ctx()
    mask = U.saliency_mask(model, FORGET, c, fraction=0.5)
    model.zero_grad()
    F.cross_entropy(model.eval()(FORGET[0]), FORGET[1], reduction="sum").backward()
    g = torch.cat([p.grad.abs().flatten() for p in model.parameters()])
    m = torch.cat([mask[n].flatten() for n, _ in model.named_parameters()])
    assert int(m.sum()) == int(0.5 * g.numel())
    assert g[m.bool()].min() >= g[~m.bool()].max()


def test_salun_changes_only_the_masked_weights():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    mask = U.saliency_mask(copy.deepcopy(model), FORGET, ctx(), 0.5)
    U.SalUn(0.5).unlearn(model, FORGET, RETAIN, ctx(epochs=2))
    changed = 0
    for name, p in model.named_parameters():
        moved = p.detach() != before[name]
        assert not (moved & (mask[name] == 0)).any(), name
        changed += int(moved.sum())
    assert changed > 0


def test_npo_loss_matches_the_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.1, 0.2, 0.3, 0.4]])
    ref = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    y = torch.tensor([0, 3])
    beta = 0.1
    p = logits.softmax(1)[torch.arange(2), y]
    p_ref = ref.softmax(1)[torch.arange(2), y]
    expected = (2 / beta) * torch.log1p((p / p_ref) ** beta).mean()
    assert float(U.npo_loss(logits, ref, y, beta)) == pytest.approx(float(expected), rel=1e-5)


def test_npo_gradient_tends_to_gradient_ascent_as_beta_goes_to_zero():
    model = tiny_model()
    ref = copy.deepcopy(model)
    with torch.no_grad():  # a reference different from the model, so the weights are not trivially 1
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, y = FORGET

    def grad(loss_of):
        model.zero_grad()
        loss_of().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    g_ga = grad(lambda: -F.cross_entropy(model(x), y))
    g_small = grad(lambda: U.npo_loss(model(x), ref(x).detach(), y, 1e-4))
    g_paper = grad(lambda: U.npo_loss(model(x), ref(x).detach(), y, 1.0))
    assert torch.allclose(g_small, g_ga, atol=1e-4, rtol=1e-3)
    assert not torch.allclose(g_paper, g_ga, atol=1e-3)
    assert F.cosine_similarity(g_paper, g_ga, 0) > 0  # same broad direction: descent on log p


def test_npo_and_scrub_raise_the_forget_loss():
    for method in (U.NPO(beta=0.1, retain_weight=0.0), U.SCRUB_METHOD.create(ctx(), max_epochs=1, alpha=0.0, gamma=0.0)):
        model = tiny_model()
        before = ce(model, FORGET)
        # SCRUB with gamma=alpha=0 does only its max step (KL away from the teacher) on the forget set
        method.unlearn(model, FORGET, RETAIN, ctx(epochs=1, lr=0.5, batch_size=len(FORGET[1])))
        assert ce(model, FORGET) != pytest.approx(before)


def test_scrub_distill_kl_is_teacher_to_student_times_t_squared():
    s, t = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    T = 2.0
    ps, pt = (s / T).softmax(1), (t / T).softmax(1)
    expected = float((pt * (pt.log() - ps.log())).sum() * T**2)
    assert float(U.distill_kl(s, t, T)) == pytest.approx(expected, rel=1e-5)
    assert float(U.distill_kl(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_retrain_returns_the_reference_or_trains_from_scratch():
    c = ctx()
    gold = tiny_model()
    c.retrained = gold  # what the unlearning suite passes to a reference method
    out = U.Retrain().unlearn(tiny_model(), FORGET, RETAIN, c)
    assert out is not gold and all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), gold.state_dict().values()))
    original = tiny_model()
    scratch = U.Retrain().unlearn(copy.deepcopy(original), FORGET, RETAIN, ctx())
    assert not torch.equal(scratch[1].weight, original[1].weight)
    assert U.Retrain.is_reference and not U.Retrain.lr_search
