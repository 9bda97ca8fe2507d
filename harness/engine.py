"""The one training/evaluation loop every suite uses, and the seams it calls (harness.seams).

Data is tensor-resident: a split lives on the training device as one uint8 tensor; each batch is
an index into it, converted to float and normalised there, transformed as a whole batch. The
loop reports the last epoch (it never picks an epoch by test accuracy), is deterministic on CPU
for a given seed, and uses bf16 autocast + channels-last when it runs on CUDA.

`train` takes the methods of a run as *parts*: objects implementing the roles of
harness.seams. `compose` sorts them into the roles and refuses combinations that cannot work
(two objectives, two update rules, ...) before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError, RunDiverged
from harness.seams import (
    Batch,
    EpochPlan,
    HeadedModel,
    LossTerm,
    Objective,
    Observer,
    Outputs,
    Predictor,
    Role,
    Sampler,
    StepOwner,
    StepTools,
    Transform,
    UpdateRule,
    features_hook,
)


def resolve_device(requested: str = "auto") -> str:
    """`auto` -> cuda if torch sees one, else cpu; `cpu`, `cuda`, `cuda:N` and `mps` are checked."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", requested):
        raise HarnessError(f"bad value {requested!r} for device: expected auto, cpu, cuda, cuda:N or mps")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HarnessError("device=mps was asked for but torch sees no MPS device; use device=cpu or device=auto")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
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
    restarted_at: int | None = None  # the epoch (of the first phase) at which a sampler restarted training


@dataclass(frozen=True)
class AuxModel:
    """An auxiliary model the engine runs beside the trained one: a peer (`trainable`: its
    parameters join the optimiser) or a frozen teacher (eval mode, no gradients)."""

    module: nn.Module
    trainable: bool
    uses_features: bool = False


# ---------------------------------------------------------------------------------------------
# composition: the parts of a run sorted into their roles
# ---------------------------------------------------------------------------------------------


class CompositionError(HarnessError):
    """Methods that cannot train together (two owners of one role, soft targets for a loss that
    takes none); raised before training."""


@dataclass(frozen=True)
class Composition:
    transforms: tuple[Transform, ...]
    objective: Objective | None
    terms: tuple[LossTerm, ...]
    observers: tuple[Observer, ...]
    update_rule: UpdateRule | None
    step_owner: StepOwner | None
    sampler: Sampler | None
    predictor: Predictor | None
    parts: tuple[Role, ...]

    @property
    def uses_features(self) -> bool:
        return any(p.uses_features for p in self.parts)


_OWNED = {Objective: "the objective", UpdateRule: "the parameter update", StepOwner: "the training step", Sampler: "sampling", Predictor: "prediction"}


def compose(parts: Sequence[Any], names: Sequence[str] | None = None, *, require_objective: bool = True) -> Composition:
    """Sort `parts` into roles; raise CompositionError for combinations that cannot work.

    `names` (one per part) name the methods in messages. Every part must be a harness.seams.Role.
    """
    names = list(names) if names is not None else [type(p).__name__ for p in parts]
    for part, name in zip(parts, names):
        if not isinstance(part, Role):
            raise CompositionError(f"{name}: {type(part).__name__} implements no role of harness.seams (Transform, Objective, LossTerm, ...)")
    owners: dict[type, tuple[Any, str]] = {}
    for part, name in zip(parts, names):
        for role, what in _OWNED.items():
            if isinstance(part, role):
                if role in owners:
                    raise CompositionError(f"{owners[role][1]} and {name} both own {what}; combine at most one method that owns {what} in an entry")
                owners[role] = (part, name)
    if require_objective and Objective not in owners:
        raise CompositionError("no method of the entry provides the training objective (a loss); add one, e.g. method=ce+...")
    transforms = tuple(p for p in parts if isinstance(p, Transform))
    objective = owners.get(Objective, (None, ""))[0]
    if objective is not None and not objective.accepts_soft_targets:
        soft = [n for p, n in zip(parts, names) if isinstance(p, Transform) and p.produces_soft_targets]
        if soft:
            raise CompositionError(f"{owners[Objective][1]} cannot take the soft targets that {soft[0]} produces; choose a loss that accepts soft targets or another augmentation")
    return Composition(
        transforms=transforms,
        objective=objective,
        terms=tuple(p for p in parts if isinstance(p, LossTerm)),
        observers=tuple(p for p in parts if isinstance(p, Observer)),
        update_rule=owners.get(UpdateRule, (None, ""))[0],
        step_owner=owners.get(StepOwner, (None, ""))[0],
        sampler=owners.get(Sampler, (None, ""))[0],
        predictor=owners.get(Predictor, (None, ""))[0],
        parts=tuple(parts),
    )


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def make_optimizer(params: Sequence[nn.Parameter], recipe: dict[str, Any]) -> torch.optim.Optimizer:
    """The recipe's optimiser: SGD with momentum, weight decay and (optionally) Nesterov."""
    return torch.optim.SGD(
        params, lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=recipe["weight_decay"], nesterov=bool(recipe["nesterov"]) and recipe["momentum"] > 0
    )


@contextmanager
def frozen_batchnorm_statistics(*models: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with the batch as usual but leave their running statistics
    (and counters) exactly as they were: for extra forward passes of one step (SAM's second pass)."""
    saved = []
    for model in models:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
                m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def default_update(step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One forward/backward pass and the optimiser's step."""
    loss = step()
    optimizer.step()
    return loss


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    recipe: dict[str, Any],
    parts: Sequence[Role] | Composition,
    normalizer: Normalizer,
    seed: int,
    device: str,
    aux: dict[str, AuxModel] | None = None,
    domains: torch.Tensor | None = None,
    on_epoch: Callable[[int, int, float], None] = lambda e, n, loss: None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    on_step: Callable[[int], None] | None = None,
    compile_model: bool = False,
    amp: bool = True,
) -> TrainLog:
    """Train `model` in place on (x uint8, y) for recipe['epochs'] epochs; return the log.

    `parts`: the run's methods (roles of harness.seams), or their Composition. `aux`: auxiliary
    models by name (peers join the optimiser). `domains`: int64 domain id per sample, if any.
    `evaluate(model)`, if given, is called after every epoch and its numbers become per-epoch
    curves (for plots only: nothing is selected by them). `on_step(iteration)` is called before
    each step (iterations counted from 0 within this call). Raises RunDiverged when the loss is
    not finite. `compile_model` runs the training forward pass through `torch.compile`;
    `amp=False` keeps CUDA training in float32 (bf16 autocast is the default on CUDA).

    The step has no host synchronisation: the loss is accumulated on the device and read once
    per epoch (the divergence check), the learning rate is a Python float.
    """
    comp = parts if isinstance(parts, Composition) else compose(parts)
    aux = dict(aux or {})
    model.to(device)
    for part in comp.parts:
        if isinstance(part, nn.Module):
            part.to(device)
    for a in aux.values():
        a.module.to(device)
    use_cuda = device.startswith("cuda")
    if use_cuda:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    domains = domains.to(device) if domains is not None else None
    normalizer = normalizer.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    n, bs, epochs = len(y), int(recipe["batch_size"]), int(recipe["epochs"])
    steps_per_epoch = max(1, math.ceil(n / bs))
    trained_modules = [model, *(a.module for a in aux.values() if a.trainable)]

    def new_optimizer() -> torch.optim.Optimizer:
        return make_optimizer([p for m in trained_modules for p in m.parameters()], recipe)

    optimizer = new_optimizer()
    # Normalise the split once when it fits comfortably (< 1 GiB as float32); else batch by batch
    # from the uint8 tensor, which is what lets a whole CIFAR-scale split stay resident.
    x_float = normalizer(x) if x.numel() * 4 < 2**30 else None
    headed = isinstance(model, HeadedModel)
    forward_model = torch.compile(model) if compile_model and not headed else model
    sinks: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []
    if comp.uses_features:
        sinks[""] = {}
        hooks.append(features_hook(model, sinks[""]))
    for name, a in aux.items():
        if a.uses_features:
            sinks[name] = {}
            hooks.append(features_hook(a.module, sinks[name]))
    update = comp.update_rule.update if comp.update_rule is not None else default_update

    def run_model(module: nn.Module, key: str, xb: torch.Tensor) -> Outputs:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda and amp):
            if isinstance(module, HeadedModel):
                logits, heads = module.forward_heads(xb)
            else:
                logits, heads = (forward_model if module is model else module)(xb), {}
        features = sinks[key].pop("features", None) if key in sinks else None
        return Outputs(logits.float(), features.float() if features is not None else None, {k: v.float() for k, v in heads.items()})

    seen: list[tuple[Batch, Outputs]] = []  # this step's forward passes: what observers see

    def forward(batch: Batch) -> Outputs:
        out = run_model(model, "", batch.x)
        seen.append((batch, out))
        for name, view in batch.views.items():  # separate passes: BatchNorm normalises each view on its own
            out.views[name] = run_model(model, "", view.x)
        for name, a in aux.items():
            if a.trainable:
                out.aux[name] = run_model(a.module, name, batch.x)
            else:
                with torch.no_grad():
                    out.aux[name] = run_model(a.module, name, batch.x)
        return out

    def loss_of(batch: Batch, out: Outputs) -> torch.Tensor:
        loss = comp.objective.objective(batch, out)
        for term in comp.terms:
            extra = term.extra_loss(batch, out)
            if extra is not None:
                loss = loss + extra
        return loss

    def default_step(batch: Batch) -> torch.Tensor:
        def step(recomputed: bool = False) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with frozen_batchnorm_statistics(*trained_modules) if recomputed else nullcontext():
                out = forward(batch)
                out.recomputed = recomputed
                loss = loss_of(batch, out)
            loss.backward()
            return loss.detach()

        return update(step, optimizer)

    tools = StepTools(model=model, optimizer=optimizer, generator=generator, forward=forward, loss=loss_of, default_step=default_step,
                      update=lambda step: update(step, optimizer))
    initial_states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in trained_modules] if comp.sampler is not None else []
    log = TrainLog()
    step_count = 0  # optimiser steps within the current phase: the schedule's clock
    iteration = 0  # steps within this call: the on_step clock
    epoch, done_epochs = 0, 0
    try:
        while epoch < epochs:
            for m in trained_modules:
                m.train()
            for a in aux.values():
                if not a.trainable:
                    a.module.eval()
            for part in comp.parts:
                part.start_epoch(epoch)
            if comp.sampler is not None:
                plan = comp.sampler.epoch_plan(epoch, generator)
                if not isinstance(plan, EpochPlan):
                    raise TypeError(f"{type(comp.sampler).__name__}.epoch_plan must return a harness.seams.EpochPlan, got {type(plan).__name__}")
                if plan.restart:
                    if log.restarted_at is not None:
                        raise RuntimeError(f"{type(comp.sampler).__name__} asked to restart training twice; a run restarts at most once")
                    log.restarted_at = epoch
                    for m, state in zip(trained_modules, initial_states):
                        m.load_state_dict(state)
                    optimizer = tools.optimizer = new_optimizer()
                    epoch, step_count = 0, 0
                    for part in comp.parts:
                        part.start_epoch(epoch)
                order = plan.order.to(device)
            else:
                order = torch.randperm(n, generator=generator, device=device)
            total = torch.zeros((), device=device)
            batches = 0
            for start in range(0, len(order), bs):
                index = order[start : start + bs]
                if len(index) < 2:  # BatchNorm cannot train on a batch of one
                    continue
                if on_step is not None:
                    on_step(iteration)
                xb = x_float[index] if x_float is not None else normalizer(x[index])
                if recipe.get("crop_flip"):
                    xb = crop_flip(xb, generator)
                batch = Batch(xb, y[index], index, domains[index] if domains is not None else None)
                for transform in comp.transforms:
                    batch = transform.transform(batch, generator)
                if use_cuda:
                    batch = replace(batch, x=batch.x.contiguous(memory_format=torch.channels_last),
                                    views={k: replace(v, x=v.x.contiguous(memory_format=torch.channels_last)) for k, v in batch.views.items()})
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step_count, steps_per_epoch, recipe)
                seen.clear()
                loss = comp.step_owner.train_step(batch, tools) if comp.step_owner is not None else default_step(batch)
                for seen_batch, out in seen:  # every forward pass of the step but extra passes (SAM's second)
                    if out.recomputed or not comp.observers:
                        continue
                    detached = Outputs(out.logits.detach(), out.features.detach() if out.features is not None else None,
                                       {k: v.detach() for k, v in out.heads.items()},
                                       {k: Outputs(v.logits.detach()) for k, v in out.aux.items()},
                                       {k: Outputs(v.logits.detach()) for k, v in out.views.items()})
                    for observer in comp.observers:
                        observer.observe(seen_batch, detached)
                total += loss.detach()
                batches += 1
                step_count += 1
                iteration += 1
            mean_loss = float(total) / max(1, batches)  # one host sync per epoch
            if not math.isfinite(mean_loss):
                raise RunDiverged(f"training loss became {mean_loss} in epoch {done_epochs + 1} of {epochs + (log.restarted_at or 0)}")
            log.train_loss.append(mean_loss)
            if evaluate is not None:
                for name, value in evaluate(model).items():
                    log.curves.setdefault(name, []).append(value)
            epoch += 1
            done_epochs += 1
            on_epoch(done_epochs, epochs + (log.restarted_at or 0), mean_loss)
    finally:
        for hook in hooks:
            hook.remove()
    return log


# ---------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------


class NormalisedBatches(Sequence[torch.Tensor]):
    """uint8 images as normalised float batches on the device, made one at a time on access."""

    def __init__(self, x: torch.Tensor, normalizer: Normalizer, device: str, batch_size: int):
        self.x, self.normalizer, self.device, self.batch_size = x, normalizer.to(device), device, batch_size
        self.channels_last = device.startswith("cuda")

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        xb = self.normalizer(self.x[i * self.batch_size : (i + 1) * self.batch_size].to(self.device))
        return xb.contiguous(memory_format=torch.channels_last) if self.channels_last else xb


def default_batch_size(device: str) -> int:
    # on a CPU, batches that fit in cache run about twice as fast as big ones
    return 1024 if device.startswith("cuda") else 256


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, normalizer: Normalizer, device: str, batch_size: int | None = None,
            predictor: Predictor | None = None) -> torch.Tensor:
    """Logits (float32, on CPU) of `model` in eval mode for uint8 images `x`; a method that owns
    prediction (`predictor`) computes them its own way."""
    model.eval()
    inputs = NormalisedBatches(x, normalizer, device, batch_size or default_batch_size(device))
    if predictor is not None:  # it runs without gradients unless it enables them (test-time fitting)
        return predictor.predict(model, inputs).detach().float().cpu()
    use_cuda = device.startswith("cuda")
    out = []
    for xb in inputs:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
            out.append(model(xb).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
