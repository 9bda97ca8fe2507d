"""Typed hyper-parameters: declared next to each method, parsed from `key=value` text.

A method lists its hyper-parameters as `Param`s; the core parses command-line text against
them, validates values from any source, and puts the canonical value in the run's identity.
A `Param` may declare a search distribution next to its default (DomainBed's `_hparam` habit,
but on the method's own parameter): `tune=N` draws N configurations per method from them, with
the same seeded sampler for every method, so every method gets the same tuning budget.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

_TYPES = {"float": float, "int": int, "bool": bool, "str": str}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


# ---------------------------------------------------------------------------------------------
# search distributions (a draw takes one uniform number u in [0, 1) and returns a value)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uniform:
    """A float uniform in [low, high]."""

    low: float
    high: float

    def draw(self, u: float) -> float:
        return float(self.low + u * (self.high - self.low))

    def describe(self) -> str:
        return f"U({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class LogUniform:
    """A float whose log10 is uniform in [log10 low, log10 high] (learning rates, weights)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"LogUniform needs 0 < low <= high, got ({self.low}, {self.high})")

    def draw(self, u: float) -> float:
        a, b = math.log10(self.low), math.log10(self.high)
        return float(10 ** (a + u * (b - a)))

    def describe(self) -> str:
        return f"10^U({math.log10(self.low):g}, {math.log10(self.high):g})"


@dataclass(frozen=True)
class IntUniform:
    """An int uniform in {low, ..., high}."""

    low: int
    high: int

    def draw(self, u: float) -> int:
        return int(self.low + min(math.floor(u * (self.high - self.low + 1)), self.high - self.low))

    def describe(self) -> str:
        return f"int U{{{self.low}..{self.high}}}"


@dataclass(frozen=True)
class Choice:
    """One of a few values, equally likely."""

    values: tuple[Any, ...]

    def draw(self, u: float) -> Any:
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


Search = Uniform | LogUniform | IntUniform | Choice


def tuning_draw(method: str, index: int, param: str) -> float:
    """The uniform number in [0, 1) of draw `index` of a method's parameter: a function of the
    method's name, the draw and the parameter only (not of the seed, the suite or the entry), so
    every entry holding the method tries the same N configurations."""
    digest = hashlib.sha256(f"harness/tune/{method}/{index}/{param}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: a name, a type (float, int, bool or str), a default and a doc line.

    `low`/`high` bound numbers (inclusive); `choices` restricts strings. `search` is the
    distribution `tune=N` draws it from (harness.params: Uniform, LogUniform, IntUniform, Choice);
    None leaves it at its default when tuning.
    """

    name: str
    type: type
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    search: Search | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"hyper-parameter name {self.name!r} must be a Python identifier")
        if self.type not in _TYPES.values():
            raise ValueError(
                f"hyper-parameter {self.name!r} has type {self.type!r}; use float, int, bool or str"
            )
        self.check(self.default, where=f"the default of {self.name}")
        if self.search is not None:  # every value the distribution can give must be valid
            for u in (0.0, 0.5, 1.0 - 1e-12):
                self.check(self.sample(u), where=f"a draw of {self.name}'s search distribution {self.search.describe()}")

    def sample(self, u: float) -> Any:
        """The value of the search distribution at the uniform number `u`, in canonical form."""
        if self.search is None:
            return self.default
        value = self.search.draw(u)
        if self.type is float:
            value = float(f"{float(value):.6g}")  # short, stable run ids
        elif self.type is int:
            value = int(value)
        return value

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
        if self.search is not None:
            out["search"] = self.search.describe()
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
