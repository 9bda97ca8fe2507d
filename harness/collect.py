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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.predictions import FILE_NAME as PREDICTIONS_FILE
from harness.predictions import MAX_BYTES as MAX_PREDICTIONS_BYTES
from harness.predictions import BadPredictions
from harness.predictions import decode as decode_predictions
from harness.records import (
    RUN_ID,
    CorruptResult,
    derived_names,
    read_regular_file,
    read_result_and_text,
    reject_json_constant,
    validate_record,
)
from harness.store import BATCH, ResultStore, SyncReport

# what is read from a harness database: stored columns of base tables, nothing else
DB_COLUMNS = {
    "runs": ("run_id", "entry", "variant", "primary_metric", "primary_higher_is_better", "status", "error",
             "started_at", "finished_at", "duration_s", "spec", "provenance", "info", "baseline"),
    "metrics": ("run_id", "name", "value", "higher_is_better", "position"),
    "series": ("run_id", "name", "idx", "value"),
}
OPTIONAL_DB_COLUMNS = {("runs", "baseline")}  # databases made before runs recorded their baseline
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file
MAX_PENDING_BYTES = 64 * 2**20  # predictions and series held for one batch of copies at most: memory stays bounded
SERIES_VALUE_BYTES = 100  # what one series value costs while a batch is written and ingested (Python float, list and frame slots)


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


@dataclass
class Candidate:
    """A checked record from a source (it passed `validate_record`; its predictions, if any, were
    checked against it), with the bytes of its predictions file."""

    where: str
    record: dict[str, Any]
    predictions: bytes | None = None
    text: bytes | None = None  # the result file as read, when the record came from one


def checked_predictions(data: bytes, record: dict[str, Any]) -> bytes:
    """`data` if it is a valid predictions file of `record` (harness.predictions.decode); else BadPredictions."""
    decode_predictions(data, record["predictions"])
    return data


def without_predictions(record: dict[str, Any], notes: _Notes, why: str) -> dict[str, Any]:
    record = {k: v for k, v in record.items() if k != "predictions"}
    notes.add(f"stored without its per-sample predictions ({why})", f"run {record['run_id']}")
    return record


def read_results(files: list[Path]) -> Iterator[tuple[Path, dict[str, Any] | None, bytes | None, str | None]]:
    """(file, its checked record, its bytes, None) or (file, None, None, why it is corrupt) for each file, one at a time."""
    for file in files:
        try:
            record, text = read_result_and_text(file, expected_id=_expected_id(file))
        except CorruptResult as exc:
            yield file, None, None, str(exc)
            continue
        yield file, record, text, None


def _from_files(files: Iterable[Path], skipped: SyncReport, notes: _Notes) -> Iterator[Candidate]:
    """Records of result files, one at a time; a record naming predictions brings the checked file
    beside it, and a predictions file that does not match its record refuses the run (a missing
    one only drops them)."""
    for file, record, text, problem in read_results(list(files)):
        if record is None:
            skipped.skip_file(file, str(problem))
            continue
        data = None
        if record.get("predictions") is not None:
            beside = file.parent / PREDICTIONS_FILE
            if not os.path.lexists(beside):
                record = without_predictions(record, notes, f"no {PREDICTIONS_FILE} beside its result file")
            else:
                try:
                    data = checked_predictions(read_regular_file(beside, MAX_PREDICTIONS_BYTES), record)
                except (CorruptResult, BadPredictions) as exc:
                    skipped.skip(f"predictions file {beside}", f"{exc}; its run {record['run_id']} is not collected", key=str(beside.resolve()))
                    continue
        yield Candidate(str(file), record, data, text)


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


def _select(con: Any, table: str, columns: tuple[str, ...], *, of_wanted: bool = False) -> Any:
    """A cursor over the columns of a table of the source (rows of the runs in `wanted`, if asked).
    Plain quoted column names only: no function of ours is evaluated inside the source database."""
    names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    where = ' WHERE "run_id" IN (SELECT run_id FROM wanted)' if of_wanted else ""
    return con.execute(f'SELECT {names} FROM source.main."{table}"{where}')


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


def _check_database(path: Path) -> None:
    """Refuse a database that is not a harness results database before anything is copied."""
    con = _open_foreign_database(path)
    try:
        _stored_columns(con, path)
    finally:
        con.close()


def _records_from_db(path: Path, skipped: SyncReport, *, batch: int = BATCH) -> Iterator[Candidate]:
    """Result records rebuilt from a harness database's rows, each validated like a result file;
    read `batch` runs at a time (with their metrics and series), so memory stays bounded."""
    import duckdb

    con = _open_foreign_database(path)
    try:
        columns = _stored_columns(con, path)
        text_keys = _text_keyed(con)
        con.execute("CREATE TEMPORARY TABLE wanted (run_id VARCHAR)")
        runs = con.cursor()
        _select(runs, "runs", columns["runs"])
        while True:
            rows = [dict(zip(columns["runs"], row)) for row in runs.fetchmany(batch)]
            if not rows:
                break
            ids = [row["run_id"] for row in rows if isinstance(row["run_id"], str)]
            parts: dict[str, dict[str, list[dict[str, Any]]]] = {rid: {"metrics": [], "series": []} for rid in ids}
            con.execute("DELETE FROM wanted")
            con.executemany("INSERT INTO wanted VALUES (?)", [[rid] for rid in ids])
            for table in ("metrics", "series"):
                if table in text_keys:  # rows of another key type belong to no run
                    for values in _select(con, table, columns[table], of_wanted=True).fetchall():
                        row = dict(zip(columns[table], values))
                        parts[row["run_id"]][table].append(row)
            yield from _candidates_of_rows(path, rows, parts, skipped)
    except duckdb.Error as exc:
        raise HarnessError(f"{path} is a DuckDB file but not a readable harness results database: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def _text_keyed(con: Any) -> set[str]:
    """The tables of the source whose run_id column is text (rows keyed otherwise belong to no run)."""
    return {
        table for (table,) in con.execute(
            "SELECT table_name FROM duckdb_columns() WHERE database_name = 'source' AND schema_name = 'main' AND column_name = 'run_id' AND data_type = 'VARCHAR'"
        ).fetchall()
    }


def _candidates_of_rows(path: Path, runs: list[dict[str, Any]], by_run: dict[str, dict[str, list[dict[str, Any]]]], skipped: SyncReport) -> Iterator[Candidate]:
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
            candidate = Candidate(where, validate_record(record))
        except (CorruptResult, TypeError, ValueError) as exc:  # a column of an unexpected type included
            skipped.skip(where, str(exc))
            continue
        yield candidate


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
    order = {m.name: i for i, m in enumerate(card.metrics)}  # a result file keeps them sorted by name; show them in the card's order
    metrics = {}
    for name, m in sorted(record["metrics"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        if name in directions and m["higher_is_better"] != directions[name]:
            notes.add(f"a metric's direction differs from suite {suite} v{version}'s card; stored as the card's", f"run {rid}: {name}")
        metrics[name] = {**m, "higher_is_better": directions.get(name, m["higher_is_better"])}
    record["metrics"] = metrics
    return record


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------


def installed_cards(suites: Iterable[Any] | None) -> tuple[dict[tuple[str, str], Any], dict[str, list[str]]]:
    """The suite cards that decide primary metrics and baselines (default: the installed catalog's)."""
    if suites is None:
        from harness.catalog import load_catalog

        suites = list(load_catalog().suites)
    cards = {(s.name, s.version): s for s in suites}
    installed: dict[str, list[str]] = {}
    for s in suites:
        installed.setdefault(s.name, []).append(str(s.version))
    return cards, installed


def merge(candidates: Iterable[Candidate], target: Path, *, suites: Iterable[Any] | None, report: CollectReport, notes: _Notes | None = None) -> CollectReport:
    """Store checked candidates in the results folder `target` (each record's row from its spec and
    the installed card; de-duplicated by run id: what is held stays unless the newcomer succeeded
    where it did not), then sync its database. `harness collect` and `harness pull` both end here.

    Candidates are taken one at a time and stored a batch at a time (written with one flush of
    the file system, ingested from the records just written without reading them back), so
    memory stays bounded however many there are."""
    cards, installed = installed_cards(suites)
    notes = notes or _Notes()
    store = ResultStore(target)
    existing = store.statuses()  # the target's own corrupt files are reported by the sync below
    rebuilt_before = store.rebuilt_runs
    with store.writing_session():  # opening it may rebuild the target's database from its files: those count as ingested
        report.ingested += store.rebuilt_runs - rebuilt_before
        _merge_batches(candidates, store, existing, cards, installed, notes, report)
    report.notes = notes.lines()
    return report


def _merge_batches(candidates: Iterable[Candidate], store: ResultStore, existing: dict[str, str], cards: dict[tuple[str, str], Any],
                   installed: dict[str, list[str]], notes: _Notes, report: CollectReport) -> None:
    pending: list[tuple[dict[str, Any], bytes | None]] = []
    texts: dict[str, bytes] = {}  # records stored as read: their files are copied byte for byte
    pending_bytes = 0

    def store_pending() -> None:
        nonlocal pending_bytes
        if pending:
            store.write_many(pending, checked=True, texts=texts)  # every candidate was validated where it was read
            sync = store.sync(store.written_records())
            report.ingested += sync.ingested
            report.skipped.merge(sync)
            pending.clear()
            texts.clear()
            pending_bytes = 0

    for candidate in candidates:
        record = _normalise(candidate.record, cards, installed, notes)
        held = existing.get(record["run_id"])
        if held is not None and (held == "ok" or record["status"] != "ok"):
            continue  # de-duplicate: keep what we have unless the newcomer succeeded where ours did not
        pending.append((record, candidate.predictions))
        if candidate.text is not None and record == candidate.record:
            texts[record["run_id"]] = candidate.text
        pending_bytes += len(candidate.predictions or b"") + SERIES_VALUE_BYTES * sum(len(v) for v in record["series"].values())
        existing[record["run_id"]] = record["status"]
        report.copied += 1
        if len(pending) >= BATCH or pending_bytes >= MAX_PENDING_BYTES:
            store_pending()
    store_pending()
    sync = store.sync()  # the target's files not written here (new, changed or corrupt) reach the database
    report.ingested += sync.ingested
    report.skipped.merge(sync)


def collect(paths: list[Path], target: Path, *, suites: Iterable[Any] | None = None) -> CollectReport:
    """Copy the valid records of `paths` into the results folder `target` and sync its database.

    `suites`: the installed suites whose cards decide primary metrics and baselines (default:
    the installed catalog's). Every source is checked before anything is copied (what it is, and
    for a database that it is a harness one); records are then read, copied and ingested in
    batches."""
    kinds = [(Path(p), _kind_of(Path(p))) for p in paths]
    for path, kind in kinds:
        if kind == "database":
            _check_database(path)
    report = CollectReport()
    notes = _Notes()

    def candidates() -> Iterator[Candidate]:
        for path, kind in kinds:
            if kind == "folder":
                files = sorted(set(path.glob("runs/*/result.json")) | set(path.glob("*/result.json")))
                if not files:
                    report.skipped.skip(f"folder {path}", f"it holds no result files (expected {path}/runs/<run_id>/result.json)")
                yield from _from_files(files, report.skipped, notes)
            elif kind == "file":
                yield from _from_files([path], report.skipped, notes)
            else:
                yield from _records_from_db(path, report.skipped)

    return merge(candidates(), target, suites=suites, report=report, notes=notes)
