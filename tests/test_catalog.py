"""The plugin manager factory and the catalog: entry points, stamping, collisions, broken plugins."""

from __future__ import annotations

import pytest

from harness.catalog import load_catalog
from harness.errors import UnknownNameError
from harness.hookspecs import hookimpl
from harness.kinds import Loss, Method
from harness.registry import DuplicateNameError, Registry

BUILTIN_LOSSES = {"ce", "label_smoothing", "focal", "class_balanced", "ldam", "ldam_drw", "balanced_softmax", "logit_adjustment", "pskd", "sade"}


def _method(name: str, kind: str = "loss") -> Method:
    return Method(name, kind, lambda ctx: Loss(), f"{name} loss", "test fixture")


class GoodPlugin:
    @hookimpl
    def harness_register_methods(self, register):
        register(_method("my_loss"))


class DuplicatePlugin:
    @hookimpl
    def harness_register_methods(self, register):
        register(_method("dup_ok"))
        register(_method("ce"))  # collides with the built-in


class RaisingPlugin:
    @hookimpl
    def harness_register_methods(self, register):
        register(_method("half_done"))
        raise RuntimeError("plugin bug")


class WrongArgumentsPlugin:
    @hookimpl
    def harness_register_methods(self, registrar):  # the hook's argument is `register`
        pass


class UnknownHookPlugin:
    @hookimpl
    def harness_register_metods(self, register):  # misspelled hook
        pass


def test_builtins_load_through_entry_points_and_are_stamped():
    catalog = load_catalog()
    assert BUILTIN_LOSSES <= set(catalog.methods.names())
    assert "long_tail" in catalog.suites
    assert {"mnist5k", "digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn"} <= set(catalog.datasets.names())
    assert {"small_cnn", "resnet32"} <= set(catalog.models.names())
    focal = catalog.methods.get("focal")
    assert focal.plugin == "harness-bench" and focal.plugin_version == "0.1.0"
    assert catalog.plugins["losses"].registered["method"][:2] == ["ce", "label_smoothing"]


def test_autoload_can_be_disabled_and_allow_listed(monkeypatch):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert len(load_catalog().methods) == 0
    monkeypatch.delenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("HARNESS_PLUGINS", "losses")
    catalog = load_catalog()
    assert set(catalog.methods.names()) == BUILTIN_LOSSES and len(catalog.suites) == 0
    assert {"loss", "augmentation", "optimizer"} <= set(catalog.kinds.names())  # the built-in kinds always load


def test_a_method_of_an_unregistered_kind_breaks_its_plugin_with_a_suggestion():
    class Regulariser:
        @hookimpl
        def harness_register_methods(self, register):
            register(_method("my_reg", kind="los"))

    catalog = load_catalog(plugins=((Regulariser(), "reg"),))
    info = catalog.plugins["reg"]
    assert not info.ok and "unknown kind 'los'" in info.error and "did you mean 'loss'" in info.error
    assert "my_reg" not in catalog.methods


def test_unknown_names_get_suggestions():
    catalog = load_catalog()
    with pytest.raises(UnknownNameError) as info:
        catalog.methods.get("ldam_dwr")
    assert info.value.suggestions[0] == "ldam_drw"
    assert "Installed methods:" in str(info.value)


def test_registry_raises_on_a_collision():
    registry: Registry[object] = Registry("thing")
    registry.add("a", object())
    with pytest.raises(DuplicateNameError, match="registered twice"):
        registry.add("a", object())
    assert registry.names("a*") == ["a"]


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (DuplicatePlugin(), "registered twice"),
        (RaisingPlugin(), "plugin bug"),
        (WrongArgumentsPlugin(), "registrar"),
        (UnknownHookPlugin(), "unknown hook"),
    ],
)
def test_a_broken_plugin_is_reported_and_the_rest_keep_working(plugin, reason):
    catalog = load_catalog(plugins=((plugin, "bad"), (GoodPlugin(), "good")))
    info = catalog.plugins["bad"]
    assert not info.ok and reason in info.error
    assert "my_loss" in catalog.methods and BUILTIN_LOSSES <= set(catalog.methods.names())
    # all-or-nothing: nothing of a broken plugin stays registered
    assert "half_done" not in catalog.methods and "dup_ok" not in catalog.methods
    assert catalog.methods.get("ce").plugin == "harness-bench"


def test_trace_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_TRACE_PLUGINS", "1")
    load_catalog(plugins=((GoodPlugin(), "good"),))
    err = capsys.readouterr().err
    assert "good.harness_register_methods(register)" in err and "my_loss" in err


def test_invalid_method_declarations_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        Method("x", "not a kind", object, "s", "p")
    with pytest.raises(ValueError, match="paper"):
        Method("x", "loss", object, "s", "")
    with pytest.raises(ValueError, match="letters"):
        Method("bad name", "loss", object, "s", "p")


class ObserverThenBroken:
    calls: list[str] = []

    @hookimpl
    def harness_register_methods(self, register):
        register(_method("ce"))  # collides: the plugin is broken

    @hookimpl
    def harness_grid_end(self, stored, failed):
        self.calls.append("grid_end")


def test_a_broken_plugins_observer_hooks_do_not_fire():
    plugin = ObserverThenBroken()
    catalog = load_catalog(plugins=((plugin, "observer"),))
    assert not catalog.plugins["observer"].ok
    catalog.pm.hook.harness_grid_end(stored=0, failed=0)
    assert plugin.calls == []


def test_a_second_plugin_with_a_taken_name_does_not_hide_the_first():
    catalog = load_catalog(plugins=((GoodPlugin(), "losses"),))
    assert catalog.plugins["losses"].ok and "ce" in catalog.methods
    clash = [p for key, p in catalog.plugins.items() if key != "losses" and p.name == "losses"]
    assert len(clash) == 1 and "already loaded" in clash[0].error
    assert "my_loss" not in catalog.methods


def test_a_third_party_method_named_like_a_built_in_is_refused_and_the_built_ins_keep_working():
    class Impostor:
        @hookimpl
        def harness_register_methods(self, register):
            register(_method("ce"))

    catalog = load_catalog(plugins=((Impostor(), "impostor"),))
    info = catalog.plugins["impostor"]
    assert not info.ok and "'harness-bench'" in info.error and "'impostor'" in info.error  # both packages named
    assert catalog.methods.get("ce").plugin == "harness-bench"
    assert BUILTIN_LOSSES <= set(catalog.methods.names())  # no built-in loss was knocked out


def test_a_third_party_methods_run_identity_names_its_distribution():
    from harness.method import MethodRef
    from harness.spec import RunSpec

    class Poly:
        @hookimpl
        def harness_register_methods(self, register):
            register(_method("poly_ident"))

    catalog = load_catalog(plugins=((Poly(), "poly"),))
    ref = MethodRef.of(catalog.methods.get("poly_ident"))
    assert ref.plugin == "poly" and ref.canonical()["plugin"] == "poly"
    assert "plugin" not in MethodRef.of(catalog.methods.get("ce")).canonical()  # built-in ids are unchanged
    other = MethodRef(ref.name, ref.kind, ref.version, ref.params, ref.changed, "another-package")
    spec = lambda r: RunSpec("long_tail", "1", "tiny", (("ratio", 100),), (r,), 0, (("dataset", "mnist5k"),))  # noqa: E731
    assert spec(ref).run_id != spec(other).run_id
    assert RunSpec.from_canonical(spec(ref).canonical()) == spec(ref)
