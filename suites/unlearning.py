"""Machine-unlearning suite: remove a forget set from a trained classifier and compare with retraining.

Protocol (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
ICLR 2024, Sec. 5 and their public code): a held-out 10% of the training split is set aside as a
validation split that no model trains on; the original model is trained on the rest, the forget
set is drawn from it, and the retrained model (the gold standard) is trained from scratch on the
retain set (the rest minus the forget set). Both are trained once per (dataset, model, recipe,
seed, forget set) and stored as artifacts that every method reuses. Each unlearning method
starts from a copy of the original; its learning rate is chosen among 3 candidates on a
validation criterion that never touches the test split (see CARD).

KLoM (Georgiev et al., "Attribute-to-Delete: Machine Unlearning via Datamodel Matching", ICLR
2025, App. E.1) compares, sample by sample, the distribution of the margin over several retrained
models with its distribution over the method's unlearned models (one per original model of a
different training seed). Further axes hide inputs from the method (`access`), shrink the
training pool so that models memorise it (`pool`), and send deletion requests in sequence to
methods that may own the original model's training (`forget=sequential`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.engine import Normalizer, predict
from harness.errors import HarnessError, RunDiverged
from harness.hookspecs import hookimpl
from harness.kinds.unlearning import UnlearnContext, Unlearning
from harness.label_noise import noise_rng, symmetric_noise
from harness.metrics import accuracy
from harness.params import Param
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite
from harness_plugins.unlearning_extensions import OwnsTraining, reads

# 3: KLoM over several original/retrained models, the parameters-changed metric, axes access, pool
# and klom_models, protocol sequential; the SalUn metrics of the v2 protocols compute as in v2
SUITE_VERSION = "3"
PROTOCOLS = ("random10", "random1", "random50", "class", "noisy", "sequential")
ACCESS = ("full", "unlabeled_forget", "forget_only")
VAL_FRACTION = 0.1  # held out of the training split for lr selection (SalUn's code holds out 10% too)
FORGET_CLASS = 0  # class-wise forgetting removes every training image of this class
NOISE_RATE = 0.3  # corrective unlearning: fraction of the training pool given a wrong label
LR_FACTORS = (1 / 3, 1.0, 3.0)  # the equal 3-point search around each method's declared `lr`
UNLEARN_EPOCHS = {"tiny": 3, "paper": 10}  # capped by the recipe's epochs (epochs=2 -> 2)
METRIC_KEYS = ("ua", "ra", "ta", "mia")
SEQUENTIAL_REQUESTS = 10  # deletion requests of the sequential protocol, one image each
SEQUENTIAL_REQUEST_SIZE = 1
KLOM_BINS, KLOM_EPS, KLOM_CLIP = 20, 1e-5, 100.0  # the reference code's histogram estimator
KLOM_BINNED_MIN_MODELS = 50  # below this many models per side KLoM fits Gaussians (see CARD)
KLOM_MIN_STD = 1e-3  # floor of a fitted margin standard deviation (logit units)
KLOM_PERCENTILE = 95.0  # the paper's summary of a group's per-sample KLoM
KLOM_GROUPS = ("forget", "retain", "val")

Pair = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# data: validation hold-out, pool subsample, forget sets, symmetric label noise
# ---------------------------------------------------------------------------------------------


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, val) indices: a seeded random `fraction` of range(n) is held out as validation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))
    n_val = round(fraction * n)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def pool_subsample(y: torch.Tensor, size: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded class-balanced subsample: size // K images of every class."""
    per_class = size // num_classes
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(20_000 + seed))
    chosen = [perm[y[perm] == c][:per_class] for c in range(num_classes)]
    short = [c for c, idx in enumerate(chosen) if len(idx) < per_class]
    if per_class < 1 or short:
        raise HarnessError(f"pool={size} needs {max(per_class, 1)} images of each of {num_classes} classes; "
                           f"the training pool has fewer of class {short[0] if short else 0}; choose pool=0 (all) or a smaller pool")
    return torch.cat(chosen).sort().values


def sequential_requests(n: int, seed: int) -> list[torch.Tensor]:
    """The deletion requests of `forget=sequential`: disjoint seeded random index sets, in order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(50_000 + seed))
    size = SEQUENTIAL_REQUEST_SIZE
    return [perm[k * size : (k + 1) * size] for k in range(SEQUENTIAL_REQUESTS)]


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
    if protocol == "sequential":  # every request's samples: what is forgotten by the end
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.cat(sequential_requests(n, seed))] = True
        return mask
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


def unlearning_scores(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], heldout: str, mia_members: torch.Tensor,
                      mia_nonmembers: torch.Tensor | None = None) -> dict[str, float]:
    """UA, RA, TA (accuracy on the `heldout` split: test for reporting, val for selection) and
    MIA-efficacy (attacker trained on `mia_members` rows of retain vs. the `mia_nonmembers` rows,
    default all, of the held-out split)."""
    out_rows = slice(None) if mia_nonmembers is None else mia_nonmembers
    return {
        "ua": 1.0 - accuracy(logits["forget"], labels["forget"]),
        "ra": accuracy(logits["retain"], labels["retain"]),
        "ta": accuracy(logits[heldout], labels[heldout]),
        "mia": mia_efficacy(
            (logits["retain"][mia_members], labels["retain"][mia_members]), (logits[heldout][out_rows], labels[heldout][out_rows]),
            (logits["forget"], labels["forget"]),
        ),
    }


def changed_fraction(before: dict[str, torch.Tensor] | None, after: nn.Module) -> float:
    """Fraction of `after`'s parameter entries that differ from `before` (1 when the parameters are
    not the same tensors by name and shape: a different model)."""
    params = {n: p.detach() for n, p in after.named_parameters()}
    total = sum(p.numel() for p in params.values())
    if before is None or before.keys() != params.keys() or any(before[n].shape != p.shape for n, p in params.items()):
        return 1.0
    return sum(int((before[n].to(p.device) != p).sum()) for n, p in params.items()) / max(1, total)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# KLoM (Georgiev et al. 2025, App. E.1): KL divergence of margins, sample by sample
# ---------------------------------------------------------------------------------------------


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - logsumexp_{k != y} z_k per row, clipped to [-100, 100] (the reference code's margin and clip)."""
    logits = logits.float()
    correct = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).logsumexp(1)
    return (correct - others).clamp(-KLOM_CLIP, KLOM_CLIP)


def binned_kl(p_samples: np.ndarray, q_samples: np.ndarray, bins: int = KLOM_BINS, eps: float = KLOM_EPS) -> float:
    """KL(p || q) of two 1-d samples through `bins` equal bins over their pooled range, exactly as
    the KLoM reference code (`compute_binned_KL_div`): np.digitize, so the pooled maximum falls
    past the last bin and is not counted; q's empty bins where p has mass count as `eps`."""
    from scipy.stats import entropy

    lo, hi = min(p_samples.min(), q_samples.min()), max(p_samples.max(), q_samples.max())
    if lo >= hi:
        hi = lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    p_counts = np.bincount(np.digitize(p_samples, edges), minlength=bins + 2)[1 : bins + 1].astype(float)
    q_counts = np.bincount(np.digitize(q_samples, edges), minlength=bins + 2)[1 : bins + 1].astype(float)
    p = p_counts / p_counts.sum() if p_counts.sum() > 0 else p_counts
    q = q_counts / q_counts.sum() if q_counts.sum() > 0 else q_counts
    q = np.where(p > 0, np.maximum(q, eps), q)
    return float(entropy(pk=p, qk=q))


def klom_binned(reference: torch.Tensor, unlearned: torch.Tensor) -> torch.Tensor:
    """Per-sample binned KL(reference margins || unlearned margins); inputs [models, samples]."""
    ref, unl = reference.double().numpy(), unlearned.double().numpy()
    return torch.tensor([binned_kl(ref[:, j], unl[:, j]) for j in range(ref.shape[1])], dtype=torch.float64)


def klom_gaussian(reference: torch.Tensor, unlearned: torch.Tensor, min_std: float = KLOM_MIN_STD) -> torch.Tensor:
    """Per-sample KL(N(m0, s0^2) || N(m1, s1^2)) of Gaussians fitted to each side's margins
    (sample mean, sample std floored at `min_std`): log(s1/s0) + (s0^2 + (m0 - m1)^2) / (2 s1^2) - 1/2."""
    m0, m1 = reference.double().mean(0), unlearned.double().mean(0)
    s0, s1 = reference.double().std(0).clamp_min(min_std), unlearned.double().std(0).clamp_min(min_std)
    return (s1 / s0).log() + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5


def klom(reference: torch.Tensor, unlearned: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(per-sample KLoM, estimator): the paper's histogram with >= KLOM_BINNED_MIN_MODELS models per
    side, else fitted Gaussians (a 20-bin histogram of a handful of models is mostly empty bins)."""
    if min(len(reference), len(unlearned)) >= KLOM_BINNED_MIN_MODELS:
        return klom_binned(reference, unlearned), "binned"
    return klom_gaussian(reference, unlearned), "gaussian"


def klom_summary(values: torch.Tensor) -> tuple[float, float]:
    """(95th percentile, mean) of a group's per-sample KLoM."""
    v = values.double().numpy()
    return float(np.percentile(v, KLOM_PERCENTILE)), float(v.mean())


# ---------------------------------------------------------------------------------------------
# what a method sees
# ---------------------------------------------------------------------------------------------


def check_access(name: str, unlearner: Unlearning, access: str) -> None:
    """Refuse a method that reads what `access` hides (the reference is handed the retrained model)."""
    if access == "full" or unlearner.is_reference:
        return
    forget_labels, retain = reads(unlearner)
    if access == "unlabeled_forget" and forget_labels:
        raise HarnessError(f"{name} reads the forget set's labels, which access=unlabeled_forget hides; run it with access=full, or choose a method "
                           "that declares it does without them (harness_plugins.unlearning_extensions.DataAccess: finetune, l1_sparse, scrub, laf, s3t)")
    if access == "forget_only" and retain:
        raise HarnessError(f"{name} reads the retain set, which access=forget_only hides; run it with access=full, or choose a method that declares "
                           "it does without it (harness_plugins.unlearning_extensions.DataAccess: ga, npo with npo.retain_weight=0, flat, s3t)")


def visible(access: str, forget: Pair, retain: Pair) -> tuple[tuple[torch.Tensor, torch.Tensor | None], Pair | None]:
    """The (forget, retain) a method is handed under `access`: hidden parts are None."""
    if access == "unlabeled_forget":
        return (forget[0], None), retain
    if access == "forget_only":
        return forget, None
    return forget, retain


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def _unlearn_epochs(scale: str, recipe: dict[str, Any]) -> int:
    return max(1, min(UNLEARN_EPOCHS.get(scale, UNLEARN_EPOCHS["tiny"]), int(recipe["epochs"])))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def replica_seed(seed: int, replica: int) -> int:
    """Training seed of replica r of a run's original/retrained models (replica 0: the run's seed)."""
    return seed if replica == 0 else seed + 100_003 * replica


@dataclass
class Attempt:
    """One unlearning of the original(s) at one learning rate."""

    model: nn.Module
    seconds: list[float]  # per deletion request
    params: list[float]  # fraction of parameters changed, per deletion request
    setup_seconds: float = 0.0  # a method that trains its own model: that training


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    variant = dict(spec.variant)
    protocol, access, pool_size, n_models = variant["forget"], variant["access"], int(variant["pool"]), int(variant["klom_models"])
    if n_models == 1:
        raise HarnessError("klom_models=1 cannot estimate a margin distribution; choose klom_models=0 (no KLoM) or 2 or more")
    if protocol == "sequential" and n_models:
        raise HarnessError("forget=sequential measures one sequence of deletions and no KLoM; add klom_models=0")
    seed = spec.seed
    data = ctx.load_dataset(recipe["dataset"])
    k = data.num_classes

    # --- splits: validation hold-out, pool subsample, labels (noisy protocol), forget / retain --
    pool, val = holdout_split(len(data.train_y), VAL_FRACTION, seed)
    full_pool = len(pool)
    if pool_size:
        pool = pool[pool_subsample(data.train_y[pool], pool_size, k, seed)]
    factor = full_pool / len(pool)  # a smaller pool trains (and unlearns) for as many SGD steps as the full one
    train_recipe = {**recipe, "epochs": max(1, round(int(recipe["epochs"]) * factor))}
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
    # training methods), stored, reused by every method; replicas r > 0 (other training seeds)
    # for KLoM: n originals, and 2n retrained models (n to compare with, n for the reference) ----
    def trained(role: str, x: torch.Tensor, y: torch.Tensor, replica: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        out = ctx.fit(x, y, num_classes=k, normalizer=normalizer, recipe=train_recipe, seed=replica_seed(seed, replica),
                      artifact=f"unlearning-{role}", artifact_key={"replica": replica})
        return out.model, out.facts

    original, original_facts = trained("original", x_pool, y_pool)
    retrained, retrain_facts = trained("retrain", *splits["retain"])

    def logits_of(model: nn.Module, heldout: str = "test", names: tuple[str, ...] = ("forget", "retain")) -> dict[str, torch.Tensor]:
        """Logits on forget, retain and one held-out split (val for selection, test for reporting)."""
        return {name: predict(model, splits[name][0], normalizer=normalizer, device=ctx.device) for name in (*names, heldout)}

    labels = {name: y for name, (_, y) in splits.items()}
    g = torch.Generator().manual_seed(40_000 + seed)
    retain_perm = torch.randperm(len(labels["retain"]), generator=g)
    # as many members as non-members (SalUn): a retain set smaller than the held-out split (pool=N)
    # gets as many held-out samples, drawn at random
    members = {h: retain_perm[: len(labels[h])] for h in ("val", "test")}
    nonmembers: dict[str, torch.Tensor | None] = {h: None for h in ("val", "test")}
    for h in ("val", "test"):
        if len(labels["retain"]) < len(labels[h]):
            nonmembers[h] = torch.randperm(len(labels[h]), generator=g)[: len(labels["retain"])]

    def scores(all_logits: dict[str, torch.Tensor], heldout: str) -> dict[str, float]:
        return unlearning_scores(all_logits, labels, heldout, members[heldout], nonmembers[heldout])

    ref_logits = logits_of(retrained)
    ref_val, ref_test = scores(logits_of(retrained, "val"), "val"), scores(ref_logits, "test")

    # --- the unlearning method: what it sees, its lr chosen on the validation criterion ---------
    ref = spec.method("unlearning")
    name, params = ref.name, ref.hyperparameters
    epochs = max(1, round(_unlearn_epochs(spec.scale, recipe) * factor))
    batch_size = int(recipe["batch_size"])
    norm = normalizer.to(ctx.device)

    def on_device(x: torch.Tensor, y: torch.Tensor) -> Pair:
        return norm(x.to(ctx.device)), y.to(ctx.device)

    pool_f = on_device(x_pool, y_pool)
    centre = float(params.get("lr", recipe["lr"]))

    def context(lr: float, start: nn.Module, replica_seed_: int) -> UnlearnContext:
        return UnlearnContext(num_classes=k, epochs=epochs, lr=lr, batch_size=batch_size, device=ctx.device, original=copy.deepcopy(start), seed=replica_seed_)

    def build(uctx: UnlearnContext, lr: float) -> Unlearning:
        return ctx.build("unlearning", uctx, **({"lr": lr} if "lr" in params else {}))

    probe = ctx.build("unlearning", UnlearnContext(num_classes=k, epochs=epochs, lr=centre, batch_size=batch_size, device=ctx.device))
    check_access(name, probe, access)
    owns_training = isinstance(probe, OwnsTraining)

    def start_model(unlearner: Unlearning, uctx: UnlearnContext, start: nn.Module) -> tuple[nn.Module, float]:
        """The model the first request is served from: a copy of the original, or the model a
        method that owns training trains on the pool (and how long that took)."""
        torch.manual_seed(uctx.seed)
        if not isinstance(unlearner, OwnsTraining):
            return copy.deepcopy(start).to(ctx.device), 0.0
        _sync(ctx.device)
        t0 = time.perf_counter()
        model = unlearner.train(pool_f, uctx)
        _sync(ctx.device)
        return model, time.perf_counter() - t0

    def serve(unlearner: Unlearning, model: nn.Module, forget: Pair, retain: Pair, uctx: UnlearnContext) -> tuple[nn.Module, float, float]:
        """One deletion request: (model after it, seconds, fraction of parameters changed)."""
        before = snapshot(model)
        f_seen, r_seen = visible(access, on_device(*forget), on_device(*retain))
        _sync(ctx.device)
        t0 = time.perf_counter()
        out = unlearner.unlearn(model, f_seen, r_seen, uctx)
        _sync(ctx.device)
        return out, time.perf_counter() - t0, changed_fraction(before, out)

    common = dict(ctx=ctx, protocol=protocol, splits=splits, scores=scores, logits_of=logits_of, labels=labels, original=original,
                  retrained=retrained, ref_logits=ref_logits, ref_val=ref_val, ref_test=ref_test, name=name, centre=centre,
                  probe=probe, owns_training=owns_training, context=context, build=build, start_model=start_model, serve=serve)
    if protocol == "sequential":
        metrics, series, extra = _run_sequential(**common, pool_x=x_pool, pool_y=y_pool, seed=seed, retrain_seconds=float(retrain_facts["train_seconds"]))
    else:
        metrics, series, extra = _run_single(**common, pool=(x_pool, y_pool), seed=seed, n_models=n_models, trained=trained,
                                             retrain_seconds=float(retrain_facts["train_seconds"]))
    orig_scores = scores(logits_of(original), "test")
    return RunOutput(
        metrics=metrics,
        series=series,
        info={
            "forget": protocol, "access": access, "forget_size": int(fmask.sum()), "retain_size": int((~fmask).sum()), "pool_size": len(pool),
            "val_size": len(labels["val"]), "test_size": len(labels["test"]), "forget_class": FORGET_CLASS if protocol == "class" else None,
            "noise_rate": NOISE_RATE if protocol == "noisy" else None, "train_epochs": train_recipe["epochs"], "unlearn_epochs": epochs,
            "owns_training": owns_training,
            **extra,
            "selection": "min average |gap| to the retrained model over UA, RA, val accuracy, MIA (retain vs val); no test data",
            "original": {**original_facts, **{f"test_{m}": v for m, v in orig_scores.items()}},
            "retrained": {**retrain_facts, **{f"test_{m}": v for m, v in ref_test.items()}},
        },
    )


def _select_lr(name: str, probe: Unlearning, centre: float, attempt: Callable[[float], Attempt],
               val_scores: Callable[[nn.Module], dict[str, float]], ref_val: dict[str, float]) -> tuple[Attempt, float, float, list[float], list[dict[str, Any]]]:
    """Run every lr candidate; keep the one with the smallest validation gap to the retrained model."""
    candidates = [centre * f for f in LR_FACTORS] if probe.lr_search else [centre]
    tried: list[dict[str, Any]] = []
    best: tuple[float, Attempt, float] | None = None
    for lr in candidates:
        try:
            result = attempt(lr)
            scores = val_scores(result.model)
            val_gap = average_gap(scores, ref_val)
            if not math.isfinite(val_gap):
                raise RunDiverged("non-finite validation gap")
        except RunDiverged as exc:
            tried.append({"lr": lr, "val_gap": None, "diverged": str(exc)})
            continue
        tried.append({"lr": lr, "val_gap": val_gap, "seconds": sum(result.seconds), **{f"val_{m}": v for m, v in scores.items()}})
        if best is None or val_gap < best[0]:
            best = (val_gap, result, lr)
    if best is None:
        raise RunDiverged(f"{name}: every learning rate diverged ({', '.join(f'{c:g}' for c in candidates)})")
    return best[1], best[2], best[0], candidates, tried


def _run_single(*, ctx: RunContext, protocol: str, splits: dict[str, Pair], scores, logits_of, labels, original, retrained, ref_logits,
                ref_val, ref_test, name, centre, probe, owns_training, context, build, start_model, serve, pool: Pair, seed: int,
                n_models: int, trained, retrain_seconds: float) -> tuple[dict[str, float], dict[str, list[float]], dict[str, Any]]:
    """One forget request; KLoM over `n_models` originals unlearned with the selected lr."""

    def attempt(lr: float, start: nn.Module = original, replica: int = 0) -> Attempt:
        uctx = context(lr, start, replica_seed(seed, replica))
        unlearner = build(uctx, lr)
        if unlearner.is_reference:
            uctx.retrained = retrained
        model, setup = start_model(unlearner, uctx, start)
        model, seconds, changed = serve(unlearner, model, splits["forget"], splits["retain"], uctx)
        return Attempt(model, [seconds], [changed], setup)

    best, lr, val_gap, candidates, tried = _select_lr(name, probe, centre, attempt, lambda m: scores(logits_of(m, "val"), "val"), ref_val)
    model = best.model

    out_logits = logits_of(model)
    test_scores = scores(out_logits, "test")
    metrics = {
        "gap": average_gap(test_scores, ref_test),
        **test_scores,
        "kl": kl_to_reference(ref_logits["forget"], out_logits["forget"]),
        "rte": best.seconds[0] / retrain_seconds if not probe.is_reference else 1.0,
        "params": best.params[0],
    }
    extra: dict[str, Any] = {
        "lr_selected": lr, "lr_candidates": candidates, "lr_search": tried, "val_gap_selected": val_gap,
        "unlearn_seconds": best.seconds[0], "setup_seconds": best.setup_seconds, "retrain_seconds": retrain_seconds,
    }
    if n_models:
        # KLoM: margins of n retrained models (replicas n..2n-1) vs. the method's n unlearned models
        # (replica r < n: the original of seed r, unlearned with the selected lr and seed r). The
        # reference's unlearned models are the retrained replicas 0..n-1, so its KLoM is the
        # estimator's noise floor; no model on either side shares a training seed with the other
        originals = [original] + [trained("original", *pool, replica=r)[0] for r in range(1, n_models)]
        oracles = [retrained] + [trained("retrain", *splits["retain"], replica=r)[0] for r in range(1, 2 * n_models)]
        if probe.is_reference:
            unlearned = oracles[:n_models]
        else:
            unlearned = [model] + [attempt(lr, originals[r], r).model for r in range(1, n_models)]
        groups = {g: splits[g] for g in KLOM_GROUPS}

        def group_margins(models: list[nn.Module]) -> dict[str, torch.Tensor]:
            all_logits = [logits_of(m, "val") for m in models]
            return {g: torch.stack([margins(lg[g], groups[g][1]) for lg in all_logits]) for g in KLOM_GROUPS}

        ref_m, unl_m, orig_m = group_margins(oracles[n_models:]), group_margins(unlearned), group_margins(originals)
        estimator = ""
        for g in KLOM_GROUPS:
            values, estimator = klom(ref_m[g], unl_m[g])
            metrics[f"klom_{g}"], extra[f"klom_{g}_mean"] = klom_summary(values)
            extra[f"klom_original_{g}"] = klom_summary(klom(ref_m[g], orig_m[g])[0])[0]
        extra.update(klom_models=n_models, klom_estimator=estimator)
    series = {"lr_candidates": [t["lr"] for t in tried], "val_gap_per_lr": [t["val_gap"] if t["val_gap"] is not None else float("nan") for t in tried]}
    return metrics, series, extra


def _run_sequential(*, ctx: RunContext, protocol: str, splits: dict[str, Pair], scores, logits_of, labels, original, retrained, ref_logits,
                    ref_val, ref_test, name, centre, probe, owns_training, context, build, start_model, serve, pool_x: torch.Tensor,
                    pool_y: torch.Tensor, seed: int, retrain_seconds: float) -> tuple[dict[str, float], dict[str, list[float]], dict[str, Any]]:
    """Deletion requests one after another; the method serves each from the model it returned last."""
    requests = sequential_requests(len(pool_y), seed)
    deleted = torch.zeros(len(pool_y), dtype=torch.bool)
    steps: list[tuple[Pair, Pair]] = []
    for request in requests:
        deleted[request] = True
        steps.append(((pool_x[request], pool_y[request]), (pool_x[~deleted], pool_y[~deleted])))

    def attempt(lr: float) -> Attempt:
        uctx = context(lr, original, seed)
        unlearner = build(uctx, lr)
        if unlearner.is_reference:
            uctx.retrained = retrained  # the gold standard after the last request; it retrains after every one
        model, setup = start_model(unlearner, uctx, original)
        seconds, changed = [], []
        for forget, retain in steps:
            model, s, c = serve(unlearner, model, forget, retain, uctx)
            seconds.append(s)
            changed.append(c)
        if unlearner.is_reference:  # it retrains from scratch after every request
            seconds, changed = [retrain_seconds] * len(steps), [1.0] * len(steps)
        return Attempt(model, seconds, changed, setup)

    best, lr, val_gap, candidates, tried = _select_lr(name, probe, centre, attempt, lambda m: scores(logits_of(m, "val"), "val"), ref_val)
    out_logits = logits_of(best.model)
    test_scores = scores(out_logits, "test")
    mean_seconds = sum(best.seconds) / len(best.seconds)
    metrics = {
        "gap": average_gap(test_scores, ref_test),
        **test_scores,
        "kl": kl_to_reference(ref_logits["forget"], out_logits["forget"]),
        "rte": mean_seconds / retrain_seconds,
        "params": sum(best.params) / len(best.params),
    }
    extra = {
        "lr_selected": lr, "lr_candidates": candidates, "lr_search": tried, "val_gap_selected": val_gap,
        "requests": len(steps), "request_size": SEQUENTIAL_REQUEST_SIZE, "unlearn_seconds": sum(best.seconds),
        "setup_seconds": best.setup_seconds, "retrain_seconds": retrain_seconds,
    }
    series = {"seconds_per_request": best.seconds, "params_per_request": best.params,
              "lr_candidates": [t["lr"] for t in tried], "val_gap_per_lr": [t["val_gap"] if t["val_gap"] is not None else float("nan") for t in tried]}
    return metrics, series, extra


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
  recovers toward the retrained model's; `info.original.test_ta` gives the starting point;
- `sequential`: 10 deletion requests of one seeded random pool image each arrive in order; the
  method serves each from the model it returned for the previous one (forget = that request,
  retain = the pool minus every request so far). Metrics compare the final model with the model
  retrained without all 10 images; `rte` and `params` are means per request, and the series
  `seconds_per_request` / `params_per_request` give each request's cost. No KLoM
  (`klom_models=0`).

**Axis `pool`** (default 0 = the whole pool): a seeded class-balanced subsample of that many pool
images (pool/10 per class). Models then train for epochs x (full pool / pool) epochs and unlearn
for 3 x (full pool / pool), so every model takes as many SGD steps as on the full pool, and the
original memorises its few images. Measured (seeds 0-2, docs/evidence/unlearning.md): with
`pool=200 forget=random50` (100 forget images, 144 training epochs) the original is right on
every forget image (UA 0.00, MIA-efficacy 0.00-0.01) where the retrained model is wrong on
0.15-0.26 of them (MIA-efficacy 0.55-0.67), so doing nothing has an average gap of 0.19-0.24
and random forgetting ranks methods. With `pool=500 forget=random10` the difference is small
(seed 0: UA 0.00 vs 0.04, MIA 0.00 vs 0.16, average gap 0.05); on the full MNIST pool the two
barely differ (retrained UA ~0.05 against the original's ~0.03), so random forgetting cannot
rank methods there.

**Axis `access`** (what the method is handed): `full` (default); `unlabeled_forget`: the forget
set's labels are hidden (`forget = (x, None)`), the label-agnostic setting of LAF; `forget_only`:
the retain set is hidden (`retain = None`), FLAT's setting. A method runs under a restricted
access only if it declares that it does without the hidden part
(`harness_plugins.unlearning_extensions.DataAccess`); otherwise its run fails before unlearning,
naming the method and the hidden input. The metrics use every label, as always.

**Models.** The original model (trained on the pool) and the retrained model (trained from
scratch on the retain set: the gold standard) use the scale's recipe with cross-entropy, and are
trained once per (dataset, model, recipe, seed, forget set) and stored as safetensors artifacts
and reused by every method; `info.original` / `info.retrained` give their artifact ids and
`reused`. Every method starts from a copy of the original, except a method that owns the
original's training (`OwnsTraining`, e.g. `s3t`): it trains its own model on the pool first
(`info.setup_seconds`) and then serves the deletion requests. `retrain` is the reference row: it
returns the stored retrained model, so its gap and KL are 0 and its run-time ratio 1.

**Method inputs.** `unlearn(model, forget, retain, ctx)` gets `(x, y)` pairs with `x` the
normalised float images (training pool mean/std) on the device; `ctx.epochs` = 3 at
`scale=tiny` (capped by the recipe's epochs; scaled with `pool`), 10 at `scale=paper`;
`ctx.batch_size` = the recipe's; `ctx.seed` = the run's seed (replica r: its own seed).

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
  (non-members; with a retain set smaller than the test split, as many random test samples as
  retain samples); the fraction of forget samples it predicts to be non-members;
- `gap` (**primary**, lower is better) — the average |difference| to the retrained model over
  UA, RA, TA and MIA-efficacy (SalUn's "Avg. Gap");
- `kl` (lower is better) — mean over the forget set of KL(p_retrained ‖ p_unlearned);
- `klom_forget`, `klom_retain`, `klom_val` (lower is better) — KLoM (Georgiev et al., ICLR 2025,
  App. E.1): for each sample, the KL divergence KL(margins of retrained models ‖ margins of
  unlearned models), margin = z_y − logsumexp of the other logits (clipped to ±100); reported as
  the 95th percentile over the forget, retain and validation samples, as the paper does (means
  in `info`). Per run, `klom_models` = n (default 3, as on the evidence board, which keeps the default grid
  within minutes on two CPU cores; more models estimate the distributions better) originals and 2n retrained models are
  trained (replica r with seed s + 100003·r; replica 0 is the run's own pair); the method, at its
  selected lr, unlearns each original r < n with that replica's seed; the retrained replicas
  n..2n-1 are the reference distribution, so no model on either side shares a training seed
  with the other. `retrain`'s unlearned models are the retrained replicas 0..n-1, so its KLoM is
  the estimator's noise floor at that n, not 0; `info.klom_original_*` gives the
  untouched originals' KLoM (doing nothing). Estimator: the reference code's 20-bin histogram
  (bins over the pooled range, empty bins of the unlearned side floored at 1e-5) when both sides
  have ≥ 50 models (the paper uses 100); below that a histogram of a few models is mostly empty
  bins, so each side's margins are fitted by a Gaussian (sample mean, sample std ≥ 1e-3) and the
  closed-form KL of the two Gaussians is used (`info.klom_estimator`). `klom_models=0` skips it;
- `rte` (lower is better) — run time of the unlearning (selected lr; per request for
  `sequential`) / training time of the retrained model; not measured on a quiet machine;
- `params` (lower is better) — fraction of the model's parameter entries that the unlearning
  changed (1 for `retrain`, which replaces the model; per request for `sequential`).

**scale=tiny.** MNIST 5k (3600-image pool + 400 validation, 1000 test), the two-block BN CNN,
original and retrained models 8 epochs, batch 128, SGD lr 0.05 (momentum 0.9, Nesterov, weight
decay 5e-4, 1 warm-up epoch then linear decay); unlearning 3 epochs, SGD momentum 0.9, weight
decay 5e-4, constant lr from the search.

**scale=paper.** CIFAR-10, ResNet-18 (CIFAR variant), 10% random forgetting (`forget=random10`);
original/retrained models 182 epochs, batch 256, SGD lr 0.1 momentum 0.9 weight decay 5e-4, lr
x0.1 at epochs 91 and 136, random crop + flip; unlearning 10 epochs — the SalUn recipe (Fan et
al., ICLR 2024, Sec. 5 and Appendix; github.com/OPTML-Group/Unlearn-Saliency). KLoM as in the
paper needs `klom_models=100` (300 ResNet-18 trainings per seed).
"""


# The default grid: the methods of the full-access protocol. `laf`, `flat` and `s3t` are built for
# the protocols of their papers (access=unlabeled_forget, access=forget_only, forget=sequential)
# and, like any method, run when named.
DEFAULT_ENTRIES = ("retrain", "finetune", "ga", "rl", "l1_sparse", "salun", "npo", "scrub", "dmm")


def default_entries(catalog: Any) -> list[str]:
    """The default grid: the installed methods of DEFAULT_ENTRIES."""
    return [name for name in DEFAULT_ENTRIES if name in catalog.methods.names()]


SUITE = Suite(
    name="unlearning",
    version=SUITE_VERSION,
    summary="machine unlearning vs. retraining from scratch: UA, RA, TA, MIA-efficacy, average gap to the retrained model (SalUn protocol), KLoM",
    ranks=("unlearning",),
    trains_with=(TRAINING,),  # the original and retrained models train with the entry's training methods
    default_entries=default_entries,
    baseline="retrain",  # the reference row: every method's gap and paired test are against it
    metrics=(
        Metric("gap", False, "average |difference| to the retrained model over UA, RA, TA, MIA-efficacy"),
        Metric("ua", True, "unlearning accuracy: 1 - accuracy on the forget set (compare with retrain's)"),
        Metric("ra", True, "accuracy on the retain set"),
        Metric("ta", True, "accuracy on the test split"),
        Metric("mia", True, "MIA-efficacy: fraction of forget samples a confidence attacker calls non-members (compare with retrain's)"),
        Metric("kl", False, "mean KL(retrained || unlearned) on the forget set"),
        Metric("klom_forget", False, "KLoM, 95th percentile over the forget set: KL(margins of retrained models || of unlearned models)"),
        Metric("klom_retain", False, "KLoM, 95th percentile over the retain set"),
        Metric("klom_val", False, "KLoM, 95th percentile over the validation split"),
        Metric("rte", False, "unlearning run time / retraining time (per request for forget=sequential)"),
        Metric("params", False, "fraction of the model's parameters the unlearning changed (per request for forget=sequential)"),
    ),
    primary="gap",
    axes=(
        Param("forget", str, "random10", "forget set: random10|random1|random50 (% of the pool), class (class 0), noisy (30% mislabelled), "
              "sequential (10 single-image requests in order)", choices=PROTOCOLS),
        Param("access", str, "full", "what the method is handed: full, unlabeled_forget (forget labels hidden), forget_only (retain set hidden)",
              choices=ACCESS),
        Param("pool", int, 0, "train on a class-balanced subsample of this many pool images (0 = the whole pool), for as many SGD steps", low=0),
        Param("klom_models", int, 3, "originals and retrained models per side for KLoM (0 = no KLoM)", low=0),
    ),
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
