"""Calibration suite: post-hoc calibrators of a trained classifier, in distribution and under shift.

One cell = (training entry, calibrator, seed). The classifier of a (dataset, model, recipe, seed,
training methods) is trained once on the training split minus a held-out validation split and
stored as an artifact (role `calibration-model`), then reused by every calibrator. The
calibrator is fitted on the validation split only, and evaluated on the test split and on
corrupted copies of it (`harness.corruptions`, a fixed subset of corruptions at severities 3 and
5: calibration under shift), with the accuracy of its predictions beside every calibration metric.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from harness.corruptions import CORRUPTIONS, corrupt, corruption_generator, default_table
from harness.hookspecs import hookimpl
from harness.metrics import accuracy, aurc, brier_score, expected_calibration_error, negative_log_likelihood
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite
from harness.training import Trained

VERSION = "1"
KIND = "calibration"
VALIDATION_FRACTION = 0.1  # of every class's training images (Guo et al.: 5000 of CIFAR's 50000)
SHIFT_SEED = 0  # fixed: the corrupted images (and the tiny scale's subset of corruptions) are part of the protocol
SHIFT_SEVERITIES = (3, 5)
TINY_CORRUPTIONS = 4  # corruptions drawn (seeded) for scale=tiny; scale=paper uses all of them
RELIABILITY_BINS = 15


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices): round(fraction * n_c) images of every class c drawn
    at random with a generator of this split's own (a function of the run seed), both sorted."""
    digest = hashlib.sha256(f"harness/calibration/validation/{seed}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: round(fraction * len(members))]])
    val = torch.sort(torch.cat(chosen)).values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def shift_corruptions(scale: str) -> tuple[str, ...]:
    """The corruptions of the shifted test sets: all of them at scale=paper; at scale=tiny a fixed
    seeded draw of TINY_CORRUPTIONS, in the order of harness.corruptions.CORRUPTIONS."""
    if scale != "tiny":
        return CORRUPTIONS
    drawn = torch.randperm(len(CORRUPTIONS), generator=torch.Generator().manual_seed(SHIFT_SEED))[:TINY_CORRUPTIONS]
    return tuple(CORRUPTIONS[i] for i in sorted(drawn.tolist()))


def corrupted(ctx: RunContext, dataset: str, x: torch.Tensor, name: str, severity: int) -> torch.Tensor:
    """The test images under one corruption, generated once per process (seeded: the same for every run)."""
    table = default_table(int(x.shape[1]))
    key = f"calibration-corrupted/{dataset}/{table}/{SHIFT_SEED}/{len(x)}/{name}/{severity}"
    if key not in ctx.data_memo:
        ctx.data_memo[key] = corrupt(x, name, severity, corruption_generator(SHIFT_SEED, name, severity), table=table)
    return ctx.data_memo[key]


def logits_of(ctx: RunContext, trained: Trained, set_name: str, images: torch.Tensor) -> torch.Tensor:
    """The trained classifier's logits of a set (through the entry's predictor), once per model and process."""
    key = f"calibration-logits/{trained.facts['artifact_id']}/{set_name}"
    if key not in ctx.data_memo:
        ctx.data_memo[key] = trained.predict(images)
    return ctx.data_memo[key]


def reliability(probs: torch.Tensor, y: torch.Tensor, bins: int = RELIABILITY_BINS) -> dict[str, list[float]]:
    """Per equal-width confidence bin: accuracy, mean confidence and the share of samples (NaN for an empty bin)."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    index = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)  # (lo, hi] bins, 0 in the first
    count = torch.bincount(index, minlength=bins).float()
    hits = torch.zeros(bins).index_add_(0, index, correct)
    confs = torch.zeros(bins).index_add_(0, index, conf.float())
    nan = torch.full((bins,), float("nan"))
    return {
        "reliability_accuracy": torch.where(count > 0, hits / count.clamp_min(1), nan).tolist(),
        "reliability_confidence": torch.where(count > 0, confs / count.clamp_min(1), nan).tolist(),
        "reliability_share": (count / max(1, len(y))).tolist(),
    }


def scores(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1, ECE, NLL, Brier and AURC of calibrated probabilities (log p passed as logits: softmax(log p) = p)."""
    logp = probs.double().clamp_min(0).log()
    return {"top1": accuracy(logp, y), "ece": expected_calibration_error(logp, y), "nll": negative_log_likelihood(logp, y),
            "brier": brier_score(logp, y), "aurc": aurc(logp, y)}


def run(ctx: RunContext) -> RunOutput:
    from harness_plugins.calibration import CalibrationContext, Predictions, Uncalibrated, prediction_changes

    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    data = ctx.load_dataset(recipe["dataset"])
    k = data.num_classes
    train_idx, val_idx = validation_split(data.train_y, VALIDATION_FRACTION, spec.seed)
    x, y = data.train_x[train_idx], data.train_y[train_idx]
    val_x, val_y = data.train_x[val_idx], data.train_y[val_idx]
    trained = ctx.fit(x, y, num_classes=k, artifact="calibration-model")
    classify: Callable[[torch.Tensor], torch.Tensor] = trained.predict

    cal_ctx = CalibrationContext(num_classes=k, device=ctx.device, seed=spec.seed)
    calibrator = ctx.build(KIND, cal_ctx)
    name = spec.method(KIND).name if calibrator is not None else "uncalibrated (no calibration method in the entry)"
    calibrator = calibrator if calibrator is not None else Uncalibrated(cal_ctx)
    torch.manual_seed(spec.seed)  # a calibrator's own draws
    calibrator.fit(Predictions(logits_of(ctx, trained, "validation", val_x), val_x, classify), val_y)

    def calibrated(set_name: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(ctx, trained, set_name, images)
        probs = calibrator.calibrate(Predictions(logits, images, classify)).double()
        if tuple(probs.shape) != tuple(logits.shape):
            raise ValueError(f"{name}: calibrate gave probabilities of shape {tuple(probs.shape)} for {len(images)} images of {k} classes")
        if not calibrator.changes_prediction and prediction_changes(logits, probs):
            raise ValueError(f"{name} changed {prediction_changes(logits, probs)} predicted class(es) on {set_name} but does not declare "
                             "changes_prediction = True")
        return logits, probs

    clean_logits, clean_probs = calibrated("test", data.test_x)
    metrics = scores(clean_probs, data.test_y)
    corruptions = shift_corruptions(spec.scale)
    series: dict[str, list[float]] = reliability(clean_probs, data.test_y)
    for severity in SHIFT_SEVERITIES:
        per = [scores(calibrated(f"{c}/{severity}", corrupted(ctx, recipe["dataset"], data.test_x, c, severity))[1], data.test_y) for c in corruptions]
        for metric in ("top1", "ece", "nll", "brier", "aurc"):
            metrics[f"{metric}_s{severity}"] = sum(p[metric] for p in per) / len(per)
        series[f"ece_s{severity}_per_corruption"] = [p["ece"] for p in per]
    changed = prediction_changes(clean_logits, clean_probs)
    info: dict[str, Any] = {
        "calibrator": name, "calibrator_facts": calibrator.facts(), "changes_prediction": calibrator.changes_prediction,
        "predictions_changed_on_test": changed, "uncalibrated_top1": accuracy(clean_logits, data.test_y),
        "uncalibrated_ece": expected_calibration_error(clean_logits, data.test_y),
        "artifact_id": trained.facts["artifact_id"], "reused": trained.facts["reused"], "train_seconds": trained.facts.get("train_seconds"),
        "n_train": len(y), "n_validation": len(val_y), "n_test": len(data.test_y), "corruptions": list(corruptions),
        "severities": list(SHIFT_SEVERITIES), "severity_table": default_table(data.in_chans),
    }
    return RunOutput(metrics={m.name: metrics[m.name] for m in METRICS}, series=series, info=info)


METRICS = (
    Metric("ece", False, "expected calibration error on the test split, 15 equal-width bins"),
    Metric("nll", False, "negative log-likelihood of the calibrated probabilities on the test split"),
    Metric("brier", False, "multiclass Brier score on the test split"),
    Metric("aurc", False, "area under the risk-coverage curve of the calibrated maximum probability"),
    Metric("top1", True, "accuracy of the calibrated predictions on the test split"),
    Metric("ece_s3", False, "ECE under corruption at severity 3 (mean over the corruptions)"),
    Metric("nll_s3", False, "NLL under corruption at severity 3"),
    Metric("top1_s3", True, "accuracy under corruption at severity 3"),
    Metric("ece_s5", False, "ECE under corruption at severity 5 (mean over the corruptions)"),
    Metric("nll_s5", False, "NLL under corruption at severity 5"),
    Metric("brier_s5", False, "Brier score under corruption at severity 5"),
    Metric("aurc_s5", False, "AURC under corruption at severity 5"),
    Metric("top1_s5", True, "accuracy under corruption at severity 5"),
)

CARD = """\
**Scenario.** Post-hoc calibration (Guo et al., ICML 2017). The training split loses a held-out
validation split (10% of every class, drawn with the run's seed); the classifier is trained on
the rest with the entry's training methods, once per (dataset, model, recipe, seed, training
methods), and stored as an artifact every calibrator reuses (`info.artifact_id`, `reused`). The
calibrator is fitted on the validation split only, never on the test split, then maps the
classifier's logits to probabilities on the test split and on corrupted copies of it. An entry
combines any training entry with one calibrator: `method=focal+temperature` (the training
methods train the classifier; the calibrator is not a training method); an entry without a
calibrator is evaluated uncalibrated. A calibrator that does not declare `changes_prediction`
must keep every predicted class; a run where it does not fails with that message.

**Calibrators** (default grid: every installed calibrator after each of `ce`, `focal`,
`label_smoothing` and `mixup` training — 20 entries, 4 trained models per seed):
`uncalibrated` (the softmax: the baseline); `temperature` (one T by validation NLL, L-BFGS);
`vector_scaling` (per-class scale and bias by validation NLL; may change predictions);
`histogram_binning` (Zadrozny & Elkan 2001: per class, 10 equal-size bins of the validation
scores, one-vs-rest estimates normalised; may change predictions; a true class of probability 0
gives an infinite NLL, stored as undefined); `correctness_aware` (Liu et al. 2024: a per-sample
temperature from three transformed views, trained with the correctness-aware loss; the authors'
optimiser settings and their clamp of T to [0.1, 10], so on a small validation split it takes few
steps, and a network that starts below 0.1 gets no gradient: `info.calibrator_facts` says how
many validation temperatures ended clamped). Any other training
entry is one `method=` away: `method=ldam+temperature`.

**Metrics.** On the test split: ECE (primary; 15 equal-width confidence bins), NLL, Brier score
(sum over classes, mean over samples), AURC (area under the risk-coverage curve of the maximum
probability) and the top-1 accuracy of the calibrated predictions. Under shift, on the test
split corrupted by a fixed subset of `harness.corruptions` (the mean over the corruptions): ECE,
NLL and top-1 at severity 3 (`_s3`); ECE, NLL, Brier, AURC and top-1 at severity 5 (`_s5`). The
corrupted images are generated with a fixed seed, so every run sees the same ones. Series: the clean reliability diagram (accuracy, confidence and share per
bin) and ECE per corruption. `info` has the calibrator's fitted values (e.g. the temperature).

**scale=tiny.** MNIST 5k (3600 train / 400 validation / 1000 test), `fast_cnn`, 15 epochs, batch
128, SGD momentum 0.9 Nesterov, weight decay 5e-4, peak lr 0.05, 1 warm-up epoch then linear
decay (the long_tail suite's recipe); shift: four corruptions drawn with seed 0 (see
`info.corruptions`) with the MNIST-C severity tables.

**scale=paper.** CIFAR-10 (45000 train / 5000 validation, as Guo et al.), ResNet-110 with He et
al.'s recipe (164 epochs, batch 128, lr 0.1 x0.1 at epochs 82 and 123, weight decay 1e-4,
momentum 0.9, crop + flip); shift: all 13 corruptions of the OOD suite with the CIFAR-10-C
tables, generated on the fly (not the released CIFAR-10-C files). Guo et al. (Table 1) report
that temperature scaling brings ResNet-110's CIFAR-10 ECE from several percent to under 1%.
"""


DEFAULT_TRAINING = ("ce", "focal", "label_smoothing", "mixup")  # Guo et al.'s and Mukhoti et al.'s training rows


def default_entries(catalog: Any) -> list[str]:
    """The default grid: each installed training entry of DEFAULT_TRAINING x every installed calibrator."""
    calibrators = [m.name for m in catalog.methods if m.kind == KIND and m.default_grid and (not m.suites or "calibration" in m.suites)]
    training = [name for name in DEFAULT_TRAINING if name in catalog.methods.names()]
    return [f"{t}+{c}" for t in training for c in calibrators]


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="calibration",
            version=VERSION,
            summary="post-hoc calibrators fitted on a validation split: ECE, NLL, Brier, AURC in distribution and under corruption",
            ranks=(KIND, TRAINING),
            default_kinds=(KIND,),
            default_entries=default_entries,
            baseline="ce+uncalibrated",
            metrics=METRICS,
            primary="ece",
            axes=(),
            scales={
                "tiny": Recipe(dataset="mnist5k", model="fast_cnn", epochs=15, batch_size=128, lr=0.05, weight_decay=5e-4, warmup_epochs=1,
                               source="harness tiny recipe (the long_tail suite's)"),
                "paper": Recipe(
                    dataset="cifar10", model="resnet110", epochs=164, batch_size=128, lr=0.1, weight_decay=1e-4, nesterov=False,
                    schedule="step", milestones=(82, 123), lr_decay=0.1, crop_flip=True,
                    source="He et al., Deep Residual Learning, CVPR 2016, Sec. 4.2 (the ResNet-110 Guo et al. 2017 calibrate)",
                ),
            },
            run=run,
            card=CARD,
        )
    )
