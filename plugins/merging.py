"""Built-in model-merging methods (kind `merging`), one section per method.

`merge(base, experts, ctx)` takes the state dicts of a shared base model and of one expert per
task fine-tuned from it, and returns one state dict. Task vectors are tau_k = theta_k - theta_0.

Which entries are merged: the keys in `ctx.param_keys` (the trainable parameters; the
continual suite passes them), or every floating-point tensor when it is None. The other
entries are buffers: floating-point ones (BatchNorm running mean/var) are averaged over the
experts, integer ones (num_batches_tracked) are taken from the base. The continual suite then
recomputes the BatchNorm statistics of every merged model on unlabeled training inputs (see its
card), so the averaged statistics are only a starting point.

The context also carries `seed` (DARE's drop mask), `fishers` (one dict of diagonal Fishers per
expert, for a method that declares `needs_fisher`: Fisher merging), `build_model` (a zero-argument
factory of the architecture, AdaMerging) and `unlabeled()` (an iterable of unlabeled input
batches, AdaMerging).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call

from harness.hookspecs import hookimpl
from harness.kinds import MergeContext, Merging, Method
from harness.params import Param

State = dict[str, torch.Tensor]

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


class TaskArithmetic(Merging):
    """theta = theta_0 + lam * sum_k tau_k."""

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


class Ties(Merging):
    """theta = theta_0 + lam * ties_combine(tau_1..tau_K, top_k)."""

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
        Param("top_k", float, 20.0, "percentage of each task vector's entries kept (by magnitude)", low=0.0, high=100.0),
        Param("lam", float, 1.0, "scaling of the merged task vector (the paper's default without validation)", low=0.0),
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


class Dare(Merging):
    def __init__(self, p: float, lam: float, combine: str, top_k: float):
        self.p, self.lam, self.combine, self.top_k = p, lam, combine, top_k

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
        Param("p", float, 0.5, "drop probability", low=0.0, high=0.99),
        Param("lam", float, 0.3, "scaling of the combined task vector", low=0.0),
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
    Adam on the mean prediction entropy of the merged model over unlabeled inputs
    (`ctx.unlabeled()`), for `steps` steps cycling through its batches. BatchNorm layers use
    batch statistics during this search."""

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
            optimizer = torch.optim.Adam([raw], lr=self.lr)
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
        """The learned coefficients (row-major: task, then tensor), stored with the run."""
        return {"adamerging_coefficients": [float(v) for v in self.coefficients.flatten()]} if self.coefficients is not None else {}


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
        Param("steps", int, 100, "Adam steps (the paper: 500)", low=0),
        Param("lr", float, 0.01, "Adam learning rate (the paper: 1e-3)", low=0.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (AVERAGE, TASK_ARITHMETIC, TIES, DARE, FISHER, ADAMERGING)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
