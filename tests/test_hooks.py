"""Every hook is documented and tested (datasette's meta-test), observers fire in a pinned order
(tox 4's habit), and HARNESS_TRACE_PLUGINS shows observer calls with arguments and results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from harness import hookspecs
from harness.catalog import load_catalog
from harness.data import DatasetSource, DataSplits
from harness.hookspecs import hookimpl
from harness.models import ModelSource
from harness.runner import run_grid
from harness.spec import build_grid
from harness.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("harness_"))
OBSERVERS = ["harness_grid_start", "harness_run_start", "harness_run_progress", "harness_run_end", "harness_grid_end"]


def test_the_hook_list_is_what_this_file_expects():
    assert HOOKS == sorted(["harness_register_kinds", "harness_register_methods", "harness_register_suites", "harness_register_datasets", "harness_register_models", *OBSERVERS])


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    docs = (ROOT / "docs" / "writing-plugins.md").read_text()
    assert f"`{hook}`" in docs, f"{hook} has no entry in docs/writing-plugins.md (the 'Every hook' table)"
    assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring in harness/hookspecs.py"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    # a test implements it (def harness_x) or calls it (.harness_x( through pm.hook)
    pattern = re.compile(rf"def {hook}\(|\.{hook}\(")
    users = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if pattern.search(p.read_text())]
    assert users, f"no test implements or calls {hook}; add one that shows what it does"


# ---------------------------------------------------------------------------------------------
# registration hooks beyond methods: a suite, a dataset and a model from one plugin
# ---------------------------------------------------------------------------------------------


def _load_tiny(options):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(40) % 2
    return DataSplits("tiny2", x[:30], y[:30], x[30:], y[30:], ("a", "b"))


class Linear(nn.Module):
    def __init__(self, num_classes, in_chans, img_size):
        super().__init__()
        self.classifier = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, x):
        return self.classifier(x.flatten(1))


class RegistersEverything:
    @hookimpl
    def harness_register_suites(self, register):
        from dataclasses import replace

        from harness.catalog import load_catalog as fresh

        long_tail = fresh(allow=["long_tail"]).suites.get("long_tail")
        register(replace(long_tail, name="long_tail_copy", version="test"))

    @hookimpl
    def harness_register_datasets(self, register):
        register(DatasetSource("tiny2", "40 random 8x8 images, 2 classes", _load_tiny, offline=True))

    @hookimpl
    def harness_register_models(self, register):
        register(ModelSource("linear", "one linear layer", Linear))


def test_suite_dataset_and_model_registration_hooks_stamp_and_are_usable():
    catalog = load_catalog(plugins=((RegistersEverything(), "everything"),))
    assert catalog.plugins["everything"].registered == {"suite": ["long_tail_copy"], "dataset": ["tiny2"], "model": ["linear"]}
    assert catalog.suites.get("long_tail_copy").plugin == "everything"
    assert catalog.dataset("tiny2").load(None).num_classes == 2
    assert catalog.model("linear").build(2, 1, 8)(torch.zeros(3, 1, 8, 8)).shape == (3, 2)
    _, specs = build_grid(catalog, {"suite": "long_tail_copy", "method": "ce", "dataset": "tiny2", "model": "linear", "seeds": "1"})
    assert specs[0].suite == "long_tail_copy" and specs[0].recipe_dict()["dataset"] == "tiny2"


# ---------------------------------------------------------------------------------------------
# observers: the order in which they fire, pinned
# ---------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    @hookimpl
    def harness_grid_start(self, specs, cached):
        self.calls.append(("grid_start", len(specs), cached))

    @hookimpl
    def harness_run_start(self, spec):
        self.calls.append(("run_start", spec.entry))

    @hookimpl
    def harness_run_progress(self, spec, epoch, epochs, train_loss):
        assert train_loss > 0
        self.calls.append(("run_progress", spec.entry, epoch, epochs))

    @hookimpl
    def harness_run_end(self, spec, result):
        self.calls.append(("run_end", spec.entry, result["status"]))

    @hookimpl
    def harness_grid_end(self, stored, failed):
        self.calls.append(("grid_end", stored, failed))


def tiny_grid(catalog):
    return build_grid(catalog, {"suite": "long_tail", "method": "ce,focal", "dataset": "digits", "epochs": "2", "seeds": "1"})


def test_observer_hooks_fire_in_order(tmp_path):
    recorder = Recorder()
    catalog = load_catalog(plugins=((recorder, "recorder"),))
    suite, specs = tiny_grid(catalog)
    store = ResultStore(tmp_path)
    report = run_grid(catalog, suite, specs, store, device="cpu")
    assert report.stored == 2 and report.failed == 0
    assert recorder.calls == [
        ("grid_start", 2, 0),
        ("run_start", "ce"),
        ("run_progress", "ce", 1, 2),
        ("run_progress", "ce", 2, 2),
        ("run_end", "ce", "ok"),
        ("run_start", "focal"),
        ("run_progress", "focal", 1, 2),
        ("run_progress", "focal", 2, 2),
        ("run_end", "focal", "ok"),
        ("grid_end", 2, 0),
    ]
    # the same grid again: everything is stored, so only the grid hooks fire
    recorder.calls.clear()
    run_grid(catalog, suite, specs, store, device="cpu")
    assert recorder.calls == [("grid_start", 0, 2), ("grid_end", 0, 0)]


def test_trace_shows_observer_calls_with_arguments_and_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_TRACE_PLUGINS", "1")
    catalog = load_catalog(plugins=((Recorder(), "recorder"),))
    suite, specs = tiny_grid(catalog)
    capsys.readouterr()
    run_grid(catalog, suite, specs[:1], ResultStore(tmp_path), device="cpu")
    err = capsys.readouterr().err
    for hook in OBSERVERS:
        assert f"[harness trace]   {hook} [hook]" in err and f"finish {hook} --> []" in err
    assert "cached: 0" in err and "epoch: 2" in err and "stored: 1" in err and "'status': 'ok'" in err
    order = [err.index(f"[harness trace]   {hook} [hook]") for hook in OBSERVERS]
    assert order == sorted(order)
