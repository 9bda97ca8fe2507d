"""Each built-in unlearning method's update, on a tiny model and tiny data."""

from __future__ import annotations

import copy
import math

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


class TinyNet(nn.Module):
    """A representation (`features`) and a `classifier` head, as every harness model has."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU())
        self.classifier = nn.Linear(6, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


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
    assert names == ["retrain", "finetune", "ga", "rl", "l1_sparse", "salun", "npo", "scrub", "dmm", "laf", "flat", "s3t"]
    for m in U.METHODS:
        assert m.kind == "unlearning" and m.paper and m.url.startswith("https://")
        assert "lr" in {p.name for p in m.params}
        c = ctx(original=TinyNet(), epochs=1)
        built = m.create(c, **({"epochs": 1} if m.name == "s3t" else {}))
        out = built.unlearn(TinyNet(), FORGET, RETAIN, c)
        assert isinstance(out, nn.Module) and out(FORGET[0]).shape == (len(FORGET[1]), K)


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


# ---------------------------------------------------------------------------------------------
# what a method reads: forget labels hidden, retain set hidden
# ---------------------------------------------------------------------------------------------


def test_declared_access_of_each_method_and_it_runs_without_what_it_does_not_read():
    from harness_plugins.unlearning_extensions import reads

    expected = {"retrain": (False, True), "finetune": (False, True), "ga": (True, False), "rl": (True, True), "l1_sparse": (False, True),
                "salun": (True, True), "npo": (True, True), "scrub": (False, True), "dmm": (True, True), "laf": (False, True),
                "flat": (True, False), "s3t": (False, False)}
    for m in U.METHODS:
        assert reads(m.create(ctx())) == expected[m.name], m.name
    assert reads(U.NPO_METHOD.create(ctx(), retain_weight=0.0)) == (True, False)  # plain NPO needs no retain set
    unlabeled = (FORGET[0], None)
    for m in ("finetune", "l1_sparse", "scrub", "laf"):
        method = next(x for x in U.METHODS if x.name == m).create(ctx())
        assert isinstance(method.unlearn(TinyNet(), unlabeled, RETAIN, ctx(original=TinyNet())), nn.Module)
    for method in (U.GradientAscent(), U.NPO(beta=0.1, retain_weight=0.0), U.FLAT("total_variation")):
        assert isinstance(method.unlearn(TinyNet(), FORGET, None, ctx()), nn.Module)


# ---------------------------------------------------------------------------------------------
# dmm: per-sample Jacobians, the Newton removal step, matching
# ---------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Flatten())
        self.classifier = nn.Linear(3 * 2 * 4, K)
        bn = self.features[1]
        with torch.no_grad():  # running statistics and affine parameters away from their defaults
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_per_sample_jacobians_match_autograd_per_sample():
    from torch.func import functional_call, jacrev, vmap

    model = ConvBN().eval()
    x = torch.randn(5, 1, 2, 4, generator=torch.Generator().manual_seed(3))
    jac, logits = U.per_sample_jacobians(model, x)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    per = vmap(jacrev(lambda p, xi: functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)), in_dims=(None, 0))(params, x)
    expected = torch.cat([per[n].reshape(5, K, -1) for n in params], dim=2)
    assert jac.shape == (5, K, sum(p.numel() for p in params.values()))
    assert torch.allclose(jac, expected, atol=1e-5) and torch.allclose(logits, model(x), atol=1e-6)


def _fit_l2_softmax(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, wd: float) -> nn.Linear:
    """Minimise mean CE + wd/2 ||theta||^2 to convergence (L-BFGS)."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12, history_size=50)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + wd / 2 * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return model


def test_newton_removal_step_predicts_retraining_of_a_convex_model():
    # softmax regression with L2 is convex: one Newton step from the full optimum, with the exact
    # (Gauss-Newton = true) Hessian and no projection, lands close to the retrained optimum
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g).double()
    y = (x[:, :K] + 0.8 * torch.randn(200, K, generator=g).double()).argmax(1)
    wd = 1e-2
    torch.manual_seed(0)
    full = _fit_l2_softmax(nn.Linear(5, K).double(), x, y, wd)
    retrained = _fit_l2_softmax(copy.deepcopy(full), x[8:], y[8:], wd)
    delta = U.newton_removal_direction(full, (x[:8], y[:8]), (x[8:], y[8:]), project_dim=10_000, weight_decay=wd, seed=0, batch_size=64)
    with torch.no_grad():
        z_full, z_retrained = full(x), retrained(x)
    predicted = z_full + U.linearised_change(full, delta, x, 64).double()
    error_before = (z_full - z_retrained).abs().mean()
    error_after = (predicted - z_retrained).abs().mean()
    assert error_after < 0.1 * error_before


def _trained_tiny(x, y, seed: int, steps: int = 300) -> TinyNet:
    model = TinyNet(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_dmm_with_a_perfect_attribution_oracle_reproduces_the_retrained_outputs():
    x, y = tiny_data(48, 5)
    forget, retain = (x[:12], y[:12]), (x[12:], y[12:])
    original, retrained = _trained_tiny(x, y, 0), _trained_tiny(*retain, 1)
    with torch.no_grad():
        oracle = (retrained(forget[0]), retrained(retain[0]))

    dmm = U.DatamodelMatching(retain_ratio=3.0, project_dim=64, damping=1.0, targets=lambda m, f, r: oracle)
    out = dmm.unlearn(copy.deepcopy(original), forget, retain, ctx(epochs=300, lr=0.01, batch_size=16)).eval()
    with torch.no_grad():
        before = F.mse_loss(original(x), retrained(x))
        after = F.mse_loss(out(x), retrained(x))
    assert after < 0.05 * before


def test_damping_shrinks_the_newton_step_to_nothing_in_its_limit():
    # damping adds c * (mean Gauss-Newton eigenvalue) to the curvature: 0 is the plain Newton step
    # (tested above), larger c gives a strictly shorter step, and c -> infinity gives delta -> 0,
    # so DMM's targets fall back to the original's own outputs
    x, y = tiny_data(48, 5)
    model = _trained_tiny(x, y, 0)
    norms = []
    for c in (0.0, 1.0, 1e8):
        delta = U.newton_removal_direction(model, (x[:12], y[:12]), (x[12:], y[12:]), project_dim=64, weight_decay=5e-4, seed=0, batch_size=16,
                                           damping=c)
        norms.append(float(sum(v.double().norm() ** 2 for v in delta.values()) ** 0.5))
    assert norms[0] > norms[1] > norms[2]
    assert norms[2] < 1e-5 * norms[0]


def test_dmm_computes_its_attribution_once_per_original_and_forget_set(monkeypatch):
    calls = []
    real = U.newton_removal_direction
    monkeypatch.setattr(U, "newton_removal_direction", lambda *a, **k: calls.append(1) or real(*a, **k))
    U.DatamodelMatching._cache.clear()
    original = TinyNet()
    for lr in (0.01, 0.03):  # the suite's learning-rate candidates start from copies of one original
        U.DMM.create(ctx(lr=lr)).unlearn(copy.deepcopy(original), FORGET, RETAIN, ctx(lr=lr))
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# laf
# ---------------------------------------------------------------------------------------------


def test_laf_losses_by_hand():
    e = torch.zeros(3, 4)
    recon = e.clone()
    recon[:, 0] = 1.0  # squared error 1 per sample: exp(1 / 2) each
    assert float(U.nmse(recon, e)) == pytest.approx(3 * math.exp(0.5))
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    forget, teacher_f = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 1 - cos = 0 and 1
    # retain equal to its teacher: c = 0 for both; loss = sum_i (0 - log(e^0 + e^1)) = -2 log(1 + e)
    value = U.representation_alignment_loss(a, a, forget, teacher_f, temperature=1.0)
    assert float(value) == pytest.approx(-2 * math.log(1 + math.e))


def test_laf_reads_no_label_keeps_the_head_and_moves_forget_representations_away():
    x, y = tiny_data(64, 7)
    original = _trained_tiny(x, y, 0)
    forget, retain = (x[:16], None), (x[16:], None)  # no label at all
    out = U.LAF.create(ctx()).unlearn(copy.deepcopy(original), forget, retain, ctx(epochs=20, lr=0.01, batch_size=16))
    assert torch.equal(out.classifier.weight, original.classifier.weight)  # the head is not touched (no repair)
    with torch.no_grad():
        def drift(rows):
            return 1 - F.cosine_similarity(U.features_and_logits(out, rows)[0], U.features_and_logits(original, rows)[0]).mean()

        assert drift(x[:16]) > 1.5 * drift(x[16:])


# ---------------------------------------------------------------------------------------------
# flat
# ---------------------------------------------------------------------------------------------


def test_flat_loss_for_each_divergence_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    y, template = torch.tensor([0, 1]), torch.tensor([1, 2])
    p = logits.softmax(1)
    p_f = float((p[0, 0] + p[1, 1]) / 2)  # batch-mean probability of the forget answers
    p_e = float((p[0, 1] + p[1, 2]) / 2)  # ... and of the template answers
    expected = {
        "kl": -p_e + math.exp(p_f - 1),
        "total_variation": -math.tanh(p_e) / 2 + math.tanh(p_f) / 2,
        "jensen_shannon": math.log(1 + math.exp(-p_e)) - math.log(2) + p_f + math.log(1 + math.exp(-p_f)) - math.log(2),
        "pearson": -p_e + p_f**2 / 4 + p_f,
    }
    for divergence, value in expected.items():
        assert float(U.flat_loss(logits, y, template, divergence)) == pytest.approx(value, rel=1e-6), divergence


def test_flat_template_is_the_runner_up_class_and_flat_lowers_the_forget_answer():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 5.0, 0.0, 4.0]])
    model = nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
        model.bias.zero_()
    assert U.runner_up_labels(model, logits, torch.tensor([0, 1]), 8).tolist() == [1, 3]
    assert U.runner_up_labels(model, logits, torch.tensor([1, 3]), 8).tolist() == [0, 1]
    original = _trained_tiny(*tiny_data(48, 5), 0)
    out = U.FLAT("total_variation").unlearn(copy.deepcopy(original), FORGET, None, ctx(epochs=20, lr=1.0))
    with torch.no_grad():
        def p_forget(m):
            return m(FORGET[0]).softmax(1).gather(1, FORGET[1][:, None]).mean()

        assert p_forget(out) < p_forget(original)


# ---------------------------------------------------------------------------------------------
# s3t
# ---------------------------------------------------------------------------------------------


def test_cyclic_sequences_put_every_slice_last_once():
    orders = U.cyclic_sequences(4, 4)
    assert orders == [[0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1], [1, 2, 3, 0]]
    assert sorted(o[-1] for o in orders) == [0, 1, 2, 3]
    assert U.cyclic_sequences(4, 2) == orders[:2]


def _s3t(**kw):
    params = {"shards": 2, "slices": 3, "sequences": 3, "rank": 2, "epochs": 2, "lr": 0.01, **kw}
    return U.S3T(**params)


def test_s3t_stages_train_on_their_slice_prefix_and_a_deletion_serves_a_prefix_without_the_sample():
    x, y = tiny_data(60, 11)
    method = _s3t()
    seen: dict[tuple[int, int, int], set[int]] = {}
    real = method.stage_rows

    def record(shard, order, stage):
        rows = real(shard, order, stage)
        seen[(shard, method.orders.index(order), stage)] = set(rows.tolist())
        return rows

    method.stage_rows = record
    c = ctx(original=TinyNet(), seed=3)
    model = method.train((x, y), c)
    slice_of = {i: (h, s) for h in range(2) for s in range(3) for i in method.members[h][s].tolist()}
    for (h, b, stage), rows in seen.items():  # stage l of order b trains on exactly the order's first l slices
        assert rows == {i for s in method.orders[b][:stage] for i in method.members[h][s].tolist()}
    target = 5
    h, s = slice_of[target]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = method.unlearn(model, (x[target : target + 1], None), None, c)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # deactivation, no training
    b = model.served(h)
    k = int(model.active[h, b])
    assert k == 2 and s not in method.orders[b][:k]  # the longest prefix that never saw slice s
    assert all(target not in seen[(h, b, stage)] for stage in range(1, k + 1))
    assert int(model.active[1 - h].min()) == 3  # the other shard is untouched
    with torch.no_grad():  # the deactivated layers no longer act on the output
        out = model(x)
        for block in model.models[h][b].blocks[k:]:
            block.up.weight.add_(1.0)
        assert torch.equal(model(x), out)


def test_s3t_retrains_a_shard_whose_sequences_all_lost_their_layers():
    x, y = tiny_data(60, 11)
    method = _s3t()
    c = ctx(original=TinyNet(), seed=3)
    model = method.train((x, y), c)
    victims = [int(method.members[0][s][0]) for s in range(3)]  # one image of every slice of shard 0
    model = method.unlearn(model, (x[victims], None), None, c)
    assert method.retrains == 1 and int(model.active[0].min()) == 3
    assert not set(victims) & {i for part in method.members[0] for i in part.tolist()}  # retrained without them
    with pytest.raises(Exception, match="not in the data"):
        method.unlearn(model, (x[victims[:1]], None), None, c)  # already deleted
