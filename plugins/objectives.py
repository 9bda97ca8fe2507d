"""Classification objectives beyond softmax cross-entropy (kind `loss`), one section per method.

Conventions are those of `harness_plugins.losses`: `logits` [B, K] (computed in float32),
`targets` int64 [B] or soft float rows [B, K] summing to 1; soft targets give the expected loss
under the target distribution, `sum_k t_k loss(z, k)`, where the method has such a reading.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds.loss import Loss, LossContext
from harness.method import Method
from harness.params import Param
from harness.seams import Batch, Outputs, Predictor


def _as_probs(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as float rows [B, K]: one-hot for int targets, unchanged for soft ones."""
    if targets.dtype.is_floating_point:
        return targets.float()
    return F.one_hot(targets.long(), num_classes).float()


# ---------------------------------------------------------------------------------------------
# stablemax: Prieto, Barsbey, Mediano & Birdal, ICLR 2025
# ---------------------------------------------------------------------------------------------


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0: positive, increasing, linear above 0
    (no exp to overflow or to absorb small probabilities into 1)."""
    return torch.where(x >= 0, x + 1.0, 1.0 / (1.0 - torch.clamp(x, max=0.0)))


def log_stablemax(logits: torch.Tensor) -> torch.Tensor:
    """log StableMax(z)_k = log s(z_k) - log sum_j s(z_j), in float64 (the authors evaluate in
    float64; a float32 sum of s over large logits would lose the small terms)."""
    s = stablemax_s(logits.double())
    return (s.log() - s.sum(dim=1, keepdim=True).log()).to(logits.dtype)


class StableMaxCrossEntropy(Loss, Predictor):
    """L = -sum_k t_k log StableMax(z)_k with StableMax(z)_k = s(z_k) / sum_j s(z_j) (paper Eq. 6,
    the authors' `stablemax_cross_entropy`). Prediction returns log StableMax(z): the argmax is the
    logits' (s is increasing), and the probabilities the metrics read (softmax of what prediction
    returns) are the StableMax probabilities the model was trained to produce."""

    def __init__(self, ctx: LossContext):
        super().__init__()
        self.num_classes = ctx.num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = log_stablemax(logits.float())
        return -(_as_probs(targets, self.num_classes) * logp).sum(dim=1).mean()

    def predict(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        out = [log_stablemax(model(xb).float()).cpu() for xb in inputs]
        return torch.cat(out) if out else torch.empty(0)


STABLEMAX = Method(
    name="stablemax",
    kind="loss",
    build=StableMaxCrossEntropy,
    summary="cross-entropy on StableMax: softmax with exp replaced by s(x) = x+1 (x >= 0), 1/(1-x) (x < 0)",
    paper="Prieto, Barsbey, Mediano & Birdal, Grokking at the Edge of Numerical Stability, ICLR 2025",
    url="https://arxiv.org/abs/2501.04697",
)


# ---------------------------------------------------------------------------------------------
# spherical_zloss: de Brébisson & Vincent, ICLR 2016 workshop
# ---------------------------------------------------------------------------------------------


class SphericalZLoss(Loss):
    """Z-loss: with mu and sigma the mean and (population) standard deviation of the K outputs
    and z_c = (o_c - mu) / sigma the standardised target output, L = softplus(a (b - z_c)) / a.
    Shift and scale invariant in the outputs; a spherical loss (it depends on the outputs only
    through sum_k o_k, sum_k o_k^2 and o_c). z_c lies in [-sqrt(K-1), sqrt(K-1)]. sigma is
    computed as sqrt(var + 1e-12) so equal outputs give z = 0 rather than 0/0. Soft targets:
    the expected loss sum_k t_k L(o, k)."""

    VARIANCE_FLOOR = 1e-12

    def __init__(self, ctx: LossContext, a: float, b: float):
        super().__init__()
        self.num_classes, self.a, self.b = ctx.num_classes, a, b

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        o = logits.float()
        mu = o.mean(dim=1, keepdim=True)
        sigma = (o.var(dim=1, unbiased=False, keepdim=True) + self.VARIANCE_FLOOR).sqrt()
        z = (o - mu) / sigma
        per_class = F.softplus(self.a * (self.b - z)) / self.a
        return (_as_probs(targets, self.num_classes) * per_class).sum(dim=1).mean()


SPHERICAL_ZLOSS = Method(
    name="spherical_zloss",
    kind="loss",
    build=SphericalZLoss,
    summary="Z-loss: softplus(a (b - z_y)) / a on the standardised outputs z = (o - mean) / std (shift and scale invariant)",
    paper="de Brébisson & Vincent, The Z-loss: a shift and scale invariant classification loss belonging to the Spherical Family, ICLR 2016 workshop",
    url="https://arxiv.org/abs/1604.08859",
    params=(
        Param("a", float, 1.0, "sharpness a > 0 of the softplus (the paper tunes a and b per task; no default value was found: 1 is this harness's choice)", low=1e-3),
        Param("b", float, 3.0, "location b of the softplus (not found in the paper; 3 = sqrt(K-1), the largest z_y at K = 10, so the loss keeps pulling until z_y is near its maximum)"),
    ),
)


# ---------------------------------------------------------------------------------------------
# comp_sum: Mao, Mohri & Zhong, ICML 2023
# ---------------------------------------------------------------------------------------------


def comp_sum_per_class(logp: torch.Tensor, tau: float) -> torch.Tensor:
    """Phi^tau(u) at u = sum_{k' != k} exp(z_k' - z_k) = 1/p_k - 1, for every label k: [B, K].

    Phi^tau(u) = log(1 + u) for tau = 1 and ((1 + u)^(1 - tau) - 1) / (1 - tau) otherwise. With
    1 + u = 1/p_k this is -log p_k (tau = 1) and (1 - p_k^(tau - 1)) / (tau - 1) otherwise, written
    as -expm1((tau - 1) log p_k) / (tau - 1): accurate near tau = 1 and free of 1/p overflow
    for tau >= 1."""
    if tau == 1.0:
        return -logp
    return -torch.expm1((tau - 1.0) * logp) / (tau - 1.0)


class CompSumLoss(Loss):
    """Comp-sum loss (paper Eq. 2 with Psi(u) = exp(-u)): L = Phi^tau(sum_{y' != y} exp(h_y' - h_y)).
    tau = 0: the sum-exponential loss 1/p_y - 1; tau = 1: the logistic loss (cross-entropy);
    1 < tau < 2: generalized cross-entropy with q = tau - 1; tau = 2: 1 - p_y (MAE / 2). Soft
    targets: sum_k t_k Phi^tau at label k."""

    def __init__(self, ctx: LossContext, tau: float):
        super().__init__()
        self.num_classes, self.tau = ctx.num_classes, tau

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        return (_as_probs(targets, self.num_classes) * comp_sum_per_class(logp, self.tau)).sum(dim=1).mean()


COMP_SUM = Method(
    name="comp_sum",
    kind="loss",
    build=CompSumLoss,
    summary="comp-sum loss Phi^tau(sum_{y'!=y} e^(z_y'-z_y)): sum-exponential (tau=0), CE (tau=1), GCE (1<tau<2), MAE/2 (tau=2)",
    paper="Mao, Mohri & Zhong, Cross-Entropy Loss Functions: Theoretical Analysis and Applications, ICML 2023",
    url="https://arxiv.org/abs/2304.07288",
    params=(
        Param("tau", float, 0.5, "tau >= 0 of Phi^tau (the paper analyses the whole family and names no default; 0.5, between the "
                                 "sum-exponential and the logistic loss, is this harness's choice: tau=1 would repeat ce)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# ensloss: Dai, EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification
# ---------------------------------------------------------------------------------------------


class EnsLossOneVsAll(Loss):
    """EnsLoss in its one-vs-all multiclass form. The paper is binary: with margins z_i = y_i f(x_i)
    (y in {-1, +1}), every step draws a random calibrated convex loss through its derivative (the
    authors' `ensLoss`): B draws g = -BC^-1(N(0, 1); lam), BC^-1 the inverse Box-Cox transform
    (lam = 0: g = -exp(N(0, 1))), sorted and assigned by rank, the most negative to the smallest
    margin (a nondecreasing derivative: a convex loss), clipped at -1 (|g| <= 1), divided by z for
    z > 1 (the superlinear tail), minus 1e-6 (so g < 0: calibrated); the step minimises
    mean_i g_i z_i with g constant, whose gradient is g_i dz_i.

    One-vs-all: class k's binary problem has margin z_ik = (2 [k = y_i] - 1) f_k(x_i); the K
    problems of the batch share one random loss (B K sorted draws for the B K margins), and the
    objective is mean_i sum_k g_ik z_ik (Zhang's one-vs-all risk sum_k phi(y_k f_k)). The value
    is that linear surrogate (it can be negative), not a loss value. An extra pass of the same
    step (SAM's) reuses the step's draws. Hard labels only."""

    accepts_soft_targets = False
    CLIP = -1.0
    OFFSET = 1e-6

    def __init__(self, ctx: LossContext, box_cox_lambda: float):
        super().__init__()
        self.num_classes, self.lam = ctx.num_classes, box_cox_lambda
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.draws: torch.Tensor | None = None  # this step's sorted derivatives

    def inverse_box_cox(self, z: torch.Tensor) -> torch.Tensor:
        if self.lam == 0.0:
            return torch.exp(z)
        return torch.clamp(1.0 + self.lam * z, min=0.0) ** (1.0 / self.lam)

    def draw(self, n: int) -> torch.Tensor:
        """n sorted random loss-derivatives (ascending: the most negative first), clipped at -1."""
        g = -self.inverse_box_cox(torch.randn(n, generator=self.generator, dtype=torch.float64))
        return torch.sort(g).values.clamp_min(self.CLIP)

    def derivatives(self, margins: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The draws assigned to the margins by rank (smallest margin: most negative draw), with
        the superlinear tail and the offset; same shape as `margins`, constant."""
        flat = margins.detach().flatten()
        g = torch.empty_like(flat)
        g[torch.argsort(flat, stable=True)] = draws.to(flat.device, flat.dtype)
        g = torch.where(flat > 1.0, g / flat.clamp_min(1.0), g)
        return (g - self.OFFSET).view_as(margins)

    def margins(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sign = 2.0 * F.one_hot(targets.long(), self.num_classes).to(logits.dtype) - 1.0
        return sign * logits

    def surrogate(self, logits: torch.Tensor, targets: torch.Tensor, *, new_draws: bool) -> torch.Tensor:
        if targets.dtype.is_floating_point:
            raise ValueError("ensloss takes class indices; soft targets have no one-vs-all margin")
        z = self.margins(logits.float(), targets)
        if new_draws or self.draws is None or self.draws.numel() != z.numel():
            self.draws = self.draw(z.numel())
        g = self.derivatives(z, self.draws)
        return (g * z).sum(dim=1).mean()

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.surrogate(out.logits, batch.y, new_draws=not out.recomputed)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.surrogate(logits, targets, new_draws=True)


ENSLOSS = Method(
    name="ensloss",
    kind="loss",
    build=EnsLossOneVsAll,
    summary="EnsLoss, one-vs-all form: every step a random convex calibrated loss, drawn as its derivative (doubly stochastic gradients)",
    paper="Dai, EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification, ICML 2025 (binary; one-vs-all here)",
    url="https://arxiv.org/abs/2409.00908",
    params=(
        Param("box_cox_lambda", float, 0.0, "lam of the inverse Box-Cox transform of N(0, 1) draws (the authors' code: 0, log-normal derivatives)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (STABLEMAX, SPHERICAL_ZLOSS, COMP_SUM, ENSLOSS)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)

