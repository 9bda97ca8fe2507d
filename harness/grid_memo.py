"""A stored grid answers without loading plugins: a memo of what a `harness run` command resolved to.

Turning `harness run` keys into run ids means loading every plugin, and with them torch: seconds
before anything is decided. After a grid ran to the end, its memo records, for the command's
grid-defining keys and a fingerprint of the installed plugin code, the grid's run ids and what
its leaderboard needs from the catalog (the suite's validation metric, the published numbers).
The same command again, with the same plugin code and every run still stored, prints the
leaderboard from the memo and the database without importing torch.

The fingerprint covers the entry points of the `harness` group (names, targets, distribution
versions), the environment variables that choose plugins, and the size and modification time of
every Python file of the packages those entry points live in (harness itself included): editing
a method, a suite or the core gives another fingerprint and a full resolve. A memo is a cache in
the results folder (`.grids/<key>.json`), read as data and checked field by field; a missing,
stale or unreadable one costs only the full resolve.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.reported import Reported

SCHEMA = 1
FOLDER = ".grids"
# keys that say how or where a grid runs, or how its board prints, not which runs it holds
NOT_GRID_KEYS = {"format", "results", "jobs", "executor", "address", "timeout", "retries", "compile", "threads", "loggers", "log_dir"}
PLUGIN_ENV = ("HARNESS_PLUGINS", "HARNESS_DISABLE_PLUGIN_AUTOLOAD")
_RUN_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_MEMO_BYTES = 64 * 1024 * 1024


def plugin_fingerprint() -> str:
    """A digest of the installed plugin code, computed without importing any plugin."""
    from harness.catalog import ENTRY_POINT_GROUP

    h = hashlib.sha256()
    packages = {"harness"}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ""
        h.update(f"{ep.name}={ep.value} [{dist}]\n".encode())
        packages.add(ep.value.split(":")[0].split(".")[0])
    for name in PLUGIN_ENV:
        h.update(f"{name}={os.environ.get(name, '')}\n".encode())
    for package in sorted(packages):
        for path in _source_files(package):
            try:
                st = path.stat()
            except OSError:
                continue
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def entry_points_only(catalog: Any) -> bool:
    """Whether every plugin of the catalog came through an entry point (what the fingerprint sees)."""
    from harness.catalog import ENTRY_POINT_GROUP

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return all(p.name in names for p in catalog.plugins.values())


def _source_files(package: str) -> list[Path]:
    """The Python files of a top-level package or module, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return sorted(p for root in spec.submodule_search_locations for p in Path(root).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin else []


def grid_key(overrides: dict[str, str], fingerprint: str) -> str:
    """The memo's name: the grid-defining keys (values as typed) and the plugin fingerprint."""
    keys = {k: v for k, v in overrides.items() if k not in NOT_GRID_KEYS and not k.startswith("slurm_")}
    text = json.dumps({"schema": SCHEMA, "keys": keys, "plugins": fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class GridMemo:
    """What a command's grid resolved to, and what its leaderboard needs from the catalog."""

    suite: str
    scale: str
    variants: tuple[str, ...]
    run_ids: tuple[str, ...]
    validation_metric: str | None
    reported: tuple[Reported, ...]

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GridMemo:
        """Parse and check a memo; ValueError on anything that is not exactly what `to_json` writes."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError("not a grid memo of this schema")
        suite, scale, variants, run_ids = data.get("suite"), data.get("scale"), data.get("variants"), data.get("run_ids")
        validation = data.get("validation_metric")
        if not isinstance(suite, str) or not isinstance(scale, str) or not _str_list(variants) or not _str_list(run_ids):
            raise ValueError("bad suite, scale, variants or run ids")
        if not all(_RUN_ID.match(r) for r in run_ids) or not (validation is None or isinstance(validation, str)):
            raise ValueError("bad run id or validation metric")
        reported = tuple(_reported(r) for r in data.get("reported", []))
        return cls(suite, scale, tuple(variants), tuple(run_ids), validation, reported)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _pairs(value: Any) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in value):
        raise ValueError("bad pairs")
    return tuple((k, v) for k, v in value)


def _reported(data: Any) -> Reported:
    if not isinstance(data, dict) or set(data) - {f.name for f in dataclasses.fields(Reported)}:
        raise ValueError("bad reported number")
    fields = dict(data)
    for key in ("per_corruption", "axes", "recipe"):
        fields[key] = _pairs(fields.get(key, []))
    for key in ("entry", "metric", "source", "note", "setting", "scale", "suite"):
        if not isinstance(fields.get(key, ""), str):
            raise ValueError(f"bad {key}")
    for key in ("value", "tolerance"):
        if fields.get(key) is not None and not isinstance(fields[key], (int, float)):
            raise ValueError(f"bad {key}")
    if not isinstance(fields.get("comparable", True), bool):
        raise ValueError("bad comparable")
    return Reported(**fields)


def memo_path(results: Path, key: str) -> Path:
    return results / FOLDER / f"{key}.json"


def read(results: Path, key: str) -> GridMemo | None:
    """The memo for `key`, or None when there is none or it is unreadable (a cache: never an error)."""
    path = memo_path(results, key)
    try:
        if not path.is_file() or path.stat().st_size > MAX_MEMO_BYTES:
            return None
        return GridMemo.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return None


def write(results: Path, key: str, memo: GridMemo) -> None:
    """Store a memo atomically; a folder that cannot take it only loses the shortcut."""
    path = memo_path(results, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(memo.to_json(), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def memo_of(catalog: Any, suite: Any, specs: list[Any]) -> GridMemo:
    """The memo of a grid just resolved against the loaded catalog."""
    from harness.reported import collect_reported

    return GridMemo(
        suite=suite.name, scale=specs[0].scale, variants=tuple(sorted({s.variant_label for s in specs})),
        run_ids=tuple(s.run_id for s in specs), validation_metric=suite.validation_metric,
        reported=tuple(collect_reported(catalog).get(suite.name, [])),
    )
