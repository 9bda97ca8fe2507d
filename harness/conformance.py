"""The conformance kit: one call that checks a method the way the harness will use it.

`check_method(method_or_name)` runs every check below, collects every failure, and raises one
`ConformanceError` (an AssertionError, so pytest shows it as a plain test failure) that lists
them all. Every built-in method passes it (tests/test_conformance.py is parametrized over the
installed registry), and plugin authors call it from their own tests through the pytest
fixture `harness_check_method` (harness/pytest_plugin.py) or directly.

The checks, in order:

- **declaration**: a kind the core knows, a one-line summary, a paper reference, a version;
  hyper-parameters are `Param`s whose defaults are valid in canonical form (a float parameter
  with the int default `1` would give a different run id from the CLI's `1.0`).
- **builds**: `build(ctx, **defaults)` returns an object with the kind's interface.
- **runs**: a few steps on real data on the CPU (scikit-learn's 8x8 digits): a loss trains
  the small CNN for two short epochs through `harness.engine.train` after `prepare_model`; an
  augmentation transforms a batch (shapes, label range, soft rows summing to 1) and trains one
  epoch; a merging method merges tiny state dicts (keys, shapes, dtypes kept; inputs not
  mutated; the result loads); an unlearning method returns a model giving K logits; a TTA
  method's adapter gives K logits batch by batch and `reset()` restores its first answer.
- **finite**: no NaN or inf in losses, gradients (also at confident logits) or outputs.
- **deterministic**: the same seed twice gives bit-identical losses / outputs on the CPU.
- **cli round-trip**: for each hyper-parameter, `Param.parse(str(default))` gives the default
  back, and for every installed suite that ranks the method's kind,
  `build_grid(..., METHOD.PARAM=str(default))` gives the same run ids as no override.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.hookspecs import hookimpl

# torch and the catalog are imported inside the functions: the pytest plugin imports this
# module in every pytest session of an environment where harness is installed.

# The tiny training recipe of the checks: two short epochs, enough to show a loss trains and
# is deterministic; not enough to say anything about accuracy.
CHECK_RECIPE: dict[str, Any] = {
    "epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
    "schedule": "onecycle", "warmup_epochs": 0, "milestones": [], "lr_decay": 0.1, "crop_flip": False,
}
TRAIN_SIZE = 256  # digits training images used by the checks
# logits = 30 * N(0, 1): gaps of 100+ between classes, where float32 probabilities underflow to
# 0 (so log(softmax(z)) is -inf, log_softmax(z) is fine); LDAM's s=30 heads reach gaps of 60
CONFIDENT_LOGIT_SCALE = 30.0


class ConformanceError(AssertionError):
    """A method failed one or more conformance checks; `failures` maps check -> reason."""

    def __init__(self, method: str, failures: dict[str, str], passed: list[str]):
        self.method, self.failures, self.passed = method, failures, passed
        lines = [f"method {method!r} failed {len(failures)} conformance check(s):"]
        lines += [f"  - {check}: {reason}" for check, reason in failures.items()]
        if passed:
            lines.append(f"  (passed: {', '.join(passed)})")
        super().__init__("\n".join(lines))


@dataclass
class ConformanceReport:
    method: str
    passed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> ConformanceReport:
        if self.failures:
            raise ConformanceError(self.method, self.failures, self.passed)
        return self


class _CheckFailed(Exception):
    """Raised inside a check with the reason it failed."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise _CheckFailed(reason)


# ---------------------------------------------------------------------------------------------
# tiny data and models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyData:
    """A small slice of real data: uint8 images [N, 1, 8, 8], int64 labels, 10 classes."""

    train_x: Any
    train_y: Any
    test_x: Any
    test_y: Any
    num_classes: int

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train_x.shape[-1])


@functools.cache
def tiny_data(train_size: int = TRAIN_SIZE, test_size: int = 128) -> TinyData:
    """The first images of scikit-learn's digits (embedded, offline), fixed split."""
    from harness.data import LoadOptions, load_digits

    splits = load_digits(LoadOptions(cache_dir=Path("unused")))
    return TinyData(splits.train_x[:train_size], splits.train_y[:train_size], splits.test_x[:test_size], splits.test_y[:test_size], splits.num_classes)


def tiny_model(data: TinyData, seed: int) -> Any:
    import torch

    from harness.models import SmallCNN

    torch.manual_seed(seed)
    return SmallCNN(data.num_classes, data.in_chans, data.img_size, width=8)


def _normalizer(data: TinyData) -> Any:
    from harness.engine import Normalizer

    return Normalizer.fit(data.train_x)


def _class_counts(data: TinyData) -> tuple[int, ...]:
    import torch

    return tuple(torch.bincount(data.train_y, minlength=data.num_classes).tolist())


def _finite(t: Any) -> bool:
    import torch

    return not t.is_floating_point() or bool(torch.isfinite(t).all())


# ---------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------


def _check_declaration(method: Any) -> None:
    from harness.kinds import KINDS, Method
    from harness.params import Param

    _require(isinstance(method, Method), f"is a {type(method).__name__}, not a harness.Method")
    _require(method.kind in KINDS, f"kind {method.kind!r} is not one of {', '.join(KINDS)}")
    _require(bool(method.summary.strip()) and "\n" not in method.summary.strip(), "needs a one-line summary")
    _require(bool(method.paper.strip()), "needs a paper reference")
    _require(isinstance(method.version, str) and bool(method.version.strip()), f"version must be a non-empty string, got {method.version!r}")
    _require(callable(method.build), "build is not callable")
    for p in method.params:
        _require(isinstance(p, Param), f"hyper-parameter {p!r} is not a harness.Param")
        canonical = p.check(p.default, where=f"default of {method.name}.{p.name}")
        _require(
            type(canonical) is type(p.default) and canonical == p.default,
            f"default of {method.name}.{p.name} is {p.default!r} ({type(p.default).__name__}); write it as {canonical!r}: the CLI gives {type(canonical).__name__}s, and the run id would differ",
        )
        _require(bool(p.doc.strip()), f"hyper-parameter {p.name!r} needs a doc line")


def _defaults(method: Any) -> dict[str, Any]:
    return {p.name: p.default for p in method.params}


def _build(method: Any, ctx: Any) -> Any:
    from harness.kinds import Augmentation, Loss, Merging, TestTimeAdaptation, Unlearning

    expected = {"loss": Loss, "augmentation": Augmentation, "merging": Merging, "unlearning": Unlearning, "tta": TestTimeAdaptation}[method.kind]
    try:
        obj = method.build(ctx, **_defaults(method))
    except Exception as exc:
        raise _CheckFailed(f"build(ctx, **defaults) raised {type(exc).__name__}: {exc}") from exc
    _require(isinstance(obj, expected), f"build returned a {type(obj).__name__}; a {method.kind} method must return a harness.kinds.{expected.__name__}")
    return obj


# -- loss ------------------------------------------------------------------------------------


def _loss_ctx(data: TinyData, num_classes: int | None = None, counts: tuple[int, ...] | None = None) -> Any:
    from harness.kinds import LossContext

    return LossContext(num_classes or data.num_classes, counts or _class_counts(data), len(data.train_y), CHECK_RECIPE["epochs"], "cpu")


def _run_loss(method: Any, data: TinyData, seed: int) -> dict[str, Any]:
    """Build, prepare_model, train two short epochs; return what must be finite and reproducible."""
    import torch

    from harness.engine import predict, train

    model = tiny_model(data, seed)
    loss = _build(method, _loss_ctx(data))
    model = loss.prepare_model(model)
    _require(isinstance(model, torch.nn.Module), "prepare_model must return the (possibly changed) nn.Module")
    normalizer = _normalizer(data)
    try:
        log = train(model, data.train_x, data.train_y, recipe=CHECK_RECIPE, loss_fn=loss, normalizer=normalizer, seed=seed, device="cpu")
    except Exception as exc:
        raise _CheckFailed(f"training raised {type(exc).__name__}: {exc}") from exc
    logits = predict(model, data.test_x, normalizer=normalizer, device="cpu")
    _require(tuple(logits.shape) == (len(data.test_y), data.num_classes), f"the prepared model gives logits of shape {tuple(logits.shape)}, expected {(len(data.test_y), data.num_classes)}")
    return {"train_loss": log.train_loss, "logits": logits}


def _loss_forward_checks(method: Any, data: TinyData, seed: int) -> None:
    """One call outside the engine: a scalar, finite value and gradients, also at confident logits and for soft targets."""
    import torch

    k = data.num_classes
    loss = _build(method, _loss_ctx(data))
    g = torch.Generator().manual_seed(seed)
    targets = data.train_y[:16]
    index = torch.arange(16)
    for label, scale in (("standard", 1.0), ("confident", CONFIDENT_LOGIT_SCALE)):
        logits = (scale * torch.randn(16, k, generator=g)).requires_grad_(True)
        value = loss(logits, targets, index)
        _require(isinstance(value, torch.Tensor) and value.dim() == 0, f"forward must return a scalar tensor, got {getattr(value, 'shape', type(value))}")
        _require(bool(torch.isfinite(value)), f"forward gives {value.item()} at {label} logits")
        value.backward()
        _require(logits.grad is not None and bool(torch.isfinite(logits.grad).all()), f"non-finite gradient at {label} logits")
    if loss.accepts_soft_targets:
        soft = torch.full((16, k), 1.0 / k)
        value = loss(torch.randn(16, k, generator=g), soft, index)
        _require(value.dim() == 0 and bool(torch.isfinite(value)), "accepts_soft_targets is True but soft [B, K] targets give a non-finite or non-scalar loss")


# -- augmentation ----------------------------------------------------------------------------


def _soft_cross_entropy() -> Any:
    """The baseline loss the augmentation check trains with (int or soft targets)."""
    from torch.nn import functional as F

    from harness.kinds import Loss

    class SoftCrossEntropy(Loss):
        def forward(self, logits, targets, index):
            if targets.dtype.is_floating_point:
                return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            return F.cross_entropy(logits, targets)

    return SoftCrossEntropy()


def _run_augmentation(method: Any, data: TinyData, seed: int) -> dict[str, Any]:
    import torch

    from harness.engine import predict, train
    from harness.kinds import AugmentContext

    k = data.num_classes
    aug = _build(method, AugmentContext(k, 1, "cpu"))
    m = int(getattr(aug, "label_multiplier", 1))
    _require(m >= 1, f"label_multiplier must be >= 1, got {m}")
    normalizer = _normalizer(data)
    x, y = normalizer(data.train_x[:32]), data.train_y[:32]
    x_before, y_before = x.clone(), y.clone()
    aug.start_epoch(0)
    out = aug(x, y, torch.Generator().manual_seed(seed))
    _require(isinstance(out, tuple) and len(out) == 2, "__call__ must return a pair (x, y)")
    xa, ya = out
    _require(xa.is_floating_point() and xa.dim() == 4 and tuple(xa.shape[1:]) == tuple(x.shape[1:]), f"images must stay float [B, {', '.join(map(str, x.shape[1:]))}], got {xa.dtype} {tuple(xa.shape)}")
    _require(len(ya) == len(xa), f"returned {len(xa)} images but {len(ya)} targets")
    _require(_finite(xa) and _finite(ya), "returned non-finite images or targets")
    if ya.is_floating_point():
        _require(ya.dim() == 2 and ya.shape[1] == k * m, f"soft targets must be [B, {k * m}], got {tuple(ya.shape)}")
        _require(bool(torch.allclose(ya.sum(dim=1), torch.ones(len(ya)), atol=1e-4)), "soft target rows must sum to 1")
    else:
        _require(ya.dtype == torch.int64 and ya.dim() == 1, f"hard targets must be int64 [B], got {ya.dtype} {tuple(ya.shape)}")
        _require(bool(((ya >= 0) & (ya < k * m)).all()), f"targets must lie in [0, {k * m})")
    # a batch transform must not write into the engine's batch (it may be a view of the data)
    _require(torch.equal(x, x_before) and torch.equal(y, y_before), "__call__ modified its input tensors in place")

    model = aug.prepare_model(tiny_model(data, seed), k)
    _require(isinstance(model, torch.nn.Module), "prepare_model must return an nn.Module")
    loss = _soft_cross_entropy()
    recipe = {**CHECK_RECIPE, "epochs": 1}
    try:
        log = train(model, data.train_x, data.train_y, recipe=recipe, loss_fn=loss, normalizer=normalizer, seed=seed, device="cpu", augmentations=(aug,))
    except Exception as exc:
        raise _CheckFailed(f"one training epoch with it raised {type(exc).__name__}: {exc}") from exc
    logits = predict(model, data.test_x, normalizer=normalizer, device="cpu")
    _require(tuple(logits.shape) == (len(data.test_y), k), f"in eval mode the prepared model must give {k} logits, got shape {tuple(logits.shape)}")
    return {"x": xa, "y": ya, "train_loss": log.train_loss, "logits": logits}


# -- merging ---------------------------------------------------------------------------------


def _run_merging(method: Any, data: TinyData, seed: int) -> dict[str, Any]:
    import torch

    from harness.kinds import MergeContext

    base_model = tiny_model(data, seed)
    base = {k: v.clone() for k, v in base_model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    experts = []
    for _ in range(3):  # experts: the base plus a small task vector in every float tensor
        experts.append({k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in base.items()})
    originals = [{k: v.clone() for k, v in sd.items()} for sd in (base, *experts)]
    normalizer = _normalizer(data)
    batches = [normalizer(data.train_x[i : i + 32]) for i in range(0, 96, 32)]
    # the extras the continual suite's merging protocol passes (see harness_suites.continual)
    param_keys = [name for name, _ in base_model.named_parameters()]
    extra: dict[str, Any] = {"param_keys": param_keys, "seed": seed, "build_model": lambda: tiny_model(data, seed)}
    ctx = MergeContext(num_tasks=len(experts), unlabeled=lambda: list(batches), device="cpu", extra=extra)
    merger = _build(method, ctx)
    if getattr(merger, "needs_fisher", False):  # positive diagonal Fishers, one dict per expert
        extra["fishers"] = [{k: (t + 1) * torch.ones_like(base[k]) for k in param_keys} for t in range(len(experts))]
    torch.manual_seed(seed)
    merged = merger.merge(base, experts, ctx)
    _require(isinstance(merged, dict), f"merge must return a state dict, got {type(merged).__name__}")
    _require(set(merged) == set(originals[0]), f"merged keys differ from the base's: missing {sorted(set(originals[0]) - set(merged))[:3]}, extra {sorted(set(merged) - set(originals[0]))[:3]}")
    for key, value in originals[0].items():  # the base as it was given (merge may have changed it)
        _require(tuple(merged[key].shape) == tuple(value.shape) and merged[key].dtype == value.dtype, f"{key}: merged {merged[key].dtype} {tuple(merged[key].shape)}, base {value.dtype} {tuple(value.shape)}")
        _require(_finite(merged[key]), f"{key}: merged values are not finite")
    for before, after in zip(originals, (base, *experts)):
        _require(all(torch.equal(before[k], after[k]) for k in before), "merge modified the base's or an expert's state dict in place")
    model = tiny_model(data, seed)
    model.load_state_dict(merged)  # strict: the result must load into the architecture it came from
    return {key: value for key, value in sorted(merged.items())}


# -- unlearning ------------------------------------------------------------------------------


def _run_unlearning(method: Any, data: TinyData, seed: int) -> dict[str, Any]:
    import torch

    from harness.kinds import UnlearnContext

    k = data.num_classes
    normalizer = _normalizer(data)
    x, y = normalizer(data.train_x), data.train_y
    forget, retain = (x[:32], y[:32]), (x[32:], y[32:])
    model = tiny_model(data, seed)
    ctx = UnlearnContext(num_classes=k, epochs=1, lr=0.01, batch_size=32, device="cpu", original=copy.deepcopy(model))
    unlearner = _build(method, ctx)
    torch.manual_seed(seed)
    out = unlearner.unlearn(model, forget, retain, ctx)
    _require(isinstance(out, torch.nn.Module), f"unlearn must return an nn.Module, got {type(out).__name__}")
    out.eval()
    with torch.no_grad():
        logits = out(normalizer(data.test_x))
    _require(tuple(logits.shape) == (len(data.test_y), k), f"the unlearned model gives logits of shape {tuple(logits.shape)}, expected {(len(data.test_y), k)}")
    _require(_finite(logits), "the unlearned model gives non-finite logits")
    return {"logits": logits}


# -- tta -------------------------------------------------------------------------------------


def _run_tta(method: Any, data: TinyData, seed: int) -> dict[str, Any]:
    import torch

    from harness.kinds import AdaptContext

    k = data.num_classes
    normalizer = _normalizer(data)
    model = tiny_model(data, seed).eval()
    ctx = AdaptContext(num_classes=k, device="cpu")
    tta = _build(method, ctx)
    torch.manual_seed(seed)
    adapter = tta.adapt(model, ctx)
    _require(callable(adapter) and callable(getattr(adapter, "reset", None)), "adapt must return an adapter with __call__(x) and reset()")
    batches = [normalizer(data.test_x[i : i + 32]) for i in range(0, 96, 32)]
    outputs = []
    for xb in batches:
        logits = adapter(xb)
        _require(isinstance(logits, torch.Tensor) and tuple(logits.shape) == (len(xb), k), f"adapter(x) must give logits [B, {k}], got {getattr(logits, 'shape', type(logits))}")
        _require(_finite(logits), "adapter(x) gave non-finite logits")
        outputs.append(logits.detach().clone())
    adapter.reset()
    torch.manual_seed(seed)
    again = adapter(batches[0]).detach()
    _require(torch.equal(again, outputs[0]), "after reset() the first batch gives different logits: reset must restore the adapter's initial state")
    return {"logits": outputs}


# -- strategy (continual learning) ---------------------------------------------------------


def _run_strategy(method: Any, data: TinyData, seed: int) -> dict[str, Any]:
    """Two class-incremental tasks (digits 0-4, then 5-9), a few SGD steps each, every hook called."""
    import torch
    from torch.nn import functional as F

    from harness.kinds import Strategy, StrategyContext, Task

    k = data.num_classes
    normalizer = _normalizer(data)
    tasks = []
    for t, classes in enumerate((tuple(range(k // 2)), tuple(range(k // 2, k)))):
        keep = torch.isin(data.train_y, torch.tensor(classes))
        tasks.append(Task(t, data.train_x[keep], data.train_y[keep], classes))
    ctx = StrategyContext(num_classes=k, num_tasks=2, epochs=1, batch_size=32, normalize=normalizer, device="cpu", seed=seed)
    strategy = method.build(ctx, **_defaults(method))
    _require(isinstance(strategy, Strategy), f"build returned a {type(strategy).__name__}; a strategy method must return a harness.kinds.Strategy")
    model = tiny_model(data, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for t, task in enumerate(tasks):
        train_on = strategy.train_tasks(tasks[: t + 1])
        _require(isinstance(train_on, list) and all(isinstance(x, Task) for x in train_on) and train_on, "train_tasks must return a non-empty list of the seen Tasks")
        x_all = torch.cat([tk.x for tk in train_on])
        y_all = torch.cat([tk.y for tk in train_on])
        strategy.before_task(model, task)
        model.train()
        order = torch.randperm(len(y_all), generator=generator)
        for start in range(0, min(len(order), 96), 32):
            idx = order[start : start + 32]
            xb, yb = strategy.batch(normalizer(x_all[idx]), y_all[idx], generator)
            _require(xb.is_floating_point() and len(xb) == len(yb), "batch must return float images and as many targets")
            logits = model(xb)
            loss = F.cross_entropy(logits, yb) if not yb.is_floating_point() else -(yb * F.log_softmax(logits, 1)).sum(1).mean()
            extra = strategy.penalty(model, xb, logits)
            if extra is not None:
                _require(isinstance(extra, torch.Tensor) and extra.dim() == 0, "penalty must return a scalar tensor or None")
                loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        strategy.after_task(model, task)
    model.eval()
    with torch.no_grad():
        logits = model(normalizer(data.test_x))
    return {"train_loss": losses, "logits": logits}


RUNNERS: dict[str, Callable[[Any, TinyData, int], dict[str, Any]]] = {
    "strategy": _run_strategy,
    "loss": _run_loss, "augmentation": _run_augmentation, "merging": _run_merging, "unlearning": _run_unlearning, "tta": _run_tta,
}


def _all_finite(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return _finite(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def _identical(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    return a == b


# -- cli round-trip --------------------------------------------------------------------------


def _check_cli_round_trip(method: Any, catalog: Any, report: ConformanceReport) -> None:
    from harness.spec import build_grid

    for p in method.params:
        text = str(p.default)
        try:
            parsed = p.parse(text, where=f"{method.name}.{p.name}")
        except Exception as exc:
            raise _CheckFailed(f"{method.name}.{p.name}={text} (the default, as text) does not parse: {exc}") from exc
        _require(type(parsed) is type(p.default) and parsed == p.default, f"{method.name}.{p.name}={text} parses to {parsed!r}, not the default {p.default!r}")
    suites = [s for s in catalog.suites if method.kind in s.ranks]
    if not suites:
        report.skipped["cli round-trip (run ids)"] = f"no installed suite ranks {method.kind} methods"
        return
    for suite in suites:
        base = {"suite": suite.name, "method": method.name, "seeds": "1"}
        _, plain = build_grid(catalog, base)
        for p in method.params:
            _, overridden = build_grid(catalog, {**base, f"{method.name}.{p.name}": str(p.default)})
            _require(
                [s.run_id for s in overridden] == [s.run_id for s in plain],
                f"suite {suite.name}: {method.name}.{p.name}={p.default} (its default) gives a different run id than no override",
            )
            _require([s.entry for s in overridden] == [s.entry for s in plain], f"suite {suite.name}: giving the default value changed the leaderboard entry name")


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------


class _RegisterOne:
    def __init__(self, method: Any):
        self.method = method

    @hookimpl
    def harness_register_methods(self, register: Callable[[Any], None]) -> None:
        register(self.method)


def _unstamped(method: Any) -> Any:
    return dataclasses.replace(method, plugin="", plugin_version="")


def catalog_with(method: Any, catalog: Any = None) -> Any:
    """The installed catalog, plus `method` when it is not installed (a package under test)."""
    from harness.catalog import load_catalog

    catalog = catalog if catalog is not None else load_catalog()
    if method.name in catalog.methods:
        installed = catalog.methods.get(method.name)
        if _unstamped(installed) != _unstamped(method):
            raise _CheckFailed(f"the name {method.name!r} is already registered by {installed.plugin!r} with a different declaration; rename the method")
        return catalog
    info = catalog.add_plugin(_RegisterOne(method), f"conformance:{method.name}", dist=method.plugin or "under-test", version=method.plugin_version or "0")
    if not info.ok:
        raise _CheckFailed(f"registering it fails: {info.error}")
    return catalog


def run_checks(method_or_name: Any, *, catalog: Any = None, data: TinyData | None = None, seed: int = 0) -> ConformanceReport:
    """Run every check and return the report (no raise). See `check_method`."""
    if isinstance(method_or_name, str):
        from harness.catalog import load_catalog

        catalog = catalog if catalog is not None else load_catalog()
        method = catalog.methods.get(method_or_name)
    else:
        method = method_or_name
    report = ConformanceReport(getattr(method, "name", repr(method)))
    data = data or tiny_data()

    def check(name: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except _CheckFailed as exc:
            report.failures[name] = str(exc)
            return None
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            report.failures[name] = f"raised {type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno})"
            return None
        report.passed.append(name)
        return result

    check("declaration", lambda: _check_declaration(method))
    from harness.kinds import KINDS, Method

    if not isinstance(method, Method) or method.kind not in KINDS:  # nothing else can run
        return report
    if method.kind not in RUNNERS:  # a kind newer than this kit
        report.skipped["runs"] = f"the conformance kit has no runner for {method.kind} methods yet"
        first = None
    else:
        first = check("runs", lambda: RUNNERS[method.kind](method, data, seed))
    if first is not None:
        check("finite", lambda: _require(_all_finite(first), "losses or outputs contain NaN or inf"))
        if method.kind == "loss":
            check("finite at confident logits", lambda: _loss_forward_checks(method, data, seed))

        def deterministic() -> None:
            second = RUNNERS[method.kind](method, data, seed)
            _require(_identical(first, second), "two runs with the same seed gave different losses/outputs; draw every random number from the given generator (or torch's seeded global one)")

        check("deterministic", deterministic)

    def cli() -> None:
        _check_cli_round_trip(method, catalog_with(method, catalog), report)

    check("cli round-trip", cli)
    return report


def check_method(method_or_name: Any, *, catalog: Any = None, data: TinyData | None = None, seed: int = 0) -> ConformanceReport:
    """Check a method (a `harness.Method` or a registered name) for conformance.

    Raises `ConformanceError` (an AssertionError) listing every failed check; returns the
    report (passed and skipped checks) when all pass.

    :param catalog: the catalog to resolve a name and suites in (default: the installed plugins;
        a `Method` that is not installed is added to it for the CLI round-trip check).
    :param data: the tiny data to train on (default: the first 256 images of digits).
    :param seed: the seed of the runs that must be reproducible.
    """
    return run_checks(method_or_name, catalog=catalog, data=data, seed=seed).raise_for_failures()
