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
