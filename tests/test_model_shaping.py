"""The fixed simplex-ETF classifier (plugins/model_shaping.py, kind `shaper`): the frame's geometry
by hand, the head stays fixed through training, and it combines with a loss that reshapes the head."""

from __future__ import annotations

import pytest
import torch

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
