"""Typed hyper-parameters: parsing from CLI text, validation, and the messages users see."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.params import Param, resolve_params


@pytest.mark.parametrize(
    ("param", "text", "expected"),
    [
        (Param("g", float, 2.0), "0.5", 0.5),
        (Param("g", float, 2.0), "1", 1.0),
        (Param("n", int, 3), "7", 7),
        (Param("flag", bool, False), "true", True),
        (Param("flag", bool, True), "off", False),
        (Param("mode", str, "a", choices=("a", "b")), "b", "b"),
    ],
)
def test_parse_gives_typed_values(param, text, expected):
    value = param.parse(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("param", "text", "fragment"),
    [
        (Param("gamma", float, 2.0, low=0.0), "abc", "expected a float >= 0.0"),
        (Param("gamma", float, 2.0, low=0.0), "-1", "expected a float >= 0.0"),
        (Param("n", int, 3, low=1, high=5), "2.5", "expected a int in [1, 5]"),
        (Param("n", int, 3, low=1, high=5), "9", "in [1, 5]"),
        (Param("flag", bool, False), "maybe", "expected a bool"),
        (Param("mode", str, "a", choices=("a", "b")), "c", "one of a, b"),
        (Param("x", float, 1.0), "nan", "must be finite"),
    ],
)
def test_bad_values_say_what_is_valid(param, text, fragment):
    with pytest.raises(HarnessError, match="bad value") as info:
        param.parse(text, where=f"method.{param.name}")
    assert fragment in str(info.value)
    assert f"method.{param.name}" in str(info.value)


def test_check_rejects_bool_for_int_and_accepts_int_for_float():
    with pytest.raises(HarnessError):
        Param("n", int, 1).check(True)
    assert Param("x", float, 1.0).check(2) == 2.0


def test_invalid_declarations_fail_at_definition():
    with pytest.raises(ValueError, match="identifier"):
        Param("bad-name", float, 1.0)
    with pytest.raises(ValueError, match="type"):
        Param("x", list, [])
    with pytest.raises(HarnessError):
        Param("x", float, -1.0, low=0.0)  # default outside its own bounds


def test_resolve_params_fills_defaults_and_rejects_unknown_names():
    params = (Param("gamma", float, 2.0), Param("alpha", float, 0.25))
    assert resolve_params(params, {"gamma": 1.0}, owner="focal") == {"gamma": 1.0, "alpha": 0.25}
    with pytest.raises(HarnessError, match=r"focal has no hyper-parameter 'beta'; valid: focal.gamma, focal.alpha"):
        resolve_params(params, {"beta": 1.0}, owner="focal")


def test_search_distributions_draw_valid_values_in_canonical_form():
    from harness.params import Choice, IntUniform, LogUniform, Uniform

    lr = Param("lr", float, 0.01, "learning rate", low=0.0, search=LogUniform(1e-4, 1e-1))
    assert lr.sample(0.0) == pytest.approx(1e-4) and lr.sample(0.5) == pytest.approx(10**-2.5, rel=1e-5)
    assert isinstance(lr.sample(0.3), float) and lr.sample(0.3) == float(f"{lr.sample(0.3):.6g}")  # short run ids
    assert Param("k", int, 3, "k", low=1, search=IntUniform(1, 4)).sample(0.999) == 4
    assert Param("m", str, "a", "m", choices=("a", "b"), search=Choice(("a", "b"))).sample(0.7) == "b"
    assert Param("g", float, 2.0, "g", search=Uniform(0.0, 5.0)).sample(0.2) == pytest.approx(1.0)
    assert Param("g", float, 2.0, "g").sample(0.9) == 2.0  # nothing to search: the default
    with pytest.raises(HarnessError, match="a draw of eps's search distribution"):
        Param("eps", float, 0.1, "eps", low=0.0, high=1.0, search=Uniform(0.0, 2.0))  # draws outside the bounds


def test_tuning_draws_depend_on_the_method_and_index_only():
    from harness.params import tuning_draw

    a, b = tuning_draw("focal", 0, "gamma"), tuning_draw("focal", 1, "gamma")
    assert 0 <= a < 1 and a != b and a == tuning_draw("focal", 0, "gamma") and a != tuning_draw("ldam", 0, "gamma")


def test_tune_adds_the_same_draws_to_every_entry_holding_a_method():
    from harness.catalog import load_catalog
    from harness.hookspecs import hookimpl
    from harness.kinds.loss import Loss
    from harness.method import Method
    from harness.params import Uniform
    from harness.spec import build_grid

    class Searchable:
        @hookimpl
        def harness_register_methods(self, register):
            register(Method("searchable", "loss", lambda ctx, w: Loss(), "s", "test", params=(Param("w", float, 1.0, "w", low=0.0, search=Uniform(0.0, 4.0)),)))

    catalog = load_catalog(plugins=((Searchable(), "searchable"),))
    _, plain = build_grid(catalog, {"suite": "long_tail", "method": "searchable,searchable+mixup", "seeds": "1"})
    _, tuned = build_grid(catalog, {"suite": "long_tail", "method": "searchable,searchable+mixup", "seeds": "1", "tune": "3"})
    assert {s.run_id for s in plain} <= {s.run_id for s in tuned}  # the default configurations are kept (nothing retrained)
    assert len(tuned) == 2 * (1 + 3)
    alone = sorted(s.methods[0].hyperparameters["w"] for s in tuned if len(s.methods) == 1)
    mixed = sorted(s.methods[0].hyperparameters["w"] for s in tuned if len(s.methods) == 2)
    assert alone == mixed and len(set(alone)) == 4  # the same draws in both entries
    _, fixed = build_grid(catalog, {"suite": "long_tail", "method": "searchable", "searchable.w": "2", "seeds": "1", "tune": "3"})
    assert {s.methods[0].hyperparameters["w"] for s in fixed} == {2.0}  # a value given on the command line is not tuned
