"""Suites: versioned protocol cards (data scenario, shift, recipe, metrics) and their run function.

A suite is data plus one function. The card fields say what is measured and how; `run(ctx)`
trains and evaluates one cell of the grid and returns its metrics and series. Anything that
changes results bumps `version`, which is part of every run's identity, so results of
different protocol versions are never mixed.

The suite toolkit is `RunContext`: a suite writes the protocol (data, splits, what is measured)
and asks it to `fit` a classifier the way the spec says (its training methods, recipe and seed,
through the one engine; models trained once are asked for by role and keyed from the spec), to
`build` the spec's method of a kind it calls itself, and to load datasets once per process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.params import Param
from harness.reported import Reported

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.catalog import Catalog
    from harness.engine import Normalizer
    from harness.method import MethodRef
    from harness.seams import Role
    from harness.spec import RunSpec
    from harness.training import Trained

TRAINING = "training"  # in Suite.ranks / trains_with: every kind whose methods take part in training


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    doc: str


@dataclass(frozen=True)
class Recipe:
    """The training recipe of one scale. Fields in `OVERRIDABLE` may be changed from the CLI;
    a changed recipe is a different run identity and a separate leaderboard."""

    dataset: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "onecycle"  # onecycle: linear warm-up then linear decay to 0; step: x lr_decay at milestones
    warmup_epochs: int = 0
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    crop_flip: bool = False  # standard CIFAR augmentation: 4-pixel-padded random crop + horizontal flip
    source: str = ""  # where the recipe comes from (paper, section)

    OVERRIDABLE = ("dataset", "model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        out.pop("source")
        return out

    def override_params(self) -> dict[str, Param]:
        """The recipe keys a command line may change, typed and bounded, with this recipe's values as defaults."""
        types = {"dataset": str, "model": str, "epochs": int, "batch_size": int, "lr": float, "momentum": float, "weight_decay": float, "warmup_epochs": int}
        lows = {"epochs": 1, "batch_size": 1, "lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0}
        highs = {"momentum": 0.999, "epochs": 100_000, "batch_size": 1_000_000, "lr": 100.0, "weight_decay": 1.0}
        return {k: Param(k, t, getattr(self, k), low=lows.get(k), high=highs.get(k)) for k, t in types.items()}


@dataclass
class RunContext:
    """What a suite's `run` gets: the spec, the catalog to resolve names, where to cache, and
    `report_epoch(epoch, epochs, train_loss)` to feed progress displays."""

    spec: RunSpec
    catalog: Catalog
    cache_dir: Path
    device: str
    report_epoch: Callable[[int, int, float], None] = lambda epoch, epochs, loss: None
    data_memo: dict[str, Any] = field(default_factory=dict)  # shared across the runs of one process
    compile_model: bool = False  # run the training forward pass through torch.compile (compile=true)

    def load_dataset(self, name: str) -> Any:
        """The dataset's DataSplits, loaded once per process."""
        if name not in self.data_memo:
            from harness.data import LoadOptions

            self.data_memo[name] = self.catalog.dataset(name).load(LoadOptions(cache_dir=self.cache_dir / "datasets"))
        return self.data_memo[name]

    def build(self, kind: str, method_ctx: Any, **overrides: Any) -> Any | None:
        """Build the spec's method of `kind` with its resolved hyper-parameters, `overrides` on
        top (e.g. a searched learning rate); None if the entry has no method of that kind."""
        ref = self.spec.method(kind)
        if ref is None:
            return None
        return self.catalog.methods.get(ref.name).build(method_ctx, **{**ref.hyperparameters, **overrides})

    def training_methods(self) -> tuple[MethodRef, ...]:
        """The spec's methods whose kinds train (losses, augmentations, optimisers, ...), in entry order."""
        return tuple(m for m in self.spec.methods if self.catalog.kinds.get(m.kind).trains)

    def new_model(self, *, num_classes: int, in_chans: int, img_size: int, methods: tuple[MethodRef, ...] | None = None, seed: int | None = None,
                  model_name: str | None = None, class_counts: list[int] | tuple[int, ...] | None = None, dataset_size: int = 0) -> nn.Module:
        """A freshly initialised model (after `torch.manual_seed(seed)`, default the spec's) of the
        recipe's architecture, shaped by the spec's training methods as `fit` would shape it: for
        protocols that train one model in several calls (`fit(..., model=...)`) or merge weights."""
        from harness.training import new_model

        return new_model(self, num_classes=num_classes, in_chans=in_chans, img_size=img_size, methods=methods, seed=seed, model_name=model_name,
                         class_counts=class_counts, dataset_size=dataset_size)

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        num_classes: int,
        class_counts: list[int] | tuple[int, ...] | None = None,
        domains: torch.Tensor | None = None,
        methods: tuple[MethodRef, ...] | None = None,
        recipe: dict[str, Any] | None = None,
        seed: int | None = None,
        model_name: str | None = None,
        model: nn.Module | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        normalizer: Normalizer | None = None,
        parts: tuple[Role, ...] = (),
        part_names: tuple[str, ...] = (),
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        on_step: Callable[[int], None] | None = None,
        artifact: str | None = None,
        artifact_key: dict[str, Any] | None = None,
    ) -> Trained:
        """Train a classifier on uint8 images `x` [N, C, H, W] and int64 labels `y`.

        By default it trains a fresh model of the recipe's architecture (initialised after
        `torch.manual_seed(seed)`) with the spec's training methods, recipe and seed, through the
        one engine, reporting progress; returns a `Trained` (model, normaliser, `predict(x)`
        through the entry's predictor, the training log).

        - `class_counts`: what the methods are told (default: counted from `y`).
        - `domains`: int64 domain id per sample (methods see per-domain minibatches).
        - `methods`, `recipe`, `seed`, `model_name`: override the spec's.
        - `model`: continue training this model as it is (no reshaping); `init_state`: start
          from these weights.
        - `normalizer`: the input normalisation (default: fitted on `x`).
        - `parts`/`part_names`: engine parts the suite adds (a continual strategy's hooks).
        - `evaluate(model)`: per-epoch curves; `on_step(iteration)`: called before each step.
        - `artifact`: train once and store under this role; later calls with the same role,
          data (a digest of x, y, domains), recipe, model, seed, methods and `artifact_key`
          load it instead (in any process). `Trained.facts` says `artifact_id` and `reused`.
        """
        from harness.training import fit

        return fit(self, x, y, num_classes=num_classes, class_counts=class_counts, domains=domains, methods=methods, recipe=recipe, seed=seed,
                   model_name=model_name, model=model, init_state=init_state, normalizer=normalizer, parts=parts, part_names=part_names,
                   evaluate=evaluate, on_step=on_step, artifact=artifact, artifact_key=artifact_key)


@dataclass
class RunOutput:
    metrics: dict[str, float]
    series: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # facts about the run (e.g. class counts)
    # per-sample predictions by split, stored beside the result (harness.predictions): {"test": (logits, labels)}
    # or {"test": Predictions(logits, labels, scores={"top1": "accuracy"})} to name the metrics they recompute
    predictions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    summary: str
    ranks: tuple[str, ...]  # method kinds this suite ranks; "training" stands for every kind whose methods train
    baseline: str  # the entry every other entry is compared with (paired test on matching seeds)
    metrics: tuple[Metric, ...]
    primary: str
    axes: tuple[Param, ...]  # the suite's own variant keys (e.g. ratio), with defaults
    scales: dict[str, Recipe]
    run: Callable[[RunContext], RunOutput]
    card: str = ""  # protocol details in markdown: thresholds, sources, what is fixed
    default_seeds: int = 3
    # kinds whose installed methods form the default entries of `harness run` without method=
    # (default: every kind in `ranks`); e.g. an OOD suite ranks losses too, but by default runs
    # only its TTA methods
    default_kinds: tuple[str, ...] = ()
    # the default entries themselves, when they are not single methods of `default_kinds`: e.g. a
    # cross product of training entries and calibrators, or a reference row of another kind.
    # `default_entries(catalog) -> ["ce+temperature", ...]`; None: every installed method of
    # `default_kinds` (harness.spec.default_entries)
    default_entries: Callable[[Catalog], list[str]] | None = None
    # the loss an entry trains with when it names none (only where the suite ranks losses; a
    # suite that does not keeps its own fixed training loss out of the entries)
    default_loss: str = "ce"
    # axis values that follow from an entry's method kinds (e.g. a continual suite runs merging
    # methods under protocol=merging): `derive_variant(kinds) -> {axis: value}`; a conflicting
    # value given on the command line is an error
    derive_variant: Callable[[tuple[str, ...]], dict[str, Any]] | None = None
    # kinds an entry may hold without being ranked, because they shape a model the suite trains
    # (e.g. the unlearning suite's original model): kind names or "training"
    trains_with: tuple[str, ...] = ()
    # the metric, computed on the suite's validation split (never the test split), that selects
    # among an entry's configurations (`tune=N`, a swept hyper-parameter); None: no validation split
    validation_metric: str | None = None
    # published numbers for its entries (harness.reported.Reported): shown beside the reproduced
    # ones on the boards of their setting, and trained again by `harness reproduce SUITE`
    reported: tuple[Reported, ...] = ()
    plugin: str = ""
    plugin_version: str = ""

    @staticmethod
    def _expand(names: tuple[str, ...], catalog: Catalog) -> set[str]:
        out = {n for n in names if n != TRAINING}
        if TRAINING in names:
            out |= {k.name for k in catalog.kinds if k.trains}
        return out

    def ranked_kind_names(self, catalog: Catalog) -> set[str]:
        return self._expand(self.ranks, catalog)

    def ranks_training(self, catalog: Catalog) -> bool:
        """Whether the suite ranks training methods (then an entry without a loss gets `default_loss`)."""
        return any(catalog.kinds.get(k).trains for k in self.ranked_kind_names(catalog) if k in catalog.kinds)

    def accepted_kind_names(self, catalog: Catalog) -> set[str]:
        return self._expand(self.ranks, catalog) | self._expand(self.trains_with, catalog)

    def default_kind_names(self, catalog: Catalog) -> set[str]:
        return self._expand(self.default_kinds or self.ranks, catalog)

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def __post_init__(self) -> None:
        if self.primary not in {m.name for m in self.metrics}:
            raise ValueError(f"suite {self.name!r}: primary metric {self.primary!r} is not among its metrics")
        if self.validation_metric is not None and self.validation_metric not in {m.name for m in self.metrics}:
            raise ValueError(f"suite {self.name!r}: validation metric {self.validation_metric!r} is not among its metrics")
