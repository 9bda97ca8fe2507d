"""Kind `unlearning`: remove a forget set from a trained classifier.

`build(ctx: UnlearnContext, **hp)` returns an `Unlearning`; a suite that ranks unlearning calls
`unlearn(model, forget, retain, ctx) -> model` on a copy of the original model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold


@dataclass
class UnlearnContext:
    """What an unlearning method gets besides the model and the data.

    `forget`/`retain` given to `unlearn` are (x, y) pairs: normalised float32 images on `device`
    and int64 labels. `epochs` and `lr` are the card's budget; suites search the learning rate
    around a method's declared `lr` hyper-parameter (a method opts out with `lr_search = False`)
    on a validation criterion that never uses the test set. `seed` drives the method's own
    randomness. `retrained` is the gold-standard model, handed only to a reference method
    (`is_reference = True`, i.e. `retrain`).
    """

    num_classes: int
    epochs: int
    lr: float
    batch_size: int
    device: str = "cpu"
    original: nn.Module | None = None
    seed: int = 0
    retrained: nn.Module | None = None


class Unlearning:
    """`unlearn(model, forget, retain, ctx)` returns the unlearned model (it may change `model`).

    Declared options: `lr_search = False` opts out of the suite's learning-rate search (a method
    without a learning rate); `is_reference = True` marks the gold standard, which is handed the
    retrained model (`ctx.retrained`) and whose cost is the retraining's.
    """

    lr_search: bool = True
    is_reference: bool = False

    def unlearn(self, model: nn.Module, forget: tuple[torch.Tensor, torch.Tensor], retain: tuple[torch.Tensor, torch.Tensor], ctx: UnlearnContext) -> nn.Module:
        raise NotImplementedError


def check(method: Any, env: Any) -> Any:
    """Unlearn on a tiny model: the result gives K finite logits."""
    from harness.conformance import finite, normalizer_of, require, tiny_model

    data, seed = env.data, env.seed
    k = data.num_classes
    normalizer = normalizer_of(data)
    x, y = normalizer(data.train_x), data.train_y
    forget, retain = (x[:32], y[:32]), (x[32:], y[32:])
    model = tiny_model(data, seed)
    ctx = UnlearnContext(num_classes=k, epochs=1, lr=0.01, batch_size=32, device="cpu", original=copy.deepcopy(model), seed=seed)
    unlearner = method.create(ctx)
    require(isinstance(unlearner, Unlearning), f"build returned a {type(unlearner).__name__}; an unlearning method must return a harness.kinds.unlearning.Unlearning")
    if unlearner.is_reference:
        ctx.retrained = copy.deepcopy(model)
    torch.manual_seed(seed)
    out = unlearner.unlearn(model, forget, retain, ctx)
    require(isinstance(out, nn.Module), f"unlearn must return an nn.Module, got {type(out).__name__}")
    out.eval()
    with torch.no_grad():
        logits = out(normalizer(data.test_x))
    require(tuple(logits.shape) == (len(data.test_y), k), f"the unlearned model gives logits of shape {tuple(logits.shape)}, expected {(len(data.test_y), k)}")
    require(finite(logits), "the unlearned model gives non-finite logits")
    return {"logits": logits}


METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness import Method, Param, hookimpl
from harness.kinds.unlearning import UnlearnContext, Unlearning


class FineTuneOnRetain(Unlearning):
    """Keep training on the retain set only, so the forget set fades (catastrophic forgetting)."""

    def __init__(self, ctx: UnlearnContext, budget: float):  # the default lives on the Param
        self.budget = budget

    def unlearn(
        self,
        model: nn.Module,
        forget: tuple[torch.Tensor, torch.Tensor],
        retain: tuple[torch.Tensor, torch.Tensor],
        ctx: UnlearnContext,
    ) -> nn.Module:
        x, y = retain
        optimizer = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=0.9)
        model.train()
        for _ in range(max(1, round(self.budget * ctx.epochs))):
            order = torch.randperm(len(y), device=y.device)  # torch's generator, seeded by the suite
            for start in range(0, len(y), ctx.batch_size):
                batch = order[start : start + ctx.batch_size]
                if len(batch) < 2:  # BatchNorm cannot train on a batch of one
                    continue
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return model


$CONST = Method(
    name="$method",
    kind="unlearning",
    build=FineTuneOnRetain,
    summary="fine-tune on the retain set only (the 'Fine-tune' unlearning baseline)",
    paper=(
        "Golatkar, Achille & Soatto, Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks, "
        "CVPR 2020"
    ),
    url="https://arxiv.org/abs/1911.04933",
    params=(Param("budget", float, 1.0, "fraction of the suite's epoch budget to train", low=0.0, high=1.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
'''

TESTS_TEMPLATE = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations

import torch
from torch import nn

from harness.kinds.unlearning import UnlearnContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, unlearning on a tiny model, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_it_trains_with_the_suites_learning_rate():
    # lr = 0 from the suite's budget: no parameter may move (the method must not bring its own lr)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20) % 3
    ctx = UnlearnContext(num_classes=3, epochs=2, lr=0.0, batch_size=8)
    out = $CONST.create(ctx).unlearn(model, (x[:4], y[:4]), (x[4:], y[4:]), ctx)
    assert all(torch.equal(a, b) for a, b in zip(before, out.parameters(), strict=True))
'''


KIND = Kind(
    name="unlearning",
    summary="removes a forget set from a trained classifier (model, forget, retain in; model out)",
    interface=Unlearning,
    order=40,
    check=check,
    scaffold=KindScaffold("a fine-tune-on-retain unlearning method", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="unlearning",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
