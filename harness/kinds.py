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

Only the loss kind is driven by the long-tail suite today; the other interfaces are fixed here
so later suites plug in without changing the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.params import Param

KINDS: tuple[str, ...] = ("loss", "augmentation", "merging", "unlearning", "tta")


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
    """`forget`/`retain` given to `unlearn` are (x, y) tensor pairs; `epochs`/`lr` are the card's budget."""

    num_classes: int
    epochs: int
    lr: float
    batch_size: int
    device: str = "cpu"
    original: nn.Module | None = None


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
