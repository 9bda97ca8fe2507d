"""Merging methods against hand-computed merges of tiny state dicts (2 experts, 4-element tensors) and
against cases whose answer is known: AdaMerging's coefficients, PLeaS undoing a permutation, LCSC finding a
known combination of checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.kinds import MergeContext
from harness_plugins.merging import (
    ADAMERGING,
    BTM,
    DARE,
    FISHER,
    LAMBDA_GRID,
    LCSC_METHOD,
    METHODS,
    OUTPUT_ENSEMBLE,
    PLEAS,
    TIES_LAMBDA_GRID,
    Average,
    Ensemble,
    Ensembling,
    FisherMerging,
    SearchedCoefficient,
    TaskArithmetic,
    TaskHeadsModel,
    Ties,
    ValidatedMergeContext,
    assemble,
    layer_chain,
    ties_combine,
)

BASE = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
E1 = {"w": torch.tensor([2.0, 0.5, 1.0, 4.0])}  # tau1 = [ 1.0, -0.5,  0.0, 3.0]
E2 = {"w": torch.tensor([0.0, 2.0, 1.5, 2.0])}  # tau2 = [-1.0,  1.0,  0.5, 1.0]


def _ctx(**fields) -> MergeContext:
    return MergeContext(num_tasks=2, **fields)


def test_every_merging_method_is_registered_with_a_paper():
    assert {m.name for m in METHODS} == {"average", "task_arithmetic", "ties", "dare", "fisher", "adamerging", "output_ensemble", "btm", "pleas", "lcsc"}
    assert all(m.kind == "merging" and m.paper for m in METHODS)


def test_average_is_the_uniform_soup():
    out = Average().merge(BASE, [E1, E2], _ctx())
    assert out["w"].tolist() == [1.0, 1.25, 1.25, 3.0]


def test_task_arithmetic_adds_the_scaled_sum_of_task_vectors():
    out = TaskArithmetic(lam=0.5).merge(BASE, [E1, E2], _ctx())
    # sum tau = [0, 0.5, 0.5, 4] -> 1 + 0.5 * sum
    assert out["w"].tolist() == [1.0, 1.25, 1.25, 3.0]
    out = TaskArithmetic(lam=1.0).merge(BASE, [E1, E2], _ctx())
    assert out["w"].tolist() == [1.0, 1.5, 1.5, 5.0]


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    # top_k = 50 (authors' code): kth = 4 - int(4 * 0.5) = 2nd smallest magnitude is the threshold.
    # tau1 |.| = [1, .5, 0, 3] -> threshold .5 -> keep [1, -.5, 0, 3]
    # tau2 |.| = [1, 1, .5, 1] -> threshold 1  -> keep [-1, 1, 0, 1]
    # sum = [0, .5, 0, 4] -> signs [0, +, 0, +]; zeros take sign(sum of signs) = + -> [+, +, +, +]
    # agreeing entries: [1 | -], [- | 1], [- | -], [3 | 1] -> means [1, 1, 0, 2]
    out = Ties(top_k=50.0, lam=1.0).merge(BASE, [E1, E2], _ctx())
    assert out["w"].tolist() == [2.0, 2.0, 1.0, 3.0]
    # top_k = 20: kth = 4 - 0 = 4 -> each keeps its largest magnitude(s): [0,0,0,3] and [-1,1,0,1]
    # sum [-1, 1, 0, 4] -> signs [-, +, +, +]; means [-1, 1, 0, 2]; lam 0.5 -> 1 + 0.5 * that
    out = Ties(top_k=20.0, lam=0.5).merge(BASE, [E1, E2], _ctx())
    assert out["w"].tolist() == [0.5, 1.5, 1.0, 2.0]


def test_dare_drops_with_a_seeded_mask_and_rescales():
    p, lam, seed = 0.5, 1.0, 3
    out = DARE.create(_ctx(), p=p, lam=lam).merge(BASE, [E1, E2], _ctx(seed=seed))
    g = torch.Generator().manual_seed(seed)
    keep1 = torch.rand(4, generator=g) >= p
    keep2 = torch.rand(4, generator=g) >= p
    tau1, tau2 = E1["w"] - BASE["w"], E2["w"] - BASE["w"]
    expected = BASE["w"] + lam * (tau1 * keep1 / (1 - p) + tau2 * keep2 / (1 - p))
    assert torch.allclose(out["w"], expected)
    assert DARE.create(_ctx(), p=0.0, lam=0.5).merge(BASE, [E1, E2], _ctx(seed=seed))["w"].tolist() == [1.0, 1.25, 1.25, 3.0]  # = task arithmetic
    same = DARE.create(_ctx(), p=0.0, lam=1.0, combine="ties", top_k=50.0).merge(BASE, [E1, E2], _ctx(seed=seed))
    assert same["w"].tolist() == [2.0, 2.0, 1.0, 3.0]  # = TIES


def test_fisher_merging_weights_each_entry_by_the_experts_fishers():
    f1 = {"w": torch.tensor([1.0, 0.0, 3.0, 1.0])}
    f2 = {"w": torch.tensor([1.0, 1.0, 1.0, 0.0])}
    out = FisherMerging(floor=0.0).merge(BASE, [E1, E2], _ctx(fishers=[f1, f2]))
    # entry-wise (f1 e1 + f2 e2) / (f1 + f2): [(2+0)/2, 2/1, (3+1.5)/4, 4/1]
    assert torch.allclose(out["w"], torch.tensor([1.0, 2.0, 1.125, 4.0]))
    floored = FisherMerging(floor=1e-6).merge(BASE, [E1, E2], _ctx(fishers=[{"w": torch.zeros(4)}, {"w": torch.zeros(4)}]))
    assert torch.allclose(floored["w"], torch.tensor([1.0, 1.25, 1.25, 3.0]))  # no information: the plain mean
    with pytest.raises(ValueError, match="fishers"):
        FISHER.create(_ctx()).merge(BASE, [E1, E2], _ctx())


def test_buffers_are_averaged_or_taken_from_the_base():
    base = {"w": torch.ones(2), "bn.running_mean": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(5)}
    e1 = {"w": torch.ones(2) * 3, "bn.running_mean": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(9)}
    e2 = {"w": torch.ones(2) * 5, "bn.running_mean": torch.tensor([3.0, 4.0]), "bn.num_batches_tracked": torch.tensor(7)}
    out = TaskArithmetic(lam=1.0).merge(base, [e1, e2], _ctx(param_keys=["w"]))
    assert out["w"].tolist() == [7.0, 7.0]
    assert out["bn.running_mean"].tolist() == [2.0, 3.0]
    assert int(out["bn.num_batches_tracked"]) == 5
    assert assemble(base, [e1, e2], {})["w"].tolist() == [4.0, 4.0]


def test_ties_combine_trims_over_the_whole_flattened_task_vector():
    vectors = [{"a": torch.tensor([4.0, 0.1]), "b": torch.tensor([0.2, -3.0])}]
    out = ties_combine(vectors, ["a", "b"], top_k=50.0)  # d = 4, kth = 2: threshold 0.2 keeps 4, 0.2, -3
    assert out["a"].tolist() == pytest.approx([4.0, 0.0]) and out["b"].tolist() == pytest.approx([0.2, -3.0])


def test_adamerging_without_steps_is_task_arithmetic_at_its_initial_coefficient():
    out = ADAMERGING.create(_ctx(), granularity="task", init=0.5, steps=0).merge(BASE, [E1, E2], _ctx())
    assert out["w"].tolist() == [1.0, 1.25, 1.25, 3.0]


def test_adamerging_learns_coefficients_that_lower_the_prediction_entropy():
    torch.manual_seed(0)
    base_model = nn.Linear(3, 4)
    base = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    experts = [{k: v + torch.randn_like(v) for k, v in base.items()} for _ in range(2)]
    x = torch.randn(32, 3)
    ctx = MergeContext(num_tasks=2, unlabeled=lambda: [x], build_model=lambda: nn.Linear(3, 4))

    def entropy(state):
        m = nn.Linear(3, 4)
        m.load_state_dict(state)
        with torch.no_grad():
            logits = m(x)
        return float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean())

    start = entropy(ADAMERGING.create(ctx, init=0.3, steps=0).merge(base, experts, ctx))
    ada = ADAMERGING.create(ctx, granularity="layer", init=0.3, steps=30, lr=0.05)
    end = entropy(ada.merge(base, experts, ctx))
    assert end < start - 1e-3
    assert ada.coefficients.shape == (2, 2) and bool(((ada.coefficients >= 0) & (ada.coefficients <= 1)).all())


# ---------------------------------------------------------------------------------------------
# coefficients chosen on validation data: the papers' grids, the same budget for each method
# ---------------------------------------------------------------------------------------------


def test_searched_coefficients_use_the_papers_grids_with_equal_budgets():
    assert LAMBDA_GRID == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the TIES authors' task-vector sweep
    assert TIES_LAMBDA_GRID[0] == 0.8 and len(TIES_LAMBDA_GRID) == len(LAMBDA_GRID)  # 0.8.. as in their TIES sweep
    assert isinstance(TaskArithmetic(0.3), SearchedCoefficient) and TaskArithmetic(0.3).search_grid == LAMBDA_GRID
    assert Ties(20.0, 1.0).search_grid == TIES_LAMBDA_GRID
    assert DARE.create(_ctx()).search_grid == LAMBDA_GRID and DARE.create(_ctx(), combine="ties").search_grid == TIES_LAMBDA_GRID
    assert not isinstance(ADAMERGING.create(_ctx()), SearchedCoefficient)  # its coefficients are learned, not searched


# ---------------------------------------------------------------------------------------------
# AdaMerging on cases whose optimal coefficients are known
# ---------------------------------------------------------------------------------------------


def _entropy(logits: torch.Tensor) -> float:
    return float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean())


def test_adamerging_raises_only_the_coefficient_of_the_task_vector_that_lowers_the_entropy():
    # base: all-zero linear model (uniform predictions, maximal entropy). Expert 0 adds a task vector
    # that makes predictions confident; experts 1 and 2 are exact copies of the base (zero task
    # vectors: no gradient). With the paper's Adam (lr 1e-3, 500 steps, init 0.3) lambda_0 only
    # rises (Adam moves it by at most ~lr a step: below 0.8); the others stay exactly at 0.3.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    base = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    sharp = {"weight": 3.0 * torch.randn(4, 3, generator=g), "bias": torch.zeros(4)}
    experts = [sharp, {k: v.clone() for k, v in base.items()}, {k: v.clone() for k, v in base.items()}]
    ctx = MergeContext(num_tasks=3, unlabeled=lambda: [x], build_model=lambda: nn.Linear(3, 4))
    ada = ADAMERGING.create(ctx, granularity="task")  # the paper's defaults
    assert (ada.init, ada.steps, ada.lr) == (0.3, 500, 1e-3)
    merged = ada.merge(base, experts, ctx)
    lam = ada.coefficients.flatten().tolist()
    assert 0.55 < lam[0] <= 0.8 + 1e-3
    assert lam[1] == pytest.approx(0.3) and lam[2] == pytest.approx(0.3)
    assert torch.allclose(merged["weight"], lam[0] * sharp["weight"], atol=1e-6)
    assert ada.history[-1] < ada.history[0]
    # with enough steps the clamp holds lambda_0 at its optimum on [0, 1], 1.0
    long = ADAMERGING.create(ctx, granularity="task", steps=1000, lr=0.01)
    long.merge(base, experts, ctx)
    assert long.coefficients[0, 0] == pytest.approx(1.0)


class _BodyWithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.fc(x))


def _task_heads_model(num_tasks: int = 2) -> TaskHeadsModel:
    torch.manual_seed(1)
    return TaskHeadsModel(_BodyWithNorm(), [nn.Linear(4, 5) for _ in range(num_tasks)])


def test_task_heads_model_scores_each_task_with_its_head_and_normalises_each_task_on_its_own():
    model = _task_heads_model().train()
    x = torch.stack([torch.randn(32, 3), 100.0 + torch.randn(32, 3)])  # two tasks, very different inputs
    out = model(x)
    assert out.shape == (2, 32, 5)
    assert torch.allclose(out[1], model.heads[1](model.body(x[1])), atol=1e-5)
    features = [model.body(x[t]) for t in range(2)]  # train mode: batch statistics of each task's batch alone
    assert all(torch.allclose(f.mean(0), torch.zeros(4), atol=1e-4) for f in features)
    with pytest.raises(ValueError, match="one batch per task"):
        model(x[0])


def test_adamerging_with_task_heads_and_batchnorm_finds_the_sharpening_task_vector():
    # a body with BatchNorm and one head per task; expert 0 raises the BatchNorm scale (sharper
    # logits for every task), expert 1 is a copy of the base: only lambda_0 moves, and the heads
    # (kept, identical in every state dict) come back unchanged
    model = _task_heads_model()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expert0 = {k: v.clone() for k, v in base.items()}
    expert0["body.bn.weight"] = base["body.bn.weight"] + 4.0
    expert1 = {k: v.clone() for k, v in base.items()}
    keys = tuple(f"body.{n}" for n, _ in model.body.named_parameters())
    x = torch.randn(2, 32, 3, generator=torch.Generator().manual_seed(3))
    ctx = MergeContext(num_tasks=2, unlabeled=lambda: [x], build_model=_task_heads_model, param_keys=keys)
    ada = ADAMERGING.create(ctx, granularity="layer", steps=200, lr=1e-3)
    merged = ada.merge(base, [expert0, expert1], ctx)
    coefficients = dict(zip(keys, ada.coefficients[0].tolist()))
    assert 0.4 < coefficients["body.bn.weight"] <= 0.5 + 1e-3  # up from 0.3, by at most ~lr a step
    assert ada.coefficients[1].tolist() == pytest.approx([0.3] * len(keys))
    assert all(torch.equal(merged[k], base[k]) for k in base if k.startswith("heads."))


# ---------------------------------------------------------------------------------------------
# ensembles: output ensemble and Branch-Train-Merge
# ---------------------------------------------------------------------------------------------


def test_output_ensemble_keeps_every_expert_with_equal_weights():
    merger = OUTPUT_ENSEMBLE.create(_ctx())
    assert isinstance(merger, Ensembling)
    result = merger.ensemble(BASE, [E1, E2], _ctx())
    assert isinstance(result, Ensemble) and result.weights == (0.5, 0.5)
    assert result.members[0] is E1 and result.members[1] is E2
    # a protocol that evaluates one state dict gets the members' weighted parameter average
    assert merger.merge(BASE, [E1, E2], _ctx())["w"].tolist() == [1.0, 1.25, 1.25, 3.0]


def test_branch_train_merge_has_an_ensemble_arm_and_an_average_arm():
    ensemble = BTM.create(_ctx())  # default arm: ensemble
    assert isinstance(ensemble, Ensembling) and ensemble.ensemble(BASE, [E1, E2], _ctx()).weights == (0.5, 0.5)
    average = BTM.create(_ctx(), arm="average")
    assert not isinstance(average, Ensembling)
    assert average.merge(BASE, [E1, E2], _ctx())["w"].tolist() == [1.0, 1.25, 1.25, 3.0]


# ---------------------------------------------------------------------------------------------
# PLeaS: permutations, then layer-wise least squares
# ---------------------------------------------------------------------------------------------


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU())
        self.classifier = nn.Linear(12, 3)

    def forward(self, x):
        return self.classifier(self.features(x))


def _trained_mlp(seed: int) -> _MLP:
    torch.manual_seed(seed)
    model = _MLP()
    model.train()
    with torch.no_grad():  # running statistics that are not the defaults
        for _ in range(5):
            model(torch.randn(64, 6))
    return model.eval()


def _permuted_copy(state: dict, p1: torch.Tensor, p2: torch.Tensor, head: str = "classifier") -> dict:
    """The same function with hidden units reordered: layer 1's units by p1, layer 2's by p2."""
    out = {k: v.clone() for k, v in state.items()}
    out["features.0.weight"], out["features.0.bias"] = state["features.0.weight"][p1], state["features.0.bias"][p1]
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"features.1.{name}"] = state[f"features.1.{name}"][p1]
    out["features.3.weight"], out["features.3.bias"] = state["features.3.weight"][p2][:, p1], state["features.3.bias"][p2]
    out[f"{head}.weight"] = state[f"{head}.weight"][:, p2]
    return out


def test_pleas_undoes_a_permutation_exactly():
    # expert 1 is expert 0 with its hidden units shuffled (the same function): the matching finds
    # the permutation and the least-squares fit of identical targets returns expert 0's weights
    model = _trained_mlp(0)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    b = _permuted_copy(a, torch.randperm(16, generator=g), torch.randperm(12, generator=g))
    x = torch.randn(512, 6, generator=g)
    ctx = MergeContext(num_tasks=2, unlabeled=lambda: [x[:256], x[256:]], build_model=_MLP, param_keys=tuple(n for n, _ in _MLP().named_parameters()))
    merged = PLEAS.create(ctx, ridge=0.0).merge(a, [a, b], ctx)
    for key in ("features.0.weight", "features.3.weight", "classifier.weight", "features.1.running_var"):
        assert torch.allclose(merged[key], a[key], atol=1e-3), key
    plain_average = Average().merge(a, [a, b], ctx)
    out = _MLP().eval()
    out.load_state_dict(merged)
    avg = _MLP().eval()
    avg.load_state_dict(plain_average)
    with torch.no_grad():
        assert torch.allclose(out(x), model(x), atol=1e-3)
        assert not torch.allclose(avg(x), model(x), atol=1e-1)  # averaging unaligned units breaks the function


def test_pleas_on_one_linear_layer_is_the_least_squares_fit_of_the_mean_output():
    # no hidden units to permute: min_W ||X W^T + b - (Y1 + Y2)/2|| with Y_k = X W_k^T + b_k is solved by the average
    w1, w2 = nn.Linear(5, 3), nn.Linear(5, 3)
    e1, e2 = ({k: v.detach().clone() for k, v in m.state_dict().items()} for m in (w1, w2))
    x = torch.randn(200, 5)
    ctx = MergeContext(num_tasks=2, unlabeled=lambda: [x], build_model=lambda: nn.Linear(5, 3))
    merged = PLEAS.create(ctx, ridge=0.0).merge(e1, [e1, e2], ctx)
    assert torch.allclose(merged["weight"], (e1["weight"] + e2["weight"]) / 2, atol=1e-4)
    assert torch.allclose(merged["bias"], (e1["bias"] + e2["bias"]) / 2, atol=1e-4)


def test_pleas_re_indexes_each_kept_head_by_its_own_experts_permutation():
    # task heads: expert 1's body is expert 0's with its units shuffled, and its head (task 1's)
    # reads them in that order; after merging, task 1's head must read the merged features
    def build():
        mlp = _MLP()
        body = mlp.features
        return TaskHeadsModel(body, [nn.Linear(12, 3), nn.Linear(12, 3)])

    single = _trained_mlp(0).state_dict()
    g = torch.Generator().manual_seed(7)
    p1, p2 = torch.randperm(16, generator=g), torch.randperm(12, generator=g)
    torch.manual_seed(2)
    head1 = nn.Linear(12, 3)  # task 1's head, trained on expert 1's (permuted) features
    permuted = _permuted_copy(single, p1, p2)
    a = {f"body.{k.removeprefix('features.')}": v for k, v in single.items() if k.startswith("features.")}
    b = {f"body.{k.removeprefix('features.')}": v for k, v in permuted.items() if k.startswith("features.")}
    heads = {"heads.0.weight": single["classifier.weight"], "heads.0.bias": single["classifier.bias"],
             "heads.1.weight": head1.weight.detach().clone(), "heads.1.bias": head1.bias.detach().clone()}
    a, b = {**a, **heads}, {**b, **heads}  # the kept heads are identical in every state dict
    keys = tuple(f"body.{n}" for n, _ in build().body.named_parameters())
    x = torch.randn(2, 256, 6, generator=g)
    ctx = MergeContext(num_tasks=2, unlabeled=lambda: [x], build_model=build, param_keys=keys)
    merged = PLEAS.create(ctx, ridge=0.0).merge(a, [a, b], ctx)
    expert1, out = build().eval(), build().eval()
    expert1.load_state_dict(b)
    out.load_state_dict(merged)
    with torch.no_grad():
        assert torch.allclose(out.task_logits(x[1], 1), expert1.task_logits(x[1], 1), atol=1e-3)
        assert torch.allclose(merged["heads.1.weight"], heads["heads.1.weight"][:, torch.argsort(p2)], atol=1e-6)
    assert torch.equal(merged["heads.0.weight"], heads["heads.0.weight"])  # expert 0 is the reference


def test_pleas_refuses_models_it_cannot_permute():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 3)

        def forward(self, x):
            return self.b(x) + self.a(x)[:, :3]

    with pytest.raises(ValueError, match="residual"):
        layer_chain(Residual(), torch.randn(2, 4))


# ---------------------------------------------------------------------------------------------
# LCSC: a linear combination of saved checkpoints found by evolutionary search
# ---------------------------------------------------------------------------------------------


def test_lcsc_finds_a_known_combination_of_checkpoints():
    # three checkpoints; the validation score peaks at theta* = -0.2 c1 + 0.5 c2 + 0.7 c3 (sum 1,
    # one negative coefficient: an extrapolation no average reaches)
    g = torch.Generator().manual_seed(0)
    checkpoints = [{"w": torch.randn(20, generator=g)} for _ in range(3)]
    target = -0.2 * checkpoints[0]["w"] + 0.5 * checkpoints[1]["w"] + 0.7 * checkpoints[2]["w"]
    ctx = ValidatedMergeContext(num_tasks=3, seed=0, validate=lambda state: -float((state["w"] - target).pow(2).sum()))
    lcsc = LCSC_METHOD.create(ctx, generations=40)
    merged = lcsc.merge(checkpoints[0], checkpoints, ctx)
    assert sum(lcsc.alpha) == pytest.approx(1.0)
    assert lcsc.alpha == pytest.approx([-0.2, 0.5, 0.7], abs=0.05)
    assert torch.allclose(merged["w"], sum(a * c["w"] for a, c in zip(lcsc.alpha, checkpoints)))
    assert lcsc.best_per_generation == sorted(lcsc.best_per_generation)  # elitist: the best never gets worse


def test_lcsc_without_generations_keeps_the_best_starting_candidate():
    checkpoints = [{"w": torch.tensor([float(i)])} for i in range(4)]
    ctx = ValidatedMergeContext(num_tasks=4, validate=lambda state: float(state["w"]))  # the later, the better
    lcsc = LCSC_METHOD.create(ctx, generations=0)
    lcsc.merge(checkpoints[0], checkpoints, ctx)
    assert lcsc.alpha == [0.0, 0.0, 0.0, 1.0]  # the last checkpoint beats the average and the EMA profiles


def test_lcsc_without_validation_data_minimises_the_prediction_entropy():
    base = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    sharp = {"weight": 3.0 * torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), "bias": torch.zeros(4)}
    x = torch.randn(32, 3)
    ctx = MergeContext(num_tasks=2, unlabeled=lambda: [x], build_model=lambda: nn.Linear(3, 4))
    lcsc = LCSC_METHOD.create(ctx, generations=3)
    lcsc.merge(base, [base, sharp], ctx)
    assert lcsc.alpha[1] > 0.9  # the confident checkpoint
