"""Kind `loss_term`: a term added to the entry's objective, whatever loss that is; and its methods.

Why a kind of its own: an auxiliary term such as PaLM's z-loss is meant to be combined with any
loss (`ce+palm_zloss`, `focal+palm_zloss`) and any augmentation and update rule. As a `loss` it
would replace the objective; as an `augmentation` it would take the entry's one augmentation
slot for an identity transform. A kind whose interface is the `LossTerm` role composes with all
three, and an entry without a loss trains with the suite's baseline loss (`palm_zloss` alone
runs as `ce+palm_zloss`).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.hookspecs import hookimpl
from harness.kind import Kind
from harness.method import Method
from harness.params import Param
from harness.seams import Batch, LossTerm, Outputs, TrainContext


class AuxiliaryTerm(LossTerm):
    """The kind's interface: `extra_loss(batch, out) -> scalar or None`, added to the objective."""


def check(method: Any, env: Any) -> Any:
    """Two short epochs of the tiny CNN through the real assembly and engine, with cross-entropy
    as the objective and the method's term added."""
    from harness.conformance import run_training_method

    return run_training_method(method, env)


KIND = Kind(
    name="loss_term",
    summary="a term added to the entry's training objective (combines with any loss, augmentation and update rule)",
    interface=AuxiliaryTerm,
    order=35,  # after loss (10), augmentation (20) and optimizer (25): `ce+mixup+sam+palm_zloss`
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    suite="long_tail",
)


# ---------------------------------------------------------------------------------------------
# palm_zloss: Chowdhery et al. 2022 (PaLM), Sec. 5; Wortsman et al. 2023
# ---------------------------------------------------------------------------------------------


class PaLMZLoss(AuxiliaryTerm):
    """coef * mean_i (log Z_i)^2 with log Z_i = logsumexp_k z_ik, the log of the softmax
    normaliser: it pulls log Z towards 0 (PaLM: "encourage the softmax normalizer log(Z) to be
    close to 0, which we found increases the stability of training"; coef = 1e-4). It changes no
    prediction (softmax is shift invariant) and bounds how far the logits drift as a whole.

    What to expect: Wortsman et al. (2023) study it as a stabiliser of the output logits. Its
    benefit shows as lower learning-rate sensitivity (training stays stable at learning rates where
    it otherwise diverges), not as higher accuracy at a well-tuned learning rate; read a board at
    one learning rate with that in mind. On views and auxiliary models' outputs it adds nothing:
    the term reads the trained model's logits of the batch's rows."""

    def __init__(self, ctx: TrainContext, coef: float):
        self.coef = coef

    def extra_loss(self, batch: Batch, out: Outputs) -> torch.Tensor:
        log_z = torch.logsumexp(out.logits.float(), dim=1)
        return self.coef * log_z.pow(2).mean()


PALM_ZLOSS = Method(
    name="palm_zloss",
    kind="loss_term",
    build=PaLMZLoss,
    summary="auxiliary z-loss coef * (log Z)^2 on the softmax normaliser: a stabiliser whose benefit is lower learning-rate sensitivity",
    paper=(
        "Chowdhery et al., PaLM: Scaling Language Modeling with Pathways, JMLR 2023, Sec. 5 (coef 1e-4); as a stabiliser: "
        "Wortsman et al., Small-scale proxies for large-scale Transformer training instabilities, ICLR 2024"
    ),
    url="https://arxiv.org/abs/2204.02311",
    params=(Param("coef", float, 1e-4, "weight of (log Z)^2 (PaLM: 1e-4)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


@hookimpl
def harness_register_kinds(register):
    register(KIND)


@hookimpl
def harness_register_methods(register):
    register(PALM_ZLOSS)
