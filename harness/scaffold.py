"""`harness new-plugin NAME`: write a ready plugin package with one example method.

The package is what docs/writing-plugins.md describes: a pyproject with the `harness` entry
point, one module of methods, a test that runs the harness conformance kit plus a hand-computed
value, and a README. Names are derived from NAME:

| NAME            | distribution    | import package          | entry point  | example method          |
|-----------------|-----------------|-------------------------|--------------|-------------------------|
| `my-methods`    | `my-methods`    | `harness_my_methods`    | `my_methods` | `my_methods_example`    |
| `harness-poly`  | `harness-poly`  | `harness_poly`          | `poly`       | `poly_example`          |

The import package carries a `harness_` prefix so that no generic top-level name (`methods`,
`losses`) lands in site-packages. Templates are Python strings (no package data to ship).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from importlib.util import find_spec
from pathlib import Path
from string import Template

from harness.errors import HarnessError

SCAFFOLD_KINDS = ("loss", "augmentation", "merging", "unlearning", "tta")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginNames:
    dist: str
    package: str
    entry_point: str
    method: str

    @property
    def constant(self) -> str:
        return self.method.upper()


def plugin_names(name: str) -> PluginNames:
    """Derive the distribution, package, entry-point and method names; refuse invalid names."""
    if not _NAME.match(name):
        hint = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        suggestion = f" (e.g. {hint!r})" if hint and _NAME.match(hint) else " (e.g. 'my-methods')"
        raise HarnessError(
            f"invalid plugin name {name!r}: use lowercase letters, digits and single '-' or '_' between them, "
            f"starting with a letter{suggestion}"
        )
    stem = re.sub(r"[-_]+", "_", name)
    stem = stem.removeprefix("harness_") if stem != "harness" else stem
    if stem in {"harness", "bench"} or keyword.iskeyword(stem):
        raise HarnessError(f"invalid plugin name {name!r}: choose a name that says what your methods are, e.g. 'harness-poly-losses'")
    return PluginNames(dist=name, package=f"harness_{stem}", entry_point=stem, method=f"{stem}_example")


def _refuse_taken(names: PluginNames) -> None:
    try:
        distribution(names.dist)
    except PackageNotFoundError:
        pass
    else:
        raise HarnessError(f"a distribution named {names.dist!r} is already installed; choose another plugin name")
    if find_spec(names.package) is not None:
        raise HarnessError(f"a module named {names.package!r} is already importable; choose another plugin name")
    taken = {ep.name for ep in entry_points(group="harness")}
    if names.entry_point in taken:
        raise HarnessError(f"a harness plugin named {names.entry_point!r} is already installed (`harness plugins`); choose another plugin name")


def new_plugin(name: str, *, kind: str = "loss", directory: Path | None = None) -> Path:
    """Write the package for plugin `name` with one example method of `kind`; return its folder.

    :param directory: where to write it (default: ./NAME). It must not exist or be empty.
    """
    if kind not in SCAFFOLD_KINDS:
        raise HarnessError(f"bad value {kind!r} for kind: expected one of {', '.join(SCAFFOLD_KINDS)}")
    names = plugin_names(name)
    _refuse_taken(names)
    target = Path(directory) if directory is not None else Path.cwd() / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HarnessError(f"{target} already exists and is not empty; choose another folder with dir=PATH or remove it")
    values = {
        "dist": names.dist, "package": names.package, "entry_point": names.entry_point, "method": names.method,
        "CONST": names.constant, "kind": kind, "summary": KIND_SUMMARY[kind],
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{names.package}/__init__.py": INIT,
        f"{names.package}/methods.py": METHODS[kind],
        "tests/test_methods.py": TESTS[kind],
    }
    for rel, template in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
    return target


# =============================================================================================
# templates ($name placeholders; `$$` is a literal dollar sign)
# =============================================================================================

KIND_SUMMARY = {
    "loss": "a confidence-penalty loss",
    "augmentation": "a batched cutout augmentation",
    "merging": "a task-arithmetic merging method",
    "unlearning": "a fine-tune-on-retain unlearning method",
    "tta": "a batch-norm adaptation test-time method",
}

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$summary for the harness benchmark"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["harness-bench", "torch"]

[project.optional-dependencies]
test = ["pytest>=8", "ruff>=0.5"]

# The entry point is how harness finds the plugin: "$entry_point" is its name in
# `harness plugins`; the value is the module holding the @hookimpl functions.
[project.entry-points.harness]
$entry_point = "$package.methods"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 120
target-version = "py310"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "RUF"]

[tool.ruff.lint.isort]
known-first-party = ["$package"]
section-order = ["future", "standard-library", "third-party", "harness", "first-party", "local-folder"]

[tool.ruff.lint.isort.sections]
harness = ["harness"]
'''

README = '''\
# $dist

$summary for the [harness](https://github.com/) benchmark, as a plugin package.

```bash
pip install -e .                 # registers the `harness` entry point
harness plugins                  # $entry_point ... ok  methods: $method
harness list methods '$entry_point*'
harness run suite=long_tail method=ce,$method seeds=1
python -m pytest -q              # the conformance kit + a value computed by hand
```

- `$package/methods.py` declares the method (`Method(...)`: name, kind, summary, paper,
  typed hyper-parameters, version) and registers it in `harness_register_methods`.
- Set hyper-parameters from the command line: `$method.PARAM=VALUE` (a comma sweeps).
- **Versioning.** `Method(version=...)` is part of every run's identity: bump it whenever a
  change alters results, so stored results of the old code are never mixed with the new.
  The package version (`[project] version`) is recorded as provenance in every result.
- `tests/test_methods.py` calls the `harness_check_method` fixture (shipped with harness as a
  pytest plugin): it checks the declaration, runs the method on a tiny slice of real data,
  checks it is finite and deterministic, and round-trips its hyper-parameters through the CLI.

See docs/writing-plugins.md in harness for every method kind and hook.
'''

INIT = '''\
"""$summary for the harness benchmark (entry point: $package.methods)."""

from $package.methods import $CONST

__all__ = ["$CONST"]
'''

METHODS = {
    "loss": '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from harness import Method, Param, hookimpl
from harness.kinds import Loss, LossContext


class ConfidencePenalty(Loss):
    """L = CE(p, t) - beta * H(p): cross-entropy minus a bonus for uncertain (high-entropy) predictions."""

    def __init__(self, ctx: LossContext, beta: float = 0.1):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.beta = beta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        if targets.dtype.is_floating_point:  # soft targets [B, K] (after mixup), rows sum to 1
            t = targets.float()
        else:  # class indices [B]
            t = F.one_hot(targets, self.num_classes).float()
        cross_entropy = -(t * logp).sum(dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        return (cross_entropy - self.beta * entropy).mean()


$CONST = Method(
    name="$method",
    kind="loss",
    build=ConfidencePenalty,
    summary="cross-entropy minus beta times the entropy of the prediction (confidence penalty)",
    paper=(
        "Pereyra et al., Regularizing Neural Networks by Penalizing Confident Output Distributions, "
        "ICLR 2017 workshop"
    ),
    url="https://arxiv.org/abs/1701.06548",
    params=(Param("beta", float, 0.1, "weight of the entropy bonus", low=0.0, high=1.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
''',
    "augmentation": '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch

from harness import Method, Param, hookimpl
from harness.kinds import Augmentation, AugmentContext


class Cutout(Augmentation):
    """Zero one square per image (0 is the training mean after normalisation), batched.

    The square's side is `fraction` of the image side; its centre is uniform over the image, so
    it is clipped at the borders (DeVries & Taylor's choice).
    """

    def __init__(self, ctx: AugmentContext, fraction: float = 0.5, prob: float = 1.0):
        self.fraction = fraction
        self.prob = prob

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        size = max(1, round(self.fraction * min(h, w)))
        # every random number comes from `generator`, on x's device: runs stay reproducible
        cy = torch.randint(0, h, (b, 1, 1), generator=generator, device=x.device) - size // 2
        cx = torch.randint(0, w, (b, 1, 1), generator=generator, device=x.device) - size // 2
        apply = (torch.rand(b, 1, 1, generator=generator, device=x.device) < self.prob)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        square = (rows >= cy) & (rows < cy + size) & (cols >= cx) & (cols < cx + size) & apply
        return x.masked_fill(square.unsqueeze(1), 0.0), y  # a new tensor: never write into x


$CONST = Method(
    name="$method",
    kind="augmentation",
    build=Cutout,
    summary="cutout: zero one random square per image, batched on the device",
    paper="DeVries & Taylor, Improved Regularization of Convolutional Neural Networks with Cutout, arXiv 2017",
    url="https://arxiv.org/abs/1708.04552",
    params=(
        Param("fraction", float, 0.5, "side of the square as a fraction of the image side", low=0.0, high=1.0),
        Param("prob", float, 1.0, "probability that an image gets a square", low=0.0, high=1.0),
    ),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
''',
    "merging": '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch

from harness import Method, Param, hookimpl
from harness.kinds import MergeContext, Merging


class TaskArithmetic(Merging):
    """theta = theta_base + scale * sum_t (theta_t - theta_base), tensor by tensor."""

    def __init__(self, ctx: MergeContext, scale: float = 0.3):
        self.scale = scale

    def merge(
        self, base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]], ctx: MergeContext
    ) -> dict[str, torch.Tensor]:
        merged = {}
        for key, value in base.items():
            if not value.is_floating_point():  # integer buffers (BatchNorm's num_batches_tracked)
                merged[key] = value.clone()
                continue
            task_vectors = sum(expert[key] - value for expert in experts)
            merged[key] = value + self.scale * task_vectors  # new tensors: never change the inputs
        return merged


$CONST = Method(
    name="$method",
    kind="merging",
    build=TaskArithmetic,
    summary="task arithmetic: add the scaled sum of the experts' task vectors to the base",
    paper="Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
    url="https://arxiv.org/abs/2212.04089",
    params=(Param("scale", float, 0.3, "scaling coefficient lambda of the summed task vectors", low=0.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
''',
    "unlearning": '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness import Method, Param, hookimpl
from harness.kinds import UnlearnContext, Unlearning


class FineTuneOnRetain(Unlearning):
    """Keep training on the retain set only, so the forget set fades (catastrophic forgetting)."""

    def __init__(self, ctx: UnlearnContext, budget: float = 1.0):
        self.budget = budget

    def unlearn(
        self,
        model: nn.Module,
        forget: tuple[torch.Tensor, torch.Tensor],
        retain: tuple[torch.Tensor, torch.Tensor],
        ctx: UnlearnContext,
    ) -> nn.Module:
        x, y = retain
        optimizer = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=0.9)
        model.train()
        for _ in range(max(1, round(self.budget * ctx.epochs))):
            order = torch.randperm(len(y), device=y.device)  # torch's generator, seeded by the suite
            for start in range(0, len(y), ctx.batch_size):
                batch = order[start : start + ctx.batch_size]
                if len(batch) < 2:  # BatchNorm cannot train on a batch of one
                    continue
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return model


$CONST = Method(
    name="$method",
    kind="unlearning",
    build=FineTuneOnRetain,
    summary="fine-tune on the retain set only (the 'Fine-tune' unlearning baseline)",
    paper=(
        "Golatkar, Achille & Soatto, Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks, "
        "CVPR 2020"
    ),
    url="https://arxiv.org/abs/1911.04933",
    params=(Param("budget", float, 1.0, "fraction of the suite's epoch budget to train", low=0.0, high=1.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
''',
    "tta": '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness import Method, Param, hookimpl
from harness.kinds import AdaptContext, Adapter, TestTimeAdaptation

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchNormAdapter(Adapter):
    """Normalises each test batch with its own statistics, mixed with the source model's."""

    def __init__(self, model: nn.Module, source_weight: float):
        self.source = model
        self.source_weight = source_weight
        self.reset()

    def reset(self) -> None:
        self.model = copy.deepcopy(self.source).eval()  # the source model itself is never changed
        self.norms = [m for m in self.model.modules() if isinstance(m, BATCH_NORMS)]
        self.source_stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in self.norms]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for bn in self.norms:
            bn.train()
            bn.momentum = 1.0  # running statistics <- this batch's statistics
        self.model(x)
        w = self.source_weight  # N / (N + n) in the paper
        for bn, (mean, var) in zip(self.norms, self.source_stats, strict=True):
            bn.running_mean.mul_(1 - w).add_(w * mean)
            bn.running_var.mul_(1 - w).add_(w * var)
        self.model.eval()
        return self.model(x)


class BatchNormAdaptation(TestTimeAdaptation):
    def __init__(self, ctx: AdaptContext, source_weight: float = 0.0):
        self.source_weight = source_weight

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        return BatchNormAdapter(model, self.source_weight)


$CONST = Method(
    name="$method",
    kind="tta",
    build=BatchNormAdaptation,
    summary="BatchNorm adaptation: normalise with statistics of the test batches (mixed with the source's)",
    paper=(
        "Schneider et al., Improving robustness against common corruptions by covariate shift adaptation, "
        "NeurIPS 2020"
    ),
    url="https://arxiv.org/abs/2006.16971",
    params=(
        Param("source_weight", float, 0.0, "weight of the source statistics (N / (N + n))", low=0.0, high=1.0),
    ),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
''',
}

_TEST_HEADER = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations
'''

TESTS = {
    "loss": _TEST_HEADER + '''
import math

import torch

from harness.kinds import LossContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a few training steps on real data, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_value_by_hand():
    # equal logits: p = 1/K everywhere, so CE = log K and H(p) = log K: L = (1 - beta) log K
    k = 4
    ctx = LossContext(num_classes=k, class_counts=(10,) * k, dataset_size=10 * k, epochs=1)
    loss = $CONST.build(ctx, beta=0.25)
    value = loss(torch.zeros(3, k), torch.tensor([0, 1, 2]), torch.arange(3))
    assert math.isclose(value.item(), 0.75 * math.log(k), rel_tol=1e-6)
''',
    "augmentation": _TEST_HEADER + '''
import torch

from harness.kinds import AugmentContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a batch and a training epoch on real data, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_one_clipped_square_per_image_by_hand():
    aug = $CONST.build(AugmentContext(num_classes=10, epochs=1), fraction=0.5, prob=1.0)
    x, y = torch.ones(64, 1, 8, 8), torch.arange(64) % 10
    out, targets = aug(x, y, torch.Generator().manual_seed(0))
    zeros = (out == 0).flatten(1).sum(dim=1)
    # a 4x4 square, clipped at the borders: between 2x2 (centre in a corner) and 4x4 pixels
    assert bool(((zeros >= 4) & (zeros <= 16)).all()) and bool((zeros == 16).any())
    assert torch.equal(targets, y) and bool((x == 1).all())  # labels kept, input untouched
''',
    "merging": _TEST_HEADER + '''
import torch

from harness.kinds import MergeContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a merge of tiny state dicts, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_value_by_hand():
    # base 0, experts 1 and 3: task vectors sum to 4, so scale 0.5 gives 2; integer buffers kept
    merger = $CONST.build(MergeContext(num_tasks=2), scale=0.5)
    base = {"w": torch.zeros(3), "steps": torch.tensor(7)}
    experts = [{"w": torch.ones(3), "steps": torch.tensor(1)}, {"w": torch.full((3,), 3.0), "steps": torch.tensor(2)}]
    merged = merger.merge(base, experts, MergeContext(num_tasks=2))
    assert torch.equal(merged["w"], torch.full((3,), 2.0)) and int(merged["steps"]) == 7
''',
    "unlearning": _TEST_HEADER + '''
import torch
from torch import nn

from harness.kinds import UnlearnContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, unlearning on a tiny model, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_it_trains_with_the_suites_learning_rate():
    # lr = 0 from the suite's budget: no parameter may move (the method must not bring its own lr)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20) % 3
    ctx = UnlearnContext(num_classes=3, epochs=2, lr=0.0, batch_size=8)
    out = $CONST.build(ctx).unlearn(model, (x[:4], y[:4]), (x[4:], y[4:]), ctx)
    assert all(torch.equal(a, b) for a, b in zip(before, out.parameters(), strict=True))
''',
    "tta": _TEST_HEADER + '''
import copy

import torch
from torch import nn

from harness.kinds import AdaptContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, batch-by-batch adaptation of a tiny model, reset, finite, deterministic
    harness_check_method($CONST)


def test_source_weight_zero_ignores_the_source_statistics():
    # with source_weight = 0 the logits cannot depend on the source model's running statistics
    torch.manual_seed(0)
    clean = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)).eval()
    shifted = copy.deepcopy(clean)
    shifted[1].running_mean.fill_(100.0)
    x = torch.randn(16, 1, 6, 6)
    method = $CONST.build(AdaptContext(num_classes=3), source_weight=0.0)
    a = method.adapt(clean, AdaptContext(num_classes=3))(x)
    b = method.adapt(shifted, AdaptContext(num_classes=3))(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert float(shifted[1].running_mean[0]) == 100.0  # the source model is left alone
''',
}
