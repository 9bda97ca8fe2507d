"""Domain generalisation suite: DomainBed's protocol (Gulrajani & Lopez-Paz, ICLR 2021).

Leave one domain out: train on every other domain of a dataset with domain labels (a
`harness_plugins.domain_data.DomainSplits`: each domain's in split in the train rows, its out
split in the test rows), pick a checkpoint by a model-selection method, and report the accuracy on
the held-out domain's in split at that checkpoint, as DomainBed's `collect_results` does. Every
batch holds one equal-size minibatch per training domain (`DomainBalancedSampler`), so the
methods see DomainBed's `minibatches`.

Model selection (`selection=`), among the checkpoints after every epoch of the run (the same
number for every method; see CARD for what this means next to DomainBed's hyper-parameter search):

- `training_domain` (default): the checkpoint with the best mean accuracy over the training
  domains' out splits (DomainBed's IIDAccuracySelectionMethod);
- `lodo`: leave-one-domain-out validation: for each training domain v a model is trained on the
  other training domains, and the checkpoint (epoch) with the best mean accuracy of those models on
  their left-out domain's in split is chosen (LeaveOneOutSelectionMethod);
- `oracle`: the checkpoint with the best accuracy on the held-out domain's out split.

Only the oracle reads held-out-domain data before the checkpoint is chosen: the other two are
given the training domains' data alone, and the held-out domain is predicted once, at the end.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engine import Normalizer, predict
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.metrics import accuracy
from harness.params import Param
from harness.suite import TRAINING, Metric, Recipe, RunContext, RunOutput, Suite
from harness_plugins.domain_data import DomainBalancedSampler, DomainSplits

VERSION = "1"
SELECTIONS = ("training_domain", "lodo", "oracle")
ALL_DOMAINS = "all"


# ---------------------------------------------------------------------------------------------
# the protocol's data: which rows train, validate and test
# ---------------------------------------------------------------------------------------------


def held_out_domains(value: str, data: DomainSplits) -> list[int]:
    """The domain ids `test_domain=` names: an index into the dataset's domains (DomainBed's
    --test_envs), or `all` (each domain in turn)."""
    names = ", ".join(f"{i} ({name})" for i, name in enumerate(data.domains))
    if value == ALL_DOMAINS:
        return list(range(len(data.domains)))
    if not value.isdigit() or int(value) >= len(data.domains):
        raise HarnessError(f"test_domain={value} is not a domain of {data.name}; valid: {names}, or {ALL_DOMAINS}")
    return [int(value)]


@dataclass(frozen=True)
class DomainSplit:
    """The rows of one leave-one-out split. Training domains are renumbered 0..D-1 in order."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_domain: torch.Tensor  # renumbered
    val: list[tuple[torch.Tensor, torch.Tensor]]  # per training domain: its out split
    val_in: list[tuple[torch.Tensor, torch.Tensor]]  # per training domain: its in split (LODO's validation)
    test_in: tuple[torch.Tensor, torch.Tensor]  # the held-out domain's in split: the reported accuracy
    test_out: tuple[torch.Tensor, torch.Tensor]  # the held-out domain's out split: the oracle's validation
    training_domains: tuple[int, ...]  # original ids


def leave_out(data: DomainSplits, held_out: int, also: tuple[int, ...] = ()) -> DomainSplit:
    """Train on every domain but `held_out` (and `also`, LODO's extra left-out domain)."""
    training = tuple(d for d in range(len(data.domains)) if d != held_out and d not in also)
    keep = torch.isin(data.train_domain, torch.tensor(training))
    renumber = torch.full((len(data.domains),), -1, dtype=torch.int64)
    renumber[list(training)] = torch.arange(len(training))

    def rows(x: torch.Tensor, y: torch.Tensor, d: torch.Tensor, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x[d == domain], y[d == domain]

    return DomainSplit(
        train_x=data.train_x[keep], train_y=data.train_y[keep], train_domain=renumber[data.train_domain[keep]],
        val=[rows(data.test_x, data.test_y, data.test_domain, d) for d in training],
        val_in=[rows(data.train_x, data.train_y, data.train_domain, d) for d in training],
        test_in=rows(data.train_x, data.train_y, data.train_domain, held_out),
        test_out=rows(data.test_x, data.test_y, data.test_domain, held_out),
        training_domains=training,
    )


# ---------------------------------------------------------------------------------------------
# training with checkpoint scores
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoints:
    """Scores a model after every epoch and keeps the weights of the best-scoring epoch (the first
    of equal scores; `keep_epoch` keeps that epoch's instead)."""

    score: Callable[[torch.nn.Module], float]
    keep_epoch: int | None = None  # 1-based
    scores: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        value = self.score(model)
        self.scores.append(value)
        epoch = len(self.scores)
        chosen = epoch == self.keep_epoch if self.keep_epoch is not None else (self.best_state is None or value > self.scores[self.best_epoch - 1])
        if chosen:
            self.best_epoch, self.best_state = epoch, {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"selection_score": value}


def mean_accuracy(parts: list[tuple[torch.Tensor, torch.Tensor]], normalizer: Normalizer, device: str) -> Callable[[torch.nn.Module], float]:
    """The mean over `parts` of the model's accuracy on each (the model's own logits)."""

    def score(model: torch.nn.Module) -> float:
        return statistics.fmean(accuracy(predict(model, x, normalizer=normalizer, device=device), y) for x, y in parts)

    return score


def fit_split(ctx: RunContext, split: DomainSplit, num_classes: int, checkpoints: Checkpoints) -> Any:
    """Train the entry on a split's training domains, domain-balanced batches of the recipe's
    `batch_size` per domain (DomainBed's batch size is per domain), scoring every epoch."""
    recipe = ctx.spec.recipe_dict()
    sampler = DomainBalancedSampler(split.train_domain, int(recipe["batch_size"]))
    recipe = {**recipe, "batch_size": sampler.batch_size}
    return ctx.fit(split.train_x, split.train_y, num_classes=num_classes, domains=split.train_domain, recipe=recipe, normalizer=Normalizer.fit(split.train_x),
                   parts=(sampler,), part_names=("domain-balanced sampler",), evaluate=checkpoints)


@dataclass(frozen=True)
class HeldOutResult:
    domain: int
    acc: float  # held-out in split, selected checkpoint
    last_acc: float  # held-out in split, last epoch
    val_acc: float  # the selection's score at the selected checkpoint
    epoch: int  # the selected epoch (1-based)
    curve: list[float]  # the selection's score per epoch
    facts: dict[str, Any]


def run_held_out(ctx: RunContext, data: DomainSplits, held_out: int, selection: str) -> HeldOutResult:
    split = leave_out(data, held_out)
    normalizer = Normalizer.fit(split.train_x)
    facts: dict[str, Any] = {"training_domains": [data.domains[d] for d in split.training_domains], "train_size": len(split.train_y)}
    if selection == "lodo":
        if len(split.training_domains) < 2:
            raise HarnessError(f"selection=lodo needs two training domains or more; holding out {data.domains[held_out]} of {data.name} leaves one")
        curves = []
        for v in split.training_domains:  # a model without v, scored on v's in split after every epoch
            inner = leave_out(data, held_out, also=(v,))
            inner_checkpoints = Checkpoints(mean_accuracy([split.val_in[split.training_domains.index(v)]], Normalizer.fit(inner.train_x), ctx.device))
            fit_split(ctx, inner, data.num_classes, inner_checkpoints)
            curves.append(inner_checkpoints.scores)
        curve = [statistics.fmean(c[e] for c in curves) for e in range(len(curves[0]))]
        epoch = max(range(len(curve)), key=lambda e: (curve[e], -e)) + 1  # the first best
        checkpoints = Checkpoints(lambda model: float("nan"), keep_epoch=epoch)
        facts["lodo_curves"] = {data.domains[v]: c for v, c in zip(split.training_domains, curves)}
    elif selection == "oracle":
        checkpoints = Checkpoints(mean_accuracy([split.test_out], normalizer, ctx.device))
    else:
        checkpoints = Checkpoints(mean_accuracy(split.val, normalizer, ctx.device))
    trained = fit_split(ctx, split, data.num_classes, checkpoints)
    # the held-out domain is predicted only now: the last epoch's weights, then the selected ones
    test_x, test_y = split.test_in
    last_acc = accuracy(trained.predict(test_x), test_y)
    trained.model.load_state_dict(checkpoints.best_state)
    acc = accuracy(trained.predict(test_x), test_y)
    if selection == "lodo":
        val_acc, scores = curve[checkpoints.best_epoch - 1], curve
    else:
        val_acc, scores = checkpoints.scores[checkpoints.best_epoch - 1], checkpoints.scores
    return HeldOutResult(held_out, acc, last_acc, val_acc, checkpoints.best_epoch, scores, facts)


def run(ctx: RunContext) -> RunOutput:
    spec, recipe = ctx.spec, ctx.spec.recipe_dict()
    variant = dict(spec.variant)
    data = ctx.load_dataset(recipe["dataset"])
    if not isinstance(data, DomainSplits):
        raise HarnessError(f"dataset {recipe['dataset']} has no domain labels; the domain_generalisation suite needs a dataset with domains: "
                           "rmnist, cmnist (offline), pacs, vlcs, office_home, terra_incognita, domainnet (DomainBed folders)")
    selection = variant["selection"]
    results = [run_held_out(ctx, data, d, selection) for d in held_out_domains(variant["test_domain"], data)]
    accs = [r.acc for r in results]
    return RunOutput(
        metrics={
            "acc": statistics.fmean(accs),
            "worst_acc": min(accs),
            "last_acc": statistics.fmean(r.last_acc for r in results),
            "val_acc": statistics.fmean(r.val_acc for r in results),
        },
        series={
            "acc_per_test_domain": accs,
            "last_acc_per_test_domain": [r.last_acc for r in results],
            "selected_epoch_per_test_domain": [float(r.epoch) for r in results],
            "selection_score_per_epoch": [statistics.fmean(r.curve[e] for r in results) for e in range(len(results[0].curve))],
        },
        info={
            "dataset": data.name, "domains": list(data.domains), "test_domains": [data.domains[r.domain] for r in results], "selection": selection,
            "per_domain_batch": int(recipe["batch_size"]), "per_test_domain": {data.domains[r.domain]: {"acc": r.acc, "last_acc": r.last_acc, "val_acc": r.val_acc,
                                                                                                         "selected_epoch": r.epoch, **r.facts} for r in results},
        },
    )


CARD = """\
**Protocol.** DomainBed's (Gulrajani & Lopez-Paz, In Search of Lost Domain Generalization, ICLR
2021), leave one domain out. A dataset with domains (`DomainSplits`) holds each domain's in split
(80%) as train rows and its out split (20%) as test rows, drawn as DomainBed's `train.py` draws
them (`holdout_fraction` 0.2, `misc.split_dataset`, trial seed 0; fixed, so the run seed changes
initialisation and batch order only, where DomainBed's trial seed also redraws the split and the
Colored MNIST noise). The entry trains on the in splits of every domain but the held-out one
(`test_domain=`: an index into the dataset's domains, as DomainBed's `--test_envs`; default 0;
`all` holds out each domain in turn and averages). Every batch is one minibatch of the recipe's
`batch_size` per training domain (DomainBed's batch size is per domain), so `batch.by_domain()`
gives DomainBed's `minibatches`.

**Model selection** (`selection=`). DomainBed picks, among 20 random hyper-parameter draws x their
checkpoints (every 100 steps), by a validation rule; here each entry has one hyper-parameter
setting (its `Param`s: DomainBed's defaults; sweep them with `METHOD.PARAM=a,b` as separate
entries), and the rule picks among its checkpoints after every epoch (the same number for every
method). `training_domain` (default): best mean accuracy over the training domains' out splits.
`lodo`: one more model per training domain v, trained without v; the epoch with the best mean
accuracy of those models on their v's in split is chosen for the main model (D - 1 extra trainings).
`oracle` (**test-domain oracle**: it reads the held-out domain): best accuracy on the held-out
domain's out split. DomainBed's oracle allows one query per hyper-parameter draw at the last
checkpoint (no early stopping); with a single setting that would be the last epoch, so the oracle
here is test-domain early stopping instead, an upper bound of the other two (also reported
without selection as `last_acc`). Only the oracle reads held-out-domain data before the
checkpoint is fixed; the held-out domain is predicted once, at the end.

**Metrics.** `acc` (primary): accuracy on the held-out domain's in split at the selected
checkpoint (DomainBed's reported number); with `test_domain=all` the average over held-out
domains (the Avg column of DomainBed's tables), and `worst_acc` the lowest of them. `last_acc`:
the same at the last epoch (no selection). `val_acc`: the selection's validation accuracy at the
chosen checkpoint. Series: the accuracy and selected epoch per held-out domain, and the
selection's score per epoch.

**Datasets.** `rmnist` (default) and `cmnist` follow DomainBed's `datasets.py` built from MNIST 5k
(5,000 images, train and test pooled as DomainBed pools MNIST's 70,000): Rotated MNIST, 6 domains
0, 15, 30, 45, 60, 75 degrees (PIL bilinear rotation, fill 0), 10 classes, 1 x 28 x 28, ~833 images
a domain; Colored MNIST, domains +90%, +80%, -90% (Arjovsky et al.): label = digit < 5 flipped with
probability 0.25, colour = label flipped with probability 0.1, 0.2, 0.9, the other channel zeroed,
2 x 28 x 28 (DomainBed keeps 28 x 28; Arjovsky et al.'s own code subsamples to 14 x 14), ~1,667
a domain. Paper scale: `pacs` (default), `vlcs`, `office_home`, `terra_incognita`, `domainnet`
from DomainBed's folders (`DOMAIN/CLASS/IMAGE`, resized to 224 x 224) under
`$HARNESS_DOMAINBED_DATA`, else `$HARNESS_CACHE/datasets/domainbed`.

**Methods.** The `dg` kind. Default entries: `erm` (baseline), `irm`, `vrex`, `coral`,
`groupdro`, `fish` and `hgp` (Hessian alignment); when named: `mmd`, `domain_mixup`, `fishr`,
`hutchinson` (ten ERM steps' worth of Hessian probes a step), the update rules `sam` and `udim`
(`method=sam` trains `erm+sam`) and any other training method. Their
hyper-parameters are DomainBed's defaults (`hparams_registry.py`), or the authors' where DomainBed
has none (HGP, Hutchinson, UDIM). DomainBed trains with Adam (lr 1e-3 on MNIST); the engine's
optimiser is the recipe's SGD, so methods that reset Adam where their penalty weight jumps (IRM,
V-REx, Fishr) reset SGD's momentum there.

**scale=tiny.** `rmnist` held out 0 (0 degrees), `fast_cnn_gn` (two stride-2 convolutions with
ReLU and GroupNorm like DomainBed's MNIST network, ~6 k parameters), 16 images per domain and
step (80 on Rotated MNIST, 32 on Colored MNIST), 20 epochs (840 steps on Rotated, 1,680 on
Colored MNIST; DomainBed: 5,000 steps of 64 per domain), SGD lr 0.03 (momentum 0.9, Nesterov, no
weight decay as DomainBed's MNIST), 1 warm-up epoch then linear decay. At lr 0.05 IRM's loss
became nan (penalty weight 1, before its anneal) in 2 of 3 seeds held out at 0 degrees; at 0.03 it
trains there, but still diverges in 3 of 15 runs held out at 15-75 degrees, and needs about 0.01,
where every method learns less. IRM's penalty is not bounded below, and DomainBed's Adam bounds the
step where SGD does not; such runs are stored as diverged and counted on the board. The default grid is
three seeds of the seven default entries, 21 trainings, so that `harness run
suite=domain_generalisation` takes a few minutes on two CPU cores; the evidence board
(docs/evidence/domain_generalisation.md) adds the other methods with `method=`. IRM's and V-REx's anneal
(500 steps) falls inside it; Fishr's (1,500 steps) only on Colored MNIST, so on Rotated MNIST Fishr
trains as ERM at its defaults (`fishr.anneal_iters=` moves it). `model=mnist_cnn` is DomainBed's
network (a GPU's worth of compute).

**scale=paper.** `pacs` with `timm:resnet50` trained from scratch, 32 per domain, 80 epochs
(about DomainBed's 5,000 steps on PACS), SGD lr 0.01. Not DomainBed's paper protocol: DomainBed
fine-tunes an ImageNet-pretrained ResNet-50 with Adam (lr 5e-5) and its own augmentation; the
harness model registry has no pretrained weights. No paper-scale run has been made.
"""


# the default grid: a few minutes on two CPU cores (Fishr trains as ERM on Rotated MNIST at its
# default anneal; MMD and inter-domain Mixup are one `method=` away)
DEFAULT_ENTRIES = ("erm", "irm", "vrex", "coral", "groupdro", "fish", "hgp")


def default_entries(catalog: Any) -> list[str]:
    """The default grid: the installed methods of DEFAULT_ENTRIES."""
    return [name for name in DEFAULT_ENTRIES if name in catalog.methods.names()]


@hookimpl
def harness_register_suites(register):
    register(
        Suite(
            name="domain_generalisation",
            version=VERSION,
            summary="leave-one-domain-out (DomainBed) on Rotated/Colored MNIST or DomainBed's folders; model selection by training-domain, LODO or oracle validation",
            ranks=(TRAINING,),
            default_kinds=("dg",),  # the DomainBed algorithms; update rules (sam, udim) and other training methods when named
            default_entries=default_entries,
            baseline="erm",
            default_loss="erm",
            metrics=(
                Metric("acc", True, "held-out-domain accuracy at the selected checkpoint (mean over held-out domains)"),
                Metric("worst_acc", True, "lowest held-out-domain accuracy (test_domain=all)"),
                Metric("last_acc", True, "held-out-domain accuracy at the last epoch (no selection)"),
                Metric("val_acc", True, "the selection's validation accuracy at the selected checkpoint"),
            ),
            primary="acc",
            axes=(
                Param("test_domain", str, "0", "held-out domain: its index in the dataset's domains (DomainBed's --test_envs), or all"),
                Param("selection", str, "training_domain", "model selection among the epochs' checkpoints (oracle reads the held-out domain)", choices=SELECTIONS),
            ),
            scales={
                "tiny": Recipe(dataset="rmnist", model="fast_cnn_gn", epochs=20, batch_size=16, lr=0.03, weight_decay=0.0, warmup_epochs=1,
                               source="harness tiny recipe (DomainBed's protocol on MNIST 5k; batch size per domain)"),
                "paper": Recipe(dataset="pacs", model="timm:resnet50", epochs=80, batch_size=32, lr=0.01, weight_decay=0.0, warmup_epochs=1,
                                source="DomainBed's PACS budget (batch 32 per domain, ~5,000 steps), trained from scratch with SGD"),
            },
            run=run,
            card=CARD,
        )
    )
