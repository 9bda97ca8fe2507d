"""The fixed simplex-ETF classifier (plugins/model_shaping.py, kind `shaper`): the frame's geometry
by hand, the head stays fixed through training, and it combines with a loss that reshapes the head."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from harness.engine import Normalizer, train
from harness.errors import HarnessError
from harness.models import SmallCNN, get_classifier
from harness.seams import TrainContext
from harness_plugins import losses as L
from harness_plugins import model_shaping as M

RECIPE = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0}


def ctx(k=4, seed=0):
    return TrainContext(k, (16,) * k, 16 * k, RECIPE["epochs"], seed=seed)


@pytest.mark.parametrize("k,d", [(2, 2), (4, 4), (10, 16)])
def test_simplex_etf_rows_are_unit_vectors_at_equal_angles_minus_one_over_k_minus_one(k, d):
    m = M.simplex_etf(k, d, torch.Generator().manual_seed(0))
    gram = m @ m.T
    expected = torch.full((k, k), -1.0 / (k - 1))
    expected.fill_diagonal_(1.0)
    assert m.shape == (k, d) and torch.allclose(gram, expected, atol=1e-5)
    assert torch.allclose(m.sum(dim=0), torch.zeros(d), atol=1e-5)  # centred: the class vectors sum to 0


def test_simplex_etf_needs_as_many_feature_dimensions_as_classes():
    with pytest.raises(HarnessError, match="at least 10 dimensions"):
        M.simplex_etf(10, 8, torch.Generator())


def test_the_classifier_is_an_etf_and_stays_fixed_while_the_features_train():
    torch.manual_seed(0)
    model = SmallCNN(4, 1, 12, width=4)  # features of 8 dimensions
    shaper = M.ETF_CLASSIFIER.create(ctx())
    model = shaper.shape_model(model, ctx())
    head = get_classifier(model)
    etf = head.weight.detach().clone()
    assert torch.allclose(etf @ etf.T, torch.eye(4) * (4 / 3) - 1 / 3, atol=1e-5)
    assert not head.weight.requires_grad and float(head.bias.abs().sum()) == 0.0
    features_before = [p.detach().clone() for p in model.features.parameters()]
    x = torch.randint(0, 255, (64, 1, 12, 12), dtype=torch.uint8)
    y = torch.arange(64) % 4
    train(model, x, y, recipe=RECIPE, parts=[L.CE.create(ctx()), shaper], normalizer=Normalizer.fit(x), seed=0, device="cpu")
    assert torch.equal(head.weight, etf) and float(head.bias.abs().sum()) == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(features_before, model.features.parameters()))


def test_the_etf_depends_on_the_runs_seed_only():
    def frame(seed):
        torch.manual_seed(123)  # the model's initialisation does not matter
        return get_classifier(M.ETF_CLASSIFIER.create(ctx(seed=seed)).shape_model(SmallCNN(4, 1, 12, width=4), ctx())).weight

    assert torch.equal(frame(0), frame(0)) and not torch.equal(frame(0), frame(1))


def test_etf_on_ldams_cosine_classifier_fixes_its_directions():
    torch.manual_seed(0)
    model = SmallCNN(4, 1, 12, width=4)
    model = L.LDAM.create(ctx()).shape_model(model, ctx())  # a NormedLinear head
    model = M.ETF_CLASSIFIER.create(ctx()).shape_model(model, ctx())
    head = get_classifier(model)
    assert isinstance(head, L.NormedLinear) and not head.weight.requires_grad
    w = torch.nn.functional.normalize(head.weight, dim=1)
    assert torch.allclose(w @ w.T, torch.eye(4) * (4 / 3) - 1 / 3, atol=1e-5)


def test_a_head_without_a_weight_matrix_is_refused_with_the_reason():
    model = L.SADE_METHOD.create(ctx()).shape_model(SmallCNN(4, 1, 12, width=4), ctx())  # experts behind an Identity
    with pytest.raises(HarnessError, match="fixes a linear classifier's weight"):
        M.ETF_CLASSIFIER.create(ctx()).shape_model(model, ctx())


# ---------------------------------------------------------------------------------------------
# weight_compander
# ---------------------------------------------------------------------------------------------


def test_compand_by_hand_and_its_inverse():
    v = torch.tensor([3.0, -3.0, 0.0, 0.75])
    # alpha 1, beta 0.5: sign(v) (sqrt(|v| + 1) - 1) -> 3 -> 1, -3 -> -1, 0 -> 0, 0.75 -> sqrt(1.75) - 1
    assert torch.allclose(M.compand(v, 1.0, 0.5), torch.tensor([1.0, -1.0, 0.0, 1.75**0.5 - 1.0]))
    # alpha 0.25, beta 0.5: 0.75 -> sqrt(1) - sqrt(0.25) = 0.5
    assert torch.allclose(M.compand(torch.tensor([0.75]), 0.25, 0.5), torch.tensor([0.5]))
    w = torch.linspace(-2, 2, 41)
    assert torch.allclose(M.expand(M.compand(w, 0.1, 0.5), 0.1, 0.5), w, atol=1e-5)


def test_compand_pushes_small_weights_from_zero_and_compresses_large_ones():
    v = torch.tensor([1e-4, 100.0], requires_grad=True)
    w = M.compand(v, 0.1, 0.5)
    w.sum().backward()
    assert v.grad[0] == pytest.approx(0.5 * 0.1**-0.5, rel=1e-3)  # slope beta alpha^(beta-1) ~ 1.58 at 0
    large = float(w[1].detach())
    assert large == pytest.approx(100.1**0.5 - 0.1**0.5) and large < 11  # 100 -> ~9.7


def _train_small_cnn(parts):
    torch.manual_seed(0)
    model = SmallCNN(4, 1, 12, width=4)
    for shaper in parts:
        model = shaper.shape_model(model, ctx())
    x = torch.randint(0, 255, (64, 1, 12, 12), dtype=torch.uint8)
    y = torch.arange(64) % 4
    train(model, x, y, recipe=RECIPE, parts=[L.CE.create(ctx()), *parts], normalizer=Normalizer.fit(x), seed=0, device="cpu")
    return model


def test_weight_compander_keeps_the_initial_weights_and_trains_the_free_tensor():
    torch.manual_seed(0)
    model = SmallCNN(4, 1, 12, width=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = M.WEIGHT_COMPANDER.create(ctx()).shape_model(model, ctx())
    head = get_classifier(model)
    assert torch.allclose(head.weight, before["classifier.weight"], atol=1e-6)  # w = compand(expand(w_init))
    free = head.parametrizations.weight.original
    assert torch.allclose(free, M.expand(before["classifier.weight"], 0.1, 0.5))
    assert all("weight" not in n or "original" in n for n, p in model.named_parameters() if p.dim() > 1)


def test_weight_compander_at_beta_one_trains_exactly_like_the_plain_network():
    plain = _train_small_cnn([])
    companded = _train_small_cnn([M.WEIGHT_COMPANDER.create(ctx(), beta=1.0)])
    assert torch.allclose(get_classifier(plain).weight, get_classifier(companded).weight, atol=1e-4)
    other = _train_small_cnn([M.WEIGHT_COMPANDER.create(ctx())])
    assert not torch.allclose(get_classifier(plain).weight, get_classifier(other).weight, atol=1e-3)


def test_weight_compander_leaves_a_fixed_etf_classifier_fixed():
    torch.manual_seed(0)
    model = M.ETF_CLASSIFIER.create(ctx()).shape_model(SmallCNN(4, 1, 12, width=4), ctx())
    model = M.WEIGHT_COMPANDER.create(ctx()).shape_model(model, ctx())
    head = get_classifier(model)
    assert not parametrize.is_parametrized(head, "weight") and not head.weight.requires_grad
