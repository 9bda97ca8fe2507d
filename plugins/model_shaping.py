"""Kind `shaper`: a method that reshapes the model before training (the `ModelShaper` role); and
its methods.

Why a kind of its own: a fixed or reparameterised classifier is a change of the model, not of
the objective, the batch or the update; it should combine with any loss (`ce+etf_classifier`,
`ldam_drw+etf_classifier`), augmentation and update rule. No built-in kind's interface is a bare
`ModelShaper`. The kind's order (30) puts its methods after the loss in an entry, and shapers run
in entry order after the augmentations', so a shaper sees the head a loss or an augmentation made
(LDAM's cosine classifier, SLA's joint head).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kind import Kind
from harness.method import Method
from harness.models import get_classifier
from harness.params import Param
from harness.seams import ModelShaper, TrainContext


class ModelShapingMethod(ModelShaper):
    """The kind's interface: `shape_model(model, ctx) -> model`, once, before the optimiser is made."""


def check(method: Any, env: Any) -> Any:
    """Shape the tiny CNN through the real assembly, train it two short epochs with cross-entropy
    and check it still gives K logits (harness.conformance.run_training_method)."""
    from harness.conformance import run_training_method

    return run_training_method(method, env)


KIND = Kind(
    name="shaper",
    summary="reshapes the model before training (a fixed classifier, reparameterised weights); combines with any loss",
    interface=ModelShapingMethod,
    order=30,
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    suite="long_tail",
)


# ---------------------------------------------------------------------------------------------
# etf_classifier: Zhu et al., NeurIPS 2021; Yang et al., NeurIPS 2022
# ---------------------------------------------------------------------------------------------


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """K class vectors (rows, [K, d]) of a simplex equiangular tight frame in R^d:
    M = sqrt(K / (K - 1)) U (I_K - 1_K 1_K^T / K), U in R^{d x K} with U^T U = I_K (a random
    partial orthogonal matrix: QR of a Gaussian matrix, signs fixed by R's diagonal). Every row has
    norm 1 and every pair of rows has inner product -1 / (K - 1). Needs d >= K."""
    if num_classes < 2:
        raise HarnessError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise HarnessError(f"a simplex ETF of {num_classes} classes needs features of at least {num_classes} dimensions; the classifier's input has {dim}")
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    u = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # [d, K], orthonormal columns
    centring = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return (math.sqrt(num_classes / (num_classes - 1)) * u @ centring).T.float()


class FixedETFClassifier(ModelShapingMethod):
    """The classifier's weight becomes a simplex ETF and is frozen (no gradient, so the optimiser
    never moves it), as in Zhu et al. (Sec. 5, "fixing the classifier as a simplex ETF") and Yang
    et al. (the ETF classifier W*): only the features learn. A bias, if the head has one, is set
    to 0 and frozen too (both papers' ETF classifiers have none). A linear head keeps logits
    <M_k, h>; a cosine head (LDAM's NormedLinear) keeps <M_k, h / |h|>, the ETF directions being
    unit vectors already. The ETF is drawn from its own generator seeded by the run's seed."""

    def __init__(self, ctx: TrainContext):
        self.seed = ctx.seed

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        head = get_classifier(model)
        weight = getattr(head, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            raise HarnessError(f"etf_classifier fixes a linear classifier's weight; {type(model).__name__}'s classifier is a {type(head).__name__}")
        num_classes, dim = weight.shape
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            weight.copy_(simplex_etf(num_classes, dim, generator).to(weight.device, weight.dtype))
        weight.requires_grad_(False)
        bias = getattr(head, "bias", None)
        if isinstance(bias, nn.Parameter):
            with torch.no_grad():
                bias.zero_()
            bias.requires_grad_(False)
        return model


ETF_CLASSIFIER = Method(
    name="etf_classifier",
    kind="shaper",
    build=FixedETFClassifier,
    summary="a fixed (non-trainable) simplex equiangular tight frame as the classifier: only the features learn",
    paper=(
        "Zhu et al., A Geometric Analysis of Neural Collapse with Unconstrained Features, NeurIPS 2021; Yang et al., Inducing "
        "Neural Collapse in Imbalanced Learning: Do We Really Need a Learnable Classifier at the End of Deep Neural Network?, NeurIPS 2022"
    ),
    url="https://arxiv.org/abs/2203.09081",
)


# ---------------------------------------------------------------------------------------------
# weight_compander: Cakaj, Mehnert & Yang, IJCNN 2023
# ---------------------------------------------------------------------------------------------
# The paper's text was not at hand offline when this was written: the function's form and the
# defaults below are a transcription to be checked against its Eq. 1 and Sec. IV (arXiv 2306.16993).


def compand(v: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The weight compander w = sign(v) ((|v| + alpha)^beta - alpha^beta), 0 < beta <= 1: odd,
    f(0) = 0, slope beta alpha^(beta - 1) at 0 (> 1 when alpha is small: weights near zero are pushed
    away from it) and |w| growing like |v|^beta (large weights are compressed). beta = 1 is the
    identity."""
    return torch.sign(v) * ((v.abs() + alpha) ** beta - alpha**beta)


def expand(w: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The inverse of `compand`: v = sign(w) ((|w| + alpha^beta)^(1/beta) - alpha)."""
    return torch.sign(w) * ((w.abs() + alpha**beta) ** (1.0 / beta) - alpha)


class Compander(nn.Module):
    """A `torch.nn.utils.parametrize` parametrisation: the layer's weight is `compand(v)` of a free
    tensor v; `right_inverse` lets the layer keep its initialisation (v starts at expand(w_init))."""

    def __init__(self, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return compand(v, self.alpha, self.beta)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return expand(w, self.alpha, self.beta)


class WeightCompander(ModelShapingMethod):
    """Every convolution and linear weight (not biases, not normalisation layers: the paper
    reparameterises the network's weights) becomes compand(v) of a free tensor v that the optimiser
    trains; weight decay, if any, acts on v. The layer's initial weight is kept (v = expand(w)),
    so the method changes the training dynamics and the reachable weights, not the starting point.
    The learned-alpha/beta extension of the paper is not implemented."""

    def __init__(self, ctx: TrainContext, alpha: float, beta: float):
        self.alpha, self.beta = alpha, beta

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(getattr(m, "weight", None), nn.Parameter)]
        if not layers:
            raise HarnessError(f"weight_compander reparameterises convolution and linear weights; {type(model).__name__} has none it can reach")
        for layer in layers:
            if not layer.weight.requires_grad:  # a frozen weight (etf_classifier) stays as it is
                continue
            parametrize.register_parametrization(layer, "weight", Compander(self.alpha, self.beta))
        return model


WEIGHT_COMPANDER = Method(
    name="weight_compander",
    kind="shaper",
    build=WeightCompander,
    summary="every conv/linear weight is w = sign(v)((|v|+alpha)^beta - alpha^beta) of a free v: large weights compressed, small ones pushed from 0",
    paper="Cakaj, Mehnert & Yang, Weight Compander: A Simple Weight Reparameterization for Regularization, IJCNN 2023",
    url="https://arxiv.org/abs/2306.16993",
    params=(
        Param("alpha", float, 0.1, "offset: the slope at 0 is beta alpha^(beta-1), so a smaller alpha pushes small weights harder from 0", low=1e-6),
        Param("beta", float, 0.5, "exponent in (0, 1]: large weights grow like |v|^beta; 1 is plain training", low=1e-3, high=1.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


@hookimpl
def harness_register_kinds(register):
    register(KIND)


@hookimpl
def harness_register_methods(register):
    register(ETF_CLASSIFIER)
    register(WEIGHT_COMPANDER)

