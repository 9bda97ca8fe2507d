"""Out-of-distribution suite: test-time adaptation under covariate shift, open-set detection under semantic shift.

One cell = (source model, TTA method, setting). The source model of a (dataset, model, recipe,
seed, loss, augmentation) is trained once and stored as an artifact (`harness.artifacts`), then
reused by every TTA method and setting. Its in-distribution classes are the first 60% of the
dataset's classes (MNIST: digits 0-5); the held-out classes (6-9) are the open-set OOD data.

Covariate shift: the in-distribution test images under 13 corruptions x 5 severities
(`harness.corruptions`, seeded per (corruption, severity): every method sees the same images),
fed to the adapter online in the order of the setting. Semantic shift: the source model's
maximum softmax probability, max logit and energy scores separate in-distribution from held-out
test images (AUROC, FPR at 95% TPR, AUPR-In).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from harness.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_generator, default_table
from harness.engine import Normalizer, predict
from harness.hookspecs import hookimpl
from harness.kinds.tta import AdaptContext, Adapter
from harness.metrics import accuracy, detection_metrics
from harness.params import Param
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite
from harness.training import Trained

VERSION = "1"
ID_FRACTION = 0.6  # the first 60% of the classes are in-distribution (MNIST: 0-5), the rest open-set OOD
TTA_BATCH = 64  # test batch size of every setting except wild_bs1 (SAR, EATA: 64 on ImageNet-C)
CORRUPTION_SEED = 0  # fixed: the corrupted images and the stream order are part of the protocol
SETTINGS = ("episodic", "continual", "gradual", "mixed", "wild_bs1", "wild_label_shift")


# ---------------------------------------------------------------------------------------------
# streams: the order in which corrupted test batches reach the adapter
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    reset: bool  # adapter.reset() before this batch
    domain: torch.Tensor  # [b] index into DOMAINS (corruption, severity)
    index: torch.Tensor  # [b] index into the in-distribution test set
    segment: int  # which visited domain segment (for the stream-order error series)


DOMAINS: tuple[tuple[str, int], ...] = tuple((c, s) for c in CORRUPTIONS for s in SEVERITIES)
DOMAIN_ID = {d: i for i, d in enumerate(DOMAINS)}


def _chunks(n: int, bs: int) -> list[slice]:
    return [slice(i, min(n, i + bs)) for i in range(0, n, bs)]


def build_stream(setting: str, labels: torch.Tensor, *, rounds: int = 1, batch_size: int = TTA_BATCH, seed: int = CORRUPTION_SEED) -> list[Batch]:
    """The batches of a setting over a test set with `labels` (fixed order given `seed`)."""
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    batches: list[Batch] = []
    segment = 0

    def visit(corruption: str, severity: int, reset: bool, order: torch.Tensor = perm, bs: int = batch_size) -> None:
        nonlocal segment
        dom = DOMAIN_ID[(corruption, severity)]
        for j, sl in enumerate(_chunks(n, bs)):
            idx = order[sl]
            batches.append(Batch(reset and j == 0, torch.full((len(idx),), dom), idx, segment))
        segment += 1

    if setting == "episodic":  # reset before every (corruption, severity) domain (Tent's protocol)
        for s in SEVERITIES:
            for c in CORRUPTIONS:
                visit(c, s, reset=True)
    elif setting == "continual":  # CoTTA: all corruptions in sequence, no reset (one stream per severity)
        for s in SEVERITIES:
            first = True
            for _ in range(rounds):
                for c in CORRUPTIONS:
                    visit(c, s, reset=first)
                    first = False
    elif setting == "gradual":  # RMT: severity 1..5..1 within every corruption, one stream, no reset
        first = True
        for _ in range(rounds):
            for c in CORRUPTIONS:
                for s in (1, 2, 3, 4, 5, 4, 3, 2, 1):
                    visit(c, s, reset=first)
                    first = False
    elif setting == "mixed":  # SAR / RMT: every corruption of a severity shuffled into one stream
        for s in SEVERITIES:
            dom = torch.tensor([DOMAIN_ID[(c, s)] for c in CORRUPTIONS]).repeat_interleave(n)
            idx = torch.arange(n).repeat(len(CORRUPTIONS))
            order = torch.randperm(len(idx), generator=g)
            dom, idx = dom[order], idx[order]
            for j, sl in enumerate(_chunks(len(idx), batch_size)):
                batches.append(Batch(j == 0, dom[sl], idx[sl], segment))
            segment += 1
    elif setting == "wild_bs1":  # SAR wild: batch size 1, each corruption at severity 5, reset per domain
        for c in CORRUPTIONS:
            visit(c, 5, reset=True, bs=1)
    elif setting == "wild_label_shift":  # SAR wild: online imbalanced label shift (sorted by class, ratio inf)
        by_class = perm[torch.argsort(labels[perm], stable=True)]
        for c in CORRUPTIONS:
            visit(c, 5, reset=True, order=by_class)
    else:
        raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
    return batches


def run_stream(adapter: Adapter, stream: list[Batch], images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer, device: str) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Feed the stream; return per-domain (errors, counts) and the error of each segment in visit order.

    `images` is uint8 [D, N, C, H, W]: the corrupted test set of every domain."""
    errors = torch.zeros(len(DOMAINS), dtype=torch.float64)
    counts = torch.zeros(len(DOMAINS), dtype=torch.float64)
    seg_err: dict[int, list[float]] = {}
    normalizer = normalizer.to(device)
    for b in stream:
        if b.reset:
            adapter.reset()
        x = normalizer(images[b.domain, b.index].to(device))
        y = labels[b.index]
        wrong = (adapter(x).argmax(1).cpu() != y).double()
        errors.index_add_(0, b.domain, wrong)
        counts.index_add_(0, b.domain, torch.ones_like(wrong))
        e = seg_err.setdefault(b.segment, [0.0, 0.0])
        e[0] += float(wrong.sum())
        e[1] += len(wrong)
    return errors, counts, [w / n for _, (w, n) in sorted(seg_err.items())]


# ---------------------------------------------------------------------------------------------
# data, source model
# ---------------------------------------------------------------------------------------------


def open_set_split(data: Any) -> dict[str, Any]:
    k_in = max(2, round(ID_FRACTION * data.num_classes))
    train_in = data.train_y < k_in
    test_in = data.test_y < k_in
    return {
        "k_in": k_in,
        "train_x": data.train_x[train_in], "train_y": data.train_y[train_in],
        "test_x": data.test_x[test_in], "test_y": data.test_y[test_in],
        "ood_x": data.test_x[~test_in],
    }


def corrupted_images(ctx: RunContext, dataset: str, x: torch.Tensor) -> torch.Tensor:
    """uint8 [D, N, C, H, W]: every domain's corrupted copy of `x`, generated once per process."""
    table = default_table(int(x.shape[1]))
    key = f"ood-corrupted/{dataset}/{table}/{CORRUPTION_SEED}/{len(x)}"
    if key not in ctx.data_memo:
        out = torch.empty((len(DOMAINS), *x.shape), dtype=torch.uint8)
        for i, (c, s) in enumerate(DOMAINS):
            out[i] = corrupt(x, c, s, corruption_generator(CORRUPTION_SEED, c, s), table=table)
        ctx.data_memo[key] = out
    return ctx.data_memo[key]


def source_model(ctx: RunContext, split: dict[str, Any]) -> Trained:
    """Train (or load) the source model of this run's (dataset, model, recipe, seed, training methods)."""
    return ctx.fit(split["train_x"], split["train_y"], num_classes=split["k_in"], artifact="ood-source")


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


class _Unadapted(Adapter):
    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def reset(self) -> None:
        pass


def source_errors(ctx: RunContext, model: torch.nn.Module, aid: str, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
                  stream: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """The unadapted source model's (errors, counts) per domain on `stream`. Its predictions do not
    depend on batch composition or order (eval mode), so each domain is predicted once per source
    model and process, and the stream only decides which domains count how often."""
    key = f"ood-source-errors/{aid}/{len(labels)}"
    if key not in ctx.data_memo:
        wrong = torch.stack([(predict(model, images[d], normalizer=normalizer, device=ctx.device).argmax(1) != labels).double() for d in range(len(DOMAINS))])
        ctx.data_memo[key] = wrong  # [D, N]
    wrong = ctx.data_memo[key]
    errors = torch.zeros(len(DOMAINS), dtype=torch.float64)
    counts = torch.zeros(len(DOMAINS), dtype=torch.float64)
    for b in stream:
        errors.index_add_(0, b.domain, wrong[b.domain, b.index])
        counts.index_add_(0, b.domain, torch.ones(len(b.index), dtype=torch.float64))
    return errors, counts


def _grid_means(errors: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    grid = (errors / counts).view(len(CORRUPTIONS), len(SEVERITIES))  # NaN where a domain was not visited
    s5 = grid[:, SEVERITIES.index(5)]
    err_s5 = float(s5.nanmean()) if not torch.isnan(s5).all() else float("nan")
    err_all = float(grid.mean()) if not torch.isnan(grid).any() else float("nan")
    return grid, err_s5, err_all


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    variant = dict(spec.variant)
    setting, rounds = variant["setting"], variant["rounds"]
    data = ctx.load_dataset(recipe["dataset"])
    split = open_set_split(data)
    source = source_model(ctx, split)
    model, facts, normalizer = source.model, source.facts, source.normalizer

    # semantic shift: the source model on clean in-distribution vs held-out-class test images
    logits_in = source.predict(split["test_x"])
    logits_out = source.predict(split["ood_x"])
    metrics: dict[str, float] = {"clean_acc": accuracy(logits_in, split["test_y"]), **detection_metrics(logits_in, logits_out)}

    # covariate shift: the same stream for the unadapted source model and for the method
    images = corrupted_images(ctx, recipe["dataset"], split["test_x"])
    stream = build_stream(setting, split["test_y"], rounds=rounds)
    src_err, src_cnt = source_errors(ctx, model, facts["artifact_id"], images, split["test_y"], normalizer, stream)
    src_grid, src_s5, src_all = _grid_means(src_err, src_cnt)

    adapt_ctx = AdaptContext(num_classes=split["k_in"], device=ctx.device)
    method = ctx.build("tta", adapt_ctx)
    adapter = method.adapt(model, adapt_ctx) if method is not None else _Unadapted(model)
    t0 = time.perf_counter()
    err, cnt, seg_err = run_stream(adapter, stream, images, split["test_y"], normalizer, ctx.device)
    tta_seconds = time.perf_counter() - t0
    grid, err_s5, err_all = _grid_means(err, cnt)

    metrics.update({
        "err_s5": err_s5, "err_all": err_all, "source_err_s5": src_s5,
        "gain_s5": src_s5 - err_s5, "gain_all": src_all - err_all if math.isfinite(err_all) else float("nan"),
    })
    tta = spec.method("tta")
    info: dict[str, Any] = {
        "artifact_id": facts["artifact_id"], "reused": facts["reused"], "source_train_seconds": facts.get("train_seconds"),
        "tta_seconds": round(tta_seconds, 3), "tta_method": tta.name if tta else "source (no tta method in the entry)",
        "setting": setting, "rounds": rounds, "tta_batch_size": 1 if setting == "wild_bs1" else TTA_BATCH,
        "in_classes": list(range(split["k_in"])), "ood_classes": list(range(split["k_in"], data.num_classes)),
        "n_test_in": len(split["test_y"]), "n_test_ood": len(split["ood_x"]), "n_train": len(split["train_y"]),
        "corruptions": list(CORRUPTIONS), "severities": list(SEVERITIES), "severity_table": default_table(data.in_chans),
        **adapter.facts(),
    }
    return RunOutput(
        metrics=metrics,
        series={
            "err_grid": grid.flatten().tolist(),  # corruption-major (order of info.corruptions), severity 1..5 inner
            "source_err_grid": src_grid.flatten().tolist(),
            "err_s5_per_corruption": grid[:, -1].tolist(),
            "stream_err": seg_err,  # error of each visited domain segment, in stream order
        },
        info=info,
    )


CARD = """\
**Scenario.** Open-set split: the first 60% of the dataset's classes are in-distribution (MNIST:
digits 0-5), the rest are held out as semantic-shift OOD (6-9). The source model is trained on
the in-distribution training images only, once per (dataset, model, recipe, seed, training
methods) and stored as an artifact that every TTA method and setting reuses (`info.artifact_id`,
`info.reused`). An entry without a `tta` method is evaluated without adaptation (`source`).

**Covariate shift.** The in-distribution test images under 13 corruptions x 5 severities
(`harness.corruptions`): gaussian, shot and impulse noise, defocus, motion and zoom blur, fog
(plasma fractal), brightness, contrast, elastic transform, pixelate, JPEG (batched DCT
quantisation approximation) and saturate. Severity tables: Hendrycks & Dietterich 2019
(CIFAR-10-C) for colour images, Mu & Gilmer 2019 (MNIST-C's five-level tables) for grey-scale.
Generation is seeded per (corruption, severity) with a fixed seed, so every method and seed sees
the same images and the same stream order; the run seed changes only the source model.

**Settings** (`setting=`, default `episodic`), test batch 64:
`episodic` reset before each (corruption, severity) domain (Tent); `continual` all 13
corruptions in sequence without reset, one stream per severity (CoTTA); `gradual` one stream,
severity 1-2-3-4-5-4-3-2-1 within every corruption (RMT); `mixed` all corruptions of a
severity shuffled into one stream (SAR/RMT "mixed domains"); `wild_bs1` batch size 1, severity
5, reset per corruption (SAR wild); `wild_label_shift` batch 64 with test images sorted by class
(online imbalanced label shift, ratio infinity, SAR wild), severity 5. `rounds=R` repeats the
continual/gradual sequence R times (lifelong stress test; errors are averaged over rounds,
`series.stream_err` holds each visit). Wild settings evaluate severity 5 only (`err_all` is
then undefined).

**Metrics.** `err_s5` (primary, lower is better): mean top-1 error over the 13 corruptions at
severity 5; `err_all`: mean over all corruptions and severities; `source_err_s5` and
`gain_s5` / `gain_all`: the unadapted source model on the same stream and the method's
improvement over it. Detection of the source model on clean test data (in-distribution =
positive): AUROC, FPR at 95% TPR and AUPR-In for maximum softmax probability, max logit and
energy (logsumexp) scores, with the clean in-distribution accuracy `clean_acc` beside them.
The full error grid is `series.err_grid` (corruption-major, severities 1-5).

**TTA hyper-parameters** are the papers' (see `harness list methods`): Tent Adam 1e-3; EATA and
SAR SGD 2.5e-4 momentum 0.9, E0 = 0.4 ln K (K = in-distribution classes); EATA runs without its
Fisher regulariser (ETA: it needs source data); RMT without its source replay/contrastive terms;
CoTTA Adam 1e-3, EMA 0.999, restoration 0.01, anchor threshold 0.92, 32 augmentations.

**scale=tiny.** MNIST 5k (digits 0-5: 2400 train, 600 in-distribution + 400 OOD test images,
the whole test split), the two-block BN CNN, 15 epochs, batch 128, SGD momentum 0.9 Nesterov,
weight decay 5e-4, peak lr 0.05, 1 warm-up epoch then linear decay. No far-OOD dataset (none
ships offline).

**scale=paper.** CIFAR-10 (classes 0-5 in-distribution), ResNet-32 with the LDAM-DRW recipe
(200 epochs); corruptions generated on the fly with the CIFAR-10-C tables (not the released
CIFAR-10-C files).
"""


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="ood",
            version=VERSION,
            summary="TTA under 13 corruptions x 5 severities (episodic/continual/gradual/mixed/wild) + open-set detection of the source model",
            ranks=("tta", TRAINING),
            baseline="ce+source",  # the unadapted source model
            default_kinds=("tta",),  # losses and augmentations are ranked when named with method=
            metrics=(
                Metric("err_s5", False, "mean error over corruptions at severity 5 (adapted online)"),
                Metric("err_all", False, "mean error over all corruptions and severities"),
                Metric("source_err_s5", False, "the unadapted source model's err_s5 on the same stream"),
                Metric("gain_s5", True, "source_err_s5 - err_s5"),
                Metric("gain_all", True, "source error - error, over all severities"),
                Metric("clean_acc", True, "source model accuracy on clean in-distribution test images"),
                *(Metric(f"auroc_{s}", True, f"AUROC in- vs held-out classes, {s} score") for s in ("msp", "maxlogit", "energy")),
                *(Metric(f"fpr95_{s}", False, f"OOD false-positive rate at 95% in-distribution TPR, {s} score") for s in ("msp", "maxlogit", "energy")),
                *(Metric(f"aupr_{s}", True, f"AUPR with in-distribution positive, {s} score") for s in ("msp", "maxlogit", "energy")),
            ),
            primary="err_s5",
            axes=(
                Param("setting", str, "episodic", "TTA protocol", choices=SETTINGS),
                Param("rounds", int, 1, "repetitions of the continual/gradual sequence", low=1, high=100),
            ),
            scales={
                "tiny": Recipe(dataset="mnist5k", model="small_cnn", epochs=15, batch_size=128, lr=0.05, weight_decay=5e-4, warmup_epochs=1,
                               source="harness tiny recipe (the long_tail suite's)"),
                "paper": Recipe(
                    dataset="cifar10", model="resnet32", epochs=200, batch_size=128, lr=0.1, weight_decay=2e-4, nesterov=False,
                    schedule="step", warmup_epochs=5, milestones=(160, 180), lr_decay=0.01, crop_flip=True,
                    source="Cao et al., LDAM-DRW, NeurIPS 2019 (CIFAR ResNet-32 recipe)",
                ),
            },
            run=run,
            card=CARD,
        )
    )
