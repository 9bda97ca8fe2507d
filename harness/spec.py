"""Run specifications: `key=value` overrides -> a validated grid of frozen RunSpecs.

A comma sweeps a key; the run grid is the cross product of every swept key. Each RunSpec has
a canonical JSON form whose hash is the run id, so a completed run is recognised wherever and
whenever the same cell is asked for again.

Keys (everything else is an error that lists the valid keys):
- `suite=NAME` (required), `scale=tiny|paper`, `results=DIR`, `device=auto|cpu|cuda`
- execution (not part of a run's identity): `jobs=N`, `executor=local|ray|slurm`, `address=...`,
  `timeout=SECONDS`, `retries=N`, `compile=true`, `threads=N` (torch threads per run; default:
  the CPUs this process may use, minus busy neighbours, shared among the workers)
- `method=a,b+c` entries (a `+` combines methods of different kinds into one entry; the core
  refuses, before training, two methods that own one role of the training step)
- `seed=0,1,2` or `seeds=N` (seeds 0..N-1)
- `tune=N`: besides each entry's default configuration, N configurations drawn from its methods'
  search distributions (`Param.search`), the same N draws for every entry holding a method; the
  leaderboard selects among them on the suite's validation metric (never the test split)
- recipe keys: dataset, model, epochs, batch_size, lr, momentum, weight_decay, warmup_epochs
- the suite's own axes (e.g. `ratio=10,100` for long_tail)
- a method's hyper-parameters: `focal.gamma=1,2`
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.method import MethodRef
from harness.params import Param, tuning_draw

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.suite import Suite

SESSION_KEYS = {"suite", "scale", "results", "device", "method", "seed", "seeds", "format", "jobs", "executor", "address", "timeout", "retries", "compile", "tune", "threads"}


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["a=1", "b=x,y"]` -> `{"a": "1", "b": "x,y"}`; malformed or repeated keys are errors."""
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HarnessError(f"bad argument {arg!r}: expected key=value, e.g. suite=long_tail or seeds=3")
        if key in out:
            raise HarnessError(f"{key!r} is given twice; give it once, with a comma to sweep (e.g. {key}={out[key]},{value})")
        if value.strip() == "":
            raise HarnessError(f"{key}= has no value")
        out[key] = value.strip()
    return out


def split_values(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if any(not v for v in values):
        raise HarnessError(f"empty value in {text!r}: separate values with single commas")
    return list(dict.fromkeys(values))  # de-duplicate, keep order


@dataclass(frozen=True)
class RunSpec:
    """One cell of a grid. Frozen; `canonical()` is what the run id hashes."""

    suite: str
    suite_version: str
    scale: str
    variant: tuple[tuple[str, Any], ...]
    methods: tuple[MethodRef, ...]  # in entry order (kinds' order)
    seed: int
    recipe: tuple[tuple[str, Any], ...]

    def canonical(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "suite_version": self.suite_version,
            "scale": self.scale,
            "variant": dict(self.variant),
            "methods": [m.canonical() for m in self.methods],
            "seed": self.seed,
            "recipe": _thaw(self.recipe),
        }

    @property
    def run_id(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def entry(self) -> str:
        """The leaderboard entry: method names joined by '+', a method version other than 1 as
        `@v`, non-default hyper-parameters in brackets — so versions and settings never share a row."""
        return "+".join(m.label for m in self.methods)

    @property
    def variant_label(self) -> str:
        """`key=value` of the suite's axes; an axis set to "none" (not applicable) is left out."""
        return ",".join(f"{k}={v}" for k, v in self.variant if v != "none") or "default"

    def method(self, kind: str) -> MethodRef | None:
        """The entry's method of `kind`, if it has one."""
        for m in self.methods:
            if m.kind == kind:
                return m
        return None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(m.kind for m in self.methods)

    def recipe_dict(self) -> dict[str, Any]:
        return _thaw(self.recipe)

    @classmethod
    def from_canonical(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            suite=data["suite"],
            suite_version=data["suite_version"],
            scale=data["scale"],
            variant=tuple(sorted(data["variant"].items())),
            methods=tuple(MethodRef.from_canonical(m) for m in data["methods"]),
            seed=int(data["seed"]),
            recipe=_freeze(data["recipe"]),
        )


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value) and value:
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def default_entries(catalog: Catalog, suite: Suite) -> list[str]:
    """The suite's own `default_entries`, else every installed method of its default kinds (alone;
    an entry without a loss trains with the suite's baseline loss)."""
    if suite.default_entries is not None:
        return list(dict.fromkeys(suite.default_entries(catalog)))
    kinds = suite.default_kind_names(catalog)
    return [m.name for m in catalog.methods if m.kind in kinds and m.default_grid and (not m.suites or suite.name in m.suites)]


def entry_refs(catalog: Catalog, entry: str) -> tuple[MethodRef, ...]:
    """The methods of an entry text such as `ce+mixup`, at their defaults, in entry order."""
    names = [n.strip() for n in entry.split("+")]
    if any(not n for n in names):
        raise HarnessError(f"bad method entry {entry!r}: join methods with single '+', e.g. ldam_drw+mixup")
    methods = sorted((catalog.methods.get(n) for n in names), key=lambda m: catalog.kinds.get(m.kind).sort_key)
    return tuple(MethodRef.of(m) for m in methods)


def build_grid(catalog: Catalog, overrides: dict[str, str]) -> tuple[Suite, list[RunSpec]]:
    """Validate every override against the catalog and the suite's card; return the run grid."""
    if "suite" not in overrides:
        raise HarnessError(f"which suite? add suite=NAME; installed suites: {', '.join(catalog.suites.names()) or 'none'}")
    suite = catalog.suites.get(overrides["suite"])
    scale = overrides.get("scale", "tiny")
    if scale not in suite.scales:
        raise HarnessError(f"suite {suite.name!r} has no scale {scale!r}; valid: {', '.join(suite.scales)}")
    recipe = suite.scales[scale]
    axes = {p.name: p for p in suite.axes}
    recipe_params = {k: p for k, p in recipe.override_params().items() if k in recipe.OVERRIDABLE}

    method_overrides: dict[str, dict[str, list[Any]]] = {}
    axis_values: dict[str, list[Any]] = {}
    recipe_values: dict[str, list[Any]] = {}
    for key, text in overrides.items():
        if key in SESSION_KEYS:
            continue
        if key in axes:
            axis_values[key] = [axes[key].parse(v, where=key) for v in split_values(text)]
        elif key in recipe_params:
            recipe_values[key] = [recipe_params[key].parse(v, where=key) for v in split_values(text)]
        elif "." in key:
            mname, _, pname = key.partition(".")
            method = catalog.methods.get(mname)
            by_name = {p.name: p for p in method.params}
            if pname not in by_name:
                valid = ", ".join(f"{mname}.{p.name}" for p in method.params) or "none"
                raise HarnessError(f"method {mname!r} has no hyper-parameter {pname!r}; valid: {valid}")
            method_overrides.setdefault(mname, {})[pname] = [by_name[pname].parse(v, where=key) for v in split_values(text)]
        else:
            valid = sorted(SESSION_KEYS - {"format"}) + sorted(axes) + sorted(recipe_params)
            import difflib

            close = difflib.get_close_matches(key, valid, n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise HarnessError(f"unknown key {key!r}; {hint}valid keys for suite {suite.name}: {', '.join(valid)}, or METHOD.PARAM")

    for epochs in recipe_values.get("epochs", [recipe.epochs]):
        for warmup in recipe_values.get("warmup_epochs", [recipe.warmup_epochs]):
            if warmup > epochs:
                raise HarnessError(f"warmup_epochs={warmup} is longer than epochs={epochs}; choose warmup_epochs between 0 and {epochs}")
    for name in recipe_values.get("dataset", [recipe.dataset]):
        catalog.dataset(name)
    for name in recipe_values.get("model", [recipe.model]):
        catalog.model(name)

    seeds = _seeds(overrides, suite)
    entries = split_values(overrides["method"]) if "method" in overrides else default_entries(catalog, suite)
    if not entries:
        raise HarnessError(f"no installed method of the kinds suite {suite.name!r} ranks ({', '.join(suite.ranks)})")
    for mname in method_overrides:
        if not any(mname in e.split("+") for e in entries):
            raise HarnessError(f"hyper-parameters are given for {mname!r}, which is not among the methods run ({', '.join(entries)})")

    entry_components = [_entry_components(catalog, suite, e, method_overrides) for e in entries]
    if "tune" in overrides:
        budget = Param("tune", int, 0, low=0, high=1000).parse(overrides["tune"], where="tune")
        if budget and suite.validation_metric is None:
            raise HarnessError(f"suite {suite.name!r} has no validation split to select tuned configurations on; tune= needs one")
        entry_components = [[*cs, *tuning_draws(catalog, cs[0], budget, method_overrides)] for cs in entry_components]
    axis_grid = [dict(zip(axes, combo)) for combo in itertools.product(*(axis_values.get(k, [p.default]) for k, p in axes.items()))]
    recipe_grid = [dict(zip(recipe_values, combo)) for combo in itertools.product(*recipe_values.values())]

    specs: list[RunSpec] = []
    for variant, recipe_changes, components, seed in itertools.product(axis_grid, recipe_grid, [c for cs in entry_components for c in cs], seeds):
        if suite.derive_variant is not None:
            kinds = tuple(c.kind for c in components)
            derived = suite.derive_variant(kinds)
            for key, value in derived.items():
                if key in axis_values and variant[key] != value:
                    names = "+".join(c.name for c in components)
                    raise HarnessError(f"method entry {names!r} runs with {key}={value}, not {key}={variant[key]}; leave {key}= out, or choose methods that fit it")
            variant = {**variant, **derived}
        full_recipe = {**recipe.as_dict(), **recipe_changes}
        specs.append(
            RunSpec(
                suite=suite.name,
                suite_version=suite.version,
                scale=scale,
                variant=tuple(sorted(variant.items())),
                methods=components,
                seed=seed,
                recipe=_freeze(full_recipe),
            )
        )
    return suite, list(dict.fromkeys(specs))


def tuning_draws(catalog: Catalog, components: tuple[MethodRef, ...], budget: int, fixed: dict[str, dict[str, list[Any]]]) -> list[tuple[MethodRef, ...]]:
    """`budget` configurations of an entry: draw i sets every searchable hyper-parameter of every
    method to its i-th draw (harness.params.tuning_draw: a function of the method and i only);
    values given on the command line stay fixed. An entry with nothing to search gets none."""
    out = []
    for i in range(budget):
        draw = []
        for ref in components:
            method = catalog.methods.get(ref.name)
            given = {k: v for k, v in ref.params if k in fixed.get(ref.name, {})}
            sampled = {p.name: p.sample(tuning_draw(method.name, i, p.name)) for p in method.params if p.search is not None and p.name not in given}
            draw.append(MethodRef.of(method, {**given, **sampled}) if sampled else ref)
        if tuple(draw) != components:
            out.append(tuple(draw))
    return list(dict.fromkeys(out))


def _seeds(overrides: dict[str, str], suite: Suite) -> list[int]:
    if "seed" in overrides and "seeds" in overrides:
        raise HarnessError("give seed=LIST or seeds=N, not both")
    if "seed" in overrides:
        return [Param("seed", int, 0, low=0).parse(v, where="seed") for v in split_values(overrides["seed"])]
    n = Param("seeds", int, suite.default_seeds, low=1, high=1000).parse(overrides["seeds"], where="seeds") if "seeds" in overrides else suite.default_seeds
    return list(range(n))


def _entry_components(catalog: Catalog, suite: Suite, entry: str, method_overrides: dict[str, dict[str, list[Any]]]) -> list[tuple[MethodRef, ...]]:
    """One entry (`a+b`) -> its method references, one tuple per hyper-parameter sweep point."""
    from harness.training import check_entry, owns_objective

    names = [n.strip() for n in entry.split("+")]
    if any(not n for n in names):
        raise HarnessError(f"bad method entry {entry!r}: join methods with single '+', e.g. ldam_drw+mixup")
    methods = [catalog.methods.get(n) for n in names]
    kinds = [m.kind for m in methods]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise HarnessError(f"method entry {entry!r} has two methods of kind {kind!r}; combine methods of different kinds")
    allowed = suite.accepted_kind_names(catalog)
    for m in methods:
        if m.kind not in allowed:
            raise HarnessError(f"suite {suite.name!r} does not run {m.kind} methods like {m.name!r}; it runs {', '.join(sorted(allowed))} methods")
    if suite.ranks_training(catalog) and not any(owns_objective(catalog, n) for n in names):
        names.append(suite.default_loss)  # the entry trains with the suite's baseline loss
    names.sort(key=lambda n: catalog.kinds.get(catalog.methods.get(n).kind).sort_key)
    sweeps = []
    for n in names:
        method = catalog.methods.get(n)
        grid = method_overrides.get(n, {})
        points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
        sweeps.append([MethodRef.of(method, p) for p in points])
    combos = [tuple(combo) for combo in itertools.product(*sweeps)]
    check_entry(catalog, combos[0])
    return combos
