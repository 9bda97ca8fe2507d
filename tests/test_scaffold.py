"""`harness new-plugin`: names, refusals, and generated packages that lint, pass their own tests,
install, list and rank exactly as the issue promises a user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.catalog import load_catalog
from harness.errors import HarnessError
from harness.scaffold import new_plugin, plugin_names, scaffold_kinds
from harness.testing import run_cli

RUFF = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")


def install_to(project: Path, target: Path, tmp: Path) -> None:
    """pip install a copy of `project` into `target` (offline; the copy keeps build/ out of the source)."""
    copy = tmp / f"src-{project.name}"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(copy)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def harness_cmd(*args: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    ("name", "package", "entry_point", "method"),
    [
        ("my-methods", "harness_my_methods", "my_methods", "my_methods_example"),
        ("harness-poly", "harness_poly", "poly", "poly_example"),
        ("lab_losses2", "harness_lab_losses2", "lab_losses2", "lab_losses2_example"),
    ],
)
def test_names_are_derived_from_the_distribution_name(name, package, entry_point, method):
    names = plugin_names(name)
    assert (names.dist, names.package, names.entry_point, names.method) == (name, package, entry_point, method)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("My Methods!", "e.g. 'my-methods'"),
        ("2fast", "starting with a letter"),
        ("my--methods", "single '-'"),
        ("harness", "choose a name that says what your methods are"),
        ("losses", "already installed"),  # a built-in entry point: it would break as a duplicate
        ("harness-bench", "choose a name"),  # pip install -e would replace harness itself
        ("torch", "distribution named 'torch' is already installed"),
    ],
)
def test_invalid_or_taken_names_are_refused_with_a_reason(name, fragment, tmp_path):
    code, _, err = run_cli("new-plugin", name, f"dir={tmp_path / 'p'}")
    assert code == 2 and fragment in err and not (tmp_path / "p").exists()


def test_an_existing_non_empty_folder_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "my-methods"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(HarnessError, match="already exists and is not empty"):
        new_plugin("my-methods", directory=target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert new_plugin("my-methods", directory=tmp_path / "empty") == tmp_path / "empty"  # a missing folder is fine
    code, _, err = run_cli("new-plugin", "my-methods", "kind=regulariser", f"dir={tmp_path / 'x'}")
    assert code == 2 and f"expected one of {', '.join(scaffold_kinds(load_catalog()))} (the installed kinds with a template)" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", scaffold_kinds(load_catalog()))
def test_generated_code_passes_ruff_and_its_own_tests(kind, tmp_path):
    root = new_plugin(f"lab-{kind}", kind=kind, directory=tmp_path / f"lab-{kind}")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(
        ["README.md", "pyproject.toml", f"harness_lab_{kind}/__init__.py", f"harness_lab_{kind}/methods.py", "tests/test_methods.py"]
    )
    lint = subprocess.run([RUFF, "check", "--no-cache", "."], cwd=root, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    env = {**os.environ, "PYTHONPATH": str(root)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout


@pytest.mark.slow
def test_new_plugin_then_install_then_list_and_rank(tmp_path):
    code, out, err = run_cli("new-plugin", "my-methods", f"dir={tmp_path / 'my-methods'}")
    assert code == 0, err
    assert "my_methods_example" in out and "pip install -e" in out
    site = tmp_path / "site"
    install_to(tmp_path / "my-methods", site, tmp_path)

    listed = harness_cmd("list", "methods", pythonpath=site, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("my_methods_example"))
    assert "loss" in row and "my-methods 0.1.0" in row and "beta: float = 0.1" in row

    ran = harness_cmd("run", "suite=long_tail", "method=my_methods_example", "epochs=1", "seeds=1", f"results={tmp_path / 'results'}", pythonpath=site, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ranked = [line.split() for line in ran.stdout.splitlines() if "my_methods_example" in line]
    assert ranked and ranked[0][0] == "1" and ranked[0][1] == "my_methods_example"
