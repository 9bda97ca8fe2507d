"""Machine-unlearning suite: remove a forget set from a trained classifier and compare with retraining.

Protocol (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
ICLR 2024, Sec. 5 and their public code): a held-out 10% of the training split is set aside as a
validation split that no model trains on; the original model is trained on the rest, the forget
set is drawn from it, and the retrained model (the gold standard) is trained from scratch on the
retain set (the rest minus the forget set). Both are trained once per (dataset, model, recipe,
seed, forget set) and stored as artifacts that every method reuses. Each unlearning method
starts from a copy of the original; its learning rate is chosen among 3 candidates on a
validation criterion that never touches the test split (see CARD).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn

from harness.engine import Normalizer, predict
from harness.errors import RunDiverged
from harness.hookspecs import hookimpl
from harness.kinds.unlearning import UnlearnContext
from harness.label_noise import noise_rng, symmetric_noise
from harness.metrics import accuracy
from harness.params import Param
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite

SUITE_VERSION = "2"  # 2: the noisy protocol draws its noise with harness.label_noise (CHANGELOG.md)
PROTOCOLS = ("random10", "random1", "random50", "class", "noisy")
VAL_FRACTION = 0.1  # held out of the training split for lr selection (SalUn's code holds out 10% too)
FORGET_CLASS = 0  # class-wise forgetting removes every training image of this class
NOISE_RATE = 0.3  # corrective unlearning: fraction of the training pool given a wrong label
LR_FACTORS = (1 / 3, 1.0, 3.0)  # the equal 3-point search around each method's declared `lr`
UNLEARN_EPOCHS = {"tiny": 3, "paper": 10}  # capped by the recipe's epochs (epochs=2 -> 2)
METRIC_KEYS = ("ua", "ra", "ta", "mia")


# ---------------------------------------------------------------------------------------------
# data: validation hold-out, forget sets, symmetric label noise
# ---------------------------------------------------------------------------------------------


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, val) indices: a seeded random `fraction` of range(n) is held out as validation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))
    n_val = round(fraction * n)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def forget_mask(protocol: str, y_clean: torch.Tensor, flipped: torch.Tensor, seed: int) -> torch.Tensor:
    """Bool mask over the training pool of the samples to forget under `protocol`."""
    n = len(y_clean)
    if protocol.startswith("random"):
        fraction = int(protocol.removeprefix("random")) / 100
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=torch.Generator().manual_seed(30_000 + seed))[: round(fraction * n)]] = True
        return mask
    if protocol == "class":
        return y_clean == FORGET_CLASS
    if protocol == "noisy":
        return flipped.clone()
    raise ValueError(f"unknown forget protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")


# ---------------------------------------------------------------------------------------------
# metrics (SalUn's definitions)
# ---------------------------------------------------------------------------------------------


def true_class_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(1).gather(1, y[:, None]).squeeze(1)


def mia_efficacy(member: tuple[torch.Tensor, torch.Tensor], nonmember: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor]) -> float:
    """SalUn's MIA-efficacy: fit an attacker on the true-class confidence of members (label 1)
    vs. non-members (label 0) — an RBF SVC with C=3, gamma='auto' as in SalUn's SVC_MIA — and
    return the fraction of `target` (forget) samples it predicts to be non-members.

    Each argument is (logits, labels). Higher = the forget set looks less like training data.
    """
    from sklearn.svm import SVC

    feats = [true_class_confidence(*p).double().numpy().reshape(-1, 1) for p in (member, nonmember, target)]
    x = torch.cat([torch.from_numpy(feats[0]), torch.from_numpy(feats[1])]).numpy()
    labels = [1] * len(feats[0]) + [0] * len(feats[1])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, labels)
    return float(1.0 - clf.predict(feats[2]).mean()) if len(feats[2]) else float("nan")


def average_gap(metrics: dict[str, float], reference: dict[str, float], keys: tuple[str, ...] = METRIC_KEYS) -> float:
    """Mean over `keys` of |metric - reference| (SalUn's 'Avg. Gap' to retraining)."""
    return sum(abs(metrics[k] - reference[k]) for k in keys) / len(keys)


def kl_to_reference(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(p_reference || p_model) = sum_k p_ref,k (log p_ref,k - log p_k)."""
    log_ref = reference_logits.float().log_softmax(1)
    log_p = logits.float().log_softmax(1)
    return float((log_ref.exp() * (log_ref - log_p)).sum(1).mean())


def unlearning_scores(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], heldout: str, mia_members: torch.Tensor) -> dict[str, float]:
    """UA, RA, TA (accuracy on the `heldout` split: test for reporting, val for selection) and
    MIA-efficacy (attacker trained on `mia_members` rows of retain vs. the held-out split)."""
    return {
        "ua": 1.0 - accuracy(logits["forget"], labels["forget"]),
        "ra": accuracy(logits["retain"], labels["retain"]),
        "ta": accuracy(logits[heldout], labels[heldout]),
        "mia": mia_efficacy(
            (logits["retain"][mia_members], labels["retain"][mia_members]), (logits[heldout], labels[heldout]), (logits["forget"], labels["forget"])
        ),
    }


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def _unlearn_epochs(scale: str, recipe: dict[str, Any]) -> int:
    return max(1, min(UNLEARN_EPOCHS.get(scale, UNLEARN_EPOCHS["tiny"]), int(recipe["epochs"])))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    protocol = dict(spec.variant)["forget"]
    seed = spec.seed
    data = ctx.load_dataset(recipe["dataset"])
    k = data.num_classes

    # --- splits: validation hold-out, labels (noisy protocol), forget / retain -----------------
    pool, val = holdout_split(len(data.train_y), VAL_FRACTION, seed)
    x_pool, y_clean = data.train_x[pool], data.train_y[pool]
    if protocol == "noisy":
        y_pool = symmetric_noise(y_clean, k, NOISE_RATE, noise_rng(seed, "unlearning/noise"))
        flipped = y_pool != y_clean  # symmetric noise always moves a chosen label to another class
    else:
        y_pool, flipped = y_clean, torch.zeros(len(y_clean), dtype=torch.bool)
    fmask = forget_mask(protocol, y_clean, flipped, seed)
    if not fmask.any() or fmask.all():
        raise ValueError(f"forget protocol {protocol!r} gives an empty forget or retain set")
    x_val, y_val = data.train_x[val], data.train_y[val]
    x_test, y_test = data.test_x, data.test_y
    if protocol == "class":  # TA and the MIA non-members: the remaining classes only (SalUn)
        keep_t, keep_v = y_test != FORGET_CLASS, y_val != FORGET_CLASS
        x_test, y_test, x_val, y_val = x_test[keep_t], y_test[keep_t], x_val[keep_v], y_val[keep_v]
    splits = {
        "forget": (x_pool[fmask], y_pool[fmask]),
        "retain": (x_pool[~fmask], y_pool[~fmask]),
        "val": (x_val, y_val),
        "test": (x_test, y_test),
    }
    normalizer = Normalizer.fit(x_pool)

    # --- original and retrained models: trained once (keyed by their data, recipe, seed and
    # training methods), stored, reused by every method ----------------------------------------
    def trained(role: str, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
        out = ctx.fit(x, y, num_classes=k, normalizer=normalizer, artifact=f"unlearning-{role}")
        return out.model, out.facts

    original, original_facts = trained("original", x_pool, y_pool)
    retrained, retrain_facts = trained("retrain", *splits["retain"])

    def logits_of(model: nn.Module, heldout: str = "test") -> dict[str, torch.Tensor]:
        """Logits on forget, retain and one held-out split (val for selection, test for reporting)."""
        return {name: predict(model, splits[name][0], normalizer=normalizer, device=ctx.device) for name in ("forget", "retain", heldout)}

    labels = {name: y for name, (_, y) in splits.items()}
    g = torch.Generator().manual_seed(40_000 + seed)
    retain_perm = torch.randperm(len(labels["retain"]), generator=g)
    members = {h: retain_perm[: len(labels[h])] for h in ("val", "test")}  # as many members as non-members (SalUn)

    def scores(all_logits: dict[str, torch.Tensor], heldout: str) -> dict[str, float]:
        return unlearning_scores(all_logits, labels, heldout, members[heldout])

    ref_logits = logits_of(retrained)
    ref_val, ref_test = scores(logits_of(retrained, "val"), "val"), scores(ref_logits, "test")

    # --- the unlearning method, its lr chosen on the validation criterion ----------------------
    ref = spec.method("unlearning")
    name, params = ref.name, ref.hyperparameters
    epochs = _unlearn_epochs(spec.scale, recipe)
    forget_f = (normalizer.to(ctx.device)(splits["forget"][0].to(ctx.device)), splits["forget"][1].to(ctx.device))
    retain_f = (normalizer.to(ctx.device)(splits["retain"][0].to(ctx.device)), splits["retain"][1].to(ctx.device))
    centre = float(params.get("lr", recipe["lr"]))

    def attempt(lr: float) -> tuple[nn.Module, float]:
        uctx = UnlearnContext(num_classes=k, epochs=epochs, lr=lr, batch_size=int(recipe["batch_size"]), device=ctx.device,
                                   original=copy.deepcopy(original), seed=seed)
        unlearner = ctx.build("unlearning", uctx, **({"lr": lr} if "lr" in params else {}))
        if unlearner.is_reference:
            uctx.retrained = retrained
        torch.manual_seed(seed)
        model = copy.deepcopy(original).to(ctx.device)
        _sync(ctx.device)
        t0 = time.perf_counter()
        model = unlearner.unlearn(model, forget_f, retain_f, uctx)
        _sync(ctx.device)
        return model, time.perf_counter() - t0

    probe = ctx.build("unlearning", UnlearnContext(num_classes=k, epochs=epochs, lr=centre, batch_size=int(recipe["batch_size"]), device=ctx.device))
    search = probe.lr_search
    candidates = [centre * f for f in LR_FACTORS] if search else [centre]
    tried: list[dict[str, Any]] = []
    best: tuple[float, nn.Module, float, float] | None = None  # (val_gap, model, seconds, lr)
    for lr in candidates:
        try:
            model, seconds = attempt(lr)
            val_scores = scores(logits_of(model, "val"), "val")
            val_gap = average_gap(val_scores, ref_val)
            if not math.isfinite(val_gap):
                raise RunDiverged("non-finite validation gap")
        except RunDiverged as exc:
            tried.append({"lr": lr, "val_gap": None, "diverged": str(exc)})
            continue
        tried.append({"lr": lr, "val_gap": val_gap, "seconds": seconds, **{f"val_{m}": v for m, v in val_scores.items()}})
        if best is None or val_gap < best[0]:
            best = (val_gap, model, seconds, lr)
    if best is None:
        raise RunDiverged(f"{name}: every learning rate diverged ({', '.join(f'{c:g}' for c in candidates)})")
    val_gap, model, seconds, lr = best

    # --- report on the test split -------------------------------------------------------------
    out_logits = logits_of(model)
    test_scores = scores(out_logits, "test")
    retrain_seconds = float(retrain_facts["train_seconds"])
    metrics = {
        "gap": average_gap(test_scores, ref_test),
        **test_scores,
        "kl": kl_to_reference(ref_logits["forget"], out_logits["forget"]),
        "rte": seconds / retrain_seconds if not probe.is_reference else 1.0,
    }
    orig_scores = scores(logits_of(original), "test")
    return RunOutput(
        metrics=metrics,
        series={"lr_candidates": [t["lr"] for t in tried], "val_gap_per_lr": [t["val_gap"] if t["val_gap"] is not None else float("nan") for t in tried]},
        info={
            "forget": protocol, "forget_size": int(fmask.sum()), "retain_size": int((~fmask).sum()), "val_size": len(labels["val"]),
            "test_size": len(labels["test"]), "forget_class": FORGET_CLASS if protocol == "class" else None,
            "noise_rate": NOISE_RATE if protocol == "noisy" else None, "unlearn_epochs": epochs,
            "lr_selected": lr, "lr_candidates": candidates, "lr_search": tried,
            "selection": "min average |gap| to the retrained model over UA, RA, val accuracy, MIA (retain vs val); no test data",
            "val_gap_selected": val_gap, "unlearn_seconds": seconds, "retrain_seconds": retrain_seconds,
            "original": {**original_facts, **{f"test_{m}": v for m, v in orig_scores.items()}},
            "retrained": {**retrain_facts, **{f"test_{m}": v for m, v in ref_test.items()}},
        },
    )


CARD = """\
**Scenario.** A classifier is trained on a training pool; a *forget set* of it must be removed.
A seeded 10% of the training split is held out as a validation split that no model trains on
(SalUn's code also holds out 10%). Axis `forget`:
- `random10` (default), `random1`, `random50`: a seeded random 10% / 1% / 50% of the pool;
- `class`: class-wise forgetting of every training image of class 0 (fixed, so every seed
  forgets the same class); TA and the MIA non-members then use the other classes only (SalUn);
- `noisy`: corrective unlearning. Symmetric label noise (exactly 30% of the pool, seeded, each
  given a label drawn uniformly from the 9 wrong classes) corrupts the training labels; the
  original is trained on them, the forget set is the known-mislabelled subset (with its wrong
  labels), the retain set the correctly-labelled rest. Success means clean test accuracy (TA)
  recovers toward the retrained model's; `info.original.test_ta` gives the starting point.

**Models.** The original model (trained on the pool) and the retrained model (trained from
scratch on the retain set: the gold standard) use the scale's recipe with cross-entropy, and are
trained once per (dataset, model, recipe, seed, forget set), stored as safetensors artifacts
and reused by every method; `info.original` / `info.retrained` give their artifact ids and
`reused`. Every method starts from a copy of the original. `retrain` is the reference row: it
returns the stored retrained model, so its gap and KL are 0 and its run-time ratio 1.

**Method inputs.** `unlearn(model, forget, retain, ctx)` gets `(x, y)` pairs with `x` the
normalised float images (training pool mean/std) on the device; `ctx.epochs` = 3 at
`scale=tiny` (capped by the recipe's epochs), 10 at `scale=paper`; `ctx.batch_size` = the
recipe's; `ctx.seed` = the run's seed.

**Learning-rate search (equal budget).** Unlearning methods are sensitive to the learning rate,
so each method gets the same 3 candidates, lr/3, lr, 3·lr around the `lr` it declares, and the
candidate with the smallest *validation gap* is kept: the average |difference| to the retrained
model over UA, RA, accuracy on the validation split (instead of TA) and MIA-efficacy with an
attacker trained on retain vs. validation (instead of test). The test split is never used to
select; the selected lr, every candidate and its validation scores are in `info`.

**Metrics** (SalUn's definitions, Fan et al. ICLR 2024, Sec. 5; all fractions in [0, 1]):
- `ua` — unlearning accuracy, 1 − accuracy on the forget set (labels as trained on);
- `ra` — accuracy on the retain set; `ta` — accuracy on the test split;
- `mia` — MIA-efficacy: an RBF SVC (C=3, gamma='auto', SalUn's SVC_MIA) on the true-class
  confidence, fit on retain samples (members; as many as test samples) vs. test samples
  (non-members); the fraction of forget samples it predicts to be non-members;
- `gap` (**primary**, lower is better) — the average |difference| to the retrained model over
  UA, RA, TA and MIA-efficacy (SalUn's "Avg. Gap");
- `kl` (lower is better) — mean over the forget set of KL(p_retrained ‖ p_unlearned);
- `rte` (lower is better) — run time of the unlearning (selected lr) / training time of the
  retrained model.

**scale=tiny.** MNIST 5k (3600-image pool + 400 validation, 1000 test), the two-block BN CNN,
original and retrained models 8 epochs, batch 128, SGD lr 0.05 (momentum 0.9, Nesterov, weight
decay 5e-4, 1 warm-up epoch then linear decay); unlearning 3 epochs, SGD momentum 0.9, weight
decay 5e-4, constant lr from the search.

**scale=paper.** CIFAR-10, ResNet-18 (CIFAR variant), 10% random forgetting (`forget=random10`);
original/retrained models 182 epochs, batch 256, SGD lr 0.1 momentum 0.9 weight decay 5e-4, lr
x0.1 at epochs 91 and 136, random crop + flip; unlearning 10 epochs — the SalUn recipe (Fan et
al., ICLR 2024, Sec. 5 and Appendix; github.com/OPTML-Group/Unlearn-Saliency).
"""


SUITE = Suite(
    name="unlearning",
    version=SUITE_VERSION,
    summary="machine unlearning vs. retraining from scratch: UA, RA, TA, MIA-efficacy, average gap to the retrained model (SalUn protocol)",
    ranks=("unlearning",),
    trains_with=(TRAINING,),  # the original and retrained models train with the entry's training methods
    baseline="retrain",  # the reference row: every method's gap and paired test are against it
    metrics=(
        Metric("gap", False, "average |difference| to the retrained model over UA, RA, TA, MIA-efficacy"),
        Metric("ua", True, "unlearning accuracy: 1 - accuracy on the forget set (compare with retrain's)"),
        Metric("ra", True, "accuracy on the retain set"),
        Metric("ta", True, "accuracy on the test split"),
        Metric("mia", True, "MIA-efficacy: fraction of forget samples a confidence attacker calls non-members (compare with retrain's)"),
        Metric("kl", False, "mean KL(retrained || unlearned) on the forget set"),
        Metric("rte", False, "unlearning run time / retraining time"),
    ),
    primary="gap",
    axes=(Param("forget", str, "random10", "forget set: random10|random1|random50 (% of the pool), class (class 0), noisy (30% mislabelled)", choices=PROTOCOLS),),
    scales={
        "tiny": Recipe(dataset="mnist5k", model="small_cnn", epochs=8, batch_size=128, lr=0.05, weight_decay=5e-4, warmup_epochs=1,
                       source="harness tiny recipe (DESIGN.md: measured on 2 CPU cores)"),
        "paper": Recipe(dataset="cifar10", model="resnet18", epochs=182, batch_size=256, lr=0.1, weight_decay=5e-4, nesterov=False,
                        schedule="step", milestones=(91, 136), lr_decay=0.1, crop_flip=True,
                        source="Fan et al., SalUn, ICLR 2024 (and their code: 182 epochs, lr 0.1, decay at 91/136)"),
    },
    run=run,
    card=CARD,
)


@hookimpl
def harness_register_suites(register):
    register(SUITE)
