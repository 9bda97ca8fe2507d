"""The one training/evaluation loop every suite uses.

Data is tensor-resident: a split lives on the training device as one uint8 tensor; each batch is
an index into it, converted to float and normalised there, augmented as a whole batch. The
loop reports the last epoch (it never picks an epoch by test accuracy), is deterministic on CPU
for a given seed, and uses bf16 autocast + channels-last when it runs on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.errors import RunDiverged


def resolve_device(requested: str = "auto") -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        from harness.errors import HarnessError

        raise HarnessError("device=cuda was asked for but torch sees no CUDA device; use device=cpu or device=auto")
    return requested


@dataclass(frozen=True)
class Normalizer:
    """uint8 -> float, normalised with the training split's per-channel mean and std."""

    mean: torch.Tensor  # [1, C, 1, 1]
    std: torch.Tensor

    @classmethod
    def fit(cls, x_uint8: torch.Tensor) -> Normalizer:
        x = x_uint8.float().div_(255)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        return cls(mean, std)

    def to(self, device: str) -> Normalizer:
        return Normalizer(self.mean.to(device), self.std.to(device))

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched standard CIFAR augmentation: reflect-pad, random crop per sample, random h-flip."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(b, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(b, h, w)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    cols = torch.where(flip.view(b, 1, 1), cols.flip(-1), cols)
    batch = torch.arange(b, device=x.device).view(b, 1, 1).expand(b, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def lr_at(step: int, steps_per_epoch: int, recipe: dict[str, Any]) -> float:
    """Learning rate of a step under the recipe's schedule."""
    base, epochs = recipe["lr"], recipe["epochs"]
    total = epochs * steps_per_epoch
    warm = recipe.get("warmup_epochs", 0) * steps_per_epoch
    if warm and step < warm:
        return base * (step + 1) / warm
    if recipe.get("schedule", "onecycle") == "onecycle":
        # linear decay from the peak to zero over the steps after warm-up
        return base * max(0.0, (total - step) / max(1, total - warm))
    if recipe["schedule"] == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    epoch = step // steps_per_epoch
    return base * recipe.get("lr_decay", 0.1) ** sum(epoch >= m for m in recipe.get("milestones", ()))


@dataclass
class TrainLog:
    train_loss: list[float] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    recipe: dict[str, Any],
    loss_fn: nn.Module,
    normalizer: Normalizer,
    seed: int,
    device: str,
    augmentations: tuple[Any, ...] = (),
    on_epoch: Callable[[int, int, float], None] = lambda e, n, loss: None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    compile_model: bool = False,
    amp: bool = True,
) -> TrainLog:
    """Train `model` in place on (x uint8, y) for recipe['epochs'] epochs; return the log.

    `loss_fn(logits, targets, index)` must have `start_epoch(epoch)` (harness.kinds.Loss).
    `evaluate`, if given, is called after every epoch and its numbers become per-epoch curves
    (for plots only: nothing is selected by them). Raises RunDiverged when the loss is not finite.
    `compile_model` runs the training forward pass through `torch.compile`; `amp=False` keeps
    CUDA training in float32 (bf16 autocast is the default on CUDA).

    The step has no host synchronisation: the loss is accumulated on the device and read once
    per epoch (the divergence check), the learning rate is a Python float.
    """
    model.to(device)
    loss_fn.to(device)
    use_cuda = device.startswith("cuda")
    if use_cuda:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    normalizer = normalizer.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    n, bs, epochs = len(y), int(recipe["batch_size"]), int(recipe["epochs"])
    steps_per_epoch = max(1, math.ceil(n / bs))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=recipe["weight_decay"], nesterov=bool(recipe["nesterov"]) and recipe["momentum"] > 0
    )
    # Normalise the split once when it fits comfortably (< 1 GiB as float32); else batch by batch
    # from the uint8 tensor, which is what lets a whole CIFAR-scale split stay resident.
    x_float = normalizer(x) if x.numel() * 4 < 2**30 else None
    forward = torch.compile(model) if compile_model else model
    log = TrainLog()
    step = 0
    for epoch in range(epochs):
        model.train()
        loss_fn.start_epoch(epoch)
        for aug in augmentations:
            aug.start_epoch(epoch)
        perm = torch.randperm(n, generator=generator, device=device)
        total = torch.zeros((), device=device)
        batches = 0
        for start in range(0, n, bs):
            index = perm[start : start + bs]
            if len(index) < 2:  # BatchNorm cannot train on a batch of one
                continue
            xb = x_float[index] if x_float is not None else normalizer(x[index])
            if recipe.get("crop_flip"):
                xb = crop_flip(xb, generator)
            yb = y[index]
            for aug in augmentations:
                xb, yb = aug(xb, yb, generator)
            if use_cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps_per_epoch, recipe)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda and amp):
                logits = forward(xb)
            if len(yb) != len(index):  # the augmentation appended copies: per-sample state is undefined for them
                index = torch.cat([index, index.new_full((len(yb) - len(index),), -1)])
            loss = loss_fn(logits.float(), yb, index)
            for aug in augmentations:
                term = aug.loss_term(logits.float(), yb)
                if term is not None:
                    loss = loss + term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
            step += 1
        mean_loss = float(total) / max(1, batches)  # one host sync per epoch
        if not math.isfinite(mean_loss):
            raise RunDiverged(f"training loss became {mean_loss} in epoch {epoch + 1} of {epochs}")
        log.train_loss.append(mean_loss)
        if evaluate is not None:
            for name, value in evaluate(model).items():
                log.curves.setdefault(name, []).append(value)
        on_epoch(epoch + 1, epochs, mean_loss)
    return log


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, normalizer: Normalizer, device: str, batch_size: int | None = None) -> torch.Tensor:
    """Logits (float32, on CPU) of `model` in eval mode for uint8 images `x`."""
    if batch_size is None:  # on a CPU, batches that fit in cache run about twice as fast as big ones
        batch_size = 1024 if device.startswith("cuda") else 256
    model.eval()
    normalizer = normalizer.to(device)
    use_cuda = device.startswith("cuda")
    out = []
    for start in range(0, len(x), batch_size):
        xb = normalizer(x[start : start + batch_size].to(device))
        if use_cuda:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
            out.append(model(xb).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
