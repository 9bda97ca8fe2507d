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
import hashlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds import Method, UnlearnContext, Unlearning
from harness.params import Param
from harness_plugins.unlearning_extensions import DataAccess, OwnsTraining

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


class Retrain(Unlearning, DataAccess):
    """Retraining from scratch on the retain set: exact unlearning, the reference every gap is measured to.

    Inside the unlearning suite the retrained model is trained once per (data, model, seed,
    forget set) and handed over as `ctx.retrained`; this method returns a copy of it, so its gap
    is 0 by construction (`is_reference`). Without it (another caller), it re-initialises the
    model and trains it on the retain set with cross-entropy for ctx.epochs at ctx.lr.
    """

    is_reference = True
    lr_search = False
    uses_forget_labels = False

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


class FineTune(Unlearning, DataAccess):
    """Minimise cross-entropy on the retain set only; the forget set is never looked at."""

    uses_forget_labels = False

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


class GradientAscent(Unlearning, DataAccess):
    """Maximise cross-entropy on the forget set: minimise -CE(f(x_f), y_f); retain data unused."""

    uses_retain = False

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


class L1Sparse(Unlearning, DataAccess):
    """Minimise CE(retain) + gamma_t * ||theta||_1 with gamma_t = gamma (1 - t/T) (Jia et al. 2023, Eq. 5 and code)."""

    uses_forget_labels = False

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


class NPO(Unlearning, DataAccess):
    """Minimise NPO on the forget set (reference = the model before unlearning) plus
    `retain_weight` x CE on a retain batch of the same size each step (the paper's NPO+RT;
    retain_weight=0 gives plain NPO). An epoch is one pass over the forget set."""

    def __init__(self, beta: float, retain_weight: float):
        self.beta = beta
        self.retain_weight = retain_weight
        self.uses_retain = retain_weight > 0  # plain NPO (retain_weight=0) runs on the forget set alone

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        ref = _frozen_copy(model)
        generator = _generator(ctx)
        xr, yr = retain if self.uses_retain else (None, None)

        def loss(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> torch.Tensor:
            with torch.no_grad():
                ref_logits = ref(xb)
            total = npo_loss(m(xb), ref_logits, yb, self.beta)
            if self.uses_retain and len(yr) >= 2:
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


class SCRUB(Unlearning, DataAccess):
    """Student starts as the original (teacher). Each epoch: if epoch < max_epochs a max-step pass
    over the forget set (minimise -KL(teacher||student)), then a min-step pass over the retain set
    (minimise gamma * CE + alpha * KL(teacher||student)). The max step reads no forget labels."""

    uses_forget_labels = False

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
                for index in _batches(len(x), ctx.batch_size, generator):
                    index = index.to(x.device)
                    xb, yb = x[index], (y[index] if phase == "min" else None)
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


# ---------------------------------------------------------------------------------------------
# dmm: datamodel matching (Georgiev et al. 2024)
# ---------------------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _logits_fn(model: nn.Module, params: dict[str, torch.Tensor]) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """f(params, x) = the model's logits at `params` (buffers as they are), for torch.func transforms."""
    from torch.func import functional_call

    buffers = dict(model.named_buffers())

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, ({**params, **p}, buffers), (x,))

    return f


def per_sample_jacobians(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [B, K, P], logits [B, K]): each sample's Jacobian of its K logits with respect to every
    trainable parameter, flattened in `named_parameters` order.

    One batched backward pass per logit gives every layer's output gradient per sample (in eval
    mode samples do not interact); per-sample parameter gradients follow in closed form for the
    layers the built-in models use (Conv2d, Linear, BatchNorm), as Opacus computes them: far
    cheaper on a CPU than vmap over per-sample autograd. Another layer with parameters is refused.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():  # in-place activations would overwrite the outputs we differentiate
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    unsupported = [type(m).__name__ for m in layers if not isinstance(m, nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm)]
    if unsupported or any(isinstance(m, nn.Conv2d) and m.groups != 1 for m in layers):
        from harness.errors import HarnessError

        raise HarnessError(f"dmm's per-sample Jacobians handle Conv2d (groups=1), Linear and BatchNorm layers; this model also has {', '.join(unsupported) or 'grouped convolutions'}")
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, args, out: seen.__setitem__(m, (args[0].detach(), out))) for m in layers]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    outputs = [seen[m][1] for m in layers]
    b, k = logits.shape
    deltas = [torch.zeros(k, *o.shape, dtype=o.dtype, device=o.device) for o in outputs]  # [K, B, ...] per layer
    for c in range(k):
        for store, d in zip(deltas, torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c < k - 1, allow_unused=True)):
            if d is not None:
                store[c] = d
    grads: dict[int, torch.Tensor] = {}  # id(parameter) -> [B, K, *shape]
    for m, delta in zip(layers, deltas):
        a = seen[m][0]
        if isinstance(m, nn.Linear):
            grads[id(m.weight)] = torch.einsum("kbo,bi->bkoi", delta, a)
            if m.bias is not None:
                grads[id(m.bias)] = delta.transpose(0, 1)
        elif isinstance(m, nn.Conv2d):
            cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # [B, in*kh*kw, L]
            grads[id(m.weight)] = torch.einsum("kbol,bil->bkoi", delta.flatten(3), cols)
            if m.bias is not None:
                grads[id(m.bias)] = delta.flatten(3).sum(3).transpose(0, 1)
        else:  # batch norm in eval mode: y = gamma * (a - mean) / sqrt(var + eps) + beta
            shape = (1, -1) + (1,) * (a.dim() - 2)
            normed = (a - m.running_mean.view(shape)) / (m.running_var.view(shape) + m.eps).sqrt()
            dims = tuple(range(3, delta.dim()))
            if m.weight is not None:
                grads[id(m.weight)] = ((delta * normed).sum(dims) if dims else delta * normed).transpose(0, 1)
            if m.bias is not None:
                grads[id(m.bias)] = (delta.sum(dims) if dims else delta).transpose(0, 1)
    jacobian = torch.cat([grads[id(p)].reshape(b, k, -1) for p in model.parameters() if p.requires_grad], dim=2)
    return jacobian, logits.detach()


def projected_jacobians(model: nn.Module, x: torch.Tensor, projection: torch.Tensor | None, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of `x`: (Phi [B, K, d], logits [B, K]) with Phi = J @ projection (no projection: d = P)."""
    for start in range(0, len(x), batch_size):
        jac, logits = per_sample_jacobians(model, x[start : start + batch_size])
        yield (jac if projection is None else jac @ projection), logits


def newton_removal_direction(
    model: nn.Module, forget: Pair, retain: Pair, *, project_dim: int, weight_decay: float, seed: int, batch_size: int, damping: float = 0.0
) -> dict[str, torch.Tensor]:
    """The parameter change delta that one Newton step predicts for retraining without `forget`.

    TRAK-style (Park et al., ICML 2023), generalised to K logits: linearise the logits around the
    trained parameters, z(x; theta* + Pi w) ~ z*(x) + Phi(x) w with Phi = J(x) Pi the per-sample
    Jacobian projected by a seeded Gaussian Pi [P, d] (Pi = I when P <= d), and take one Newton
    step in w of the retain objective sum_{i in R} CE_i + n_R * wd / 2 * ||theta||^2 (the recipe's
    mean loss with weight decay wd, times n_R):
        H = sum_{i in R} Phi_i^T (diag p_i - p_i p_i^T) Phi_i + n_R * wd * I + damping * tr(GN)/d * I
        g = sum_{i in F} Phi_i^T (p_i - e_{y_i}) + n_F * wd * Pi^T theta*          (minus its gradient)
        w = H^{-1} g,   delta = Pi w.
    At the full optimum the whole objective's gradient is zero, so the retain objective's gradient
    is minus the forget set's share, g. The predicted retrained logits of x are
    z*(x) + J(x) delta (a Jacobian-vector product). A network trained by SGD is not at an optimum
    and its Gauss-Newton matrix has rank <= n_R (K - 1), often below d: `damping` (a fraction of
    its mean eigenvalue) keeps the step out of the directions the data does not determine.
    """
    params = _trainable(model)
    total = sum(p.numel() for p in params.values())
    projection = None
    if total > project_dim:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        first = next(iter(params.values()))
        projection = (torch.randn(total, project_dim, generator=g) / math.sqrt(project_dim)).to(device=first.device, dtype=first.dtype)
    dim = total if projection is None else project_dim
    device = next(iter(params.values())).device
    hessian = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    grad = torch.zeros(dim, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for phi, logits in projected_jacobians(model, retain[0], projection, batch_size):
        p = logits.to(phi.dtype).softmax(1)
        scaled = (phi * p.sqrt()[..., None]).reshape(-1, dim)  # sum_k p_k phi_k phi_k^T as one matrix product
        pv = torch.einsum("bk,bkd->bd", p, phi)
        hessian += (scaled.T @ scaled - pv.T @ pv).double()
    for start, (phi, logits) in zip(range(0, len(forget[1]), batch_size), projected_jacobians(model, forget[0], projection, batch_size)):
        y = forget[1][start : start + batch_size]
        residual = logits.double().softmax(1) - F.one_hot(y, logits.shape[1]).double()
        grad += torch.einsum("bkd,bk->d", phi.double(), residual)
    model.train(was_training)
    # the L2 term: curvature n_R * wd, and the forget set's share n_F * wd * theta* of the gradient
    theta = torch.cat([p.reshape(-1) for p in params.values()]).double()
    grad += len(forget[1]) * weight_decay * (theta if projection is None else projection.double().T @ theta)
    mean_eigenvalue = float(torch.diagonal(hessian).mean())
    hessian += (len(retain[1]) * weight_decay + damping * mean_eigenvalue) * torch.eye(dim, dtype=torch.float64, device=device)
    w = torch.linalg.solve(hessian, grad).to(next(iter(params.values())).dtype)
    delta = w if projection is None else projection @ w
    out, offset = {}, 0
    for name, p in params.items():
        out[name] = delta[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def linearised_change(model: nn.Module, delta: dict[str, torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """J(x) delta for every row of x (eval mode): the first-order change of the logits along delta."""
    from torch.func import jvp

    params = _trainable(model)
    f = _logits_fn(model, params)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        _, change = jvp(lambda p, xb=xb: f(p, xb), (params,), ({n: delta[n] for n in params},))
        out.append(change.detach())
    model.train(was_training)
    return torch.cat(out)


AttributionTargets = Callable[[nn.Module, Pair, Pair], tuple[torch.Tensor, torch.Tensor]]


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class DatamodelMatching(Unlearning):
    """DMM (Georgiev et al. 2024, Alg. 1): (a) predict the retrained model's logits on the forget
    set and the retain set by data attribution; (b) fine-tune the original to match them
    (squared error on the logits; each epoch visits the forget set plus a fresh random sample of
    `retain_ratio` x |forget| retain points, shuffled together).

    Attribution: `newton_removal_direction` (TRAK-style projected one-step Newton, on this one
    model; the paper averages TRAK over many models or fits datamodels on thousands of subset
    models, out of reach at tiny scale), damped by `damping` mean Gauss-Newton eigenvalues: an
    original that fits its training set has almost no curvature left, and the undamped step
    predicts targets far worse than the original's own outputs (docs/evidence/unlearning.md).
    `targets=` replaces it (a perfect oracle in tests).
    """

    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # attribution per (model, data): the lr search reuses it

    def __init__(self, retain_ratio: float, project_dim: int, damping: float, targets: AttributionTargets | None = None):
        self.retain_ratio, self.project_dim, self.damping, self.targets = retain_ratio, project_dim, damping, targets

    def predicted_outputs(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.targets is not None:
            return self.targets(model, forget, retain)
        key = _digest(*_trainable(model).values(), *forget, *retain) + f"/{self.project_dim}/{self.damping}/{ctx.seed}"
        if key not in self._cache:
            delta = newton_removal_direction(model, forget, retain, project_dim=self.project_dim, weight_decay=WEIGHT_DECAY, seed=ctx.seed,
                                             batch_size=ctx.batch_size, damping=self.damping)
            with torch.no_grad():
                z_f, z_r = model.eval()(forget[0]), torch.cat([model(retain[0][s : s + 1024]) for s in range(0, len(retain[1]), 1024)])
            self._cache.clear()  # one entry: a run's candidates share one original
            self._cache[key] = (z_f + linearised_change(model, delta, forget[0], ctx.batch_size),
                                z_r + linearised_change(model, delta, retain[0], ctx.batch_size))
        return self._cache[key]

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        target_f, target_r = (t.detach() for t in self.predicted_outputs(model, forget, retain, ctx))
        generator = _generator(ctx)
        n_f, n_r = len(forget[1]), len(retain[1])
        per_epoch = min(n_r, round(self.retain_ratio * n_f))
        stepper = _Stepper(model, ctx.lr)
        model.train()
        for _ in range(ctx.epochs):
            chosen = torch.randperm(n_r, generator=generator)[:per_epoch].to(retain[0].device)
            x = torch.cat([forget[0], retain[0][chosen]])
            target = torch.cat([target_f, target_r[chosen]])
            for index in _batches(len(x), ctx.batch_size, generator):
                index = index.to(x.device)
                stepper.step(F.mse_loss(model(x[index]).float(), target[index]))
        return model


def _dmm(ctx: UnlearnContext, lr: float, retain_ratio: float, project_dim: int, damping: float) -> DatamodelMatching:
    return DatamodelMatching(retain_ratio, project_dim, damping)


DMM = Method(
    name="dmm",
    kind="unlearning",
    version="2",  # 2: the Newton step is damped (`damping`); version 1's undamped step collapsed memorising models
    build=_dmm,
    summary="datamodel matching: predict the retrained model's logits by data attribution (projected one-step Newton), then fine-tune to match them",
    paper="Georgiev, Rinberg, Park, Garg, Ilyas, Madry & Neel, Attribute-to-Delete: Machine Unlearning via Datamodel Matching, ICLR 2025",
    url="https://arxiv.org/abs/2410.23232",
    params=(
        Param("lr", float, 0.01, "centre of the suite's 3-point lr search", low=0.0),
        Param("retain_ratio", float, 1.0, "retain points matched per forget point in each epoch (a fresh random sample every epoch)", low=0.0),
        Param("project_dim", int, 2048, "dimension d of the random projection of per-sample Jacobians (none when the model has <= d parameters)", low=1),
        Param("damping", float, 1.0, "added to the Newton step's curvature, in mean Gauss-Newton eigenvalues (not in the paper, whose TRAK "
              "averages many models; 1.0 measured at scale=tiny pool=200: docs/evidence/unlearning.md)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# laf: label-agnostic forgetting (Shen et al. 2024)
# ---------------------------------------------------------------------------------------------


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(representation [B, D] = the classifier's input, logits [B, K])."""
    from harness.models import get_classifier

    seen: dict[str, torch.Tensor] = {}
    hook = get_classifier(model).register_forward_hook(lambda m, args, out: seen.__setitem__("features", args[0].flatten(1)))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return seen["features"], logits


class RepresentationVAE(nn.Module):
    """A VAE over D-dimensional representations: D -> D -> (mu, log sigma^2) in D/8 -> D -> D."""

    def __init__(self, dim: int):
        super().__init__()
        latent = max(2, dim // 8)
        self.encoder = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, e: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(e).chunk(2, dim=1)
        noise = torch.randn(mu.shape, generator=generator).to(mu.device) if generator is not None else torch.zeros_like(mu)
        z = mu + noise * (0.5 * log_var).exp()
        return self.decoder(z), mu, log_var


def vae_loss(recon: torch.Tensor, e: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, kld_weight: float) -> torch.Tensor:
    """Summed squared error + kld_weight * KL(q(z|e) || N(0, I)), both per sample (LAF's VAE objective)."""
    mse = (recon - e).pow(2).sum() / len(e)
    kld = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum() / len(e)
    return mse + kld_weight * kld


def nmse(recon: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """LAF's bounded reconstruction error: sum over samples of exp(m / (m + 1)), m = ||recon - e||^2."""
    m = (recon - e).pow(2).sum(1)
    return torch.exp(m / (m + 1)).sum()


def extractor_unlearning_loss(vae_retain: nn.Module, vae_forget: nn.Module, e_retain: torch.Tensor, e_forget: torch.Tensor) -> torch.Tensor:
    """L_UE: retain representations stay well reconstructed by the retain VAE, forget ones are pushed
    out of what the forget VAE reconstructs (its mean decoding, no sampling)."""
    return nmse(vae_retain(e_retain)[0], e_retain) - nmse(vae_forget(e_forget)[0], e_forget)


def representation_alignment_loss(e_retain: torch.Tensor, t_retain: torch.Tensor, e_forget: torch.Tensor, t_forget: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_RA (contrastive): sum_i log(exp(c_i) / sum_j exp(u_j / T)), c_i = 1 - cos(e_i, teacher_i) on
    retain samples, u_j = 1 - cos(e_j, teacher_j) on forget samples: retain representations stay
    aligned with the original model's, forget ones move away from theirs."""
    c = 1 - F.cosine_similarity(e_retain, t_retain, dim=1)
    u = 1 - F.cosine_similarity(e_forget, t_forget, dim=1)
    return (c - torch.logsumexp(u / temperature, dim=0)).sum()


class LabelAgnosticForgetting(Unlearning, DataAccess):
    """LAF (Shen et al. 2024): (1) fit a VAE to the original model's representations of the retain
    set and one to those of the forget set; (2) each epoch, for every pair of a forget batch and a
    retain batch, one step on L_UE then one step on L_RA (two Adam optimisers, the suite's lr), with
    a frozen copy of the original as the teacher. No label is read; `repair=True` adds the paper's
    LAF+R step (the classifier head fine-tuned on the retain labels). BatchNorm stays in inference
    mode so the representations compared are those used at test time."""

    uses_forget_labels = False

    def __init__(self, vae_epochs: int, vae_lr: float, kld_weight: float, temperature: float, repair: bool):
        self.vae_epochs, self.vae_lr, self.kld_weight, self.temperature, self.repair = vae_epochs, vae_lr, kld_weight, temperature, repair

    def _fit_vae(self, model: nn.Module, x: torch.Tensor, ctx: UnlearnContext, generator: torch.Generator) -> RepresentationVAE:
        with torch.no_grad():
            e = torch.cat([features_and_logits(model, x[s : s + 1024])[0] for s in range(0, len(x), 1024)])
        vae = RepresentationVAE(e.shape[1]).to(e.device)
        optimizer = torch.optim.Adam(vae.parameters(), lr=self.vae_lr)
        for _ in range(self.vae_epochs):
            for index in _batches(len(e), ctx.batch_size, generator):
                eb = e[index.to(e.device)]
                recon, mu, log_var = vae(eb, generator)
                loss = vae_loss(recon, eb, mu, log_var, self.kld_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        return vae

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        from harness.models import get_classifier

        generator = _generator(ctx)
        torch.manual_seed(int(ctx.seed))
        model.eval()
        vae_retain = self._fit_vae(model, retain[0], ctx, generator)
        vae_forget = self._fit_vae(model, forget[0], ctx, generator)
        teacher = _frozen_copy(model)
        extractor = [p for n, p in model.named_parameters() if p.requires_grad]
        opt_ue, opt_ra = torch.optim.Adam(extractor, lr=ctx.lr), torch.optim.Adam(extractor, lr=ctx.lr)
        xf, xr = forget[0], retain[0]
        for _ in range(ctx.epochs):
            for f_index, r_index in zip(_batches(len(xf), ctx.batch_size, generator), _batches(len(xr), ctx.batch_size, generator)):
                xfb, xrb = xf[f_index.to(xf.device)], xr[r_index.to(xr.device)]
                loss = extractor_unlearning_loss(vae_retain, vae_forget, features_and_logits(model, xrb)[0], features_and_logits(model, xfb)[0])
                _checked_step(opt_ue, loss)
                with torch.no_grad():
                    t_r, t_f = features_and_logits(teacher, xrb)[0], features_and_logits(teacher, xfb)[0]
                loss = representation_alignment_loss(features_and_logits(model, xrb)[0], t_r, features_and_logits(model, xfb)[0], t_f, self.temperature)
                _checked_step(opt_ra, loss)
        if self.repair:
            head = get_classifier(model)
            opt = torch.optim.Adam(head.parameters(), lr=ctx.lr)
            for _ in range(ctx.epochs):
                for index in _batches(len(retain[1]), ctx.batch_size, generator):
                    index = index.to(xr.device)
                    _checked_step(opt, F.cross_entropy(model(xr[index]), retain[1][index]))
        return model


def _checked_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        from harness.errors import RunDiverged

        raise RunDiverged(f"unlearning loss became {float(loss)}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _laf(ctx: UnlearnContext, lr: float, vae_epochs: int, vae_lr: float, kld_weight: float, temperature: float, repair: bool) -> LabelAgnosticForgetting:
    return LabelAgnosticForgetting(vae_epochs, vae_lr, kld_weight, temperature, repair)


LAF = Method(
    name="laf",
    kind="unlearning",
    build=_laf,
    summary="label-agnostic forgetting: VAEs of the retain and forget representations steer the extractor (no labels), a contrastive loss keeps retain representations",
    paper="Shen, Zhang, Zhao, Bialkowski, Chen & Xu, Label-Agnostic Forgetting: A Supervision-Free Unlearning in Deep Models, ICLR 2024",
    url="https://arxiv.org/abs/2404.00506",
    params=(
        Param("lr", float, 1e-4, "Adam learning rate of both extractor steps (the reference's 1e-4); centre of the suite's search", low=0.0),
        Param("vae_epochs", int, 10, "epochs of each representation VAE (reference: 10)", low=1),
        Param("vae_lr", float, 1e-3, "Adam learning rate of the VAEs (reference: 1e-3)", low=0.0),
        Param("kld_weight", float, 0.025, "weight of the VAEs' KL term (reference: 0.025)", low=0.0),
        Param("temperature", float, 1.0, "temperature of the contrastive alignment loss (reference: 1.0)", low=1e-6),
        Param("repair", bool, False, "LAF+R: afterwards fine-tune the classifier head on the retain labels", ),
    ),
)


# ---------------------------------------------------------------------------------------------
# flat: forget-data-only loss adjustment (Wang et al. 2025)
# ---------------------------------------------------------------------------------------------

# f-divergence -> (activation g*, conjugate f* o g*), as FLAT's reference code writes its
# variational form: loss = -g*(P_e) + f*(g*(P_f)), P the mean probability of the answer.
FLAT_DIVERGENCES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "kl": (lambda v: v, lambda v: torch.exp(v - 1.0)),
    "total_variation": (lambda v: torch.tanh(v) / 2.0, lambda v: torch.tanh(v) / 2.0),
    "jensen_shannon": (lambda v: math.log(2.0) - F.softplus(-v), lambda v: v + F.softplus(-v) - math.log(2.0)),
    "pearson": (lambda v: v, lambda v: v * v / 4.0 + v),
}


def flat_loss(logits: torch.Tensor, forget_labels: torch.Tensor, template_labels: torch.Tensor, divergence: str) -> torch.Tensor:
    """FLAT's loss on a batch: -g*(P_e) + f*(g*(P_f)) with P_e = mean_i p(template_i | x_i) and
    P_f = mean_i p(y_i | x_i) (the reference averages probabilities over the batch, then applies g*)."""
    g, conjugate = FLAT_DIVERGENCES[divergence]
    p = logits.float().softmax(1)
    p_e = p.gather(1, template_labels[:, None]).mean()
    p_f = p.gather(1, forget_labels[:, None]).mean()
    return -g(p_e) + conjugate(p_f)


def runner_up_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Each sample's most likely class other than its own label, under `model` (eval mode)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]).float()
    model.train(was_training)
    return logits.scatter(1, y[:, None], float("-inf")).argmax(1)


class FLAT(Unlearning, DataAccess):
    """FLAT (Wang et al. 2025) in classification form, on the forget set alone: maximise the
    f-divergence between the template answer and the forget answer, i.e. minimise
    -g*(P_e) + f*(g*(P_f)) with P_f the probability of the sample's own label (the forget answer)
    and P_e that of a template label. The paper's template is a fixed refusal ("I don't know");
    a classifier has none, so the template is the original model's runner-up class (what a
    model that never saw the sample would most plausibly answer), fixed before unlearning."""

    uses_retain = False

    def __init__(self, divergence: str):
        self.divergence = divergence

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        x, y = forget
        template = runner_up_labels(model, x, y, ctx.batch_size)
        data = (x, torch.stack([y, template], dim=1))
        return _fit(model, data, ctx, lambda m, xb, yb, e: flat_loss(m(xb), yb[:, 0], yb[:, 1], self.divergence))


def _flat(ctx: UnlearnContext, lr: float, divergence: str) -> FLAT:
    return FLAT(divergence)


FLAT_METHOD = Method(
    name="flat",
    kind="unlearning",
    build=_flat,
    summary="forget-data-only loss adjustment: maximise an f-divergence between a template answer and the forget answer (no retain data)",
    paper="Wang, Wei, Liu, Pang, Liu, Shah, Bao, Liu & Wei, LLM Unlearning via Loss Adjustment with Only Forget Data, ICLR 2025",
    url="https://arxiv.org/abs/2410.11143",
    params=(
        Param("lr", float, 0.1, "centre of the suite's 3-point lr search", low=0.0),
        Param("divergence", str, "total_variation", "the f-divergence (reference code's default: Total-Variation)", choices=tuple(FLAT_DIVERGENCES)),
    ),
)


# ---------------------------------------------------------------------------------------------
# s3t: sequence-aware sharded sliced training (Chowdhury et al. 2025)
# ---------------------------------------------------------------------------------------------


def cyclic_sequences(slices: int, sequences: int) -> list[list[int]]:
    """The first `sequences` cyclic rotations of [0 .. slices-1] (S3T's cyclic-rotation selection,
    which for B <= L sequences puts every slice last in at most one of them)."""
    base = list(range(slices))
    return [base[len(base) - k :] + base[: len(base) - k] for k in range(sequences)]


class LowRankBlock(nn.Module):
    """h + up(relu(down(h))) with rank r; `up` starts at zero, so an untrained block is the identity
    (LoRA's initialisation)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.relu(self.down(h)))


class SlicedModel(nn.Module):
    """One (shard, sequence) model: L blocks, block l trained at stage l on the sequence's first l
    slices while blocks 1..l-1 stay fixed, and the head as it was after each stage. With the first
    k blocks active it is exactly the model after stage k: features -> block_k -> ... -> block_1 -> head_k."""

    def __init__(self, dim: int, num_classes: int, slices: int, rank: int):
        super().__init__()
        self.blocks = nn.ModuleList(LowRankBlock(dim, rank) for _ in range(slices))
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(slices))

    def forward(self, features: torch.Tensor, active: int) -> torch.Tensor:
        h = features
        for block in reversed(self.blocks[:active]):
            h = block(h)
        return self.heads[active - 1](h)


class S3TEnsemble(nn.Module):
    """A frozen data-free base (the architecture's features at a seeded random initialisation) and
    m x B sliced models; a shard answers with its sequence that keeps the most active blocks, and
    the shards' softmax outputs are averaged (the logits returned are log-probabilities)."""

    def __init__(self, base: nn.Module, dim: int, num_classes: int, shards: int, slices: int, sequences: int, rank: int):
        super().__init__()
        self.base = base
        self.models = nn.ModuleList(
            nn.ModuleList(SlicedModel(dim, num_classes, slices, rank) for _ in range(sequences)) for _ in range(shards)
        )
        self.register_buffer("active", torch.full((shards, sequences), slices, dtype=torch.long))

    def served(self, shard: int) -> int:
        return int(torch.argmax(self.active[shard]))  # the first sequence with the longest active prefix

    def shard_logits(self, features: torch.Tensor, shard: int) -> torch.Tensor:
        b = self.served(shard)
        return self.models[shard][b](features, int(self.active[shard, b]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.base(x).flatten(1)
        probs = torch.stack([self.shard_logits(features, h).float().softmax(1) for h in range(len(self.models))]).mean(0)
        return probs.clamp_min(1e-12).log()


def _row_keys(x: torch.Tensor) -> list[bytes]:
    rows = x.detach().reshape(len(x), -1).cpu().contiguous().numpy()
    return [hashlib.sha1(r.tobytes()).digest() for r in rows]


class S3T(OwnsTraining, DataAccess):
    """S3T (Chowdhury et al. 2025), exact unlearning at tiny scale.

    Training: the pool is split (seeded) into `shards` shards and each shard into `slices` slices;
    per shard, `sequences` slice orders (cyclic rotations) each train a `SlicedModel` stage by
    stage (stage l: block l and the head, `epochs` epochs of AdamW at `lr` on the first l slices of
    the order, earlier blocks frozen), on the features of a frozen data-free base. Deleting a sample
    of slice s deactivates, in every sequence of its shard, the blocks from s's position on; the
    shard then serves its sequence with the longest remaining prefix, which never saw the sample.
    A shard with no block left in any sequence is retrained on its remaining data.

    Simplified from the paper: the base is the architecture at a random initialisation (the paper
    fine-tunes a pretrained model with LoRA inside its transformer layers); the sliced layers are
    low-rank residual blocks on the base's features, one per slice.
    """

    uses_forget_labels = False
    uses_retain = False

    def __init__(self, shards: int, slices: int, sequences: int, rank: int, epochs: int, lr: float):
        self.where: dict[bytes, list[tuple[int, int, int]]] | None = None  # image -> (shard, slice, pool index), once trained
        if sequences > slices:
            from harness.errors import HarnessError

            raise HarnessError(f"s3t: sequences={sequences} > slices={slices}; cyclic rotation gives at most one sequence per slice")
        self.shards, self.slices, self.sequences, self.rank, self.epochs, self.lr = shards, slices, sequences, rank, epochs, lr
        self.retrains = 0  # shards retrained because every sequence lost all its blocks

    # --- training ----------------------------------------------------------------------------

    def train(self, pool: Pair, ctx: UnlearnContext) -> nn.Module:
        from harness.models import get_classifier, set_classifier

        if ctx.original is None:
            from harness.errors import HarnessError

            raise HarnessError("s3t needs ctx.original: its base is that architecture at a random initialisation")
        x, y = pool
        base = copy.deepcopy(ctx.original)
        torch.manual_seed(int(ctx.seed))
        for module in base.modules():
            if module is not base and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # data-free: the base learns nothing from the pool
        dim = get_classifier(base).in_features
        set_classifier(base, nn.Identity())
        base = base.to(x.device).eval()
        for p in base.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.features = torch.cat([base(x[s : s + 1024]).flatten(1) for s in range(0, len(x), 1024)])
        self.labels = y
        self.orders = cyclic_sequences(self.slices, self.sequences)
        g = torch.Generator().manual_seed(int(ctx.seed))
        perm = torch.randperm(len(y), generator=g)
        self.members: list[list[torch.Tensor]] = []  # [shard][slice] -> pool indices (deleted ones dropped)
        self.where = {}
        keys = _row_keys(x)
        for h, shard in enumerate(perm.tensor_split(self.shards)):
            self.members.append(list(shard.tensor_split(self.slices)))
            for s, part in enumerate(self.members[-1]):
                for i in part.tolist():
                    self.where.setdefault(keys[i], []).append((h, s, i))
        ensemble = S3TEnsemble(base, dim, ctx.num_classes, self.shards, self.slices, self.sequences, self.rank).to(x.device)
        for h in range(self.shards):
            self._train_shard(ensemble, h, ctx)
        return ensemble

    def stage_rows(self, shard: int, order: list[int], stage: int) -> torch.Tensor:
        """Pool indices stage `stage` (1-based) of a sequence trains on: the order's first `stage` slices."""
        return torch.cat([self.members[shard][s] for s in order[:stage]])

    def _train_shard(self, ensemble: S3TEnsemble, shard: int, ctx: UnlearnContext) -> None:
        for b, order in enumerate(self.orders):
            model = ensemble.models[shard][b]
            g = torch.Generator().manual_seed(int(ctx.seed) * 7919 + 101 * shard + b + 1)
            with torch.no_grad():  # fresh initialisation (also when the shard is retrained)
                fresh = SlicedModel(self.features.shape[1], ctx.num_classes, self.slices, self.rank)
                for name, value in fresh.state_dict().items():
                    model.state_dict()[name].copy_(value)
            for stage in range(1, self.slices + 1):
                index = self.stage_rows(shard, order, stage)
                if stage > 1:
                    model.heads[stage - 1].load_state_dict(model.heads[stage - 2].state_dict())  # the head continues from the last stage
                trainable = [*model.blocks[stage - 1].parameters(), *model.heads[stage - 1].parameters()]
                optimizer = torch.optim.AdamW(trainable, lr=self.lr)
                for _ in range(self.epochs):
                    for batch in _batches(len(index), 64, g):
                        rows = index[batch].to(self.features.device)
                        _checked_step(optimizer, F.cross_entropy(model(self.features[rows], stage), self.labels[rows]))
            ensemble.active[shard, b] = self.slices

    # --- deletion ----------------------------------------------------------------------------

    def unlearn(self, model: nn.Module, forget: Pair, retain: Pair, ctx: UnlearnContext) -> nn.Module:
        if not isinstance(model, S3TEnsemble) or self.where is None:  # a plain caller: train on everything first
            pool_x = forget[0] if retain is None else torch.cat([forget[0], retain[0]])
            if retain is None or forget[1] is None:
                from harness.errors import HarnessError

                raise HarnessError("s3t was handed a model it did not train and no labelled training data; call train(pool, ctx) first")
            model = self.train((pool_x, torch.cat([forget[1], retain[1]])), ctx)
        touched: set[int] = set()
        for key in dict.fromkeys(_row_keys(forget[0])):  # an image listed twice is deleted once
            if key not in self.where:
                from harness.errors import HarnessError

                raise HarnessError("s3t was asked to delete an image that is not in the data it trained on")
            for h, s, i in self.where.pop(key):
                self.members[h][s] = self.members[h][s][self.members[h][s] != i]
                for b, order in enumerate(self.orders):
                    model.active[h, b] = min(int(model.active[h, b]), order.index(s))  # blocks from s's position on saw it
                touched.add(h)
        for h in sorted(touched):
            if int(model.active[h].max()) == 0:
                self._train_shard(model, h, ctx)
                self.retrains += 1
        return model


def _s3t(ctx: UnlearnContext, lr: float, shards: int, slices: int, sequences: int, rank: int, epochs: int) -> S3T:
    return S3T(shards, slices, sequences, rank, epochs, lr)


S3T_METHOD = Method(
    name="s3t",
    kind="unlearning",
    build=_s3t,
    summary="exact unlearning by sharded, sliced training of stacked low-rank layers over several slice orders; a deletion deactivates layers",
    paper="Chowdhury, Choromanski, Sehanobish, Dubey & Chaturvedi, Towards Scalable Exact Machine Unlearning Using Parameter-Efficient Fine-Tuning, ICLR 2025",
    url="https://arxiv.org/abs/2406.16257",
    params=(
        Param("lr", float, 2e-4, "AdamW learning rate of every stage (the reference code's 2e-4, for LoRA on a pretrained model; on the "
              "random-feature base here it leaves the model near chance with few images: docs/evidence/unlearning.md uses s3t.lr=0.01); "
              "not searched: it trains its own model", low=0.0),
        Param("shards", int, 2, "disjoint shards, each its own models; the ensemble averages them", low=1),
        Param("slices", int, 4, "slices per shard = low-rank layers per model (the reference code's default is 6)", low=1),
        Param("sequences", int, 4, "slice orders trained per shard (cyclic rotations, at most `slices`)", low=1),
        Param("rank", int, 16, "rank of each low-rank layer (reference: 16)", low=1),
        Param("epochs", int, 15, "epochs of each stage (reference: 15)", low=1),
    ),
)


METHODS = (RETRAIN, FINETUNE, GA, RL, L1_SPARSE, SALUN, NPO_METHOD, SCRUB_METHOD, DMM, LAF, FLAT_METHOD, S3T_METHOD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
