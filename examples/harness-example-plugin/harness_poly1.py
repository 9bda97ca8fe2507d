"""Poly-1 loss (Leng et al., ICLR 2022) as a harness plugin.

PolyLoss expands cross-entropy in the polynomial basis (1 - p_t)^j: CE = sum_j (1 - p_t)^j / j.
Poly-1 perturbs only the first coefficient: L = CE + epsilon * (1 - p_t) (Eq. 3 of the paper).
epsilon = 0 is cross-entropy; the paper's ImageNet setting is epsilon = 2, and epsilon = -1
removes the first polynomial term.
"""

import torch
from torch.nn import functional as F

from harness import Method, Param, hookimpl
from harness.kinds.loss import Loss, LossContext


class Poly1(Loss):
    """L = CE + epsilon * (1 - p_t). Soft targets t: sum_k t_k * (CE_k + epsilon * (1 - p_k))."""

    def __init__(self, ctx: LossContext, epsilon: float):  # the default is declared once, on the Param
        super().__init__()
        self.num_classes = ctx.num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        if targets.dtype.is_floating_point:  # soft targets [B, K], rows sum to 1
            t = targets.float()
        else:  # class indices [B]
            t = F.one_hot(targets, self.num_classes).float()
        ce = -(t * logp).sum(dim=1)
        p_t = (t * logp.exp()).sum(dim=1)
        return (ce + self.epsilon * (1.0 - p_t)).mean()


POLY1 = Method(
    name="poly1",
    kind="loss",
    build=Poly1,
    summary="cross-entropy plus epsilon * (1 - p_t): the first polynomial term re-weighted",
    paper="Leng et al., PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions, ICLR 2022",
    url="https://arxiv.org/abs/2204.12511",
    params=(Param("epsilon", float, 1.0, "weight of the (1 - p_t) term", low=-1.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register(POLY1)
