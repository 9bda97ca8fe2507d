"""The example third-party plugin (examples/harness-example-plugin) installed as a user would:
built by pip into its own folder, found through its entry point by a fresh `harness` process,
listed, ranked, and its own tests passing against the installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "harness-example-plugin"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package, pip-installed (offline, no deps) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    copy = tmp / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the source
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(copy)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (target / "harness_poly1.py").is_file()
    assert "poly1 = harness_poly1" in next(target.glob("harness_poly1-*.dist-info")).joinpath("entry_points.txt").read_text()
    return target


def run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_it_is_discovered_listed_and_reported_ok(site, tmp_path):
    listed = run(["-m", "harness", "list", "methods", "poly*"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("poly1"))
    assert "loss" in row and "Leng et al." in row and "epsilon: float = 1.0" in row and "harness-poly1 0.1.0" in row
    plugins = run(["-m", "harness", "plugins"], site, tmp_path)
    row = next(line for line in plugins.stdout.splitlines() if line.startswith("poly1"))
    assert "harness-poly1 0.1.0" in row and " ok " in row and "methods: poly1" in row


def test_it_runs_and_is_ranked(site, tmp_path):
    results = tmp_path / "results"
    ran = run(["-m", "harness", "run", "suite=long_tail", "method=ce,poly1", "epochs=1", "seeds=1", f"results={results}"], site, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ranked = {line.split()[1]: line.split()[0] for line in ran.stdout.splitlines() if line.split()[1:2] in (["poly1"], ["ce"])}
    assert set(ranked) == {"poly1", "ce"} and all(rank.isdigit() for rank in ranked.values())
    # every result row records the plugin's distribution and version
    record = next(p for p in results.glob("runs/*/result.json") if '"poly1"' in p.read_text())
    assert '"harness-poly1": "0.1.0"' in record.read_text()


def test_its_own_tests_pass_against_the_installed_copy(site, tmp_path):
    tests = tmp_path / "tests"
    shutil.copytree(EXAMPLE / "tests", tests)
    done = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], site, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout
