"""Built-in batch augmentations, one section per method.

Every augmentation is a batched tensor op on the training device: `aug(x, y, generator)` takes
normalised float images `x` [B, C, H, W] and targets `y` (int64 [B] or soft float [B, K] whose
rows sum to 1) and draws all of its randomness from `generator` (a torch.Generator on x's
device), so a run is reproducible. There is no per-sample Python loop and no PIL.

Targets: a mixing method always returns soft float rows [B', K] (int targets become one-hot
first; soft targets arriving from elsewhere are mixed row by row). RandAugment leaves targets as
they are. SLA returns joint (class, rotation) targets over K * 4 labels.

Batch growth: `rankmixup` returns B * (1 + num_mixup) rows (the raw batch, then each mixed copy)
and `sla` returns 4 * B rows (rotations 0, 90, 180, 270 degrees, rotation-major).

Normalised inputs and pixel-intensity ops (RandAugment): the engine hands over
`(x_uint8 / 255 - mean) / std` per channel, and the augmentation is not told mean and std. The
valid pixel range [0, 1] maps per channel to [-mean/std, (1-mean)/std], an affine map, so we
recover it from the batch: `lo_c = min x[:, c]`, `hi_c = max x[:, c]`, work on
`u = (x - lo) / (hi - lo)` in [0, 1] and map back with `u * (hi - lo) + lo`. When the batch holds
at least one black and one white pixel per channel (MNIST, CIFAR: always in practice) this is
exactly the inverse normalisation, so every intensity op (solarize threshold, posterize bits,
brightness towards black, equalize's 8-bit histogram) acts on true pixel values; otherwise the
ops act on the batch's own pixel range, which is the best the batch itself can tell. The range
is per batch and per channel, never per sample (a per-sample rescale would distort each image's
brightness and make autocontrast a no-op).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds.augmentation import Augmentation, AugmentContext
from harness.method import Method
from harness.models import get_classifier, set_classifier
from harness.params import LogUniform, Param, Uniform
from harness.seams import Batch, HeadedModel, Outputs

# ---------------------------------------------------------------------------------------------
# shared helpers: soft targets, generator-driven Gamma/Beta sampling, mixing
# ---------------------------------------------------------------------------------------------


def as_soft(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as float rows [B, K]: one-hot for int targets, unchanged (as float32) for soft ones."""
    if y.dtype.is_floating_point:
        return y.float()
    return F.one_hot(y.long(), num_classes).float()


def _num_classes(y: torch.Tensor, num_classes: int) -> int:
    return y.shape[1] if y.dtype.is_floating_point else num_classes


def sample_log_gamma(shape_param: float, n: int, generator: torch.Generator, device: torch.device | str, candidates: int = 32) -> torch.Tensor:
    """log of n Gamma(shape_param, 1) draws, all randomness from `generator` (float64, on `device`).

    Marsaglia & Tsang, "A Simple Method for Generating Gamma Variables", ACM TOMS 2000: for a >= 1,
    d = a - 1/3, c = 1/sqrt(9d), z ~ N(0,1), v = (1 + cz)^3; accept d*v when v > 0 and
    log U < z^2/2 + d - d v + d log v. For a < 1, Gamma(a) = Gamma(a + 1) * U^(1/a) (their Sec. 6).
    The rejection loop is vectorised: `candidates` proposals per draw are made at once and the first
    accepted one is kept (acceptance is >= 95% per proposal, so all 32 failing has probability
    < 1e-40; should it happen, the last proposal is used). Working in log space keeps
    Beta(0.2, 0.2) draws finite where U^(1/a) would underflow.
    """
    if shape_param <= 0:
        raise ValueError(f"Gamma shape must be > 0, got {shape_param}")
    boost = shape_param < 1.0
    a = shape_param + 1.0 if boost else shape_param
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(n, candidates, generator=generator, device=device, dtype=torch.float64)
    u = torch.rand(n, candidates, generator=generator, device=device, dtype=torch.float64)
    v = (1.0 + c * z) ** 3
    positive = v > 0
    log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
    accept = positive & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    accept[:, -1] |= positive[:, -1]  # fallback: the last proposal (if v > 0; else see below)
    first = torch.argmax(accept.to(torch.int8), dim=1, keepdim=True)  # first accepted proposal
    log_g = math.log(d) + log_v.gather(1, first).squeeze(1)
    if boost:
        u_boost = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        log_g = log_g + torch.log(u_boost.clamp_min(1e-300)) / shape_param
    return log_g


def sample_beta(a: float, b: float, n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """n draws of Beta(a, b) as float32 on `device`: X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).

    Computed as sigmoid(log X - log Y), exact and finite for small shapes.
    """
    log_x = sample_log_gamma(a, n, generator, device)
    log_y = sample_log_gamma(b, n, generator, device)
    return torch.sigmoid(log_x - log_y).float()


def mix(x: torch.Tensor, t: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang et al. 2018, Eq. (1): x~ = lam x + (1 - lam) x[perm], t~ = lam t + (1 - lam) t[perm]."""
    lam_x = lam.to(x.dtype)
    lam_t = lam.to(t.dtype)
    return lam_x * x + (1 - lam_x) * x[perm], lam_t * t + (1 - lam_t) * t[perm]


# ---------------------------------------------------------------------------------------------
# mixup: Zhang et al., ICLR 2018
# ---------------------------------------------------------------------------------------------


class Mixup(Augmentation):
    """One lam ~ Beta(alpha, alpha) per batch, mixed with a random permutation of the batch.

    Returns (lam x + (1-lam) x[perm], lam t + (1-lam) t[perm]) with t the (one-hot or soft) targets.
    `last_lam` and `last_perm` hold the latest draw (for inspection only).
    """

    def __init__(self, ctx: AugmentContext, alpha: float):
        self.num_classes = ctx.num_classes
        self.alpha = alpha
        self.last_lam: torch.Tensor | None = None
        self.last_perm: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_soft(y, _num_classes(y, self.num_classes))
        lam = sample_beta(self.alpha, self.alpha, 1, generator, x.device)[0]
        perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
        self.last_lam, self.last_perm = lam, perm
        return mix(x, t, lam, perm)


MIXUP = Method(
    name="mixup",
    kind="augmentation",
    build=Mixup,
    summary="convex combinations of pairs of images and of their labels, lam ~ Beta(alpha, alpha) per batch",
    paper="Zhang, Cisse, Dauphin & Lopez-Paz, mixup: Beyond Empirical Risk Minimization, ICLR 2018 (alpha = 1 in the CIFAR experiments, Sec. 3.2)",
    url="https://arxiv.org/abs/1710.09412",
    params=(Param("alpha", float, 1.0, "Beta(alpha, alpha) concentration of the mixing coefficient (paper: 1.0 on CIFAR, 0.2 on ImageNet)", low=1e-3,
          search=LogUniform(0.1, 4.0)),),
)


# ---------------------------------------------------------------------------------------------
# cutmix: Yun et al., ICCV 2019
# ---------------------------------------------------------------------------------------------


class CutMix(Augmentation):
    """Paste one random box (per batch) from a permuted batch; the label weight is the kept area.

    lam ~ Beta(alpha, alpha); box r_w = W sqrt(1 - lam), r_h = H sqrt(1 - lam) centred at a uniform
    pixel, clipped to the image (paper Eq. 2 and Alg. A1); the targets use the *actual* kept
    fraction lam' = 1 - box area / (H W). The batch is mixed with probability `prob` (the authors'
    CIFAR recipe uses 0.5); otherwise it passes through with one-hot targets (lam' = 1). The box is a
    mask built by comparisons on device: no host synchronisation.
    """

    def __init__(self, ctx: AugmentContext, alpha: float, prob: float):
        self.num_classes = ctx.num_classes
        self.alpha, self.prob = alpha, prob
        self.last_lam: torch.Tensor | None = None
        self.last_perm: torch.Tensor | None = None
        self.last_box: torch.Tensor | None = None  # [H, W] bool mask of the pasted region

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        dev = x.device
        t = as_soft(y, _num_classes(y, self.num_classes))
        lam = sample_beta(self.alpha, self.alpha, 1, generator, dev)[0]
        perm = torch.randperm(b, generator=generator, device=dev)
        centre = torch.rand(2, generator=generator, device=dev)
        apply = torch.rand((), generator=generator, device=dev) < self.prob
        cut = torch.sqrt(1.0 - lam)
        cy, cx = torch.floor(centre[0] * h), torch.floor(centre[1] * w)
        half_h, half_w = torch.floor(h * cut / 2), torch.floor(w * cut / 2)
        y1, y2 = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
        x1, x2 = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
        rows = torch.arange(h, device=dev, dtype=torch.float32).view(h, 1)
        cols = torch.arange(w, device=dev, dtype=torch.float32).view(1, w)
        box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2) & apply
        kept = 1.0 - box.float().sum() / (h * w)
        self.last_lam, self.last_perm, self.last_box = kept, perm, box
        x_out = torch.where(box.view(1, 1, h, w), x[perm], x)
        return x_out, kept * t + (1.0 - kept) * t[perm]


CUTMIX = Method(
    name="cutmix",
    kind="augmentation",
    build=CutMix,
    summary="paste a random box from another image of the batch; labels mixed by the box's area",
    paper="Yun, Han, Oh, Chun, Choe & Yoo, CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features, ICCV 2019 (alpha = 1; cutmix_prob 0.5 in the authors' CIFAR recipe)",
    url="https://arxiv.org/abs/1905.04899",
    params=(
        Param("alpha", float, 1.0, "Beta(alpha, alpha) concentration of the box's area (1 = uniform)", low=1e-3, search=LogUniform(0.1, 4.0)),
        Param("prob", float, 0.5, "probability that a batch is cut-mixed", low=0.0, high=1.0, search=Uniform(0.1, 1.0)),
    ),
)


# ---------------------------------------------------------------------------------------------
# rankmixup: Noh et al., ICCV 2023
# ---------------------------------------------------------------------------------------------


class RankMixup(Augmentation):
    """The raw batch trains with the entry's loss; `num_mixup` mixed copies of it are a view the
    model sees in a separate forward pass; a ranking loss on the raw and mixed confidences is
    added (`extra_loss`). This is the authors' training step (their trainer: `outputs =
    model(inputs)`, then `model.forward_multimixup(inputs, labels)` on the concatenated mixes, and
    `loss_ce(outputs, labels) + alpha * loss_rank`): the loss sees the raw rows only, and BatchNorm
    normalises the raw and the mixed rows as separate batches.

    Each mix j has its own lam_j ~ Beta(alpha, alpha) and permutation (the authors'
    `mixup_process`). The relevance of a row is the largest entry of its target (1 for a raw
    sample, max(lam, 1-lam) for a mixed pair of different classes, 1 for a same-class pair).

    M-NDCG (paper Sec. 3.3, authors' `RankMixup_MNDCG`): per raw sample, list its confidence
    c_0 = max softmax(z_raw) and the confidences c_j of its mixes sorted by relevance (descending),
    with relevances r_0, r_(j). DCG = sum_i c_i / log2(i + 2), IDCG = sum_i r_i / log2(i + 2)
    (i = 0..M), NDCG = DCG / IDCG if IDCG > DCG else IDCG / DCG;
    term = weight * mean_i (1 - NDCG_i).

    M-RL (paper Sec. 3.2, authors' `RankMixup_MRL`): term = weight * mean over mixed rows of
    mask * max(0, max_k z_mix - max_k z_raw + margin), on logits as in the authors' code, where
    mask drops mixed rows as relevant as their raw sample (same-class pairs, lam in {0, 1}).
    """

    produces_soft_targets = False  # the entry's loss sees the raw rows and their labels only
    VIEW = "rankmixup"

    def __init__(self, ctx: AugmentContext, variant: str, alpha: float, num_mixup: int, weight: float, margin: float):
        self.num_classes = ctx.num_classes
        self.variant, self.alpha, self.weight, self.margin = variant, alpha, weight, margin
        self.num_mixup = num_mixup or (3 if variant == "mndcg" else 1)

    def mixes(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """[mix_1; ...; mix_M] and their soft targets, each mix with its own lam and permutation."""
        t = as_soft(y, _num_classes(y, self.num_classes))
        lams = sample_beta(self.alpha, self.alpha, self.num_mixup, generator, x.device)
        xs, ts = [], []
        for j in range(self.num_mixup):  # a loop over the few mixed copies, not over samples
            perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
            xm, tm = mix(x, t, lams[j], perm)
            xs.append(xm)
            ts.append(tm)
        return torch.cat(xs), torch.cat(ts)

    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        xm, tm = self.mixes(batch.x, batch.y, generator)
        view = Batch(xm, tm, batch.index.new_full((len(tm),), -1))
        return replace(batch, views={**batch.views, self.VIEW: view})

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw rows followed by the mixes (for callers of the plain augmentation interface);
        the engine uses `transform`, which keeps the mixes in a separate view."""
        xm, tm = self.mixes(x, y, generator)
        return torch.cat([x, xm]), torch.cat([as_soft(y, _num_classes(y, self.num_classes)), tm])

    def extra_loss(self, batch: Batch, out: Outputs) -> torch.Tensor:
        mixed_targets = batch.views[self.VIEW].y
        return self.ranking_loss(out.logits, out.views[self.VIEW].logits, batch.y, mixed_targets)

    def loss_term(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The ranking loss on the layout `__call__` returns: B raw rows, then the M x B mixed rows."""
        total, m = logits.shape[0], self.num_mixup
        if total % (m + 1):
            raise ValueError(f"rankmixup: batch of {total} rows is not a raw batch plus {m} mixed copies")
        b = total // (m + 1)
        return self.ranking_loss(logits[:b], logits[b:], targets[:b], targets[b:])

    def ranking_loss(self, raw_logits: torch.Tensor, mixed_logits: torch.Tensor, raw_targets: torch.Tensor, mixed_targets: torch.Tensor) -> torch.Tensor:
        m, b = self.num_mixup, raw_logits.shape[0]
        raw = raw_logits.float()
        mixed = mixed_logits.float().view(m, b, -1)
        rel_raw = raw_targets.float().max(dim=1).values if raw_targets.dtype.is_floating_point else torch.ones(b, device=raw.device)
        rel_mix = mixed_targets.float().max(dim=1).values.view(m, b)
        if self.variant == "mrl":
            mask = (rel_mix < rel_raw.unsqueeze(0) - 1e-6).float()  # [M, B]
            diff = mixed.max(dim=2).values - raw.max(dim=1).values.unsqueeze(0)
            return self.weight * (mask * F.relu(diff + self.margin)).mean()
        conf_raw = F.softmax(raw, dim=1).max(dim=1).values  # [B]
        conf_mix = F.softmax(mixed, dim=2).max(dim=2).values.t()  # [B, M]
        rel_mix = rel_mix.t()  # [B, M]
        order = torch.argsort(rel_mix, dim=1, descending=True, stable=True)
        conf = torch.cat([conf_raw.unsqueeze(1), conf_mix.gather(1, order)], dim=1)  # [B, M + 1]
        rel = torch.cat([rel_raw.unsqueeze(1), rel_mix.gather(1, order)], dim=1)
        discount = torch.log2(torch.arange(2, conf.shape[1] + 2, device=raw.device, dtype=conf.dtype))
        dcg = (conf / discount).sum(dim=1)
        idcg = (rel / discount).sum(dim=1)
        ndcg = torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
        return self.weight * (1.0 - ndcg).mean()


RANKMIXUP = Method(
    name="rankmixup",
    kind="augmentation",
    build=RankMixup,
    version="2",  # 2: the loss trains on the raw rows only and the mixes get their own forward pass (as the authors')
    summary="mixup-based ranking loss for calibration: mixed samples must be less confident than raw ones (M-NDCG or M-RL)",
    paper="Noh, Park, Lee & Ham, RankMixup: Ranking-Based Mixup Training for Network Calibration, ICCV 2023 (defaults: the authors' CIFAR configs, github.com/cvlab-yonsei/RankMixup)",
    url="https://openaccess.thecvf.com/content/ICCV2023/papers/Noh_RankMixup_Ranking-Based_Mixup_Training_for_Network_Calibration_ICCV_2023_paper.pdf",
    params=(
        Param("variant", str, "mndcg", "mndcg: mixup-based normalised DCG loss; mrl: mixup-based margin ranking loss", choices=("mndcg", "mrl")),
        Param("alpha", float, 2.0, "Beta(alpha, alpha) of each mixing coefficient (authors: 2.0 CIFAR, 1.0 Tiny-ImageNet)", low=1e-3),
        Param("num_mixup", int, 0, "mixed copies per batch; 0 = the paper's count for the variant (M-NDCG 3, M-RL 1)", low=0, high=16),
        Param("weight", float, 0.1, "weight of the ranking loss", low=0.0),
        Param("margin", float, 2.0, "M-RL margin on the max-logit difference (authors: 2.0 CIFAR, 1.0 Tiny-ImageNet)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# decoupled_mixup: Liu et al., NeurIPS 2023
# ---------------------------------------------------------------------------------------------


def decoupled_regulariser(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Sum over rows (not averaged) of the decoupled-softmax CE of every mixed class of the row.

    For a row whose target puts mass > eps on the set S of classes (|S| >= 2: a genuinely mixed row),
    the term is sum_{i in S} -log( exp(z_i) / (exp(z_i) + sum_{c not in S} exp(z_c)) ): each mixed
    class is scored against the non-mixed classes only, the other mixed classes removed from the
    softmax's denominator (for a pair a, b: -log phi(z)_{a \\ b} - log phi(z)_{b \\ a}). Rows with a
    single class (same-class pairs) contribute 0, as in the authors' implementation.
    """
    if not targets.dtype.is_floating_point:
        return logits.new_zeros(())
    z = logits.float()
    in_s = targets > eps
    mixed_row = in_s.sum(dim=1) >= 2
    lse_rest = torch.logsumexp(z.masked_fill(in_s, float("-inf")), dim=1, keepdim=True)  # -inf if S is everything
    log_phi = z - torch.logaddexp(z, lse_rest)  # log of the decoupled softmax of each class
    per_row = -(log_phi * in_s).sum(dim=1)
    return torch.where(mixed_row, per_row, torch.zeros_like(per_row)).sum()


class DecoupledMixup(Mixup):
    """Mixup plus the decoupled regulariser: L = L_MCE(z, t~) + eta * L_DM(z), L_MCE being the run's loss.

    `loss_term(logits, targets) = eta * (1/B) sum_rows decoupled_regulariser`, the batch mean as in
    the authors' openmixup `soft_mix_cross_entropy` (eta weight on both mixed classes, no lam
    rescaling: `eta_weight=dict(eta=0.1, mode="both")`, `lam_scale_mode="none"`).
    """

    def __init__(self, ctx: AugmentContext, alpha: float, eta: float):
        super().__init__(ctx, alpha=alpha)
        self.eta = eta

    def loss_term(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.eta * decoupled_regulariser(logits, targets) / logits.shape[0]


DECOUPLED_MIXUP = Method(
    name="decoupled_mixup",
    kind="augmentation",
    build=DecoupledMixup,
    summary="mixup plus a decoupled-softmax regulariser that scores each mixed class without its partner",
    paper="Liu, Li, Wang, Tan, Wu & Li, Harnessing Hard Mixed Samples with Decoupled Regularizer, NeurIPS 2023 (eta = 0.1: the authors' openmixup decoupled configs)",
    url="https://arxiv.org/abs/2203.10761",
    params=(
        Param("alpha", float, 1.0, "Beta(alpha, alpha) concentration of the mixing coefficient", low=1e-3),
        Param("eta", float, 0.1, "weight of the decoupled regulariser", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# randaugment: Cubuk et al., NeurIPS 2020
# ---------------------------------------------------------------------------------------------

RANDAUGMENT_OPS: tuple[str, ...] = (
    "identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
    "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
)
GEOMETRIC_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
MAX_MAGNITUDE = 30  # paper Sec. 4.1: M on an integer scale 0..30 (torchvision: num_magnitude_bins=31)
# strength at M = 30 (torchvision's RandAugment augmentation space, after AutoAugment):
MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 150.0 / 331.0  # fraction of the image side
MAX_ENHANCE = 0.9  # brightness/color/contrast/sharpness factor 1 +- 0.9
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + factor * (img - degenerate), clipped to [0, 1]; factor [B]."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (img - degenerate)).clamp(0.0, 1.0)


def _gray(u: torch.Tensor) -> torch.Tensor:
    if u.shape[1] != 3:
        return u.mean(dim=1, keepdim=True)
    w = torch.tensor(_GRAY, device=u.device, dtype=u.dtype).view(1, 3, 1, 1)
    return (u * w).sum(dim=1, keepdim=True)


def equalize(u: torch.Tensor) -> torch.Tensor:
    """Batched histogram equalisation of images in [0, 1], per image and channel, PIL's 8-bit rule.

    Each channel is quantised to 256 levels; with hist its histogram, step = (N - count of the
    last occupied level) // 255 and lut[i] = (sum_{j<i} hist[j] + step // 2) // step (PIL
    ImageOps.equalize, torchvision F.equalize); step = 0 leaves the channel unchanged. One
    scatter_add builds every histogram at once.
    """
    b, c, h, w = u.shape
    q = (u * 255.0).round().clamp(0, 255).long().view(b * c, h * w)
    # float32 counts and floor divisions are exact for images below 2^24 pixels
    hist = torch.zeros(b * c, 256, device=u.device, dtype=torch.float32).scatter_add_(1, q, torch.ones(q.shape, device=u.device))
    last = 255 - torch.argmax((hist.flip(1) > 0).to(torch.int8), dim=1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, last), 255, rounding_mode="floor")  # [b*c, 1]
    exclusive = torch.cumsum(hist, dim=1) - hist
    lut = torch.div(exclusive + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor").clamp(0, 255)
    out = lut.gather(1, q).to(u.dtype) / 255.0
    out = torch.where(step > 0, out, u.reshape(b * c, h * w))
    return out.view(b, c, h, w)


def _sharpness_degenerate(u: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13) inside, border pixels unchanged.

    Written as a sum of nine shifted slices: on CPU this is several times faster than a depthwise
    conv2d for small images, and it is exact.
    """
    h, w = u.shape[2], u.shape[3]
    if h < 3 or w < 3:
        return u
    acc = 4.0 * u[:, :, 1:-1, 1:-1]  # centre weight 5 = 1 (in the 3x3 sum below) + 4
    for dy in range(3):
        for dx in range(3):
            acc = acc + u[:, :, dy : h - 2 + dy, dx : w - 2 + dx]
    out = u.clone()
    out[:, :, 1:-1, 1:-1] = acc / 13.0
    return out


def affine_warp(u: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample affine warp about the image centre: output pixel p samples input A p + t.

    `a` [B, 2, 2] acts on pixel offsets (x right, y down) from the centre, `t` [B, 2] in pixels.
    The sampling grid is built by broadcasting in pixel units and then normalised per axis
    (affine_grid's convention with align_corners=False), so non-square images are not distorted.
    Nearest sampling (as torchvision's RandAugment), black fill.
    """
    b, _, h, w = u.shape
    a, t = a.to(u.dtype), t.to(u.dtype)
    xs = (torch.arange(w, device=u.device, dtype=u.dtype) - (w - 1) / 2).view(1, 1, w)  # pixel offsets
    ys = (torch.arange(h, device=u.device, dtype=u.dtype) - (h - 1) / 2).view(1, h, 1)
    gx = a[:, 0, 0].view(b, 1, 1) * xs + a[:, 0, 1].view(b, 1, 1) * ys + t[:, 0].view(b, 1, 1)
    gy = a[:, 1, 0].view(b, 1, 1) * xs + a[:, 1, 1].view(b, 1, 1) * ys + t[:, 1].view(b, 1, 1)
    grid = torch.stack([gx * (2.0 / w), gy * (2.0 / h)], dim=-1)  # [B, H, W, 2], normalised
    return F.grid_sample(u, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class RandAugment(Augmentation):
    """N ops drawn uniformly per sample from 14, each at the same magnitude M (paper Sec. 3).

    Magnitude convention: M in 0..30 (paper Sec. 4.1; torchvision's `num_magnitude_bins=31`), an op's
    strength is (M / 30) * its maximum: rotate 30 deg, shear 0.3, translate 150/331 of the side,
    brightness/color/contrast/sharpness factor 1 +- 0.9, posterize 8 -> 4 bits, solarize threshold
    1 -> 0; signed ops take a random sign per sample. (The TF reference code divides M by 10, so
    its M = 9 is about three times stronger than ours.) Ops: identity, autocontrast, equalize,
    rotate, solarize, color (saturation; a no-op on 1-channel images), posterize, contrast,
    brightness, sharpness, shear_x/y, translate_x/y.

    Batched: for each of the N layers every sample draws an op index and a sign (from the
    generator); each op is one batched tensor op over the images that drew it (a geometric op is
    one grid_sample with per-sample affine matrices; see `layer` for how samples are selected). Intensity ops run on the recovered pixel scale (module docstring). `ops` restricts
    the op set (tests, ablations); it is a constructor argument, not a hyper-parameter.
    """

    produces_soft_targets = False  # labels pass through unchanged

    def __init__(self, ctx: AugmentContext, num_ops: int, magnitude: int, ops: tuple[str, ...] = RANDAUGMENT_OPS):
        unknown = [o for o in ops if o not in RANDAUGMENT_OPS]
        if unknown or not ops:
            raise ValueError(f"randaugment: unknown ops {unknown}; choose from {', '.join(RANDAUGMENT_OPS)}")
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, tuple(ops)
        self.subset: bool | None = None  # None: per-op subsets on CPU, whole-batch torch.where elsewhere

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_ops == 0:
            return x, y
        lo = x.amin(dim=(0, 2, 3), keepdim=True)
        span = (x.amax(dim=(0, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
        u = (x - lo) / span
        for _ in range(self.num_ops):  # N layers (N is 2 or 3), each batched over all samples
            op = torch.randint(len(self.ops), (x.shape[0],), generator=generator, device=x.device)
            sign = torch.where(torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5, -1.0, 1.0)
            u = self.layer(u, op, sign)
        return u * span + lo, y

    def layer(self, u: torch.Tensor, op: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """Apply op `self.ops[op[i]]` with sign `sign[i]` to each image u[i] (in [0, 1]).

        On an accelerator every op runs on the whole batch and torch.where keeps each sample's own
        result (no host synchronisation). On CPU, where host synchronisation is free and compute is
        the bottleneck, each op runs only on the samples that drew it (index, compute, scatter
        back). Every op acts on each image independently, so both paths give identical results.
        """
        level = self.magnitude / MAX_MAGNITUDE
        sign = sign.to(u.dtype)
        subset = u.device.type == "cpu" if self.subset is None else self.subset
        out = u
        for i, name in enumerate(self.ops):
            if name == "identity" or (name == "color" and u.shape[1] != 3):
                continue  # saturation of a single-channel image: no-op
            chosen = op == i
            if subset:
                idx = torch.nonzero(chosen).squeeze(1)
                if idx.numel() == 0:
                    continue
                if out is u:
                    out = u.clone()
                out[idx] = apply_op(name, u[idx], sign[idx], level)
            else:
                out = torch.where(chosen.view(-1, 1, 1, 1), apply_op(name, u, sign, level), out)
        return out


def apply_op(name: str, u: torch.Tensor, sign: torch.Tensor, level: float) -> torch.Tensor:
    """One RandAugment op at strength `level` in [0, 1] on images u in [0, 1]; sign [B] in {-1, +1}."""
    b, _, h, w = u.shape
    if name in GEOMETRIC_OPS:
        a = torch.eye(2, device=u.device, dtype=u.dtype).repeat(b, 1, 1)
        t = torch.zeros(b, 2, device=u.device, dtype=u.dtype)
        if name == "rotate":  # counter-clockwise by the angle, as PIL / torchvision rotate
            rad = sign * math.radians(MAX_ROTATE_DEG * level)
            cos, sin = torch.cos(rad), torch.sin(rad)
            a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        elif name == "shear_x":
            a[:, 0, 1] = sign * MAX_SHEAR * level
        elif name == "shear_y":
            a[:, 1, 0] = sign * MAX_SHEAR * level
        else:  # translate the content by `shift` whole pixels: output p samples input p - shift
            axis, side = (0, w) if name == "translate_x" else (1, h)
            t[:, axis] = -sign * math.floor(MAX_TRANSLATE * level * side)
        return affine_warp(u, a, t)
    factor = 1.0 + sign * MAX_ENHANCE * level
    if name == "autocontrast":
        mn, mx = u.amin(dim=(2, 3), keepdim=True), u.amax(dim=(2, 3), keepdim=True)
        return torch.where(mx > mn, (u - mn) / (mx - mn).clamp_min(1e-12), u)
    if name == "equalize":
        return equalize(u)
    if name == "solarize":  # invert pixels above the threshold 1 - level (M = 0: none)
        return torch.where(u > 1.0 - level, 1.0 - u, u)
    if name == "posterize":  # keep 8 - round(4 level) bits of the 8-bit value (M = 0: unchanged)
        bits = 8 - round(4 * level)
        if bits >= 8:
            return u
        q = 2 ** (8 - bits)
        return torch.floor(torch.round(u * 255.0) / q) * q / 255.0
    if name == "brightness":
        return _blend(u, torch.zeros_like(u), factor)
    if name == "color":
        return _blend(u, _gray(u).expand_as(u), factor)
    if name == "contrast":
        return _blend(u, _gray(u).mean(dim=(1, 2, 3), keepdim=True).expand_as(u), factor)
    if name == "sharpness":
        return _blend(u, _sharpness_degenerate(u), factor)
    raise AssertionError(name)


RANDAUGMENT = Method(
    name="randaugment",
    kind="augmentation",
    build=RandAugment,
    summary="N random image ops per sample at one shared magnitude M (batched on the device)",
    paper="Cubuk, Zoph, Shlens & Le, RandAugment: Practical Automated Data Augmentation with a Reduced Search Space, NeurIPS 2020 (N = 2, M = 9 on the 0..30 scale)",
    url="https://arxiv.org/abs/1909.13719",
    params=(
        Param("num_ops", int, 2, "N: ops applied in sequence to every image", low=0, high=10),
        Param("magnitude", int, 9, "M on the paper's 0..30 scale (strength = M/30 of each op's maximum)", low=0, high=MAX_MAGNITUDE),
    ),
)


# ---------------------------------------------------------------------------------------------
# sla: Lee, Hwang & Shin, ICML 2020
# ---------------------------------------------------------------------------------------------

NUM_ROTATIONS = 4


def rotations(x: torch.Tensor) -> torch.Tensor:
    """[x rotated by 0, 90, 180, 270 degrees] stacked rotation-major: row r * B + i is rot90(x_i, r)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"sla rotates images by 90 degrees and needs square images, got {tuple(x.shape[-2:])}")
    return torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(NUM_ROTATIONS)])


class SLAModel(nn.Module):
    """The backbone with a joint (class, rotation) head: 4K logits in train mode, K in eval mode.

    Eval mode is the paper's aggregated inference (SLA+AG, Sec. 2.2): the input's four rotations
    go through the network and s_k = (1/4) sum_r z_(k, r)(rot_r(x)): each rotated copy votes with
    the joint logit of its own rotation; softmax(s) is the aggregated prediction. Joint label
    index = k * 4 + r. `get_classifier` exposes the inner head, so a loss may still swap it.
    """

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net = net
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        return get_classifier(self.net)

    def joint_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.net(x)
        b = x.shape[0]
        z = self.net(rotations(x)).view(NUM_ROTATIONS, b, self.num_classes, NUM_ROTATIONS)
        return torch.diagonal(z, dim1=0, dim2=3).mean(dim=-1)  # [B, K]: mean_r z[r, :, :, r]


class SelfSupervisedLabelAugmentation(Augmentation):
    """Train on the 4 rotations of every image against joint labels y * 4 + r (paper Sec. 2.2, SLA).

    Int targets become int joint labels; a soft row t [K] becomes, for rotation r, the row over
    4K joint labels with t_k at index k * 4 + r. The loss (built for 4K classes by the core,
    `label_multiplier = 4`) averages over the 4B rows, i.e. (1/4) sum_r CE per image as the
    paper's L_SLA. `prepare_model` replaces the head Linear(d, K) by Linear(d, 4K) and wraps the
    model for aggregated inference (SLAModel).
    """

    produces_soft_targets = False  # joint (class, rotation) labels are class indices

    label_multiplier = NUM_ROTATIONS

    def __init__(self, ctx: AugmentContext):
        self.num_classes = ctx.num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xr = rotations(x)
        if y.dtype.is_floating_point:
            b, k = y.shape
            joint = y.new_zeros(NUM_ROTATIONS, b, k, NUM_ROTATIONS)
            for r in range(NUM_ROTATIONS):
                joint[r, :, :, r] = y
            return xr, joint.view(NUM_ROTATIONS * b, k * NUM_ROTATIONS)
        r = torch.arange(NUM_ROTATIONS, device=y.device).repeat_interleave(y.shape[0])
        return xr, y.repeat(NUM_ROTATIONS) * NUM_ROTATIONS + r

    def prepare_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        head = get_classifier(model)
        if not isinstance(head, nn.Linear):
            raise HarnessError(f"sla needs a linear classifier head to widen to joint labels; {type(model).__name__} has {type(head).__name__}")
        joint = nn.Linear(head.in_features, num_classes * NUM_ROTATIONS, bias=head.bias is not None)
        joint.to(device=head.weight.device, dtype=head.weight.dtype)
        set_classifier(model, joint)
        return SLAModel(model, num_classes)


SLA = Method(
    name="sla",
    kind="augmentation",
    build=SelfSupervisedLabelAugmentation,
    summary="self-supervised label augmentation: joint (class, rotation) labels, aggregated over rotations at test time",
    paper="Lee, Hwang & Shin, Self-supervised Label Augmentation via Input Transformations, ICML 2020 (SLA+AG)",
    url="https://arxiv.org/abs/1910.05872",
)


# ---------------------------------------------------------------------------------------------
# sla_sd: Lee, Hwang & Shin, ICML 2020, Sec. 2.3 (self-distillation from the aggregation)
# ---------------------------------------------------------------------------------------------


def aggregate_rotations(joint: torch.Tensor, num_classes: int) -> torch.Tensor:
    """SLA's aggregated logits from the joint logits of the 4 rotated copies (rotation-major rows,
    joint label k * 4 + r): s_k = (1/4) sum_r z_(k, r)(rot_r x), [B, K]."""
    b = joint.shape[0] // NUM_ROTATIONS
    z = joint.view(NUM_ROTATIONS, b, num_classes, NUM_ROTATIONS)
    return torch.diagonal(z, dim1=0, dim2=3).mean(dim=-1)


class SLASelfDistillationModel(HeadedModel):
    """The backbone's features feed two heads: the joint (class, rotation) head of SLA (4K
    logits; `classifier`, so a loss may still swap it) and a single head `single` (K logits).
    Training forward: the joint logits, and `forward_heads` also gives the single head's logits
    as `single`. Eval forward: the single head on the input alone, the paper's SLA+SD inference
    (one pass, no rotations)."""

    def __init__(self, net: nn.Module, in_features: int, num_classes: int, bias: bool):
        super().__init__()
        self.net = net  # its own classifier is an Identity: it returns the features
        self.classifier = nn.Linear(in_features, num_classes * NUM_ROTATIONS, bias=bias)
        self.single = nn.Linear(in_features, num_classes, bias=bias)
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.net(x)
        return self.classifier(features), {"single": self.single(features)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net(x)
        return self.classifier(features) if self.training else self.single(features)


class SelfSupervisedLabelAugmentationSD(SelfSupervisedLabelAugmentation):
    """SLA+SD (paper Sec. 2.3; the authors' `create_sla_sd_trainer`): SLA's joint training (the
    entry's loss on the 4B rotated rows and their joint labels, as `sla`) plus a second classifier
    u on the same features, trained on the unrotated rows by
    beta CE(sigma(f(x); u), y) + T^2 KL(softmax(agg / T) || softmax(sigma(f(x); u) / T)),
    agg the aggregated SLA logits of the same step's four rotations, held constant. The authors'
    defaults: beta = 1, T = 1. At test time the single head predicts from the unrotated input
    alone (the paper's fast SLA+SD inference). Its model is `SLASelfDistillationModel`."""

    def __init__(self, ctx: AugmentContext, beta: float, temperature: float):
        super().__init__(ctx)
        self.beta, self.temperature = beta, temperature

    def prepare_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        head = get_classifier(model)
        if not isinstance(head, nn.Linear):
            raise HarnessError(f"sla_sd needs a linear classifier head to split into joint and single heads; {type(model).__name__} has {type(head).__name__}")
        set_classifier(model, nn.Identity())
        shaped = SLASelfDistillationModel(model, head.in_features, num_classes, head.bias is not None)
        return shaped.to(device=head.weight.device, dtype=head.weight.dtype)

    def extra_loss(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.distillation_loss(out.logits, out.heads["single"], batch.y)

    def distillation_loss(self, joint: torch.Tensor, single: torch.Tensor, joint_targets: torch.Tensor) -> torch.Tensor:
        """The single-head terms from the joint logits [4B, 4K], the single head's logits [4B, K]
        and the joint targets of the 4B rotation-major rows (rows 0..B-1 are unrotated)."""
        b = joint.shape[0] // NUM_ROTATIONS
        single = single[:b].float()
        if joint_targets.dtype.is_floating_point:  # soft joint rows: sum the rotations of each class
            targets = joint_targets[:b].float().view(b, self.num_classes, NUM_ROTATIONS).sum(dim=-1)
            ce = -(targets * F.log_softmax(single, dim=1)).sum(dim=1).mean()
        else:
            ce = F.cross_entropy(single, joint_targets[:b] // NUM_ROTATIONS)
        t = self.temperature
        aggregated = aggregate_rotations(joint.float(), self.num_classes).detach()
        kl = F.kl_div(F.log_softmax(single / t, dim=1), F.softmax(aggregated / t, dim=1), reduction="batchmean")
        return self.beta * ce + kl * t * t


SLA_SD = Method(
    name="sla_sd",
    kind="augmentation",
    build=SelfSupervisedLabelAugmentationSD,
    summary="SLA with self-distillation: a second head, distilled from the aggregated rotation predictions, predicts in one pass",
    paper="Lee, Hwang & Shin, Self-supervised Label Augmentation via Input Transformations, ICML 2020 (SLA+SD, Sec. 2.3)",
    url="https://arxiv.org/abs/1910.05872",
    params=(
        Param("beta", float, 1.0, "weight of the single head's cross-entropy (the authors' code: 1)", low=0.0),
        Param("temperature", float, 1.0, "temperature T of the distillation (the authors' default: 1)", low=1e-3),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (MIXUP, CUTMIX, RANKMIXUP, DECOUPLED_MIXUP, RANDAUGMENT, SLA, SLA_SD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
