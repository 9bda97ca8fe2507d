"""Merging methods against hand-computed merges of tiny state dicts (2 experts, 4-element tensors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.kinds import MergeContext
from harness_plugins.merging import (
    ADAMERGING,
    DARE,
    FISHER,
    METHODS,
    Average,
    FisherMerging,
    TaskArithmetic,
    Ties,
    assemble,
    ties_combine,
)

BASE = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
E1 = {"w": torch.tensor([2.0, 0.5, 1.0, 4.0])}  # tau1 = [ 1.0, -0.5,  0.0, 3.0]
E2 = {"w": torch.tensor([0.0, 2.0, 1.5, 2.0])}  # tau2 = [-1.0,  1.0,  0.5, 1.0]


def _ctx(**fields) -> MergeContext:
    return MergeContext(num_tasks=2, **fields)


def test_every_merging_method_is_registered_with_a_paper():
    assert {m.name for m in METHODS} == {"average", "task_arithmetic", "ties", "dare", "fisher", "adamerging"}
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
