"""Kind `optimizer`: a method that owns the parameter update (the `UpdateRule` role).

`build(ctx: TrainContext, **hp)` returns an `Optimizer`. Per step the engine hands it
`step(recomputed=False) -> loss`, which runs a forward/objective/backward pass on the current
batch at the current weights, and the recipe's base optimiser (SGD with the recipe's momentum,
weight decay and learning-rate schedule). The method calls `step` as often as it needs (SAM: twice,
the second pass with `recomputed=True`), changes the gradients or the weights in between, and
calls `optimizer.step()`. It composes with any loss and augmentation; one per entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold
from harness.seams import TrainContext, UpdateRule

OptimizerContext = TrainContext


class Optimizer(UpdateRule):
    """Owns the update: `update(step, optimizer) -> loss` (see the module docstring)."""

    def update(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        raise NotImplementedError


def trained_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter the optimiser updates that received a gradient in the last pass."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def check(method: Any, env: Any) -> Any:
    """Train two short epochs with cross-entropy through the real assembly and engine, and check
    that the weights moved (the rule called optimizer.step())."""
    from harness.conformance import require, run_training_method

    out = run_training_method(method, env)
    require(out["weights_changed"], "training left every weight unchanged: the update rule must call optimizer.step()")
    return out


METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch

from harness import Method, Param, hookimpl
from harness.kinds.optimizer import Optimizer, OptimizerContext, trained_parameters


class ClippedUpdate(Optimizer):
    """Clip the gradient to a global L2 norm of at most `max_norm` before the base optimiser's step."""

    def __init__(self, ctx: OptimizerContext, max_norm: float):  # the default lives on the Param
        self.max_norm = max_norm

    def update(self, step, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        loss = step()  # forward, objective, backward at the current weights
        torch.nn.utils.clip_grad_norm_(trained_parameters(optimizer), self.max_norm)
        optimizer.step()
        return loss


$CONST = Method(
    name="$method",
    kind="optimizer",
    build=ClippedUpdate,
    summary="gradient clipping by global norm before each SGD step",
    paper="Pascanu, Mikolov & Bengio, On the difficulty of training recurrent neural networks, ICML 2013",
    url="https://arxiv.org/abs/1211.5063",
    params=(Param("max_norm", float, 1.0, "largest global L2 norm of the gradient", low=0.0),),
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

from harness.kinds.optimizer import OptimizerContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, two short epochs on real data, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_clips_to_max_norm_by_hand():
    # a gradient of norm 5 (3, 4) clipped to norm 1 becomes (0.6, 0.8): plain SGD (lr 1) moves by it
    w = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([w], lr=1.0)

    def step(recomputed=False):
        optimizer.zero_grad()
        loss = (torch.tensor([3.0, 4.0]) * w).sum()
        loss.backward()
        return loss.detach()

    ctx = OptimizerContext(num_classes=2, class_counts=(1, 1), dataset_size=2, epochs=1)
    $CONST.create(ctx, max_norm=1.0).update(step, optimizer)
    assert torch.allclose(w.detach(), torch.tensor([-0.6, -0.8]))
'''


KIND = Kind(
    name="optimizer",
    summary="owns the parameter update (SAM's two passes, a gradient projection); wraps the recipe's SGD",
    interface=Optimizer,
    order=25,
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    scaffold=KindScaffold("a gradient-clipping update", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="long_tail",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
