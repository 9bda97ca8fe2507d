"""Kind `dg` (DomainBed's algorithms: objectives over per-domain minibatches) and its methods, and UDIM.

**Why a kind of its own.** A DomainBed algorithm is its own objective over the per-domain
minibatches of domain-labelled data (`update(minibatches)`): cross-entropy plus a penalty that
needs the domain of every row. That is the `loss` kind's interface (`Loss`: `Objective`,
`ModelShaper`), and every method here is a `Loss`; but two things differ. The `loss` kind's
conformance run has no domain labels, so it would check only the degenerate one-domain form of
each method; this kind's check trains with two domains through a domain-balanced sampler. And
the `domain_generalisation` suite's default grid is these algorithms (`default_kinds=("dg",)`),
not the long-tail and noisy-label losses. Methods that need more than the objective take further
roles: IRM, V-REx and Fishr own the step (`StepOwner`) to reset the optimiser's momentum where
their penalty weight jumps, as DomainBed resets Adam; Fish owns the step (inner steps per domain);
inter-domain Mixup is also a `Transform`. Without domain labels (another suite) every method sees
the batch as one domain: DomainBed with a single training environment.

Each method follows DomainBed's `algorithms.py` (facebookresearch/DomainBed at b93c22a; its
`hparams_registry.py` defaults are on the `Param`s), or the authors' DomainBed-based code for HGP,
Hutchinson (huawei-noah/Federated-Learning, HessianAlignment) and UDIM (aailabkaist/UDIM), except
where a docstring says otherwise. DomainBed's optimiser is Adam; here it is the recipe's SGD, which the engine owns.
The forward pass is one pass over the concatenated minibatches (DomainBed's ERM, IRM and V-REx do
this; GroupDRO, CORAL, MMD, Mixup forward each domain apart, which computes the same thing with
GroupNorm networks such as DomainBed's MNIST CNN and the tiny recipe's `fast_cnn_gn`).

UDIM (Shin et al., ICLR 2024) is a sharpness-aware update rule, like `sam`: kind `optimizer`,
composed with an objective (`erm+udim`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch import autograd, nn
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kind import Kind
from harness.kinds.loss import Loss
from harness.kinds.optimizer import Optimizer, trained_parameters
from harness.method import Method
from harness.models import get_classifier
from harness.params import Param
from harness.seams import Batch, Outputs, StepOwner, StepTools, TrainContext, Transform

DOMAINBED = "Gulrajani & Lopez-Paz, In Search of Lost Domain Generalization, ICLR 2021 (DomainBed: algorithms.py, hparams_registry.py)"
DOMAINBED_URL = "https://github.com/facebookresearch/DomainBed"


# ---------------------------------------------------------------------------------------------
# the kind
# ---------------------------------------------------------------------------------------------


class DomainAlgorithm(Loss):
    """The kind's interface: a `Loss` whose objective sees the batch's domains. `forward` is the
    cross-entropy of the concatenated minibatches (ERM's objective, what a penalty is added to).

    `shape_model` keeps a reference to the model's classifier (the first model it shapes: the
    trained one, not a peer) for methods that differentiate with respect to the head."""

    accepts_soft_targets = False

    def __init__(self, ctx: TrainContext):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.head: nn.Module | None = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, targets)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.head is None:
            self.head = get_classifier(model)
        return model

    def linear_head(self, method: str) -> nn.Linear:
        if not isinstance(self.head, nn.Linear):
            found = "no model was shaped" if self.head is None else f"a {type(self.head).__name__}"
            raise HarnessError(f"{method} differentiates the classifier head, which must be an nn.Linear; found {found}")
        return self.head


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for int labels [B] or soft targets [B, K]."""
    if targets.dtype.is_floating_point:
        return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits.float(), targets)


def domain_rows(batch: Batch) -> list[torch.Tensor]:
    """The rows of each domain present (DomainBed's `minibatches`), in increasing domain id; the
    whole batch as one domain when the data has no domain labels. Rows a transform appended
    (domain -1) belong to none."""
    if batch.domain is None:
        return [torch.arange(len(batch), device=batch.y.device)]
    return [torch.nonzero(batch.domain == d).flatten() for d in torch.unique(batch.domain[batch.domain >= 0]).tolist()]


def domain_ids(batch: Batch) -> list[int]:
    return [0] if batch.domain is None else torch.unique(batch.domain[batch.domain >= 0]).tolist()


def flat(tensors: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def per_sample_head_gradients(features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, head: nn.Linear) -> dict[str, torch.Tensor]:
    """Each row's gradient of its own cross-entropy with respect to a linear head, in closed form
    (what BackPACK's BatchGrad gives DomainBed's Fishr): weight (p - onehot(y)) f^T, bias p - onehot(y);
    differentiable in the features and the head (create_graph)."""
    residual = torch.softmax(logits.float(), dim=1) - F.one_hot(y, logits.shape[1]).float()  # [n, K]
    out = {"weight": (residual.unsqueeze(2) * features.unsqueeze(1)).flatten(1)}  # [n, K*D]
    if head.bias is not None:
        out["bias"] = residual
    return out


def check(method: Any, env: Any) -> Any:
    """Two short epochs of the tiny CNN through the real assembly and engine on two domains (the
    digits, and the digits turned a quarter), every batch domain-balanced."""
    from harness.conformance import CHECK_RECIPE, CheckFailed, loss_context, normalizer_of, require, tiny_model
    from harness.engine import predict, train
    from harness.method import MethodRef
    from harness.training import assemble
    from harness_plugins.domain_data import DomainBalancedSampler

    data, seed = env.data, env.seed
    domains = torch.arange(len(data.train_y)) % 2
    x = torch.where((domains == 1).view(-1, 1, 1, 1), data.train_x.rot90(1, (2, 3)), data.train_x)
    ctx = replace(loss_context(data, seed=seed), num_domains=2, labels=data.train_y, domains=domains)
    sampler = DomainBalancedSampler(domains, CHECK_RECIPE["batch_size"] // 2)
    try:
        torch.manual_seed(seed)
        plan = assemble(env.catalog, [MethodRef.of(method)], context=ctx, build_model=lambda: tiny_model(data, seed), extra_parts=(sampler,),
                        extra_names=("domain-balanced sampler",))
    except Exception as exc:
        raise CheckFailed(f"building it for training raised {type(exc).__name__}: {exc}") from exc
    model = plan.model
    before = [p.detach().clone() for p in model.parameters()]
    normalizer = normalizer_of(data)
    try:
        log = train(model, x, data.train_y, recipe=dict(CHECK_RECIPE), parts=plan.composition, aux=plan.aux, normalizer=normalizer, seed=seed,
                    device="cpu", domains=domains)
    except Exception as exc:
        raise CheckFailed(f"training raised {type(exc).__name__}: {exc}") from exc
    logits = predict(model, data.test_x, normalizer=normalizer, device="cpu", predictor=plan.composition.predictor)
    require(tuple(logits.shape) == (len(data.test_y), data.num_classes), f"the trained model gives logits of shape {tuple(logits.shape)}")
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    require(changed, "training left every weight unchanged")
    return {"train_loss": log.train_loss, "logits": logits, "weights_changed": changed}


KIND = Kind(
    name="dg",
    summary="a domain generalisation algorithm (DomainBed): its own objective over the per-domain minibatches of domain-labelled data",
    interface=DomainAlgorithm,
    order=15,  # after loss (10), before augmentation (20) and optimizer (25): `erm+sam`
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    suite="domain_generalisation",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)


# ---------------------------------------------------------------------------------------------
# erm: DomainBed's ERM
# ---------------------------------------------------------------------------------------------


class ERM(DomainAlgorithm):
    """Cross-entropy over the concatenated per-domain minibatches (soft targets too): `ce` on
    domain-balanced batches; the suite's baseline."""

    accepts_soft_targets = True

    def __init__(self, ctx: TrainContext):
        super().__init__(ctx)


ERM_METHOD = Method(
    name="erm",
    kind="dg",
    build=ERM,
    summary="empirical risk minimisation: cross-entropy over the concatenated per-domain minibatches",
    paper=f"Vapnik, Statistical Learning Theory, 1998; {DOMAINBED}",
    url=DOMAINBED_URL,
)


# ---------------------------------------------------------------------------------------------
# optimiser resets (IRM, V-REx, Fishr): DomainBed builds a new Adam where the penalty weight jumps
# ---------------------------------------------------------------------------------------------


class AnnealedPenalty(DomainAlgorithm, StepOwner):
    """A penalty whose weight w changes after `anneal_iters` updates; at that update the optimiser's
    state (the recipe's SGD momentum) is cleared, as DomainBed re-creates Adam there "because it
    doesn't like the sharp jump in gradient magnitudes". `reset_at_zero`: whether an anneal of 0
    resets too (IRM and V-REx do, on an optimiser with no state yet; Fishr does not).

    The loss nll + w * penalty is divided by w when w > 1, as in Arjovsky et al.'s IRM code ("to
    keep gradients in a reasonable range", kept by the REx and Fishr Colored MNIST code): under
    DomainBed's Adam a constant factor on the loss changes nothing, under the recipe's SGD it
    multiplies the step size, and a penalty weight of 100 or 1000 would make SGD diverge."""

    @staticmethod
    def weighted(nll: torch.Tensor, penalty: torch.Tensor, weight: float) -> torch.Tensor:
        loss = nll + weight * penalty
        return loss / weight if weight > 1.0 else loss

    reset_at_zero = True

    def __init__(self, ctx: TrainContext, anneal_iters: int):
        super().__init__(ctx)
        self.anneal_iters = anneal_iters
        self.update_count = 0

    def train_step(self, batch: Batch, tools: StepTools) -> torch.Tensor:
        if self.update_count == self.anneal_iters and (self.reset_at_zero or self.anneal_iters != 0):
            tools.optimizer.state.clear()
        loss = tools.default_step(batch)
        self.update_count += 1
        return loss


# ---------------------------------------------------------------------------------------------
# irm: Arjovsky et al. 2019, IRMv1 as DomainBed implements it
# ---------------------------------------------------------------------------------------------


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's `_irm_penalty`: the gradients of the even and odd rows' cross-entropy with
    respect to a scale w = 1 on the logits, multiplied (an unbiased estimate of the squared gradient)."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
    loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
    grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
    grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
    return (grad_1 * grad_2).sum()


class IRM(AnnealedPenalty):
    """(mean_d CE_d + w * mean_d penalty_d) / max(1, w), w = 1 for the first `anneal_iters` updates, then `lam`."""

    def __init__(self, ctx: TrainContext, lam: float, anneal_iters: int):
        super().__init__(ctx, anneal_iters)
        self.lam = lam

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        weight = self.lam if self.update_count >= self.anneal_iters else 1.0
        groups = domain_rows(batch)
        nll = sum(F.cross_entropy(out.logits[r], batch.y[r]) for r in groups) / len(groups)
        penalty = sum(irm_penalty(out.logits[r], batch.y[r]) for r in groups) / len(groups)
        return self.weighted(nll, penalty, weight)


IRM_METHOD = Method(
    name="irm",
    kind="dg",
    build=IRM,
    summary="invariant risk minimisation (IRMv1): per-domain risks plus the squared gradient of each with respect to a scale on the logits",
    paper=f"Arjovsky, Bottou, Gulrajani & Lopez-Paz, Invariant Risk Minimization, arXiv:1907.02893, 2019; {DOMAINBED}",
    url="https://arxiv.org/abs/1907.02893",
    params=(
        Param("lam", float, 100.0, "penalty weight after the anneal (DomainBed irm_lambda 1e2)", low=0.0),
        Param("anneal_iters", int, 500, "updates with penalty weight 1 before lam applies (DomainBed irm_penalty_anneal_iters)", low=0),
    ),
)


# ---------------------------------------------------------------------------------------------
# vrex: Krueger et al. 2021 (V-REx)
# ---------------------------------------------------------------------------------------------


class VREx(AnnealedPenalty):
    """(mean_d CE_d + w * Var_d(CE_d)) / max(1, w) (the population variance over training domains),
    w = 1 for the first `anneal_iters` updates, then `lam`."""

    def __init__(self, ctx: TrainContext, lam: float, anneal_iters: int):
        super().__init__(ctx, anneal_iters)
        self.lam = lam

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        weight = self.lam if self.update_count >= self.anneal_iters else 1.0
        losses = torch.stack([F.cross_entropy(out.logits[r], batch.y[r]) for r in domain_rows(batch)])
        mean = losses.mean()
        return self.weighted(mean, ((losses - mean) ** 2).mean(), weight)


VREX_METHOD = Method(
    name="vrex",
    kind="dg",
    build=VREx,
    summary="V-REx: the mean of the per-domain risks plus lam times their variance",
    paper=f"Krueger et al., Out-of-Distribution Generalization via Risk Extrapolation (REx), ICML 2021; {DOMAINBED}",
    url="https://arxiv.org/abs/2003.00688",
    params=(
        Param("lam", float, 10.0, "variance weight after the anneal (DomainBed vrex_lambda 1e1)", low=0.0),
        Param("anneal_iters", int, 500, "updates with variance weight 1 before lam applies (DomainBed vrex_penalty_anneal_iters)", low=0),
    ),
)


# ---------------------------------------------------------------------------------------------
# coral, mmd: DomainBed's AbstractMMD (Sun & Saenko 2016; Li et al. 2018)
# ---------------------------------------------------------------------------------------------


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's mean_cov `mmd`: mean squared difference of the feature means plus mean squared
    difference of the (unbiased) feature covariances."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cent_x, cent_y = x - mean_x, y - mean_y
    cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
    cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()


MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's kernel: sum over gamma of exp(-gamma ||x - y||^2), squared distances clamped at 1e-30."""
    x_norm, y_norm = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)
    distance = torch.addmm(y_norm.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x_norm).clamp_min_(1e-30)
    return sum(torch.exp(distance.mul(-g)) for g in MMD_GAMMAS)


def mmd_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return gaussian_kernel(x, x).mean() + gaussian_kernel(y, y).mean() - 2 * gaussian_kernel(x, y).mean()


class FeatureMatching(DomainAlgorithm):
    """mean_d CE_d + gamma * (mean over domain pairs of a distance between their penultimate features)."""

    uses_features = True

    def __init__(self, ctx: TrainContext, gamma: float):
        super().__init__(ctx)
        self.gamma = gamma

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, features: list[torch.Tensor]) -> torch.Tensor:
        pairs = [(i, j) for i in range(len(features)) for j in range(i + 1, len(features))]
        if not pairs:
            return features[0].new_zeros(())
        return sum(self.distance(features[i], features[j]) for i, j in pairs) / len(pairs)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        groups = domain_rows(batch)
        nll = sum(F.cross_entropy(out.logits[r], batch.y[r]) for r in groups) / len(groups)
        return nll + self.gamma * self.penalty([out.features[r] for r in groups])


class CORAL(FeatureMatching):
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return coral_distance(x, y)


class MMD(FeatureMatching):
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmd_distance(x, y)


CORAL_METHOD = Method(
    name="coral",
    kind="dg",
    build=CORAL,
    summary="deep CORAL: per-domain risks plus gamma times the distance between domains' feature means and covariances",
    paper=f"Sun & Saenko, Deep CORAL: Correlation Alignment for Deep Domain Adaptation, ECCV 2016 workshops; {DOMAINBED}",
    url="https://arxiv.org/abs/1607.01719",
    params=(Param("gamma", float, 1.0, "penalty weight (DomainBed mmd_gamma 1)", low=0.0),),
)
MMD_METHOD = Method(
    name="mmd",
    kind="dg",
    build=MMD,
    summary="MMD-AAE's alignment: per-domain risks plus gamma times the Gaussian-kernel MMD between domains' features",
    paper=f"Li, Pan, Wang & Kot, Domain Generalization with Adversarial Feature Learning, CVPR 2018; {DOMAINBED}",
    url="https://openaccess.thecvf.com/content_cvpr_2018/html/Li_Domain_Generalization_With_CVPR_2018_paper.html",
    params=(Param("gamma", float, 1.0, "penalty weight (DomainBed mmd_gamma 1)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# groupdro: Sagawa et al. 2020, Algorithm 1
# ---------------------------------------------------------------------------------------------


class GroupDRO(DomainAlgorithm):
    """Domain weights q (uniform at first) grow as q_d <- q_d exp(eta * CE_d) once per step, are
    normalised to sum 1, and the step minimises sum_d q_d CE_d."""

    def __init__(self, ctx: TrainContext, eta: float):
        super().__init__(ctx)
        self.eta = eta
        self.register_buffer("q", torch.ones(max(1, ctx.num_domains)))

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        ids = torch.tensor(domain_ids(batch), device=self.q.device)
        losses = torch.stack([F.cross_entropy(out.logits[r], batch.y[r]) for r in domain_rows(batch)])
        if not out.recomputed:  # the weights move once per step (an extra pass, SAM's, uses them)
            with torch.no_grad():
                self.q[ids] *= torch.exp(self.eta * losses.detach())
                self.q /= self.q.sum()
        return (self.q[ids] * losses).sum()


GROUPDRO_METHOD = Method(
    name="groupdro",
    kind="dg",
    build=GroupDRO,
    summary="group DRO: minimise the domain risks weighted by exponentiated-gradient weights that chase the worst domain",
    paper=f"Sagawa, Koh, Hashimoto & Liang, Distributionally Robust Neural Networks for Group Shifts, ICLR 2020; {DOMAINBED}",
    url="https://arxiv.org/abs/1911.08731",
    params=(Param("eta", float, 0.01, "step size of the domain weights (DomainBed groupdro_eta 1e-2)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# domain_mixup: DomainBed's Mixup (Xu et al. 2020; Yan et al. 2020): mixup across domains
# ---------------------------------------------------------------------------------------------


def beta_sample(alpha: float, count: int, generator: torch.Generator) -> list[float]:
    """`count` draws of Beta(alpha, alpha) from the run's generator (inverse CDF of a uniform)."""
    from scipy.special import betaincinv

    u = torch.rand(count, generator=generator, device=generator.device).cpu().double().numpy()
    return [float(v) for v in betaincinv(alpha, alpha, u)]


class DomainMixup(DomainAlgorithm, Transform):
    """DomainBed's `random_pairs_of_minibatches`: the domains in a random order, each paired with the
    next (cyclically), both cut to the smaller size; each pair is mixed with its own lam ~
    Beta(alpha, alpha), x = lam x_i + (1 - lam) x_j; the objective is the mean over pairs of
    lam CE(y_i) + (1 - lam) CE(y_j) (soft targets; a mixed row keeps the domain id of its first
    minibatch, so each pair is one group, and index -1)."""

    accepts_soft_targets = True
    produces_soft_targets = True

    def __init__(self, ctx: TrainContext, alpha: float):
        super().__init__(ctx)
        self.alpha = alpha

    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        rows, ids = domain_rows(batch), domain_ids(batch)
        order = torch.randperm(len(rows), generator=generator, device=generator.device).tolist()
        lams = beta_sample(self.alpha, len(rows), generator)
        xs, ys, ds = [], [], []
        for k, lam in enumerate(lams):
            i, j = order[k], order[(k + 1) % len(order)]
            n = min(len(rows[i]), len(rows[j]))
            ri, rj = rows[i][:n], rows[j][:n]
            xs.append(lam * batch.x[ri] + (1 - lam) * batch.x[rj])
            ys.append(lam * self.targets(batch.y[ri]) + (1 - lam) * self.targets(batch.y[rj]))
            ds.append(torch.full((n,), ids[i], dtype=torch.int64, device=batch.x.device))
        y = torch.cat(ys)
        return Batch(torch.cat(xs), y, torch.full((len(y),), -1, dtype=torch.int64, device=y.device), torch.cat(ds), batch.views)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.float() if y.dtype.is_floating_point else F.one_hot(y, self.num_classes).float()

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        groups = domain_rows(batch)
        return sum(soft_cross_entropy(out.logits[r], batch.y[r]) for r in groups) / len(groups)


DOMAIN_MIXUP_METHOD = Method(
    name="domain_mixup",
    kind="dg",
    build=DomainMixup,
    summary="inter-domain mixup: each domain's minibatch mixed with another domain's, labels mixed alike (DomainBed's Mixup)",
    paper=f"Xu et al., Adversarial Domain Adaptation with Domain Mixup, AAAI 2020; Yan et al., Improve Unsupervised Domain Adaptation with Mixup Training, arXiv:2001.00677; {DOMAINBED}",
    url="https://arxiv.org/abs/2001.00677",
    params=(Param("alpha", float, 0.2, "Beta(alpha, alpha) of the mixing weight (DomainBed mixup_alpha 0.2)", low=1e-6),),
)


# ---------------------------------------------------------------------------------------------
# fish: Shi et al. 2022, Algorithm 2 as DomainBed implements it
# ---------------------------------------------------------------------------------------------


class Fish(DomainAlgorithm, StepOwner):
    """From the weights theta, one inner step per domain minibatch in turn (increasing domain id),
    each with the entry's update rule on the recipe's optimiser (whose state persists across steps,
    as DomainBed keeps its inner Adam's); then theta <- theta + meta_lr (theta_inner - theta). The
    interpolation covers every floating-point entry of the state dict (parameters and BatchNorm
    statistics, as DomainBed's state-dict interpolation does). meta_lr = 1 keeps the inner weights;
    meta_lr = 0 leaves theta where it was."""

    def __init__(self, ctx: TrainContext, meta_lr: float):
        super().__init__(ctx)
        self.meta_lr = meta_lr

    def train_step(self, batch: Batch, tools: StepTools) -> torch.Tensor:
        from harness.engine import frozen_batchnorm_statistics

        state = tools.model.state_dict()
        start = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
        losses = []
        for minibatch in ([batch] if batch.domain is None else batch.by_domain()):

            def step(recomputed: bool = False, minibatch: Batch = minibatch) -> torch.Tensor:
                tools.optimizer.zero_grad(set_to_none=True)
                with frozen_batchnorm_statistics(tools.model) if recomputed else nullcontext():
                    out = tools.forward(minibatch)
                    out.recomputed = recomputed
                    loss = tools.loss(minibatch, out)
                loss.backward()
                return loss.detach()

            losses.append(tools.update(step))
        with torch.no_grad():
            for key, original in start.items():
                state[key].copy_(original + self.meta_lr * (state[key] - original))
        return torch.stack(losses).mean()


FISH_METHOD = Method(
    name="fish",
    kind="dg",
    build=Fish,
    summary="Fish: sequential inner steps on each domain's minibatch, then a meta step towards the inner weights (inter-domain gradient matching)",
    paper=f"Shi et al., Gradient Matching for Domain Generalization, ICLR 2022; {DOMAINBED}",
    url="https://arxiv.org/abs/2104.09937",
    params=(Param("meta_lr", float, 0.5, "meta step size epsilon towards the inner weights (DomainBed meta_lr 0.5)", low=0.0, high=1.0),),
)


# ---------------------------------------------------------------------------------------------
# fishr: Rame et al. 2022
# ---------------------------------------------------------------------------------------------


class Fishr(AnnealedPenalty):
    """(CE of all rows + w * mean_d || v_d - mean_e v_e ||^2 / P) / max(1, w), where v_d is the variance over
    domain d's rows of their per-sample gradients with respect to the linear head (P entries),
    smoothed across steps by an exponential moving average (DomainBed's `MovingAverage`:
    m <- ema m + (1 - ema) v, used as m / (1 - ema)). w = 0 for the first `anneal_iters` updates,
    then `lam`; the optimiser is reset at the switch (not at 0)."""

    uses_features = True
    reset_at_zero = False

    def __init__(self, ctx: TrainContext, lam: float, anneal_iters: int, ema: float):
        super().__init__(ctx, anneal_iters)
        self.lam, self.ema = lam, ema
        self.averages: dict[int, torch.Tensor] = {}  # domain -> m, detached, after the last step
        self.step_start: dict[int, torch.Tensor] = {}  # the averages before this step (an extra pass reuses them)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        head = self.linear_head("fishr")
        grads = per_sample_head_gradients(out.features, out.logits, batch.y, head)
        flat_grads = torch.cat(list(grads.values()), dim=1)  # [n, P]
        if not out.recomputed:
            self.step_start = dict(self.averages)
        variances = []
        for d, rows in zip(domain_ids(batch), domain_rows(batch)):
            g = flat_grads[rows]
            variance = (g - g.mean(0, keepdim=True)).pow(2).mean(0)
            previous = self.step_start.get(d, torch.zeros_like(variance))
            average = self.ema * previous + (1 - self.ema) * variance
            if not out.recomputed:
                self.averages[d] = average.detach()
            variances.append(average / (1 - self.ema))
        mean_variance = torch.stack(variances).mean(0)
        penalty = sum((v - mean_variance).pow(2).mean() for v in variances) / len(variances)
        weight = self.lam if self.update_count >= self.anneal_iters else 0.0
        return self.weighted(F.cross_entropy(out.logits, batch.y), penalty, weight)


FISHR_METHOD = Method(
    name="fishr",
    kind="dg",
    build=Fishr,
    summary="Fishr: cross-entropy plus the distance between domains' variances of per-sample classifier gradients",
    paper=f"Rame, Dancette & Cord, Fishr: Invariant Gradient Variances for Out-of-Distribution Generalization, ICML 2022; {DOMAINBED}",
    url="https://arxiv.org/abs/2109.02934",
    params=(
        Param("lam", float, 1000.0, "penalty weight after the anneal (DomainBed lambda 1000)", low=0.0),
        Param("anneal_iters", int, 1500, "updates without the penalty before lam applies (DomainBed penalty_anneal_iters)", low=0),
        Param("ema", float, 0.95, "moving-average rate of the gradient variances (DomainBed ema)", low=0.0, high=0.999),
    ),
)


# ---------------------------------------------------------------------------------------------
# hgp, hutchinson: Hemati et al. 2023, Hessian alignment of the classifier head
# ---------------------------------------------------------------------------------------------


class HessianAlignment(DomainAlgorithm):
    """mean_d CE_d + (1/D) sum_d [ alpha ||h_d - h||^2 + beta ||g_d - g||^2 ], with g_d the gradient
    of domain d's risk with respect to the classifier head, g that of the mean risk, and h_d, h a
    Hessian quantity of the head (HGP: the Hessian-gradient product H g = ||g|| grad ||g||;
    Hutchinson: the Hessian diagonal estimated with Rademacher probes). The targets g and h of the
    mean risk are constants (detached), as in the authors' code."""

    def __init__(self, ctx: TrainContext, alpha: float, beta: float):
        super().__init__(ctx)
        self.alpha, self.beta = alpha, beta

    def hessian_term(self, grads: tuple[torch.Tensor, ...], norm: torch.Tensor, params: list[nn.Parameter],
                     pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """h of a risk: `grads` and `norm` are its gradient with respect to the head `params` and the
        gradient's norm; `pieces` the (features, logits) of the domains it averages over."""
        raise NotImplementedError

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        params = [p for p in self.linear_head(type(self).__name__.lower()).parameters() if p.requires_grad]
        rows = domain_rows(batch)
        pieces = [(out.features[r] if out.features is not None else None, out.logits[r]) for r in rows]
        nlls = [F.cross_entropy(out.logits[r], batch.y[r]) for r in rows]
        train_nll = torch.stack(nlls).mean()
        mean_grad = autograd.grad(train_nll, params, create_graph=True)
        mean_norm = flat(mean_grad).pow(2).sum().sqrt() + 1e-16
        mean_h = self.hessian_term(mean_grad, mean_norm, params, pieces).detach()
        mean_g = flat(mean_grad).detach()
        penalties = []
        for nll, piece in zip(nlls, pieces):
            grads = autograd.grad(nll, params, create_graph=True)
            # the authors' `compute_sadg_penalty`: the norm of the per-tensor norms of (grad + 1e-16)
            norm = torch.stack([torch.norm(g + 1e-16) for g in grads]).norm()
            h = self.hessian_term(grads, norm, params, [piece])
            penalties.append(self.alpha * (h - mean_h).pow(2).sum() + self.beta * (flat(grads) - mean_g).pow(2).sum())
        return train_nll + torch.stack(penalties).sum() / len(penalties)


class HGP(HessianAlignment):
    def __init__(self, ctx: TrainContext, alpha: float, beta: float):
        super().__init__(ctx, alpha, beta)

    def hessian_term(self, grads: tuple[torch.Tensor, ...], norm: torch.Tensor, params: list[nn.Parameter],
                     pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """H g = ||g|| * d||g||/d theta (Hessian-gradient product without the Hessian)."""
        return norm * flat(autograd.grad(norm, params, create_graph=True))


def head_hessian_products(features: torch.Tensor, logits: torch.Tensor, v_weight: torch.Tensor, v_bias: torch.Tensor | None) -> torch.Tensor:
    """H v for a batch of directions v = (v_weight [P, K, D], v_bias [P, K]), H the Hessian of the mean
    cross-entropy with respect to a linear head (weight, then bias, flattened): with a_i = v_weight
    f_i + v_bias, (H v) = (1/n) sum_i [(diag(p_i) - p_i p_i^T) a_i] (f_i^T, 1). Exactly what autograd's
    Hessian-vector product gives, in batched matrix products; differentiable in features and head."""
    p = torch.softmax(logits.float(), dim=1)  # [n, K]
    a = torch.einsum("pkd,nd->pnk", v_weight, features)
    if v_bias is not None:
        a = a + v_bias.unsqueeze(1)
    pa = p.unsqueeze(0) * a
    curvature = pa - p.unsqueeze(0) * pa.sum(-1, keepdim=True)  # [P, n, K]
    n = len(features)
    parts = [torch.einsum("pnk,nd->pkd", curvature, features).flatten(1) / n]
    if v_bias is not None:
        parts.append(curvature.sum(1) / n)
    return torch.cat(parts, dim=1)


class Hutchinson(HessianAlignment):
    uses_features = True

    def __init__(self, ctx: TrainContext, alpha: float, beta: float, probes: int):
        super().__init__(ctx, alpha, beta)
        self.probes = probes
        self.generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)

    def hessian_term(self, grads: tuple[torch.Tensor, ...], norm: torch.Tensor, params: list[nn.Parameter],
                     pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """diag(H) ~ mean over Rademacher probes z of z * (H z) (the authors' `calc_hessian_diag`); the
        probes' H z in closed form for the linear head (`head_hessian_products`), the Hessian of a
        mean over domains being the mean of theirs."""
        head = self.linear_head("hutchinson")
        k, d = head.weight.shape
        numel = k * d + (k if head.bias is not None else 0)
        z = torch.randint(0, 2, (self.probes, numel), generator=self.generator, device=self.generator.device).to(head.weight) * 2 - 1
        v_weight, v_bias = z[:, : k * d].view(-1, k, d), (z[:, k * d :] if head.bias is not None else None)
        hz = torch.stack([head_hessian_products(f, logits, v_weight, v_bias) for f, logits in pieces]).mean(0)
        return (z * hz).mean(0)


HESSIAN_PAPER = "Hemati, Zhang, Estiri & Chen, Understanding Hessian Alignment for Domain Generalization, ICCV 2023 (code: huawei-noah/Federated-Learning, HessianAlignment)"
HGP_METHOD = Method(
    name="hgp",
    kind="dg",
    build=HGP,
    summary="Hessian alignment (HGP): align each domain's classifier-head gradient and Hessian-gradient product with the mean risk's",
    paper=HESSIAN_PAPER,
    url="https://arxiv.org/abs/2308.11778",
    params=(
        Param("alpha", float, 0.0001, "weight of the Hessian-gradient-product alignment (authors' hparams_registry HGP penalty_alpha 1e-4)", low=0.0),
        Param("beta", float, 0.005, "weight of the gradient alignment (authors' penalty_beta 5e-3)", low=0.0),
    ),
)
HUTCHINSON_METHOD = Method(
    name="hutchinson",
    kind="dg",
    build=Hutchinson,
    # Hutchinson's 300 probes per Hessian diagonal cost about ten ERM steps a step on a CPU
    default_grid=False,
    default_grid_note="about ten ERM steps a step on a CPU (300 Hessian probes); run it with method=hutchinson",
    summary="Hessian alignment (Hutchinson): align each domain's classifier-head gradient and Hessian diagonal with the mean risk's",
    paper=HESSIAN_PAPER,
    url="https://arxiv.org/abs/2308.11778",
    params=(
        Param("alpha", float, 0.001, "weight of the Hessian-diagonal alignment (authors' hparams_registry Hutchinson penalty_alpha 1e-3)", low=0.0),
        Param("beta", float, 0.005, "weight of the gradient alignment (authors' penalty_beta 5e-3)", low=0.0),
        Param("probes", int, 300, "Rademacher probes per Hessian diagonal (authors' calc_hessian_diag repeat=300)", low=1),
    ),
)


# ---------------------------------------------------------------------------------------------
# udim: Shin et al., ICLR 2024 (kind optimizer: it owns the update, like sam)
# ---------------------------------------------------------------------------------------------


class UDIM(Optimizer, StepOwner):
    """Unknown-domain inconsistency minimisation, following the authors' IADA_FINAL optimiser
    (aailabkaist/UDIM, the ICLR 2024 code). For the first 1/`sam_warmup_ratio` of the steps it is
    SAM (its `update`). Afterwards, per step at weights theta and inputs x:

    1. perturbed inputs: x~ = x + rho_x * normalize(grad_x [CE(x) + rho ||grad_theta CE(x)||]),
       normalised over the batch dimension as the authors' `F.normalize(grad, dim=0)`;
    2. the SAM gradient: the entry's objective on x at theta + rho g / ||g|| (g = grad_theta CE(x));
    3. the inconsistency gradient at theta, on x and x~ in one pass: Fishr's distance between the
       variances of the per-sample head gradients on x and on x~ (x~'s centred on x's mean, as the
       code does) plus the mean squared per-sample head-gradient norm on x~ per head entry;
    4. one step of the recipe's optimiser on SAM gradient + lam * inconsistency gradient.

    Extra passes leave BatchNorm's running statistics alone (the authors run BatchNorm without
    them). The inconsistency uses cross-entropy, as the paper; the SAM term the entry's objective."""

    uses_features = True

    def __init__(self, ctx: TrainContext, rho: float, rho_x: float, lam: float, sam_warmup_ratio: int):
        self.rho, self.rho_x, self.lam = rho, rho_x, lam
        self.warmup_steps = (ctx.epochs * ctx.steps_per_epoch) // sam_warmup_ratio
        self.step_index = 0

    def update(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """SAM (the warm-up, the authors' `sam_update`): the gradient at theta + rho g / ||g||."""
        loss = step()
        params = trained_parameters(optimizer)
        with torch.no_grad():
            scale = self.rho / (torch.norm(torch.stack([p.grad.norm(2) for p in params])) + 1e-12)
            perturbation = [p.grad * scale for p in params]
            for p, e in zip(params, perturbation):
                p.add_(e)
        step(recomputed=True)
        with torch.no_grad():
            for p, e in zip(params, perturbation):
                p.sub_(e)
        optimizer.step()
        return loss

    def train_step(self, batch: Batch, tools: StepTools) -> torch.Tensor:
        from harness.engine import frozen_batchnorm_statistics

        index, self.step_index = self.step_index, self.step_index + 1
        if index <= self.warmup_steps:
            return tools.default_step(batch)
        model, optimizer = tools.model, tools.optimizer
        head = get_classifier(model)
        if not isinstance(head, nn.Linear) or batch.y.dtype.is_floating_point:
            raise HarnessError("udim needs a linear classifier head (nn.Linear) and int labels (no mixing augmentation)")
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        # 1. perturbed inputs, from the gradient of CE + rho ||grad_theta CE|| with respect to the inputs
        x = batch.x.detach().clone().requires_grad_(True)
        out = tools.forward(replace(batch, x=x))
        ce = F.cross_entropy(out.logits, batch.y)
        grads = autograd.grad(ce, params, create_graph=True, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads) if g is not None]
        grad_norm = torch.stack([g.norm(2) for _, g in used]).norm(2)
        x_grad = autograd.grad(ce + self.rho * grad_norm, x)[0]
        perturbed = (batch.x + self.rho_x * F.normalize(x_grad, p=2.0, dim=0)).detach()
        # 2. the SAM gradient on x at theta + e
        with torch.no_grad():
            scale = self.rho / grad_norm.detach()
            perturbation = [(p, g.detach() * scale) for p, g in used]
            for p, e in perturbation:
                p.add_(e)
        optimizer.zero_grad(set_to_none=True)
        with frozen_batchnorm_statistics(model):
            sam_out = tools.forward(batch)
            sam_out.recomputed = True
            tools.loss(batch, sam_out).backward()
        with torch.no_grad():
            for p, e in perturbation:
                p.sub_(e)
        sam_grads = [p.grad.detach().clone() if p.grad is not None else None for p in params]
        # 3. the inconsistency gradient at theta, on x and x~ together
        optimizer.zero_grad(set_to_none=True)
        both = Batch(torch.cat([batch.x, perturbed]), torch.cat([batch.y, batch.y]), torch.cat([batch.index, batch.index]))
        with frozen_batchnorm_statistics(model):
            both_out = tools.forward(both)
        self.inconsistency(both_out, both.y, head, len(batch)).backward()
        # 4. one step on both
        with torch.no_grad():
            for p, g in zip(params, sam_grads):
                if g is None and p.grad is None:
                    continue
                total = (g if g is not None else torch.zeros_like(p)) + self.lam * (p.grad if p.grad is not None else torch.zeros_like(p))
                p.grad = total
        optimizer.step()
        return ce.detach()

    @staticmethod
    def inconsistency(out: Outputs, y: torch.Tensor, head: nn.Linear, n: int) -> torch.Tensor:
        grads = per_sample_head_gradients(out.features, out.logits, y, head)
        variances: list[dict[str, torch.Tensor]] = [{}, {}]
        norm_term = out.logits.new_zeros(())
        for name, g in grads.items():
            original, synthetic = g[:n], g[n:]
            original_mean = original.mean(0, keepdim=True)
            variances[0][name] = (original - original_mean).pow(2).mean(0)
            variances[1][name] = (synthetic - original_mean).pow(2).mean(0)
            norm_term = norm_term + synthetic.pow(2).sum(1).mean() / g.shape[1]
        names = sorted(grads)
        v = [torch.cat([var[k] for k in names]) for var in variances]
        mean_v = (v[0] + v[1]) / 2
        return ((v[0] - mean_v).pow(2).mean() + (v[1] - mean_v).pow(2).mean()) / 2 + norm_term


UDIM_METHOD = Method(
    name="udim",
    kind="optimizer",
    build=UDIM,
    summary="UDIM: SAM plus aligning the loss landscape of data-perturbed (unknown) domains with the source's",
    paper="Shin, Bae, Na, Kim & Moon, Unknown Domain Inconsistency Minimization for Domain Generalization, ICLR 2024 (code: aailabkaist/UDIM)",
    url="https://openreview.net/forum?id=eNoiRal5xi",
    params=(
        Param("rho", float, 0.05, "SAM radius, also the gradient-norm weight of the input perturbation (authors' rho 0.05)", low=0.0),
        Param("rho_x", float, 10.0, "step size of the input perturbation (authors' PACS script: syn_lr 10)", low=0.0),
        Param("lam", float, 1.0, "weight of the inconsistency gradient (authors' PACS script: worst_weight 1)", low=0.0),
        Param("sam_warmup_ratio", int, 5, "the first 1/ratio of the steps are plain SAM (authors' PACS script: sam_warm_up_ratio 5)", low=1),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (ERM_METHOD, IRM_METHOD, VREX_METHOD, CORAL_METHOD, MMD_METHOD, GROUPDRO_METHOD, DOMAIN_MIXUP_METHOD, FISH_METHOD,
                               FISHR_METHOD, HGP_METHOD, HUTCHINSON_METHOD, UDIM_METHOD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
