"""The calibration kind, its calibrators and the calibration suite: each calibrator against a
value computed by hand or a case whose answer is known, the promise to keep predicted classes,
the suite's validation split and shifted sets, and `harness new-plugin kind=calibration` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_scaffold import harness_cmd, install_to
from torch.nn import functional as F

from harness.catalog import load_catalog
from harness.corruptions import CORRUPTIONS
from harness.hookspecs import hookimpl
from harness.method import Method
from harness.spec import build_grid
from harness.suite import RunContext
from harness.testing import offline_environ, run_cli
from harness_plugins.calibration import (
    CORRECTNESS_AWARE,
    HISTOGRAM_BINNING,
    TEMPERATURE,
    UNCALIBRATED,
    VECTOR_SCALING,
    CalibrationContext,
    Calibrator,
    Predictions,
    colour_jittered,
    correctness_aware_loss,
    greyscale,
    prediction_changes,
    rotated,
)
from harness_suites.calibration import shift_corruptions, validation_split


def sample(n: int, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits u and labels drawn from softmax(u): softmax(u) is the calibrated answer."""
    g = torch.Generator().manual_seed(seed)
    u = 2.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    return u, torch.multinomial(torch.softmax(u, 1), 1, generator=g).flatten()


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return F.cross_entropy(logits.double(), y).item()


# ---------------------------------------------------------------------------------------------
# calibrators
# ---------------------------------------------------------------------------------------------


def test_uncalibrated_is_the_softmax():
    z = torch.tensor([[math.log(3.0), 0.0]])
    assert UNCALIBRATED.create(CalibrationContext(2)).calibrate(Predictions(z))[0].tolist() == pytest.approx([0.75, 0.25])


def test_temperature_scaling_recovers_a_known_temperature_and_minimises_the_validation_nll():
    u, y = sample(20_000)
    logits = 3.0 * u  # three times too sharp: the calibrated temperature is 3
    calibrator = TEMPERATURE.create(CalibrationContext(5))
    calibrator.fit(Predictions(logits.float()), y)
    t = calibrator.facts()["temperature"]
    assert t == pytest.approx(3.0, rel=0.03)
    fitted = nll(logits / t, y)
    assert fitted <= nll(logits / (t * 1.02), y) and fitted <= nll(logits / (t / 1.02), y)  # a minimum, not just a descent
    probs = calibrator.calibrate(Predictions(logits.float()))
    assert prediction_changes(logits, probs) == 0 and not calibrator.changes_prediction


def test_vector_scaling_undoes_a_per_class_scale_and_shift():
    u, y = sample(20_000, k=4)
    w, b = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64), torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)
    logits = ((u - b) / w).float()  # w * logits + b = u: the true log-odds
    calibrator = VECTOR_SCALING.create(CalibrationContext(4))
    calibrator.fit(Predictions(logits), y)
    test_u, _ = sample(2_000, k=4, seed=1)
    probs = calibrator.calibrate(Predictions(((test_u - b) / w).float()))
    assert (probs.double() - torch.softmax(test_u, 1)).abs().mean() < 0.01
    assert calibrator.changes_prediction  # per-class scales and biases may move the arg-max


def test_histogram_binning_by_hand():
    # two classes, four validation samples, two equal-size bins per class. Class 0's scores sorted:
    # 0.1 (label 1), 0.3 (label 0) | 0.6 (label 0), 0.9 (label 1): bin rates 1/2 and 1/2, edge 0.6.
    # Class 1's scores (1 - p0) sorted: 0.1 (label 1), 0.4 (label 0) | 0.7 (label 0), 0.9 (label 1): rates 1/2, 1/2, edge 0.7.
    p0 = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0, 1])
    logits = torch.stack([p0.log(), (1 - p0).log()], 1).float()
    calibrator = HISTOGRAM_BINNING.create(CalibrationContext(2), bins=2)
    calibrator.fit(Predictions(logits), labels)
    assert calibrator.edges.flatten().tolist() == pytest.approx([0.6, 0.7])
    assert calibrator.values.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    # now with labels that separate: class 0 positive for the two highest p0
    calibrator.fit(Predictions(logits), torch.tensor([1, 1, 0, 0]))
    assert calibrator.values.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    # a test score p0 = 0.8: class 0 in its upper bin (1.0), class 1 (0.2 < 0.7) in its lower bin (0.0) -> (1, 0)
    test = torch.tensor([[math.log(0.8), math.log(0.2)], [math.log(0.5), math.log(0.5)]])
    probs = calibrator.calibrate(Predictions(test))
    assert probs[0].tolist() == pytest.approx([1.0, 0.0])
    # p0 = 0.5: both classes in their lower bins (rate 0): no estimate, so uniform
    assert probs[1].tolist() == pytest.approx([0.5, 0.5])
    assert calibrator.changes_prediction


def test_correctness_aware_loss_by_hand():
    # one right (confidence 0.9) and one wrong (0.6): accuracy 1/2, both weights 1/2 -> ((0.1)^2 + (0.6)^2) / 2
    assert correctness_aware_loss(torch.tensor([0.9, 0.6]), torch.tensor([1.0, 0.0])).item() == pytest.approx(0.185)
    # three right, one wrong: weights 1/4 for the right ones and 3/4 for the wrong one
    value = correctness_aware_loss(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1.0, 1.0, 1.0, 0.0])).item()
    assert value == pytest.approx((0.25 * (0.01 + 0.04 + 0.09) + 0.75 * 0.36) / 1.5)
    assert correctness_aware_loss(torch.tensor([0.9, 0.8]), torch.tensor([1.0, 1.0])) is None  # no weight: the batch is skipped


def test_the_correctness_aware_views_by_hand():
    rgb = torch.tensor([100, 50, 200], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    assert greyscale(rgb).flatten().tolist() == [82] * 12  # 0.299 * 100 + 0.587 * 50 + 0.114 * 200 = 82.05
    grey = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2) * 50
    assert torch.equal(greyscale(grey), grey)  # a grey image is unchanged
    assert rotated(grey).flatten().tolist() == [50, 150, 0, 100]  # 90 degrees counter-clockwise
    assert colour_jittered(torch.full((1, 1, 2, 2), 100, dtype=torch.uint8)).flatten().tolist() == [60] * 4  # brightness x0.6, no contrast left


def test_correctness_aware_temperature_is_per_sample_and_keeps_predictions():
    u, y = sample(400, k=10)
    images = torch.randint(0, 256, (400, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    def predict(x: torch.Tensor) -> torch.Tensor:  # a classifier whose answer depends on the image
        return u.float() + x.float().mean((1, 2, 3)).unsqueeze(1) / 64
    data = Predictions(predict(images), images, predict)
    calibrator = CORRECTNESS_AWARE.create(CalibrationContext(10, seed=0), lr=1e-2, epochs=100, batch_size=100)
    assert calibrator.features(data).shape == (400, 12)  # three views x the top-4 classes
    with torch.no_grad():  # T(x) = 1 everywhere: the plain softmax
        calibrator.temperature_layer.weight.zero_()
        calibrator.temperature_layer.bias.fill_(1.0)
    assert torch.allclose(calibrator.calibrate(data), torch.softmax(data.logits.double(), 1), atol=1e-6)
    with torch.no_grad():
        calibrator.temperature_layer.bias.fill_(2.0)
    correct = (data.logits.argmax(1) == y).float()
    confidence = lambda: calibrator.calibrate(data).max(1).values  # noqa: E731
    before = correctness_aware_loss(confidence(), correct).item()
    calibrator.fit(data, y)
    assert correctness_aware_loss(confidence(), correct).item() < before  # training lowers the CA loss
    assert prediction_changes(data.logits, calibrator.calibrate(data)) == 0 and not calibrator.changes_prediction
    with pytest.raises(ValueError, match="needs the images and the classifier"):
        calibrator.calibrate(Predictions(data.logits))


# ---------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = torch.arange(10).repeat_interleave(40)
    train, val = validation_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[val], minlength=10).tolist() == [4] * 10
    assert len(set(train.tolist()) | set(val.tolist())) == 400 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(validation_split(labels, 0.1, seed=0)[1], val)
    assert not torch.equal(validation_split(labels, 0.1, seed=1)[1], val)


def test_shifted_sets_use_a_fixed_subset_of_corruptions_at_tiny_scale():
    tiny = shift_corruptions("tiny")
    assert len(tiny) == 4 and set(tiny) <= set(CORRUPTIONS) and tiny == shift_corruptions("tiny")
    assert list(tiny) == [c for c in CORRUPTIONS if c in tiny]
    assert shift_corruptions("paper") == CORRUPTIONS


class ArgmaxFlipper(Calibrator):
    """A calibrator that swaps the two largest probabilities without declaring it."""

    def __init__(self, ctx):
        pass

    def calibrate(self, data):
        p = torch.softmax(data.logits.double(), 1)
        top2 = p.topk(2, dim=1).indices
        swapped = p.clone()
        swapped.scatter_(1, top2, p.gather(1, top2.flip(1)))
        return swapped.float()


def test_a_calibrator_that_changes_predictions_without_saying_so_fails_the_run(tmp_path):
    class Plugin:
        @hookimpl
        def harness_register_methods(self, register):
            register(Method(name="argmax_flipper", kind="calibration", build=ArgmaxFlipper, summary="swaps the top two classes", paper="a test"))

    catalog = load_catalog(allow=["harness-bench"])
    assert catalog.add_plugin(Plugin(), "flipper", dist="test", version="0").ok
    suite, specs = build_grid(catalog, {"suite": "calibration", "method": "argmax_flipper", "dataset": "digits", "epochs": "1", "seeds": "1"})
    assert specs[0].entry == "ce+argmax_flipper"
    ctx = RunContext(spec=specs[0], catalog=catalog, cache_dir=tmp_path, device="cpu")
    with pytest.raises(ValueError, match=r"argmax_flipper changed .* predicted class.* does not declare changes_prediction"):
        suite.run(ctx)


@pytest.mark.slow
def test_calibrators_share_one_trained_model_per_training_entry(tmp_path, monkeypatch):
    for key, value in offline_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    results = tmp_path / "results"
    code, out, err = run_cli("run", "suite=calibration", "method=ce+uncalibrated,ce+temperature,focal+temperature,ce+histogram_binning",
                             "dataset=digits", "epochs=2", "seeds=1", f"results={results}")
    assert code == 0, err
    assert "focal+temperature" in out
    records = {r["entry"]: r for r in (json.loads(p.read_text()) for p in results.glob("runs/*/result.json"))}
    assert all(r["status"] == "ok" for r in records.values())
    ce_models = {records[e]["info"]["artifact_id"] for e in ("ce+uncalibrated", "ce+temperature", "ce+histogram_binning")}
    assert len(ce_models) == 1 and records["focal+temperature"]["info"]["artifact_id"] not in ce_models  # one model per training entry
    assert records["ce+temperature"]["info"]["calibrator_facts"]["temperature"] > 0
    metric = lambda entry, name: records[entry]["metrics"][name]["value"]  # noqa: E731
    # a short-trained model is badly calibrated; temperature scaling fitted on the validation split lowers test NLL and ECE
    assert metric("ce+temperature", "nll") < metric("ce+uncalibrated", "nll")
    assert metric("ce+temperature", "ece") < metric("ce+uncalibrated", "ece")
    assert metric("ce+temperature", "top1") == metric("ce+uncalibrated", "top1")  # predictions kept
    assert set(records["ce+temperature"]["info"]["corruptions"]) == set(shift_corruptions("tiny"))
    assert 0 <= metric("ce+temperature", "ece_s5") <= 1 and 0 <= metric("ce+temperature", "top1_s3") <= 1


@pytest.mark.slow
def test_new_plugin_kind_calibration_installs_lists_runs_and_passes_its_tests(tmp_path):
    site = tmp_path / "site"
    made = harness_cmd("new-plugin", "my-cal", "kind=calibration", f"dir={tmp_path / 'my-cal'}", pythonpath=site, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "my-cal"
    assert 'kind="calibration"' in (root / "harness_my_cal" / "methods.py").read_text() and "suite=calibration" in made.stdout
    install_to(root, site, tmp_path)
    listed = harness_cmd("list", "methods", "my_cal*", pythonpath=site, cwd=tmp_path)
    assert listed.returncode == 0 and "my_cal_example" in listed.stdout and "calibration" in listed.stdout, listed.stderr
    env_run = {**os.environ, **offline_environ(tmp_path), "PYTHONPATH": str(site)}
    ran = subprocess.run([sys.executable, "-m", "harness", "run", "suite=calibration", "method=uncalibrated,my_cal_example", "dataset=digits",
                          "epochs=1", "seeds=1", f"results={tmp_path / 'results'}"], capture_output=True, text=True, env=env_run, cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "ce+my_cal_example" in ran.stdout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(root)])}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout
