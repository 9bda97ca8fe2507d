"""The conformance kit: one call that checks a method the way the harness will use it.

`check_method(method_or_name)` runs every check below, collects every failure, and raises one
`ConformanceError` (an AssertionError, so pytest shows it as a plain test failure) that lists
them all. Every built-in method passes it (tests/test_conformance.py is parametrized over the
installed registry), and plugin authors call it from their own tests through the pytest
fixture `harness_check_method` (harness/pytest_plugin.py) or directly.

The checks, in order:

- **declaration**: a kind some installed plugin registered, a one-line summary, a paper
  reference, a version; hyper-parameters are `Param`s whose defaults are valid in canonical form
  (a float parameter with the int default `1` would give a different run id from the CLI's
  `1.0`), each with a doc line; `build` does not declare a different default for a
  hyper-parameter than its `Param` (the core always passes every hyper-parameter).
- **runs**: the kind's own check (`Kind.check`, in the kind's module) runs the method the way
  suites use it, on real data on the CPU (scikit-learn's 8x8 digits): a training method trains
  two short epochs through the real assembly and engine (`run_training_method`), a merging
  method merges tiny state dicts, an unlearning method unlearns, a TTA method adapts batch by
  batch, a strategy learns two tasks.
- **finite**: no NaN or inf in losses, gradients or outputs.
- **deterministic**: the same seed twice gives bit-identical losses / outputs on the CPU.
- **cli round-trip**: for each hyper-parameter, `Param.parse(str(default))` gives the default
  back, and for every installed suite that ranks the method's kind,
  `build_grid(..., METHOD.PARAM=str(default))` gives the same run ids as no override.

Kind modules use the helpers here (`require`, `CheckFailed`, `tiny_model`, `normalizer_of`,
`run_training_method`, ...) in their own checks; a kind without a check is reported as skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.hookspecs import hookimpl

# torch and the catalog are imported inside the functions: the pytest plugin imports this
# module in every pytest session of an environment where harness is installed.

# The tiny training recipe of the checks: two short epochs, enough to show a method trains and
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
    notes: list[str] = field(default_factory=list)  # advice that does not fail the check

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> ConformanceReport:
        if self.failures:
            raise ConformanceError(self.method, self.failures, self.passed)
        return self


class CheckFailed(Exception):
    """Raised inside a check with the reason it failed."""


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


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


@dataclass(frozen=True)
class CheckEnv:
    """What a kind's check gets besides the method: the tiny data, the seed of the runs that must
    be reproducible, and the catalog (kinds, and the method registered in it)."""

    data: TinyData
    seed: int
    catalog: Any


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


def normalizer_of(data: TinyData) -> Any:
    from harness.engine import Normalizer

    return Normalizer.fit(data.train_x)


def class_counts(data: TinyData) -> tuple[int, ...]:
    import torch

    return tuple(torch.bincount(data.train_y, minlength=data.num_classes).tolist())


def loss_context(data: TinyData, epochs: int = CHECK_RECIPE["epochs"], seed: int = 0) -> Any:
    """The training context of the checks' runs (harness.seams.TrainContext)."""
    from harness.seams import TrainContext

    n, bs = len(data.train_y), CHECK_RECIPE["batch_size"]
    return TrainContext(data.num_classes, class_counts(data), n, epochs, "cpu", bs, -(-n // bs), seed, 0, data.in_chans, data.img_size)


def finite(t: Any) -> bool:
    import torch

    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def cross_entropy_loss() -> Any:
    """The objective the checks train a method with when the method brings none (int or soft targets)."""
    from torch.nn import functional as F

    from harness.kinds.loss import Loss

    class SoftCrossEntropy(Loss):
        def forward(self, logits, targets, index):
            if targets.dtype.is_floating_point:
                return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            return F.cross_entropy(logits, targets)

    return SoftCrossEntropy()


def run_training_method(method: Any, env: CheckEnv, *, epochs: int = CHECK_RECIPE["epochs"]) -> dict[str, Any]:
    """Train the tiny CNN with `method` (plus cross-entropy when it brings no objective) through the
    real assembly (harness.training.assemble) and engine for `epochs` short epochs; return the
    per-epoch losses, the test logits (through the method's predictor, if it owns prediction) and
    whether any weight moved."""
    import torch

    from harness.engine import predict, train
    from harness.method import MethodRef
    from harness.training import assemble, owns_objective

    data, seed, catalog = env.data, env.seed, env.catalog
    ctx = loss_context(data, epochs, seed)
    extra = () if owns_objective(catalog, method.name) else (cross_entropy_loss(),)
    try:
        torch.manual_seed(seed)
        plan = assemble(catalog, [MethodRef.of(method)], context=ctx, build_model=lambda: tiny_model(data, seed), extra_parts=extra,
                        extra_names=("cross-entropy (the check's objective)",) * len(extra), teacher=lambda name, decl: tiny_model(data, seed + 1))
    except Exception as exc:
        raise CheckFailed(f"building it for training raised {type(exc).__name__}: {exc}") from exc
    model = plan.model
    require(isinstance(model, torch.nn.Module), "shaping must return the (possibly changed) nn.Module")
    before = [p.detach().clone() for p in model.parameters()]
    normalizer = normalizer_of(data)
    try:
        log = train(model, data.train_x, data.train_y, recipe={**CHECK_RECIPE, "epochs": epochs}, parts=plan.composition, aux=plan.aux,
                    normalizer=normalizer, seed=seed, device="cpu")
    except Exception as exc:
        raise CheckFailed(f"training raised {type(exc).__name__}: {exc}") from exc
    logits = predict(model, data.test_x, normalizer=normalizer, device="cpu", predictor=plan.composition.predictor)
    require(tuple(logits.shape) == (len(data.test_y), data.num_classes), f"the trained model gives logits of shape {tuple(logits.shape)}, expected {(len(data.test_y), data.num_classes)}")
    plain = predict(model, data.test_x, normalizer=normalizer, device="cpu")
    require(tuple(plain.shape) == (len(data.test_y), data.num_classes), f"model(x) of the shaped model gives {tuple(plain.shape)} in eval mode, expected {(len(data.test_y), data.num_classes)}: shaping must keep K class logits")
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return {"train_loss": log.train_loss, "logits": logits, "weights_changed": changed}


# ---------------------------------------------------------------------------------------------
# the generic checks
# ---------------------------------------------------------------------------------------------


def _check_declaration(method: Any, catalog: Any, report: ConformanceReport) -> None:
    from harness.method import Method
    from harness.params import Param

    require(isinstance(method, Method), f"is a {type(method).__name__}, not a harness.Method")
    require(method.kind in catalog.kinds, f"kind {method.kind!r} is not registered by any installed plugin; installed kinds: {', '.join(catalog.kinds.names())}")
    require(bool(method.summary.strip()) and "\n" not in method.summary.strip(), "needs a one-line summary")
    require(bool(method.paper.strip()), "needs a paper reference")
    require(isinstance(method.version, str) and bool(method.version.strip()), f"version must be a non-empty string, got {method.version!r}")
    require(callable(method.build), "build is not callable")
    for p in method.params:
        require(isinstance(p, Param), f"hyper-parameter {p!r} is not a harness.Param")
        canonical = p.check(p.default, where=f"default of {method.name}.{p.name}")
        require(
            type(canonical) is type(p.default) and canonical == p.default,
            f"default of {method.name}.{p.name} is {p.default!r} ({type(p.default).__name__}); write it as {canonical!r}: the CLI gives {type(canonical).__name__}s, and the run id would differ",
        )
        require(bool(p.doc.strip()), f"hyper-parameter {p.name!r} needs a doc line")
    try:
        signature = inspect.signature(method.build)
    except (TypeError, ValueError):
        return
    for p in method.params:
        param = signature.parameters.get(p.name)
        if param is None or param.default is inspect.Parameter.empty:
            continue
        require(param.default == p.default, f"build declares {p.name}={param.default!r} but its Param's default is {p.default!r}; declare the default once, on the Param (the core always passes every hyper-parameter)")
        report.notes.append(f"build repeats the default of {p.name}; it may be left out (the Param's default is the one used)")


def _all_finite(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return finite(value)
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


def _check_cli_round_trip(method: Any, catalog: Any, report: ConformanceReport) -> None:
    from harness.spec import build_grid

    for p in method.params:
        text = str(p.default)
        try:
            parsed = p.parse(text, where=f"{method.name}.{p.name}")
        except Exception as exc:
            raise CheckFailed(f"{method.name}.{p.name}={text} (the default, as text) does not parse: {exc}") from exc
        require(type(parsed) is type(p.default) and parsed == p.default, f"{method.name}.{p.name}={text} parses to {parsed!r}, not the default {p.default!r}")
    suites = [s for s in catalog.suites if method.kind in s.ranked_kind_names(catalog)]
    if not suites:
        report.skipped["cli round-trip (run ids)"] = f"no installed suite ranks {method.kind} methods"
        return
    for suite in suites:
        base = {"suite": suite.name, "method": method.name, "seeds": "1"}
        _, plain = build_grid(catalog, base)
        for p in method.params:
            _, overridden = build_grid(catalog, {**base, f"{method.name}.{p.name}": str(p.default)})
            require(
                [s.run_id for s in overridden] == [s.run_id for s in plain],
                f"suite {suite.name}: {method.name}.{p.name}={p.default} (its default) gives a different run id than no override",
            )
            require([s.entry for s in overridden] == [s.entry for s in plain], f"suite {suite.name}: giving the default value changed the leaderboard entry name")


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
            raise CheckFailed(f"the name {method.name!r} is already registered by {installed.plugin!r} with a different declaration; rename the method")
        return catalog
    info = catalog.add_plugin(_RegisterOne(method), f"conformance:{method.name}", dist=method.plugin or "under-test", version=method.plugin_version or "0")
    if not info.ok:
        raise CheckFailed(f"registering it fails: {info.error}")
    return catalog


def run_checks(method_or_name: Any, *, catalog: Any = None, data: TinyData | None = None, seed: int = 0) -> ConformanceReport:
    """Run every check and return the report (no raise). See `check_method`."""
    from harness.catalog import load_catalog

    catalog = catalog if catalog is not None else load_catalog()
    method = catalog.methods.get(method_or_name) if isinstance(method_or_name, str) else method_or_name
    from harness.method import Method

    report = ConformanceReport(method.name if isinstance(method, Method) else repr(method))
    data = data or tiny_data()

    def check(name: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except CheckFailed as exc:
            report.failures[name] = str(exc)
            return None
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            report.failures[name] = f"raised {type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno})"
            return None
        report.passed.append(name)
        return result

    check("declaration", lambda: _check_declaration(method, catalog, report))
    if not isinstance(method, Method) or method.kind not in catalog.kinds:  # nothing else can run
        return report
    holder: dict[str, Any] = {}
    if check("registers", lambda: holder.setdefault("catalog", catalog_with(method, catalog))) is None:
        return report
    env = CheckEnv(data, seed, holder["catalog"])
    kind = env.catalog.kinds.get(method.kind)
    first = None
    if kind.check is None:
        report.skipped["runs"] = f"kind {method.kind!r} ({kind.plugin}) has no conformance check"
    else:
        first = check("runs", lambda: kind.check(method, env))
    if first is not None:
        check("finite", lambda: require(_all_finite(first), "losses or outputs contain NaN or inf"))

        def deterministic() -> None:
            second = kind.check(method, env)
            require(_identical(first, second), "two runs with the same seed gave different losses/outputs; draw every random number from the given generator (or torch's seeded global one)")

        check("deterministic", deterministic)
        for name, extra in kind.extra_checks:
            check(name, lambda extra=extra: extra(method, env))
    check("cli round-trip", lambda: _check_cli_round_trip(method, env.catalog, report))
    return report


def check_method(method_or_name: Any, *, catalog: Any = None, data: TinyData | None = None, seed: int = 0) -> ConformanceReport:
    """Check a method (a `harness.Method` or a registered name) for conformance.

    Raises `ConformanceError` (an AssertionError) listing every failed check; returns the
    report (passed and skipped checks, and notes) when all pass.

    :param catalog: the catalog to resolve a name, kinds and suites in (default: the installed
        plugins; a `Method` that is not installed is added to it).
    :param data: the tiny data to train on (default: the first 256 images of digits).
    :param seed: the seed of the runs that must be reproducible.
    """
    return run_checks(method_or_name, catalog=catalog, data=data, seed=seed).raise_for_failures()
