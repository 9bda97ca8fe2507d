"""Built-in test-time adaptation methods (kind `tta`), one section per method.

`adapt(model, ctx)` returns an `Adapter`: `adapter(x)` takes one normalised test batch, returns
its logits and may update itself (online, batch by batch); `adapter.reset()` restores the state
the adapter started from exactly (weights, normalisation statistics, optimiser, EMA teachers,
moving averages). The adapter works on its own deep copy of the model: the caller's source
model is never modified, so one source model serves any number of streams.

Normalisation: every method except `source` normalises with the statistics of the current test
batch (BatchNorm in "train mode" without updating running statistics), as the published code of
Tent, EATA, SAR, CoTTA and RMT does (`_BatchStatsNorm`; `bn_adapt` may mix in the source
statistics with a prior N). With batch size 1 on a conv net this reduces to per-image (instance)
statistics over the spatial positions.

Learning rates are the papers' values for their reference setting; they are hyper-parameters, so
`tent.lr=...` sweeps them. Entropy thresholds are written as a fraction of ln K (K classes), as
the papers define them (E0 = 0.4 ln 1000 for ImageNet).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds import AdaptContext, Adapter, Method, TestTimeAdaptation
from harness.params import Param

# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy H(p) = -sum_k p_k log p_k of softmax(logits) [B]."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class _BatchStatsNorm(nn.Module):
    """A BatchNorm layer that normalises with the current batch's statistics (differentiably).

    With `prior` N > 0 the statistics are Schneider et al.'s mixture
    mu = N/(N+n) mu_source + n/(N+n) mu_batch (likewise the variance), n the batch size.
    Affine weight and bias stay the source layer's parameters (Tent adapts them).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, prior: float = 0.0):
        super().__init__()
        self.eps = bn.eps
        self.prior = float(prior)
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("source_mean", bn.running_mean.detach().clone() if bn.running_mean is not None else None)
        self.register_buffer("source_var", bn.running_var.detach().clone() if bn.running_var is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(x.ndim) if d != 1]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        if self.prior > 0 and self.source_mean is not None:
            n = x.shape[0]
            a = self.prior / (self.prior + n)
            mean = a * self.source_mean + (1 - a) * mean
            var = a * self.source_var + (1 - a) * var
        shape = [1, -1] + [1] * (x.ndim - 2)
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def use_batch_statistics(model: nn.Module, prior: float = 0.0) -> nn.Module:
    """Replace every BatchNorm layer of `model` (in place) by `_BatchStatsNorm`; returns the model."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, _BatchStatsNorm(child, prior))
    return model


def norm_affine_params(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of every normalisation layer (what Tent, EATA and SAR adapt)."""
    params = []
    for m in model.modules():
        if isinstance(m, (_BatchStatsNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            params += [p for p in (m.weight, m.bias) if p is not None]
    return params


def _optimizer(params: list[nn.Parameter], name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


class _Stateful(Adapter):
    """An adapter over its own copy of a model; `reset()` restores every registered state exactly.

    Subclasses put the modules they own in `self.modules` and their optimiser (if any) in
    `self.optimizer`, then call `self._snapshot()`; extra Python state is reset in `_reset_extra`.
    """

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer | None = None

    def _snapshot(self) -> None:
        self._initial = {k: copy.deepcopy(m.state_dict()) for k, m in self.modules.items()}
        self._initial_opt = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None

    def reset(self) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(self._initial[k])
        if self.optimizer is not None:
            self.optimizer.state.clear()
            self.optimizer.load_state_dict(copy.deepcopy(self._initial_opt))
        self._reset_extra()

    def _reset_extra(self) -> None:
        pass


def _prepare(model: nn.Module, prior: float = 0.0) -> nn.Module:
    """A deep copy of `model` with batch-statistics normalisation, all parameters frozen, in train mode.

    (Train mode so that dropout-free nets behave as their papers' code; `_BatchStatsNorm` ignores
    the mode. Methods unfreeze what they adapt.)"""
    model = use_batch_statistics(copy.deepcopy(model), prior)
    model.requires_grad_(False)
    return model.train()


# ---------------------------------------------------------------------------------------------
# source: no adaptation
# ---------------------------------------------------------------------------------------------


class SourceAdapter(_Stateful):
    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval()
        self.modules = {"model": self.model}
        self._snapshot()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Source(TestTimeAdaptation):
    """The unadapted source model in eval mode (source BatchNorm statistics)."""

    def __init__(self, ctx: AdaptContext):
        self.ctx = ctx

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return SourceAdapter(model)


SOURCE = Method(
    name="source",
    kind="tta",
    build=Source,
    summary="no adaptation: the source model as trained, BatchNorm with its training statistics",
    paper="the baseline of every TTA paper (e.g. Wang et al., Tent, ICLR 2021, Table 2 'Source')",
)


# ---------------------------------------------------------------------------------------------
# bn_adapt: test-batch normalisation statistics
# ---------------------------------------------------------------------------------------------


class BNAdapter(_Stateful):
    def __init__(self, model: nn.Module, prior: float):
        self.model = _prepare(model, prior).eval()
        self.modules = {"model": self.model}
        self._snapshot()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class BNAdapt(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, prior: float):
        self.prior = prior

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return BNAdapter(model, self.prior)


BN_ADAPT = Method(
    name="bn_adapt",
    kind="tta",
    build=BNAdapt,
    summary="re-estimate BatchNorm statistics on each test batch (optionally mixed with the source statistics, prior N)",
    paper=(
        "Schneider et al., Improving robustness against common corruptions by covariate shift adaptation, NeurIPS 2020; "
        "Nado et al., Evaluating Prediction-Time Batch Normalization for Robustness under Covariate Shift, arXiv:2006.10963, 2020"
    ),
    url="https://arxiv.org/abs/2006.16971",
    params=(Param("prior", float, 0.0, "N: weight of the source statistics in pseudo-samples (0 = test-batch statistics only)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# tent: entropy minimisation of the normalisation affine parameters
# ---------------------------------------------------------------------------------------------


class TentAdapter(_Stateful):
    """Wang et al. 2021, Alg. 1: forward with batch statistics, predict, then one (or `steps`) gradient
    step(s) on the mean prediction entropy w.r.t. the BN affine parameters only. The returned
    logits are those of the forward pass before the update (as in the published code)."""

    def __init__(self, model: nn.Module, optimizer: str, lr: float, steps: int):
        self.model = _prepare(model)
        self.params = norm_affine_params(self.model)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = _optimizer(self.params, optimizer, lr)
        self.steps = steps
        self.modules = {"model": self.model}
        self._snapshot()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for _ in range(self.steps):
            with torch.enable_grad():
                logits = self.model(x)
                loss = softmax_entropy(logits).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            out = logits.detach() if out is None else out
        return out


class Tent(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, optimizer: str, lr: float, steps: int):
        self.optimizer, self.lr, self.steps = optimizer, lr, steps

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return TentAdapter(model, self.optimizer, self.lr, self.steps)


_OPT = Param("optimizer", str, "adam", "adam or sgd (momentum 0.9)", choices=("adam", "sgd"))

TENT = Method(
    name="tent",
    kind="tta",
    build=Tent,
    summary="entropy minimisation of BatchNorm affine parameters with test-batch statistics, one step per batch",
    paper="Wang, Shelhamer, Liu, Olshausen & Darrell, Tent: Fully Test-Time Adaptation by Entropy Minimization, ICLR 2021",
    url="https://arxiv.org/abs/2006.10726",
    params=(
        Param("optimizer", str, "adam", "adam (the paper's CIFAR setting) or sgd momentum 0.9 (its ImageNet setting)", choices=("adam", "sgd")),
        Param("lr", float, 1e-3, "learning rate (paper: Adam 1e-3 on CIFAR, batch 128)", low=0.0),
        Param("steps", int, 1, "gradient steps per test batch", low=1),
    ),
)


# ---------------------------------------------------------------------------------------------
# eata: reliable and non-redundant entropy minimisation (+ optional Fisher anti-forgetting)
# ---------------------------------------------------------------------------------------------


class EATAAdapter(_Stateful):
    """Niu et al. 2022, Eq. 3-9 and their code (`forward_and_adapt_eata`).

    1. reliability: keep samples with entropy H < E0 = e_margin * ln K;
    2. redundancy: of those, keep samples whose softmax has |cos| < d_margin with the moving
       average m of the model's predictions (m <- 0.9 m + 0.1 mean(p) over the kept samples);
    3. re-weight each kept sample's entropy by 1 / exp(H - E0) and take one SGD step on the mean;
    4. optional anti-forgetting (EATA, not ETA): + fisher_alpha * sum F (theta - theta_0)^2 with the
       diagonal Fisher F estimated on `fisher_batches` of in-distribution data -- it needs source
       data, which `AdaptContext` does not offer, so the suite runs ETA (fisher_alpha = 0) unless a
       Fisher is given through `set_fisher`. Documented on the suite card.
    """

    def __init__(self, model: nn.Module, num_classes: int, lr: float, e_margin: float, d_margin: float, fisher_alpha: float):
        self.model = _prepare(model)
        self.params = norm_affine_params(self.model)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = _optimizer(self.params, "sgd", lr)
        self.e0 = e_margin * math.log(num_classes)
        self.d_margin = d_margin
        self.fisher_alpha = fisher_alpha
        self.fisher: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.modules = {"model": self.model}
        self.probs: torch.Tensor | None = None
        self.last_selected = torch.zeros(0, dtype=torch.bool)
        self._snapshot()

    def _reset_extra(self) -> None:
        self.probs = None

    def set_fisher(self, fisher: list[torch.Tensor]) -> None:
        """Diagonal Fisher per adapted parameter (same order as `self.params`); anchors at the current values."""
        self.fisher = {i: (f.detach(), p.detach().clone()) for i, (f, p) in enumerate(zip(fisher, self.params))}

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean mask of samples used for the update and the entropies; updates the moving average."""
        ent = softmax_entropy(logits)
        reliable = ent < self.e0
        keep = reliable.clone()
        probs = logits.softmax(1).detach()
        if self.probs is not None and reliable.any():
            cos = F.cosine_similarity(self.probs.unsqueeze(0), probs[reliable], dim=1)
            keep[reliable.nonzero().flatten()] = cos.abs() < self.d_margin
        if keep.any():
            mean = probs[keep].mean(0)
            self.probs = mean if self.probs is None else 0.9 * self.probs + 0.1 * mean
        return keep, ent

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model(x)
            keep, ent = self.select(logits)
            self.last_selected = keep
            if keep.any():
                e = ent[keep]
                loss = (e * torch.exp(-(e.detach() - self.e0))).mean()
                if self.fisher_alpha > 0 and self.fisher:
                    loss = loss + self.fisher_alpha * sum((f * (self.params[i] - p0) ** 2).sum() for i, (f, p0) in self.fisher.items())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return logits.detach()


class EATA(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, lr: float, e_margin: float, d_margin: float, fisher_alpha: float):
        self.lr, self.e_margin, self.d_margin, self.fisher_alpha = lr, e_margin, d_margin, fisher_alpha

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return EATAAdapter(model, ctx.num_classes, self.lr, self.e_margin, self.d_margin, self.fisher_alpha)


EATA_METHOD = Method(
    name="eata",
    kind="tta",
    build=EATA,
    summary="entropy minimisation on reliable (H < 0.4 ln K), non-redundant samples, re-weighted by 1/exp(H - E0)",
    paper="Niu, Wu, Zhang, Chen, Zheng, Zhao & Tan, Efficient Test-Time Model Adaptation without Forgetting, ICML 2022",
    url="https://arxiv.org/abs/2204.02610",
    params=(
        Param("lr", float, 2.5e-4, "SGD (momentum 0.9) learning rate; paper: 0.00025 for batch 64", low=0.0),
        Param("e_margin", float, 0.4, "entropy threshold E0 as a fraction of ln K", low=0.0),
        Param("d_margin", float, 0.05, "cosine-similarity threshold of the redundancy filter (paper: 0.05 ImageNet, 0.4 CIFAR)", low=0.0),
        Param("fisher_alpha", float, 0.0, "weight of the Fisher regulariser (needs source data: 0 = ETA)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# sar: sharpness-aware, reliable entropy minimisation with model recovery
# ---------------------------------------------------------------------------------------------


class SARAdapter(_Stateful):
    """Niu et al. 2023, Alg. 1 and their code (`forward_and_adapt_sar`).

    Keep samples with entropy < E0 = e_margin * ln K; SAM (rho 0.05): ascend to
    theta + rho g/||g||, recompute entropies there, keep those (of the first selection) still
    < E0, descend from theta with that gradient (SGD momentum 0.9). An EMA of the second loss
    (0.9 old + 0.1 new) below `reset_constant` (0.2) restores the source model and optimiser.
    Returns the logits of the first forward pass.
    """

    def __init__(self, model: nn.Module, num_classes: int, lr: float, rho: float, e_margin: float, reset_constant: float):
        self.model = _prepare(model)
        self.params = norm_affine_params(self.model)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = _optimizer(self.params, "sgd", lr)
        self.rho, self.e0, self.reset_constant = rho, e_margin * math.log(num_classes), reset_constant
        self.modules = {"model": self.model}
        self.ema: float | None = None
        self.recoveries = 0
        self._snapshot()

    def _reset_extra(self) -> None:
        self.ema = None

    def facts(self) -> dict[str, int]:
        return {"recoveries": self.recoveries}

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        return softmax_entropy(logits) < self.e0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model(x)
            ent = softmax_entropy(logits)
            keep = ent < self.e0
            if keep.any():
                self.optimizer.zero_grad(set_to_none=True)
                ent[keep].mean().backward()
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
                norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
                eps = [g * (self.rho / (norm + 1e-12)) for g in grads]
                with torch.no_grad():
                    for p, e in zip(self.params, eps):
                        p.add_(e)
                self.optimizer.zero_grad(set_to_none=True)
                ent2 = softmax_entropy(self.model(x))[keep]
                keep2 = ent2 < self.e0
                second = ent2[keep2].mean() if keep2.any() else None
                if second is not None:
                    second.backward()
                with torch.no_grad():
                    for p, e in zip(self.params, eps):
                        p.sub_(e)  # back to theta before the SAM ascent
                if second is not None and torch.isfinite(second):
                    self.optimizer.step()
                    value = float(second.detach())
                    self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
                    if self.ema < self.reset_constant:
                        self.recoveries += 1
                        self.reset()
        return logits.detach()


class SAR(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, lr: float, rho: float, e_margin: float, reset_constant: float):
        self.lr, self.rho, self.e_margin, self.reset_constant = lr, rho, e_margin, reset_constant

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return SARAdapter(model, ctx.num_classes, self.lr, self.rho, self.e_margin, self.reset_constant)


SAR_METHOD = Method(
    name="sar",
    kind="tta",
    build=SAR,
    summary="sharpness-aware entropy minimisation on reliable samples (H < 0.4 ln K) with model recovery",
    paper="Niu, Wu, Zhang, Wen, Chen, Zhao & Tan, Towards Stable Test-Time Adaptation in Dynamic Wild World, ICLR 2023",
    url="https://arxiv.org/abs/2302.12400",
    params=(
        Param("lr", float, 2.5e-4, "SGD (momentum 0.9) learning rate; paper: 0.00025 for batch 64 BN models", low=0.0),
        Param("rho", float, 0.05, "SAM neighbourhood radius", low=0.0),
        Param("e_margin", float, 0.4, "entropy threshold E0 as a fraction of ln K", low=0.0),
        Param("reset_constant", float, 0.2, "recover the source model when the EMA of the entropy loss falls below this", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# mean-teacher helpers (rmt, cotta)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def _trainable_all(model: nn.Module) -> list[nn.Parameter]:
    model.requires_grad_(True)
    return list(model.parameters())


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CoTTA's test-time augmentation, batched, for normalised images: random affine (rotation
    +-15 deg, translation +-1/16, scale 0.9-1.1, bilinear), Gaussian noise (std 0.005 of the
    range), contrast/brightness jitter. (CoTTA also flips horizontally and blurs; a flip changes
    a digit's meaning, so it is left out.)"""
    b = x.shape[0]
    dev = x.device
    ang = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.pi / 12
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator, device=dev)
    shift = (torch.rand(b, 2, generator=generator, device=dev) * 2 - 1) / 8  # 1/16 of the side, in [-1, 1] units
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator, device=dev)
    bright = (torch.rand(b, 1, 1, 1, generator=generator, device=dev) * 2 - 1) * 0.2
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + bright
    return out + 0.005 * torch.randn(out.shape, generator=generator, device=dev)


def symmetric_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RMT Eq. 2: -0.5 sum_k [q_k log p_k + p_k log q_k], p = softmax(student), q = softmax(teacher) [B]."""
    return -0.5 * (teacher.softmax(1) * student.log_softmax(1)).sum(1) - 0.5 * (student.softmax(1) * teacher.log_softmax(1)).sum(1)


# ---------------------------------------------------------------------------------------------
# rmt: robust mean teacher
# ---------------------------------------------------------------------------------------------


class RMTAdapter(_Stateful):
    """Döbler, Marsden & Yang 2023 (RMT), the mean-teacher core.

    Student and EMA teacher (momentum 0.999) both normalise with test-batch statistics. Loss:
    symmetric cross-entropy between student and teacher predictions on the test batch (Eq. 2),
    one Adam step on all student parameters, then the teacher EMA update. Prediction: the sum of
    student and teacher logits (their code's ensemble). Not implemented: the source-prototype
    contrastive loss, source replay and the source warm-up (they need source data at test time).
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float):
        self.student = _prepare(model)
        self.teacher = _prepare(model)
        self.optimizer = _optimizer(_trainable_all(self.student), "adam", lr)
        self.momentum = momentum
        self.modules = {"student": self.student, "teacher": self.teacher}
        self._snapshot()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            s = self.student(x)
            with torch.no_grad():
                t = self.teacher(x)
            loss = symmetric_cross_entropy(s, t).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        ema_update(self.teacher, self.student, self.momentum)
        return (s.detach() + t).detach()


class RMT(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, lr: float, momentum: float):
        self.lr, self.momentum = lr, momentum

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return RMTAdapter(model, self.lr, self.momentum)


RMT_METHOD = Method(
    name="rmt",
    kind="tta",
    build=RMT,
    summary="robust mean teacher: symmetric cross-entropy to an EMA teacher (consistency core; no source replay/contrastive terms)",
    paper="Döbler, Marsden & Yang, Robust Mean Teacher for Continual and Gradual Test-Time Adaptation, CVPR 2023",
    url="https://arxiv.org/abs/2211.13081",
    params=(
        Param("lr", float, 1e-3, "Adam learning rate on all student parameters", low=0.0),
        Param("momentum", float, 0.999, "EMA momentum of the teacher", low=0.0, high=1.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# cotta: continual test-time adaptation
# ---------------------------------------------------------------------------------------------


class CoTTAAdapter(_Stateful):
    """Wang, Fink, Van Gool & Dai 2022 (CoTTA), Sec. 3 and their code.

    Teacher = EMA of the student (momentum 0.999). Pseudo-label: the teacher's prediction, or,
    when the frozen source (anchor) model's mean max-probability on the batch is below `ap`
    (CIFAR-10: 0.92), the mean of the teacher's softmax over `n_aug` augmented copies (32).
    Loss: cross-entropy of the student against the soft pseudo-label; one Adam step on all
    student parameters; teacher EMA; stochastic restoration: every student weight element is
    reset to its source value with probability `rst` (0.01). Returns the teacher's prediction.
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float, rst: float, ap: float, n_aug: int, seed: int = 0):
        self.student = _prepare(model)
        self.teacher = _prepare(model)
        self.anchor = _prepare(model)
        self.source_state = copy.deepcopy(self.student.state_dict())
        self.optimizer = _optimizer(_trainable_all(self.student), "adam", lr)
        self.momentum, self.rst, self.ap, self.n_aug = momentum, rst, ap, n_aug
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.modules = {"student": self.student, "teacher": self.teacher}
        self._snapshot()

    def _reset_extra(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def _gen(self, device: torch.device) -> torch.Generator:
        if self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    @torch.no_grad()
    def restore(self) -> None:
        """Stochastic restoration: each element of each student parameter back to source w.p. rst."""
        if self.rst <= 0:
            return
        for name, p in self.student.named_parameters():
            mask = torch.rand(p.shape, generator=self._gen(p.device), device=p.device) < self.rst
            p.copy_(torch.where(mask, self.source_state[name].to(p.device), p))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            anchor_conf = self.anchor(x).softmax(1).max(1).values.mean()
            teacher_logits = self.teacher(x)
            if anchor_conf < self.ap and self.n_aug > 0:
                gen = self._gen(x.device)
                target = torch.stack([self.teacher(_augment(x, gen)).softmax(1) for _ in range(self.n_aug)]).mean(0)
            else:
                target = teacher_logits.softmax(1)
        with torch.enable_grad():
            s = self.student(x)
            loss = -(target * s.log_softmax(1)).sum(1).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        ema_update(self.teacher, self.student, self.momentum)
        self.restore()
        return teacher_logits


class CoTTA(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, lr: float, momentum: float, rst: float, ap: float, n_aug: int):
        self.lr, self.momentum, self.rst, self.ap, self.n_aug = lr, momentum, rst, ap, n_aug

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return CoTTAAdapter(model, self.lr, self.momentum, self.rst, self.ap, self.n_aug)


COTTA = Method(
    name="cotta",
    kind="tta",
    build=CoTTA,
    summary="weight-averaged teacher, augmentation-averaged pseudo-labels when confidence is low, stochastic restoration",
    paper="Wang, Fink, Van Gool & Dai, Continual Test-Time Domain Adaptation, CVPR 2022",
    url="https://arxiv.org/abs/2203.13591",
    params=(
        Param("lr", float, 1e-3, "Adam learning rate on all student parameters (paper, CIFAR-10-C)", low=0.0),
        Param("momentum", float, 0.999, "EMA momentum of the teacher", low=0.0, high=1.0),
        Param("rst", float, 0.01, "stochastic restoration probability per weight element", low=0.0, high=1.0),
        Param("ap", float, 0.92, "anchor-confidence threshold below which pseudo-labels are augmentation-averaged", low=0.0, high=1.0),
        Param("n_aug", int, 32, "augmented copies for the averaged pseudo-label", low=0),
    ),
    # 32 augmented forward passes per test batch: the rest of the OOD grid fits in minutes, CoTTA does not
    default_grid=False,
    default_grid_note="about 9 minutes a run on 2 CPU cores; run it with method=cotta",
)


# ---------------------------------------------------------------------------------------------
# tent_filtered: confidence-based filtering (wisdom of crowds)
# ---------------------------------------------------------------------------------------------


class TentFilteredAdapter(_Stateful):
    """Lee, Jung, Lee & Yoon 2023, Sec. 4 and their code: entropy minimisation that drops samples
    whose confidence fell through adaptation.

    For each sample the adapter remembers the max softmax probability the *source* model gave it
    (the model before any adaptation, computed alongside with the same batch statistics). After
    the current model's forward pass, samples whose confidence on their source-predicted class
    dropped (p_t[y_hat_0] < p_0[y_hat_0]) are excluded from the entropy loss; the others are
    minimised as in Tent. Noisy (e.g. open-set) samples tend to lose confidence while
    adaptation proceeds, so the crowd of confident samples steers the update.
    Returns the logits of the current model's forward pass (before the update).
    """

    def __init__(self, model: nn.Module, optimizer: str, lr: float):
        self.model = _prepare(model)
        self.initial = _prepare(model)
        self.params = norm_affine_params(self.model)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = _optimizer(self.params, optimizer, lr)
        self.modules = {"model": self.model}
        self.last_selected = torch.zeros(0, dtype=torch.bool)
        self._snapshot()

    @staticmethod
    def select(logits_now: torch.Tensor, logits_initial: torch.Tensor) -> torch.Tensor:
        """Keep samples whose probability of the initially predicted class did not drop."""
        p0 = logits_initial.softmax(1)
        pred0 = p0.argmax(1, keepdim=True)
        conf0 = p0.gather(1, pred0).squeeze(1)
        conf_now = logits_now.softmax(1).gather(1, pred0).squeeze(1)
        return conf_now >= conf0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            initial = self.initial(x)
        with torch.enable_grad():
            logits = self.model(x)
            keep = self.select(logits.detach(), initial)
            self.last_selected = keep
            if keep.any():
                loss = softmax_entropy(logits[keep]).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return logits.detach()


class TentFiltered(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, optimizer: str, lr: float):
        self.optimizer, self.lr = optimizer, lr

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return TentFilteredAdapter(model, self.optimizer, self.lr)


TENT_FILTERED = Method(
    name="tent_filtered",
    kind="tta",
    build=TentFiltered,
    summary="Tent that excludes samples whose confidence dropped relative to the source model (wisdom of crowds)",
    paper="Lee, Jung, Lee & Yoon, Towards Open-Set Test-Time Adaptation Utilizing the Wisdom of Crowds in Entropy Minimization, ICCV 2023",
    url="https://arxiv.org/abs/2308.06879",
    params=(
        Param("optimizer", str, "adam", "adam or sgd (momentum 0.9)", choices=("adam", "sgd")),
        Param("lr", float, 1e-3, "learning rate (as Tent)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (SOURCE, BN_ADAPT, TENT, EATA_METHOD, SAR_METHOD, RMT_METHOD, COTTA, TENT_FILTERED)


def iter_methods() -> Iterator[Method]:
    yield from METHODS


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
