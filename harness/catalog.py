"""The plugin manager factory and the catalog of everything the installed plugins registered.

Nothing is loaded at import time: `load_catalog()` builds a fresh pluggy manager, loads the
`harness` entry-point group (built-ins come through the same group as third-party packages, and
load first, so a third party's name clash never disables them), calls the registration hooks
phase by phase (every plugin's kinds, then methods, suites, datasets, models), and stamps every
object with the distribution name and version it came from. A plugin that fails to import, or
whose registration raises (a duplicate name, an unknown kind, an invalid declaration), is
recorded as broken with the reason, everything it registered is withdrawn, and the others keep
working.

Environment:
- `HARNESS_DISABLE_PLUGIN_AUTOLOAD=1`: load no entry points (tests pass plugins explicitly).
- `HARNESS_PLUGINS=a,b`: load only these entry points (by entry-point or distribution name), and
  the built-in kinds (`harness.kinds.*`), which every method needs.
- `HARNESS_TRACE_PLUGINS=1`: print every hook call with its arguments and result to stderr.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from harness import hookspecs
from harness.method import BUILTIN_DIST  # the built-in plugins load first
from harness.registry import Registry

ENTRY_POINT_GROUP = "harness"
REGISTRATION_HOOKS = {  # in the order the phases run
    "harness_register_kinds": "kinds",
    "harness_register_methods": "methods",
    "harness_register_suites": "suites",
    "harness_register_datasets": "datasets",
    "harness_register_models": "models",
}


@dataclass
class PluginInfo:
    """One loaded (or broken) plugin: its entry-point name and the distribution it came from."""

    name: str
    dist: str
    version: str
    module: str = ""
    error: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Catalog:
    """Registries of methods, suites, datasets and models, plus the plugin manager and plugins."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self.kinds: Registry[Any] = Registry("kind")
        self.methods: Registry[Any] = Registry("method")
        self.suites: Registry[Any] = Registry("suite")
        self.datasets: Registry[Any] = Registry("dataset")
        self.models: Registry[Any] = Registry("model")

    # -- lookups with the dynamic names the registries cannot hold -------------------------
    def model(self, name: str) -> Any:
        """A registered model, or any timm architecture as `timm:NAME`."""
        if name.startswith("timm:"):
            from harness.models import timm_model_source

            return timm_model_source(name.removeprefix("timm:"))
        return self.models.get(name)

    def dataset(self, name: str) -> Any:
        """A registered dataset, or local data as `parquet:PATH` / `imagefolder:PATH`."""
        if name.partition(":")[0] in {"parquet", "imagefolder", "hf"}:
            from harness.data import dynamic_dataset_source

            return dynamic_dataset_source(name)
        return self.datasets.get(name)

    # -- registration -------------------------------------------------------------------------
    def add_plugin(self, plugin: object, name: str, dist: str = "", version: str = "") -> PluginInfo:
        """Register a plugin object (module or instance) and run its registration hooks."""
        return self.add_plugins([(plugin, name, dist, version)])[0]

    def add_plugins(self, plugins: list[tuple[object, str, str, str]]) -> list[PluginInfo]:
        """Register plugins `(object, name, dist, version)`, then run the registration phases over
        all of them: every plugin's kinds first, then methods, suites, datasets and models."""
        infos: list[tuple[object, PluginInfo]] = []
        for plugin, name, dist, version in plugins:
            info = PluginInfo(name=name, dist=dist or name, version=version or "0", module=getattr(plugin, "__name__", type(plugin).__name__))
            infos.append((plugin, info))
            if name in self.plugins:  # keep the loaded one; report the newcomer under its own key
                info.error = f"a plugin named {name!r} is already loaded (from {self.plugins[name].dist}); rename the entry point"
                self.plugins[f"{name} ({info.dist})"] = info
                continue
            self.plugins[name] = info
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:  # wrong hook signatures
                info.error = f"{type(exc).__name__}: {exc}"
                continue
            unknown = [caller.name for caller in self.pm.get_hookcallers(plugin) or [] if caller.spec is None]
            if unknown:  # a misspelled hook would otherwise never be called, silently
                info.error = f"implements unknown hook(s) {', '.join(unknown)}; the hooks are listed in harness/hookspecs.py"
                self.pm.unregister(plugin)
        for hook_name, attr in REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for plugin, info in infos:
                if not info.ok:
                    continue
                for impl in caller.get_hookimpls():
                    if impl.plugin_name != info.name or impl.plugin is not plugin:
                        continue
                    try:
                        self._call_register(impl, hook_name, getattr(self, attr), info)
                    except Exception as exc:
                        self._break(plugin, info, f"{hook_name} failed: {type(exc).__name__}: {exc}")
        return [info for _, info in infos]

    def _break(self, plugin: object, info: PluginInfo, reason: str) -> None:
        """Mark a plugin broken, withdraw everything it registered and its hooks; methods of
        other plugins whose kind it registered go with it (their plugins are broken too)."""
        info.error = reason
        if _env_flag("HARNESS_TRACE_PLUGINS"):
            traceback.print_exc()
        withdrawn_kinds = set(info.registered.get("kind", []))
        self._forget(info)
        if self.pm.is_registered(plugin):
            self.pm.unregister(plugin)  # a broken plugin's observer hooks must not fire either
        if withdrawn_kinds:
            for other in list(self.plugins.values()):
                if other.ok and any(self.methods.get(m).kind in withdrawn_kinds for m in other.registered.get("method", []) if m in self.methods):
                    other_plugin = self.pm.get_plugin(other.name)
                    self._break(other_plugin, other, f"its methods are of kind(s) {', '.join(sorted(withdrawn_kinds))}, withdrawn with the broken plugin {info.name!r}")

    def _forget(self, info: PluginInfo) -> None:
        """Remove everything a plugin registered (all or nothing per plugin)."""
        registries = {"kind": self.kinds, "method": self.methods, "suite": self.suites, "dataset": self.datasets, "model": self.models}
        for what, names in info.registered.items():
            for n in names:
                registries[what].remove(n)
        info.registered.clear()

    def _call_register(self, impl: Any, hook_name: str, registry: Registry[Any], info: PluginInfo) -> None:
        added: list[str] = []

        def register(obj: Any) -> None:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, "plugin"):
                raise TypeError(f"{hook_name} got {obj!r}; register harness.Kind/Method/Suite/DatasetSource/ModelSource objects")
            if registry is self.methods and obj.kind not in self.kinds:
                from harness.errors import UnknownNameError

                raise UnknownNameError("kind", obj.kind, self.kinds.names())
            stamped = dataclasses.replace(obj, plugin=info.dist, plugin_version=info.version)
            registry.add(stamped.name, stamped)
            added.append(stamped.name)
            info.registered.setdefault(registry.what, []).append(stamped.name)

        trace = _env_flag("HARNESS_TRACE_PLUGINS")
        if trace:
            print(f"[harness trace] {info.name}.{hook_name}(register)", file=sys.stderr)
        impl.function(register=register)
        if trace:
            print(f"[harness trace]   -> registered {added}", file=sys.stderr)


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    if _env_flag("HARNESS_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: sys.stderr.write("[harness trace] " + text))
        pm.enable_tracing()
    return pm


def load_catalog(*, autoload: bool | None = None, allow: list[str] | None = None, plugins: tuple[tuple[object, str], ...] = ()) -> Catalog:
    """Build a fresh catalog.

    :param autoload: load the `harness` entry points (default: unless HARNESS_DISABLE_PLUGIN_AUTOLOAD).
    :param allow: only these entry points / distributions (default: HARNESS_PLUGINS, else all).
    :param plugins: extra `(object, name)` plugins registered after the entry points.
    """
    catalog = Catalog(make_plugin_manager())
    if autoload is None:
        autoload = not _env_flag("HARNESS_DISABLE_PLUGIN_AUTOLOAD")
    if allow is None and os.environ.get("HARNESS_PLUGINS", "").strip():
        allow = [a.strip() for a in os.environ["HARNESS_PLUGINS"].split(",") if a.strip()]
    loaded: list[tuple[object, str, str, str]] = []
    if autoload:
        def order(e: Any) -> tuple[bool, str, str]:
            dist = e.dist.name if e.dist else ""
            return (dist != BUILTIN_DIST, dist, e.name)

        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=order):
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            builtin_kind = dist == BUILTIN_DIST and ep.value.startswith("harness.kinds.")
            if allow is not None and ep.name not in allow and dist not in allow and not builtin_kind:
                continue  # the built-in kinds are the shared vocabulary: an allow-list never drops them
            try:
                obj = ep.load()
            except Exception as exc:
                catalog.plugins[ep.name] = PluginInfo(ep.name, dist, version, ep.value, error=f"import failed: {type(exc).__name__}: {exc}")
                continue
            loaded.append((obj, ep.name, dist, version))
    loaded += [(obj, name, "", "") for obj, name in plugins]
    catalog.add_plugins(loaded)
    catalog.pm.check_pending()  # unknown hooks were already refused plugin by plugin in add_plugin
    return catalog


def broken_plugins_warning(catalog: Catalog) -> str:
    broken = [p for p in catalog.plugins.values() if not p.ok]
    return "".join(f"warning: plugin {p.name!r} ({p.dist}) is broken and was skipped: {p.error}\n" for p in broken)
