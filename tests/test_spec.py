"""Run grids from `key=value` overrides: sweeps, combinations, validation and run identity."""

from __future__ import annotations

import pytest

from harness.catalog import load_catalog
from harness.errors import HarnessError, UnknownNameError
from harness.hookspecs import hookimpl
from harness.kinds import Augmentation, Method
from harness.spec import RunSpec, build_grid, parse_overrides


class FlipAugmentation(Augmentation):
    def __call__(self, x, y, generator):
        return x.flip(-1), y


class AugPlugin:
    @hookimpl
    def harness_register_methods(self, register):
        register(Method("hflip", "augmentation", lambda ctx: FlipAugmentation(), "flip every image", "test fixture"))


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(plugins=((AugPlugin(), "aug-test"),))


def grid(catalog, *args):
    return build_grid(catalog, parse_overrides(list(args)))[1]


def test_parse_overrides_rejects_malformed_and_repeated_keys():
    assert parse_overrides(["a=1", "b=x,y"]) == {"a": "1", "b": "x,y"}
    with pytest.raises(HarnessError, match="expected key=value"):
        parse_overrides(["suite"])
    with pytest.raises(HarnessError, match="given twice"):
        parse_overrides(["seed=1", "seed=2"])
    with pytest.raises(HarnessError, match="has no value"):
        parse_overrides(["seed="])


def test_grid_is_the_cross_product_of_swept_keys(catalog):
    specs = grid(catalog, "suite=long_tail", "method=ce,focal", "ratio=10,100", "seeds=2", "epochs=2")
    assert len(specs) == 2 * 2 * 2
    assert {(s.entry, dict(s.variant)["ratio"], s.seed) for s in specs} == {(m, r, s) for m in ("ce", "focal") for r in (10, 100) for s in (0, 1)}
    assert all(s.recipe_dict()["epochs"] == 2 for s in specs)
    assert len({s.run_id for s in specs}) == 8


def test_default_methods_are_every_installed_method_of_the_ranked_kinds(catalog):
    specs = grid(catalog, "suite=long_tail", "seeds=1")
    entries = {s.entry.split("@")[0] for s in specs}  # a method past version 1 is named name@version
    losses = {m.name for m in catalog.methods if m.kind == "loss" and (not m.suites or "long_tail" in m.suites)}
    assert losses <= entries
    assert "coteaching" not in entries and "sade" in entries  # a method names the suites whose default grid runs it
    assert "ce+hflip" in entries  # an augmentation alone trains with the suite's baseline loss


def test_method_hyper_parameter_sweep_and_entry_names(catalog):
    specs = grid(catalog, "suite=long_tail", "method=focal,ce", "focal.gamma=0.5,2", "seed=3")
    assert sorted(s.entry for s in specs) == ["ce", "focal", "focal[gamma=0.5]"]
    assert {s.seed for s in specs} == {3}


def test_combination_orders_kinds_and_adds_the_baseline_loss(catalog):
    (a,) = grid(catalog, "suite=long_tail", "method=hflip+focal", "seeds=1")
    (b,) = grid(catalog, "suite=long_tail", "method=focal+hflip", "seeds=1")
    assert a.entry == b.entry == "focal+hflip" and a.run_id == b.run_id
    (c,) = grid(catalog, "suite=long_tail", "method=hflip", "seeds=1")
    assert c.entry == "ce+hflip"


def test_two_methods_of_one_kind_cannot_combine(catalog):
    with pytest.raises(HarnessError, match="two methods of kind 'loss'"):
        grid(catalog, "suite=long_tail", "method=ce+focal")


def test_run_id_is_stable_and_depends_on_every_field(catalog):
    (a,) = grid(catalog, "suite=long_tail", "method=focal", "seeds=1")
    (b,) = grid(catalog, "suite=long_tail", "seeds=1", "method=focal")
    assert a.run_id == b.run_id and len(a.run_id) == 16
    (c,) = grid(catalog, "suite=long_tail", "method=focal", "seed=1")
    (d,) = grid(catalog, "suite=long_tail", "method=focal", "seeds=1", "lr=0.2")  # not the tiny recipe's lr (0.1)
    (e,) = grid(catalog, "suite=long_tail", "method=focal", "seeds=1", "focal.gamma=1")
    assert len({a.run_id, c.run_id, d.run_id, e.run_id}) == 4
    # an explicitly given default is the same run as the default itself
    (f,) = grid(catalog, "suite=long_tail", "method=focal", "seeds=1", "focal.gamma=2.0")
    assert f.run_id == a.run_id


def test_canonical_json_round_trips(catalog):
    for spec in grid(catalog, "suite=long_tail", "method=focal,ldam_drw", "focal.gamma=1", "seeds=2"):
        again = RunSpec.from_canonical(spec.canonical())
        assert again == spec and again.run_id == spec.run_id


@pytest.mark.parametrize(
    ("args", "error", "fragment"),
    [
        (["suite=long_tial"], UnknownNameError, "did you mean 'long_tail'"),
        (["method=ce"], HarnessError, "which suite? add suite=NAME; installed suites: "),
        (["suite=long_tail", "method=focla"], UnknownNameError, "did you mean 'focal'"),
        (["suite=long_tail", "ratoi=10"], HarnessError, "did you mean ratio"),
        (["suite=long_tail", "ratio=ten"], HarnessError, "bad value 'ten' for ratio: expected a int >= 1"),
        (["suite=long_tail", "epochs=0"], HarnessError, "bad value 0 for epochs"),
        (["suite=long_tail", "seeds=x"], HarnessError, "bad value 'x' for seeds"),
        (["suite=long_tail", "seed=1", "seeds=2"], HarnessError, "not both"),
        (["suite=long_tail", "scale=huge"], HarnessError, "valid: tiny, paper"),
        (["suite=long_tail", "method=focal", "focal.gama=1"], HarnessError, "valid: focal.gamma"),
        (["suite=long_tail", "method=ce", "focal.gamma=1"], HarnessError, "not among the methods run"),
        (["suite=long_tail", "dataset=mnist6k"], UnknownNameError, "did you mean 'mnist5k'"),
        (["suite=long_tail", "model=small_cn"], UnknownNameError, "did you mean 'small_cnn'"),
        (["suite=long_tail", "method=ce,,focal"], HarnessError, "empty value"),
        (["suite=long_tail", "momentum=5"], HarnessError, "bad value 5.0 for momentum: expected a float in [0.0, 0.999]"),
        (["suite=long_tail", "warmup_epochs=100"], HarnessError, "warmup_epochs=100 is longer than epochs=10"),
        (["suite=long_tail", "epochs=x"], HarnessError, "(default 10)"),  # the recipe's own value, not a placeholder
        (["suite=long_tail", "method=ce+sam+ldam"], HarnessError, "two methods of kind 'loss'"),
    ],
)
def test_bad_input_fails_before_training_with_a_useful_message(catalog, args, error, fragment):
    with pytest.raises(error) as info:
        grid(catalog, *args)
    assert fragment in str(info.value)


def test_a_method_version_other_than_1_shows_in_the_entry():
    from harness.spec import RunSpec

    def spec(version):
        method = {"name": "poly1", "kind": "loss", "version": version, "params": {}, "changed": {}}
        return RunSpec.from_canonical({"suite": "long_tail", "suite_version": "1", "scale": "tiny", "variant": {"ratio": 100}, "methods": [method], "seed": 0, "recipe": {}})

    assert spec("1").entry == "poly1" and spec("2").entry == "poly1@2"
    assert spec("1").run_id != spec("2").run_id


def test_axes_set_to_none_are_left_out_of_the_variant_label():
    from harness.spec import RunSpec

    spec = RunSpec.from_canonical({"suite": "s", "suite_version": "1", "scale": "tiny", "variant": {"noise": "sym", "rate": 0.5, "human": "none"}, "methods": [], "seed": 0, "recipe": {}})
    assert spec.variant_label == "noise=sym,rate=0.5"
