"""The method kinds: what a method declares, and the small interface each kind implements.

A method is registered as a `Method` (name, kind, summary, paper, typed hyper-parameters and a
`build` callable). The engine calls `build` with a kind-specific context plus the resolved
hyper-parameters as keyword arguments, and uses the object it returns through that kind's
interface below:

| kind          | `build(ctx, **hp)` returns | the engine then calls                                  |
|---------------|----------------------------|--------------------------------------------------------|
| loss          | `Loss` (an nn.Module)      | `prepare_model(model)`, `start_epoch(e)`, `forward(logits, targets, index)` |
| augmentation  | `Augmentation`             | `aug(x, y) -> (x, y)` on a whole batch on the device    |
| merging       | `Merging`                  | `merge(base, experts, ctx) -> state_dict`               |
| unlearning    | `Unlearning`               | `unlearn(model, forget, retain, ctx) -> model`          |
| tta           | `TestTimeAdaptation`       | `adapt(model, ctx) -> Adapter`; `adapter(x)`, `adapter.reset()` |
| strategy      | `Strategy`                 | per task: `train_tasks(seen)`, `before_task(model, task)`, then per batch `batch(x, y, generator)` and `penalty(model, x, logits)`, then `after_task(model, task)` |

Which suite drives which kind: long_tail and noisy_labels rank losses and augmentations; ood
ranks tta (and the losses/augmentations that trained its source model); unlearning ranks
unlearning; continual ranks strategy and, in its merging protocol, merging (it also trains with
the loss and augmentation kinds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.params import Param

KINDS: tuple[str, ...] = ("loss", "augmentation", "merging", "unlearning", "tta", "strategy")


@dataclass(frozen=True)
class Method:
    """A named, versioned technique of one kind.

    `version` is part of every run's identity: bump it when a change alters results.
    `plugin` and `plugin_version` are stamped by the core at registration time.
    """

    name: str
    kind: str
    build: Callable[..., Any]
    summary: str
    paper: str
    url: str = ""
    params: tuple[Param, ...] = ()
    version: str = "1"
    plugin: str = ""
    plugin_version: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"method name {self.name!r} must be letters, digits and underscores")
        if not self.summary.strip():
            raise ValueError(f"method {self.name!r} needs a one-line summary")
        if not self.paper.strip():
            raise ValueError(f"method {self.name!r} needs a paper reference")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r} declares a hyper-parameter twice: {names}")


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossContext:
    """What a loss may know about the training set and schedule when it is built."""

    num_classes: int
    class_counts: tuple[int, ...]  # training samples per class, after the suite's sampling
    dataset_size: int
    epochs: int
    device: str = "cpu"


class Loss(nn.Module):
    """A training loss. `forward(logits, targets, index)` returns a scalar tensor.

    `targets` is int64 [B] or, after a mixing augmentation, soft float [B, num_classes] whose rows
    sum to 1; a loss that cannot take soft targets sets `accepts_soft_targets = False` and the
    core refuses such combinations before training. `index` holds each sample's position in
    the training set (for per-sample state such as ELR's targets).
    """

    accepts_soft_targets: bool = True

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapt the model before training (e.g. LDAM's cosine classifier); default: unchanged."""
        return model

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based); deferred re-weighting and other schedules live here."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentContext:
    num_classes: int
    epochs: int
    device: str = "cpu"


class Augmentation:
    """A batch transform on the training device.

    `__call__(x, y, generator)` takes float images `x` [B, C, H, W] (normalised) and targets `y`
    (int64 [B] or soft float [B, num_classes]) and returns the pair to train on (the batch size
    may change, e.g. when a method appends augmented copies). Draw all randomness from
    `generator` so runs are reproducible.

    Three optional seams, each with a no-op default:
    - `loss_term(logits, targets)`: an extra loss added to the training loss for the batch this
      augmentation just produced (mixup-family regularisers such as RankMixup's ranking term).
    - `prepare_model(model, num_classes)`: reshape the model before training; the returned model
      must give `num_classes` logits in eval mode (self-supervised label augmentation trains a
      joint class x rotation head and aggregates over rotations at inference).
    - `label_multiplier`: the training targets range over `num_classes * label_multiplier`
      joint labels; the loss is then built for that many classes.
    """

    label_multiplier: int = 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based); schedules live here."""

    def loss_term(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        return None

    def prepare_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        return model


# ---------------------------------------------------------------------------------------------
# merging
# ---------------------------------------------------------------------------------------------


@dataclass
class MergeContext:
    """`unlabeled` (optional) yields input batches from the target tasks, for AdaMerging-style methods."""

    num_tasks: int
    unlabeled: Callable[[], Any] | None = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


class Merging:
    def merge(self, base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]], ctx: MergeContext) -> dict[str, torch.Tensor]:
        """Return one state dict built from the base model's and each expert's state dicts."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# unlearning
# ---------------------------------------------------------------------------------------------


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
    def unlearn(self, model: nn.Module, forget: tuple[torch.Tensor, torch.Tensor], retain: tuple[torch.Tensor, torch.Tensor], ctx: UnlearnContext) -> nn.Module:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# tta
# ---------------------------------------------------------------------------------------------


@dataclass
class AdaptContext:
    num_classes: int
    device: str = "cpu"


class Adapter:
    """Online predictor: `adapter(x) -> logits` batch by batch (and may update itself); `reset()`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class TestTimeAdaptation:
    __test__ = False  # not a pytest class

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# strategy (continual learning)
# ---------------------------------------------------------------------------------------------


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
    """A continual-learning strategy: what the model trains on, and how, task after task.

    The suite trains one model through the tasks in order. For task t it calls
    `train_tasks(seen)` (which tasks' data the engine trains on; `seen` = tasks 0..t), then
    `before_task(model, task)`, trains with the engine (each batch passes through
    `batch(x, y, generator)` after the augmentation, and `penalty(model, x, logits)` is added to
    the loss), and finally `after_task(model, task)` (consolidation: Fisher, anchors, buffers).
    `x` in the batch hooks is the normalised float batch the model sees; `y` is int64 or soft
    float targets. Every hook has a no-op default, so the empty strategy is naive fine-tuning.
    """

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
