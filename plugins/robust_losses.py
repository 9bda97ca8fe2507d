"""Built-in losses that are robust to label noise, one section per method.

Conventions are those of `harness_plugins.losses`: `logits` [B, K], `targets` int64 [B] or soft
float rows [B, K] summing to 1. Soft targets are handled as the *expected* loss under the target
distribution, `sum_k t_k * loss(logits, k)` (exact for one-hot rows, and mixup's
`lam * loss(y_a) + (1 - lam) * loss(y_b)`), except where the paper's formula takes a target
distribution itself (bootstrapping); a loss with per-(sample, label) state that has no such
reading refuses soft targets (`accepts_soft_targets = False`). Everything is computed in float32.

`p = softmax(z)` throughout; log-probabilities come from `log_softmax`, and powers of p are taken
as `exp(q * log p)`, so no loss or gradient becomes NaN when a probability underflows to 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds.loss import Loss, LossContext
from harness.method import Method
from harness.models import get_classifier, set_classifier
from harness.params import LogUniform, Param, Uniform
from harness.seams import AuxiliaryModels, Batch, Observer, Outputs, Peer, Predictor

# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def _as_probs(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as float rows [B, K]: one-hot for int targets, unchanged for soft ones."""
    if targets.dtype.is_floating_point:
        return targets.float()
    return F.one_hot(targets.long(), num_classes).float()


def _soft_ce_rows(logp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy -sum_k t_k log p_k, [B]."""
    return -(t * logp).sum(dim=1)


# ---------------------------------------------------------------------------------------------
# mae: Ghosh, Kumar & Sastry, AAAI 2017
# ---------------------------------------------------------------------------------------------


class MAELoss(Loss):
    """L = ||e_y - p||_1 = 2 (1 - p_y); soft targets: 2 (1 - <t, p>). Batch mean.

    Symmetric (sum_k L(z, k) = 2K - 2 is constant), hence noise-tolerant under symmetric noise
    below (K-1)/K (Ghosh et al. 2017, Thm. 1); it is known to underfit on hard data sets.
    """

    def __init__(self, ctx: LossContext):
        super().__init__()
        self.num_classes = ctx.num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits.float(), dim=1)
        t = _as_probs(targets, self.num_classes)
        return (2.0 * (1.0 - (t * p).sum(dim=1))).mean()


MAE = Method(
    name="mae",
    kind="loss",
    build=MAELoss,
    summary="mean absolute error between the one-hot label and the softmax output: a symmetric, noise-tolerant loss",
    paper="Ghosh, Kumar & Sastry, Robust Loss Functions under Label Noise for Deep Neural Networks, AAAI 2017",
    url="https://arxiv.org/abs/1712.09482",
)


# ---------------------------------------------------------------------------------------------
# gce: Zhang & Sabuncu, NeurIPS 2018, Eq. 6 (the L_q loss)
# ---------------------------------------------------------------------------------------------


class GCELoss(Loss):
    """L_q = (1 - p_y^q) / q; soft targets: sum_k t_k (1 - p_k^q) / q. Batch mean.

    q -> 0 gives cross-entropy -log p_y; q = 1 gives 1 - p_y = MAE / 2.
    """

    def __init__(self, ctx: LossContext, q: float):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.q = q

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        per_class = -torch.expm1(self.q * logp) / self.q  # (1 - p^q) / q, accurate for small q
        t = _as_probs(targets, self.num_classes)
        return (t * per_class).sum(dim=1).mean()


GCE = Method(
    name="gce",
    kind="loss",
    build=GCELoss,
    summary="generalized cross-entropy (1 - p_y^q)/q: interpolates between cross-entropy (q -> 0) and MAE (q = 1)",
    paper="Zhang & Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels, NeurIPS 2018",
    url="https://arxiv.org/abs/1805.07836",
    params=(Param("q", float, 0.7, "exponent q in (0, 1]: 0 -> cross-entropy, 1 -> MAE/2 (paper: 0.7)", low=1e-4, high=1.0, search=Uniform(0.1, 1.0)),),
)


# ---------------------------------------------------------------------------------------------
# reverse cross-entropy (shared by sce and nce_rce): Wang et al., ICCV 2019, Eq. 5
# ---------------------------------------------------------------------------------------------


def _rce_rows(p: torch.Tensor, t: torch.Tensor, log_zero: float) -> torch.Tensor:
    """RCE = -sum_k p_k log q_k with q the one-hot label and log 0 := A, i.e. -A (1 - p_y).

    Soft targets: the expected RCE, -A (1 - <t, p>). [B].
    """
    return -log_zero * (1.0 - (t * p).sum(dim=1))


# ---------------------------------------------------------------------------------------------
# sce: Wang et al., ICCV 2019, Eq. 6
# ---------------------------------------------------------------------------------------------


class SCELoss(Loss):
    """L = alpha * CE + beta * RCE, RCE = -A (1 - p_y) (log 0 := A = -4). Batch mean.

    Soft targets: alpha * (-sum_k t_k log p_k) + beta * (-A) (1 - <t, p>).
    """

    def __init__(self, ctx: LossContext, alpha: float, beta: float, log_zero: float):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        t = _as_probs(targets, self.num_classes)
        ce = _soft_ce_rows(logp, t)
        rce = _rce_rows(logp.exp(), t, self.log_zero)
        return (self.alpha * ce + self.beta * rce).mean()


SCE = Method(
    name="sce",
    kind="loss",
    build=SCELoss,
    summary="symmetric cross-entropy: alpha * CE + beta * reverse CE (log 0 := A), CE for fitting, RCE for robustness",
    paper="Wang, Ma, Chen, Luo, Yi & Bailey, Symmetric Cross Entropy for Robust Learning with Noisy Labels, ICCV 2019",
    url="https://arxiv.org/abs/1908.06112",
    params=(
        Param("alpha", float, 0.1, "weight of cross-entropy (paper, CIFAR-10: 0.1)", low=0.0),
        Param("beta", float, 1.0, "weight of reverse cross-entropy (paper, CIFAR-10: 1.0)", low=0.0),
        Param("log_zero", float, -4.0, "A: the value that replaces log 0 in reverse cross-entropy (paper: -4)", high=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# nce_rce: Ma et al., ICML 2020, Eq. 3 (NCE) and Sec. 4 (active-passive loss NCE+RCE)
# ---------------------------------------------------------------------------------------------


class NCERCELoss(Loss):
    """APL = alpha * NCE + beta * RCE with NCE = log p_y / sum_k log p_k (in [0, 1]) and RCE as in SCE.

    NCE is 0 for a perfect prediction and 1/K for a uniform one. Soft targets: the expected loss,
    NCE = sum_k t_k log p_k / sum_j log p_j, RCE = -A (1 - <t, p>).
    """

    def __init__(self, ctx: LossContext, alpha: float, beta: float, log_zero: float):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        t = _as_probs(targets, self.num_classes)
        nce = (t * logp).sum(dim=1) / logp.sum(dim=1)  # both negative; the denominator is < 0 for K >= 2
        rce = _rce_rows(logp.exp(), t, self.log_zero)
        return (self.alpha * nce + self.beta * rce).mean()


NCE_RCE = Method(
    name="nce_rce",
    kind="loss",
    build=NCERCELoss,
    summary="active-passive loss: normalized cross-entropy (robust, active) + reverse cross-entropy (passive)",
    paper="Ma, Huang, Wang, Romano, Erfani & Bailey, Normalized Loss Functions for Deep Learning with Noisy Labels, ICML 2020",
    url="https://arxiv.org/abs/2006.13554",
    params=(
        Param("alpha", float, 1.0, "weight of normalized cross-entropy (paper, CIFAR-10: 1)", low=0.0),
        Param("beta", float, 1.0, "weight of reverse cross-entropy (paper, CIFAR-10: 1)", low=0.0),
        Param("log_zero", float, -4.0, "A: the value that replaces log 0 in reverse cross-entropy (Wang et al.: -4)", high=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# bootstrap_soft / bootstrap_hard: Reed et al., ICLR 2015 workshop, Sec. 3.2
# ---------------------------------------------------------------------------------------------


class BootstrapLoss(Loss):
    """L = -sum_k (beta t_k + (1 - beta) r_k) log p_k, batch mean.

    soft: r = p (the prediction itself, not detached: the paper's reading as minimum-entropy
    regularisation); hard: r = one-hot(argmax p). The target term accepts soft rows directly.
    beta = 1 gives cross-entropy.
    """

    def __init__(self, ctx: LossContext, beta: float, hard: bool):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.beta, self.hard = beta, hard

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        t = _as_probs(targets, self.num_classes)
        if self.hard:
            r = F.one_hot(logp.argmax(dim=1), self.num_classes).float()
        else:
            r = logp.exp()
        mixed = self.beta * t + (1.0 - self.beta) * r
        return _soft_ce_rows(logp, mixed).mean()


def _bootstrap_soft(ctx: LossContext, beta: float) -> BootstrapLoss:
    return BootstrapLoss(ctx, beta, hard=False)


def _bootstrap_hard(ctx: LossContext, beta: float) -> BootstrapLoss:
    return BootstrapLoss(ctx, beta, hard=True)


_REED = "Reed, Lee, Anguelov, Szegedy, Erhan & Rabinovich, Training Deep Neural Networks on Noisy Labels with Bootstrapping, ICLR 2015 (workshop)"

BOOTSTRAP_SOFT = Method(
    name="bootstrap_soft",
    kind="loss",
    build=_bootstrap_soft,
    summary="soft bootstrapping: cross-entropy against beta * label + (1 - beta) * the model's own prediction",
    paper=_REED,
    url="https://arxiv.org/abs/1412.6596",
    params=(Param("beta", float, 0.95, "weight of the given label in the target (paper: 0.95); 1 gives cross-entropy", low=0.0, high=1.0),),
)

BOOTSTRAP_HARD = Method(
    name="bootstrap_hard",
    kind="loss",
    build=_bootstrap_hard,
    summary="hard bootstrapping: cross-entropy against beta * label + (1 - beta) * one-hot of the predicted class",
    paper=_REED,
    url="https://arxiv.org/abs/1412.6596",
    params=(Param("beta", float, 0.8, "weight of the given label in the target (paper: 0.8); 1 gives cross-entropy", low=0.0, high=1.0),),
)


# ---------------------------------------------------------------------------------------------
# elr: Liu, Niles-Weed, Razavian & Fernandez-Granda, NeurIPS 2020, Eq. 7-8
# ---------------------------------------------------------------------------------------------


class ELRLoss(Loss):
    """L = CE(z, y) + lam * mean_i log(1 - <p_i, t_i>), t the per-sample temporal ensemble.

    Before each step the targets of the batch's samples are updated, as in the authors' code:
    p <- clamp(p, 1e-4, 1 - 1e-4) (detached), t_i <- beta t_i + (1 - beta) p_i / sum(p_i), t
    starting at 0. The regulariser uses the clamped (not renormalised) prediction. Samples whose
    index is -1 (copies appended by an augmentation) get the cross-entropy term only. Soft targets
    enter only the cross-entropy term.
    """

    CLAMP = 1e-4

    def __init__(self, ctx: LossContext, beta: float, lam: float):
        super().__init__()
        if ctx.dataset_size < 1:
            raise ValueError("ELR keeps one target per training sample: LossContext.dataset_size must be >= 1")
        self.num_classes = ctx.num_classes
        self.beta, self.lam = beta, lam
        self.register_buffer("targets", torch.zeros(ctx.dataset_size, ctx.num_classes, device=ctx.device))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.regularised(logits, targets, index, update=True)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        # an extra pass of one step (SAM's second) must not move the running targets again
        return self.regularised(out.logits, batch.y, batch.index, update=not out.recomputed)

    def regularised(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, *, update: bool) -> torch.Tensor:
        logits = logits.float()
        logp = F.log_softmax(logits, dim=1)
        ce = _soft_ce_rows(logp, _as_probs(targets, self.num_classes)).mean()
        valid = index >= 0
        if self.lam == 0.0 or not bool(valid.any()):
            return ce
        idx = index[valid].long()
        p = logp[valid].exp().clamp(self.CLAMP, 1.0 - self.CLAMP)
        if update:
            with torch.no_grad():
                p_det = p.detach()
                self.targets[idx] = self.beta * self.targets[idx] + (1.0 - self.beta) * p_det / p_det.sum(dim=1, keepdim=True)
        inner = (self.targets[idx] * p).sum(dim=1)
        reg = torch.log1p(-inner).mean()
        return ce + self.lam * reg


ELR = Method(
    name="elr",
    kind="loss",
    build=ELRLoss,
    summary="early-learning regularisation: cross-entropy plus lam * log(1 - <p, t>) toward a running average of past predictions",
    paper="Liu, Niles-Weed, Razavian & Fernandez-Granda, Early-Learning Regularization Prevents Memorization of Noisy Labels, NeurIPS 2020",
    url="https://arxiv.org/abs/2007.00151",
    params=(
        Param("beta", float, 0.7, "momentum of the per-sample target average (paper, CIFAR-10: 0.7)", low=0.0, high=1.0),
        Param("lam", float, 3.0, "weight of the regulariser (paper, CIFAR-10: 3)", low=0.0, search=LogUniform(0.3, 10.0)),
    ),
)


# ---------------------------------------------------------------------------------------------
# ldr_kl / aldr_kl: Zhu, Ying & Yang, ICML 2023
# ---------------------------------------------------------------------------------------------


def _ldr_scores(logits: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The scores the LDR losses compare: softplus(z) / mean_k softplus(z_k) (positive, mean 1),
    as in the authors' code (the robustness results need bounded scores), or raw z."""
    if not normalize:
        return logits
    s = F.softplus(logits)
    return s / s.mean(dim=1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)


def _ldr_margins(s: torch.Tensor, margin: float) -> torch.Tensor:
    """d[b, y, k] = margin * 1[k != y] + s_k - s_y for every label y: [B, K(y), K(k)]."""
    k = s.shape[1]
    off = margin * (1.0 - torch.eye(k, device=s.device, dtype=s.dtype))
    return off.unsqueeze(0) + s.unsqueeze(1) - s.unsqueeze(2)


def _kl_ldr(d: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam * log((1/K) sum_k exp(d_k / lam)) over the last axis (lam broadcasts).

    Written as m + lam * log1p(mean_k expm1((d_k - m) / lam)), m = max_k d_k: stable for small
    lam and free of the cancellation that lam * (LSE - log K) suffers for large lam.
    """
    m = d.max(dim=-1, keepdim=True).values
    lam = torch.as_tensor(lam, dtype=d.dtype, device=d.device)
    inner = torch.expm1((d - m) / lam).mean(dim=-1)
    outer = lam.squeeze(-1) if lam.dim() else lam  # per-sample lam arrives as [B, 1]
    return m.squeeze(-1) + outer * torch.log1p(inner)


class LDRKLLoss(Loss):
    """LDR-KL: psi(z, y) = max_{w in simplex} sum_k w_k d_k - lam KL(w || 1/K)
    = lam * log((1/K) sum_k exp(d_k / lam)), d_k = margin * 1[k != y] + s_k - s_y.

    lam -> 0: the Crammer-Singer hinge max_k d_k; lam -> inf: the mean of d (a symmetric,
    MAE-like loss); lam = 1, margin = 0 on raw logits: cross-entropy - log K. Soft targets: the
    expected loss sum_y t_y psi(z, y). Batch mean.
    """

    def __init__(self, ctx: LossContext, lam: float, margin: float, normalize: bool):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.lam, self.margin, self.normalize = lam, margin, normalize

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        s = _ldr_scores(logits.float(), self.normalize)
        lam = torch.tensor(self.lam, dtype=s.dtype, device=s.device)
        if not targets.dtype.is_floating_point:
            y = targets.long()
            s_y = s.gather(1, y.unsqueeze(1))
            d = s - s_y + self.margin * (1.0 - F.one_hot(y, self.num_classes).to(s.dtype))
            return _kl_ldr(d, lam).mean()
        per_label = _kl_ldr(_ldr_margins(s, self.margin), lam)  # [B, K]: psi(z, y) for each y
        return (targets.float() * per_label).sum(dim=1).mean()


_ZHU = "Zhu, Ying & Yang, Label Distributionally Robust Losses for Multi-class Classification: Consistency, Robustness and Adaptivity, ICML 2023"
_LDR_PARAMS = (
    Param("margin", float, 1.0, "margin c added to every wrong class's score difference (c * 1[k != y])", low=0.0),
    Param("normalize", bool, True, "compare softplus scores normalised to mean 1 (authors' code) instead of raw logits"),
)

LDR_KL = Method(
    name="ldr_kl",
    kind="loss",
    build=LDRKLLoss,
    summary="label-distributionally robust loss with KL regulariser: lam-smoothed max over label distributions of the margin violations",
    paper=_ZHU,
    url="https://arxiv.org/abs/2112.14869",
    params=(Param("lam", float, 1.0, "KL regularisation strength lam > 0 (authors' default 1): small -> hinge, large -> robust mean", low=1e-3), *_LDR_PARAMS),
)


class ALDRKLLoss(Loss):
    """ALDR-KL: LDR-KL with a per-sample lam_i adapted to how uncertain the label looks.

    With w_i = softmax(d_i / lam_i) the current worst-case label distribution (lam_i from the
    sample's previous visit, lam0 at first), lam_i <- lam0 (1 - KL(w_i || 1/K) / (alpha log K))
    (detached, >= lam0 (1 - 1/alpha) > 0 for alpha > 1), and
        L_i = lam_i log((1/K) sum_k exp(d_ik / lam_i)) - alpha log K / (2 lam0) (lam_i - lam0)^2,
    the closed-form inner maximisation over lam of the paper's adaptive objective, as in the
    authors' code. Samples with index -1 use lam0 and leave the table alone. Hard labels only.
    """

    accepts_soft_targets = False

    def __init__(self, ctx: LossContext, lam0: float, alpha: float, margin: float, normalize: bool):
        super().__init__()
        if ctx.dataset_size < 1:
            raise ValueError("ALDR-KL keeps one lambda per training sample: LossContext.dataset_size must be >= 1")
        self.num_classes = ctx.num_classes
        self.lam0, self.alpha, self.margin, self.normalize = lam0, alpha, margin, normalize
        self.register_buffer("lambdas", torch.full((ctx.dataset_size,), float(lam0), device=ctx.device))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if targets.dtype.is_floating_point:
            raise ValueError("aldr_kl keeps per-sample state for hard labels; it cannot take soft targets")
        s = _ldr_scores(logits.float(), self.normalize)
        y = targets.long()
        d = s - s.gather(1, y.unsqueeze(1)) + self.margin * (1.0 - F.one_hot(y, self.num_classes).to(s.dtype))
        k = self.num_classes
        valid = index >= 0
        safe = torch.where(valid, index, torch.zeros_like(index)).long()
        lam_prev = torch.where(valid, self.lambdas[safe], torch.full_like(self.lambdas[safe], self.lam0))
        with torch.no_grad():
            logw = F.log_softmax(d.detach() / lam_prev.unsqueeze(1), dim=1)
            kl = (logw.exp() * (logw + math.log(k))).sum(dim=1).clamp_min(0.0)
            lam = self.lam0 * (1.0 - kl / (self.alpha * math.log(k)))
            lam = torch.where(valid, lam, torch.full_like(lam, self.lam0)).clamp_min(1e-6)
            if bool(valid.any()):
                self.lambdas[safe[valid]] = lam[valid]
        penalty = self.alpha * math.log(k) / (2.0 * self.lam0) * (lam - self.lam0) ** 2
        return (_kl_ldr(d, lam.unsqueeze(1)) - penalty).mean()


ALDR_KL = Method(
    name="aldr_kl",
    kind="loss",
    build=ALDRKLLoss,
    summary="adaptive LDR-KL: per-sample KL strength lam_i shrinks as the worst-case label distribution concentrates",
    paper=_ZHU,
    url="https://arxiv.org/abs/2112.14869",
    params=(
        Param("lam0", float, 1.0, "reference KL strength lam0 > 0 (authors' default 1)", low=1e-3),
        Param("alpha", float, 2.0, "adaptivity alpha > 1: lam_i in [lam0 (1 - 1/alpha), lam0] (authors' example: 2)", low=1.0 + 1e-6),
        *_LDR_PARAMS,
    ),
)


# ---------------------------------------------------------------------------------------------
# coteaching: Han et al., NeurIPS 2018
# ---------------------------------------------------------------------------------------------


def forget_rate_schedule(epoch: int, forget_rate: float, num_gradual: int, exponent: float) -> float:
    """R(T) of the authors' code: linspace(0, forget_rate^exponent, num_gradual)[epoch] for the first
    `num_gradual` epochs, then forget_rate."""
    if epoch >= num_gradual:
        return forget_rate
    if num_gradual <= 1:
        return forget_rate**exponent
    return forget_rate**exponent * epoch / (num_gradual - 1)


class CoTeaching(Loss, AuxiliaryModels):
    """Two networks, the trained model and a peer (same architecture, its own initialisation, the
    same batches and optimiser), each trained on the samples its peer finds easiest: per batch, each
    network keeps the int((1 - R(T)) B) samples of smallest loss under it; the model's loss is its
    mean CE over the samples the peer kept, the peer's over those the model kept (Algorithm 1; the
    authors' `loss_coteaching`). The objective is their sum (disjoint parameters, so each network
    gets exactly its own gradient). R(T) rises linearly from 0 to `forget_rate` over the first
    `num_gradual` epochs (T_k = 10 in the paper). The trained model (net 1) is evaluated.
    forget_rate = 0 trains the two networks as independent CE runs. The paper sets the forget rate
    to the (known) noise rate; the default here is the mild 0.2.
    """

    def __init__(self, ctx: LossContext, forget_rate: float, num_gradual: int, exponent: float):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.forget_rate, self.num_gradual, self.exponent = forget_rate, num_gradual, exponent
        self.rate = 0.0

    def auxiliary_models(self) -> dict[str, Peer]:
        return {"peer": Peer()}

    def start_epoch(self, epoch: int) -> None:
        self.rate = forget_rate_schedule(epoch, self.forget_rate, self.num_gradual, self.exponent)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.cross_update(out.logits, out.aux["peer"].logits, batch.y)

    def cross_update(self, logits: torch.Tensor, peer_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = _as_probs(targets, self.num_classes)
        loss_1 = _soft_ce_rows(F.log_softmax(logits.float(), dim=1), t)
        loss_2 = _soft_ce_rows(F.log_softmax(peer_logits.float(), dim=1), t)
        remember = max(1, int((1.0 - self.rate) * len(t)))
        keep_1 = torch.argsort(loss_1.detach(), stable=True)[:remember]  # small-loss samples under the model
        keep_2 = torch.argsort(loss_2.detach(), stable=True)[:remember]  # ... under the peer
        return loss_1[keep_2].mean() + loss_2[keep_1].mean()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise TypeError("co-teaching needs the peer's logits; the engine calls it as objective(batch, out)")


COTEACHING = Method(
    name="coteaching",
    kind="loss",
    build=CoTeaching,
    summary="co-teaching: two networks each train on the small-loss samples selected by the other",
    paper="Han et al., Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy Labels, NeurIPS 2018",
    url="https://arxiv.org/abs/1804.06872",
    suites=("noisy_labels",),  # a noisy-label method: in that suite's default grid only (run it elsewhere with method=)
    params=(
        Param("forget_rate", float, 0.2, "final share of each batch dropped as large-loss samples (the paper sets it to the noise rate)", low=0.0, high=0.99),
        Param("num_gradual", int, 10, "epochs over which the drop rate rises to forget_rate (paper: T_k = 10)", low=0),
        Param("exponent", float, 1.0, "exponent c of the rise (paper: 1)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# nested_coteaching: Chen, Hu, Shen, Ai & Suykens, TNNLS 2022 (nested dropout, then co-teaching)
# ---------------------------------------------------------------------------------------------


def nested_dropout_distribution(dim: int, mu: float, sigma: float) -> torch.Tensor:
    """p(k) proportional to exp(-((k - mu) / sigma)^2) for k = 1..dim (the authors' `GaussianDist`):
    the probability that a step keeps the first k feature channels. Computed from the exponents'
    log-sum-exp, so a sigma far below the spacing (a point mass) stays finite."""
    k = torch.arange(1, dim + 1, dtype=torch.float64)
    return torch.softmax(-(((k - mu) / sigma) ** 2), dim=0)


class NestedDropoutHead(nn.Module):
    """The classifier on nested-dropped features: in training every forward pass keeps only the
    first k channels of its input, k ~ p(k) drawn once per pass from the head's own generator (the
    model's and the peer's heads share the seed, so both drop the same channels in a step, as the
    authors' one `mask_k` for both networks); in eval mode the first `keep` channels (all until a
    predictor chooses)."""

    def __init__(self, head: nn.Linear, probs: torch.Tensor, seed: int):
        super().__init__()
        self.head = head
        self.probs = probs.float()  # on the CPU, with the generator
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("keep", torch.tensor(head.in_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        k = int(torch.multinomial(self.probs, 1, generator=self.generator)) + 1 if self.training else int(self.keep)
        mask = (torch.arange(features.shape[1], device=features.device) < k).to(features.dtype)
        return self.head(features * mask)

    def prefix_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The logits with the first k channels kept, for every k = 1..D at once: [B, D, K]."""
        contributions = features.unsqueeze(2) * self.head.weight.T.unsqueeze(0)  # [B, D, K]
        logits = contributions.cumsum(dim=1)
        return logits + self.head.bias if self.head.bias is not None else logits


class NestedCoTeaching(CoTeaching, Observer, Predictor):
    """Co-teaching (as `coteaching`: each network trains on the small-loss samples its peer
    selects, R(T) rising to `forget_rate` over `num_gradual` epochs) with nested dropout on the
    penultimate features of both networks: every step keeps only the first k feature channels,
    k ~ p(k) proportional to exp(-((k - mu) / sigma)^2), so the features learn in order of
    importance and the first channels carry a compressed representation that fits the noisy
    labels less (Chen et al., "Compressing Features for Learning with Noisy Labels"). At test time
    the model uses the first K channels, K the number that classifies a held-out share of the
    training set best (ties: the smaller K, as the authors).

    Differences from the authors' pipeline, all forced by one training run with no clean split:
    (1) one stage: nested dropout and co-teaching train together from scratch (the authors first
    train two nested-dropout networks with cross-entropy, then fine-tune them with co-teaching);
    (2) the small-loss selection uses the step's own (nested-dropped) logits, as `coteaching`,
    where the authors select with a separate eval-mode pass at the current K; (3) K is chosen once,
    when predicting, on `holdout` (10%, as the authors' validation split) of the training samples,
    whose labels are as noisy as the rest (the authors' split is clean; under symmetric noise,
    accuracy on noisy labels is an increasing affine function of clean accuracy, so the choice
    agrees in expectation); those samples never enter the loss, but they do take part in the
    forward pass of their batch (BatchNorm statistics), and their images are kept as the step saw
    them; (4) the trained model alone is evaluated, as for `coteaching` (the authors average the
    two networks' logits). Per-epoch curves use every channel (K is chosen at prediction).
    mu = D (the feature width) with a tiny sigma keeps every channel in every step: `coteaching`,
    step for step, when `holdout` = 0."""

    def __init__(self, ctx: LossContext, forget_rate: float, num_gradual: int, exponent: float, sigma: float, mu: float, holdout: float):
        super().__init__(ctx, forget_rate, num_gradual, exponent)
        self.sigma, self.mu, self.seed = sigma, mu, ctx.seed
        n = max(1, ctx.dataset_size)
        held = torch.zeros(n, dtype=torch.bool)
        held[torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed))[: round(holdout * n)]] = True
        self.register_buffer("held_out", held)
        self.register_buffer("slot", torch.cumsum(held.long(), 0) - 1)  # each held-out sample's row in the stash
        self.stash_x: torch.Tensor | None = None
        self.stash_y = torch.full((int(held.sum()),), -1, dtype=torch.long)
        self.selected_channels: int | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        head = get_classifier(model)
        if isinstance(head, NestedDropoutHead):
            return model
        if not isinstance(head, nn.Linear):
            raise TypeError(f"nested_coteaching drops channels of a linear classifier's input; got {type(head).__name__}")
        probs = nested_dropout_distribution(head.in_features, self.mu, self.sigma)
        set_classifier(model, NestedDropoutHead(head, probs, self.seed))
        return model

    def training_rows(self, index: torch.Tensor) -> torch.Tensor:
        held = self.held_out[index.clamp_min(0)] & (index >= 0)
        return ~held

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        rows = self.training_rows(batch.index)
        if not bool(rows.any()):
            return out.logits.sum() * 0.0 + out.aux["peer"].logits.sum() * 0.0
        return self.cross_update(out.logits[rows], out.aux["peer"].logits[rows], batch.y[rows])

    def observe(self, batch: Batch, out: Outputs) -> None:
        held = ~self.training_rows(batch.index)
        if not bool(held.any()):
            return
        slots = self.slot[batch.index[held]].cpu()
        if self.stash_x is None:
            self.stash_x = torch.zeros(len(self.stash_y), *batch.x.shape[1:], dtype=batch.x.dtype, device=batch.x.device)
        self.stash_x[slots.to(batch.x.device)] = batch.x[held]
        labels = batch.y[held]
        self.stash_y[slots] = (labels.argmax(dim=1) if labels.dtype.is_floating_point else labels).cpu()

    @torch.no_grad()
    def choose_channels(self, model: nn.Module) -> int:
        """The K that classifies the held-out samples best (the smallest on ties); all channels
        when no held-out sample was seen."""
        head = get_classifier(model)
        if not isinstance(head, NestedDropoutHead):
            raise TypeError(f"nested_coteaching predicts with the nested-dropout model it trained, not a {type(model).__name__}")
        seen = self.stash_y >= 0
        if self.stash_x is None or not bool(seen.any()):
            return head.head.in_features
        sink: dict[str, torch.Tensor] = {}
        hook = head.register_forward_pre_hook(lambda module, args: sink.__setitem__("features", args[0]))
        correct = torch.zeros(head.head.in_features)
        try:
            x, y = self.stash_x[seen.to(self.stash_x.device)], self.stash_y[seen]
            for start in range(0, len(y), 256):
                model(x[start : start + 256])
                pred = head.prefix_logits(sink["features"].float()).argmax(dim=2).cpu()  # [b, D]
                correct += (pred == y[start : start + 256].unsqueeze(1)).float().sum(dim=0)
        finally:
            hook.remove()
        accuracy = correct / len(y) - 1e-5 * torch.arange(len(correct))
        return int(accuracy.argmax()) + 1

    def predict(self, model: nn.Module, inputs) -> torch.Tensor:
        self.selected_channels = self.choose_channels(model)
        get_classifier(model).keep.fill_(self.selected_channels)
        out = [model(xb).float().cpu() for xb in inputs]
        return torch.cat(out) if out else torch.empty(0)


NESTED_COTEACHING = Method(
    name="nested_coteaching",
    kind="loss",
    build=NestedCoTeaching,
    summary="co-teaching of two networks whose penultimate features are nested-dropped (compressed); K channels chosen on a held-out split",
    paper="Chen, Hu, Shen, Ai & Suykens, Compressing Features for Learning with Noisy Labels, IEEE TNNLS 2022 (Nested + Co-teaching)",
    url="https://arxiv.org/abs/2206.13140",
    suites=("noisy_labels",),
    params=(
        Param("forget_rate", float, 0.2, "final share of each batch dropped as large-loss samples (co-teaching sets it to the noise rate; authors, CIFAR sym 20%: 0.2)", low=0.0, high=0.99),
        Param("num_gradual", int, 10, "epochs over which the drop rate rises to forget_rate (co-teaching: T_k = 10; the authors' fine-tuning stage: 0)", low=0),
        Param("exponent", float, 1.0, "exponent c of the rise (co-teaching: 1)", low=0.0),
        Param("sigma", float, 10.0, "std of the nested-dropout distribution over kept channels (authors, CIFAR-10: 10; CIFAR-100 and Clothing1M: 100)", low=1e-6),
        Param("mu", float, 0.0, "mean of the nested-dropout distribution (authors: 0)"),
        Param("holdout", float, 0.1, "share of the training set held out to choose K (the authors' validation split: 10%)", low=0.0, high=0.5),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (MAE, GCE, SCE, NCE_RCE, BOOTSTRAP_SOFT, BOOTSTRAP_HARD, ELR, LDR_KL, ALDR_KL, COTEACHING, NESTED_COTEACHING)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
