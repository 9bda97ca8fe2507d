"""`harness new-plugin NAME`: write a ready plugin package with one example method.

The package is what docs/writing-plugins.md describes: a pyproject with the `harness` entry
point, one module of methods, a test that runs the harness conformance kit plus a hand-computed
value, and a README. Names are derived from NAME:

| NAME            | distribution    | import package          | entry point  | example method          |
|-----------------|-----------------|-------------------------|--------------|-------------------------|
| `my-methods`    | `my-methods`    | `harness_my_methods`    | `my_methods` | `my_methods_example`    |
| `harness-poly`  | `harness-poly`  | `harness_poly`          | `poly`       | `poly_example`          |

The import package carries a `harness_` prefix so that no generic top-level name (`methods`,
`losses`) lands in site-packages. The example method and its test come from the kind's module
(`Kind.scaffold`), so every installed kind with a template can be scaffolded, a third party's too.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from importlib.util import find_spec
from pathlib import Path
from string import Template
from typing import Any

from harness.errors import HarnessError

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


def scaffold_kinds(catalog: Any) -> list[str]:
    """The installed kinds that have a `new-plugin` template."""
    return [k.name for k in sorted(catalog.kinds, key=lambda k: k.sort_key) if k.scaffold is not None]


def new_plugin(name: str, *, kind: str = "loss", directory: Path | None = None, catalog: Any = None) -> Path:
    """Write the package for plugin `name` with one example method of `kind` (the kind's own
    template, `Kind.scaffold`); return its folder.

    :param directory: where to write it (default: ./NAME). It must not exist or be empty.
    :param catalog: the catalog whose kinds are offered (default: the installed plugins).
    """
    if catalog is None:
        from harness.catalog import load_catalog

        catalog = load_catalog()
    if kind not in catalog.kinds or catalog.kinds.get(kind).scaffold is None:
        raise HarnessError(f"bad value {kind!r} for kind: expected one of {', '.join(scaffold_kinds(catalog))} (the installed kinds with a template)")
    scaffold = catalog.kinds.get(kind).scaffold
    names = plugin_names(name)
    _refuse_taken(names)
    target = Path(directory) if directory is not None else Path.cwd() / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HarnessError(f"{target} already exists and is not empty; choose another folder with dir=PATH or remove it")
    values = {
        "dist": names.dist, "package": names.package, "entry_point": names.entry_point, "method": names.method,
        "CONST": names.constant, "kind": kind, "summary": scaffold.summary, "suite": catalog.kinds.get(kind).suite or "long_tail",
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{names.package}/__init__.py": INIT,
        f"{names.package}/methods.py": scaffold.methods,
        "tests/test_methods.py": scaffold.tests,
    }
    for rel, template in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
    return target


# =============================================================================================
# templates ($name placeholders; `$$` is a literal dollar sign)
# =============================================================================================

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
harness run suite=$suite method=$method seeds=1
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
