"""The training seam: each role of harness.seams reaches the loop, composes, and is refused when it cannot."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.catalog import load_catalog
from harness.engine import AuxModel, CompositionError, Normalizer, compose, predict, train
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds.loss import Loss
from harness.method import Method
from harness.models import SmallCNN
from harness.seams import (
    Batch,
    EpochPlan,
    LossTerm,
    Observer,
    Outputs,
    Predictor,
    Sampler,
    StepOwner,
    StepTools,
    Transform,
    UpdateRule,
)
from harness.spec import build_grid

RECIPE = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0}


class CE(Loss):
    def forward(self, logits, targets, index):
        return F.cross_entropy(logits, targets)


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, q * 6 : q * 6 + 6] += 150
    return x, y


def model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(4, 1, 12, width=4)


def fit(parts, seed=0, x_y=None, **kw):
    x, y = x_y or toy_data()
    m = kw.pop("net", None) or model(seed)
    log = train(m, x, y, recipe={**RECIPE, **kw.pop("recipe", {})}, parts=parts, normalizer=Normalizer.fit(x), seed=seed, device="cpu", **kw)
    return m, log


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# composition
# ---------------------------------------------------------------------------------------------


class OwnUpdate(UpdateRule):
    def update(self, step, optimizer):
        loss = step()
        optimizer.step()
        return loss


class OwnPrediction(Predictor):
    def predict(self, model, inputs):
        return torch.cat([model(x) for x in inputs]) * 0  # all classes tie: class 0 everywhere


def test_two_owners_of_one_role_are_refused_with_both_names():
    with pytest.raises(CompositionError, match="first and second both own the parameter update"):
        compose([CE(), OwnUpdate(), OwnUpdate()], ["ce", "first", "second"])
    with pytest.raises(CompositionError, match="both own the objective"):
        compose([CE(), CE()], ["ce", "focal"])
    with pytest.raises(CompositionError, match="both own prediction"):
        compose([CE(), OwnPrediction(), OwnPrediction()], ["ce", "a", "b"])
    with pytest.raises(CompositionError, match="no method of the entry provides the training objective"):
        compose([OwnUpdate()], ["sam"])
    with pytest.raises(CompositionError, match="implements no role"):
        compose([CE(), object()], ["ce", "stray"])


class HardOnly(CE):
    accepts_soft_targets = False


class Soft(Transform):
    def transform(self, batch, generator):
        return replace(batch, y=F.one_hot(batch.y, 4).float())


def test_soft_targets_for_a_loss_that_takes_none_are_refused():
    with pytest.raises(CompositionError, match="hard cannot take the soft targets that mix produces"):
        compose([Soft(), HardOnly()], ["mix", "hard"])


class UpdateOwningLoss(CE, UpdateRule):
    def update(self, step, optimizer):
        return OwnUpdate().update(step, optimizer)


class UpdateLossPlugin:
    @hookimpl
    def harness_register_methods(self, register):
        register(Method("update_owning_loss", "loss", UpdateOwningLoss, "a loss that owns the update", "test"))


def test_the_grid_refuses_an_entry_whose_methods_both_own_the_update_before_training():
    catalog = load_catalog(plugins=((UpdateLossPlugin(), "update-loss"),))
    with pytest.raises(HarnessError, match="update_owning_loss and sam both own the parameter update"):
        build_grid(catalog, {"suite": "long_tail", "method": "update_owning_loss+sam"})
    _, specs = build_grid(catalog, {"suite": "long_tail", "method": "ldam_drw+mixup+sam", "seeds": "1"})
    assert specs[0].entry == "ldam_drw+mixup+sam" and specs[0].kinds == ("loss", "augmentation", "optimizer")


def test_mixing_augmentation_with_a_hard_target_loss_is_refused_at_grid_time_but_randaugment_is_fine():
    class HardPlugin:
        @hookimpl
        def harness_register_methods(self, register):
            register(Method("hard_only", "loss", HardOnly, "a loss without soft targets", "test"))

    catalog = load_catalog(plugins=((HardPlugin(), "hard"),))
    with pytest.raises(HarnessError, match="hard_only cannot take the soft targets that mixup produces"):
        build_grid(catalog, {"suite": "long_tail", "method": "hard_only+mixup"})
    build_grid(catalog, {"suite": "long_tail", "method": "hard_only+randaugment"})


# ---------------------------------------------------------------------------------------------
# each seam reaches the loop
# ---------------------------------------------------------------------------------------------


class SeesFeatures(LossTerm):
    uses_features = True

    def __init__(self):
        self.seen = []

    def extra_loss(self, batch, out):
        self.seen.append((tuple(out.features.shape), len(batch)))
        return None


def test_a_method_that_declares_features_gets_the_classifier_input():
    term = SeesFeatures()
    m, _ = fit([CE(), term], recipe={"epochs": 1})
    # SmallCNN on 12x12 images: 2 * width = 8 features (global pooling) per sample
    assert term.seen and all(shape == (n, m.classifier.in_features) for shape, n in term.seen)


class Records(Observer):
    def __init__(self):
        self.indices = []

    def observe(self, batch, out):
        assert not out.logits.requires_grad
        self.indices.append(batch.index.clone())


class Upsample(Sampler):
    """Visits sample 0 three times per epoch and restarts training once, before epoch 1."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def epoch_plan(self, epoch, generator):
        self.calls.append(epoch)
        order = torch.cat([torch.randperm(self.n, generator=generator), torch.zeros(2, dtype=torch.long)])
        return EpochPlan(order, restart=len(self.calls) == 2)


def test_a_sampler_decides_what_an_epoch_visits_and_may_restart_training_once():
    sampler, seen = Upsample(64), Records()
    _, log = fit([CE(), sampler, seen])
    visits = torch.cat(seen.indices)
    assert int((visits == 0).sum()) == 3 * 3  # three epochs were trained (one before the restart), 3 visits each
    assert log.restarted_at == 1 and len(log.train_loss) == 3 and sampler.calls == [0, 1, 1]


class PerDomain(StepOwner):
    """DomainBed-style: one objective per domain's minibatch, averaged, one update."""

    def __init__(self):
        self.domains_seen = set()

    def train_step(self, batch, tools: StepTools):
        minibatches = batch.by_domain()
        self.domains_seen |= {int(b.domain[0]) for b in minibatches}

        def step(recomputed=False):
            tools.optimizer.zero_grad(set_to_none=True)
            loss = sum(tools.loss(b, tools.forward(b)) for b in minibatches) / len(minibatches)
            loss.backward()
            return loss.detach()

        return tools.update(step)


def test_a_step_owner_sees_per_domain_minibatches():
    owner = PerDomain()
    x, y = toy_data()
    domains = torch.arange(64) % 3
    fit([CE(), owner], x_y=(x, y), domains=domains, recipe={"epochs": 1})
    assert owner.domains_seen == {0, 1, 2}


def test_a_predictor_owns_prediction():
    x, _ = toy_data()
    m = model()
    logits = predict(m, x, normalizer=Normalizer.fit(x), device="cpu", predictor=OwnPrediction())
    assert logits.shape == (64, 4) and bool((logits.argmax(1) == 0).all())


class DistilFromTeacher(CE):
    def objective(self, batch, out):
        teacher = out.aux["teacher"].logits
        assert not teacher.requires_grad
        return super().objective(batch, out) + F.mse_loss(out.logits, teacher)


def test_a_frozen_teacher_runs_beside_the_model_and_never_changes():
    teacher = model(seed=7).eval()
    before = copy.deepcopy(teacher.state_dict())
    m, _ = fit([DistilFromTeacher()], aux={"teacher": AuxModel(teacher, trainable=False)})
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not same_weights(m, model(0))


class ViewTransform(Transform):
    produces_soft_targets = False

    def transform(self, batch, generator):
        return replace(batch, views={"flipped": Batch(batch.x.flip(-1), batch.y, batch.index)})


class ViewTerm(LossTerm):
    def __init__(self):
        self.shapes = []

    def extra_loss(self, batch, out):
        self.shapes.append((tuple(out.logits.shape), tuple(out.views["flipped"].logits.shape)))
        return 0.0 * out.views["flipped"].logits.sum()


def test_views_are_forwarded_separately_and_the_objective_sees_the_raw_rows_only():
    term = ViewTerm()
    fit([ViewTransform(), CE(), term], recipe={"epochs": 1})
    assert term.shapes and all(a == b for a, b in term.shapes)


def test_an_extra_pass_of_a_step_leaves_batchnorm_statistics_alone():
    class TwoPasses(UpdateRule):
        def update(self, step, optimizer):
            loss = step()
            stats = [b.running_mean.clone() for b in bns]
            step(recomputed=True)
            assert all(torch.equal(a, b.running_mean) for a, b in zip(stats, bns))
            optimizer.step()
            return loss

    m = model()
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    fit([CE(), TwoPasses()], net=m, recipe={"epochs": 1})


# ---------------------------------------------------------------------------------------------
# outputs of the default path are unchanged by the seam
# ---------------------------------------------------------------------------------------------


def test_parts_in_any_order_train_identically():
    a, log_a = fit([CE(), Records()])
    b, log_b = fit([Records(), CE()])
    assert same_weights(a, b) and log_a.train_loss == log_b.train_loss


def test_outputs_carry_what_was_asked_for():
    out = Outputs(torch.zeros(2, 3))
    assert out.features is None and out.heads == {} and out.aux == {} and out.views == {} and not out.recomputed
