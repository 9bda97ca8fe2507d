"""Co-teaching with nested dropout (`nested_coteaching`, plugins/robust_losses.py): the nested
distribution and prefix logits by hand, the held-out split, the choice of K, and the limiting
case that is `coteaching` step for step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.engine import AuxModel, Normalizer, train
from harness.models import SmallCNN, get_classifier
from harness.seams import Batch, Outputs, TrainContext
from harness.training import peer_seed
from harness_plugins import robust_losses as R

RECIPE = {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0}
N, WIDTH = 64, 4  # SmallCNN(width=4) on 12 px images: 8 feature channels


def ctx(n=N):
    return TrainContext(4, (n // 4,) * 4, n, RECIPE["epochs"])


def toy_data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, q * 6 : q * 6 + 6] += 150
    return x, y


def model(seed):
    torch.manual_seed(seed)
    return SmallCNN(4, 1, 12, width=WIDTH)


def run(loss, shape):
    x, y = toy_data()
    net, peer = model(0), model(peer_seed(0, "peer"))
    if shape:
        net, peer = loss.shape_model(net, ctx()), loss.shape_model(peer, ctx())
    log = train(net, x, y, recipe=RECIPE, parts=[loss], normalizer=Normalizer.fit(x), seed=0, device="cpu", aux={"peer": AuxModel(peer, trainable=True)})
    return net, peer, log


def test_nested_distribution_by_hand():
    p = R.nested_dropout_distribution(3, mu=0.0, sigma=1.0)
    weights = [math.exp(-1), math.exp(-4), math.exp(-9)]
    assert torch.allclose(p, torch.tensor([w / sum(weights) for w in weights], dtype=torch.float64))
    point = R.nested_dropout_distribution(5, mu=5.0, sigma=1e-4)  # a point mass on keeping all 5 channels
    assert torch.equal(point, torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64))


def test_prefix_logits_keep_the_first_k_channels_by_hand():
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]))
        linear.bias.copy_(torch.tensor([0.5, 0.0]))
    head = R.NestedDropoutHead(linear, torch.tensor([0.2, 0.3, 0.5]), seed=0)
    f = torch.tensor([[1.0, 1.0, 2.0]])
    expected = torch.tensor([[[1.5, 0.0], [3.5, -1.0], [9.5, 1.0]]])  # k = 1, 2, 3
    assert torch.allclose(head.prefix_logits(f), expected)
    head.eval()
    head.keep.fill_(2)
    assert torch.allclose(head(f), expected[:, 1])


def test_model_and_peer_drop_the_same_channels_in_a_step():
    loss = R.NESTED_COTEACHING.create(ctx())
    a = get_classifier(loss.shape_model(model(0), ctx()))
    b = get_classifier(loss.shape_model(model(1), ctx()))
    draws_a = [int(torch.multinomial(a.probs, 1, generator=a.generator)) for _ in range(20)]
    draws_b = [int(torch.multinomial(b.probs, 1, generator=b.generator)) for _ in range(20)]
    assert draws_a == draws_b and len(set(draws_a)) > 1


def test_keeping_every_channel_without_a_holdout_is_coteaching_step_for_step():
    plain_net, plain_peer, plain_log = run(R.COTEACHING.create(ctx(), forget_rate=0.5, num_gradual=1), shape=False)
    nested = R.NESTED_COTEACHING.create(ctx(), forget_rate=0.5, num_gradual=1, mu=2.0 * WIDTH, sigma=1e-4, holdout=0.0)
    net, peer, log = run(nested, shape=True)
    for a, b in ((plain_net, net), (plain_peer, peer)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert plain_log.train_loss == log.train_loss


def test_held_out_samples_never_enter_the_loss():
    loss = R.NESTED_COTEACHING.create(ctx(), forget_rate=0.0, holdout=0.25)
    held = torch.nonzero(loss.held_out).squeeze(1)
    assert len(held) == 16
    index = torch.cat([held[:3], torch.nonzero(~loss.held_out).squeeze(1)[:5]])
    logits, peer = torch.randn(8, 4), torch.randn(8, 4)
    y = torch.randint(0, 4, (8,))
    value = loss.objective(Batch(torch.zeros(8, 1, 2, 2), y, index), Outputs(logits, aux={"peer": Outputs(peer)}))
    expected = F.cross_entropy(logits[3:], y[3:]) + F.cross_entropy(peer[3:], y[3:])
    assert float(value) == pytest.approx(float(expected), rel=1e-6)


class LinearProbe(nn.Module):
    """Flattened inputs as the features, then a linear classifier (the harness's model layout)."""

    def __init__(self, weight):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(weight)

    def forward(self, x):
        return self.classifier(x.flatten(1))


def test_k_is_chosen_where_the_held_out_samples_are_classified_best():
    loss = R.NESTED_COTEACHING.create(ctx(), holdout=0.25)
    # channel 1 alone classifies by its sign; adding channel 2 flips every row's class
    model = loss.shape_model(LinearProbe(torch.tensor([[1.0, -5.0, 0.0], [-1.0, 5.0, 0.0]])), ctx())
    x = torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0], [2.0, 1.0, 0.0], [-2.0, -1.0, 0.0]]).view(4, 3, 1, 1)
    y = torch.tensor([0, 1, 0, 1])
    held = torch.nonzero(loss.held_out).squeeze(1)[:4]
    loss.observe(Batch(x, y, held), Outputs(torch.zeros(4, 2)))
    model.eval()
    assert loss.choose_channels(model) == 1
    out = loss.predict(model, [x])
    assert int(get_classifier(model).keep) == 1 and torch.equal(out.argmax(dim=1), y)


def test_trains_through_the_engine_and_chooses_k():
    loss = R.NESTED_COTEACHING.create(ctx())
    net, _, log = run(loss, shape=True)
    x, _ = toy_data()
    net.eval()
    out = loss.predict(net, [Normalizer.fit(x)(x)])
    assert out.shape == (N, 4) and 1 <= loss.selected_channels <= 2 * WIDTH and len(log.train_loss) == RECIPE["epochs"]
