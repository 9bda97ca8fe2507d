"""Kind `augmentation`: a batch transform on the training device (the `Transform` role).

`build(ctx: AugmentContext, **hp)` returns an `Augmentation`; the engine calls it on every
training batch, after normalisation and before the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold
from harness.seams import Batch, LossTerm, ModelShaper, Outputs, TrainContext, Transform


@dataclass(frozen=True)
class AugmentContext:
    num_classes: int
    epochs: int
    device: str = "cpu"

    @classmethod
    def of(cls, ctx: TrainContext) -> AugmentContext:
        return cls(ctx.num_classes, ctx.epochs, ctx.device)


class Augmentation(Transform, LossTerm, ModelShaper):
    """A batch transform on the training device.

    `__call__(x, y, generator)` takes float images `x` [B, C, H, W] (normalised) and targets `y`
    (int64 [B] or soft float [B, num_classes]) and returns the pair to train on (the batch size
    may change, e.g. when a method appends augmented copies; appended rows get index -1). Draw
    all randomness from `generator` so runs are reproducible. Never write into `x` or `y`.

    Optional seams, each with a no-op default:
    - `loss_term(logits, targets)`: an extra loss added to the training loss for the batch this
      augmentation just produced (mixup-family regularisers). For more than the logits (the raw
      rows' outputs, features), override `extra_loss(batch, out)` (harness.seams.LossTerm).
    - `prepare_model(model, num_classes)`: reshape the model before training; the returned model
      must give `num_classes` logits in eval mode.
    - `label_multiplier`: the training targets range over `num_classes * label_multiplier`
      joint labels; the loss is then built for that many classes.
    - `produces_soft_targets`: False for a transform that keeps int labels (then a loss that
      takes no soft targets may be combined with it).
    """

    label_multiplier: int = 1
    produces_soft_targets: bool = True

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based); schedules live here."""

    def loss_term(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        return None

    def prepare_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        return model

    # -- the roles (harness.seams) ----------------------------------------------------------
    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The role's call: `__call__` on the batch's images and targets. A transform that makes
        views (inputs for separate forward passes) overrides this instead of `__call__`."""
        x, y = self(batch.x, batch.y, generator)
        index, domain = batch.index, batch.domain
        if len(y) != len(index):  # appended rows: per-sample state is undefined for them
            extra = len(y) - len(index)
            index = torch.cat([index, index.new_full((extra,), -1)])
            if domain is not None:
                domain = torch.cat([domain, domain.new_full((extra,), -1)])
        return replace(batch, x=x, y=y, index=index, domain=domain)

    def extra_loss(self, batch: Batch, out: Outputs) -> torch.Tensor | None:
        return self.loss_term(out.logits, batch.y)

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return self.prepare_model(model, ctx.num_classes)


# ---------------------------------------------------------------------------------------------
# conformance
# ---------------------------------------------------------------------------------------------


def check(method: Any, env: Any) -> Any:
    """Transform one batch (shapes, label range, soft rows summing to 1, inputs untouched), then
    train one epoch through the real assembly and engine."""
    from harness.conformance import finite, normalizer_of, require, run_training_method

    data, seed = env.data, env.seed
    k = data.num_classes
    aug = method.create(AugmentContext(k, 1, "cpu"))
    require(isinstance(aug, Augmentation), f"build returned a {type(aug).__name__}; an augmentation must return a harness.kinds.augmentation.Augmentation")
    m = int(aug.label_multiplier)
    require(m >= 1, f"label_multiplier must be >= 1, got {m}")
    normalizer = normalizer_of(data)
    x, y = normalizer(data.train_x[:32]), data.train_y[:32]
    x_before, y_before = x.clone(), y.clone()
    aug.start_epoch(0)
    out = aug.transform(Batch(x, y, torch.arange(32)), torch.Generator().manual_seed(seed))
    require(isinstance(out, Batch), f"transform must return a harness.seams.Batch, got {type(out).__name__}")
    for name, b in [("the batch", out), *((f"view {v!r}", view) for v, view in out.views.items())]:
        xa, ya = b.x, b.y
        require(xa.is_floating_point() and xa.dim() == 4 and tuple(xa.shape[1:]) == tuple(x.shape[1:]), f"{name}: images must stay float [B, {', '.join(map(str, x.shape[1:]))}], got {xa.dtype} {tuple(xa.shape)}")
        require(len(ya) == len(xa) == len(b.index), f"{name}: {len(xa)} images, {len(ya)} targets and {len(b.index)} indices")
        require(finite(xa) and finite(ya), f"{name}: non-finite images or targets")
        if ya.is_floating_point():
            require(b is not out or aug.produces_soft_targets, "produces_soft_targets is False but the batch's targets came back soft")
            require(ya.dim() == 2 and ya.shape[1] == k * m, f"{name}: soft targets must be [B, {k * m}], got {tuple(ya.shape)}")
            require(bool(torch.allclose(ya.sum(dim=1), torch.ones(len(ya)), atol=1e-4)), f"{name}: soft target rows must sum to 1")
        else:
            require(ya.dtype == torch.int64 and ya.dim() == 1, f"{name}: hard targets must be int64 [B], got {ya.dtype} {tuple(ya.shape)}")
            require(bool(((ya >= 0) & (ya < k * m)).all()), f"{name}: targets must lie in [0, {k * m})")
    require(torch.equal(x, x_before) and torch.equal(y, y_before), "the transform modified its input tensors in place")
    xa, ya = out.x, out.y
    trained = run_training_method(method, env, epochs=1)
    return {"x": xa, "y": ya, **trained}


# ---------------------------------------------------------------------------------------------
# the new-plugin template
# ---------------------------------------------------------------------------------------------

METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch

from harness import Method, Param, hookimpl
from harness.kinds.augmentation import Augmentation, AugmentContext


class Cutout(Augmentation):
    """Zero one square per image (0 is the training mean after normalisation), batched.

    The square's side is `fraction` of the image side; its centre is uniform over the image, so
    it is clipped at the borders (DeVries & Taylor's choice).
    """

    produces_soft_targets = False  # labels pass through unchanged

    def __init__(self, ctx: AugmentContext, fraction: float, prob: float):  # defaults live on the Params
        self.fraction = fraction
        self.prob = prob

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        size = max(1, round(self.fraction * min(h, w)))
        # every random number comes from `generator`, on x's device: runs stay reproducible
        cy = torch.randint(0, h, (b, 1, 1), generator=generator, device=x.device) - size // 2
        cx = torch.randint(0, w, (b, 1, 1), generator=generator, device=x.device) - size // 2
        apply = (torch.rand(b, 1, 1, generator=generator, device=x.device) < self.prob)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        square = (rows >= cy) & (rows < cy + size) & (cols >= cx) & (cols < cx + size) & apply
        return x.masked_fill(square.unsqueeze(1), 0.0), y  # a new tensor: never write into x


$CONST = Method(
    name="$method",
    kind="augmentation",
    build=Cutout,
    summary="cutout: zero one random square per image, batched on the device",
    paper="DeVries & Taylor, Improved Regularization of Convolutional Neural Networks with Cutout, arXiv 2017",
    url="https://arxiv.org/abs/1708.04552",
    params=(
        Param("fraction", float, 0.5, "side of the square as a fraction of the image side", low=0.0, high=1.0),
        Param("prob", float, 1.0, "probability that an image gets a square", low=0.0, high=1.0),
    ),
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

from harness.kinds.augmentation import AugmentContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a batch and a training epoch on real data, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_one_clipped_square_per_image_by_hand():
    aug = $CONST.create(AugmentContext(num_classes=10, epochs=1), fraction=0.5, prob=1.0)
    x, y = torch.ones(64, 1, 8, 8), torch.arange(64) % 10
    out, targets = aug(x, y, torch.Generator().manual_seed(0))
    zeros = (out == 0).flatten(1).sum(dim=1)
    # a 4x4 square, clipped at the borders: between 2x2 (centre in a corner) and 4x4 pixels
    assert bool(((zeros >= 4) & (zeros <= 16)).all()) and bool((zeros == 16).any())
    assert torch.equal(targets, y) and bool((x == 1).all())  # labels kept, input untouched
'''


KIND = Kind(
    name="augmentation",
    summary="a batch transform on the training device (may mix labels into soft targets)",
    interface=Augmentation,
    order=20,
    trains=True,
    context=AugmentContext.of,
    check=check,
    scaffold=KindScaffold("a batched cutout augmentation", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="long_tail",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
