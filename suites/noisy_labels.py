"""Noisy-label suite: train on corrupted training labels, test on clean test labels.

Noise models (the `noise` axis): symmetric, asymmetric class-pair flips, instance-dependent
(Xia et al. 2020) and real human noise (CIFAR-10N / CIFAR-100N, Wei et al. 2022) read from a
local label file. The noisy labels depend only on the run seed (through a generator of their
own, never the training RNG), so every method of a seed trains on the same labels.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.engine import Normalizer, predict
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.label_noise import (  # noqa: F401 - the protocol's noise models, importable from the suite
    CIFAR10_CLASSES,
    CIFAR10_PAIRS,
    MNIST_PAIRS,
    asym_pairs,
    asymmetric_noise,
    instance_noise,
    noise_rng,
    symmetric_noise,
    transition_matrix,
)
from harness.metrics import accuracy
from harness.models import ModelSource, strided_conv_bn_relu
from harness.params import Param
from harness.predictions import Predictions
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite

NOISE_KINDS = ("sym", "asym", "instance", "human")
ASYM_MAX_RATE = 0.5

# ---------------------------------------------------------------------------------------------
# human noise: CIFAR-10N / CIFAR-100N label files (never unpickled)
# ---------------------------------------------------------------------------------------------

# Wei et al., Learning with Noisy Labels Revisited: A Study Using Real-World Human Annotations,
# ICLR 2022; keys of the published label dictionaries.
HUMAN_KEYS = {"aggre": "aggre_label", "rand1": "random_label1", "rand2": "random_label2", "rand3": "random_label3", "worst": "worse_label", "noisy100": "noisy_label"}
HUMAN_CLASSES = {"aggre": 10, "rand1": 10, "rand2": 10, "rand3": 10, "worst": 10, "noisy100": 100}
HUMAN_FILE_HELP = (
    "the published CIFAR-10_human.pt / CIFAR-100_human.pt (read as data: only arrays are accepted, nothing is "
    "executed), or a local copy of the CIFAR-N labels as .json (an object with the published keys, e.g. "
    "{\"worse_label\": [...], \"clean_label\": [...]}, or a plain list), .npz (same keys), .npy (one int array) "
    "or .csv (a header row with the published keys, or one label per line), in the order of the CIFAR "
    "training set. Labels: http://www.noisylabels.com"
)


def read_label_file(path: Path, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(noisy labels, clean labels if the file has them) from a JSON/.npz/.npy/.csv label file."""
    if not path.is_file():
        raise HarnessError(f"noise=human needs {HUMAN_FILE_HELP}; {path} does not exist")
    suffix = path.suffix.lower()
    table: dict[str, np.ndarray] = {}
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, list):
                table[key] = np.asarray(data)
            elif isinstance(data, dict):
                table = {k: np.asarray(v) for k, v in data.items() if isinstance(v, list)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                table = {k: npz[k] for k in npz.files}
        elif suffix == ".npy":
            table[key] = np.load(path, allow_pickle=False)
        elif suffix == ".pt":  # the published CIFAR-N file, read without executing anything it holds
            from harness.label_files import read_torch_label_file

            table = read_torch_label_file(path)
        elif suffix == ".csv":
            with path.open(newline="") as fh:
                rows = [r for r in csv.reader(fh) if r]
            if rows and not rows[0][0].strip().lstrip("-").isdigit():
                header, body = [h.strip() for h in rows[0]], rows[1:]
                table = {h: np.asarray([int(r[i]) for r in body]) for i, h in enumerate(header)}
            else:
                table[key] = np.asarray([int(r[0]) for r in rows])
        else:
            raise HarnessError(f"noise_file {path}: unsupported suffix {suffix!r}; noise=human needs {HUMAN_FILE_HELP}")
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"noise_file {path} could not be read ({exc}); noise=human needs {HUMAN_FILE_HELP}") from None
    if key not in table:
        raise HarnessError(f"noise_file {path} has no {key!r} labels (found: {', '.join(sorted(table)) or 'none'}); noise=human needs {HUMAN_FILE_HELP}")
    noisy = np.asarray(table[key])
    if noisy.ndim != 1 or not np.issubdtype(noisy.dtype, np.integer):
        raise HarnessError(f"noise_file {path}: {key!r} must be a flat list of integer labels, got {noisy.dtype} {noisy.shape}")
    clean = table.get("clean_label")
    return noisy.astype(np.int64), (np.asarray(clean).astype(np.int64) if clean is not None else None)


def human_noise(labels: torch.Tensor, num_classes: int, human: str, noise_file: str) -> tuple[torch.Tensor, str]:
    """The CIFAR-N labels of `human`, checked against the training split; also the file's sha256."""
    if noise_file == "none":
        raise HarnessError(f"noise=human needs noise_file=PATH: {HUMAN_FILE_HELP}")
    if HUMAN_CLASSES[human] != num_classes:
        which = "CIFAR-100 (dataset=cifar100)" if human == "noisy100" else "CIFAR-10 (dataset=cifar10)"
        raise HarnessError(f"human={human} labels are for {which}, but the dataset has {num_classes} classes")
    path = Path(noise_file).expanduser()
    noisy, clean = read_label_file(path, HUMAN_KEYS[human])
    if len(noisy) != len(labels):
        raise HarnessError(f"noise_file {path} has {len(noisy)} labels but the training split has {len(labels)}: the CIFAR-N labels cover the full CIFAR training set in its original order")
    if noisy.min() < 0 or noisy.max() >= num_classes:
        raise HarnessError(f"noise_file {path}: labels must lie in [0, {num_classes})")
    if clean is not None and not np.array_equal(clean, labels.numpy()):
        raise HarnessError(f"noise_file {path}: its clean_label column does not match the training split's labels (different sample order?)")
    return torch.from_numpy(noisy), hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# what the noise did, and the metrics on the noisy training samples
# ---------------------------------------------------------------------------------------------


def noisy_sample_fit(pred: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> tuple[float, float]:
    """Over the training samples whose noisy label differs from the clean one: the share predicted
    as their (wrong) noisy label (memorisation) and the share predicted as their clean label."""
    wrong = noisy != clean
    if not bool(wrong.any()):
        return float("nan"), float("nan")
    p = pred[wrong]
    return float((p == noisy[wrong]).float().mean()), float((p == clean[wrong]).float().mean())


def make_noisy_labels(variant: dict, clean: torch.Tensor, features: torch.Tensor, classes: tuple[str, ...], dataset: str, seed: int) -> tuple[torch.Tensor, dict]:
    """Validate the variant and draw the noisy labels of a seed; also facts for the run's info."""
    noise, rate, human, noise_file = variant["noise"], variant["rate"], variant["human"], variant["noise_file"]
    k = len(classes)
    if noise != "human" and (human != "none" or noise_file != "none"):
        raise HarnessError(f"human= and noise_file= apply to noise=human only (got noise={noise})")
    if not 0.0 <= rate < 1.0:
        raise HarnessError(f"rate={rate} must lie in [0, 1)")
    info: dict = {"noise": noise}
    rng = noise_rng(seed)
    if noise == "sym":
        noisy = symmetric_noise(clean, k, rate, rng)
    elif noise == "asym":
        if rate > ASYM_MAX_RATE:
            raise HarnessError(f"noise=asym needs rate in [0, {ASYM_MAX_RATE}] (beyond 0.5 the flipped class becomes the majority); got {rate}")
        pairs, source = asym_pairs(classes, dataset)
        noisy = asymmetric_noise(clean, pairs, rate, rng)
        info.update(flip_pairs=[[a, b] for a, b in pairs], flip_pairs_source=source)
    elif noise == "instance":
        noisy = instance_noise(clean, features, k, rate, rng)
    else:
        if human == "none":
            raise HarnessError(f"noise=human needs human=LABELSET, one of {', '.join(HUMAN_KEYS)} (and noise_file=PATH)")
        if rate != RATE_DEFAULT:
            raise HarnessError(f"rate does not apply to noise=human (the human labels fix the noise); leave it at its default {RATE_DEFAULT}")
        noisy, digest = human_noise(clean, k, human, noise_file)
        info.update(human=human, noise_file_sha256=digest)
    return noisy, info


# ---------------------------------------------------------------------------------------------
# the tiny recipe's model: fast, and able to memorise
# ---------------------------------------------------------------------------------------------


class FastCNNFC(nn.Module):
    """`fast_cnn`'s two stride-2 conv-BN-ReLU layers (16, 32 channels), then the flattened map
    (32 x 7 x 7 on 28 x 28 images) into a 128-unit fully connected layer, as `small_cnn_fc`.

    The ~200 k parameters of the fully connected layer let cross-entropy memorise noisy labels
    (a globally pooled head does not in the tiny budget); the strided convolutions, instead of
    max-pooling over full-resolution maps, make an epoch about four times cheaper on a CPU.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, width: int = 16, fc_hidden: int = 128):
        super().__init__()
        side = (img_size - 1) // 2 + 1
        side = (side - 1) // 2 + 1  # two 3x3 convolutions, stride 2, padding 1
        self.features = nn.Sequential(
            *strided_conv_bn_relu(in_chans, width),
            *strided_conv_bn_relu(width, 2 * width),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, fc_hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(fc_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@hookimpl
def harness_register_models(register):
    register(
        ModelSource(
            "fast_cnn_fc",
            "fast_cnn's strided convolutions (16, 32 channels) + a 128-unit fully connected layer: memorises noisy labels, "
            "the noisy-labels tiny model",
            lambda num_classes, in_chans, img_size: FastCNNFC(num_classes, in_chans, img_size),
        )
    )


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    variant = dict(spec.variant)
    data = ctx.load_dataset(recipe["dataset"])
    k = data.num_classes
    x, clean = data.train_x, data.train_y
    noisy, noise_info = make_noisy_labels(variant, clean, x, data.classes, recipe["dataset"], spec.seed)
    wrong = noisy != clean
    counts = torch.bincount(noisy, minlength=k).tolist()  # what the loss sees: the noisy label counts

    normalizer = Normalizer.fit(x)

    def scores(test_logits: torch.Tensor, train_logits: torch.Tensor) -> dict[str, float]:
        memorised, recovered = noisy_sample_fit(train_logits.argmax(1), clean, noisy)
        return {"clean_top1": accuracy(test_logits, data.test_y), "memorisation": memorised, "clean_recovery": recovered}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:  # per-epoch curves: the model's own logits
        return scores(predict(m, data.test_x, normalizer=normalizer, device=ctx.device), predict(m, x, normalizer=normalizer, device=ctx.device))

    trained = ctx.fit(x, noisy, num_classes=k, class_counts=counts, normalizer=normalizer, evaluate=evaluate)
    log = trained.log
    train_logits = trained.predict(x)
    test_logits = trained.predict(data.test_x)
    final = scores(test_logits, train_logits)
    train_pred = train_logits.argmax(1)
    matrix = transition_matrix(clean, noisy, k)
    realised = float(wrong.float().mean())
    return RunOutput(
        metrics={
            "clean_top1": final["clean_top1"],
            "memorisation": final["memorisation"],
            "clean_recovery": final["clean_recovery"],
            "noisy_train_fit": float((train_pred == noisy).float().mean()),
        },
        series={
            "clean_top1_per_epoch": log.curves["clean_top1"],
            "memorisation_per_epoch": log.curves["memorisation"],
            "clean_recovery_per_epoch": log.curves["clean_recovery"],
            "train_loss": log.train_loss,
            "transition_matrix": matrix.flatten().tolist(),
        },
        info={
            **noise_info,
            "rate": variant["rate"],
            "realised_noise_rate": realised,
            "num_noisy": int(wrong.sum()),
            "num_classes": k,
            "train_size": len(noisy),
            "noisy_class_counts": counts,
            "transition_matrix_layout": "row-major K x K, T[i][j] = P(noisy j | clean i), empirical",
        },
        predictions={"test": Predictions(test_logits, data.test_y, scores={"clean_top1": "accuracy"})},
    )


RATE_DEFAULT = 0.5

DEFAULT_KINDS = ("loss", "augmentation")  # optimisers and other training kinds run when named
# Installed losses and augmentations left out of the default grid, each one `method=` away: on
# class-balanced noisy labels a class-prior correction is cross-entropy again (a near-uniform
# prior shifts every logit alike), and these augmentations cost 2-4 cross-entropy runs each
# (four rotated copies, or extra forward passes), which the grid's ten-minute budget on 2 CPU
# cores does not hold.
OFF_DEFAULT_GRID = ("class_balanced", "balanced_softmax", "logit_adjustment", "sla", "sla_sd", "rankmixup")


def default_entries(catalog) -> list[str]:
    """Every installed loss and augmentation of the default grids, except OFF_DEFAULT_GRID."""
    return [
        m.name for m in catalog.methods
        if m.kind in DEFAULT_KINDS and m.default_grid and (not m.suites or "noisy_labels" in m.suites) and m.name not in OFF_DEFAULT_GRID
    ]


CARD = """\
**Scenario.** The training labels are corrupted by one noise model (`noise`), the test labels are
clean. The noisy labels are drawn by a generator seeded from the run seed alone (independent of
the training RNG): every method of a seed sees the same noisy labels, and each seed is a new
draw. The realised noise rate and the empirical K x K transition matrix T[i, j] =
P(noisy j | clean i) (series `transition_matrix`, row-major) are stored with every run.

- `noise=sym` (rates 0.2, 0.5, 0.8): exactly round(rate * N) samples, chosen uniformly, get a label
  drawn uniformly from the K - 1 *other* classes (realised rate = rate).
- `noise=asym` (rates 0.2, 0.4; any rate in [0, 0.5] is accepted): in each source class exactly
  round(rate * n) samples flip to the paired class. CIFAR-10 (by class names): truck->automobile,
  bird->airplane, deer->horse, cat<->dog (Patrini et al., CVPR 2017); MNIST-like digits
  (mnist5k, mnist, digits): 2->7, 3->8, 5<->6, 7->1 (Ma et al., ICML 2018); CIFAR-100: each class
  to the next within blocks of 5 consecutive class indices (Patrini et al.'s code, as used by
  APL and ELR); any other data set: class i -> (i + 1) mod K (the circular flip, not a
  published protocol for that data set). Only source classes flip, so the realised overall
  rate is rate x (share of samples in source classes), e.g. rate/2 on CIFAR-10.
- `noise=instance` (rates 0.2, 0.4): instance-dependent noise generated as in Xia et al.,
  "Part-dependent Label Noise: Towards Instance-dependent Label Noise", NeurIPS 2020 (Algorithm 2
  of the appendix and their `get_instance_noisy_label`): per-sample flip rate q_i from N(rate,
  0.1^2) truncated to [0, 1]; W ~ N(0, 1) with one [D, K] projection per class; the flip goes to
  class j != y with probability q_i softmax_j(x_i W[y]) (x_i the pixels scaled to [0, 1]).
- `noise=human`: real human annotations of CIFAR-10N (`human=aggre|rand1|rand2|rand3|worst`) or
  CIFAR-100N (`human=noisy100`), Wei et al., ICLR 2022, read from a local label file given by
  `noise_file=PATH` (.json, .npz, .npy or .csv, converted once from the published .pt; never
  unpickled); `rate` does not apply. Needs `scale=paper` (the full CIFAR training set in its
  original order); a `clean_label` column in the file is checked against the data set.

**Metrics.** Clean test top-1 at the last epoch (primary; no epoch is selected on the test set);
over the training samples whose label was corrupted: memorisation (share predicted as their
wrong label; lower is better) and clean recovery (share predicted as their true label); the
share of all training samples predicted as their noisy label. Per-epoch curves of clean test
accuracy, memorisation and clean recovery show early learning followed by memorisation.

**scale=tiny.** MNIST 5k (4000 training images), 12 epochs, batch 128, SGD (momentum 0.9,
Nesterov, weight decay 5e-4), peak lr 0.05, 1 warm-up epoch then linear decay to 0, no
augmentation. The model must be able to memorise, and the default grid must finish in about ten
minutes on 2 CPU cores. `fast_cnn_fc` (registered by this suite): two stride-2 conv-BN-ReLU
layers (16/32 channels) and a flattened 1568 -> 128 -> 10 head, about four times cheaper an epoch
than `small_cnn_fc` (the same head after max-pooled convolutions: the version-1 recipe, with 20
epochs; `model=small_cnn_fc epochs=20` runs it). Measured at sym 0.5, seeds 0-2: cross-entropy
peaks at 0.82-0.85 clean accuracy in epoch 2, then memorises 81-85% of the wrong labels and ends
at 0.60-0.64, while GCE and NCE+RCE end at 0.90-0.93, ELR and MAE at 0.82-0.92. A globally pooled
head (`small_cnn`) does NOT memorise in this budget (cross-entropy keeps 0.93, memorisation ~1%),
so it is not used.

**Default grid.** Every installed loss and augmentation (an augmentation trains with
cross-entropy) x 3 seeds, except: the class-prior corrections `class_balanced`,
`balanced_softmax` and `logit_adjustment`, which are cross-entropy again on class-balanced noisy
labels (a near-uniform prior shifts every logit alike), and the augmentations `sla`, `sla_sd`
(four rotated copies of every batch) and `rankmixup` (extra forward passes), which cost 2-4
cross-entropy runs each. `method=` runs any of them.

**scale=paper.** CIFAR-10 (or `dataset=cifar100`), 120 epochs, batch 128, SGD lr 0.02 momentum
0.9 weight decay 1e-3, lr x0.01 at epochs 40 and 80, random crop + flip: the CIFAR-10 recipe of
ELR (Liu et al., NeurIPS 2020, Sec. 5 and their config_cifar10.json), which trains a CIFAR
ResNet-34; this card uses the CIFAR PreAct ResNet-18 (`preact_resnet18`, the model of DivideMix,
Li et al., ICLR 2020, for the same benchmark); `model=` overrides it.
"""


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="noisy_labels",
            version="2",
            summary="training under label noise (symmetric, asymmetric, instance-dependent, human): clean test top-1 and memorisation"
            f" [default grid: every loss and augmentation but {', '.join(OFF_DEFAULT_GRID)}; run those with method=]",
            ranks=(TRAINING,),
            default_kinds=DEFAULT_KINDS,
            default_entries=default_entries,
            baseline="ce",
            metrics=(
                Metric("clean_top1", True, "top-1 accuracy on the clean test set at the last epoch"),
                Metric("memorisation", False, "share of corrupted training samples predicted as their wrong (noisy) label"),
                Metric("clean_recovery", True, "share of corrupted training samples predicted as their clean label"),
                Metric("noisy_train_fit", False, "share of all training samples predicted as their noisy label"),
            ),
            primary="clean_top1",
            axes=(
                Param("noise", str, "sym", "noise model", choices=NOISE_KINDS),
                Param("rate", float, RATE_DEFAULT, "noise rate in [0, 1) (asym: [0, 0.5]; not used by human)", low=0.0, high=1.0),
                Param("human", str, "none", "CIFAR-N label set for noise=human", choices=("none", *HUMAN_KEYS)),
                Param("noise_file", str, "none", "path of the CIFAR-N label file for noise=human (the published .pt, or .json/.npz/.npy/.csv)"),
            ),
            scales={
                "tiny": Recipe(
                    dataset="mnist5k", model="fast_cnn_fc", epochs=12, batch_size=128, lr=0.05, weight_decay=5e-4, warmup_epochs=1,
                    source="harness tiny recipe (DESIGN.md: measured on 2 CPU cores)",
                ),
                "paper": Recipe(
                    dataset="cifar10", model="preact_resnet18", epochs=120, batch_size=128, lr=0.02, weight_decay=1e-3, nesterov=False,
                    schedule="step", milestones=(40, 80), lr_decay=0.01, crop_flip=True,
                    source="Liu et al., ELR, NeurIPS 2020 (CIFAR-10 recipe; ResNet-34 there, PreAct ResNet-18 here as in DivideMix)",
                ),
            },
            run=run,
            card=CARD,
        )
    )
