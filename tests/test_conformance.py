"""The conformance kit: every installed method passes it, and it catches what it claims to catch.

The first test is parametrized over the installed registry (timm's habit): a new built-in
method is checked by being registered. The rest give the checker small methods of every kind,
one good and one with a known defect each, since merging, unlearning and TTA have no built-ins.
"""

from __future__ import annotations

import copy
import inspect
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
    def __init__(self, ctx, weight: float):
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

    def __init__(self, ctx, lam: float):
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
    def __init__(self, ctx, weight: float):
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
    def __init__(self, ctx, steps: int):
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
    def __init__(self, ctx, unused: bool):
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


LAM = Param("lam", float, 0.7, "weight of the original batch", low=0.0, high=1.0)
MERGE_WEIGHT = Param("weight", float, 1.0, "step towards the mean", low=0.0)
STEPS = Param("steps", int, 2, "SGD steps on the retain set", low=1)
UNUSED = Param("unused", bool, True, "a bool, to round-trip")

GOOD = [
    loss_method("t_plain_ce", PlainCE),
    method("augmentation", "t_blend", Blend, (LAM,)),
    method("merging", "t_average", Average, (MERGE_WEIGHT,)),
    method("unlearning", "t_finetune", FineTuneRetain, (STEPS,)),
    method("tta", "t_bn_adapt", BNAdapt, (UNUSED,)),
]


@pytest.mark.parametrize("good", GOOD, ids=lambda m: m.kind)
def test_a_good_method_of_every_kind_passes(good, harness_catalog):
    report = check_method(good, catalog=harness_catalog)
    assert report.ok and "runs" in report.passed and "deterministic" in report.passed
    if any(good.kind in suite.ranked_kind_names(harness_catalog) for suite in harness_catalog.suites):  # the run-id round trip ran
        assert "cli round-trip (run ids)" not in report.skipped
    else:
        assert "no installed suite ranks" in report.skipped["cli round-trip (run ids)"]


@pytest.mark.parametrize(
    ("bad", "check", "fragment"),
    [
        (loss_method("t_leaky", LeakyStateCE), "deterministic", "same seed"),
        (loss_method("t_nan", NaNLoss), "runs", "nan"),
        (loss_method("t_log_softmax", LogOfSoftmax), "finite at confident logits", "confident logits"),
        (method("augmentation", "t_in_place", InPlaceBadTargets, (LAM,)), "runs", "sum to 1"),
        (method("merging", "t_in_place_merge", InPlaceFloatAverage, (MERGE_WEIGHT,)), "runs", "num_batches_tracked"),
        (method("unlearning", "t_no_return", ForgetsToReturn, (STEPS,)), "runs", "must return an nn.Module"),
        (method("tta", "t_no_reset", BNAdaptNoReset, (UNUSED,)), "runs", "reset"),
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


class DriftedDefaultCE(PlainCE):
    """Its build declares weight=0.5 while the Param says 1.0: a second default that has drifted."""

    def __init__(self, ctx, weight: float = 0.5):
        super().__init__(ctx, weight)


class RepeatedDefaultCE(PlainCE):
    """Its build repeats the Param's default: harmless today, a copy that can drift tomorrow."""

    def __init__(self, ctx, weight: float = 1.0):
        super().__init__(ctx, weight)


def test_a_build_default_that_differs_from_its_param_fails_the_declaration(harness_catalog):
    report = run_checks(loss_method("t_drifted_default", DriftedDefaultCE), catalog=harness_catalog)
    assert "declaration" in report.failures, report
    message = report.failures["declaration"]
    assert "weight=0.5" in message and "default is 1.0" in message


def test_a_build_that_repeats_its_params_default_passes_with_a_note(harness_catalog):
    report = run_checks(loss_method("t_repeated_default", RepeatedDefaultCE), catalog=harness_catalog)
    assert report.ok and "declaration" in report.passed, report
    assert any("repeats the default of weight" in note for note in report.notes), report.notes


def test_no_installed_build_repeats_a_default():
    """Each default is written once, on its Param: the core always passes every hyper-parameter."""
    repeated = []
    for m in load_catalog().methods:
        signature = inspect.signature(m.build)
        for p in m.params:
            declared = signature.parameters.get(p.name)
            if declared is not None and declared.default is not inspect.Parameter.empty:
                repeated.append(f"{m.name}.{p.name}")
    assert not repeated, f"builds that repeat their Params' defaults: {repeated}"


def test_a_method_whose_name_is_taken_fails_the_round_trip(harness_catalog):
    impostor = loss_method("ce", PlainCE)
    report = run_checks(impostor, catalog=harness_catalog)
    assert "already registered" in report.failures["registers"]
    assert "runs" not in report.passed  # it never ran in place of the installed method


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


def _doc_section(title: str, level: str = "###") -> str:
    """The text of the section `<level> <title>` of docs/writing-plugins.md, up to the next heading of
    the same or a higher level."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.md").read_text()
    heading = f"\n{level} {title}\n"
    assert heading in docs, f"docs/writing-plugins.md has no section {heading.strip()!r}"
    section = docs.split(heading, 1)[1].split("\n## ", 1)[0]
    return section.split("\n### ", 1)[0] if level == "###" else section


def _doc_module(title: str, level: str = "###", must_have: str = "@hookimpl"):
    """The one complete example module of a docs section (a block with `Method(` and `must_have`),
    executed as a module (a plugin object the catalog can register)."""
    import re
    import types

    blocks = [b for b in re.findall(r"```python\n(.*?)```", _doc_section(title, level), re.S) if "Method(" in b and must_have in b]
    assert len(blocks) == 1, f"the section {title!r} of docs/writing-plugins.md has {len(blocks)} complete examples, expected one"
    module = types.ModuleType("docs_example_" + re.sub(r"\W+", "_", title))
    exec(compile(blocks[0], f"docs/writing-plugins.md ({title})", "exec"), module.__dict__)
    return module


def _doc_example(title: str) -> Method:
    """The `Method` declared by the complete example of the section `### <title>`."""
    (found,) = [v for v in vars(_doc_module(title)).values() if isinstance(v, Method)]
    return found


@pytest.mark.parametrize("kind", ["augmentation", "optimizer", "merging", "unlearning", "tta", "strategy"])
def test_the_docs_example_of_every_kind_is_complete_and_conforms(kind, harness_catalog):
    example = _doc_example(kind)
    assert example.kind == kind
    check_method(example, catalog=harness_catalog)


def test_the_docs_center_loss_conforms_and_receives_the_penultimate_features(harness_catalog):
    from harness.conformance import CHECK_RECIPE, loss_context, normalizer_of, tiny_data, tiny_model
    from harness.engine import train
    from harness.seams import Batch, Outputs

    example = _doc_example("a loss that reads the penultimate features")
    assert example.kind == "loss" and example.defaults() == {"lam": 0.01, "alpha": 0.5}
    check_method(example, catalog=harness_catalog)

    data = tiny_data()
    loss = example.create(loss_context(data, epochs=1))
    assert loss.uses_features and not loss.accepts_soft_targets and loss.centers is None
    model = tiny_model(data, 0)
    train(model, data.train_x, data.train_y, recipe={**CHECK_RECIPE, "epochs": 1}, parts=[loss], normalizer=normalizer_of(data), seed=0, device="cpu")
    # one center per class, as wide as the classifier's input: the loss was handed the features
    assert loss.centers.shape == (data.num_classes, model.classifier.in_features)
    assert bool((loss.centers.abs().sum(dim=1) > 0).all()), "every class's center should have moved towards its features"

    # Eq. 4 by hand, alpha = 0.5, centers at 0: class 0 has f = (2, 0), (4, 0): delta = -(6, 0) / 3,
    # c_0 = (1, 0); class 1 has f = (1, 1): delta = -(1, 1) / 2, c_1 = (0.25, 0.25); class 2 has none
    loss = example.create(loss_context(data), alpha=0.5, lam=1.0)
    features, y = torch.tensor([[2.0, 0.0], [4.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 0, 1])
    logits = torch.zeros(3, data.num_classes)
    batch = Batch(torch.zeros(3, 1, 8, 8), y, torch.arange(3))
    value = loss.objective(batch, Outputs(logits, features))
    # the loss uses the centers before the update (zero): CE = log K, lam/2 * mean ||f||^2 = (4 + 16 + 2) / 6
    assert float(value) == pytest.approx(float(torch.log(torch.tensor(10.0))) + 22 / 6, rel=1e-6)
    expected = torch.zeros(data.num_classes, 2)
    expected[0], expected[1] = torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.25])
    assert torch.allclose(loss.centers, expected)
    # an extra pass of the same step (SAM's) uses the step's centers and moves none
    again = loss.objective(batch, Outputs(logits, features, recomputed=True))
    assert float(again) == pytest.approx(float(value)) and torch.allclose(loss.centers, expected)


def test_the_docs_gradient_centralization_zeroes_each_rows_gradient_mean_before_the_step():
    from harness.seams import TrainContext

    rule = _doc_example("optimizer").create(TrainContext(num_classes=2, class_counts=(1, 1), dataset_size=2, epochs=1))
    g_w, g_b = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 7.0]]), torch.tensor([5.0, -1.0])

    def centralised(weight_decay: float):
        w, b = nn.Parameter(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])), nn.Parameter(torch.ones(2))
        seen = {}

        class Recording(torch.optim.SGD):
            def step(self, closure=None):  # what the base optimiser receives
                seen["w"], seen["b"] = w.grad.clone(), b.grad.clone()
                return super().step(closure)

        optimizer = Recording([w, b], lr=1.0, weight_decay=weight_decay)

        def step(recomputed=False):
            optimizer.zero_grad()
            loss = (g_w * w).sum() + (g_b * b).sum()
            loss.backward()
            return loss.detach()

        rule.update(step, optimizer)
        return seen, w.detach()

    seen, _ = centralised(0.0)
    # row means 2 and 5 removed by hand; the 1-D bias gradient is left alone
    assert torch.equal(seen["w"], torch.tensor([[-1.0, 0.0, 1.0], [-1.0, -1.0, 2.0]]))
    assert torch.equal(seen["w"].mean(dim=1), torch.zeros(2)) and torch.equal(seen["b"], g_b)
    # with weight decay, what SGD steps along (grad + decay * w) is what has zero row means
    seen, after = centralised(0.1)
    w0 = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    assert torch.allclose((seen["w"] + 0.1 * w0).mean(dim=1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(after, w0 - (seen["w"] + 0.1 * w0), atol=1e-6)


def test_the_docs_kind_example_registers_a_training_kind_whose_method_conforms():
    from harness.seams import Batch, Outputs

    module = _doc_module("Adding a kind", level="##", must_have="harness_register_kinds")
    catalog = load_catalog(plugins=((module, "docs-regularizers"),))
    assert catalog.plugins["docs-regularizers"].ok, catalog.plugins["docs-regularizers"].error
    kind = catalog.kinds.get("regularizer")
    assert kind.trains and kind.plugin == "docs-regularizers"
    assert "regularizer" in catalog.suites.get("long_tail").ranked_kind_names(catalog)  # it ranks "training"
    method = catalog.methods.get("confidence_penalty")
    report = check_method(method, catalog=catalog)
    assert "runs" in report.passed and "cli round-trip (run ids)" not in report.skipped
    # equal logits: the entropy is log K, so the term is -beta * log K
    batch = Batch(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 2]), torch.arange(3))
    term = method.create(None, beta=0.5).extra_loss(batch, Outputs(torch.zeros(3, 4)))
    assert float(term) == pytest.approx(-0.5 * float(torch.log(torch.tensor(4.0))))


def test_every_example_of_the_training_seam_section_runs():
    import re

    from harness.seams import Role

    blocks = re.findall(r"```python\n(.*?)```", _doc_section("The training seam", level="##"), re.S)
    defined: dict = {}
    trying = [b for b in blocks if "train(" in b and "class " not in b]
    assert len(trying) == 1, "the training-seam section should show one way of trying parts without a plugin"
    for i, block in enumerate(b for b in blocks if b not in trying):
        namespace: dict = {"__name__": f"docs_seam_example_{i}"}
        exec(compile(block, f"docs/writing-plugins.md (training seam, example {i})", "exec"), namespace)
        defined.update({k: v for k, v in namespace.items() if isinstance(v, type) and issubclass(v, Role) and v.__module__ == namespace["__name__"]})
    expected = {"RandomFlip", "CenterLoss", "ConfidencePenalty", "FrozenClassifier", "Distillation", "MutualLearning", "JustTrainTwice",
                "FlipConsistency", "MirrorAveraging", "GroupDRO"}
    assert expected <= set(defined), f"missing worked examples: {sorted(expected - set(defined))}"
    namespace = {"__name__": "docs_seam_trying", "ConfidencePenalty": defined["ConfidencePenalty"]}
    exec(compile(trying[0], "docs/writing-plugins.md (trying parts)", "exec"), namespace)
    assert len(namespace["log"].train_loss) == 2 and 0.0 <= float(namespace["accuracy"]) <= 1.0
