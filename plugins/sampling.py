"""Kind `sampler`: a method that decides which training samples an epoch visits (the `Sampler`
role, with an `Observer` for the per-sample facts it needs); and its methods.

Why a kind of its own: re-weighting, curricula and upsampling change the data distribution, not
the objective, the batch transform or the update; they should combine with any loss
(`focal+self_paced`), augmentation and update rule (`useful+sam`, as the USEFUL paper does).
Under `loss` each would replace the objective. Only one sampler trains an entry (the role has one
owner), which is what one method per kind gives.

Epoch length. The engine's learning-rate schedule counts `ceil(n / batch_size)` steps per epoch
whatever the plan's length (a fixed clock), so a plan longer or shorter than the training set
would end the schedule early (lr 0 for the rest) or never. Every method here therefore returns
epochs of exactly n visits: it draws consecutive shuffled passes over the multiset of samples it
wants visited (`EpochStream`) and cuts them into epochs of n. The distribution of what the steps
see is the method's; an "epoch" is n visits. With the multiset equal to the training set this is
exactly the engine's own shuffling (the same `randperm` draw), which the tests use.

Per-sample statistics come from the training passes the observer sees (train mode, after the
entry's transforms), as the training seam provides them; rows a transform appended (index -1)
are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kind import Kind
from harness.method import Method
from harness.params import Param
from harness.seams import AuxiliaryModels, Batch, EpochPlan, Observer, Outputs, Sampler, Teacher, TrainContext


class DataSampler(Sampler):
    """The kind's interface: `epoch_plan(epoch, generator) -> EpochPlan` (and, usually, `observe`)."""


def check(method: Any, env: Any) -> Any:
    """Two short epochs of the tiny CNN through the real assembly and engine, cross-entropy as
    the objective, the method choosing what each epoch visits (restarts included)."""
    from harness.conformance import run_training_method

    return run_training_method(method, env)


KIND = Kind(
    name="sampler",
    summary="decides which samples an epoch visits (re-weighting, curricula, upsampling); combines with any loss and update rule",
    interface=DataSampler,
    order=22,  # after augmentation (20), before optimizer (25): `ce+useful+sam`
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    suite="long_tail",
)


# ---------------------------------------------------------------------------------------------
# shared parts
# ---------------------------------------------------------------------------------------------


class EpochStream:
    """Consecutive shuffled passes over a pool of sample indices (a multiset: an index may repeat),
    cut into epochs of `length` visits; what one epoch leaves of a pass opens the next epoch."""

    def __init__(self, length: int):
        self.length = length
        self.pending = torch.empty(0, dtype=torch.long)

    def reset(self) -> None:
        """Forget the rest of the current pass (the pool changed)."""
        self.pending = torch.empty(0, dtype=torch.long)

    def take(self, pool: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        parts, have = [self.pending], len(self.pending)
        while have < self.length:
            perm = torch.randperm(len(pool), generator=generator, device=generator.device).cpu()
            parts.append(pool[perm])
            have += len(pool)
        stream = torch.cat(parts)
        self.pending = stream[self.length :]
        return stream[: self.length]


def per_sample_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_k t_k log softmax(z)_k per row, for int or soft targets: [B]."""
    logits = logits.float()
    if targets.dtype.is_floating_point:
        return -(targets.float() * F.log_softmax(logits, dim=1)).sum(dim=1)
    return F.cross_entropy(logits, targets.long(), reduction="none")


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(dim=1) if targets.dtype.is_floating_point else targets.long()


class PerSampleRecord:
    """The latest value seen for each training sample (losses, labels, output rows)."""

    def __init__(self, size: int):
        self.size = size
        self.loss = torch.zeros(size, dtype=torch.float64)
        self.label = torch.zeros(size, dtype=torch.long)
        self.seen = torch.zeros(size, dtype=torch.bool)
        self.outputs: torch.Tensor | None = None  # [n, C], made on the first call that keeps outputs

    def update(self, batch: Batch, logits: torch.Tensor, *, keep_outputs: bool = False) -> None:
        rows = batch.index >= 0
        if not bool(rows.any()):
            return
        idx = batch.index[rows].cpu()
        self.loss[idx] = per_sample_cross_entropy(logits[rows], batch.y[rows]).double().cpu()
        self.label[idx] = hard_labels(batch.y[rows]).cpu()
        self.seen[idx] = True
        if keep_outputs:
            if self.outputs is None:
                self.outputs = torch.zeros(self.size, logits.shape[1])
            self.outputs[idx] = logits[rows].float().cpu()


def class_labels(ctx_labels: torch.Tensor | None, record: PerSampleRecord) -> torch.Tensor:
    """The training labels: the run's (TrainContext.labels) when it passed them, else those seen."""
    if ctx_labels is not None and len(ctx_labels) == record.size:
        return ctx_labels.long().cpu()
    return record.label


# ---------------------------------------------------------------------------------------------
# useful: Nguyen, Haddad, Gan & Mirzasoleiman, NeurIPS 2024
# ---------------------------------------------------------------------------------------------


class UpsampleEarlyForUniformLearning(DataSampler, Observer):
    """USEFUL (UpSample Early For Uniform Learning). Train for t epochs; cluster each class's
    examples into two by k-means on the model's output vectors (logits) after those t epochs; the
    cluster with the higher mean loss holds the examples whose (slow-learnable) features the model
    has not learned yet: it is upsampled `upsample_factor` times (2: every such example once more),
    and training restarts from the initial weights (EpochPlan(restart=True)) for the recipe's full
    epochs on the changed distribution.

    The separating epoch t: the paper picks where the training error stops falling fast: epoch 8
    of 200 for ResNet-18 on CIFAR-10 (4% of training). Here t = max(1, round(fraction * epochs)),
    fraction 0.04 by default: epoch 1 of the tiny recipes' 15-20 epochs. With a one-epoch recipe
    the first phase is the whole run and nothing is upsampled. The outputs clustered are those of
    the training passes of epoch t (train mode, after the entry's transforms), not a separate
    evaluation pass over the training set; k-means is scikit-learn's (10 initialisations, seeded
    by the run's seed). Epochs of phase two visit n samples drawn as passes over the upsampled
    multiset (module docstring), so the recipe's schedule still ends at the last epoch; the paper
    runs its epochs over the enlarged set instead (more steps per epoch)."""

    def __init__(self, ctx: TrainContext, separating_epoch_fraction: float, upsample_factor: int):
        self.n, self.seed, self.ctx_labels = ctx.dataset_size, ctx.seed, ctx.labels
        self.separating_epoch = max(1, round(separating_epoch_fraction * ctx.epochs))
        self.factor = upsample_factor
        self.record = PerSampleRecord(self.n)
        self.stream = EpochStream(self.n)
        self.pool = torch.arange(self.n)
        self.upsampled: torch.Tensor | None = None  # the slow-learnable examples, once found
        self.second_phase = False

    def observe(self, batch: Batch, out: Outputs) -> None:
        if not self.second_phase:
            self.record.update(batch, out.logits, keep_outputs=True)

    def epoch_plan(self, epoch: int, generator: torch.Generator) -> EpochPlan:
        restart = not self.second_phase and epoch == self.separating_epoch
        if restart:
            self.second_phase = True
            self.upsampled = self.slow_learnable()
            self.pool = torch.cat([torch.arange(self.n), self.upsampled.repeat(self.factor - 1)])
            self.stream.reset()
        return EpochPlan(self.stream.take(self.pool, generator), restart=restart)

    def slow_learnable(self) -> torch.Tensor:
        """Per class, k-means (k = 2) on the recorded outputs; the indices of the cluster with the
        higher mean loss."""
        from sklearn.cluster import KMeans

        labels = class_labels(self.ctx_labels, self.record)
        chosen = []
        for c in torch.unique(labels[self.record.seen]).tolist():
            idx = torch.nonzero((labels == c) & self.record.seen).squeeze(1)
            if len(idx) < 2 or self.record.outputs is None:
                continue
            outputs = self.record.outputs[idx].double().numpy()
            assignment = torch.from_numpy(KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit_predict(outputs)).long()
            if int(assignment.min()) == int(assignment.max()):  # all outputs equal: one cluster, nothing to tell apart
                continue
            losses = self.record.loss[idx]
            slow = int(losses[assignment == 1].mean() > losses[assignment == 0].mean())
            chosen.append(idx[assignment == slow])
        return torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)


USEFUL = Method(
    name="useful",
    kind="sampler",
    build=UpsampleEarlyForUniformLearning,
    summary="USEFUL: after a few epochs, upsample each class's higher-loss k-means cluster of outputs once and retrain from scratch",
    paper="Nguyen, Haddad, Gan & Mirzasoleiman, Changing the Training Data Distribution to Reduce Simplicity Bias Improves In-distribution Generalization, NeurIPS 2024",
    url="https://arxiv.org/abs/2404.17768",
    params=(
        Param("separating_epoch_fraction", float, 0.04, "the separating epoch as a fraction of the recipe's epochs (paper, CIFAR-10: epoch 8 of 200); at least epoch 1", low=0.0, high=1.0),
        Param("upsample_factor", int, 2, "how many times the slow-learnable cluster appears in the new distribution (paper: 2, upsampled once)", low=1),
    ),
)


# ---------------------------------------------------------------------------------------------
# self_paced: Kumar, Packer & Koller, NeurIPS 2010
# ---------------------------------------------------------------------------------------------


class SelfPacedLearning(DataSampler, Observer):
    """Self-paced learning: min_{w, v in {0,1}^n} sum_i v_i l_i(w) - (1/K) sum_i v_i, solved by
    alternation; for fixed w the optimal v_i = [l_i < 1/K], i.e. train on the samples whose loss is
    below lambda = 1/K; lambda grows by mu (K <- K / mu) after every round until every sample is in.
    The paper sets the initial K so that about half the samples are selected and mu = 1.3.

    Here a round is an epoch: epoch 0 visits every sample (its losses are the first the model
    gives); then lambda_1 = the `initial_fraction` quantile of the latest losses, lambda_{e+1} =
    mu lambda_e, and epoch e visits the samples with latest loss <= lambda_e (at least two). A
    sample's latest loss is the cross-entropy of its last training pass (the v-step sees stale
    losses for samples left out, where the paper re-evaluates every sample). Epochs are n visits
    of passes over the selection (module docstring). initial_fraction = 1 trains on every sample
    in every epoch: the plain run, step for step."""

    def __init__(self, ctx: TrainContext, initial_fraction: float, growth: float):
        self.n, self.fraction, self.growth = ctx.dataset_size, initial_fraction, growth
        self.record = PerSampleRecord(self.n)
        self.stream = EpochStream(self.n)
        self.threshold: float | None = None
        self.selected = torch.ones(self.n, dtype=torch.bool)

    def observe(self, batch: Batch, out: Outputs) -> None:
        self.record.update(batch, out.logits)

    def epoch_plan(self, epoch: int, generator: torch.Generator) -> EpochPlan:
        if epoch > 0 and bool(self.record.seen.any()):
            losses = self.record.loss
            if self.threshold is None:
                self.threshold = float(torch.quantile(losses[self.record.seen], self.fraction))
            else:
                self.threshold *= self.growth
            selected = ~self.record.seen | (losses <= self.threshold)
            if int(selected.sum()) < min(2, self.n):  # BatchNorm needs two samples a batch
                selected[torch.argsort(losses)[:2]] = True
            self.selected = selected
        self.stream.reset()  # the selection changes from round to round
        return EpochPlan(self.stream.take(torch.nonzero(self.selected).squeeze(1), generator))


SELF_PACED = Method(
    name="self_paced",
    kind="sampler",
    build=SelfPacedLearning,
    summary="self-paced learning: each epoch trains on the samples whose loss is below a threshold that grows by mu per epoch",
    paper="Kumar, Packer & Koller, Self-Paced Learning for Latent Variable Models, NeurIPS 2010",
    url="https://papers.nips.cc/paper/3923-self-paced-learning-for-latent-variable-models",
    params=(
        Param("initial_fraction", float, 0.5, "share of samples selected in the first self-paced epoch (paper: about half)", low=0.0, high=1.0),
        Param("growth", float, 1.3, "mu: factor by which the loss threshold 1/K grows per epoch (paper: 1.3)", low=1.0),
    ),
)


# ---------------------------------------------------------------------------------------------
# curriculum: Wu, Dyer & Neyshabur, ICLR 2021 (pacing functions); Hacohen & Weinshall, ICML 2019
# ---------------------------------------------------------------------------------------------

PACING_FUNCTIONS = ("linear", "quad", "root", "step", "exp", "log")


def pacing_function(kind: str, a: float, b: float, total_steps: int, total_data: int) -> Callable[[int], int]:
    """g(step): how many of the easiest samples training may draw from at `step` (the authors'
    `get_pacing_function`): it starts at b N and reaches N at step a T."""
    start, span = b * total_data, a * total_steps
    if kind == "linear":
        rate = (total_data - start) / span
        return lambda step: int(rate * step + start)
    if kind == "quad":
        rate = (total_data - start) / span**2
        return lambda step: int(rate * step**2 + start)
    if kind == "root":
        rate = (total_data - start) / span**0.5
        return lambda step: int(rate * step**0.5 + start)
    if kind == "step":
        return lambda step: int(total_data * (step // span) + start)
    c = 10.0
    if kind == "exp":
        rate = (total_data - start) / (math.exp(c) - 1)
        return lambda step: int(rate * math.expm1(min(step * c / span, 700.0)) + start)
    if kind == "log":
        return lambda step: int((total_data - start) * (1 + math.log(step / span + math.exp(-c)) / c) + start)
    raise ValueError(f"unknown pacing function {kind!r}; choose from {', '.join(PACING_FUNCTIONS)}")


def balanced_order(order: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Interleave classes (the authors' `balance_order`): the easiest example of every class (in
    the order's ranking), then the second easiest of every class, ...; a class that runs out drops
    out. Within a group, examples keep their rank."""
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    per_class: dict[int, list[int]] = {}
    for i in order.tolist():
        per_class.setdefault(int(labels[i]), []).append(i)
    out: list[int] = []
    for depth in range(max((len(v) for v in per_class.values()), default=0)):
        group = [members[depth] for members in per_class.values() if depth < len(members)]
        out.extend(sorted(group, key=lambda i: int(position[i])))
    return torch.tensor(out, dtype=torch.long)


class PacedCurriculum(DataSampler, Observer, AuxiliaryModels):
    """Curriculum by transfer (Hacohen & Weinshall): a scoring network ranks the examples by
    difficulty; training draws from the easiest g(step) of them, g a pacing function that starts
    at b N and reaches N at a fraction a of the training steps (Wu, Dyer & Neyshabur), after which
    training is uniform. Difficulty = the cross-entropy of a teacher: the run's architecture
    trained with `ce` on the same data, recipe and seed (a frozen `Teacher`, trained once and
    shared). The order is balanced across classes (the authors' `balance_order`), and each subset
    is at least two batches (the authors' 256 at batch 128).

    Epoch 0 only scores: every sample is visited once and the teacher's losses are recorded; then
    training restarts from the initial weights (EpochPlan(restart=True)) and the recipe's epochs
    run with the curriculum. Data is drawn in "dynamic epochs" (a shuffled pass over the current
    subset; g is re-read after each, as the authors' loader does), cut into epochs of n visits
    (module docstring). The paper reports a sweep of (a, b) for every pacing function and no
    single default; linear with a = 0.8, b = 0.2 is from that grid. b = 1 is the plain run after
    the scoring epoch, step for step."""

    TEACHER = "curriculum_teacher"

    def __init__(self, ctx: TrainContext, pacing: str, a: float, b: float, balance: bool):
        self.n, self.ctx_labels = ctx.dataset_size, ctx.labels
        self.min_subset = min(self.n, 2 * ctx.batch_size)
        self.batch_size = ctx.batch_size
        self.total_steps = max(1, ctx.epochs * ctx.steps_per_epoch)
        self.pacing = pacing_function(pacing, a, b, self.total_steps, self.n)
        self.balance = balance
        self.record = PerSampleRecord(self.n)
        self.order: torch.Tensor | None = None  # easiest first, once scored
        self.stream = EpochStream(self.n)
        self.visits = 0  # samples drawn since the curriculum began: the pacing clock is visits // batch_size

    def auxiliary_models(self) -> dict[str, Teacher]:
        return {self.TEACHER: Teacher()}

    def observe(self, batch: Batch, out: Outputs) -> None:
        if self.order is not None:
            return
        scores = out.aux[self.TEACHER].logits
        if not batch.y.dtype.is_floating_point and bool((batch.y >= scores.shape[1]).any()):
            raise HarnessError(f"curriculum scores examples with a {scores.shape[1]}-class teacher, but the batch's labels go beyond: "
                               "a transform that trains joint labels (sla) cannot be combined with it")
        self.record.update(batch, scores)

    def epoch_plan(self, epoch: int, generator: torch.Generator) -> EpochPlan:
        if self.order is None and epoch == 0:  # the scoring epoch: every sample once
            return EpochPlan(torch.randperm(self.n, generator=generator, device=generator.device).cpu())
        restart = self.order is None
        if restart:
            self.order = self.difficulty_order()
        chunks, have = [self.stream.pending], len(self.stream.pending)
        while have < self.n:
            g = max(self.min_subset, min(self.n, self.pacing(self.visits // self.batch_size)))
            subset = torch.arange(self.n) if g >= self.n else self.order[:g]
            perm = torch.randperm(len(subset), generator=generator, device=generator.device).cpu()
            chunks.append(subset[perm])
            have += len(subset)
            self.visits += len(subset)
        stream = torch.cat(chunks)
        self.stream.pending = stream[self.n :]
        return EpochPlan(stream[: self.n], restart=restart)

    def difficulty_order(self) -> torch.Tensor:
        """Indices from easiest (lowest teacher loss) to hardest; unseen samples last."""
        loss = torch.where(self.record.seen, self.record.loss, torch.full_like(self.record.loss, math.inf))
        order = torch.argsort(loss, stable=True)
        return balanced_order(order, class_labels(self.ctx_labels, self.record)) if self.balance else order


CURRICULUM = Method(
    name="curriculum",
    kind="sampler",
    build=PacedCurriculum,
    summary="curriculum by transfer: easiest examples first (teacher's loss), a pacing function grows the pool to uniform",
    paper=(
        "Wu, Dyer & Neyshabur, When Do Curricula Work?, ICLR 2021 (pacing functions); Hacohen & Weinshall, On The Power of "
        "Curriculum Learning in Training Deep Networks, ICML 2019 (scoring by transfer)"
    ),
    url="https://arxiv.org/abs/2012.03107",
    params=(
        Param("pacing", str, "linear", "pacing function g (the authors' families)", choices=PACING_FUNCTIONS),
        Param("a", float, 0.8, "fraction of the training steps after which every sample is in (from the paper's sweep; no single default)", low=1e-3),
        Param("b", float, 0.2, "fraction of the data available at the first step (from the paper's sweep; b = 1: no curriculum)", low=0.0, high=1.0),
        Param("balance", bool, True, "balance the difficulty order across classes (the authors' balance_order)"),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (USEFUL, SELF_PACED, CURRICULUM)


@hookimpl
def harness_register_kinds(register):
    register(KIND)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
