"""Typed hyper-parameters: declared next to each method, parsed from `key=value` text.

A method lists its hyper-parameters as `Param`s; the core parses command-line text against
them, validates values from any source, and puts the canonical value in the run's identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

_TYPES = {"float": float, "int": int, "bool": bool, "str": str}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: a name, a type (float, int, bool or str), a default and a doc line.

    `low`/`high` bound numbers (inclusive); `choices` restricts strings.
    """

    name: str
    type: type
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"hyper-parameter name {self.name!r} must be a Python identifier")
        if self.type not in _TYPES.values():
            raise ValueError(
                f"hyper-parameter {self.name!r} has type {self.type!r}; use float, int, bool or str"
            )
        self.check(self.default, where=f"the default of {self.name}")

    @property
    def type_name(self) -> str:
        return self.type.__name__

    def describe_valid(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        text = f"a {self.type_name}"
        if self.low is not None and self.high is not None:
            text += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            text += f" >= {self.low}"
        elif self.high is not None:
            text += f" <= {self.high}"
        return text

    def parse(self, text: str, *, where: str = "") -> Any:
        """Parse command-line text into a checked value of this parameter's type."""
        label = where or self.name
        raw = text.strip()
        try:
            if self.type is bool:
                if raw.lower() in _TRUE:
                    value: Any = True
                elif raw.lower() in _FALSE:
                    value = False
                else:
                    raise ValueError(raw)
            elif self.type is int:
                value = int(raw)
            elif self.type is float:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise HarnessError(
                f"bad value {text!r} for {label}: expected {self.describe_valid()} "
                f"(default {self.default!r})"
            ) from None
        return self.check(value, where=label)

    def check(self, value: Any, *, where: str = "") -> Any:
        """Return `value` in canonical form, or raise HarnessError saying what is valid."""
        label = where or self.name
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise HarnessError(
                f"bad value {value!r} for {label}: expected {self.describe_valid()}"
            )
        if self.type is float and not math.isfinite(value):
            raise HarnessError(f"bad value {value!r} for {label}: must be finite")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise HarnessError(f"bad value {value!r} for {label}: expected {self.describe_valid()}")
        if self.choices is not None and value not in self.choices:
            raise HarnessError(f"bad value {value!r} for {label}: expected {self.describe_valid()}")
        return value

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type_name, "default": self.default}
        if self.doc:
            out["doc"] = self.doc
        for key in ("low", "high", "choices"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def resolve_params(params: tuple[Param, ...], given: dict[str, Any], *, owner: str) -> dict[str, Any]:
    """Defaults overlaid with `given`, every value checked; unknown names are an error."""
    by_name = {p.name: p for p in params}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        valid = ", ".join(f"{owner}.{p.name}" for p in params) or "none"
        raise HarnessError(
            f"{owner} has no hyper-parameter {', '.join(map(repr, unknown))}; valid: {valid}"
        )
    out = {}
    for p in params:
        out[p.name] = p.check(given[p.name], where=f"{owner}.{p.name}") if p.name in given else p.default
    return out
