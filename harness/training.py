"""Assemble what one run trains: the model, the loss and the augmentation of a spec.

Every suite that trains a classifier builds it here, so the order in which methods may reshape
the model is fixed in one place: the augmentation first (it may widen the head to joint labels),
then the loss (it may swap the head for its own, e.g. LDAM's cosine classifier), and only then
does the engine build the optimiser over the final parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from harness.kinds import Augmentation, AugmentContext, Loss, LossContext
from harness.suite import RunContext


@dataclass
class TrainingSetup:
    model: nn.Module
    loss: Loss
    augmentations: tuple[Augmentation, ...]


def build_training(ctx: RunContext, *, num_classes: int, in_chans: int, img_size: int, class_counts: list[int], train_size: int, default_loss: str = "ce") -> TrainingSetup:
    """The spec's model, loss and augmentation; a spec without a loss (a suite that does not rank
    losses) trains with `default_loss` at its default hyper-parameters."""
    recipe: dict[str, Any] = ctx.spec.recipe_dict()
    model = ctx.catalog.model(recipe["model"]).build(num_classes, in_chans, img_size)
    augmentation = ctx.build_method("augmentation", AugmentContext(num_classes, recipe["epochs"], ctx.device))
    loss_classes, loss_counts = num_classes, list(class_counts)
    if augmentation is not None:
        model = augmentation.prepare_model(model, num_classes)
        m = augmentation.label_multiplier
        if m > 1:  # joint labels (class, transformation): each class's count repeats per transformation
            loss_classes, loss_counts = num_classes * m, [c for c in class_counts for _ in range(m)]
    loss_ctx = LossContext(loss_classes, tuple(loss_counts), train_size, recipe["epochs"], ctx.device)
    loss = ctx.build_method("loss", loss_ctx)
    if loss is None:
        loss = ctx.catalog.methods.get(default_loss).build(loss_ctx)
    if augmentation is not None and not loss.accepts_soft_targets:
        raise ValueError(f"loss {ctx.spec.method_params('loss')[0]!r} cannot take the soft targets that the augmentation produces")
    model = loss.prepare_model(model)
    return TrainingSetup(model, loss, (augmentation,) if augmentation is not None else ())
