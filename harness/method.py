"""Methods and the typed references to them that run specs carry.

A method is registered as a `Method`: name, kind, summary, paper, typed hyper-parameters and a
`build` callable. The core calls `build(ctx, **hp)` with the kind's context and every
hyper-parameter resolved (defaults overlaid with what the user gave), so each default is written
once, on its `Param`; `build`'s own keywords need no defaults. A run spec refers to a method by a
`MethodRef`: its name, kind, version and resolved hyper-parameters, which is what the run id hashes.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.params import Param, resolve_params
from harness.reported import Reported

BUILTIN_DIST = "harness-bench"  # the distribution of the built-in plugins


@dataclass(frozen=True)
class Method:
    """A named, versioned technique of one kind.

    `version` is part of every run's identity: bump it when a change alters results.
    `plugin` and `plugin_version` are stamped by the core at registration time; the kind must be
    one the installed plugins registered (`harness list kinds`).
    """

    name: str
    kind: str
    build: Callable[..., Any]
    summary: str
    paper: str
    url: str = ""
    params: tuple[Param, ...] = ()
    version: str = "1"
    # the suites whose default grid (`harness run` without method=) runs it; empty: every suite
    # whose default kinds include its kind. Any suite that ranks its kind runs it when named.
    suites: tuple[str, ...] = ()
    # False keeps it out of every default grid (e.g. too slow for a suite's time budget: say why
    # in `default_grid_note`, which `harness list` shows); it still runs when named with method=
    default_grid: bool = True
    default_grid_note: str = ""
    # published numbers of this method (harness.reported.Reported, each naming its suite): the
    # leaderboard shows them beside the reproduced ones at the setting where they apply
    reported: tuple[Reported, ...] = ()
    plugin: str = ""
    plugin_version: str = ""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"method name {self.name!r} must be letters, digits and underscores")
        if not isinstance(self.kind, str) or not self.kind.isidentifier():
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} must be a kind's name, e.g. 'loss'")
        if not self.summary.strip():
            raise ValueError(f"method {self.name!r} needs a one-line summary")
        if not self.paper.strip():
            raise ValueError(f"method {self.name!r} needs a paper reference")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r} declares a hyper-parameter twice: {names}")
        for r in self.reported:
            if not isinstance(r, Reported) or not r.suite:
                raise ValueError(f"method {self.name!r}: each reported number must be a harness.reported.Reported naming its suite (suite=...)")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every hyper-parameter: the defaults overlaid with `given`, each value checked."""
        return resolve_params(self.params, dict(given or {}), owner=self.name)

    def create(self, ctx: Any, **given: Any) -> Any:
        """Build the method for `ctx` with its defaults overlaid with `given` (what the core does)."""
        return self.build(ctx, **self.resolve(given))

    def built_class(self) -> type | None:
        """The class `build` returns, when it can be known without building: `build` itself when
        it is a class, else its return annotation when that is a class."""
        if isinstance(self.build, type):
            return self.build
        try:
            hint = typing.get_type_hints(self.build).get("return")
        except Exception:  # an annotation that does not resolve: unknown until built
            return None
        return hint if isinstance(hint, type) else None


@dataclass(frozen=True)
class MethodRef:
    """A method as a run spec names it; `params` holds every hyper-parameter (sorted by name),
    `changed` those that differ from the method's defaults (they name the leaderboard entry).
    `plugin` is the distribution that provided a third-party method (empty for the built-ins):
    two packages' methods of one name never share a run id or a stored result."""

    name: str
    kind: str
    version: str
    params: tuple[tuple[str, Any], ...] = ()
    changed: tuple[tuple[str, Any], ...] = ()
    plugin: str = ""

    @classmethod
    def of(cls, method: Method, given: dict[str, Any] | None = None) -> MethodRef:
        resolved = method.resolve(given)
        defaults = method.defaults()
        changed = {k: v for k, v in resolved.items() if v != defaults[k]}
        plugin = method.plugin if method.plugin != BUILTIN_DIST else ""
        return cls(method.name, method.kind, method.version, tuple(sorted(resolved.items())), tuple(sorted(changed.items())), plugin)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        """`name`, `name@v` for a version other than 1, and `[k=v,...]` for changed settings."""
        version = f"@{self.version}" if str(self.version) != "1" else ""
        changed = f"[{','.join(f'{k}={v}' for k, v in self.changed)}]" if self.changed else ""
        return self.name + version + changed

    def canonical(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "version": self.version, "params": dict(self.params), "changed": dict(self.changed)}
        if self.plugin:  # built-in methods keep the identity they always had
            out["plugin"] = self.plugin
        return out

    @classmethod
    def from_canonical(cls, data: dict[str, Any]) -> MethodRef:
        return cls(data["name"], data["kind"], data["version"], tuple(sorted(data["params"].items())), tuple(sorted(data["changed"].items())),
                   data.get("plugin", ""))
