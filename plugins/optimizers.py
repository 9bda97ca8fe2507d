"""Built-in update rules (kind `optimizer`): methods that own the parameter update, one section each.

An update rule gets `step(recomputed=False) -> loss` (one forward/objective/backward pass on the
current batch at the current weights) and the recipe's base optimiser (SGD with the recipe's
momentum, weight decay and schedule), and calls `optimizer.step()` itself. It composes with any
loss and augmentation: `method=ldam_drw+mixup+sam`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.hookspecs import hookimpl
from harness.kinds.optimizer import Optimizer, OptimizerContext, trained_parameters
from harness.method import Method
from harness.params import LogUniform, Param

# ---------------------------------------------------------------------------------------------
# sam: Foret et al. 2021, Algorithm 1 (p = 2); adaptive: Kwon et al. 2021 (ASAM)
# ---------------------------------------------------------------------------------------------


class SharpnessAwareMinimization(Optimizer):
    """Two passes per step. With g = grad L(w): e = rho * g / ||g||_2 (ASAM: e = rho * T^2 g / ||T g||_2
    with T = |w| elementwise), the gradient is taken again at w + e (BatchNorm running statistics
    untouched by that pass), the weights are restored to w exactly, and the base optimiser steps
    with the second gradient. The reported loss is the first pass's, L(w). rho = 0 is the base
    optimiser's step, exactly (tests/test_training_methods.py checks it step for step)."""

    def __init__(self, ctx: OptimizerContext, rho: float, adaptive: bool):
        self.rho, self.adaptive = rho, adaptive

    def update(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        loss = step()
        params = trained_parameters(optimizer)
        with torch.no_grad():
            scaled = [(p.abs() * p.grad) if self.adaptive else p.grad for p in params]
            norm = torch.norm(torch.stack([g.norm(2) for g in scaled]), 2) if scaled else torch.zeros(())
            scale = self.rho / (norm + 1e-12)
            originals = [p.detach().clone() for p in params]
            for p in params:
                e = (p.pow(2) * p.grad if self.adaptive else p.grad) * scale
                p.add_(e)
        step(recomputed=True)  # the gradient at w + e replaces the first one
        with torch.no_grad():
            for p, original in zip(params, originals):
                p.copy_(original)
        optimizer.step()
        return loss


SAM = Method(
    name="sam",
    kind="optimizer",
    build=SharpnessAwareMinimization,
    summary="sharpness-aware minimisation: the gradient is taken at the worst-case weights within an L2 ball of radius rho",
    paper="Foret et al., Sharpness-Aware Minimization for Efficiently Improving Generalization, ICLR 2021 (adaptive: Kwon et al., ASAM, ICML 2021)",
    url="https://arxiv.org/abs/2010.01412",
    params=(
        Param("rho", float, 0.05, "radius of the neighbourhood (0.05: the paper's CIFAR default)", low=0.0, search=LogUniform(0.01, 0.5)),
        Param("adaptive", bool, False, "ASAM: scale the ball by |w| per weight (scale-invariant sharpness; ASAM uses a larger rho)"),
    ),
)


# ---------------------------------------------------------------------------------------------
# perpgrad: Prieto, Barsbey, Mediano & Birdal, ICLR 2025 (⊥Grad)
# ---------------------------------------------------------------------------------------------


class OrthogonalGradient(Optimizer):
    """⊥Grad: before the base optimiser's step the gradient loses its component along the weights,
    g_perp = g - (w.g / w.w) w, so no step scales the weights along their own direction (the
    "naive loss minimisation" direction that only inflates the logits). The paper writes the
    projection for the parameter vector theta; the authors' `OrthoGrad` applies it to every
    parameter tensor separately and rescales g_perp to the norm of g, which is the default here
    (`scope=tensor`, `rescale=true`). `scope=global` projects the concatenation of all trained
    parameters at once, with one rescaling. w.w gets 1e-30 added (the authors' guard: a zero
    tensor, a bias at initialisation, keeps its gradient). The recipe's SGD then steps with its
    momentum and weight decay; the paper pairs ⊥Grad with no weight decay (its point is to replace
    it), which `weight_decay=0` on the command line gives."""

    EPS = 1e-30

    def __init__(self, ctx: OptimizerContext, scope: str, rescale: bool):
        self.scope, self.rescale = scope, rescale

    def update(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        loss = step()
        params = trained_parameters(optimizer)
        with torch.no_grad():
            if self.scope == "tensor":
                for p in params:
                    p.grad.copy_(self.project(p.detach().flatten(), p.grad.flatten()).view_as(p.grad))
            elif params:
                flat = self.project(torch.cat([p.detach().flatten() for p in params]), torch.cat([p.grad.flatten() for p in params]))
                for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
                    p.grad.copy_(g.view_as(p.grad))
        optimizer.step()
        return loss

    def project(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        orthogonal = g - (torch.dot(w, g) / (torch.dot(w, w) + self.EPS)) * w
        if self.rescale:
            orthogonal = orthogonal * (g.norm() / (orthogonal.norm() + self.EPS))
        return orthogonal


PERPGRAD = Method(
    name="perpgrad",
    kind="optimizer",
    build=OrthogonalGradient,
    summary="⊥Grad: the gradient's component along the weights is removed (per parameter tensor, rescaled) before the SGD step",
    paper="Prieto, Barsbey, Mediano & Birdal, Grokking at the Edge of Numerical Stability, ICLR 2025 (⊥Grad; the authors' OrthoGrad)",
    url="https://arxiv.org/abs/2501.04697",
    params=(
        Param("scope", str, "tensor", "project each parameter tensor (the authors' code) or all parameters as one vector", choices=("tensor", "global")),
        Param("rescale", bool, True, "rescale the projected gradient to the original gradient's norm (the authors' code)"),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (SAM, PERPGRAD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
