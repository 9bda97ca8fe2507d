"""The conformance kit: every installed method passes it, and it catches what it claims to catch.

The first test is parametrized over the installed registry (timm's habit): a new built-in
method is checked by being registered. The rest give the checker small methods of every kind,
one good and one with a known defect each, since merging, unlearning and TTA have no built-ins.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.catalog import load_catalog
from harness.conformance import ConformanceError, check_method, run_checks
from harness.kinds import Adapter, Augmentation, Loss, Merging, Method, TestTimeAdaptation, Unlearning
from harness.params import Param

INSTALLED = [m.name for m in load_catalog().methods]


@pytest.mark.parametrize("name", INSTALLED)
def test_every_installed_method_conforms(name, harness_check_method):
    report = harness_check_method(name)
    assert {"declaration", "runs", "finite", "deterministic", "cli round-trip"} <= set(report.passed)


# ---------------------------------------------------------------------------------------------
# small methods of every kind
# ---------------------------------------------------------------------------------------------


class PlainCE(Loss):
    def __init__(self, ctx, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, logits, targets, index):
        if targets.dtype.is_floating_point:
            return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean() * self.weight
        return F.cross_entropy(logits, targets) * self.weight


_calls = itertools.count()


class LeakyStateCE(PlainCE):
    """State shared across instances (a module-level counter): two identical runs differ."""

    def forward(self, logits, targets, index):
        return super().forward(logits, targets, index) * (1 + 1e-3 * next(_calls))


class NaNLoss(PlainCE):
    def forward(self, logits, targets, index):
        return super().forward(logits, targets, index) * float("nan")


class LogOfSoftmax(PlainCE):
    """log(softmax) instead of log_softmax: fine at small logits, -inf once a probability underflows."""

    accepts_soft_targets = False

    def forward(self, logits, targets, index):
        return -torch.log(F.softmax(logits, dim=1)).gather(1, targets.view(-1, 1)).mean()


WEIGHT = Param("weight", float, 1.0, "scale of the loss", low=0.0)


def loss_method(name, build, params=(WEIGHT,), **kw):
    return Method(name, "loss", build, f"{name} test loss", "test fixture, no paper", params=params, **kw)


class Blend(Augmentation):
    """Mixup with a fixed lam: a new tensor, soft targets that sum to 1."""

    def __init__(self, ctx, lam: float = 0.7):
        self.k, self.lam = ctx.num_classes, lam

    def __call__(self, x, y, generator):
        perm = torch.randperm(len(x), generator=generator, device=x.device)
        t = F.one_hot(y, self.k).float() if not y.dtype.is_floating_point else y
        return self.lam * x + (1 - self.lam) * x[perm], self.lam * t + (1 - self.lam) * t[perm]


class InPlaceBadTargets(Blend):
    def __call__(self, x, y, generator):
        x.mul_(0.5)  # writes into the engine's batch
        return x, F.one_hot(y, self.k).float() * 2  # rows sum to 2


class Average(Merging):
    def __init__(self, ctx, weight: float = 1.0):
        self.weight = weight

    def merge(self, base, experts, ctx):
        out = {}
        for key, value in base.items():
            if not value.is_floating_point():
                out[key] = value.clone()
                continue
            mean = torch.stack([e[key] for e in experts]).mean(dim=0)
            out[key] = value + self.weight * (mean - value)
        return out


class InPlaceFloatAverage(Average):
    def merge(self, base, experts, ctx):
        for key, value in base.items():
            base[key] = value.float()  # changes the integer buffers' dtype ...
            if value.is_floating_point():
                value.add_(experts[0][key] - value)  # ... and writes into the base
        return base


class FineTuneRetain(Unlearning):
    def __init__(self, ctx, steps: int = 2):
        self.steps = steps

    def unlearn(self, model, forget, retain, ctx):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.lr)
        x, y = retain
        for step in range(self.steps):
            xb, yb = x[step * ctx.batch_size : (step + 1) * ctx.batch_size], y[step * ctx.batch_size : (step + 1) * ctx.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        return model


class ForgetsToReturn(FineTuneRetain):
    def unlearn(self, model, forget, retain, ctx):
        super().unlearn(model, forget, retain, ctx)


class BatchStatsAdapter(Adapter):
    def __init__(self, model):
        self.source = model
        self.reset()

    def reset(self):
        self.model = copy.deepcopy(self.source)
        for m in self.model.modules():
            if isinstance(m, nn.BatchNorm2d):  # restart the statistics from the test batches
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches seen

    @torch.no_grad()
    def __call__(self, x):
        self.model.train()  # update the BN statistics with this batch ...
        self.model(x)
        self.model.eval()  # ... and predict with everything seen so far
        return self.model(x)


class BNAdapt(TestTimeAdaptation):
    def __init__(self, ctx, unused: bool = True):
        pass

    def adapt(self, model, ctx):
        return BatchStatsAdapter(model)


class NoResetAdapter(BatchStatsAdapter):
    def __init__(self, model):
        super().__init__(model)
        self.reset = lambda: None  # reset forgets to restore the source statistics


class BNAdaptNoReset(BNAdapt):
    def adapt(self, model, ctx):
        return NoResetAdapter(model)


def method(kind, name, build, params=()):
    return Method(name, kind, build, f"{name} test method", "test fixture, no paper", params=params)


GOOD = [
    loss_method("t_plain_ce", PlainCE),
    method("augmentation", "t_blend", Blend, (Param("lam", float, 0.7, "weight of the original batch", low=0.0, high=1.0),)),
    method("merging", "t_average", Average, (Param("weight", float, 1.0, "step towards the mean", low=0.0),)),
    method("unlearning", "t_finetune", FineTuneRetain, (Param("steps", int, 2, "SGD steps on the retain set", low=1),)),
    method("tta", "t_bn_adapt", BNAdapt, (Param("unused", bool, True, "a bool, to round-trip"),)),
]


@pytest.mark.parametrize("good", GOOD, ids=lambda m: m.kind)
def test_a_good_method_of_every_kind_passes(good, harness_catalog):
    report = check_method(good, catalog=harness_catalog)
    assert report.ok and "runs" in report.passed and "deterministic" in report.passed
    if any(good.kind in suite.ranks for suite in harness_catalog.suites):  # the run-id round trip ran
        assert "cli round-trip (run ids)" not in report.skipped
    else:
        assert "no installed suite ranks" in report.skipped["cli round-trip (run ids)"]


@pytest.mark.parametrize(
    ("bad", "check", "fragment"),
    [
        (loss_method("t_leaky", LeakyStateCE), "deterministic", "same seed"),
        (loss_method("t_nan", NaNLoss), "runs", "nan"),
        (loss_method("t_log_softmax", LogOfSoftmax), "finite at confident logits", "confident logits"),
        (method("augmentation", "t_in_place", InPlaceBadTargets, (Param("lam", float, 0.7, "unused"),)), "runs", "sum to 1"),
        (method("merging", "t_in_place_merge", InPlaceFloatAverage), "runs", "num_batches_tracked"),
        (method("unlearning", "t_no_return", ForgetsToReturn), "runs", "must return an nn.Module"),
        (method("tta", "t_no_reset", BNAdaptNoReset), "runs", "reset"),
    ],
    ids=lambda v: v.name if isinstance(v, Method) else None,
)
def test_a_defect_fails_the_check_that_names_it(bad, check, fragment, harness_catalog):
    report = run_checks(bad, catalog=harness_catalog)
    assert check in report.failures, report
    assert fragment in report.failures[check]


def test_every_failure_is_listed_in_one_assertion_error(harness_catalog):
    # an int default for a float parameter: the CLI would give 1.0 and a different run id
    bad = loss_method("t_int_default", LeakyStateCE, params=(Param("weight", float, 1, "an int default"),))
    with pytest.raises(AssertionError) as info:
        check_method(bad, catalog=harness_catalog)
    err = info.value
    assert isinstance(err, ConformanceError)
    assert set(err.failures) == {"declaration", "deterministic", "cli round-trip"}
    assert "write it as 1.0" in err.failures["declaration"]
    assert "parses to 1.0, not the default 1" in err.failures["cli round-trip"]
    text = str(err)
    assert "failed 3 conformance check(s)" in text and all(f"- {c}:" in text for c in err.failures)


def test_a_method_whose_name_is_taken_fails_the_round_trip(harness_catalog):
    impostor = loss_method("ce", PlainCE)
    report = run_checks(impostor, catalog=harness_catalog)
    assert "already registered" in report.failures["cli round-trip"]


def test_an_uninstalled_method_is_added_to_the_catalog_for_the_round_trip(harness_catalog):
    check_method(GOOD[0], catalog=harness_catalog)
    assert harness_catalog.methods.get("t_plain_ce").build is PlainCE
    assert "t_plain_ce" not in load_catalog().methods  # the installed catalog is untouched


def test_the_fixtures_are_provided_by_the_installed_pytest_plugin(request, harness_tiny_data):
    assert request.config.pluginmanager.has_plugin("harness")  # the pytest11 entry point
    assert harness_tiny_data.train_x.dtype == torch.uint8 and harness_tiny_data.train_x.shape[1:] == (1, 8, 8)
    assert len(harness_tiny_data.train_y) == 256 and harness_tiny_data.num_classes == 10


# ---------------------------------------------------------------------------------------------
# the docs' examples are complete and conform (so the docs cannot drift from the interfaces)
# ---------------------------------------------------------------------------------------------


def _doc_example(kind: str) -> Method:
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.md").read_text()
    section = docs.split(f"\n### {kind}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "Method(" in b and "@hookimpl" in b]
    assert len(blocks) == 1, f"the {kind} section of docs/writing-plugins.md has no complete example"
    namespace: dict = {"__name__": f"docs_example_{kind}"}
    exec(compile(blocks[0], f"docs/writing-plugins.md ({kind})", "exec"), namespace)
    (found,) = [v for v in namespace.values() if isinstance(v, Method)]
    return found


@pytest.mark.parametrize("kind", ["augmentation", "merging", "unlearning", "tta"])
def test_the_docs_example_of_every_kind_is_complete_and_conforms(kind, harness_catalog):
    example = _doc_example(kind)
    assert example.kind == kind
    check_method(example, catalog=harness_catalog)
