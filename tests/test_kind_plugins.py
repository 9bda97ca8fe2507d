"""A kind is a plugin: a third-party package registers a new kind and a method of it, and the kind
works end to end (list, run, leaderboard, conformance, new-plugin) without any core edit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_scaffold import harness_cmd, install_to

from harness.catalog import load_catalog
from harness.hookspecs import hookimpl
from harness.kind import Kind
from harness.seams import LossTerm

TOY_KIND_MODULE = '''\
"""A toy kind `regularizer`: a term added to the entry's loss, and one method of it."""

from __future__ import annotations

from typing import Any

import torch

from harness import Method, Param, hookimpl
from harness.kind import Kind, KindScaffold
from harness.seams import LossTerm


class Regularizer(LossTerm):
    """A term added to the training loss; `extra_loss(batch, out)` returns a scalar."""


class LogitSquares(Regularizer):
    """lam * mean(z^2): keeps the logits small (a logit penalty)."""

    def __init__(self, ctx: Any, lam: float):
        self.lam = lam

    def extra_loss(self, batch, out):
        return self.lam * out.logits.pow(2).mean()


def check(method: Any, env: Any) -> Any:
    from harness.conformance import run_training_method

    return run_training_method(method, env)


METHODS_TEMPLATE = """\\
from harness import Method, Param, hookimpl
from harness_toy_kind import Regularizer


class Zero(Regularizer):
    def __init__(self, ctx, weight: float):
        self.weight = weight

    def extra_loss(self, batch, out):
        return self.weight * 0.0 * out.logits.sum()


$CONST = Method(name="$method", kind="$kind", build=Zero, summary="a zero term", paper="none (a template)",
                params=(Param("weight", float, 1.0, "unused weight", low=0.0),))


@hookimpl
def harness_register_methods(register):
    register($CONST)
"""

TESTS_TEMPLATE = """\\
from $package.methods import $CONST


def test_conforms(harness_check_method):
    harness_check_method($CONST)


def test_it_is_zero():
    import torch
    from harness.seams import Batch, Outputs
    term = $CONST.create(None).extra_loss(Batch(torch.zeros(1), torch.zeros(1), torch.zeros(1)), Outputs(torch.ones(2, 3)))
    assert float(term) == 0.0
"""

KIND = Kind(
    name="regularizer",
    summary="a term added to the entry's training loss",
    interface=Regularizer,
    order=35,
    trains=True,
    context=lambda ctx: ctx,
    check=check,
    scaffold=KindScaffold("a zero regulariser", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="long_tail",
)

LOGIT_SQUARES = Method(
    name="logit_squares",
    kind="regularizer",
    build=LogitSquares,
    summary="lam times the mean squared logit, added to the loss",
    paper="a toy method of a toy kind",
    params=(Param("lam", float, 0.01, "weight of the penalty", low=0.0),),
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)


@hookimpl
def harness_register_methods(register):
    register(LOGIT_SQUARES)
'''

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "harness-toy-kind"
version = "0.3.0"
dependencies = []

[project.entry-points.harness]
toy_kind = "harness_toy_kind"

[tool.setuptools]
py-modules = ["harness_toy_kind"]
'''


class ToyTerm(LossTerm):
    def __init__(self, ctx):
        self.ctx = ctx


def test_a_kind_registered_in_process_joins_the_catalog_and_an_unknown_kind_is_named():
    class ToyPlugin:
        @hookimpl
        def harness_register_kinds(self, register):
            register(Kind("toy_term", "a toy loss term", ToyTerm, order=90, trains=True, context=lambda ctx: ctx))

    catalog = load_catalog(plugins=((ToyPlugin(), "toy"),))
    kind = catalog.kinds.get("toy_term")
    assert kind.plugin == "toy" and kind.trains
    long_tail = catalog.suites.get("long_tail")
    assert "toy_term" in long_tail.accepted_kind_names(catalog)  # every suite that ranks "training" takes it
    with pytest.raises(ValueError, match="needs `context`"):
        Kind("broken", "a training kind without a context", ToyTerm, order=1, trains=True)


@pytest.mark.slow
def test_a_third_party_kind_lists_runs_ranks_conforms_and_scaffolds(tmp_path):
    source = tmp_path / "harness-toy-kind"
    source.mkdir()
    (source / "harness_toy_kind.py").write_text(TOY_KIND_MODULE)
    (source / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path / "site"
    install_to(source, site, tmp_path)

    kinds = harness_cmd("list", "kinds", pythonpath=site, cwd=tmp_path)
    assert kinds.returncode == 0, kinds.stderr
    row = next(line for line in kinds.stdout.splitlines() if line.startswith("regularizer"))
    assert "logit_squares" in row and "harness-toy-kind 0.3.0" in row

    results = tmp_path / "results"
    ran = harness_cmd("run", "suite=long_tail", "method=logit_squares", "seeds=1", "epochs=1", f"results={results}", pythonpath=site, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "ce+logit_squares" in ran.stdout  # a kind without an objective trains with the suite's baseline loss

    board = harness_cmd("leaderboard", "suite=long_tail", "format=csv", f"results={results}", pythonpath=site, cwd=tmp_path)
    assert board.returncode == 0 and "ce+logit_squares" in board.stdout, board.stderr

    conforms = subprocess.run(
        [sys.executable, "-c", "from harness.conformance import check_method; r = check_method('logit_squares'); print(sorted(r.passed))"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, timeout=300,
    )
    assert conforms.returncode == 0, conforms.stderr[-3000:]
    assert "'deterministic'" in conforms.stdout and "'runs'" in conforms.stdout

    made = harness_cmd("new-plugin", "my-regs", "kind=regularizer", f"dir={tmp_path / 'my-regs'}", pythonpath=site, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "my-regs"
    methods = (root / "harness_my_regs" / "methods.py").read_text()
    assert 'kind="regularizer"' in methods and "suite=long_tail" in made.stdout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(root)])}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout


def test_the_core_holds_no_table_of_kind_names():
    # the built-in kinds come through entry points like any plugin; the core modules name none of them
    root = Path(__file__).resolve().parent.parent / "harness"
    core = [p for p in root.glob("*.py") if p.name not in {"testing.py"}]
    for path in core:
        text = path.read_text()
        for kind in ("augmentation", "merging", "unlearning", "strategy", "optimizer", "tta"):
            assert f'"{kind}"' not in text, f"{path.name} names the kind {kind!r}: kinds belong in their own modules"
