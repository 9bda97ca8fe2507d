"""Bad plugins are reported by name with the reason, and everything else keeps working: an entry
point whose module fails to import, and an invalid hyper-parameter schema (at import or inside
the register hook). Duplicates, raising hooks, wrong arguments and unknown hooks: test_catalog.py."""

from __future__ import annotations

import textwrap

import pytest

from harness.catalog import load_catalog
from harness.hookspecs import hookimpl
from harness.kinds import Loss, Method
from harness.params import Param
from harness.testing import run_cli

BAD_MODULES = {
    # raises while importing
    "harness_bad_import": "import torch\nraise RuntimeError('boom while importing')\n",
    # an invalid Param at module level: the declaration raises at import
    "harness_bad_schema": textwrap.dedent(
        """
        from harness import Param
        GAMMA = Param("gamma", float, -1.0, "focusing", low=0.0)
        """
    ),
}


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    """A distribution on sys.path whose `harness` entry points point at bad or missing modules."""
    for name, source in BAD_MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
    info = tmp_path / "harness_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[harness]\nbad_import = harness_bad_import\nbad_schema = harness_bad_schema\nmissing = harness_no_such_module_xyz\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_points_that_fail_to_import_are_broken_with_the_reason(broken_distribution):
    catalog = load_catalog()
    reasons = {name: catalog.plugins[name].error for name in ("bad_import", "bad_schema", "missing")}
    assert "import failed: RuntimeError: boom while importing" in reasons["bad_import"]
    assert "import failed: HarnessError: bad value -1.0 for the default of gamma" in reasons["bad_schema"]
    assert "expected a float >= 0.0" in reasons["bad_schema"]
    assert "import failed: ModuleNotFoundError" in reasons["missing"] and "harness_no_such_module_xyz" in reasons["missing"]
    assert all(catalog.plugins[n].dist == "harness-broken" and catalog.plugins[n].version == "1.0" for n in reasons)
    # the rest keep working
    assert catalog.plugins["losses"].ok and "ce" in catalog.methods and "long_tail" in catalog.suites


def test_harness_plugins_shows_them_as_broken_and_other_commands_still_work(broken_distribution):
    code, out, err = run_cli("plugins")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("missing "))
    assert "harness-broken 1.0" in row and "BROKEN: import failed: ModuleNotFoundError" in row
    row = next(line for line in out.splitlines() if line.startswith("bad_import "))
    assert "BROKEN: import failed: RuntimeError: boom while importing" in row
    assert any(line.startswith("losses ") and " ok " in line for line in out.splitlines())
    assert "warning: plugin 'bad_schema' (harness-broken) is broken and was skipped: import failed: HarnessError" in err
    code, out, _ = run_cli("list", "methods", "focal")
    assert code == 0 and "focal" in out


def _loss(name, params):
    return Method(name, "loss", lambda ctx, **hp: Loss(), f"{name} loss", "test fixture", params=params)


class DefaultOutOfBounds:
    @hookimpl
    def harness_register_methods(self, register):
        register(_loss("ok_before", ()))
        register(_loss("gamma_loss", (Param("gamma", float, -1.0, "focusing", low=0.0),)))


class ParamTwice:
    @hookimpl
    def harness_register_methods(self, register):
        register(_loss("twice", (Param("a", float, 1.0), Param("a", float, 2.0))))


class UnsupportedType:
    @hookimpl
    def harness_register_methods(self, register):
        register(_loss("listy", (Param("sizes", list, [1, 2]),)))


class NotAParam:
    @hookimpl
    def harness_register_methods(self, register):
        register(Method("dicty", "loss", lambda ctx: Loss(), "s", "p", params=({"name": "a"},)))


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (DefaultOutOfBounds(), "expected a float >= 0.0"),
        (ParamTwice(), "declares a hyper-parameter twice"),
        (UnsupportedType(), "use float, int, bool or str"),
        (NotAParam(), "harness_register_methods failed"),
    ],
    ids=["default-out-of-bounds", "param-twice", "unsupported-type", "not-a-param"],
)
def test_an_invalid_hyper_parameter_schema_breaks_only_its_plugin(plugin, reason):
    catalog = load_catalog(plugins=((plugin, "bad_schema"),))
    info = catalog.plugins["bad_schema"]
    assert not info.ok and reason in info.error, info.error
    assert "ok_before" not in catalog.methods  # all or nothing per plugin
    assert catalog.plugins["losses"].ok and "focal" in catalog.methods
