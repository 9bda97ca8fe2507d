"""Merge results from other machines or collaborators into one results folder.

Sources are result folders (holding `runs/<id>/result.json`), single result files, or harness
DuckDB databases (opened read-only; their rows are turned back into result records). Every
record is validated exactly as a local result file is; corrupt ones are skipped with a warning.
Records are de-duplicated by run id; copies land in the target's `runs/` (the source of truth)
and the target database is then synced from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store import CorruptResult, ResultStore, read_result, validate_record


@dataclass
class CollectReport:
    copied: int = 0
    ingested: int = 0
    problems: list[str] = field(default_factory=list)


def _records_from_db(path: Path) -> list[dict[str, Any]]:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise HarnessError(f"cannot read {path} as a harness database: {exc}") from None
    try:
        runs = con.execute(
            "SELECT run_id, entry, variant, primary_metric, primary_higher_is_better, status, error, "
            "strftime(started_at, '%Y-%m-%dT%H:%M:%S.%f'), strftime(finished_at, '%Y-%m-%dT%H:%M:%S.%f'), duration_s, spec, provenance, info, baseline FROM runs"
        ).fetchall()
        metrics = con.execute("SELECT run_id, name, value, higher_is_better FROM metrics ORDER BY run_id, position").fetchall()
        series = con.execute("SELECT run_id, name, idx, value FROM series ORDER BY run_id, name, idx").fetchall()
    except duckdb.Error as exc:
        raise HarnessError(f"{path} is a DuckDB file but not a harness results database: {exc}") from None
    finally:
        con.close()
    records: dict[str, dict[str, Any]] = {}
    for rid, entry, variant, primary, hib, status, error, started, finished, duration, spec, prov, info, baseline in runs:
        records[rid] = {
            "schema": 1, "run_id": rid, "entry": entry, "variant": variant, "primary_metric": primary,
            "primary_higher_is_better": hib, "status": status, "error": error, "started_at": started,
            "finished_at": finished, "duration_s": duration, "spec": json.loads(spec),
            "provenance": json.loads(prov), "info": json.loads(info or "{}"), "metrics": {}, "series": {},
        }
        if baseline is not None:
            records[rid]["baseline"] = baseline
    for rid, name, value, hib in metrics:
        if rid in records:
            records[rid]["metrics"][name] = {"value": value, "higher_is_better": hib}
    for rid, name, _idx, value in series:
        if rid in records:
            records[rid]["series"].setdefault(name, []).append(value)
    return list(records.values())


def collect(paths: list[Path], target: Path) -> CollectReport:
    report = CollectReport()
    store = ResultStore(target)
    existing, _ = store.scan()
    for path in paths:
        if not path.exists():
            raise HarnessError(f"{path} does not exist; give result folders (holding runs/), result.json files or .duckdb files")
        candidates: list[tuple[str, dict[str, Any] | None, str]] = []
        if path.is_dir():
            for file in sorted(path.glob("runs/*/result.json")) + sorted(path.glob("*/result.json")):
                try:
                    candidates.append((str(file), read_result(file), ""))
                except CorruptResult as exc:
                    candidates.append((str(file), None, str(exc)))
            if not candidates:
                report.problems.append(f"{path} holds no result files (expected {path}/runs/<run_id>/result.json)")
        elif path.suffix == ".json":
            try:
                candidates.append((str(path), read_result(path), ""))
            except CorruptResult as exc:
                candidates.append((str(path), None, str(exc)))
        else:
            for record in _records_from_db(path):
                try:
                    candidates.append((f"{path}:{record['run_id']}", validate_record(record), ""))
                except CorruptResult as exc:
                    candidates.append((f"{path}:{record.get('run_id')}", None, str(exc)))
        for where, record, problem in candidates:
            if record is None:
                report.problems.append(f"skipped corrupt result {where}: {problem}")
                continue
            held = existing.get(record["run_id"])
            if held is not None and (held["status"] == "ok" or record["status"] != "ok"):
                continue  # de-duplicate: keep what we have unless the newcomer succeeded where ours did not
            store.write(record)
            existing[record["run_id"]] = record
            report.copied += 1
    sync = store.sync()
    report.ingested = sync.ingested
    report.problems += sync.problems
    return report
