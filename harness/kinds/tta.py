"""Kind `tta`: test-time adaptation of a trained model, online, batch by batch.

`build(ctx: AdaptContext, **hp)` returns a `TestTimeAdaptation`; a suite that ranks it calls
`adapt(model, ctx) -> Adapter`, then `adapter(x) -> logits` per test batch and `adapter.reset()`
where its protocol restarts adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold


@dataclass
class AdaptContext:
    num_classes: int
    device: str = "cpu"


class Adapter:
    """Online predictor: `adapter(x) -> logits` batch by batch (and may update itself); `reset()`
    restores its initial state. `facts()` returns what the suite stores with the run (e.g. how
    often the adapter recovered from a collapse); default none."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {}


class TestTimeAdaptation:
    __test__ = False  # not a pytest class

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapter:
        raise NotImplementedError


def check(method: Any, env: Any) -> Any:
    """The adapter gives K finite logits batch by batch, and `reset()` restores its first answer."""
    from harness.conformance import finite, normalizer_of, require, tiny_model

    data, seed = env.data, env.seed
    k = data.num_classes
    normalizer = normalizer_of(data)
    model = tiny_model(data, seed).eval()
    ctx = AdaptContext(num_classes=k, device="cpu")
    tta = method.create(ctx)
    require(isinstance(tta, TestTimeAdaptation), f"build returned a {type(tta).__name__}; a tta method must return a harness.kinds.tta.TestTimeAdaptation")
    torch.manual_seed(seed)
    adapter = tta.adapt(model, ctx)
    require(isinstance(adapter, Adapter), f"adapt must return a harness.kinds.tta.Adapter, got {type(adapter).__name__}")
    batches = [normalizer(data.test_x[i : i + 32]) for i in range(0, 96, 32)]
    outputs = []
    for xb in batches:
        logits = adapter(xb)
        require(isinstance(logits, torch.Tensor) and tuple(logits.shape) == (len(xb), k), f"adapter(x) must give logits [B, {k}], got {getattr(logits, 'shape', type(logits))}")
        require(finite(logits), "adapter(x) gave non-finite logits")
        outputs.append(logits.detach().clone())
    require(isinstance(adapter.facts(), dict), "facts() must return a dict")
    adapter.reset()
    torch.manual_seed(seed)
    again = adapter(batches[0]).detach()
    require(torch.equal(again, outputs[0]), "after reset() the first batch gives different logits: reset must restore the adapter's initial state")
    return {"logits": outputs}


METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness import Method, Param, hookimpl
from harness.kinds.tta import AdaptContext, Adapter, TestTimeAdaptation

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
    def __init__(self, ctx: AdaptContext, source_weight: float):  # the default lives on the Param
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
'''

TESTS_TEMPLATE = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness.kinds.tta import AdaptContext

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
    method = $CONST.create(AdaptContext(num_classes=3), source_weight=0.0)
    a = method.adapt(clean, AdaptContext(num_classes=3))(x)
    b = method.adapt(shifted, AdaptContext(num_classes=3))(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert float(shifted[1].running_mean[0]) == 100.0  # the source model is left alone
'''


KIND = Kind(
    name="tta",
    summary="adapts a trained model at test time, online, batch by batch (adapt(model) -> adapter(x) -> logits)",
    interface=TestTimeAdaptation,
    order=50,
    check=check,
    scaffold=KindScaffold("a batch-norm adaptation test-time method", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="ood",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
