"""Built-in continual-learning strategies (kind `strategy`), one section per method.

A strategy sees the stream task by task through the hooks of `harness.kinds.Strategy`:
`train_tasks(seen)` (which data is visible), `before_task`, `batch` (per training batch),
`penalty` (added to the loss) and `after_task` (consolidation). Images in `Task.x` are uint8;
`ctx.normalize` turns them into the float tensors the model sees.

`Reservoir` is the replay buffer; EWC's Fisher is `harness.models.diagonal_fisher`, the same one
the continual suite computes for Fisher merging.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import hookimpl
from harness.kinds.strategy import Strategy, StrategyContext, Task
from harness.method import Method
from harness.models import diagonal_fisher
from harness.params import Param

# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


class Reservoir:
    """A fixed-size buffer filled by reservoir sampling (Vitter 1985, Algorithm R).

    After n samples have been offered, every one of them is in the buffer with probability
    size / n (for n >= size), and the buffer never holds more than `size` samples. Draws come
    from a seeded generator, so the buffer's content is reproducible.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seen = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.count = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Offer the samples of (x, y) in order."""
        m = len(y)
        if m == 0 or self.size == 0:
            self.seen += m
            return
        if self.x is None:
            self.x = x.new_zeros((self.size, *x.shape[1:]))
            self.y = y.new_zeros((self.size, *y.shape[1:]))
        position = torch.arange(self.seen, self.seen + m, dtype=torch.float64)
        # Algorithm R: the n-th sample (0-based) draws j uniform in {0, ..., n}; it replaces slot j if j < size
        draws = (torch.rand(m, generator=self.generator, dtype=torch.float64) * (position + 1)).floor().long()
        slots = torch.where(position < self.size, position.long(), draws)
        writes: dict[int, int] = {}
        for i, slot in enumerate(slots.tolist()):
            if slot < self.size:
                writes[slot] = i  # a later sample overwrites an earlier one in the same slot
        if writes:
            dst = torch.tensor(list(writes), dtype=torch.long)
            src = torch.tensor(list(writes.values()), dtype=torch.long)
            self.x[dst] = x[src].to(self.x.device)
            self.y[dst] = y[src].to(self.y.device)
        self.seen += m
        self.count = min(self.size, self.seen)

    def sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """k samples drawn uniformly with replacement from the buffer (indices on `generator`'s device)."""
        idx = torch.randint(0, self.count, (k,), generator=generator, device=generator.device).to(self.x.device)
        return self.x[idx], self.y[idx]


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _parameters(model).items()}


# ---------------------------------------------------------------------------------------------
# naive: fine-tuning on each task in turn (the lower bound)
# ---------------------------------------------------------------------------------------------


class Naive(Strategy):
    """Train on the current task only, with no protection of earlier tasks."""

    def __init__(self, ctx: StrategyContext):
        self.ctx = ctx


NAIVE = Method(
    name="naive",
    kind="strategy",
    build=Naive,
    summary="fine-tuning on each task in turn, no protection against forgetting (the lower bound)",
    paper="McCloskey & Cohen, Catastrophic Interference in Connectionist Networks, Psychology of Learning and Motivation 1989",
    url="https://doi.org/10.1016/S0079-7421(08)60536-8",
)


# ---------------------------------------------------------------------------------------------
# joint: training on all data seen so far (the upper bound)
# ---------------------------------------------------------------------------------------------


class Joint(Strategy):
    """At task t, train (continuing from the current weights) on the union of tasks 0..t.

    Not a continual method: it stores every sample and its cost grows with t. It is the upper
    bound of the stream's accuracy for a model trained incrementally with the same budget per
    task; after the last task the model has been trained on all data.
    """

    def __init__(self, ctx: StrategyContext):
        self.ctx = ctx

    def train_tasks(self, seen: list[Task]) -> list[Task]:
        return list(seen)


JOINT = Method(
    name="joint",
    kind="strategy",
    build=Joint,
    summary="training on the union of all tasks seen so far (the upper bound; stores every sample)",
    paper="Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning, NeurIPS 2017 (the 'single' vs multi-task reference)",
    url="https://arxiv.org/abs/1706.08840",
)


# ---------------------------------------------------------------------------------------------
# replay: experience replay with a reservoir buffer (Chaudhry et al. 2019)
# ---------------------------------------------------------------------------------------------


class Replay(Strategy):
    """Each training batch is concatenated with an equally large batch drawn uniformly from a
    reservoir buffer of `memory` past samples. The buffer is filled after each task by offering
    that task's samples in a seeded random order (so during task t it holds tasks < t only)."""

    def __init__(self, ctx: StrategyContext, memory: int):
        self.ctx = ctx
        self.buffer = Reservoir(memory, seed=ctx.seed)

    def batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.buffer) == 0:
            return x, y
        bx, by = self.buffer.sample(len(x), generator)
        bx = self.ctx.normalize(bx.to(x.device)).to(x.dtype)
        by = by.to(y.device)
        if y.dtype.is_floating_point:  # soft targets from a mixing augmentation
            by = F.one_hot(by, y.shape[1]).to(y.dtype)
        return torch.cat([x, bx]), torch.cat([y, by])

    def after_task(self, model: nn.Module, task: Task) -> None:
        order = torch.randperm(len(task.y), generator=self.buffer.generator)
        self.buffer.add(task.x[order], task.y[order])


REPLAY = Method(
    name="replay",
    kind="strategy",
    build=Replay,
    summary="experience replay: each batch is joined by an equal batch from a reservoir-sampled memory",
    paper="Chaudhry et al., On Tiny Episodic Memories in Continual Learning, arXiv 2019 (reservoir: Vitter, ACM TOMS 1985)",
    url="https://arxiv.org/abs/1902.10486",
    params=(Param("memory", int, 200, "buffer size in samples", low=0),),
)


# ---------------------------------------------------------------------------------------------
# ewc: Kirkpatrick et al. 2017, Eq. 3 (one quadratic penalty per past task)
# ---------------------------------------------------------------------------------------------


class EWC(Strategy):
    """penalty = lam/2 * sum_{past tasks s} sum_i F_{s,i} (theta_i - theta*_{s,i})^2, with F_s the
    diagonal Fisher at the end of task s on (up to `fisher_samples` of) its training inputs."""

    def __init__(self, ctx: StrategyContext, lam: float, fisher_samples: int):
        self.ctx = ctx
        self.lam = lam
        self.fisher_samples = fisher_samples
        self.terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def after_task(self, model: nn.Module, task: Task) -> None:
        g = torch.Generator().manual_seed(self.ctx.seed * 1000 + task.index)
        keep = torch.randperm(len(task.y), generator=g)[: self.fisher_samples]
        device = next(model.parameters()).device
        x = self.ctx.normalize(task.x[keep].to(device))
        self.terms.append((diagonal_fisher(model, x), _snapshot(model)))

    def penalty(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if not self.terms:
            return None
        params = _parameters(model)
        total = logits.new_zeros((), dtype=torch.float32)
        for fisher, anchor in self.terms:
            for k, p in params.items():
                total = total + (fisher[k] * (p.float() - anchor[k]).pow(2)).sum()
        return 0.5 * self.lam * total


EWC_METHOD = Method(
    name="ewc",
    kind="strategy",
    build=EWC,
    summary="elastic weight consolidation: quadratic penalty weighted by each past task's diagonal Fisher",
    paper="Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017",
    url="https://arxiv.org/abs/1612.00796",
    params=(
        Param("lam", float, 10.0, "penalty strength lambda (100 diverged with the tiny recipe's lr 0.05 on 2 of 3 seeds)", low=0.0),
        Param("fisher_samples", int, 500, "training inputs per task for the Fisher", low=1),
    ),
)


# ---------------------------------------------------------------------------------------------
# l2: an isotropic quadratic penalty to the previous task's weights
# ---------------------------------------------------------------------------------------------


class L2(Strategy):
    """penalty = lam/2 * ||theta - theta*||^2, theta* the weights at the end of the previous task
    (EWC with the Fisher replaced by the identity: the baseline of Kirkpatrick et al., Fig. 2)."""

    def __init__(self, ctx: StrategyContext, lam: float):
        self.ctx = ctx
        self.lam = lam
        self.anchor: dict[str, torch.Tensor] | None = None

    def after_task(self, model: nn.Module, task: Task) -> None:
        self.anchor = _snapshot(model)

    def penalty(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.anchor is None:
            return None
        total = sum((p.float() - self.anchor[k]).pow(2).sum() for k, p in _parameters(model).items())
        return 0.5 * self.lam * total


L2_METHOD = Method(
    name="l2",
    kind="strategy",
    build=L2,
    summary="L2 penalty pulling the weights towards those at the end of the previous task",
    paper="Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017 (the L2 baseline, Fig. 2A)",
    url="https://arxiv.org/abs/1612.00796",
    params=(Param("lam", float, 0.1, "penalty strength lambda", low=0.0),),
)


# ---------------------------------------------------------------------------------------------
# lwf: Li & Hoiem 2017, Eq. 2 (knowledge distillation of the previous model's outputs)
# ---------------------------------------------------------------------------------------------


class LwF(Strategy):
    """penalty = alpha * mean_n [ -sum_{c in old} q_c log r_c ], q = softmax(z_old / T), r = softmax(z / T)
    over the columns of the classes of earlier tasks, z_old the logits of a frozen copy of the model
    taken before the current task, on the same batch. T = 2 and alpha = lambda_o = 1 as in the paper."""

    def __init__(self, ctx: StrategyContext, alpha: float, temperature: float):
        self.ctx = ctx
        self.alpha = alpha
        self.temperature = temperature
        self.old: nn.Module | None = None
        self.seen_classes: list[int] = []
        self.old_classes: torch.Tensor | None = None

    def before_task(self, model: nn.Module, task: Task) -> None:
        if self.seen_classes:
            self.old = copy.deepcopy(model).eval()
            for p in self.old.parameters():
                p.requires_grad_(False)
            self.old_classes = torch.tensor(sorted(self.seen_classes), dtype=torch.long)

    def after_task(self, model: nn.Module, task: Task) -> None:
        self.seen_classes = sorted(set(self.seen_classes) | set(task.classes))

    def penalty(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.old is None:
            return None
        with torch.no_grad():
            old_logits = self.old(x).float()
        cols = self.old_classes.to(logits.device)
        return self.alpha * distillation(logits.float()[:, cols], old_logits[:, cols], self.temperature)


def distillation(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Li & Hoiem's L_old: mean over the batch of -sum_c softmax(old/T)_c * log softmax(new/T)_c."""
    q = (old_logits / temperature).softmax(-1)
    return -(q * (logits / temperature).log_softmax(-1)).sum(-1).mean()


LWF = Method(
    name="lwf",
    kind="strategy",
    build=LwF,
    summary="learning without forgetting: distil the previous model's outputs on the old classes (T=2)",
    paper="Li & Hoiem, Learning without Forgetting, TPAMI 2017 (ECCV 2016)",
    url="https://arxiv.org/abs/1606.09282",
    params=(
        Param("alpha", float, 1.0, "weight lambda_o of the distillation term", low=0.0),
        Param("temperature", float, 2.0, "distillation temperature T", low=1e-3),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (NAIVE, JOINT, REPLAY, EWC_METHOD, L2_METHOD, LWF)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
