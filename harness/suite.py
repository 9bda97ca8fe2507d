"""Suites: versioned protocol cards (data scenario, shift, recipe, metrics) and their run function.

A suite is data plus one function. The card fields say what is measured and how; `run(ctx)`
trains and evaluates one cell of the grid and returns its metrics and series. Anything that
changes results bumps `version`, which is part of every run's identity, so results of
different protocol versions are never mixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.params import Param

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.spec import RunSpec


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

    @staticmethod
    def override_params() -> dict[str, Param]:
        types = {"dataset": str, "model": str, "epochs": int, "batch_size": int, "lr": float, "momentum": float, "weight_decay": float, "warmup_epochs": int}
        lows = {"epochs": 1, "batch_size": 1, "lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0}
        defaults = {str: "x", int: 1, float: 0.0}
        return {k: Param(k, t, defaults[t], low=lows.get(k)) for k, t in types.items()}


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

    def build_method(self, kind: str, method_ctx: Any) -> Any | None:
        """Build the spec's method of `kind` with its resolved hyper-parameters (None if absent)."""
        found = self.spec.method_params(kind)
        if found is None:
            return None
        name, params = found
        return self.catalog.methods.get(name).build(method_ctx, **params)


@dataclass
class RunOutput:
    metrics: dict[str, float]
    series: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # facts about the run (e.g. class counts)


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    summary: str
    ranks: tuple[str, ...]  # method kinds this suite ranks
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
    # the loss an entry trains with when it names none (only where the suite ranks losses; a
    # suite that does not keeps its own fixed training loss out of the entries)
    default_loss: str = "ce"
    # axis values that follow from an entry's method kinds (e.g. a continual suite runs merging
    # methods under protocol=merging): `derive_variant(kinds) -> {axis: value}`; a conflicting
    # value given on the command line is an error
    derive_variant: Callable[[tuple[str, ...]], dict[str, Any]] | None = None
    plugin: str = ""
    plugin_version: str = ""

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def __post_init__(self) -> None:
        if self.primary not in {m.name for m in self.metrics}:
            raise ValueError(f"suite {self.name!r}: primary metric {self.primary!r} is not among its metrics")
