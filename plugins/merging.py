"""Built-in model-merging methods (kind `merging`), one section per method.

`merge(base, experts, ctx)` takes the state dicts of a shared base model and of one expert per
task fine-tuned from it, and returns one state dict. Task vectors are tau_k = theta_k - theta_0.

Which entries are merged: the keys in `ctx.param_keys` (the trainable parameters the protocol
merges), or every floating-point tensor when it is None. The other entries are kept: floating-point
ones (BatchNorm running mean/var; the per-task heads of a `TaskHeadsModel`, identical in every
state dict) are averaged over the experts, integer ones (num_batches_tracked) are taken from the
base. Both suites that rank merging recompute the BatchNorm statistics of every merged model
(see their cards), so the averaged statistics are only a starting point.

The context also carries `seed` (DARE's drop mask), `fishers` (one dict of diagonal Fishers per
expert, for a method that declares `needs_fisher`: Fisher merging), `build_model` (a zero-argument
factory of the architecture: AdaMerging, PLeaS, LCSC) and `unlabeled()` (an iterable of unlabeled
input batches: AdaMerging, PLeaS).

The first section holds what a protocol may offer beyond the kind's interface, until the kind has
seams for it: a model with one head per task (`TaskHeadsModel`), labelled validation scores
(`ValidatedMergeContext.validate`), an ensemble as the result (`Ensembling`), and the scaling
coefficient a protocol chooses on validation data (`SearchedCoefficient`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds import MergeContext, Merging, Method
from harness.params import Choice, Param, Uniform

State = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------------------------
# what a protocol may offer beyond the kind's interface (proposed for harness.kinds.merging)
# ---------------------------------------------------------------------------------------------


class TaskHeadsModel(nn.Module):
    """A body shared by every task and one classification head per task: the model a multi-task
    protocol merges (Ilharco et al. 2023; Yadav et al. 2023; Yang et al. 2024 keep each task's head).

    Its state dict holds `body.*` (what merging methods merge: the protocol passes these keys as
    `param_keys`) and `heads.{t}.*` (task t's head, kept; identical in the base's and every
    expert's state dict). `forward(x)` takes a batch per task, `x` of shape [T, B, ...] (images:
    [T, B, C, H, W]) in task order, and returns logits [T, B, K]: each task's batch goes through the body on its own (so a
    BatchNorm in train mode normalises it with its own statistics), then through its head.
    """

    def __init__(self, body: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList(heads)

    def task_logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or len(x) != len(self.heads):
            raise ValueError(f"a TaskHeadsModel takes one batch per task, [{len(self.heads)}, B, ...] (e.g. [T, B, C, H, W]); got {tuple(x.shape)}")
        return torch.stack([self.task_logits(x[t], t) for t in range(len(x))])


@dataclass
class ValidatedMergeContext(MergeContext):
    """A MergeContext with `validate(state) -> float`: the protocol's score of a candidate merged
    state dict on labelled validation data (higher is better; never test data), for methods whose
    paper searches coefficients on validation data (LCSC's evolutionary search)."""

    validate: Callable[[State], float] | None = None


@dataclass(frozen=True)
class Ensemble:
    """An ensemble as a merging result: the protocol averages the members' predicted class
    probabilities with these weights (each member a state dict of the base's keys)."""

    members: tuple[State, ...]
    weights: tuple[float, ...]


class Ensembling(Merging):
    """A method whose result is an ensemble of models rather than one set of weights.

    `ensemble(base, experts, ctx)` returns the `Ensemble` a protocol that evaluates ensembles
    evaluates. `merge` returns the members' weighted parameter average: the one model a protocol
    that can only evaluate a single state dict would get (the merging suite never uses it)."""

    def ensemble(self, base: State, experts: list[State], ctx: MergeContext) -> Ensemble:
        raise NotImplementedError

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        result = self.ensemble(base, experts, ctx)
        keys = param_keys(base, ctx)
        total = sum(result.weights)
        averaged = {k: sum(w * m[k].float() for w, m in zip(result.weights, result.members)) / total for k in keys}
        return assemble(base, list(result.members), averaged)


class SearchedCoefficient:
    """A method whose paper chooses one scaling coefficient on held-out validation data: the
    hyper-parameter `searched_param` is tried at every value of `search_grid` (the paper's grid,
    10 values for every method, so each gets the same search budget) by a protocol that has
    labelled validation data, unless the user fixed it on the command line."""

    searched_param: ClassVar[str] = "lam"
    search_grid: tuple[float, ...] = ()  # an instance may narrow it to its own settings (DARE with combine=ties)


# Task arithmetic's grid in the TIES authors' scripts (`task-vector_linear+0.1+1.01+0.1`);
# Ilharco et al. search [0, 1] on validation data too.
LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))
# TIES's range in its authors' scripts is 0.8-2.5 (`linear+0.8+2.51+0.1`); every 0.2 from 0.8
# gives the same budget of 10 values as task arithmetic.
TIES_LAMBDA_GRID = tuple(round(0.8 + 0.2 * i, 1) for i in range(10))

# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def param_keys(base: State, ctx: MergeContext) -> list[str]:
    keys = ctx.param_keys
    if keys is None:
        return [k for k, v in base.items() if v.is_floating_point()]
    return [k for k in base if k in set(keys)]


def assemble(base: State, experts: list[State], merged: State) -> State:
    """The full state dict: merged parameters, float buffers averaged over experts, others from the base."""
    out: State = {}
    for k, v in base.items():
        if k in merged:
            out[k] = merged[k].to(v.dtype)
        elif v.is_floating_point():
            out[k] = torch.stack([e[k].float() for e in experts]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def task_vectors(base: State, experts: list[State], keys: list[str]) -> list[State]:
    return [{k: e[k].float() - base[k].float() for k in keys} for e in experts]


def _flatten(vec: State, keys: list[str]) -> torch.Tensor:
    return torch.cat([vec[k].reshape(-1) for k in keys]) if keys else torch.zeros(0)


def _unflatten(flat: torch.Tensor, like: State, keys: list[str]) -> State:
    out, start = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = flat[start : start + n].view_as(like[k])
        start += n
    return out


def ties_combine(vectors: list[State], keys: list[str], top_k: float) -> State:
    """TIES-merging's trim, elect-sign and disjoint mean of task vectors (Yadav et al. 2023, Alg. 1),
    following the authors' code: each task vector (flattened over all merged tensors) keeps the
    entries whose magnitude is >= its (d - floor(d * top_k / 100))-th smallest magnitude; the
    elected sign of an entry is the sign of the sum of the trimmed values (a zero sum takes the
    sign of the sum of all elected signs); the merged entry is the mean over the tasks whose
    trimmed value is non-zero with the elected sign (0 if none)."""
    m = torch.stack([_flatten(v, keys) for v in vectors])  # [tasks, d]
    d = m.shape[1]
    kth = max(1, d - int(d * top_k / 100.0))
    threshold = m.abs().kthvalue(kth, dim=1, keepdim=True).values
    trimmed = m * (m.abs() >= threshold)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * agree
    merged = selected.sum(0) / (selected != 0).sum(0).clamp_min(1).float()
    return _unflatten(merged, vectors[0], keys)


def add_scaled(base: State, vector: State, lam: float) -> State:
    return {k: base[k].float() + lam * v for k, v in vector.items()}


# ---------------------------------------------------------------------------------------------
# average: uniform model soup (Wortsman et al. 2022)
# ---------------------------------------------------------------------------------------------


class Average(Merging):
    """theta = 1/K sum_k theta_k."""

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        return assemble(base, experts, {k: torch.stack([e[k].float() for e in experts]).mean(0) for k in keys})


def _average(ctx: MergeContext) -> Average:
    return Average()


AVERAGE = Method(
    name="average",
    kind="merging",
    build=_average,
    summary="uniform weight averaging of the experts (uniform model soup)",
    paper="Wortsman et al., Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing inference time, ICML 2022",
    url="https://arxiv.org/abs/2203.05482",
)


# ---------------------------------------------------------------------------------------------
# task_arithmetic: Ilharco et al. 2023, Sec. 2
# ---------------------------------------------------------------------------------------------


class TaskArithmetic(Merging, SearchedCoefficient):
    """theta = theta_0 + lam * sum_k tau_k."""

    search_grid = LAMBDA_GRID

    def __init__(self, lam: float):
        self.lam = lam

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        vectors = task_vectors(base, experts, keys)
        total = {k: torch.stack([v[k] for v in vectors]).sum(0) for k in keys}
        return assemble(base, experts, add_scaled(base, total, self.lam))


def _task_arithmetic(ctx: MergeContext, lam: float) -> TaskArithmetic:
    return TaskArithmetic(lam)


TASK_ARITHMETIC = Method(
    name="task_arithmetic",
    kind="merging",
    build=_task_arithmetic,
    summary="add the sum of the task vectors (expert minus base), scaled by lambda, to the base",
    paper="Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
    url="https://arxiv.org/abs/2212.04089",
    params=(Param("lam", float, 0.3, "scaling coefficient lambda (the paper picks it on validation data; 0.3-0.4 is typical)", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# ties: Yadav et al. 2023 (trim, elect sign, disjoint merge)
# ---------------------------------------------------------------------------------------------


class Ties(Merging, SearchedCoefficient):
    """theta = theta_0 + lam * ties_combine(tau_1..tau_K, top_k)."""

    search_grid = TIES_LAMBDA_GRID

    def __init__(self, top_k: float, lam: float):
        self.top_k, self.lam = top_k, lam

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        combined = ties_combine(task_vectors(base, experts, keys), keys, self.top_k)
        return assemble(base, experts, add_scaled(base, combined, self.lam))


def _ties(ctx: MergeContext, top_k: float, lam: float) -> Ties:
    return Ties(top_k, lam)


TIES = Method(
    name="ties",
    kind="merging",
    build=_ties,
    summary="TIES: keep each task vector's top-k% entries, elect a sign per entry, average the agreeing entries",
    paper="Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023",
    url="https://arxiv.org/abs/2306.01708",
    params=(
        Param("top_k", float, 20.0, "percentage of each task vector's entries kept (by magnitude)", low=0.0, high=100.0, search=Choice((10.0, 20.0, 30.0))),
        Param("lam", float, 1.0, "scaling of the merged task vector, where no validation data chooses it (suite=merging searches 0.8-2.6)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# dare: Yu et al. 2024 (drop and rescale), then task arithmetic or TIES
# ---------------------------------------------------------------------------------------------


def dare_vectors(vectors: list[State], keys: list[str], p: float, generator: torch.Generator) -> list[State]:
    """Each entry of each task vector is dropped with probability p and the kept ones are scaled by
    1 / (1 - p). Masks are drawn expert by expert, key by key (in `keys` order): keep = rand >= p."""
    out = []
    for v in vectors:
        dropped = {}
        for k in keys:
            keep = torch.rand(v[k].shape, generator=generator) >= p
            dropped[k] = v[k] * keep.to(v[k].device) / (1.0 - p) if p < 1 else torch.zeros_like(v[k])
        out.append(dropped)
    return out


class Dare(Merging, SearchedCoefficient):
    """theta = theta_0 + lam * combine(DARE(tau_1), ..., DARE(tau_K)); lam searched on the grid of
    the combination it feeds (task arithmetic's, or TIES's with combine=ties)."""

    def __init__(self, p: float, lam: float, combine: str, top_k: float):
        self.p, self.lam, self.combine, self.top_k = p, lam, combine, top_k
        self.search_grid = TIES_LAMBDA_GRID if combine == "ties" else LAMBDA_GRID

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        generator = torch.Generator().manual_seed(int(ctx.seed))
        vectors = dare_vectors(task_vectors(base, experts, keys), keys, self.p, generator)
        if self.combine == "ties":
            combined = ties_combine(vectors, keys, self.top_k)
        else:
            combined = {k: torch.stack([v[k] for v in vectors]).sum(0) for k in keys}
        return assemble(base, experts, add_scaled(base, combined, self.lam))


def _dare(ctx: MergeContext, p: float, lam: float, combine: str, top_k: float) -> Dare:
    return Dare(p, lam, combine, top_k)


DARE = Method(
    name="dare",
    kind="merging",
    build=_dare,
    summary="DARE: drop task-vector entries with probability p, rescale by 1/(1-p), then task arithmetic (or TIES)",
    paper="Yu et al., Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch, ICML 2024",
    url="https://arxiv.org/abs/2311.03099",
    params=(
        Param("p", float, 0.5, "drop probability (the paper studies 0.1-0.9)", low=0.0, high=0.99, search=Uniform(0.1, 0.9)),
        Param("lam", float, 0.3, "scaling of the combined task vector, where no validation data chooses it (suite=merging searches it)", low=0.0),
        Param("combine", str, "task_arithmetic", "how the sparsified task vectors are combined", choices=("task_arithmetic", "ties")),
        Param("top_k", float, 20.0, "TIES trim percentage when combine=ties", low=0.0, high=100.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# fisher: Matena & Raffel 2022, Eq. 3 (diagonal Fisher-weighted averaging)
# ---------------------------------------------------------------------------------------------


class FisherMerging(Merging):
    """theta = sum_k F_k * theta_k / sum_k F_k per entry, F_k = max(Fisher of expert k, floor)
    (the floor, 1e-6 in the authors' code, makes entries no expert is sensitive to a plain mean)."""

    needs_fisher = True

    def __init__(self, floor: float):
        self.floor = floor

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        fishers = ctx.fishers
        if fishers is None or len(fishers) != len(experts):
            raise ValueError("fisher merging needs ctx.fishers: one dict of diagonal Fishers per expert")
        merged = {}
        for k in param_keys(base, ctx):
            weights = torch.stack([f[k].float().to(e[k].device).clamp_min(self.floor) for f, e in zip(fishers, experts)])
            values = torch.stack([e[k].float() for e in experts])
            merged[k] = (weights * values).sum(0) / weights.sum(0)
        return assemble(base, experts, merged)


def _fisher(ctx: MergeContext, floor: float) -> FisherMerging:
    return FisherMerging(floor)


FISHER = Method(
    name="fisher",
    kind="merging",
    build=_fisher,
    summary="Fisher-weighted averaging: each entry averaged with weights from each expert's diagonal Fisher",
    paper="Matena & Raffel, Merging Models with Fisher-Weighted Averaging, NeurIPS 2022",
    url="https://arxiv.org/abs/2111.09832",
    params=(Param("floor", float, 1e-6, "lower bound of every Fisher entry", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# adamerging: Yang et al. 2024 (coefficients learned by test-time entropy minimisation)
# ---------------------------------------------------------------------------------------------


class AdaMerging(Merging):
    """theta = theta_0 + sum_k lambda_k (.) tau_k, with lambda_k one scalar per task (`task`) or per
    task and parameter tensor (`layer`), initialised to `init`, clipped to [0, 1], and learned by
    Adam on the mean prediction entropy of the merged model over unlabeled test inputs, as in the
    authors' code (EnnengYang/AdaMerging: prior 0.3, Adam lr 1e-3, 500 steps, the clamp).

    Step s uses the s-th batch of `ctx.unlabeled()` (cycling). With a `TaskHeadsModel` (one head
    per task) a batch is [T, B, C, H, W] and each task's inputs are scored by its own head, the
    paper's objective sum_t H(head_t(body(x_t))) up to the factor 1/T (Adam does not see it).
    BatchNorm layers normalise with batch statistics during the search (train mode); a task-heads
    model runs each task's batch through the body on its own, so each task is normalised with its
    own statistics, as the merging suite's evaluation recomputes them per task. The objective
    presumes one head per task: with one head shared by experts of disjoint classes (the continual
    suite's class-incremental merging) the most confident single expert minimises the entropy, so
    the search collapses onto it."""

    def __init__(self, granularity: str, init: float, steps: int, lr: float):
        self.granularity, self.init, self.steps, self.lr = granularity, init, steps, lr
        self.history: list[float] = []  # mean entropy per step (for tests and diagnostics)
        self.coefficients: torch.Tensor | None = None

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        vectors = task_vectors(base, experts, keys)
        shape = (len(experts), len(keys)) if self.granularity == "layer" else (len(experts), 1)
        raw = torch.full(shape, float(self.init), requires_grad=True)

        def merged_params(lam: torch.Tensor) -> State:
            out = {}
            for j, k in enumerate(keys):
                col = j if self.granularity == "layer" else 0
                out[k] = base[k].float() + sum(lam[i, col] * v[k] for i, v in enumerate(vectors))
            return out

        if self.steps > 0:
            build: Callable[[], torch.nn.Module] | None = ctx.build_model
            if build is None or ctx.unlabeled is None:
                raise ValueError("adamerging needs ctx.build_model and ctx.unlabeled")
            model = build().to(ctx.device)
            model.train()  # batch statistics in BatchNorm
            buffers = {k: v.clone().to(ctx.device) for k, v in assemble(base, experts, {}).items() if k not in set(keys)}
            optimizer = torch.optim.Adam([raw], lr=self.lr, betas=(0.9, 0.999), weight_decay=0.0)
            batches = list(ctx.unlabeled())
            for step in range(self.steps):
                xb = batches[step % len(batches)].to(ctx.device)
                params = {k: v.to(ctx.device) for k, v in merged_params(raw.clamp(0.0, 1.0)).items()}
                logits = functional_call(model, ({**buffers, **params},), (xb,)).float()
                entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
                optimizer.zero_grad()
                entropy.backward()
                optimizer.step()
                self.history.append(float(entropy.detach()))
        with torch.no_grad():
            final = merged_params(raw.detach().clamp(0.0, 1.0))
        self.coefficients = raw.detach().clamp(0.0, 1.0)
        return assemble(base, experts, final)

    def report(self) -> dict[str, list[float]]:
        """The learned coefficients (row-major: task, then tensor) and the entropy per step."""
        if self.coefficients is None:
            return {}
        return {"adamerging_coefficients": [float(v) for v in self.coefficients.flatten()], "adamerging_entropy": list(self.history)}


def _adamerging(ctx: MergeContext, granularity: str, init: float, steps: int, lr: float) -> AdaMerging:
    return AdaMerging(granularity, init, steps, lr)


ADAMERGING = Method(
    name="adamerging",
    kind="merging",
    build=_adamerging,
    summary="AdaMerging: task- or layer-wise task-arithmetic coefficients learned by entropy minimisation on unlabeled test inputs",
    paper="Yang et al., AdaMerging: Adaptive Model Merging for Multi-Task Learning, ICLR 2024",
    url="https://arxiv.org/abs/2310.02575",
    params=(
        Param("granularity", str, "layer", "one coefficient per task (task) or per task and tensor (layer)", choices=("layer", "task")),
        Param("init", float, 0.3, "initial coefficient (the paper: 0.3)", low=0.0, high=1.0),
        Param("steps", int, 500, "Adam steps (the paper: 500)", low=0),
        Param("lr", float, 1e-3, "Adam learning rate (the paper: 1e-3)", low=0.0),
    ),
    # 2: the paper's 500 steps at lr 1e-3 (were 100 at 1e-3 x 10); the entropy series is stored
    version="2",
)


# ---------------------------------------------------------------------------------------------
# output_ensemble: the average of the experts' predicted probabilities (the ensemble baseline)
# ---------------------------------------------------------------------------------------------


class OutputEnsemble(Ensembling):
    """p(y | x) = 1/K sum_k p_k(y | x): every expert kept, their class probabilities averaged
    (K models' memory and inference cost: the reference a single merged model is measured against)."""

    def ensemble(self, base: State, experts: list[State], ctx: MergeContext) -> Ensemble:
        return Ensemble(tuple(experts), tuple(1.0 / len(experts) for _ in experts))


def _output_ensemble(ctx: MergeContext) -> OutputEnsemble:
    return OutputEnsemble()


OUTPUT_ENSEMBLE = Method(
    name="output_ensemble",
    kind="merging",
    build=_output_ensemble,
    summary="output ensemble: keep every expert and average their predicted class probabilities (not one model)",
    paper="Lakshminarayanan, Pritzel & Blundell, Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles, NeurIPS 2017",
    url="https://arxiv.org/abs/1612.01474",
    suites=("merging",),
)


# ---------------------------------------------------------------------------------------------
# btm: Branch-Train-Merge (Li et al. 2022): experts branched from one seed model, trained on
# their domains, then ensembled or averaged
# ---------------------------------------------------------------------------------------------


class BranchTrainMergeEnsemble(Ensembling):
    """The ELMforest's ensemble arm: p(y | x) = sum_j w_j p_j(y | x), w uniform (the paper's
    uniform-prior ensemble; its domain posterior needs each expert's likelihood of the input,
    which a classifier does not give)."""

    def ensemble(self, base: State, experts: list[State], ctx: MergeContext) -> Ensemble:
        return Ensemble(tuple(experts), tuple(1.0 / len(experts) for _ in experts))


class BranchTrainMergeAverage(Merging):
    """The average arm: theta = sum_j w_j theta_j, w uniform (parameter averaging of the ELMs,
    which collapses the forest back to one model of the seed's size)."""

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        return assemble(base, experts, {k: torch.stack([e[k].float() for e in experts]).mean(0) for k in keys})


def _btm(ctx: MergeContext, arm: str) -> Merging:
    return BranchTrainMergeEnsemble() if arm == "ensemble" else BranchTrainMergeAverage()


BTM = Method(
    name="btm",
    kind="merging",
    build=_btm,
    summary="Branch-Train-Merge: experts branched from one seed model and trained per domain, then ensembled (or averaged)",
    paper="Li, Gururangan, Dettmers, Lewis, Althoff, Smith & Zettlemoyer, Branch-Train-Merge: Embarrassingly Parallel Training of Expert Language Models, 2022",
    url="https://arxiv.org/abs/2208.03306",
    params=(Param("arm", str, "ensemble", "ensemble: average the experts' outputs; average: average their parameters", choices=("ensemble", "average")),),
    suites=("merging",),
)


# ---------------------------------------------------------------------------------------------
# pleas: Nasery et al. 2025 (permutation matching, then layer-wise least squares)
# ---------------------------------------------------------------------------------------------

_WEIGHTED = (nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class _Layer:
    name: str
    module: nn.Module
    norm: str | None = None  # the BatchNorm applied to this layer's output
    head: int | None = None  # the task of a TaskHeadsModel's head


def _key(module_name: str, tensor: str) -> str:
    """The state-dict key of a module's tensor (the root module has the empty name)."""
    return f"{module_name}.{tensor}" if module_name else tensor


def _units(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _fan_in(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


def layer_chain(model: nn.Module, probe: torch.Tensor) -> list[_Layer]:
    """The convolution and linear layers of `model` in the order a forward pass of `probe` calls
    them, each with the BatchNorm that follows it; a TaskHeadsModel's heads last. Raises for what
    PLeaS as implemented here cannot permute: groups, a BatchNorm that does not follow a layer,
    or a layer whose input is not its predecessor's output (residual connections)."""
    order: list[str] = []
    modules = dict(model.named_modules())
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: order.append(name)) for name, m in modules.items() if isinstance(m, _WEIGHTED + _NORMS)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(probe)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    layers: list[_Layer] = []
    for name in dict.fromkeys(order):
        m = modules[name]
        if isinstance(m, _NORMS):
            if not layers or layers[-1].norm is not None or layers[-1].head is not None or m.num_features != _units(layers[-1].module):
                raise ValueError(f"pleas: BatchNorm {name!r} does not follow a convolution or linear layer of its width; pleas merges plain chains of layers")
            layers[-1].norm = name
            continue
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise ValueError(f"pleas: grouped convolution {name!r} is not supported")
        head = int(name.split(".")[1]) if isinstance(model, TaskHeadsModel) and name.startswith("heads.") else None
        layers.append(_Layer(name, m, head=head))
    body = [layer for layer in layers if layer.head is None]
    for prev, layer in itertools.pairwise(body):
        if _fan_in(layer.module) % _units(prev.module):
            raise ValueError(f"pleas: {layer.name!r} does not take {prev.name!r}'s output as input; residual and branching models are not supported")
    return layers


def _capture(model: nn.Module, state: State, layers: list[_Layer], batches: list[torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """The input of every layer over `batches`, with `state` loaded (eval mode: running statistics)."""
    model.load_state_dict(state)
    model.eval()
    seen: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    modules = dict(model.named_modules())
    hooks = [modules[layer.name].register_forward_pre_hook(lambda mod, inp, name=layer.name: seen[name].append(inp[0].detach().float().cpu())) for layer in layers]
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb.to(device))
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(parts) for name, parts in seen.items()}


def _unit_view(x: torch.Tensor, units: int) -> torch.Tensor:
    """[N', units]: the samples of each unit of a layer's output, as its consumer sees it (channels
    of a feature map, or blocks of a flattened map)."""
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, units)
    return x.reshape(len(x), units, -1).permute(0, 2, 1).reshape(-1, units)


def _match(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """perm with other[:, perm] best aligned to reference: the assignment maximising the summed
    correlation of matched units (Hungarian algorithm, as in activation matching)."""
    def standardise(z: torch.Tensor) -> torch.Tensor:
        z = z.double()
        return (z - z.mean(0)) / z.std(0).clamp_min(1e-8)

    corr = standardise(reference).T @ standardise(other) / len(reference)
    rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


def _permute_units(x: torch.Tensor, perm: torch.Tensor, dim: int, units: int) -> torch.Tensor:
    """Reorder the units of `x` along `dim` (a unit may span a block of a flattened map)."""
    if x.shape[dim] == units:
        return x.index_select(dim, perm)
    block = x.shape[dim] // units
    index = (perm.view(-1, 1) * block + torch.arange(block).view(1, -1)).flatten()
    return x.index_select(dim, index)


def _least_squares(module: nn.Module, x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """argmin_W ||x W^T + b - y||^2 (+ ridge), a convolution's patches unfolded; (weight, bias)."""
    bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        chunks = [(F.unfold(xc, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2).reshape(-1, _fan_in(module) * math.prod(module.kernel_size)),
                   yc.flatten(2).transpose(1, 2).reshape(-1, module.out_channels)) for xc, yc in zip(x.split(64), y.split(64))]
    else:
        chunks = [(x.reshape(len(x), -1), y)]
    dim = chunks[0][0].shape[1] + int(bias)
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    cross = torch.zeros(dim, chunks[0][1].shape[1], dtype=torch.float64)
    for xc, yc in chunks:
        xc = xc.double()
        if bias:
            xc = torch.cat([xc, torch.ones(len(xc), 1, dtype=torch.float64)], 1)
        gram += xc.T @ xc
        cross += xc.T @ yc.double()
    gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(dim, dtype=torch.float64)
    solution = torch.linalg.solve(gram, cross).T.float()  # [out, in (+1)]
    weight = solution[:, : dim - int(bias)].reshape(module.weight.shape)
    return weight, (solution[:, -1] if bias else None)


class PLeaS(Merging):
    """PLeaS: (1) permutations: each expert's units are matched to the first expert's, layer by
    layer, by the correlation of their activations on `ctx.unlabeled()` inputs (Hungarian
    algorithm); (2) least squares: each layer's merged weights solve
    min_W || W Xbar - Ybar ||^2, Xbar the mean over experts of the layer's permuted inputs and Ybar
    the mean of its permuted outputs (the authors' code, full merging: the merged model keeps the
    experts' width). BatchNorm affine parameters and statistics are the mean of the permuted
    experts'. A TaskHeadsModel's heads are kept, head t re-indexed into the merged features by expert
    t's permutation when there is one expert per task (the authors' evaluation with separate
    heads), else by the first expert's (heads shared by checkpoints of one run); a single shared
    classifier is fitted by least squares like every other layer. The experts need not share an
    initialisation: `base` only supplies keys and integer buffers."""

    def __init__(self, ridge: float):
        self.ridge = ridge

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        if ctx.build_model is None or ctx.unlabeled is None:
            raise ValueError("pleas needs ctx.build_model and ctx.unlabeled (inputs to match activations on)")
        batches = list(ctx.unlabeled())
        model = ctx.build_model().to(ctx.device)
        layers = layer_chain(model, batches[0][:2] if not isinstance(model, TaskHeadsModel) else batches[0][:, :2])
        keys = set(param_keys(base, ctx))
        covered = {_key(layer.name, p) for layer in layers for p in ("weight", "bias")} | {_key(layer.norm, p) for layer in layers if layer.norm for p in ("weight", "bias")}
        if keys - covered:
            raise ValueError(f"pleas: parameters outside a conv/linear/BatchNorm chain: {sorted(keys - covered)[:3]}")
        inputs = [_capture(model, e, layers, batches, ctx.device) for e in experts]
        body = [layer for layer in layers if layer.head is None]
        heads = [layer for layer in layers if layer.head is not None]
        # a plain model's last layer gives the classes: its outputs are not permuted
        permuted = body if heads else body[:-1]
        perms: dict[str, list[torch.Tensor]] = {}
        for i, layer in enumerate(permuted):
            units = _units(layer.module)
            consumers = [body[i + 1].name] if i + 1 < len(body) else [h.name for h in heads]
            seen = [_unit_view(torch.cat([inp[c] for c in consumers]), units) for inp in inputs]
            perms[layer.name] = [torch.arange(units)] + [_match(seen[0], s) for s in seen[1:]]
        merged: State = {}
        previous: str | None = None
        for layer in body:
            module, units = layer.module, _units(layer.module)
            xs, ys = [], []
            for j, (state, inp) in enumerate(zip(experts, inputs)):
                x = inp[layer.name]
                w, b = state[_key(layer.name, "weight")].float(), state.get(_key(layer.name, "bias"))
                y = F.conv2d(x, w, b, module.stride, module.padding, module.dilation) if isinstance(module, nn.Conv2d) else F.linear(x, w, b)
                if previous is not None:
                    x = _permute_units(x, perms[previous][j], 1, _units(dict(model.named_modules())[previous]))
                if layer.name in perms:
                    y = y.index_select(1, perms[layer.name][j])
                xs.append(x)
                ys.append(y)
            weight, bias = _least_squares(module, torch.stack(xs).mean(0), torch.stack(ys).mean(0), self.ridge)
            merged[_key(layer.name, "weight")] = weight
            if bias is not None:
                merged[_key(layer.name, "bias")] = bias
            if layer.norm is not None:
                perm = perms.get(layer.name, [torch.arange(units)] * len(experts))
                for p in ("weight", "bias", "running_mean", "running_var"):
                    merged[_key(layer.norm, p)] = torch.stack([e[_key(layer.norm, p)].float()[perm[j]] for j, e in enumerate(experts)]).mean(0)
            previous = layer.name
        last = body[-1]
        for head in heads:  # kept heads, re-indexed by their own expert's permutation of the body's output
            # one expert per task: head t reads expert t's features; otherwise (checkpoints of one run
            # sharing its heads) every head reads the reference's
            perm = perms[last.name][head.head if len(heads) == len(experts) else 0]
            merged[_key(head.name, "weight")] = _permute_units(base[_key(head.name, "weight")].float(), perm, 1, _units(last.module))
        out = {}
        for k, v in base.items():
            out[k] = merged[k].to(v.dtype) if k in merged else v.clone()
        return out


def _pleas(ctx: MergeContext, ridge: float) -> PLeaS:
    return PLeaS(ridge)


PLEAS = Method(
    name="pleas",
    kind="merging",
    build=_pleas,
    summary="PLeaS: match each expert's units to the first's by activation correlation, then fit each merged layer by least squares",
    paper="Nasery, Hayase, Koh & Oh, PLeaS - Merging Models with Permutations and Least Squares, CVPR 2025",
    url="https://arxiv.org/abs/2407.02447",
    params=(Param("ridge", float, 1e-4, "ridge of the least-squares fits, relative to the mean diagonal of the Gram matrix", low=0.0),),
    suites=("merging",),
    default_grid=False,
    default_grid_note="made for experts that share no initialisation: run it in its own cell, suite=merging protocol=seeds method=pleas",
)


# ---------------------------------------------------------------------------------------------
# lcsc: Liu et al. 2025 (linear combination of saved checkpoints, evolutionary search)
# ---------------------------------------------------------------------------------------------


def combine(experts: list[State], keys: list[str], alpha: Sequence[float]) -> State:
    return {k: sum(float(a) * e[k].float() for a, e in zip(alpha, experts)) for k in keys}


def entropy_fitness(base: State, experts: list[State], ctx: MergeContext) -> Callable[[State], float]:
    """Minus the mean prediction entropy on `ctx.unlabeled()` (BatchNorm on batch statistics)."""
    if ctx.build_model is None or ctx.unlabeled is None:
        raise ValueError("lcsc needs ctx.validate (labelled validation scores) or ctx.build_model and ctx.unlabeled")
    model = ctx.build_model().to(ctx.device).train()
    batches = list(ctx.unlabeled())

    def score(state: State) -> float:
        model.load_state_dict(state)
        with torch.no_grad():
            logits = [model(xb.to(ctx.device)).float() for xb in batches]
        return -sum(float(-(z.softmax(-1) * z.log_softmax(-1)).sum(-1).mean()) for z in logits) / len(logits)

    return score


class LCSC(Merging):
    """theta = sum_i alpha_i theta_i over the saved checkpoints (the "experts"), sum_i alpha_i = 1,
    any sign, alpha found by evolutionary search on a fitness: the protocol's labelled validation
    score (`ValidatedMergeContext.validate`), else minus the mean prediction entropy on
    `ctx.unlabeled()`. The population starts from the last checkpoint, the uniform average, and
    EMA-like profiles (alpha_i proportional to d^(n-1-i) for d in 0.5, 0.7, 0.9); each generation
    draws `population` children, each a uniform crossover of two parents from the better half
    plus N(0, sigma^2) noise, renormalised to sum 1; the best `population` of parents and children
    survive. The paper's search code is not public; this is the search its text describes."""

    def __init__(self, population: int, generations: int, sigma: float):
        self.population, self.generations, self.sigma = population, generations, sigma
        self.alpha: list[float] = []
        self.best_per_generation: list[float] = []

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        keys = param_keys(base, ctx)
        n = len(experts)
        validate = ctx.validate if isinstance(ctx, ValidatedMergeContext) else None
        fitness = validate or entropy_fitness(base, experts, ctx)
        generator = torch.Generator().manual_seed(int(ctx.seed))

        def score(alpha: torch.Tensor) -> float:
            return float(fitness(assemble(base, experts, combine(experts, keys, alpha.tolist()))))

        seeds = [torch.nn.functional.one_hot(torch.tensor(n - 1), n).double(), torch.full((n,), 1.0 / n, dtype=torch.float64)]
        for decay in (0.5, 0.7, 0.9):
            profile = torch.tensor([decay ** (n - 1 - i) for i in range(n)], dtype=torch.float64)
            seeds.append(profile / profile.sum())
        while len(seeds) < self.population:
            noisy = seeds[1] + self.sigma * torch.randn(n, generator=generator, dtype=torch.float64)
            seeds.append(noisy / noisy.sum())
        scored = [(score(a), i, a) for i, a in enumerate(seeds[: max(self.population, 2)])]
        counter = len(scored)
        for _ in range(self.generations):
            scored.sort(key=lambda t: (-t[0], t[1]))
            parents = [a for _, _, a in scored[: max(2, len(scored) // 2)]]
            children = []
            for _ in range(self.population):
                i, j = torch.randperm(len(parents), generator=generator)[:2].tolist()
                mask = torch.rand(n, generator=generator) < 0.5
                child = torch.where(mask, parents[i], parents[j]) + self.sigma * torch.randn(n, generator=generator, dtype=torch.float64)
                total = float(child.sum())
                child = child / total if abs(total) > 1e-6 else parents[i].clone()
                children.append((score(child), counter, child))
                counter += 1
            scored = sorted(scored + children, key=lambda t: (-t[0], t[1]))[: max(self.population, 2)]
            self.best_per_generation.append(scored[0][0])
        best = scored[0][2]
        self.alpha = [float(v) for v in best]
        return assemble(base, experts, combine(experts, keys, self.alpha))

    def report(self) -> dict[str, list[float]]:
        return {"lcsc_coefficients": list(self.alpha), "lcsc_best_fitness": list(self.best_per_generation)} if self.alpha else {}


def _lcsc(ctx: MergeContext, population: int, generations: int, sigma: float) -> LCSC:
    return LCSC(population, generations, sigma)


LCSC_METHOD = Method(
    name="lcsc",
    kind="merging",
    build=_lcsc,
    summary="LCSC: a linear combination of saved checkpoints (sum 1, any sign) found by evolutionary search on validation data",
    paper="Liu et al., Linear Combination of Saved Checkpoints Makes Consistency and Diffusion Models Better, ICLR 2025",
    url="https://arxiv.org/abs/2404.02241",
    params=(
        Param("population", int, 8, "candidates kept per generation (and children drawn per generation)", low=2),
        Param("generations", int, 8, "generations of the evolutionary search", low=0),
        Param("sigma", float, 0.1, "standard deviation of the Gaussian mutation of each coefficient", low=0.0),
    ),
    suites=("merging",),
    default_grid=False,
    default_grid_note="made for the checkpoints of one run, and 72 validation scorings a merge: suite=merging protocol=trajectory method=lcsc",
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (AVERAGE, TASK_ARITHMETIC, TIES, DARE, FISHER, ADAMERGING, OUTPUT_ENSEMBLE, BTM, PLEAS, LCSC_METHOD)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
