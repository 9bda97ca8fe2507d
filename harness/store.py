"""Result files and the DuckDB database derived from them.

`<results>/runs/<run_id>/result.json` is the source of truth: the coordinator writes it
atomically (temporary file + fsync + rename) when a run ends, so a killed run leaves nothing
half-written, and a failed write leaves no temporary behind. The database
`<results>/harness.duckdb` is derived: `sync()` ingests every valid result file that it does
not hold yet, and it can always be rebuilt from the files; a database that is missing or
unreadable (truncated, corrupt) is rebuilt from them with a warning, the unreadable one kept
aside. Only the coordinating process writes the database (DuckDB allows one writing process
per file); it holds the connection only while ingesting.

Everything read here is data, never code: result files are read and checked as
`harness.records` says (regular files of bounded size, strict JSON, every field against
`RECORD_SCHEMA`) before anything is stored, and every DuckDB connection is opened with external
access and extension loading switched off and locked, so a view or macro inside a database
cannot read a file; a database holding views or macros is not one harness wrote, and is rebuilt.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.records import (  # noqa: F401 - the record's names are also the store's
    MAX_RESULT_BYTES,
    RECORD_SCHEMA,
    RUN_ID,
    SCHEMA_VERSION,
    STATUSES,
    CorruptResult,
    derived_names,
    json_safe,
    read_regular_file,
    read_result,
    reject_json_constant,
    timestamp_text,
    validate_record,
)

DONE_STATUSES = ("ok", "diverged")  # a re-run skips these; failed/timed-out runs are tried again
DB_NAME = "harness.duckdb"
CLAIM_TTL_OTHER_HOST_S = 24 * 3600  # a claim from another machine (shared folder) expires after a day

# Every connection to a database: no file access beyond the database itself, no extension
# installed or loaded on demand, and settings locked so SQL inside the file cannot undo this.
SAFE_DUCKDB_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}

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


# ---------------------------------------------------------------------------------------------
# processes and claims
# ---------------------------------------------------------------------------------------------

_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    try:  # a zombie (ended, not yet reaped by its parent) is not alive
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, Linux); tells a live process from a new one
    that reused a dead one's pid. None where /proc is not available."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ClaimHolder:
    """Who holds a run's claim: the coordinating process, its host and since when."""

    pid: int | None
    host: str
    since: float
    worker_pid: int | None = None

    def describe(self) -> str:
        when = dt.datetime.fromtimestamp(self.since, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "an unknown time"
        ago = max(0.0, time.time() - self.since) if self.since else None
        age = "" if ago is None else f", {_fmt_age(ago)} ago"
        where = "this host" if self.host == _HOST else f"host {self.host}"
        return f"process {self.pid} on {where} (claimed {when}{age})"


def _fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's content; None when there is no claim; {} when it cannot be read (stale)."""
    try:
        owner = json.loads(read_regular_file(path, 1 << 16))
    except CorruptResult:
        return None if not os.path.lexists(path) else {}
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _claim_is_stale(owner: dict[str, Any]) -> bool:
    try:
        pid, host, since = int(owner["pid"]), str(owner["host"]), float(owner.get("since", 0))
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: its writer died mid-write, or it is not a claim
    if host != _HOST:
        return time.time() - since > CLAIM_TTL_OTHER_HOST_S
    if not _pid_alive(pid):
        return True
    started = owner.get("started")
    return started is not None and _process_start(pid) not in (None, started)  # the pid was reused


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _leftover_temporary(path: Path, own: Path) -> bool:
    """A `.result.json.HOST.PID.tmp` (or `.claim...`) file whose writer is gone: a dead process of
    this host, or a day old from another host. Names without a host come from this host."""
    name = path.name
    prefix = next((f".{n}." for n in ("result.json", "claim") if name.startswith(f".{n}.")), None)
    if path == own or prefix is None or not name.endswith(".tmp"):
        return False
    host, _, pid_text = name[len(prefix) : -len(".tmp")].rpartition(".")
    if not pid_text.isdigit():
        return False
    if host in ("", _HOST):
        return not _pid_alive(int(pid_text))
    try:
        return time.time() - path.stat().st_mtime > CLAIM_TTL_OTHER_HOST_S
    except OSError:
        return False


def _os_error(exc: OSError, doing: str, root: Path) -> HarnessError:
    """What an operating-system error on the results folder means for the user, and the way out."""
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", -1):
        return HarnessError(
            f"no space left on the device of {root} while {doing}; free some space and run the same command again "
            "(every result stored before is intact; the run that could not be stored is trained again)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HarnessError(f"cannot write to the results folder {root} while {doing} ({exc.strerror}); choose a folder you can write with results=DIR")
    return HarnessError(f"could not {doing} in the results folder {root}: {exc.strerror or exc}")


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class SyncReport:
    ingested: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # what was skipped (a file's resolved path) -> why

    @property
    def problems(self) -> list[str]:
        """One line per skipped file or record, each counted once however often it was met."""
        return list(self.skipped.values())

    def skip_file(self, path: Path, reason: str) -> None:
        self.skip(f"corrupt result file {path}", reason, key=str(path.resolve()))

    def skip(self, what: str, reason: str, *, key: str | None = None) -> None:
        self.skipped.setdefault(key or what, f"skipped {what}: {reason}")

    def merge(self, other: SyncReport) -> None:
        for key, problem in other.skipped.items():
            self.skipped.setdefault(key, problem)


class ResultStore:
    """One results folder: `runs/<run_id>/result.json` files and the derived database.

    `warn` receives what a reader should know but that stops nothing (default: printed to stderr
    as `warning: ...`), e.g. that an unreadable database was rebuilt from the result files."""

    def __init__(self, root: Path | str, *, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.db_path = self.root / DB_NAME
        self.warn = warn or _print_warning
        self.rebuilt_runs = 0  # runs ingested by rebuilds of the database (see connect)

    # -- the folder ---------------------------------------------------------------------------
    def _check_folder(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise HarnessError(f"the results folder {self.root} is a file, not a folder; give a folder with results=DIR (or $HARNESS_RESULTS)")
        if self.runs_dir.exists() and not self.runs_dir.is_dir():
            raise HarnessError(
                f"{self.runs_dir} should be the folder of result files but is a file; move it away and run again "
                f"(`harness collect {self.db_path} results={self.root}` restores the result files from the database)"
            )

    def _make_folder(self, folder: Path) -> None:
        self._check_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"creating {folder}", self.root) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock over the folder's claims (and database repairs), across processes."""
        self._make_folder(self.runs_dir)
        try:
            fh = open(self.runs_dir / ".lock", "a+")
        except OSError as exc:
            raise _os_error(exc, "locking the results folder", self.root) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- result files (the source of truth) ---------------------------------------------------
    def write(self, record: dict[str, Any]) -> Path:
        """Write a run's result file atomically; a concurrent reader sees the old file or the new.
        A failed write leaves no temporary file, and raises HarnessError saying why."""
        record = validate_record(json_safe(record))
        run_dir = self.runs_dir / record["run_id"]
        self._make_folder(run_dir)
        final = run_dir / "result.json"
        tmp = run_dir / f".result.json.{_HOST}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=1, sort_keys=True, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException as exc:
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise _os_error(exc, f"writing {final}", self.root) from None
            raise
        for leftover in run_dir.glob(".*.tmp"):  # left by a write that was killed or failed
            if _leftover_temporary(leftover, tmp):
                _unlink_quietly(leftover)
        return final

    def result_paths(self) -> list[Path]:
        self._check_folder()
        return sorted(self.runs_dir.glob("*/result.json")) if self.runs_dir.is_dir() else []

    def scan_report(self) -> tuple[dict[str, dict[str, Any]], SyncReport]:
        """Every valid result record by run id, and the corrupt files skipped."""
        records: dict[str, dict[str, Any]] = {}
        report = SyncReport()
        for path in self.result_paths():
            try:
                record = read_result(path, expected_id=path.parent.name)
            except CorruptResult as exc:
                report.skip_file(path, str(exc))
                continue
            records[record["run_id"]] = record
        return records, report

    def scan(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Every valid result record by run id, and a line per corrupt file."""
        records, report = self.scan_report()
        return records, report.problems

    def done_ids(self) -> set[str]:
        """Runs that need no training: a valid result file with status ok or diverged."""
        records, _ = self.scan()
        return {rid for rid, r in records.items() if r["status"] in DONE_STATUSES}

    # -- claims: which process is training a run right now -----------------------------------
    def _claim_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id / ".claim"

    def claim(self, run_id: str, *, worker_pid: int | None = None, update: bool = False) -> bool:
        """Claim a run for this process; False if another live process holds it.

        A claim left by a process that died (same host, pid gone or reused, e.g. after `kill -9`),
        or one from another host older than a day, is stale and taken over. Checking and taking
        happen under an exclusive lock of the folder, so of many processes that find the same
        stale claim exactly one wins. `update=True` rewrites this process's own claim (to note
        the worker pid)."""
        path = self._claim_path(run_id)
        self._make_folder(path.parent)
        body = {"pid": os.getpid(), "host": _HOST, "worker_pid": worker_pid, "since": time.time(), "started": _process_start(os.getpid())}
        with self._locked():
            owner = _read_claim(path)
            mine = owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == _HOST
            if update:
                if not mine:
                    return False
                body["since"] = owner.get("since", body["since"])
            elif owner is not None and not mine and not _claim_is_stale(owner):
                return False
            try:
                _write_atomically(path, json.dumps(body))
            except OSError as exc:
                raise _os_error(exc, f"claiming run {run_id}", self.root) from None
        return True

    def release(self, run_id: str) -> None:
        path = self._claim_path(run_id)
        if not path.parent.is_dir():
            return
        with self._locked():
            owner = _read_claim(path)
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == _HOST:
                _unlink_quietly(path)

    def claim_holder(self, run_id: str) -> ClaimHolder | None:
        """The live process of another command (or host) holding the run's claim, if any."""
        owner = _read_claim(self._claim_path(run_id))
        if not owner or _claim_is_stale(owner) or (owner.get("pid") == os.getpid() and owner.get("host") == _HOST):
            return None
        worker = owner.get("worker_pid")
        return ClaimHolder(int(owner["pid"]), str(owner["host"]), float(owner.get("since") or 0), worker if isinstance(worker, int) else None)

    def claim_file(self, run_id: str) -> Path:
        """Where a run's claim lies: deleting it hands the run to the next command that asks."""
        return self._claim_path(run_id)

    def is_claimed_by_other(self, run_id: str) -> bool:
        return self.claim_holder(run_id) is not None

    def has_result(self, run_id: str) -> bool:
        return (self.runs_dir / run_id / "result.json").exists()

    def result_mtime(self, run_id: str) -> float:
        """When the run's result file was last written (0 if there is none)."""
        try:
            return (self.runs_dir / run_id / "result.json").stat().st_mtime
        except OSError:
            return 0.0

    # -- the database (derived) ---------------------------------------------------------------
    def connect(self, *, read_only: bool = False, wait_s: float = 30.0) -> Any:
        """Open the database (safely: see SAFE_DUCKDB_CONFIG), creating the schema; wait for
        another writer to finish. A missing database is built from the result files; one that
        DuckDB cannot read, or that holds views or macros (which harness never writes), is moved
        aside and rebuilt from them, with a warning. A file that is not a DuckDB database at all
        is left alone, with an error."""
        import duckdb

        self._check_folder()
        if read_only and not self.db_path.exists():
            if not self.result_paths():
                raise HarnessError(f"no results database at {self.db_path}; run `harness run suite=...` first, or `harness collect` to build it from result files")
            self._rebuild(f"there was no results database at {self.db_path}")
        if not read_only:
            self._make_folder(self.root)
        deadline = time.monotonic() + wait_s
        delay = 0.05
        repaired = False
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only, config=SAFE_DUCKDB_CONFIG)
            except duckdb.Error as exc:
                if _is_lock_conflict(exc):
                    if time.monotonic() < deadline:
                        time.sleep(delay)
                        delay = min(delay * 2, 1.0)
                        continue
                    raise HarnessError(f"the results database {self.db_path} stayed locked by another process for {wait_s:g} s; wait for it (another `harness run` or `collect`?) and try again") from None
                if repaired or "permission denied" in str(exc).lower() or not self._looks_like_duckdb():
                    raise HarnessError(_db_error(self.db_path, exc)) from None
            else:
                code = _code_objects(con)
                if not code:
                    break
                con.close()
                if repaired:
                    raise HarnessError(f"the results database {self.db_path} still holds {code} after it was rebuilt; move it away and run `harness collect {self.root}`")
            repaired = True
            problem, aside = self._set_aside_bad_database()
            if problem is not None:
                self._rebuild(f"the results database {self.db_path} {problem}; moved it to {aside}")
        if not read_only:
            try:
                con.execute(_DDL)
                # databases made before a column existed gain it (the result files hold the values)
                con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS baseline VARCHAR")
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            except duckdb.Error as exc:
                con.close()
                raise HarnessError(_db_error(self.db_path, exc)) from None
        return con

    def _looks_like_duckdb(self) -> bool:
        """DuckDB's magic bytes (or an empty file: a database whose creation was cut short)."""
        try:
            with open(self.db_path, "rb") as fh:
                head = fh.read(12)
        except OSError:
            return False
        return head == b"" or head[8:12] == b"DUCK"

    def _problem(self) -> str | None:
        """What is wrong with the database file; None if nothing (or another process holds it)."""
        import duckdb

        try:
            con = duckdb.connect(str(self.db_path), read_only=True, config=SAFE_DUCKDB_CONFIG)
        except duckdb.Error as exc:
            if _is_lock_conflict(exc) or not self.db_path.exists():
                return None
            return f"could not be read ({_first_line(exc)})"
        try:
            code = _code_objects(con)
        finally:
            con.close()
        return f"holds {code}, which harness never writes" if code else None

    def _set_aside_bad_database(self) -> tuple[str | None, Path | None]:
        """Move a bad database file to `harness.duckdb.unreadable-TIME-PID` (kept, never deleted):
        (what was wrong, where it went). (None, None) when another process repaired it meanwhile."""
        with self._locked():  # of two processes that find it bad, one moves it
            problem = self._problem()
            if problem is None:
                return None, None
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            aside = self.db_path.with_name(f"{DB_NAME}.unreadable-{stamp}-{os.getpid()}")
            try:
                os.replace(self.db_path, aside)
                wal = self.db_path.with_name(DB_NAME + ".wal")
                if wal.exists():
                    os.replace(wal, aside.with_name(aside.name + ".wal"))
            except OSError as err:
                raise _os_error(err, f"moving the unreadable database {self.db_path} aside", self.root) from None
        return problem, aside

    def _rebuild(self, why: str) -> None:
        """Build the database from the result files, saying why and what was skipped."""
        report = self.sync()
        self.rebuilt_runs += report.ingested
        self.warn(f"{why}; built it again from the {report.ingested} valid result file(s) in {self.runs_dir}")
        for problem in report.problems:
            self.warn(problem)

    def sync(self, records: Iterable[dict[str, Any]] | None = None) -> SyncReport:
        """Ingest result records (default: every valid file under runs/) the database lacks or holds older.

        A record the database refuses is skipped with its file's path and the reason; the others
        are stored (one bad record never blocks the rest)."""
        report = SyncReport()
        if records is None:
            scanned, report = self.scan_report()
            records = scanned.values()
        records = list(records)
        rebuilt_before = self.rebuilt_runs
        con = self.connect()  # may rebuild the database from the files first
        try:
            held = dict(con.execute("SELECT run_id, record_digest FROM runs").fetchall())
            fresh = [r for r in records if held.get(r["run_id"]) != record_digest(r)]
            if fresh:
                report.ingested = self._ingest(con, fresh, report)
        finally:
            con.close()
        report.ingested += self.rebuilt_runs - rebuilt_before
        return report

    def _ingest(self, con: Any, records: list[dict[str, Any]], report: SyncReport) -> int:
        import duckdb

        def insert(batch: list[dict[str, Any]]) -> None:
            con.execute("BEGIN TRANSACTION")
            try:
                _insert(con, batch)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        batches = [records] if len(records) == 1 else [records, *([r] for r in records)]
        ingested = 0
        for batch in batches:  # all at once; if that fails, one by one to find the record(s) it failed on
            try:
                insert(batch)
            except duckdb.Error as exc:
                if _is_environmental(exc):
                    raise HarnessError(_db_error(self.db_path, exc)) from None
                if len(batch) == 1:
                    report.skip_file(self.runs_dir / batch[0]["run_id"] / "result.json", f"the database refused it ({_first_line(exc)})")
                continue
            ingested += len(batch)
            if batch is records:
                break
        return ingested


def _code_objects(con: Any) -> str:
    """The views and macros a database holds ("" if none). harness writes tables only, so any is
    a sign of a database from elsewhere. Read through the built-in catalog functions, named
    with their `system` catalog so that a macro of the database cannot stand in for them."""
    views = [v for (v,) in con.execute("SELECT view_name FROM system.main.duckdb_views() WHERE NOT internal").fetchall()]
    macros = [f for (f,) in con.execute("SELECT DISTINCT function_name FROM system.main.duckdb_functions() WHERE NOT internal").fetchall()]
    parts = [f"{what} {', '.join(sorted(names)[:5])}" for what, names in (("view(s)", views), ("macro(s)", macros)) if names]
    return "; ".join(parts)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "conflicting lock" in text or "could not set lock" in text


def _is_environmental(exc: Exception) -> bool:
    """A database error that says nothing about the record (disk full, I/O, out of memory)."""
    import duckdb

    return isinstance(exc, (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.FatalException, duckdb.InternalException))


def _clean_number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _insert(con: Any, records: list[dict[str, Any]]) -> None:
    import pandas as pd

    ids = [r["run_id"] for r in records]
    for table in ("metrics", "series", "runs"):
        con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    rows = []
    for r in records:
        entry, variant = derived_names(r)  # the spec decides the row, not what the record says
        rows.append(
            {
                "run_id": r["run_id"],
                "suite": r["spec"]["suite"],
                "suite_version": r["spec"]["suite_version"],
                "scale": r["spec"]["scale"],
                "variant": variant,
                "entry": entry,
                "seed": int(r["spec"]["seed"]),
                "dataset": r["spec"]["recipe"].get("dataset"),
                "model": r["spec"]["recipe"].get("model"),
                "recipe_id": recipe_id(r["spec"]["recipe"]),
                "primary_metric": r["primary_metric"],
                "primary_higher_is_better": bool(r.get("primary_higher_is_better", True)),
                "status": r["status"],
                "error": r.get("error"),
                "started_at": pd.Timestamp(timestamp_text(r.get("started_at"))) if r.get("started_at") else pd.NaT,
                "finished_at": pd.Timestamp(timestamp_text(r.get("finished_at"))) if r.get("finished_at") else pd.NaT,
                "duration_s": _clean_number(r.get("duration_s")),
                "spec": json.dumps(r["spec"], sort_keys=True),
                "provenance": json.dumps(r["provenance"], sort_keys=True),
                "info": json.dumps(r.get("info", {}), sort_keys=True),
                "record_digest": record_digest(r),
                "baseline": r.get("baseline"),
            }
        )
    runs = pd.DataFrame(rows)
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
    try:
        con.execute("INSERT INTO runs SELECT * FROM new_runs")
        con.execute("INSERT INTO metrics SELECT run_id, name, value, higher_is_better, CAST(position AS INTEGER) FROM new_metrics")
        con.execute("INSERT INTO series SELECT run_id, name, CAST(idx AS INTEGER), value FROM new_series")
    finally:
        for view in ("new_runs", "new_metrics", "new_series"):
            con.unregister(view)


def record_digest(record: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def recipe_id(recipe: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def _db_error(path: Path, exc: Exception) -> str:
    text = str(exc).lower()
    if "no space left" in text or "disk quota" in text:
        return (
            f"no space left on the device of {path.parent} while updating the results database; free some space and run the same "
            f"command again (the result files are intact; `harness collect {path.parent}` brings the database up to date)"
        )
    if "permission denied" in text or "read-only file system" in text:
        return f"cannot open the results database {path} ({_first_line(exc)}); choose a results folder you can write with results=DIR"
    return (
        f"cannot open the results database {path}: {_first_line(exc)}. If the file is not a harness DuckDB database, move it "
        f"away; the database can be rebuilt from the result files with `harness collect {path.parent}`."
    )
