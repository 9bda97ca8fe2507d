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

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds.loss import Loss, LossContext
from harness.method import Method
from harness.models import get_classifier, set_classifier
from harness.params import Choice, Param, Uniform
from harness.seams import Batch, HeadedModel, Outputs, Predictor

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

    def __init__(self, ctx: LossContext, eps: float):
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
    params=(Param("eps", float, 0.1, "weight of the uniform distribution in the target", low=0.0, high=1.0, search=Uniform(0.0, 0.3)),),
)


# ---------------------------------------------------------------------------------------------
# focal: Lin et al. 2017, Eq. 4 (the alpha-free form)
# ---------------------------------------------------------------------------------------------


class FocalLoss(Loss):
    """FL = -(1 - p_t)^gamma log p_t; soft targets: -sum_k t_k (1 - p_k)^gamma log p_k. Batch mean."""

    def __init__(self, ctx: LossContext, gamma: float):
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
    params=(Param("gamma", float, 2.0, "focusing parameter (0 gives cross-entropy)", low=0.0, search=Uniform(0.0, 5.0)),),
)


# ---------------------------------------------------------------------------------------------
# class_balanced: Cui et al. 2019, softmax cross-entropy with effective-number weights
# ---------------------------------------------------------------------------------------------


class ClassBalancedLoss(Loss):
    """CB = w_y * CE(z, y) with w_c = (1 - beta) / (1 - beta^{n_c}), sum_c w_c = K; batch mean.

    Soft targets: -sum_k t_k w_k log p_k.
    """

    def __init__(self, ctx: LossContext, beta: float):
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
    params=(Param("beta", float, 0.9999, "effective-number decay: 0 = no re-weighting, 1 = inverse frequency", low=0.0, high=1.0,
          search=Choice((0.9, 0.99, 0.999, 0.9999))),),
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

    def __init__(self, ctx: LossContext, max_m: float, s: float):
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

    def __init__(self, ctx: LossContext, max_m: float, s: float, drw_fraction: float, drw_beta: float):
        super().__init__(ctx, max_m=max_m, s=s)
        self.drw_epoch = int(drw_fraction * ctx.epochs)
        self.register_buffer("uniform_weights", torch.ones(ctx.num_classes, device=ctx.device))
        self.register_buffer("drw_weights", _class_balanced_weights(_counts(ctx), drw_beta).float())

    def start_epoch(self, epoch: int) -> None:
        source = self.drw_weights if epoch >= self.drw_epoch else self.uniform_weights
        self.weights.copy_(source)


_LDAM_PARAMS = (
    Param("max_m", float, 0.5, "largest margin (the rarest class's); margins scale as n_j^(-1/4)", low=0.0, search=Uniform(0.1, 1.0)),
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

    def __init__(self, ctx: LossContext, tau: float):
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
    params=(Param("tau", float, 1.0, "scale of the log-prior adjustment (1 is Fisher-consistent for balanced error)", low=0.0, search=Uniform(0.0, 3.0)),),
)


# ---------------------------------------------------------------------------------------------
# pskd: Kim et al., ICCV 2021 (progressive self-knowledge distillation)
# ---------------------------------------------------------------------------------------------


class ProgressiveSelfKnowledgeDistillation(Loss):
    """CE against soft targets (1 - alpha_t) y + alpha_t p_i^(t-1), where p_i^(t-1) is the model's
    own softmax prediction for sample i in the previous epoch (recorded during training, as the
    authors' `all_predictions`) and alpha_t = alpha_T (t + 1) / T grows linearly over the T epochs
    (t 0-based). In the first epoch the recorded predictions start as the targets themselves, so
    the first epoch is plain CE. alpha_T = 0 is cross-entropy exactly. Rows with index -1 (appended
    by a transform) use their own targets and are not recorded; after a mixing augmentation y is the
    mixed soft target and the recorded prediction is that of the mixed image (the authors record
    whatever the training forward pass saw). Under an update rule that evaluates the objective
    twice (SAM), predictions are recorded on the first pass only.
    """

    def __init__(self, ctx: LossContext, alpha_T: float):
        super().__init__()
        if ctx.dataset_size < 1:
            raise ValueError("PS-KD keeps one prediction per training sample: LossContext.dataset_size must be >= 1")
        self.num_classes, self.epochs, self.alpha_T = ctx.num_classes, max(1, ctx.epochs), alpha_T
        self.register_buffer("history", torch.zeros(ctx.dataset_size, ctx.num_classes, device=ctx.device))
        self.epoch, self.alpha = 0, 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.alpha = max(0.0, self.alpha_T * (epoch + 1) / self.epochs)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.soft_target_loss(out.logits, batch.y, batch.index, record=not out.recomputed)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.soft_target_loss(logits, targets, index, record=True)

    def soft_target_loss(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, *, record: bool) -> torch.Tensor:
        logits = logits.float()
        t = _as_probs(targets, self.num_classes)
        valid = index >= 0
        idx = index[valid].long()
        if record and self.epoch == 0:
            self.history[idx] = t[valid]
        soft = t.clone()
        soft[valid] = (1.0 - self.alpha) * t[valid] + self.alpha * self.history[idx]
        loss = _soft_ce(logits, soft)
        if record:
            self.history[idx] = F.softmax(logits[valid].detach(), dim=1)
        return loss


PSKD = Method(
    name="pskd",
    kind="loss",
    build=ProgressiveSelfKnowledgeDistillation,
    summary="progressive self-knowledge distillation: targets mix the label with the model's own previous-epoch prediction",
    paper="Kim, Ji, Yoon & Hwang, Self-Knowledge Distillation with Progressive Refinement of Targets, ICCV 2021",
    url="https://arxiv.org/abs/2006.12000",
    params=(Param("alpha_T", float, 0.8, "final weight of the previous-epoch prediction in the target (paper: 0.8)", low=0.0, high=1.0),),
)


# ---------------------------------------------------------------------------------------------
# sade: Zhang, Hooi, Hong & Feng, NeurIPS 2022 (self-supervised aggregation of diverse experts)
# ---------------------------------------------------------------------------------------------


class ExpertHeads(HeadedModel):
    """A shared body and `num_experts` classifier heads on its features. `forward(x)` is the mean
    of the experts' logits (SADE's prediction without test-time aggregation); `forward_heads(x)`
    also gives each expert's logits as `expert0`, `expert1`, ... Heads are cosine classifiers
    scaled by `scale` when `normed` (the authors' CIFAR models), else plain linear layers."""

    def __init__(self, body: nn.Module, in_features: int, num_classes: int, num_experts: int, normed: bool, scale: float):
        super().__init__()
        self.body = body
        self.features = nn.Identity()  # the penultimate features pass through here (features hook)
        self.experts = nn.ModuleList(NormedLinear(in_features, num_classes) if normed else nn.Linear(in_features, num_classes) for _ in range(num_experts))
        self.scale = scale if normed else 1.0

    def get_classifier(self) -> nn.Module:  # the module whose input is the penultimate features
        return self.features

    def expert_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features(self.body(x))
        return [self.scale * head(f) for head in self.experts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.expert_logits(x)).mean(dim=0)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.expert_logits(x)
        return torch.stack(logits).mean(dim=0), {f"expert{i}": v for i, v in enumerate(logits)}


def inverse_prior(prior: torch.Tensor) -> torch.Tensor:
    """The prior with its values reversed in rank: the most frequent class gets the smallest prior
    value and so on (the authors' `inverse_prior`: sort, then read the sorted values backwards)."""
    values, order = torch.sort(prior, stable=True)  # ties: the class listed first ranks first
    rank = torch.argsort(order)
    return values[len(prior) - 1 - rank]


def shifted_views(x: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Each image translated by a random offset in [-pad, pad]^2 (zero padding), batched."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(b, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(b, h, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1).expand(b, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


SADE_TTA_BATCH = 128  # the batch size of the authors' CIFAR configurations


class SADE(Loss, Predictor):
    """Three skill-diverse experts on a shared body, trained with (paper Eq. 2-4; the authors'
    `DiverseExpertLoss`) L = CE(v1, y) + CE(v2 + log pi, y) + CE(v3 + log pi - tau log pi_inv, y):
    expert 1 fits the long-tailed training distribution (softmax), expert 2 the uniform one
    (balanced softmax), expert 3 an inversely long-tailed one (pi the training prior, pi_inv the
    prior with its values reversed in rank, tau = 2).

    Prediction (test-agnostic): sum_k w_k v_k with w = softmax(a) learned at test time on the
    unlabeled test inputs by maximising the cosine similarity of the aggregated predictions of two
    random views of each input (paper Sec. 4.2, the authors' `test_training`: a starts at 1/3 each,
    SGD lr 0.025, momentum 0.9, weight decay 5e-4, Nesterov, batches of 128 test images; stops early
    when a weight falls below 0.05). `tta_epochs=0` predicts with equal weights (the mean of the experts, which is also what
    `model(x)` gives). Views: random translations by up to 2 pixels (the authors use their training
    augmentation, random crop and flip on CIFAR; digits are not flipped).

    Harness scale: the experts are three heads on one shared body (the authors' experts share the
    early stages and have their own later blocks); zero-count classes get prior count 1.
    """

    def __init__(self, ctx: LossContext, tau: float, normed: bool, scale: float, tta_epochs: int, tta_lr: float):
        super().__init__()
        counts = _counts(ctx)
        prior = counts / counts.sum()
        self.register_buffer("log_prior", prior.log().float())
        self.register_buffer("log_inverse_prior", inverse_prior(prior).log().float())
        self.num_classes, self.tau, self.normed, self.scale = ctx.num_classes, tau, normed, scale
        self.tta_epochs, self.tta_lr, self.seed = tta_epochs, tta_lr, ctx.seed
        self.weights: list[float] | None = None  # the test-time aggregation weights of the last prediction

    def prepare_model(self, model: nn.Module) -> nn.Module:
        head = get_classifier(model)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"SADE needs a linear classifier head to split into experts; got {type(head).__name__}")
        set_classifier(model, nn.Identity())
        return ExpertHeads(model, head.in_features, head.out_features, 3, self.normed, self.scale)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        v1, v2, v3 = (out.heads[f"expert{i}"].float() for i in range(3))
        return self.expert_losses(v1, v2, v3, batch.y)

    def expert_losses(self, v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (_soft_ce(v1, targets) + _soft_ce(v2 + self.log_prior, targets)
                + _soft_ce(v3 + self.log_prior - self.tau * self.log_inverse_prior, targets))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise TypeError("SADE's objective needs each expert's logits; the engine calls it as objective(batch, out)")

    def predict(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(model, HeadedModel):
            raise TypeError(f"SADE predicts with the expert model it trained, not a {type(model).__name__}")
        raw = torch.zeros(3, requires_grad=True)
        with torch.no_grad():
            raw.fill_(1.0 / 3.0)
        if self.tta_epochs > 0 and len(inputs):
            # re-batched to a fixed size: the prediction batches' size depends on the device, and
            # the number of aggregation steps must not
            batches = torch.cat(list(inputs)).split(SADE_TTA_BATCH)
            optimizer = torch.optim.SGD([raw], lr=self.tta_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
            generator = torch.Generator(device=batches[0].device).manual_seed(self.seed)
            stop = False
            for _ in range(self.tta_epochs):
                for xb in batches:
                    with torch.no_grad():
                        e0 = torch.stack(list(model.forward_heads(shifted_views(xb, generator, 2))[1].values())).float()
                        e1 = torch.stack(list(model.forward_heads(shifted_views(xb, generator, 2))[1].values())).float()
                    with torch.enable_grad():  # prediction runs without gradients; the weights need them
                        w = F.softmax(raw, dim=0).to(e0.device).view(3, 1, 1)
                        p0, p1 = F.softmax((w * e0).sum(0), dim=1), F.softmax((w * e1).sum(0), dim=1)
                        loss = -F.cosine_similarity(p0, p1, dim=1, eps=1e-6).mean()
                        optimizer.zero_grad()
                        loss.backward()
                    optimizer.step()
                    if bool((F.softmax(raw.detach(), dim=0) < 0.05).any()):
                        stop = True
                        break
                if stop:
                    break
        w = F.softmax(raw.detach(), dim=0)
        self.weights = [float(v) for v in w]
        out = []
        with torch.no_grad():
            for xb in inputs:
                experts = torch.stack(list(model.forward_heads(xb)[1].values())).float()
                out.append((w.to(experts.device).view(3, 1, 1) * experts).sum(0).cpu())
        return torch.cat(out) if out else torch.empty(0)


SADE_METHOD = Method(
    name="sade",
    kind="loss",
    version="2",  # 2: test-time aggregation in batches of 128 on every device (was the prediction batch: 256 CPU, 1024 CUDA)
    build=SADE,
    summary="three skill-diverse experts (softmax, balanced, inverse) aggregated at test time by self-supervised prediction stability",
    paper="Zhang, Hooi, Hong & Feng, Self-Supervised Aggregation of Diverse Experts for Test-Agnostic Long-Tailed Recognition, NeurIPS 2022",
    url="https://arxiv.org/abs/2107.09249",
    suites=("long_tail",),  # a long-tail method: in that suite's default grid only (run it elsewhere with method=)
    params=(
        Param("tau", float, 2.0, "strength lambda of the inverse prior for the backward expert (authors: 2)", low=0.0),
        Param("normed", bool, True, "cosine-classifier experts scaled by `scale` (the authors' CIFAR models)"),
        Param("scale", float, 30.0, "scale s of the cosine classifiers (authors: 30)", low=1e-3),
        Param("tta_epochs", int, 5, "epochs of test-time aggregation over the test inputs (0: equal weights)", low=0),
        Param("tta_lr", float, 0.025, "SGD learning rate of the aggregation weights (authors' CIFAR configs: 0.025)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (CE, LABEL_SMOOTHING, FOCAL, CLASS_BALANCED, LDAM, LDAM_DRW, BALANCED_SOFTMAX, LOGIT_ADJUSTMENT, PSKD, SADE_METHOD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
