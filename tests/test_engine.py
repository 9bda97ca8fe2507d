"""The training loop: schedules, determinism, divergence, batched augmentation, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from harness.engine import Normalizer, crop_flip, lr_at, predict, train
from harness.errors import RunDiverged
from harness.kinds import Loss
from harness.metrics import accuracy, expected_calibration_error, per_class_accuracy, shot_group_accuracy
from harness.models import CifarResNet, SmallCNN

RECIPE = {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 1}


class CE(Loss):
    def forward(self, logits, targets, index):
        return torch.nn.functional.cross_entropy(logits, targets)


class NaNAfterFirstEpoch(CE):
    epoch = 0

    def start_epoch(self, epoch):
        self.epoch = epoch

    def forward(self, logits, targets, index):
        loss = super().forward(logits, targets, index)
        return loss * float("nan") if self.epoch >= 1 else loss


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    for c in range(4):  # a bright quadrant per class: learnable
        r, q = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, q * 6 : q * 6 + 6] += 150
    return x, y


def test_onecycle_schedule_warms_up_then_decays_linearly_to_zero():
    recipe = {"lr": 1.0, "epochs": 10, "warmup_epochs": 2, "schedule": "onecycle"}
    assert lr_at(0, 10, recipe) == pytest.approx(1 / 20)
    assert lr_at(19, 10, recipe) == pytest.approx(1.0)
    assert lr_at(20, 10, recipe) == pytest.approx(1.0)
    assert lr_at(60, 10, recipe) == pytest.approx(0.5)
    assert lr_at(100, 10, recipe) == pytest.approx(0.0)


def test_step_schedule_matches_the_ldam_drw_recipe():
    recipe = {"lr": 0.1, "epochs": 200, "warmup_epochs": 5, "schedule": "step", "milestones": [160, 180], "lr_decay": 0.01}
    assert lr_at(0, 1, recipe) == pytest.approx(0.1 / 5)
    assert lr_at(100, 1, recipe) == pytest.approx(0.1)
    assert lr_at(160, 1, recipe) == pytest.approx(0.1 * 0.01)
    assert lr_at(185, 1, recipe) == pytest.approx(0.1 * 0.0001)


def test_training_is_deterministic_for_a_seed_and_learns():
    x, y = toy_data()
    weights, accs = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = SmallCNN(4, 1, 12)
        log = train(model, x, y, recipe=RECIPE, parts=[CE()], normalizer=Normalizer.fit(x), seed=0, device="cpu")
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        accs.append(accuracy(predict(model, x, normalizer=Normalizer.fit(x), device="cpu"), y))
        assert len(log.train_loss) == 3 and log.train_loss[-1] < log.train_loss[0]
    assert torch.equal(weights[0], weights[1])
    assert accs[0] > 0.9


def test_a_non_finite_loss_stops_the_run_early_as_diverged():
    x, y = toy_data()
    epochs_seen = []
    with pytest.raises(RunDiverged, match="epoch 2 of 3"):
        train(SmallCNN(4, 1, 12), x, y, recipe=RECIPE, parts=[NaNAfterFirstEpoch()], normalizer=Normalizer.fit(x), seed=0, device="cpu", on_epoch=lambda e, n, loss: epochs_seen.append(e))
    assert epochs_seen == [1]


def test_crop_flip_is_a_per_sample_translation_or_mirror():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=2)
    assert out.shape == x.shape
    centre = out[:, :, 2:6, 2:6]  # a shift of at most 2 keeps every centre pixel from the image
    assert torch.isin(centre, x).all()


def test_normalizer_standardises_each_channel():
    x = torch.randint(0, 256, (100, 3, 4, 4), dtype=torch.uint8)
    z = Normalizer.fit(x)(x)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_cifar_resnet32_has_the_published_depth_and_runs():
    model = CifarResNet(10, 3, depth=32)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert convs + 1 == 32  # 31 conv layers + the linear classifier
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert 0.45e6 < sum(p.numel() for p in model.parameters()) < 0.48e6  # ~0.46 M (He et al. 2016, Table 6)


def test_metrics_against_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 0, 1, 1])
    assert accuracy(logits, y) == 0.5
    assert per_class_accuracy(logits, y, 3)[:2] == [0.5, 0.5] and math.isnan(per_class_accuracy(logits, y, 3)[2])
    # ECE by hand: confidences p = softmax max per row; 15 equal-width bins
    p = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-0.5))]
    correct = [1, 0, 0, 1]
    bins: dict[int, list[int]] = {}
    for i, c in enumerate(p):
        bins.setdefault(math.ceil(c * 15) - 1, []).append(i)
    expected = sum(len(ix) / 4 * abs(sum(correct[i] for i in ix) / len(ix) - sum(p[i] for i in ix) / len(ix)) for ix in bins.values())
    assert expected_calibration_error(logits, y) == pytest.approx(expected, abs=1e-6)


def test_shot_groups_split_by_training_count():
    groups = shot_group_accuracy([0.9, 0.8, 0.5, 0.1], [400, 100, 50, 4], many_above=80, few_below=16)
    assert groups == {"many": pytest.approx(0.85), "medium": 0.5, "few": 0.1}
    assert math.isnan(shot_group_accuracy([0.9], [400], 80, 16)["few"])
