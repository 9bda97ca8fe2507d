"""The training seam: what a training-time method may touch, one small typed role per place.

One training step, in order (harness.engine.train runs it; every suite trains through it):

    sampler (epoch)   Sampler.epoch_plan(epoch, generator) -> EpochPlan(order[, restart])
      -> batch        Batch(x, y, index[, domain]): normalised float images on the device
      -> transform    Transform.transform(batch, generator) -> Batch        (augmentations; chained)
      -> forward      Outputs(logits, features, heads, aux): the model, the heads it carries, and
                      the auxiliary models the methods declared (AuxiliaryModels: a frozen Teacher,
                      a Peer trained alongside)
      -> objective    Objective.objective(batch, out) -> scalar             (exactly one owner)
                      + LossTerm.extra_loss(batch, out) -> scalar | None    (any number, summed)
      -> update       UpdateRule.update(step, optimizer)                    (at most one owner;
                      default: one backward pass and the optimiser's step)
      -> observe      Observer.observe(batch, out)                          (read-only, after the step)
    predict           Predictor.predict(model, inputs) -> logits            (at most one owner;
                      default: the model's logits batch by batch)

Before training, ModelShaper.shape_model(model, ctx) may reshape the model (extra heads, a
normalised or fixed classifier); it must keep `model(x)` giving the class logits in eval mode.
A method that needs the whole step (per-domain objectives, inner loops) owns it with
StepOwner.train_step(batch, tools), reusing the default parts through `tools`.

A method's built object implements the roles it needs by inheriting their classes; the engine
finds each role with `isinstance`, never by probing attributes. Every role has `start_epoch`
(called before each epoch, 0-based). Roles with one owner (Objective, UpdateRule, StepOwner,
Sampler, Predictor) may be implemented by at most one method of an entry; `harness.training`
refuses other combinations before training, with a message naming both methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# what flows through a step
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainContext:
    """What a training-time method knows when it is built (the `ctx` of `build(ctx, **hp)`).

    `num_classes` and `class_counts` describe the label space the objective trains on: K, or
    K x m when a transform with `label_multiplier = m` trains joint labels (each class count
    then repeats m times). `num_domains` is 0 when the training data has no domain labels.
    `labels` and `domains` are the training set's int64 labels and domain ids (CPU; None when
    unknown), for samplers and objectives that need the whole set's composition.
    """

    num_classes: int
    class_counts: tuple[int, ...]  # training samples per class (may contain 0)
    dataset_size: int
    epochs: int
    device: str = "cpu"
    batch_size: int = 128
    steps_per_epoch: int = 1
    seed: int = 0
    num_domains: int = 0
    in_chans: int = 1
    img_size: int = 28
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    domains: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def with_label_multiplier(self, m: int) -> TrainContext:
        if m == 1:
            return self
        return replace(self, num_classes=self.num_classes * m, class_counts=tuple(c for c in self.class_counts for _ in range(m)))


@dataclass(frozen=True)
class Batch:
    """One training batch on the device.

    `x`: normalised float images [B, C, H, W]. `y`: int64 labels [B], or soft float targets
    [B, K] whose rows sum to 1 (after a mixing transform). `index`: int64 [B], each sample's
    position in the training set; -1 for rows a transform appended. `domain`: int64 [B] domain
    ids where the data has domains (-1 for appended rows), else None. `views`: extra inputs a
    transform made from the batch that the model sees in *separate* forward passes (BatchNorm
    normalises each on its own), e.g. mixed copies; their outputs arrive in `out.views[name]`.
    Use `dataclasses.replace(batch, ...)` to change a batch and keep its views.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    domain: torch.Tensor | None = None
    views: dict[str, Batch] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def by_domain(self) -> list[Batch]:
        """Per-domain minibatches (DomainBed's `minibatches`), in increasing domain id; rows with
        no domain (-1) are left out. Raises ValueError when the data has no domains."""
        if self.domain is None:
            raise ValueError("this training data has no domain labels")
        out = []
        for d in torch.unique(self.domain[self.domain >= 0]).tolist():
            keep = self.domain == d
            out.append(Batch(self.x[keep], self.y[keep], self.index[keep], self.domain[keep]))  # views are not split
        return out


@dataclass
class Outputs:
    """What the forward pass produced for one batch.

    `logits`: float32 [B, K] of the model being trained. `features`: the penultimate features
    [B, D] (the classifier's input), present when a method declared `uses_features = True`.
    `heads`: extra named outputs of a model that carries several heads (`HeadedModel`).
    `aux`: the Outputs of each auxiliary model on the same inputs, by the name it was declared
    with. `views`: the model's Outputs on each of the batch's views. `recomputed` is True on extra forward passes of the same step (an update rule such as
    SAM evaluates the objective twice): a method keeping per-sample state updates it only when
    it is False.
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: dict[str, Outputs] = field(default_factory=dict)
    views: dict[str, Outputs] = field(default_factory=dict)
    recomputed: bool = False


@dataclass(frozen=True)
class EpochPlan:
    """The order in which an epoch visits the training set (indices may repeat or be left out),
    and whether training starts over before it (`restart`: the model is re-initialised to its
    state before training, the optimiser and schedule restart, and the recipe's epochs run again;
    at most once per run)."""

    order: torch.Tensor
    restart: bool = False


class HeadedModel(nn.Module):
    """A model that carries extra heads: `forward(x)` gives the class logits (what every consumer
    of a trained model sees); `forward_heads(x)` gives the logits and the named head outputs the
    training objective uses (e.g. the experts of a multi-expert model)."""

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# auxiliary models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A second network of the run's architecture (built and shaped like the trained model, with
    its own initialisation), trained alongside it by the same optimiser on the same batches
    (co-training, online distillation). Its outputs arrive in `out.aux[name]`."""

    uses_features: bool = False


@dataclass(frozen=True)
class Teacher:
    """A frozen network trained once before the run, stored as an artifact and reused by every
    run that asks for the same teacher on the same data, recipe and seed.

    `model`: its architecture (a model name; default: the run's). `methods`: the entry it is
    trained with (default "ce"). `epochs`: its training epochs (default: the recipe's).
    `trained=False` gives an untrained, randomly initialised teacher (the random-teacher control).
    It runs in eval mode without gradients; its outputs arrive in `out.aux[name]`.
    """

    model: str | None = None
    methods: str = "ce"
    epochs: int | None = None
    trained: bool = True
    uses_features: bool = False


Auxiliary = Peer | Teacher


# ---------------------------------------------------------------------------------------------
# the roles
# ---------------------------------------------------------------------------------------------


class Role:
    """Base of every role. `start_epoch(epoch)` is called before each epoch (0-based).
    `uses_features`: the role reads `out.features`, so the engine captures them."""

    uses_features: bool = False

    def start_epoch(self, epoch: int) -> None:
        """Schedules live here (deferred re-weighting, warm-ups)."""


class Transform(Role):
    """Changes a training batch on the device (augmentations). Draw every random number from
    `generator`. `label_multiplier = m` means the targets range over K x m joint labels (the
    objective is then built for that many classes). `produces_soft_targets`: the transform may
    return soft [B, K] targets, so the objective must accept them."""

    label_multiplier: int = 1
    produces_soft_targets: bool = True

    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        raise NotImplementedError


class Objective(Role):
    """The training objective of a batch (exactly one method of an entry owns it; a suite adds
    its baseline loss when the entry names none). `accepts_soft_targets = False` refuses, before
    training, an entry whose transform produces soft targets."""

    accepts_soft_targets: bool = True

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        raise NotImplementedError


class LossTerm(Role):
    """A term added to the objective (a regulariser, a penalty); None adds nothing."""

    def extra_loss(self, batch: Batch, out: Outputs) -> torch.Tensor | None:
        raise NotImplementedError


class ModelShaper(Role):
    """Reshapes the model once before training (and before the optimiser is made): extra heads,
    a normalised or fixed classifier. Transforms' shapers run first, then the others in entry
    order. The returned model must give K class logits from `model(x)` in eval mode."""

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        raise NotImplementedError


class AuxiliaryModels(Role):
    """Declares auxiliary models by name: a `Teacher` (frozen, trained once as an artifact) or a
    `Peer` (trained alongside). Names must be unique within an entry."""

    def auxiliary_models(self) -> dict[str, Auxiliary]:
        raise NotImplementedError


class UpdateRule(Role):
    """Owns the parameter update (SAM's two passes, a gradient projection).

    `step()` runs one forward/objective/backward pass on the current batch at the current weights
    and returns the loss (detached); `step(recomputed=True)` is an extra pass of the same step:
    BatchNorm running statistics are left alone and stateful objectives are told. The rule calls
    `optimizer.step()` itself (the recipe's optimiser, whose learning rate follows the schedule)."""

    def update(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        raise NotImplementedError


class Sampler(Role):
    """Decides the order (and multiplicity) of the training samples an epoch visits."""

    def epoch_plan(self, epoch: int, generator: torch.Generator) -> EpochPlan:
        raise NotImplementedError


class Observer(Role):
    """Sees every forward pass of a step (the batch and its detached outputs) after the update:
    per-sample statistics for samplers, curricula, histories. A step owner's per-domain passes
    are each seen with their own minibatch; extra passes of one step (SAM's) are not seen."""

    def observe(self, batch: Batch, out: Outputs) -> None:
        raise NotImplementedError


class Predictor(Role):
    """Owns prediction at test time: `inputs` are normalised float batches on the device (the
    whole evaluation set, in order); return float32 logits [N, K] on the CPU. Called in eval
    mode, without gradients unless the predictor enables them (test-time aggregation)."""

    def predict(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class StepTools:
    """What a StepOwner may use to build its step from the default parts."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    forward: Callable[[Batch], Outputs]  # the entry's forward pass (model, heads, auxiliaries)
    loss: Callable[[Batch, Outputs], torch.Tensor]  # the entry's objective plus every LossTerm
    default_step: Callable[[Batch], torch.Tensor]  # the whole default step (update rule included)
    update: Callable[[Callable[..., torch.Tensor]], torch.Tensor]  # run the entry's update rule on a step closure


class StepOwner(Role):
    """Owns the whole training step, as DomainBed's `update(minibatches)`: called with the
    transformed batch; does its own forward passes and updates through `tools`; returns the
    batch's loss (detached) for the log and the divergence check."""

    def train_step(self, batch: Batch, tools: StepTools) -> torch.Tensor:
        raise NotImplementedError


# the roles one method at most may implement within an entry
SINGLE_OWNER_ROLES: tuple[type[Role], ...] = (Objective, UpdateRule, StepOwner, Sampler, Predictor)
ALL_ROLES: tuple[type[Role], ...] = (Transform, Objective, LossTerm, ModelShaper, AuxiliaryModels, UpdateRule, Sampler, Observer, Predictor, StepOwner)


def roles_of(obj_or_class: Any) -> tuple[type[Role], ...]:
    """The roles an object (or class) implements, in the order of ALL_ROLES."""
    cls = obj_or_class if isinstance(obj_or_class, type) else type(obj_or_class)
    return tuple(r for r in ALL_ROLES if issubclass(cls, r))


def features_hook(model: nn.Module, sink: dict[str, torch.Tensor]) -> Any:
    """Capture the classifier's input (the penultimate features, flattened to [B, D]) into
    `sink["features"]` on every forward; returns the hook handle (call `.remove()`)."""
    from harness.models import get_classifier

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        sink["features"] = args[0].flatten(1)

    return get_classifier(model).register_forward_pre_hook(hook)
