"""Built-in machine-unlearning methods (kind `unlearning`), one section per method.

Interface (harness.kinds.Unlearning): `unlearn(model, forget, retain, ctx) -> model`, where
`forget` and `retain` are `(x, y)` pairs with `x` **normalised float32 images** [N, C, H, W]
(the training split's per-channel mean/std, already applied) and `y` int64 labels [N], both on
`ctx.device`; `model` is a copy of the original model (already on `ctx.device`), which a method
may update in place and return. `ctx.lr` is the learning rate to use (the suite searches it),
`ctx.epochs` the epoch budget, `ctx.batch_size` the batch size. Randomness (batch order, random
labels) is drawn from a generator seeded with `ctx.seed` when the context has one (the
unlearning suite's context does), else 0.

Every method optimises with SGD (momentum 0.9, weight decay 5e-4 added to the gradient before
any mask, constant learning rate): the optimiser of SalUn's public code, so methods differ only
in what they optimise. Each declares a hyper-parameter `lr`: the centre of the suite's equal
3-point learning-rate search (lr/3, lr, 3 lr); the suite passes the candidate as `ctx.lr`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds import Method, UnlearnContext, Unlearning
from harness.params import Param

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4

Pair = tuple[torch.Tensor, torch.Tensor]

# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def _generator(ctx: UnlearnContext) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(ctx.seed))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches over range(n); a trailing batch of one is dropped (BatchNorm)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        index = perm[start : start + batch_size]
        if len(index) >= 2 or n == 1:
            yield index


class _Stepper:
    """SGD(momentum 0.9) with weight decay added to the gradient, then an optional 0/1 mask.

    Adding the decay before masking (instead of inside the optimiser) is what makes a masked
    update leave unmasked weights exactly unchanged.
    """

    def __init__(self, model: nn.Module, lr: float, mask: dict[str, torch.Tensor] | None = None, weight_decay: float = WEIGHT_DECAY):
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.mask = mask
        self.weight_decay = weight_decay
        self.opt = torch.optim.SGD([p for _, p in self.params], lr=lr, momentum=MOMENTUM)

    def step(self, loss: torch.Tensor) -> float:
        if not torch.isfinite(loss):
            from harness.errors import RunDiverged

            raise RunDiverged(f"unlearning loss became {float(loss)}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for name, p in self.params:
                if p.grad is None:
                    continue
                if self.weight_decay:
                    p.grad.add_(p, alpha=self.weight_decay)
                if self.mask is not None:
                    p.grad.mul_(self.mask[name])
        self.opt.step()
        return float(loss.detach())


def _fit(
    model: nn.Module, data: Pair, ctx: UnlearnContext, loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor],
    *, mask: dict[str, torch.Tensor] | None = None, generator: torch.Generator | None = None,
) -> nn.Module:
    """ctx.epochs passes over `data`, minimising `loss_fn(model, xb, yb, epoch)` batch by batch."""
    x, y = data
    generator = generator or _generator(ctx)
    stepper = _Stepper(model, ctx.lr, mask)
    model.train()
    for epoch in range(ctx.epochs):
        for index in _batches(len(y), ctx.batch_size, generator):
            index = index.to(x.device)
            stepper.step(loss_fn(model, x[index], y[index], epoch))
    return model


def _concat(*pairs: Pair) -> Pair:
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def _frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def random_other_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly from the K-1 classes other than each true label."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


# ---------------------------------------------------------------------------------------------
# retrain: the gold standard (reference row)
# ---------------------------------------------------------------------------------------------


class Retrain(Unlearning):
    """Retraining from scratch on the retain set: exact unlearning, the reference every gap is measured to.

    Inside the unlearning suite the retrained model is trained once per (data, model, seed,
    forget set) and handed over as `ctx.retrained`; this method returns a copy of it, so its gap
    is 0 by construction (`is_reference`). Without it (another caller), it re-initialises the
    model and trains it on the retain set with cross-entropy for ctx.epochs at ctx.lr.
    """

    is_reference = True
    lr_search = False

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        retrained = ctx.retrained
        if retrained is not None:
            return copy.deepcopy(retrained)
        torch.manual_seed(int(ctx.seed))
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return _fit(model, retain, ctx, lambda m, xb, yb, e: F.cross_entropy(m(xb), yb))


# Each build below takes `lr` without using it: a method reads its learning rate from `ctx.lr` (the suite searches it).


def _retrain(ctx: UnlearnContext, lr: float) -> Retrain:
    return Retrain()


RETRAIN = Method(
    name="retrain",
    kind="unlearning",
    build=_retrain,
    summary="retrain from scratch on the retain set: the exact-unlearning gold standard (reference row, gap 0)",
    paper="Cao & Yang, Towards Making Systems Forget with Machine Unlearning, IEEE S&P 2015; Bourtoule et al., Machine Unlearning, IEEE S&P 2021",
    url="https://arxiv.org/abs/1912.03817",
    params=(Param("lr", float, 0.05, "learning rate when it must train itself (no search: it is the reference)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# finetune: fine-tune on the retain set (catastrophic forgetting of the forget set)
# ---------------------------------------------------------------------------------------------


class FineTune(Unlearning):
    """Minimise cross-entropy on the retain set only; the forget set is never looked at."""

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        return _fit(model, retain, ctx, lambda m, xb, yb, e: F.cross_entropy(m(xb), yb))


def _finetune(ctx: UnlearnContext, lr: float) -> FineTune:
    return FineTune()


FINETUNE = Method(
    name="finetune",
    kind="unlearning",
    build=_finetune,
    summary="fine-tune on the retain set with cross-entropy (forgetting by catastrophic interference)",
    paper="Warnecke et al., Machine Unlearning of Features and Labels, NDSS 2023; Golatkar et al., Eternal Sunshine of the Spotless Net, CVPR 2020",
    url="https://arxiv.org/abs/2108.11577",
    params=(Param("lr", float, 0.03, "centre of the suite's 3-point lr search", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# ga: gradient ascent on the forget set
# ---------------------------------------------------------------------------------------------


class GradientAscent(Unlearning):
    """Maximise cross-entropy on the forget set: minimise -CE(f(x_f), y_f); retain data unused."""

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        return _fit(model, forget, ctx, lambda m, xb, yb, e: -F.cross_entropy(m(xb), yb))


def _gradient_ascent(ctx: UnlearnContext, lr: float) -> GradientAscent:
    return GradientAscent()


GA = Method(
    name="ga",
    kind="unlearning",
    build=_gradient_ascent,
    summary="gradient ascent on the forget set's cross-entropy",
    paper="Thudi et al., Unrolling SGD: Understanding Factors Influencing Machine Unlearning, IEEE EuroS&P 2022",
    url="https://arxiv.org/abs/2109.13398",
    params=(Param("lr", float, 1e-3, "centre of the suite's 3-point lr search", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# rl: random labels on the forget set (+ retain), SalUn's RL baseline
# ---------------------------------------------------------------------------------------------


def _random_label_fit(model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext, mask: dict[str, torch.Tensor] | None) -> nn.Module:
    generator = _generator(ctx)
    relabelled = (forget[0], random_other_labels(forget[1], ctx.num_classes, generator))
    data = _concat(relabelled, retain)
    return _fit(model, data, ctx, lambda m, xb, yb, e: F.cross_entropy(m(xb), yb), mask=mask, generator=generator)


class RandomLabels(Unlearning):
    """Fine-tune on the forget set relabelled at random (once, each label != the true one) together with the retain set.

    SalUn's RL code draws the random label uniformly over all K classes; drawing among the K-1
    wrong ones (as Amnesiac ML does) guarantees every forget sample gets a wrong label.
    """

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        return _random_label_fit(model, forget, retain, ctx, mask=None)


def _random_labels(ctx: UnlearnContext, lr: float) -> RandomLabels:
    return RandomLabels()


RL = Method(
    name="rl",
    kind="unlearning",
    build=_random_labels,
    summary="fine-tune on forget samples relabelled at random (wrong labels) mixed with the retain set",
    paper="Golatkar et al., Eternal Sunshine of the Spotless Net, CVPR 2020; Graves et al., Amnesiac Machine Learning, AAAI 2021 (SalUn's RL baseline)",
    url="https://arxiv.org/abs/2010.10981",
    params=(Param("lr", float, 0.01, "centre of the suite's 3-point lr search", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# l1_sparse: fine-tune with an L1 penalty (Jia et al. 2023)
# ---------------------------------------------------------------------------------------------


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """||theta||_1 over every trainable parameter (the reference code's l1_regularization)."""
    return torch.cat([p.reshape(-1) for p in model.parameters() if p.requires_grad]).abs().sum()


def l1_gamma(gamma: float, epoch: int, epochs: int) -> float:
    """Linearly decaying penalty weight: gamma * (1 - epoch / epochs), epoch 0-based (reference code)."""
    return gamma * (1.0 - epoch / max(1, epochs))


class L1Sparse(Unlearning):
    """Minimise CE(retain) + gamma_t * ||theta||_1 with gamma_t = gamma (1 - t/T) (Jia et al. 2023, Eq. 5 and code)."""

    def __init__(self, gamma: float):
        self.gamma = gamma

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        def loss(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> torch.Tensor:
            return F.cross_entropy(m(xb), yb) + l1_gamma(self.gamma, epoch, ctx.epochs) * l1_penalty(m)

        return _fit(model, retain, ctx, loss)


def _l1_sparse(ctx: UnlearnContext, lr: float, gamma: float) -> L1Sparse:
    return L1Sparse(gamma)


L1_SPARSE = Method(
    name="l1_sparse",
    kind="unlearning",
    build=_l1_sparse,
    summary="fine-tune on the retain set with a linearly decaying L1 sparsity penalty on the weights",
    paper="Jia et al., Model Sparsity Can Simplify Machine Unlearning, NeurIPS 2023",
    url="https://arxiv.org/abs/2304.04934",
    params=(
        Param("lr", float, 0.03, "centre of the suite's 3-point lr search", low=0.0),
        Param("gamma", float, 5e-4, "initial L1 weight, decayed linearly to 0 over the epochs (reference: 5e-4)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# salun: saliency-masked random labelling (Fan et al. 2024)
# ---------------------------------------------------------------------------------------------


def saliency_mask(model: nn.Module, forget: Pair, ctx: UnlearnContext, fraction: float) -> dict[str, torch.Tensor]:
    """0/1 mask keeping the `fraction` of all weights with the largest |d CE(forget) / d theta|.

    The gradient of the forget loss is accumulated over the forget set in eval mode (SalUn's
    generate_mask.py); the threshold is global over every parameter tensor and keeps exactly
    floor(fraction * #weights) entries (ties broken by topk).
    """
    x, y = forget
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    grads = {n: torch.zeros_like(p) for n, p in params}
    for start in range(0, len(y), ctx.batch_size):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[start : start + ctx.batch_size]), y[start : start + ctx.batch_size], reduction="sum")
        loss.backward()
        for n, p in params:
            if p.grad is not None:
                grads[n] += p.grad.detach()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    flat = torch.cat([g.abs().reshape(-1) for g in grads.values()])
    k = int(fraction * flat.numel())
    keep = torch.zeros_like(flat)
    if k > 0:
        keep[torch.topk(flat, k).indices] = 1.0
    mask, offset = {}, 0
    for n, g in grads.items():
        mask[n] = keep[offset : offset + g.numel()].view_as(g)
        offset += g.numel()
    return mask


class SalUn(Unlearning):
    """Weight saliency mask from the forget-loss gradient (top `fraction` by magnitude), then
    random-label fine-tuning (forget relabelled + retain) that updates only the masked weights."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        mask = saliency_mask(model, forget, ctx, self.fraction)
        return _random_label_fit(model, forget, retain, ctx, mask=mask)


def _salun(ctx: UnlearnContext, lr: float, fraction: float) -> SalUn:
    return SalUn(fraction)


SALUN = Method(
    name="salun",
    kind="unlearning",
    build=_salun,
    summary="gradient-saliency weight mask (top 50% of |grad| of the forget loss) + random-label fine-tuning of the masked weights",
    paper="Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency, ICLR 2024",
    url="https://arxiv.org/abs/2310.12508",
    params=(
        Param("lr", float, 0.01, "centre of the suite's 3-point lr search", low=0.0),
        Param("fraction", float, 0.5, "fraction of weights kept salient (the paper's threshold: 50%)", low=0.0, high=1.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# npo: negative preference optimisation, adapted to classification (Zhang et al. 2024)
# ---------------------------------------------------------------------------------------------


def npo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """(2/beta) * mean log(1 + (p_theta(y|x) / p_ref(y|x))^beta) = (2/beta) softplus(beta * (log p - log p_ref)).

    Its gradient is E[w ∇log p_theta(y|x)] with w = 2 p^beta / (p^beta + p_ref^beta) -> 1 as
    beta -> 0: the gradient-ascent direction (Zhang et al. 2024, Sec. 3).
    """
    logp = F.log_softmax(logits.float(), 1).gather(1, y[:, None]).squeeze(1)
    logp_ref = F.log_softmax(ref_logits.float(), 1).gather(1, y[:, None]).squeeze(1)
    return (2.0 / beta) * F.softplus(beta * (logp - logp_ref)).mean()


class NPO(Unlearning):
    """Minimise NPO on the forget set (reference = the model before unlearning) plus
    `retain_weight` x CE on a retain batch of the same size each step (the paper's NPO+RT;
    retain_weight=0 gives plain NPO). An epoch is one pass over the forget set."""

    def __init__(self, beta: float, retain_weight: float):
        self.beta = beta
        self.retain_weight = retain_weight

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        ref = _frozen_copy(model)
        generator = _generator(ctx)
        xr, yr = retain

        def loss(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> torch.Tensor:
            with torch.no_grad():
                ref_logits = ref(xb)
            total = npo_loss(m(xb), ref_logits, yb, self.beta)
            if self.retain_weight and len(yr) >= 2:
                idx = torch.randint(0, len(yr), (max(2, len(yb)),), generator=generator).to(xr.device)
                total = total + self.retain_weight * F.cross_entropy(m(xr[idx]), yr[idx])
            return total

        return _fit(model, forget, ctx, loss, generator=generator)


def _npo(ctx: UnlearnContext, lr: float, beta: float, retain_weight: float) -> NPO:
    return NPO(beta, retain_weight)


NPO_METHOD = Method(
    name="npo",
    kind="unlearning",
    build=_npo,
    summary="negative preference optimisation on the forget set (bounded, adaptive gradient ascent) + retain cross-entropy",
    paper="Zhang et al., Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning, COLM 2024",
    url="https://arxiv.org/abs/2404.05868",
    params=(
        Param("lr", float, 0.01, "centre of the suite's 3-point lr search", low=0.0),
        Param("beta", float, 0.1, "inverse temperature (the paper's default 0.1); beta -> 0 recovers gradient ascent", low=1e-6),
        Param("retain_weight", float, 1.0, "weight of the retain cross-entropy (NPO+RT; 0 = plain NPO)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# scrub: teacher-student max/min steps (Kurmanji et al. 2023)
# ---------------------------------------------------------------------------------------------


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2, batch mean (SCRUB's DistillKL)."""
    log_s = F.log_softmax(student_logits.float() / temperature, 1)
    p_t = F.softmax(teacher_logits.float() / temperature, 1)
    return F.kl_div(log_s, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


class SCRUB(Unlearning):
    """Student starts as the original (teacher). Each epoch: if epoch < max_epochs a max-step pass
    over the forget set (minimise -KL(teacher||student)), then a min-step pass over the retain set
    (minimise gamma * CE + alpha * KL(teacher||student))."""

    def __init__(self, max_epochs: int, alpha: float, gamma: float, temperature: float):
        self.max_epochs, self.alpha, self.gamma, self.temperature = max_epochs, alpha, gamma, temperature

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        teacher = _frozen_copy(model)
        generator = _generator(ctx)
        stepper = _Stepper(model, ctx.lr)
        model.train()
        for epoch in range(ctx.epochs):
            passes = [("max", forget)] if epoch < self.max_epochs else []
            passes.append(("min", retain))
            for phase, (x, y) in passes:
                for index in _batches(len(y), ctx.batch_size, generator):
                    index = index.to(x.device)
                    xb, yb = x[index], y[index]
                    with torch.no_grad():
                        t = teacher(xb)
                    s = model(xb)
                    kl = distill_kl(s, t, self.temperature)
                    stepper.step(-kl if phase == "max" else self.gamma * F.cross_entropy(s, yb) + self.alpha * kl)
        return model


def _scrub(ctx: UnlearnContext, lr: float, max_epochs: int, alpha: float, gamma: float, temperature: float) -> SCRUB:
    return SCRUB(max_epochs, alpha, gamma, temperature)


SCRUB_METHOD = Method(
    name="scrub",
    kind="unlearning",
    build=_scrub,
    summary="teacher-student unlearning: max-steps away from the original on the forget set, min-steps toward it (KL + CE) on the retain set",
    paper="Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023",
    url="https://arxiv.org/abs/2302.09880",
    params=(
        Param("lr", float, 0.01, "centre of the suite's 3-point lr search", low=0.0),
        Param("max_epochs", int, 2, "epochs that start with a max-step pass (the reference code's msteps)", low=0),
        Param("alpha", float, 0.001, "weight of the KL term in the min step (reference code: 0.001)", low=0.0),
        Param("gamma", float, 0.99, "weight of the cross-entropy in the min step (reference code: 0.99)", low=0.0),
        Param("temperature", float, 4.0, "distillation temperature (reference code: kd_T = 4)", low=1e-3),
    ),
)


METHODS = (RETRAIN, FINETUNE, GA, RL, L1_SPARSE, SALUN, NPO_METHOD, SCRUB_METHOD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
