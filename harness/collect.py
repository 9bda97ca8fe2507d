"""Merge results from other machines or collaborators into one results folder.

Sources are result folders (holding `runs/<id>/result.json`), single result files, or harness
DuckDB databases. Everything from a source is data, never code:

- a file is read only if it is a regular file (not a FIFO or device) under the size limit;
- a database is attached read-only to an in-memory connection whose external access and
  extension loading are switched off (and locked) before anything in it is read; only the stored
  columns of its base tables `runs`, `metrics` and `series` are read, by plain column names, so
  no view, macro or computed column it brings is ever run;
- every record is validated against the store's schema exactly as a local result file is;
  corrupt ones are skipped with their path and the reason, and nothing already stored changes.

A record cannot choose its own leaderboard row: its entry and variant are derived from its spec,
and its primary metric, metric directions and baseline come from the installed suite card when
that suite is installed at the record's version (otherwise the record's own are kept, and the
report says so). Records are de-duplicated by run id; copies land in the target's `runs/` (the
source of truth) and the target database is then synced from them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.records import RUN_ID, CorruptResult, derived_names, read_result, reject_json_constant, validate_record
from harness.store import ResultStore, SyncReport

# what is read from a harness database: stored columns of base tables, nothing else
DB_COLUMNS = {
    "runs": ("run_id", "entry", "variant", "primary_metric", "primary_higher_is_better", "status", "error",
             "started_at", "finished_at", "duration_s", "spec", "provenance", "info", "baseline"),
    "metrics": ("run_id", "name", "value", "higher_is_better", "position"),
    "series": ("run_id", "name", "idx", "value"),
}
OPTIONAL_DB_COLUMNS = {("runs", "baseline")}  # databases made before runs recorded their baseline
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file


@dataclass
class CollectReport:
    copied: int = 0
    ingested: int = 0
    skipped: SyncReport = field(default_factory=SyncReport)
    notes: list[str] = field(default_factory=list)  # what was stored differently from the record, and why

    @property
    def problems(self) -> list[str]:
        """One line per skipped file or record (each counted once)."""
        return self.skipped.problems


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------


def _kind_of(path: Path) -> str:
    """"folder", "database" or "file"; a HarnessError for anything else, before anything is read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise HarnessError(f"{path} does not exist; give result folders (holding runs/), result.json files or .duckdb files") from None
    except OSError as exc:
        raise HarnessError(f"cannot read {path} ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    if not stat.S_ISREG(info.st_mode):
        raise HarnessError(f"{path} is not a regular file or folder (a FIFO or device?); give result folders, result.json files or .duckdb files")
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        raise HarnessError(f"cannot read {path} ({exc.strerror})") from None
    return "database" if head[8:12] == DUCKDB_MAGIC else "file"


def _expected_id(path: Path) -> str | None:
    """A file in a folder named like a run id must hold that run; a file elsewhere may hold any."""
    return path.parent.name if RUN_ID.fullmatch(path.parent.name) else None


def _from_files(files: Iterable[Path], skipped: SyncReport) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for file in files:
        try:
            out.append((str(file), read_result(file, expected_id=_expected_id(file))))
        except CorruptResult as exc:
            skipped.skip_file(file, str(exc))
    return out


def _open_foreign_database(path: Path) -> Any:
    """An in-memory connection with `path` attached read-only as `source`, locked down first."""
    import duckdb

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute("ATTACH ? AS source (READ_ONLY, TYPE duckdb)", [str(path.resolve())])
        # from here on nothing can touch a file or load an extension, and no SQL can undo that
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        con.close()
        raise HarnessError(f"cannot read {path} as a harness database: {exc}") from None
    return con


def _stored_columns(con: Any, path: Path) -> dict[str, tuple[str, ...]]:
    """The columns to read per table, after checking that each is a stored column of a base table.

    The catalog functions are the built-in ones: the attached database is not on the search path,
    so its macros cannot stand in for them."""
    tables = {
        name for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'source' AND schema_name = 'main' AND NOT temporary"
        ).fetchall()
    }
    views = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE database_name = 'source' AND NOT internal").fetchall()}
    missing = [t for t in DB_COLUMNS if t not in tables]
    if missing:
        as_views = [t for t in missing if t in views]
        hint = f" ({', '.join(as_views)} {'is a view' if len(as_views) == 1 else 'are views'}, which are never run)" if as_views else ""
        raise HarnessError(f"{path} is a DuckDB file but not a harness results database: it has no table {', '.join(missing)}{hint}")
    out = {}
    for table, wanted in DB_COLUMNS.items():
        present = dict(con.execute(
            "SELECT column_name, is_generated FROM duckdb_columns() WHERE database_name = 'source' AND schema_name = 'main' AND table_name = ?",
            [table],
        ).fetchall())
        computed = [c for c in wanted if present.get(c)]
        absent = [c for c in wanted if c not in present and (table, c) not in OPTIONAL_DB_COLUMNS]
        if computed or absent:
            what = f"computed (generated) column(s) {', '.join(computed)}, which are never run" if computed else f"no column(s) {', '.join(absent)}"
            raise HarnessError(f"{path} is a DuckDB file but not a harness results database: its table {table} has {what}")
        out[table] = tuple(c for c in wanted if c in present)
    return out


def _select(con: Any, table: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    # plain quoted column names only: no function of ours is evaluated inside the source database
    names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    return [dict(zip(columns, row)) for row in con.execute(f'SELECT {names} FROM source.main."{table}"').fetchall()]


def _json_text(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise CorruptResult(f"{what} is not JSON text")
    try:
        return json.loads(value, parse_constant=reject_json_constant)
    except (ValueError, RecursionError) as exc:
        raise CorruptResult(f"{what} is not valid JSON ({exc})") from None


def _time_text(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds")
    return value.isoformat() if isinstance(value, dt.date) else value


def _number(value: Any) -> Any:
    """A database's NaN/inf is stored as null, as a result file's would be."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _records_from_db(path: Path, skipped: SyncReport) -> list[tuple[str, dict[str, Any]]]:
    """Result records rebuilt from a harness database's rows, each validated like a result file."""
    import duckdb

    con = _open_foreign_database(path)
    try:
        columns = _stored_columns(con, path)
        runs, metrics, series = (_select(con, table, columns[table]) for table in ("runs", "metrics", "series"))
    except duckdb.Error as exc:
        raise HarnessError(f"{path} is a DuckDB file but not a readable harness results database: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    by_run: dict[Any, dict[str, list[dict[str, Any]]]] = {}
    for table, rows in (("metrics", metrics), ("series", series)):
        for row in rows:
            if isinstance(row["run_id"], str):  # rows of another key type belong to no run
                by_run.setdefault(row["run_id"], {"metrics": [], "series": []})[table].append(row)
    out = []
    for row in runs:
        rid = row["run_id"]
        where = f"corrupt record {rid!r} in {path}"
        try:
            if not isinstance(rid, str):
                raise CorruptResult("its run_id is not text")
            parts = by_run.get(rid, {"metrics": [], "series": []})
            if any(not isinstance(r["name"], str) for r in parts["metrics"] + parts["series"]):
                raise CorruptResult("a metric or series name is not text")
            metric_rows = sorted(parts["metrics"], key=lambda m: (m["position"] if isinstance(m["position"], int) else 0))
            series_rows = sorted(parts["series"], key=lambda s: (s["name"], s["idx"] if isinstance(s["idx"], int) else 0))
            record = {
                "schema": 1, "run_id": rid, "entry": row["entry"], "variant": row["variant"], "primary_metric": row["primary_metric"],
                "primary_higher_is_better": row["primary_higher_is_better"], "status": row["status"], "error": row["error"],
                "started_at": _time_text(row["started_at"]), "finished_at": _time_text(row["finished_at"]),
                "duration_s": _number(row["duration_s"]), "spec": _json_text(row["spec"], "spec"),
                "provenance": _json_text(row["provenance"], "provenance"),
                "info": _json_text(row["info"] or "{}", "info"),
                "metrics": {m["name"]: {"value": _number(m["value"]), "higher_is_better": m["higher_is_better"]} for m in metric_rows},
                "series": {},
            }
            for s in series_rows:
                record["series"].setdefault(s["name"], []).append(_number(s["value"]))
            if row.get("baseline") is not None:
                record["baseline"] = row["baseline"]
            out.append((where, validate_record(record)))
        except (CorruptResult, TypeError, ValueError) as exc:  # a column of an unexpected type included
            skipped.skip(where, str(exc))
    return out


# ---------------------------------------------------------------------------------------------
# a record's row on the leaderboard comes from its spec and the installed suite card
# ---------------------------------------------------------------------------------------------


class _Notes:
    """Notes on records stored differently from what they said, one line per kind of change."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, example)

    def lines(self) -> list[str]:
        return [f"{n} record(s): {kind} (e.g. {self.examples[kind]})" for kind, n in self.counts.items()]


def _normalise(record: dict[str, Any], cards: dict[tuple[str, str], Any], installed: dict[str, list[str]], notes: _Notes) -> dict[str, Any]:
    record = dict(record)
    rid = record["run_id"]
    entry, variant = derived_names(record)
    for key, derived in (("entry", entry), ("variant", variant)):
        if record[key] != derived:
            notes.add(f"the {key} named in the record differs from its spec's; stored as the spec's", f"run {rid}: {record[key]!r} -> {derived!r}")
            record[key] = derived
    suite, version = record["spec"]["suite"], record["spec"]["suite_version"]
    card = cards.get((suite, version))
    if card is None:
        have = f" (installed: v{', v'.join(installed[suite])})" if suite in installed else " (not installed here)"
        notes.add(f"suite {suite} v{version} has no installed card{have}; primary metric, metric directions and baseline are the record's own", f"run {rid}")
        return record
    primary_hib = card.metric(card.primary).higher_is_better
    said = (record["primary_metric"], record.get("primary_higher_is_better", primary_hib), record.get("baseline") or card.baseline)
    if said != (card.primary, primary_hib, card.baseline):  # a field the record lacks is simply filled in
        notes.add(
            f"primary metric or baseline differs from suite {suite} v{version}'s card; stored as the card's",
            f"run {rid}: primary {said[0]!r}, baseline {said[2]!r} -> {card.primary!r}, {card.baseline!r}",
        )
    record.update(primary_metric=card.primary, primary_higher_is_better=primary_hib, baseline=card.baseline)
    directions = {m.name: m.higher_is_better for m in card.metrics}
    metrics = {}
    for name, m in record["metrics"].items():
        if name in directions and m["higher_is_better"] != directions[name]:
            notes.add(f"a metric's direction differs from suite {suite} v{version}'s card; stored as the card's", f"run {rid}: {name}")
        metrics[name] = {**m, "higher_is_better": directions.get(name, m["higher_is_better"])}
    record["metrics"] = metrics
    return record


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------


def collect(paths: list[Path], target: Path, *, suites: Iterable[Any] | None = None) -> CollectReport:
    """Copy the valid records of `paths` into the results folder `target` and sync its database.

    `suites`: the installed suites whose cards decide primary metrics and baselines (default:
    the installed catalog's)."""
    if suites is None:
        from harness.catalog import load_catalog

        suites = list(load_catalog().suites)
    cards = {(s.name, s.version): s for s in suites}
    installed: dict[str, list[str]] = {}
    for s in suites:
        installed.setdefault(s.name, []).append(str(s.version))
    kinds = [(Path(p), _kind_of(Path(p))) for p in paths]  # every source is checked before anything is copied
    report = CollectReport()
    notes = _Notes()
    store = ResultStore(target)
    existing, _ = store.scan()  # the target's own corrupt files are reported by the sync below
    for path, kind in kinds:
        if kind == "folder":
            files = sorted(set(path.glob("runs/*/result.json")) | set(path.glob("*/result.json")))
            if not files:
                report.skipped.skip(f"folder {path}", f"it holds no result files (expected {path}/runs/<run_id>/result.json)")
            candidates = _from_files(files, report.skipped)
        elif kind == "file":
            candidates = _from_files([path], report.skipped)
        else:
            candidates = _records_from_db(path, report.skipped)
        for _where, record in candidates:
            record = _normalise(record, cards, installed, notes)
            held = existing.get(record["run_id"])
            if held is not None and (held["status"] == "ok" or record["status"] != "ok"):
                continue  # de-duplicate: keep what we have unless the newcomer succeeded where ours did not
            store.write(record)
            existing[record["run_id"]] = record
            report.copied += 1
    sync = store.sync()
    report.ingested = sync.ingested
    report.skipped.merge(sync)
    report.notes = notes.lines()
    return report
