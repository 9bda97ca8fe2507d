"""Kind `distillation` and its built-in methods: a student trained from a teacher (or with a peer).

A distillation method is the entry's **objective** (harness.seams.Objective) computed with the
outputs of the auxiliary models it declares (`AuxiliaryModels`): a frozen `Teacher`, which the
suite toolkit trains once per (data, recipe, seed) as an artifact and hands every method that
asks for the same teacher, or a `Peer` trained alongside (online distillation). It owns the
objective, so `kd` alone trains with its own cross-entropy + distillation loss, and it composes
with the other training kinds: `kd+mixup` (the teacher sees the mixed batch; the targets are
soft) and `kd+sam` (SAM owns the update; the objective is evaluated at both of its points).

The teacher's architecture is the method's `teacher` hyper-parameter: a model name, or `auto`,
which means the suite's teacher (the distillation suite sets one per scale: `small_cnn` at
tiny, `resnet56` at paper) and, in any other suite, the run's own architecture.

Methods here: `no_kd` (the student with cross-entropy alone: the baseline), `kd` (Hinton et al.
2015), `kd_random_teacher` (the same objective from an untrained teacher: the control), `dhkd`
(dual-head KD, Yang et al. 2025) and `dml` (deep mutual learning, Zhang et al. 2018: two
students teach each other). Left out, with the reasons on the distillation suite's card: SinKD
and TGeo-KD, whose objectives cannot be stated exactly from what their authors published, and
BD-KD, whose sample-wise weighting could not be checked against its paper here.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness import Kind, KindScaffold, Method, Param, hookimpl
from harness.engine import frozen_batchnorm_statistics
from harness.models import get_classifier, set_classifier
from harness.seams import (
    Auxiliary,
    AuxiliaryModels,
    Batch,
    HeadedModel,
    ModelShaper,
    Objective,
    Outputs,
    Peer,
    StepOwner,
    StepTools,
    Teacher,
    TrainContext,
    Transform,
)

SUITE_TEACHER = "auto"  # the `teacher` value that means: the suite's teacher, else the run's architecture


# ---------------------------------------------------------------------------------------------
# the kind
# ---------------------------------------------------------------------------------------------


class Distillation(nn.Module, Objective, AuxiliaryModels, ModelShaper):
    """The kind's interface: the entry's training objective, `objective(batch, out)`, computed with
    the outputs of the auxiliary models the method declares in `auxiliary_models()` (a `Teacher`
    under `out.aux["teacher"]`, a `Peer`, ...). `shape_model` may add heads. Targets may be soft
    [B, K] rows (after a mixing augmentation) unless `accepts_soft_targets = False`."""

    accepts_soft_targets: bool = True

    def auxiliary_models(self) -> dict[str, Auxiliary]:
        return {}

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return model

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        raise NotImplementedError


def teacher_param(doc_suffix: str = "") -> Param:
    """The `teacher` hyper-parameter every built-in distillation method with a teacher declares."""
    return Param("teacher", str, SUITE_TEACHER, "the teacher's architecture (a model name), or auto: the suite's teacher "
                 "(distillation suite: small_cnn at tiny, resnet56 at paper), elsewhere the run's own architecture" + doc_suffix)


def teacher_model(teacher: str) -> str | None:
    """The model name a `teacher` hyper-parameter asks for; None: the run's architecture."""
    return None if teacher == SUITE_TEACHER else teacher


def targets_as_probs(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Int labels [B] as one-hot rows; soft targets [B, K] unchanged (float32)."""
    if targets.dtype.is_floating_point:
        return targets.float()
    return F.one_hot(targets.long(), num_classes).float()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for int labels (torch's, exactly as the `ce` loss computes it) or soft rows."""
    if targets.dtype.is_floating_point:
        return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, targets)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T)): Hinton et al.'s soft term (the T^2
    keeps its gradients' scale as T changes). As T -> infinity it tends to
    (1 / 2K) mean_i sum_k (s_ik - mean(s_i) - t_ik + mean(t_i))^2, half the mean squared difference
    of the zero-mean logits (Hinton et al., Sec. 2.1); computed in the inputs' dtype."""
    t = temperature
    log_q = F.log_softmax(student_logits / t, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean() * t * t


def check(method: Any, env: Any) -> Any:
    """Two short epochs of the tiny CNN through the real assembly and engine (an untrained tiny
    CNN is the teacher), then, when the method takes soft targets, one epoch on mixed batches
    (soft targets, as `kd+mixup` gives it)."""
    from harness.conformance import CheckFailed, loss_context, normalizer_of, run_training_method, tiny_model
    from harness.engine import train
    from harness.method import MethodRef
    from harness.training import assemble

    out = run_training_method(method, env)
    data, seed = env.data, env.seed
    built = method.built_class()
    if built is None or built.accepts_soft_targets:
        ctx = loss_context(data, 1, seed)
        try:
            torch.manual_seed(seed)
            plan = assemble(env.catalog, [MethodRef.of(method)], context=ctx, build_model=lambda: tiny_model(data, seed), extra_parts=(PairMix(data.num_classes),),
                            extra_names=("a fixed pair mix (the check's soft targets)",), teacher=lambda name, decl: tiny_model(data, seed + 1))
            log = train(plan.model, data.train_x, data.train_y, recipe={**_check_recipe(), "epochs": 1}, parts=plan.composition, aux=plan.aux,
                        normalizer=normalizer_of(data), seed=seed, device="cpu")
        except Exception as exc:
            raise CheckFailed(f"training on soft targets (mixed batches) raised {type(exc).__name__}: {exc}") from exc
        out["soft_target_loss"] = log.train_loss
    return out


def _check_recipe() -> dict[str, Any]:
    from harness.conformance import CHECK_RECIPE

    return dict(CHECK_RECIPE)


class PairMix(Transform):
    """The conformance check's soft targets: each image mixed half and half with the one before it."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        t = targets_as_probs(batch.y, self.num_classes)
        return replace(batch, x=(batch.x + batch.x.roll(1, 0)) / 2, y=(t + t.roll(1, 0)) / 2)


KIND_METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch
from harness_plugins.distillation import Distillation, cross_entropy, teacher_model, teacher_param

from harness import Method, Param, hookimpl
from harness.seams import Batch, Outputs, Teacher, TrainContext


class LogitMatching(Distillation):
    """L = (1 - weight) CE(z_s, y) + weight * 1/2 mean_i ||z_s,i - z_t,i||^2: the student regresses the
    teacher's logits (Ba & Caruana's loss is the logit term alone: weight = 1)."""

    def __init__(self, ctx: TrainContext, weight: float, teacher: str):  # the defaults live on the Params
        super().__init__()
        self.weight, self.teacher = weight, teacher

    def auxiliary_models(self) -> dict[str, Teacher]:
        return {"teacher": Teacher(model=teacher_model(self.teacher))}  # trained once, frozen, shared

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        student, teacher = out.logits, out.aux["teacher"].logits  # the teacher runs without gradients
        regression = 0.5 * (student - teacher).pow(2).sum(dim=1).mean()
        return (1 - self.weight) * cross_entropy(student, batch.y) + self.weight * regression


$CONST = Method(
    name="$method",
    kind="distillation",
    build=LogitMatching,
    summary="the student regresses the teacher's logits (squared error), optionally with cross-entropy",
    paper="Ba & Caruana, Do Deep Nets Really Need to be Deep?, NeurIPS 2014",
    url="https://arxiv.org/abs/1312.6184",
    params=(
        Param("weight", float, 1.0, "weight of the logit regression; 1 - weight: cross-entropy's (paper: 1)",
              low=0.0, high=1.0),
        teacher_param(),
    ),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
'''

KIND_TESTS_TEMPLATE = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations

import math

import torch

from harness.seams import Batch, Outputs, TrainContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a few training steps from a (tiny, untrained) teacher, soft targets, determinism
    harness_check_method($CONST)


def test_value_by_hand():
    # student logits = teacher logits + 1 in every class: the regression term is 1/2 * K; with
    # weight 1/2 and equal logits in every class, CE = log K
    k = 4
    ctx = TrainContext(num_classes=k, class_counts=(10,) * k, dataset_size=10 * k, epochs=1)
    method = $CONST.create(ctx, weight=0.5)
    teacher = torch.zeros(3, k)
    out = Outputs(logits=teacher + 1.0, aux={"teacher": Outputs(logits=teacher)})
    batch = Batch(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 2]), torch.arange(3))
    value = method.objective(batch, out)
    assert math.isclose(value.item(), 0.5 * math.log(k) + 0.5 * 0.5 * k, rel_tol=1e-6)
'''

KIND = Kind(
    name="distillation",
    summary="the training objective of a student distilled from a teacher or a peer it declares (auxiliary models)",
    interface=Distillation,
    order=15,  # after loss (10), before augmentation (20): entries read kd+mixup+sam
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    scaffold=KindScaffold("a logit-matching distiller", KIND_METHODS_TEMPLATE, KIND_TESTS_TEMPLATE),
    suite="distillation",
)


# ---------------------------------------------------------------------------------------------
# no_kd: the student with cross-entropy alone
# ---------------------------------------------------------------------------------------------


class StudentAlone(Distillation):
    """L = CE(z_s, y): the student trained without a teacher (the row every method is compared with)."""

    def __init__(self, ctx: TrainContext):
        super().__init__()

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return cross_entropy(out.logits, batch.y)


NO_KD = Method(
    name="no_kd",
    kind="distillation",
    build=StudentAlone,
    summary="the student trained with cross-entropy alone, no teacher: the baseline of every distillation method",
    paper="Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, NIPS 2014 Deep Learning Workshop (the student baseline)",
    url="https://arxiv.org/abs/1503.02531",
    suites=("distillation",),
)


# ---------------------------------------------------------------------------------------------
# kd: Hinton, Vinyals & Dean 2015
# ---------------------------------------------------------------------------------------------


class HintonKD(Distillation):
    """L = (1 - alpha) CE(z_s, y) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)).

    Defaults: T = 4, alpha = 0.9 (the KD row of the CRD benchmark, Tian et al. ICLR 2020, whose
    CIFAR-100 table the distillation suite's paper scale follows). Soft targets y (mixup) enter
    the cross-entropy as they are; the teacher sees the same (mixed) inputs as the student."""

    def __init__(self, ctx: TrainContext, alpha: float, temperature: float, teacher: str):
        super().__init__()
        self.alpha, self.temperature, self.teacher = alpha, temperature, teacher

    def auxiliary_models(self) -> dict[str, Auxiliary]:
        return {"teacher": Teacher(model=teacher_model(self.teacher))}

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.loss(out.logits, out.aux["teacher"].logits, batch.y)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * cross_entropy(student, targets) + self.alpha * soft_kl(student, teacher, self.temperature)


KD_PARAMS = (
    Param("alpha", float, 0.9, "weight of the soft term; 1 - alpha weighs cross-entropy (CRD benchmark: 0.9)", low=0.0, high=1.0),
    Param("temperature", float, 4.0, "softmax temperature T of both networks in the soft term (CRD benchmark: 4)", low=1e-3),
)

KD = Method(
    name="kd",
    kind="distillation",
    build=HintonKD,
    summary="knowledge distillation: (1 - alpha) CE + alpha T^2 KL(teacher's || student's softened softmax)",
    paper="Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, NIPS 2014 Deep Learning Workshop",
    url="https://arxiv.org/abs/1503.02531",
    suites=("distillation",),
    params=(*KD_PARAMS, teacher_param()),
)


# ---------------------------------------------------------------------------------------------
# kd_random_teacher: the same objective from an untrained teacher (the control)
# ---------------------------------------------------------------------------------------------


class RandomTeacherKD(HintonKD):
    """Hinton KD from an untrained, randomly initialised teacher of the teacher's architecture: what
    the student gains from the soft term itself (a smoothed, input-dependent target) rather than
    from a teacher's knowledge. A random teacher's softened outputs are close to uniform but lean
    the same way for most inputs (an untrained network's arg-max is nearly constant), so at
    alpha = 0.9 the soft term acts like strong label smoothing towards a biased target."""

    def auxiliary_models(self) -> dict[str, Auxiliary]:
        return {"teacher": Teacher(model=teacher_model(self.teacher), trained=False)}


KD_RANDOM_TEACHER = Method(
    name="kd_random_teacher",
    kind="distillation",
    build=RandomTeacherKD,
    summary="the KD objective from an untrained (random) teacher: the control that separates the teacher's knowledge from the soft term",
    paper="Sarnthein, Bachmann, Anagnostidis & Hofmann, Random Teachers are Good Teachers, ICML 2023 (the random-teacher control); "
          "objective of Hinton et al. 2015",
    url="https://arxiv.org/abs/2302.12091",
    suites=("distillation",),
    params=(*KD_PARAMS, teacher_param(" (initialised at random, never trained)")),
)


# ---------------------------------------------------------------------------------------------
# dhkd: dual-head knowledge distillation (Yang, Zong, Huang, Feng & An, KDD 2025)
# ---------------------------------------------------------------------------------------------


class DualHeadModel(HeadedModel):
    """The student's body with two classifiers on its features: the original head (trained with
    cross-entropy, the one that predicts) and an auxiliary head (trained with the logit-level
    loss only). `forward(x)` gives the main head's logits; `forward_heads` also gives `aux`."""

    def __init__(self, body: nn.Module, head: nn.Module, aux_head: nn.Module):
        super().__init__()
        self.body = body
        self.features = nn.Identity()  # the penultimate features pass through here (the features hook)
        self.head = head
        self.aux_head = aux_head

    def get_classifier(self) -> nn.Module:  # the module whose input is the penultimate features
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.body(x)))

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.features(self.body(x))
        return self.head(f), {"aux": self.aux_head(f)}


def nonlinear_head(in_features: int, num_classes: int) -> nn.Module:
    """The authors' `NonLinearClassifier`: Linear(d, 200), Dropout(0.1), BatchNorm1d(200), ReLU, Linear(200, K)."""
    return nn.Sequential(nn.Linear(in_features, 200), nn.Dropout(p=0.1), nn.BatchNorm1d(200), nn.ReLU(inplace=True), nn.Linear(200, num_classes))


def binary_kl_norm(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """BinaryKL-Norm (the authors' `BinaryKLNorm`): with d = sigmoid((z_s - z_t) / T),
    T^2 / N * sum_{i,k} KL(Bernoulli(1/2) || Bernoulli(d_ik)) = T^2 / N * sum_{i,k} [-log 2 - (log d + log(1 - d)) / 2].
    Zero where the student's logits equal the teacher's; computed with logsigmoid (the authors clamp
    d to [1e-8, 1 - 1e-8], which is the same wherever |z_s - z_t| / T < 16)."""
    x = (student - teacher.detach()) / temperature
    per_logit = -torch.log(torch.tensor(2.0, dtype=x.dtype, device=x.device)) - 0.5 * (F.logsigmoid(x) + F.logsigmoid(-x))
    return temperature**2 * per_logit.sum() / len(student)


def align_gradients(task: list[torch.Tensor], distill: list[torch.Tensor]) -> list[torch.Tensor]:
    """The authors' gradient alignment (`OptimGradAlign`, after PCGrad): over all parameters as one
    vector, when the distillation gradient g_d conflicts with the task gradient g_t (g_d . g_t < 0),
    g_d loses its projection on g_t: g_d <- g_d - (g_d . g_t) / |g_t|^2 g_t; the step uses g_t + g_d."""
    dot = sum((a * b).sum() for a, b in zip(task, distill))
    norm2 = sum(a.pow(2).sum() for a in task)
    coef = torch.clamp(dot, max=0.0) / torch.clamp(norm2, min=torch.finfo(norm2.dtype).tiny)  # 0 when they do not conflict
    return [a + b - coef * a for a, b in zip(task, distill)]


class DualHeadKD(Distillation, StepOwner):
    """L = gamma CE(h(f), y) + alpha BinaryKL-Norm_T(h_aux(f), z_t): the main head h learns from the
    labels only, the auxiliary head h_aux only from the teacher's logits; the backbone f learns from
    both (the authors' `train_distill` with `--distill dhkd`). Defaults are the authors' CIFAR-100
    command (`--dual_head --nonlinear --ga -r 1 -a 1 --BinaryKL_T 2`): a non-linear auxiliary head,
    gamma = alpha = 1, T = 2, and gradient alignment (`align_gradients`) of the two losses. The
    main head predicts. With gradient alignment the method owns the training step (it needs each
    loss's gradient); an update rule of the entry (SAM) still applies to the aligned gradients."""

    def __init__(self, ctx: TrainContext, gamma: float, alpha: float, temperature: float, nonlinear_head: bool, gradient_alignment: bool,
                 teacher: str):
        super().__init__()
        self.gamma, self.alpha, self.temperature, self.teacher = gamma, alpha, temperature, teacher
        self.nonlinear, self.gradient_alignment = nonlinear_head, gradient_alignment

    def auxiliary_models(self) -> dict[str, Auxiliary]:
        return {"teacher": Teacher(model=teacher_model(self.teacher))}

    def shape_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        head = get_classifier(model)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"DHKD adds a second head beside a linear classifier; got {type(head).__name__}")
        set_classifier(model, nn.Identity())
        aux = nonlinear_head(head.in_features, head.out_features) if self.nonlinear else nn.Linear(head.in_features, head.out_features)
        return DualHeadModel(model, head, aux.to(head.weight.device))

    def task_loss(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.gamma * cross_entropy(out.logits, batch.y)

    def distill_loss(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.alpha * binary_kl_norm(out.heads["aux"], out.aux["teacher"].logits, self.temperature)

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.task_loss(batch, out) + self.distill_loss(batch, out)

    def train_step(self, batch: Batch, tools: StepTools) -> torch.Tensor:
        if not self.gradient_alignment:
            return tools.default_step(batch)
        params = [p for group in tools.optimizer.param_groups for p in group["params"] if p.requires_grad]

        def step(recomputed: bool = False) -> torch.Tensor:
            tools.optimizer.zero_grad(set_to_none=True)
            with frozen_batchnorm_statistics(tools.model) if recomputed else nullcontext():
                out = tools.forward(batch)
                out.recomputed = recomputed
                total = tools.loss(batch, out)  # this objective plus any loss term of the entry
                distill = self.distill_loss(batch, out)
            g_distill = torch.autograd.grad(distill, params, retain_graph=True, allow_unused=True)
            g_total = torch.autograd.grad(total, params, allow_unused=True)
            g_distill = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_distill)]
            g_task = [torch.zeros_like(p) if g is None else g - d for p, g, d in zip(params, g_total, g_distill)]
            for p, g in zip(params, align_gradients(g_task, g_distill)):
                p.grad = g
            return total.detach()

        return tools.update(step)


DHKD = Method(
    name="dhkd",
    kind="distillation",
    build=DualHeadKD,
    summary="dual-head KD: an auxiliary head learns the teacher's logits (BinaryKL-Norm), the main head the labels; gradients aligned",
    paper="Yang, Zong, Huang, Feng & An, Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head, KDD 2025",
    url="https://arxiv.org/abs/2411.08937",
    suites=("distillation",),
    params=(
        Param("gamma", float, 1.0, "weight of the main head's cross-entropy (authors' -r: 1)", low=0.0),
        Param("alpha", float, 1.0, "weight of the auxiliary head's BinaryKL-Norm (authors' CIFAR-100 -a: 1)", low=0.0),
        Param("temperature", float, 2.0, "temperature T of BinaryKL-Norm (authors' --BinaryKL_T: 2)", low=1e-3),
        Param("nonlinear_head", bool, True, "auxiliary head Linear-Dropout-BN-ReLU-Linear (authors' CIFAR --nonlinear); false: one linear layer"),
        Param("gradient_alignment", bool, True, "project the distillation gradient off the task gradient where they conflict (authors' CIFAR --ga)"),
        teacher_param(),
    ),
)


# ---------------------------------------------------------------------------------------------
# dml: deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018): two students, online
# ---------------------------------------------------------------------------------------------


class MutualLearning(Distillation):
    """Two students of the run's architecture (the model and a `Peer`), each trained with
    L_k = CE(z_k, y) + KL(p_other || p_k), the other's prediction a constant (paper Eq. 1-2, T = 1,
    weight 1). The objective is L_1 + L_2; the networks' parameters are disjoint, so each gets
    exactly its own gradient. The paper updates the two networks in turn, the second from the
    first's updated prediction; here both update in the same step from the same predictions.
    The trained model (student 1) is the one evaluated."""

    def __init__(self, ctx: TrainContext):
        super().__init__()

    def auxiliary_models(self) -> dict[str, Auxiliary]:
        return {"peer": Peer()}

    def objective(self, batch: Batch, out: Outputs) -> torch.Tensor:
        return self.mutual_loss(out.logits, out.aux["peer"].logits, batch.y)

    @staticmethod
    def mutual_loss(z1: torch.Tensor, z2: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        def learn_from(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
            return cross_entropy(logits, targets) + soft_kl(logits, other.detach(), 1.0)

        return learn_from(z1, z2) + learn_from(z2, z1)


DML = Method(
    name="dml",
    kind="distillation",
    build=MutualLearning,
    summary="deep mutual learning: two students trained together, each with CE + KL(the other's prediction || its own)",
    paper="Zhang, Xiang, Hospedales & Lu, Deep Mutual Learning, CVPR 2018",
    url="https://arxiv.org/abs/1706.00384",
    suites=("distillation",),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (NO_KD, KD, KD_RANDOM_TEACHER, DHKD, DML)


@hookimpl
def harness_register_kinds(register):
    register(KIND)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
