"""Built-in training losses for long-tailed classification, one section per method.

Every loss takes `logits` [B, K] and `targets` that are either int64 class indices [B] or soft
float rows [B, K] summing to 1 (after a mixing augmentation). Soft targets are handled as the
*expected* loss under the target distribution, `sum_k t_k * loss(logits, k)`; with a one-hot row
this is exactly the hard-target loss, and for mixup it equals the usual
`lam * loss(y_a) + (1 - lam) * loss(y_b)`.

Losses are computed in float32 whatever the logits' dtype (mixed precision), and every
per-class table (priors, margins, weights) is a registered buffer so `.to(device)` moves it.

Zero-count classes: a long-tail split may leave a class without training samples. Wherever a
count enters a log, a power or a division we clamp it to >= 1 first, so no table holds inf or
NaN and neither do the loss or its gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds import Loss, LossContext, Method
from harness.models import get_classifier, set_classifier
from harness.params import Param

# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def _counts(ctx: LossContext) -> torch.Tensor:
    """Training samples per class as float64 on ctx.device, clamped to >= 1 (zero-count classes)."""
    if len(ctx.class_counts) != ctx.num_classes:
        raise ValueError(f"class_counts has {len(ctx.class_counts)} entries for {ctx.num_classes} classes")
    counts = torch.tensor(ctx.class_counts, dtype=torch.float64, device=ctx.device)
    return counts.clamp_min(1.0)  # zero-count classes: keep log/pow/division finite


def _class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. 2019, Eq. 3/4: w_c = (1 - beta) / (1 - beta^{n_c}) = 1 / E_{n_c}, scaled to sum K.

    beta = 0 gives all-ones (no re-weighting); beta = 1 is the limit E_n = n (inverse frequency).
    `counts` must already be clamped to >= 1, else 1 - beta^0 = 0 divides by zero.
    """
    if beta >= 1.0:
        effective = counts
    else:
        effective = (1.0 - torch.pow(torch.as_tensor(beta, dtype=counts.dtype), counts)) / (1.0 - beta)
    weights = 1.0 / effective
    return weights / weights.sum() * counts.numel()


def _as_probs(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as float rows [B, K]: one-hot for int targets, unchanged for soft ones."""
    if targets.dtype.is_floating_point:
        return targets.float()
    return F.one_hot(targets.long(), num_classes).float()


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for int or soft targets: mean_i -sum_k t_ik log softmax(z_i)_k."""
    if targets.dtype.is_floating_point:
        return -(targets.float() * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, targets)


# ---------------------------------------------------------------------------------------------
# ce: plain softmax cross-entropy
# ---------------------------------------------------------------------------------------------


class CrossEntropy(Loss):
    """L = -sum_k t_k log softmax(z)_k, averaged over the batch."""

    def __init__(self, ctx: LossContext):
        super().__init__()
        self.num_classes = ctx.num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return _soft_ce(logits.float(), targets)


CE = Method(
    name="ce",
    kind="loss",
    build=CrossEntropy,
    summary="softmax cross-entropy: the unweighted baseline",
    paper="Goodfellow, Bengio & Courville, Deep Learning, MIT Press 2016, Sec. 6.2.2.3",
    url="https://www.deeplearningbook.org/contents/mlp.html",
)


# ---------------------------------------------------------------------------------------------
# label_smoothing: Szegedy et al. 2016, Sec. 7
# ---------------------------------------------------------------------------------------------


class LabelSmoothing(Loss):
    """CE against q' = (1 - eps) q + eps / K, with q the (one-hot or soft) target."""

    def __init__(self, ctx: LossContext, eps: float = 0.1):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        q = _as_probs(targets, self.num_classes)
        smoothed = (1.0 - self.eps) * q + self.eps / self.num_classes
        return _soft_ce(logits.float(), smoothed)


LABEL_SMOOTHING = Method(
    name="label_smoothing",
    kind="loss",
    build=LabelSmoothing,
    summary="cross-entropy against targets mixed with the uniform distribution (label-smoothing regularisation)",
    paper="Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016",
    url="https://arxiv.org/abs/1512.00567",
    params=(Param("eps", float, 0.1, "weight of the uniform distribution in the target", low=0.0, high=1.0),),
)


# ---------------------------------------------------------------------------------------------
# focal: Lin et al. 2017, Eq. 4 (the alpha-free form)
# ---------------------------------------------------------------------------------------------


class FocalLoss(Loss):
    """FL = -(1 - p_t)^gamma log p_t; soft targets: -sum_k t_k (1 - p_k)^gamma log p_k. Batch mean."""

    def __init__(self, ctx: LossContext, gamma: float = 2.0):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        # 1 - p computed as -expm1(log p) for accuracy; the floor keeps the gradient of
        # (1 - p)^gamma finite when p rounds to 1 and gamma < 1 (it changes no representable loss)
        one_minus_p = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny)
        per_class = -torch.pow(one_minus_p, self.gamma) * logp
        t = _as_probs(targets, self.num_classes)
        return (t * per_class).sum(dim=1).mean()


FOCAL = Method(
    name="focal",
    kind="loss",
    build=FocalLoss,
    summary="cross-entropy scaled by (1 - p_t)^gamma to down-weight well-classified examples",
    paper="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
    url="https://arxiv.org/abs/1708.02002",
    params=(Param("gamma", float, 2.0, "focusing parameter (0 gives cross-entropy)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# class_balanced: Cui et al. 2019, softmax cross-entropy with effective-number weights
# ---------------------------------------------------------------------------------------------


class ClassBalancedLoss(Loss):
    """CB = w_y * CE(z, y) with w_c = (1 - beta) / (1 - beta^{n_c}), sum_c w_c = K; batch mean.

    Soft targets: -sum_k t_k w_k log p_k.
    """

    def __init__(self, ctx: LossContext, beta: float = 0.9999):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.register_buffer("weights", _class_balanced_weights(_counts(ctx), beta).float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        t = _as_probs(targets, self.num_classes)
        return -(t * self.weights * logp).sum(dim=1).mean()


CLASS_BALANCED = Method(
    name="class_balanced",
    kind="loss",
    build=ClassBalancedLoss,
    summary="softmax cross-entropy re-weighted per class by the inverse effective number of samples",
    paper="Cui et al., Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019",
    url="https://arxiv.org/abs/1901.05555",
    params=(Param("beta", float, 0.9999, "effective-number decay: 0 = no re-weighting, 1 = inverse frequency", low=0.0, high=1.0),),
)


# ---------------------------------------------------------------------------------------------
# ldam and ldam_drw: Cao et al. 2019
# ---------------------------------------------------------------------------------------------


class NormedLinear(nn.Module):
    """Cosine classifier of the LDAM-DRW recipe: out_j = <x / |x|, w_j / |w_j|>, in [-1, 1]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        with torch.no_grad():  # the reference init: uniform(-1, 1), each class vector rescaled to unit norm
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class LDAMLoss(Loss):
    """Label-distribution-aware margin loss (Cao et al. 2019, Eq. 10-11).

    Delta_j = C / n_j^{1/4} with C such that max_j Delta_j = max_m. The margin is subtracted
    from the true-class logit only, then cross-entropy on s * logits:
        L = -log( e^{s(z_y - Delta_y)} / (e^{s(z_y - Delta_y)} + sum_{j != y} e^{s z_j}) ).
    The logits are meant to be cosine similarities, so `prepare_model` swaps the model's head for
    a `NormedLinear` (the reference code's `use_norm=True`); with a plain head s = 30 diverges.

    `weights` (all ones here) are the per-class weights of the reference code's
    `F.cross_entropy(..., weight=w)`: a weighted mean, sum_i w_{y_i} L_i / sum_i w_{y_i}.
    """

    def __init__(self, ctx: LossContext, max_m: float = 0.5, s: float = 30.0):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.s = s
        counts = _counts(ctx)  # clamped: a zero-count class gets the largest margin, not inf
        margins = counts.pow(-0.25)
        margins = margins * (max_m / margins.max())
        self.register_buffer("margins", margins.float())
        self.register_buffer("weights", torch.ones(ctx.num_classes, device=ctx.device))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        head = get_classifier(model)
        if isinstance(head, NormedLinear):
            return model
        if not isinstance(head, nn.Linear):
            raise TypeError(f"LDAM needs a linear classifier head to normalise; got {type(head).__name__}")
        normed = NormedLinear(head.in_features, head.out_features)
        set_classifier(model, normed.to(device=head.weight.device, dtype=head.weight.dtype))
        return model

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        z = self.s * logits.float()
        if not targets.dtype.is_floating_point:
            y = targets.long()
            z = z - self.s * self.margins[y].unsqueeze(1) * F.one_hot(y, self.num_classes)
            return F.cross_entropy(z, y, weight=self.weights)
        # soft targets: expected LDAM loss, sum_k t_k L(z, k), where class k's term subtracts only
        # Delta_k from logit k. log p^(k)_k = a_k - logaddexp(LSE_{j != k} z_j, a_k), a_k = z_k - s Delta_k.
        t = targets.float()
        a = z - self.s * self.margins
        log_p = a - torch.logaddexp(_logsumexp_leave_one_out(z), a)
        w = t * self.weights
        return -(w * log_p).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


def _logsumexp_leave_one_out(z: torch.Tensor) -> torch.Tensor:
    """out[i, k] = log sum_{j != k} exp(z[i, j]), stably (and with finite gradients).

    Shift by the row max m at column a: for k != a the remaining sum keeps the term e^0 = 1,
    so S - e^{z_k - m} >= 1 with no catastrophic cancellation; column a is done by masking.
    """
    m, argmax = z.max(dim=1, keepdim=True)
    is_max = torch.zeros_like(z, dtype=torch.bool).scatter_(1, argmax, True)
    e = torch.exp(z - m)
    rest = e.sum(dim=1, keepdim=True) - e
    others = m + torch.log(torch.where(is_max, torch.ones_like(rest), rest))  # safe value at argmax
    at_max = torch.logsumexp(z.masked_fill(is_max, float("-inf")), dim=1, keepdim=True)
    return torch.where(is_max, at_max, others)


class LDAMDRWLoss(LDAMLoss):
    """LDAM with Deferred Re-Weighting (Cao et al. 2019, Alg. 1).

    Until epoch `drw_epoch = int(drw_fraction * epochs)` the class weights are uniform; from then
    on they are the class-balanced weights of Cui et al. with beta = drw_beta (sum K). The paper
    trains 200 epochs and re-weights from epoch 160 (0-based, as `start_epoch` counts).
    """

    def __init__(self, ctx: LossContext, max_m: float = 0.5, s: float = 30.0, drw_fraction: float = 0.8, drw_beta: float = 0.9999):
        super().__init__(ctx, max_m=max_m, s=s)
        self.drw_epoch = int(drw_fraction * ctx.epochs)
        self.register_buffer("uniform_weights", torch.ones(ctx.num_classes, device=ctx.device))
        self.register_buffer("drw_weights", _class_balanced_weights(_counts(ctx), drw_beta).float())

    def start_epoch(self, epoch: int) -> None:
        source = self.drw_weights if epoch >= self.drw_epoch else self.uniform_weights
        self.weights.copy_(source)


_LDAM_PARAMS = (
    Param("max_m", float, 0.5, "largest margin (the rarest class's); margins scale as n_j^(-1/4)", low=0.0),
    Param("s", float, 30.0, "logit scale applied to the cosine logits before the softmax", low=1e-6),
)

LDAM = Method(
    name="ldam",
    kind="loss",
    build=LDAMLoss,
    summary="label-distribution-aware margins (n_j^-1/4) on a cosine classifier, scaled softmax cross-entropy",
    paper="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, NeurIPS 2019",
    url="https://arxiv.org/abs/1906.07413",
    params=_LDAM_PARAMS,
)

LDAM_DRW = Method(
    name="ldam_drw",
    kind="loss",
    build=LDAMDRWLoss,
    summary="LDAM plus deferred re-weighting: class-balanced weights switched on late in training",
    paper="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, NeurIPS 2019",
    url="https://arxiv.org/abs/1906.07413",
    params=(
        *_LDAM_PARAMS,
        Param("drw_fraction", float, 0.8, "re-weighting starts at epoch int(drw_fraction * epochs) (paper: 160/200)", low=0.0, high=1.0),
        Param("drw_beta", float, 0.9999, "effective-number beta of the deferred class-balanced weights", low=0.0, high=1.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# balanced_softmax: Ren et al. 2020, Eq. 4
# ---------------------------------------------------------------------------------------------


class BalancedSoftmax(Loss):
    """CE on z_j + log n_j: the softmax re-weighted by the training label distribution."""

    def __init__(self, ctx: LossContext):
        super().__init__()
        self.register_buffer("log_counts", _counts(ctx).log().float())  # counts clamped >= 1

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return _soft_ce(logits.float() + self.log_counts, targets)


BALANCED_SOFTMAX = Method(
    name="balanced_softmax",
    kind="loss",
    build=BalancedSoftmax,
    summary="softmax cross-entropy on logits shifted by log class counts (label-shift-corrected softmax)",
    paper="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, NeurIPS 2020",
    url="https://arxiv.org/abs/2007.10740",
)


# ---------------------------------------------------------------------------------------------
# logit_adjustment: Menon et al. 2021, Eq. 10 (the logit-adjusted loss)
# ---------------------------------------------------------------------------------------------


class LogitAdjustedLoss(Loss):
    """CE on z_j + tau * log pi_j, with pi the training class priors (counts clamped >= 1, renormalised)."""

    def __init__(self, ctx: LossContext, tau: float = 1.0):
        super().__init__()
        counts = _counts(ctx)
        self.register_buffer("adjustment", (tau * (counts / counts.sum()).log()).float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return _soft_ce(logits.float() + self.adjustment, targets)


LOGIT_ADJUSTMENT = Method(
    name="logit_adjustment",
    kind="loss",
    build=LogitAdjustedLoss,
    summary="logit-adjusted softmax cross-entropy: logits plus tau * log class prior during training",
    paper="Menon et al., Long-tail learning via logit adjustment, ICLR 2021",
    url="https://arxiv.org/abs/2007.07314",
    params=(Param("tau", float, 1.0, "scale of the log-prior adjustment (1 is Fisher-consistent for balanced error)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (CE, LABEL_SMOOTHING, FOCAL, CLASS_BALANCED, LDAM, LDAM_DRW, BALANCED_SOFTMAX, LOGIT_ADJUSTMENT)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
