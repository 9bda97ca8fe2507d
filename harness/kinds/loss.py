"""Kind `loss`: the training objective, computed from the logits, the targets and each sample's index.

`build(ctx: LossContext, **hp)` returns a `Loss` (an nn.Module). The engine calls
`prepare_model(model)` once before training, `start_epoch(epoch)` before each epoch and
`forward(logits, targets, index)` per batch. A loss is the entry's `Objective` (one per entry;
a suite that ranks training methods adds its baseline loss to an entry that names none). A loss
that needs more than the logits (the inputs, the penultimate features, auxiliary models' outputs,
extra heads, its own prediction rule) overrides `objective(batch, out)` and inherits the roles of
harness.seams it needs (`AuxiliaryModels`, `Predictor`, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold
from harness.seams import Batch, ModelShaper, Objective, Outputs, TrainContext

LossContext = TrainContext  # what a loss knows when it is built (harness.seams.TrainContext)


class Loss(nn.Module, Objective, ModelShaper):
    """A training loss. `forward(logits, targets, index)` returns a scalar tensor.

    `targets` is int64 [B] or, after a mixing augmentation, soft float [B, num_classes] whose rows
    sum to 1; a loss that cannot take soft targets sets `accepts_soft_targets = False` and the
    core refuses such combinations before training. `index` holds each sample's position in
    the training set (for per-sample state such as ELR's targets); -1 for appended rows.
    """

    accepts_soft_targets: bool = True

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapt the model before training (e.g. LDAM's cosine classifier); default: unchanged."""
        return model

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based); deferred re-weighting and other schedules live here."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- the roles (harness.seams) ----------------------------------------------------------
    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self(out.logits, batch.y, batch.index)

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return self.prepare_model(model)


# ---------------------------------------------------------------------------------------------
# conformance
# ---------------------------------------------------------------------------------------------


def check(method: Any, env: Any) -> Any:
    """Train two short epochs through the real assembly and engine."""
    from harness.conformance import run_training_method

    return run_training_method(method, env)


def check_confident_logits(method: Any, env: Any) -> None:
    """One call outside the engine: a scalar, finite value and gradients, also at confident logits
    (gaps of 100+ between classes) and for soft targets. Only for a loss computed from the logits
    alone (one that keeps the default `objective`); one that needs heads, auxiliary models or
    views is checked through the engine by `check`."""
    import torch

    from harness.conformance import CONFIDENT_LOGIT_SCALE, loss_context, require

    data, seed = env.data, env.seed
    k = data.num_classes
    loss = method.create(loss_context(data))
    if type(loss).objective is not Loss.objective:
        return
    g = torch.Generator().manual_seed(seed)
    targets = data.train_y[:16]
    index = torch.arange(16)
    for label, scale in (("standard", 1.0), ("confident", CONFIDENT_LOGIT_SCALE)):
        logits = (scale * torch.randn(16, k, generator=g)).requires_grad_(True)
        value = loss(logits, targets, index)
        require(isinstance(value, torch.Tensor) and value.dim() == 0, f"forward must return a scalar tensor, got {getattr(value, 'shape', type(value))}")
        require(bool(torch.isfinite(value)), f"forward gives {value.item()} at {label} logits")
        value.backward()
        require(logits.grad is not None and bool(torch.isfinite(logits.grad).all()), f"non-finite gradient at {label} logits")
    if loss.accepts_soft_targets:
        soft = torch.full((16, k), 1.0 / k)
        value = loss(torch.randn(16, k, generator=g), soft, index)
        require(value.dim() == 0 and bool(torch.isfinite(value)), "accepts_soft_targets is True but soft [B, K] targets give a non-finite or non-scalar loss")


# ---------------------------------------------------------------------------------------------
# the new-plugin template
# ---------------------------------------------------------------------------------------------

METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from harness import Method, Param, hookimpl
from harness.kinds.loss import Loss, LossContext


class ConfidencePenalty(Loss):
    """L = CE(p, t) - beta * H(p): cross-entropy minus a bonus for uncertain (high-entropy) predictions."""

    def __init__(self, ctx: LossContext, beta: float):  # beta's default is declared once, on its Param
        super().__init__()
        self.num_classes = ctx.num_classes
        self.beta = beta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        if targets.dtype.is_floating_point:  # soft targets [B, K] (after mixup), rows sum to 1
            t = targets.float()
        else:  # class indices [B]
            t = F.one_hot(targets, self.num_classes).float()
        cross_entropy = -(t * logp).sum(dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        return (cross_entropy - self.beta * entropy).mean()


$CONST = Method(
    name="$method",
    kind="loss",
    build=ConfidencePenalty,
    summary="cross-entropy minus beta times the entropy of the prediction (confidence penalty)",
    paper=(
        "Pereyra et al., Regularizing Neural Networks by Penalizing Confident Output Distributions, "
        "ICLR 2017 workshop"
    ),
    url="https://arxiv.org/abs/1701.06548",
    params=(Param("beta", float, 0.1, "weight of the entropy bonus", low=0.0, high=1.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
'''

TESTS_TEMPLATE = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations

import math

import torch

from harness.kinds.loss import LossContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a few training steps on real data, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_value_by_hand():
    # equal logits: p = 1/K everywhere, so CE = log K and H(p) = log K: L = (1 - beta) log K
    k = 4
    ctx = LossContext(num_classes=k, class_counts=(10,) * k, dataset_size=10 * k, epochs=1)
    loss = $CONST.create(ctx, beta=0.25)
    value = loss(torch.zeros(3, k), torch.tensor([0, 1, 2]), torch.arange(3))
    assert math.isclose(value.item(), 0.75 * math.log(k), rel_tol=1e-6)
'''


KIND = Kind(
    name="loss",
    summary="the training objective: a function of the logits, the targets and each sample's index",
    interface=Loss,
    order=10,
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    extra_checks=(("finite at confident logits", check_confident_logits),),
    scaffold=KindScaffold("a confidence-penalty loss", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="long_tail",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
