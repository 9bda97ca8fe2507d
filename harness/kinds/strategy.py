"""Kind `strategy`: a continual-learning strategy (what the model trains on, and how, task after task).

`build(ctx: StrategyContext, **hp)` returns a `Strategy`. A continual suite trains one model through
the tasks in order and, for task t, calls `train_tasks(seen)`, `before_task(model, task)`, trains
through the engine with the strategy's per-batch hooks as parts (`strategy_parts`: `batch` is a
transform of every training batch, `penalty` a term added to the loss), then `after_task(model, task)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold
from harness.seams import Batch, LossTerm, Outputs, Role, Transform


@dataclass(frozen=True)
class Task:
    """One task of a continual stream: uint8 training images, labels, and the classes it holds.

    `classes` are the labels the task's samples carry (class-incremental: its own classes;
    domain-incremental and permuted streams: every class).
    """

    index: int
    x: torch.Tensor  # uint8 [N, C, H, W], already transformed for the task (rotation, permutation)
    y: torch.Tensor  # int64 [N]
    classes: tuple[int, ...]


@dataclass
class StrategyContext:
    """What a strategy may know when it is built. `normalize(x_uint8) -> float` is the stream's
    fixed input normalisation (the tensors the model sees); `seed` drives the strategy's draws."""

    num_classes: int
    num_tasks: int
    epochs: int  # per task
    batch_size: int
    normalize: Callable[[torch.Tensor], torch.Tensor]
    device: str = "cpu"
    seed: int = 0


class Strategy:
    """A continual-learning strategy. Every hook has a no-op default, so the empty strategy is
    naive fine-tuning. `x` in the batch hooks is the normalised float batch the model sees; `y`
    is int64 or soft float targets."""

    def train_tasks(self, seen: list[Task]) -> list[Task]:
        """The tasks whose training data the engine trains on now (default: the current one)."""
        return seen[-1:]

    def before_task(self, model: nn.Module, task: Task) -> None:
        """Called before training on `task` (the model holds the weights after the previous task)."""

    def batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Change a training batch (e.g. append replayed samples); default: unchanged."""
        return x, y

    def penalty(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """A term added to the batch's training loss (regularisation, distillation); default: none."""
        return None

    def after_task(self, model: nn.Module, task: Task) -> None:
        """Called after training on `task` (the model holds its final weights for the task)."""


class _StrategyBatch(Transform):
    produces_soft_targets = False  # it keeps the targets' form (replayed rows follow the batch's)

    def __init__(self, strategy: Strategy):
        self.strategy = strategy

    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        x, y = self.strategy.batch(batch.x, batch.y, generator)
        extra = len(y) - len(batch.index)
        if extra == 0:
            return replace(batch, x=x, y=y)
        index = torch.cat([batch.index, batch.index.new_full((extra,), -1)])
        domain = torch.cat([batch.domain, batch.domain.new_full((extra,), -1)]) if batch.domain is not None else None
        return replace(batch, x=x, y=y, index=index, domain=domain)


class _StrategyPenalty(LossTerm):
    def __init__(self, strategy: Strategy, model: nn.Module):
        self.strategy, self.model = strategy, model

    def extra_loss(self, batch: Batch, out: Outputs) -> torch.Tensor | None:
        return self.strategy.penalty(self.model, batch.x, out.logits)


def strategy_parts(strategy: Strategy, model: nn.Module) -> tuple[Role, ...]:
    """The engine parts of a strategy for training `model` on one task: its `batch` hook as a
    transform (after the entry's augmentations) and its `penalty` as a loss term."""
    return (_StrategyBatch(strategy), _StrategyPenalty(strategy, model))


def check(method: Any, env: Any) -> Any:
    """Two class-incremental tasks (digits 0-4, then 5-9), one short epoch each through the engine,
    every hook called."""
    from harness.conformance import CHECK_RECIPE, cross_entropy_loss, normalizer_of, require, tiny_model
    from harness.engine import train

    data, seed = env.data, env.seed
    k = data.num_classes
    normalizer = normalizer_of(data)
    tasks = []
    for t, classes in enumerate((tuple(range(k // 2)), tuple(range(k // 2, k)))):
        keep = torch.isin(data.train_y, torch.tensor(classes))
        tasks.append(Task(t, data.train_x[keep], data.train_y[keep], classes))
    ctx = StrategyContext(num_classes=k, num_tasks=2, epochs=1, batch_size=32, normalize=normalizer, device="cpu", seed=seed)
    strategy = method.create(ctx)
    require(isinstance(strategy, Strategy), f"build returned a {type(strategy).__name__}; a strategy method must return a harness.kinds.strategy.Strategy")
    model = tiny_model(data, seed)
    losses: list[float] = []
    for t, task in enumerate(tasks):
        train_on = strategy.train_tasks(tasks[: t + 1])
        require(isinstance(train_on, list) and all(isinstance(x, Task) for x in train_on) and train_on, "train_tasks must return a non-empty list of the seen Tasks")
        x_all, y_all = torch.cat([tk.x for tk in train_on]), torch.cat([tk.y for tk in train_on])
        strategy.before_task(model, task)
        log = train(model, x_all, y_all, recipe={**CHECK_RECIPE, "epochs": 1, "batch_size": 32}, parts=[*strategy_parts(strategy, model), cross_entropy_loss()],
                    normalizer=normalizer, seed=seed * 1000 + t, device="cpu")
        losses.extend(log.train_loss)
        strategy.after_task(model, task)
    model.eval()
    with torch.no_grad():
        logits = model(normalizer(data.test_x))
    return {"train_loss": losses, "logits": logits}


METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch
from torch import nn

from harness import Method, Param, hookimpl
from harness.kinds.strategy import Strategy, StrategyContext, Task


class AnchorPenalty(Strategy):
    """penalty = lam / 2 * ||theta - theta*||^2, theta* the weights at the end of the previous task."""

    def __init__(self, ctx: StrategyContext, lam: float):  # the default lives on the Param
        self.lam = lam
        self.anchor: list[torch.Tensor] | None = None

    def after_task(self, model: nn.Module, task: Task) -> None:
        self.anchor = [p.detach().clone() for p in model.parameters()]

    def penalty(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.anchor is None:  # the first task: nothing to protect yet
            return None
        total = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), self.anchor, strict=True))
        return 0.5 * self.lam * total


$CONST = Method(
    name="$method",
    kind="strategy",
    build=AnchorPenalty,
    summary="an L2 penalty pulling the weights towards those at the end of the previous task",
    paper="Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017 (the L2 baseline)",
    url="https://arxiv.org/abs/1612.00796",
    params=(Param("lam", float, 0.1, "penalty strength lambda", low=0.0),),
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

from harness.kinds.strategy import StrategyContext, Task

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, two tasks through the engine with every hook, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_penalty_by_hand():
    # after the first task every weight moves by 1: penalty = lam / 2 * (number of weights)
    model = nn.Linear(3, 2)  # 6 weights + 2 biases
    ctx = StrategyContext(num_classes=2, num_tasks=2, epochs=1, batch_size=4, normalize=lambda z: z.float())
    strategy = $CONST.create(ctx, lam=0.5)
    assert strategy.penalty(model, torch.zeros(1, 3), torch.zeros(1, 2)) is None
    first = Task(0, torch.zeros(1, 1, 1, 3, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), (0, 1))
    strategy.after_task(model, first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    value = strategy.penalty(model, torch.zeros(1, 3), torch.zeros(1, 2))
    assert abs(float(value) - 0.25 * 8) < 1e-6
'''


KIND = Kind(
    name="strategy",
    summary="a continual-learning strategy: which data each task trains on, per-batch changes, penalties, consolidation",
    interface=Strategy,
    order=60,
    check=check,
    scaffold=KindScaffold("an L2-anchor continual-learning strategy", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="continual",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
