"""Result files and the DuckDB database derived from them.

`<results>/runs/<run_id>/result.json` is the source of truth: a worker writes it atomically
(temporary file + rename) when a run ends, so a killed run leaves nothing half-written. The
database `<results>/harness.duckdb` is derived: `sync()` ingests every valid result file that
it does not hold yet, and it can always be rebuilt from the files. Only the coordinating
process writes the database (DuckDB allows one writing process per file); it holds the
connection only while ingesting. Nothing read here is ever unpickled or executed: JSON only.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged", "timeout")
DONE_STATUSES = ("ok", "diverged")  # a re-run skips these; failed/timed-out runs are tried again
DB_NAME = "harness.duckdb"
CLAIM_TTL_OTHER_HOST_S = 24 * 3600  # a claim from another machine (shared folder) expires after a day

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    suite VARCHAR NOT NULL,
    suite_version VARCHAR NOT NULL,
    scale VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    entry VARCHAR NOT NULL,
    seed INTEGER NOT NULL,
    dataset VARCHAR,
    model VARCHAR,
    recipe_id VARCHAR NOT NULL,
    primary_metric VARCHAR NOT NULL,
    primary_higher_is_better BOOLEAN NOT NULL,
    status VARCHAR NOT NULL,
    error VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    duration_s DOUBLE,
    spec VARCHAR NOT NULL,        -- canonical JSON: what the run id hashes
    provenance VARCHAR NOT NULL,  -- JSON: versions, device, host, git commit, plugin packages
    info VARCHAR,                 -- JSON: facts the suite recorded (class counts, ...)
    record_digest VARCHAR NOT NULL, -- hash of the result file's record: re-ingest when it changes
    baseline VARCHAR              -- the suite's baseline entry when the run was made (for paired tests)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,                 -- NULL where undefined (e.g. no few-shot class)
    higher_is_better BOOLEAN NOT NULL,
    position INTEGER NOT NULL,    -- the suite's order of its metrics, for display
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS series (
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    idx INTEGER NOT NULL,
    value DOUBLE
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""


class CorruptResult(Exception):
    """A result file that is truncated, malformed or inconsistent with its run id."""


def _clean_number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def validate_record(record: Any, *, expected_id: str | None = None) -> dict[str, Any]:
    """Check a parsed result record; raise CorruptResult saying what is wrong."""
    from harness.spec import RunSpec

    if not isinstance(record, dict):
        raise CorruptResult("not a JSON object")
    if record.get("schema") != SCHEMA_VERSION:
        raise CorruptResult(f"schema {record.get('schema')!r}, expected {SCHEMA_VERSION}")
    for key in ("run_id", "spec", "entry", "variant", "status", "metrics", "series", "provenance", "primary_metric"):
        if key not in record:
            raise CorruptResult(f"missing field {key!r}")
    if record["status"] not in STATUSES:
        raise CorruptResult(f"unknown status {record['status']!r}")
    try:
        spec = RunSpec.from_canonical(record["spec"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptResult(f"malformed spec: {exc}") from None
    if spec.run_id != record["run_id"]:
        raise CorruptResult(f"run id {record['run_id']} does not match the hash of its spec ({spec.run_id})")
    if expected_id is not None and record["run_id"] != expected_id:
        raise CorruptResult(f"file of run {expected_id} holds run {record['run_id']}")
    if not isinstance(record["metrics"], dict) or not isinstance(record["series"], dict):
        raise CorruptResult("metrics and series must be objects")
    for name, m in record["metrics"].items():
        if not isinstance(m, dict) or "value" not in m or "higher_is_better" not in m:
            raise CorruptResult(f"metric {name!r} must be {{value, higher_is_better}}")
        if m["value"] is not None and not isinstance(m["value"], (int, float)):
            raise CorruptResult(f"metric {name!r} has a non-numeric value {m['value']!r}")
    for name, values in record["series"].items():
        if not isinstance(values, list) or any(v is not None and not isinstance(v, (int, float)) for v in values):
            raise CorruptResult(f"series {name!r} must be a list of numbers")
    return record


def read_result(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResult(f"unreadable JSON ({exc})") from None
    return validate_record(record, expected_id=path.parent.name if path.parent.name != "." else None)


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class SyncReport:
    ingested: int = 0
    problems: list[str] = field(default_factory=list)


class ResultStore:
    """One results folder: `runs/<run_id>/result.json` files and the derived database."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.db_path = self.root / DB_NAME

    # -- result files (the source of truth) ---------------------------------------------------
    def write(self, record: dict[str, Any]) -> Path:
        """Write a run's result file atomically; a concurrent reader sees the old file or the new."""
        record = validate_record(_json_safe(record))
        run_dir = self.runs_dir / record["run_id"]
        run_dir.mkdir(parents=True, exist_ok=True)
        final = run_dir / "result.json"
        tmp = run_dir / f".result.json.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def result_paths(self) -> list[Path]:
        return sorted(self.runs_dir.glob("*/result.json")) if self.runs_dir.is_dir() else []

    def scan(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Every valid result record by run id, and a line per corrupt file."""
        records, problems = {}, []
        for path in self.result_paths():
            try:
                record = read_result(path)
            except CorruptResult as exc:
                problems.append(f"skipped corrupt result file {path}: {exc}")
                continue
            records[record["run_id"]] = record
        return records, problems

    def done_ids(self) -> set[str]:
        """Runs that need no training: a valid result file with status ok or diverged."""
        records, _ = self.scan()
        return {rid for rid, r in records.items() if r["status"] in DONE_STATUSES}

    # -- claims: which process is training a run right now -----------------------------------
    def _claim_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id / ".claim"

    def claim(self, run_id: str, *, worker_pid: int | None = None, update: bool = False) -> bool:
        """Claim a run for this process (atomic O_EXCL create); False if a live process holds it.

        A claim left by a process that died (same host, pid gone, e.g. after `kill -9`) is stale
        and taken over. `update=True` rewrites this process's own claim (to note the worker pid).
        """
        path = self._claim_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "worker_pid": worker_pid, "since": time.time()})
        if update:
            tmp = path.with_name(f".claim.{os.getpid()}.tmp")
            tmp.write_text(body)
            os.replace(tmp, path)
            return True
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._claim_is_stale(path):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
            return True
        return False

    def release(self, run_id: str) -> None:
        path = self._claim_path(run_id)
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass

    def is_claimed_by_other(self, run_id: str) -> bool:
        path = self._claim_path(run_id)
        if not path.exists() or self._claim_is_stale(path):
            return False
        try:
            return json.loads(path.read_text()).get("pid") != os.getpid()
        except (OSError, ValueError):
            return False

    def has_result(self, run_id: str) -> bool:
        return (self.runs_dir / run_id / "result.json").exists()

    def result_mtime(self, run_id: str) -> float:
        """When the run's result file was last written (0 if there is none)."""
        try:
            return (self.runs_dir / run_id / "result.json").stat().st_mtime
        except OSError:
            return 0.0

    @staticmethod
    def _claim_is_stale(path: Path) -> bool:
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            return True  # unreadable: its writer died mid-write
        if owner.get("host") != socket.gethostname():
            return time.time() - float(owner.get("since", 0)) > CLAIM_TTL_OTHER_HOST_S
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, TypeError, ValueError):
            return False
        return False

    # -- the database (derived) ---------------------------------------------------------------
    def connect(self, *, read_only: bool = False, wait_s: float = 30.0) -> Any:
        """Open the database, creating the schema; wait for another writer to finish."""
        import duckdb

        if read_only and not self.db_path.exists():
            raise HarnessError(f"no results database at {self.db_path}; run `harness run suite=...` first, or `harness collect` to build it from result files")
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" in str(exc).lower() and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise HarnessError(_db_error(self.db_path, exc)) from None
            except duckdb.Error as exc:
                raise HarnessError(_db_error(self.db_path, exc)) from None
        if not read_only:
            con.execute(_DDL)
            # databases made before a column existed gain it (the result files hold the values)
            con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS baseline VARCHAR")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        return con

    def sync(self, records: Iterable[dict[str, Any]] | None = None) -> SyncReport:
        """Ingest result records (default: every valid file under runs/) the database lacks or holds older."""
        report = SyncReport()
        if records is None:
            scanned, report.problems = self.scan()
            records = scanned.values()
        records = list(records)
        con = self.connect()
        try:
            held = dict(con.execute("SELECT run_id, record_digest FROM runs").fetchall())
            fresh = [r for r in records if held.get(r["run_id"]) != record_digest(r)]
            if fresh:
                con.execute("BEGIN TRANSACTION")
                try:
                    _insert(con, fresh)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            report.ingested = len(fresh)
        finally:
            con.close()
        return report


def _ts(text: Any) -> str | None:
    if not text:
        return None
    # DuckDB renders TIMESTAMP as 'YYYY-MM-DD HH:MM:SS[.ffffff]'
    return str(text).replace("T", " ").removesuffix("Z").removesuffix("+00:00")


def _insert(con: Any, records: list[dict[str, Any]]) -> None:
    import pandas as pd

    ids = [r["run_id"] for r in records]
    for table in ("metrics", "series", "runs"):
        con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    runs = pd.DataFrame(
        [
            {
                "run_id": r["run_id"],
                "suite": r["spec"]["suite"],
                "suite_version": r["spec"]["suite_version"],
                "scale": r["spec"]["scale"],
                "variant": r["variant"],
                "entry": r["entry"],
                "seed": int(r["spec"]["seed"]),
                "dataset": r["spec"]["recipe"].get("dataset"),
                "model": r["spec"]["recipe"].get("model"),
                "recipe_id": recipe_id(r["spec"]["recipe"]),
                "primary_metric": r["primary_metric"],
                "primary_higher_is_better": bool(r.get("primary_higher_is_better", True)),
                "status": r["status"],
                "error": r.get("error"),
                "started_at": pd.Timestamp(_ts(r.get("started_at"))) if r.get("started_at") else pd.NaT,
                "finished_at": pd.Timestamp(_ts(r.get("finished_at"))) if r.get("finished_at") else pd.NaT,
                "duration_s": _clean_number(r.get("duration_s")),
                "spec": json.dumps(r["spec"], sort_keys=True),
                "provenance": json.dumps(r["provenance"], sort_keys=True),
                "info": json.dumps(r.get("info", {}), sort_keys=True),
                "record_digest": record_digest(r),
                "baseline": r.get("baseline"),
            }
            for r in records
        ]
    )
    metrics = pd.DataFrame(
        [(r["run_id"], name, _clean_number(m["value"]), bool(m["higher_is_better"]), i) for r in records for i, (name, m) in enumerate(r["metrics"].items())],
        columns=["run_id", "name", "value", "higher_is_better", "position"],
    )
    series = pd.DataFrame(
        [(r["run_id"], name, i, _clean_number(v)) for r in records for name, values in r["series"].items() for i, v in enumerate(values)],
        columns=["run_id", "name", "idx", "value"],
    )
    con.register("new_runs", runs)
    con.register("new_metrics", metrics)
    con.register("new_series", series)
    con.execute("INSERT INTO runs SELECT * FROM new_runs")
    con.execute("INSERT INTO metrics SELECT run_id, name, value, higher_is_better, CAST(position AS INTEGER) FROM new_metrics")
    con.execute("INSERT INTO series SELECT run_id, name, CAST(idx AS INTEGER), value FROM new_series")
    for view in ("new_runs", "new_metrics", "new_series"):
        con.unregister(view)


def record_digest(record: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def recipe_id(recipe: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def _db_error(path: Path, exc: Exception) -> str:
    return (
        f"cannot open the results database {path}: {exc}. If the file is not a harness DuckDB database, move it "
        f"away; the database can be rebuilt from the result files with `harness collect {path.parent}`."
    )
